"""
The export pipeline's view of SelfMetrics: one object per signal that knows which telegen_*
families that signal's events go to (spans/metrics/logs collected and exported, queue size,
drops by reason, requests, errors, latency, batch size, retries).
"""

_COLLECTED = {"traces": "spans_collected", "metrics": "metrics_collected", "logs": "logs_collected",
              "profiles": "profiles_collected"}
_EXPORTED = {"traces": "spans_exported", "metrics": "metrics_exported", "logs": "logs_exported"}


class SignalCounters:
    """Increments the SelfMetrics families for one signal."""

    def __init__(self, metrics, signal):
        self._m = metrics
        self._signal = signal
        self._collected = getattr(metrics, _COLLECTED[signal])
        exported = _EXPORTED.get(signal)
        self._exported = getattr(metrics, exported) if exported else None
        self._queue_size = metrics.export_queue_size.labels(signal_type=signal)
        self._batch_size = metrics.export_batch_size.labels(signal_type=signal)

    def collected(self, n):
        self._collected.inc(n)

    def exported(self, n):
        if self._exported is not None and n:
            self._exported.inc(n)

    def dropped(self, n, reason):
        if not n:
            return
        self._m.queue_dropped.labels(signal_type=self._signal, reason=reason).inc(n)
        if self._signal == "traces":
            self._m.spans_dropped.labels(reason=reason).inc(n)

    def queue_size(self, n):
        self._queue_size.set(n)

    def batch_size(self, n):
        self._batch_size.observe(n)

    def request(self, endpoint, outcome, seconds):
        self._m.export_requests.labels(endpoint=endpoint, status=outcome.status).inc()
        self._m.export_latency.labels(endpoint=endpoint).observe(seconds)

    def error(self, endpoint, error_type):
        self._m.export_errors.labels(endpoint=endpoint, error_type=error_type).inc()

    def retry(self, endpoint):
        self._m.export_retries.labels(endpoint=endpoint).inc()
