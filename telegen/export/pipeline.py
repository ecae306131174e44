"""
ExportPipeline: the `export` service. It owns one SignalExporter per signal, picks each one's
destination (gRPC, HTTP or the local file sink) from the otlp config, and answers the API:
/status/export (status), /ready's otlp check (ready_check), POST /admin/flush (flush).

Why a thin service over per-signal exporters: the contract (docs/architecture.md) is one object
for the rest of the agent, while the work stays independent per signal.
"""
import os

from twisted.application import service
from twisted.internet.defer import DeferredList
from zope.interface import implementer

from telegen.contracts import IChild, IRecordSink
from telegen.export.counters import SignalCounters
from telegen.export.delivery import settled_delivery
from telegen.export.endpoints import main_target, resolve
from telegen.export.exporter import IN_FLIGHT, MAX_IN_FLIGHT, ORDERED, SignalExporter
from telegen.export.file_sink import FileSink, sink_dir
from telegen.export.kinds import KINDS
from telegen.export.retry import Backoff
from telegen.selfmetrics import SIGNALS
from telegen.timebox import within
from telegen.timefmt import rfc3339


def make_sender(config, kind, reactor):
    """The destination of one signal: gRPC, HTTP or the file sink when no endpoint is set."""
    otlp = config["otlp"]
    target = resolve(otlp, kind)
    if target is None:
        return FileSink(sink_dir(config), kind, otlp["file"], reactor)
    if target.protocol == "grpc":
        from telegen.export.grpc_sender import GrpcSender
        return GrpcSender(target, kind, otlp, reactor)
    from telegen.export.http_sender import HttpSender
    return HttpSender(target, kind, otlp, reactor)


@implementer(IChild, IRecordSink)
class ExportPipeline(service.Service):
    """Per-signal bounded queues, batching and OTLP senders, with live status."""

    def __init__(self, config, metrics, reactor=None, sender_factory=make_sender):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.metrics = metrics
        self.reactor = reactor
        self._otlp = config["otlp"]
        self._connected = False
        self._attempted = False
        self._last_error = None
        self._last_export = None
        self._stopping = None
        self._exporters = {}
        for signal in SIGNALS:
            if self._otlp[signal]["enabled"]:
                kind = KINDS[signal]
                self._exporters[signal] = SignalExporter(
                    kind, config["queues"][signal], sender_factory(config, kind, reactor),
                    Backoff(config["backoff"]), SignalCounters(metrics, signal), reactor, self._attempt_done,
                    IN_FLIGHT.get(signal, MAX_IN_FLIGHT), signal in ORDERED)
        self._disabled_counters = {s: SignalCounters(metrics, s) for s in SIGNALS if s not in self._exporters}
        self._disabled_dropped = dict.fromkeys(self._disabled_counters, 0)
        self._main_target = main_target(self._otlp)

    def reconfigure(self, config):
        """
        Queue limits and the shutdown budget change in place; a new destination, transport
        setting or backoff needs new senders (connections), so the pipeline is rebuilt for it.
        """
        if any(config[key] != self.config[key] for key in ("otlp", "backoff")) or \
                config["telegen"]["data_dir"] != self.config["telegen"]["data_dir"]:
            return False
        for signal, exporter in self._exporters.items():
            exporter.set_limits(config["queues"][signal])
        self.config = config
        return True

    # -- intake ------------------------------------------------------------------------------

    def submit(self, signal, resource_attrs, records):
        """Queue `records` (OTLP protos, or their serialized bytes) of one resource; return how many were accepted."""
        exporter = self._exporters.get(signal)
        if exporter is not None:
            return exporter.submit(resource_attrs, records)
        if signal not in self._disabled_counters:
            raise ValueError(f"unknown signal {signal!r}")
        items = KINDS[signal].items(records)
        counters = self._disabled_counters[signal]
        counters.collected(items)
        counters.dropped(items, "disabled")
        self._disabled_dropped[signal] += items
        return 0

    def submit_tracked(self, signal, resource_attrs, records, order=None):
        """
        Like submit, for a producer that can hold what does not fit: return (accepted, Delivery);
        records beyond the queue's room are left to the caller, not dropped. With the signal
        disabled every record is counted dropped (disabled) at once. `order`: the source of the
        records, whose records the exporter keeps in submission order (logs).
        """
        exporter = self._exporters.get(signal)
        if exporter is not None:
            return exporter.submit_tracked(resource_attrs, records, order)
        self.submit(signal, resource_attrs, records)
        return len(records), settled_delivery(KINDS[signal].items(records), "disabled")

    def sender_label(self, signal):
        """The endpoint label one signal's requests are counted under in telegen_export_* metrics."""
        return self._exporters[signal].sender.target.label

    def _attempt_done(self, outcome, now):
        """Every attempt's result feeds `connected`, `last_error`, `last_export` and /ready."""
        self._attempted = True
        self._connected = outcome.reached
        if outcome.error is None:
            self._last_export = now
            self._last_error = None
        else:
            self._last_error = outcome.error

    # -- status ------------------------------------------------------------------------------

    def _file_mode(self):
        return self._otlp["endpoint"] is None

    def status(self):
        """The /status/export document, from live state."""
        if self._file_mode():
            endpoint, protocol, tls, compression = "file://" + sink_dir(self.config), "file", False, "none"
        else:
            target = self._main_target
            endpoint, protocol, tls = target.label, target.protocol, target.tls
            compression = self._otlp["compression"]
        queues = {}
        for signal in SIGNALS:
            exporter = self._exporters.get(signal)
            capacity = self.config["queues"][signal]["capacity"]
            if exporter is None:
                queues[signal] = {"size": 0, "capacity": capacity, "exported": 0,
                                  "dropped": self._disabled_dropped[signal], "enabled": False}
            else:
                queues[signal] = {"size": exporter.queue.items, "capacity": capacity,
                                  "exported": exporter.exported, "dropped": exporter.dropped, "enabled": True}
        return {
            "endpoint": endpoint,
            "protocol": protocol,
            "tls": tls,
            "compression": compression,
            "connected": self._connected,
            "last_export": rfc3339(self._last_export),
            "last_error": self._last_error,
            "queues": queues,
        }

    def ready_check(self):
        """"ok", or "failed: <reason>" when the last attempt did not reach the destination."""
        if self._file_mode():
            return "ok" if writable(sink_dir(self.config)) else "failed: data directory not writable"
        if self._attempted and not self._connected:
            return f"failed: {self._last_error or 'unreachable'}"
        return "ok"

    # -- flush and stop ----------------------------------------------------------------------

    def flush(self, timeout=None):
        """
        Send everything queued now; fire with {signal: items sent} once those requests settled
        or `timeout` (default otlp.timeout) passed, whichever is first.
        """
        counts, waits = {}, []
        for signal, exporter in self._exporters.items():
            counts[signal], d = exporter.flush()
            waits.append(d)
        done = within(DeferredList(waits), self.reactor, self._otlp["timeout"] if timeout is None else timeout)
        return done.addCallback(lambda _: counts)

    def stopService(self):  # noqa: N802 (Twisted hook)
        """
        Flush, retry waiting batches once more, and wait for every batch up to
        telegen.shutdown_timeout; whatever is still unsettled then is counted as dropped (shutdown).
        """
        super().stopService()
        budget = self.config["telegen"]["shutdown_timeout"]
        pending = [d for exporter in self._exporters.values() for d in exporter.stop()]
        d = within(DeferredList(pending), self.reactor, budget)
        d.addCallback(lambda _: self._close())
        return d

    def _close(self):
        closing = []
        for exporter in self._exporters.values():
            exporter.abandon()
            closed = exporter.sender.close()
            if closed is not None:
                closing.append(closed)
        return DeferredList(closing) if closing else None


def writable(directory):
    """True if `directory` (or the nearest existing parent, where it would be created) is writable."""
    path = directory
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.access(path, os.W_OK)
