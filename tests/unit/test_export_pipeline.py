"""
ExportPipeline and SignalExporter on a Clock with a scripted sender: batching, in-flight cap,
OTLP retry decisions, drop accounting, status, ready check, flush and shutdown. No sockets.
"""
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from twisted.internet.task import Clock

from telegen.config import defaults
from telegen.export.pipeline import ExportPipeline
from telegen.export.retry import PERMANENT, RETRYABLE, SUCCESS, Outcome
from telegen.selfmetrics import SelfMetrics
from tests.support.fakes import OK, ScriptedSender

REFUSED = Outcome(RETRYABLE, "unreachable", False, "connection refused", "connection_refused")


def make(endpoint="collector:4317", **overrides):
    config = defaults()
    config["otlp"]["endpoint"] = endpoint
    config["otlp"]["insecure"] = True
    config["queues"]["traces"].update(capacity=20, batch_size=5, batch_timeout=1.0)
    config["backoff"].update(initial=1.0, max=4.0, multiplier=2.0, jitter=0.0, max_elapsed=10.0)
    for section, values in overrides.items():
        config[section].update(values)
    clock = Clock()
    senders = {}

    def factory(cfg, kind, reactor):
        senders[kind.name] = ScriptedSender(kind)
        return senders[kind.name]

    metrics = SelfMetrics()
    pipeline = ExportPipeline(config, metrics, reactor=clock, sender_factory=factory)
    return pipeline, senders, clock, metrics


def spans(n, prefix="s"):
    return [Span(name=f"{prefix}{i}", trace_id=bytes([1]) * 16, span_id=bytes([i % 256]) * 8) for i in range(n)]


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_full_batches_go_at_once_and_partial_ones_after_batch_timeout():
    """batch_size triggers a send immediately; the remainder waits for batch_timeout."""
    pipeline, senders, clock, _ = make()
    assert pipeline.submit("traces", {"service.name": "a"}, spans(7)) == 7
    assert senders["traces"].items() == 5
    clock.advance(0.99)
    assert senders["traces"].items() == 5
    clock.advance(0.02)
    assert senders["traces"].items() == 7
    assert pipeline.status()["queues"]["traces"] == {"size": 0, "capacity": 20, "exported": 7, "dropped": 0,
                                                     "enabled": True}


def test_records_of_one_resource_merge_into_one_resource_spans_in_order():
    """Two submits of resource A around one of B give two ResourceSpans; A's spans keep their order."""
    pipeline, senders, clock, _ = make()
    pipeline.submit("traces", {"service.name": "a"}, spans(2, "a"))
    pipeline.submit("traces", {"service.name": "b"}, spans(1, "b"))
    pipeline.submit("traces", {"service.name": "a"}, spans(2, "c"))
    request = senders["traces"].requests[0]
    names = {rs.resource.attributes[0].value.string_value: [s.name for s in rs.scope_spans[0].spans]
             for rs in request.resource_spans}
    assert names == {"a": ["a0", "a1", "c0", "c1"], "b": ["b0"]}
    assert request.resource_spans[0].scope_spans[0].scope.name == "telegen"


def test_queue_overflow_drops_exactly_what_does_not_fit():
    """Capacity 20, two batches of 5 stuck in flight: exact queue_full counts, never blocking."""
    pipeline, senders, clock, metrics = make()
    senders["traces"].hold = True
    assert pipeline.submit("traces", {}, spans(25)) == 20
    # two batches left the queue for the two in-flight slots; the rest stay queued
    assert pipeline.status()["queues"]["traces"]["size"] == 10
    assert pipeline.submit("traces", {}, spans(15)) == 10
    status = pipeline.status()["queues"]["traces"]
    assert status["size"] == 20 and status["dropped"] == 10
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="traces", reason="queue_full") == 10
    assert sample(metrics, "telegen_spans_dropped_total", reason="queue_full") == 10
    assert sample(metrics, "telegen_spans_collected_total") == 40
    assert sample(metrics, "telegen_export_queue_size", signal_type="traces") == 20


def test_retryable_failures_back_off_exponentially_then_deliver():
    """initial 1s, multiplier 2, no jitter: retries at +1s and +2s, then success counts exported."""
    pipeline, senders, clock, metrics = make()
    sender = senders["traces"]
    sender.script = [REFUSED, REFUSED, OK]
    pipeline.submit("traces", {}, spans(5))
    assert len(sender.requests) == 1
    assert pipeline.ready_check() == "failed: connection refused"
    clock.advance(0.5)
    assert len(sender.requests) == 1
    clock.advance(0.5)
    assert len(sender.requests) == 2
    clock.advance(1.5)
    assert len(sender.requests) == 2
    clock.advance(0.5)
    assert len(sender.requests) == 3
    assert pipeline.status()["queues"]["traces"]["exported"] == 5
    assert pipeline.ready_check() == "ok"
    assert sample(metrics, "telegen_export_retries_total", endpoint="collector:4317") == 2
    assert sample(metrics, "telegen_export_requests_total", endpoint="collector:4317", status="unreachable") == 2
    assert sample(metrics, "telegen_export_errors_total", endpoint="collector:4317", error_type="connection_refused") == 2


def test_server_retry_hint_replaces_backoff():
    """A Retry-After/RetryInfo hint of 3s is waited exactly, not the 1s backoff."""
    pipeline, senders, clock, _ = make()
    sender = senders["traces"]
    sender.script = [Outcome(RETRYABLE, "503", True, "HTTP 503", "http_503", retry_after=3.0)]
    pipeline.submit("traces", {}, spans(5))
    clock.advance(2.9)
    assert len(sender.requests) == 1
    clock.advance(0.2)
    assert len(sender.requests) == 2


def test_batch_gives_up_after_max_elapsed_as_retry_exhausted():
    """Delays 1,2,4,4 reach 11s > max_elapsed 10s: the batch is dropped as retry_exhausted."""
    pipeline, senders, clock, metrics = make()
    senders["traces"].default = REFUSED
    pipeline.submit("traces", {}, spans(5))
    clock.pump([1.0] * 12)
    assert len(senders["traces"].requests) == 4  # at 0, 1, 3, 7; the next would start at 11
    assert pipeline.status()["queues"]["traces"]["dropped"] == 5
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="traces", reason="retry_exhausted") == 5


def test_permanent_error_is_not_retried_and_counted_rejected():
    pipeline, senders, clock, metrics = make()
    senders["traces"].script = [Outcome(PERMANENT, "INVALID_ARGUMENT", True, "grpc INVALID_ARGUMENT", "grpc_INVALID_ARGUMENT")]
    pipeline.submit("traces", {}, spans(5))
    clock.advance(60)
    assert len(senders["traces"].requests) == 1
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="traces", reason="rejected") == 5
    assert pipeline.ready_check() == "ok"  # the server answered: it is reachable
    assert pipeline.status()["last_error"] == "grpc INVALID_ARGUMENT"


def test_partial_success_counts_rejected_and_is_not_retried():
    pipeline, senders, clock, metrics = make()
    senders["traces"].script = [Outcome(SUCCESS, "OK", True, rejected=2, message="bad spans")]
    pipeline.submit("traces", {}, spans(5))
    clock.advance(60)
    assert len(senders["traces"].requests) == 1
    q = pipeline.status()["queues"]["traces"]
    assert (q["exported"], q["dropped"]) == (3, 2)
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="traces", reason="partial_rejected") == 2
    assert sample(metrics, "telegen_spans_exported_total") == 3


def test_one_signal_retrying_never_holds_back_another():
    """Metrics stuck retrying; traces still go out at once."""
    pipeline, senders, clock, _ = make()
    senders["metrics"].default = REFUSED
    metric = Metric(name="m")
    metric.gauge.data_points.add(as_int=1)
    pipeline.submit("metrics", {}, [metric] * 3)
    clock.advance(5.0)  # metrics batch_timeout
    pipeline.submit("traces", {}, spans(5))
    assert senders["traces"].items() == 5
    assert len(senders["metrics"].requests) >= 1


def test_in_flight_is_capped_and_freed_slots_take_the_next_batch():
    pipeline, senders, clock, _ = make()
    sender = senders["traces"]
    sender.hold = True
    pipeline.submit("traces", {}, spans(20))
    assert len(sender.requests) == 2
    sender.held.pop(0).callback(OK)
    assert len(sender.requests) == 3


def test_metrics_queue_counts_data_points():
    """For metrics, items are data points: capacity, batch size and counters all use them."""
    pipeline, senders, clock, metrics = make()
    metric = Metric(name="m")
    for i in range(4):
        metric.sum.data_points.add(as_int=i)
    pipeline.submit("metrics", {}, [metric, metric])
    assert pipeline.status()["queues"]["metrics"]["size"] == 8
    clock.advance(5.0)
    assert pipeline.status()["queues"]["metrics"]["exported"] == 8
    assert sample(metrics, "telegen_metrics_exported_total") == 8
    assert sample(metrics, "telegen_metrics_collected_total") == 8


def test_flush_sends_everything_queued_and_answers_counts():
    pipeline, senders, clock, _ = make()
    pipeline.submit("traces", {}, spans(3))
    d = pipeline.flush()
    result = []
    d.addCallback(result.append)
    assert result == [{"traces": 3, "metrics": 0, "logs": 0, "profiles": 0}]
    assert senders["traces"].items() == 3


def test_flush_answers_after_timeout_when_the_destination_hangs():
    pipeline, senders, clock, _ = make()
    senders["traces"].hold = True
    pipeline.submit("traces", {}, spans(3))
    result = []
    pipeline.flush(timeout=2.0).addCallback(result.append)
    assert result == []
    clock.advance(2.0)
    assert result[0]["traces"] == 3


def test_stop_flushes_then_counts_leftovers_as_shutdown_drops():
    """stopService sends what is queued; what is still unsettled at shutdown_timeout is dropped."""
    pipeline, senders, clock, metrics = make(telegen={"shutdown_timeout": 3.0})
    pipeline.startService()
    sender = senders["traces"]
    sender.hold = True
    pipeline.submit("traces", {}, spans(12))
    done = []
    pipeline.stopService().addCallback(done.append)
    assert len(sender.requests) == 3  # the flush sends past the in-flight cap
    sender.held[0].callback(OK)
    clock.advance(3.0)
    assert done
    q = pipeline.status()["queues"]["traces"]
    assert (q["exported"], q["dropped"], q["size"]) == (5, 7, 0)
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="traces", reason="shutdown") == 7
    assert sender.closed
    sender.held[1].callback(OK)  # a late answer after shutdown changes no counter
    assert pipeline.status()["queues"]["traces"]["exported"] == 5
    assert pipeline.submit("traces", {}, spans(1)) == 0


def test_stop_returns_as_soon_as_everything_is_delivered():
    pipeline, senders, clock, _ = make()
    pipeline.startService()
    pipeline.submit("traces", {}, spans(3))
    done = []
    pipeline.stopService().addCallback(done.append)
    assert done and senders["traces"].items() == 3


def test_status_document_shape_and_disabled_signal():
    pipeline, senders, clock, metrics = make(endpoint="https://collector.example:4317")
    doc = pipeline.status()
    assert set(doc) == {"endpoint", "protocol", "tls", "compression", "connected", "last_export", "last_error", "queues"}
    assert (doc["endpoint"], doc["protocol"], doc["tls"], doc["compression"]) == ("collector.example:4317", "grpc", True, "gzip")
    assert doc["connected"] is False and doc["last_export"] is None
    assert set(doc["queues"]) == {"traces", "metrics", "logs", "profiles"}
    pipeline.submit("traces", {}, spans(5))
    clock.advance(1)
    doc = pipeline.status()
    assert doc["connected"] is True and doc["last_export"] == "1970-01-01T00:00:00Z"

    config = defaults()
    config["otlp"]["endpoint"] = "collector:4317"
    config["otlp"]["logs"]["enabled"] = False
    metrics = SelfMetrics()
    p2 = ExportPipeline(config, metrics, reactor=Clock(), sender_factory=lambda c, k, r: ScriptedSender(k))
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
    assert p2.submit("logs", {}, [LogRecord()] * 4) == 0
    assert p2.status()["queues"]["logs"] == {"size": 0, "capacity": 10000, "exported": 0, "dropped": 4, "enabled": False}
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="logs", reason="disabled") == 4
    with pytest.raises(ValueError):
        p2.submit("bogus", {}, [])


def test_file_sink_mode_status_and_ready(tmp_path):
    config = defaults()
    config["telegen"]["data_dir"] = str(tmp_path / "data")
    pipeline = ExportPipeline(config, SelfMetrics(), reactor=Clock())
    doc = pipeline.status()
    assert doc["endpoint"] == "file://" + str(tmp_path / "data" / "otlp")
    assert (doc["protocol"], doc["tls"]) == ("file", False)
    assert pipeline.ready_check() == "ok"
    tmp_path.chmod(0o500)
    try:
        import os
        if os.geteuid() != 0:  # root writes anyway
            assert pipeline.ready_check() == "failed: data directory not writable"
    finally:
        tmp_path.chmod(0o700)


def test_stop_retries_waiting_batches_at_once_and_does_not_wait_out_the_backoff():
    """A batch waiting 30s for its retry is tried again at stop; failing again it is dropped (shutdown)."""
    pipeline, senders, clock, metrics = make(backoff={"initial": 30.0, "max": 30.0, "max_elapsed": 100.0})
    pipeline.startService()
    sender = senders["traces"]
    sender.default = REFUSED
    pipeline.submit("traces", {}, spans(5))
    assert len(sender.requests) == 1
    done = []
    pipeline.stopService().addCallback(done.append)
    assert len(sender.requests) == 2 and done
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="traces", reason="shutdown") == 5


def test_queue_limits_change_in_place_and_a_new_destination_asks_for_a_rebuild():
    pipeline, senders, clock, _ = make()
    new = defaults()
    new["otlp"].update(pipeline.config["otlp"])
    new["backoff"].update(pipeline.config["backoff"])
    new["queues"]["traces"].update(capacity=3, batch_size=2, batch_timeout=1.0)
    assert pipeline.reconfigure(new) is True
    assert pipeline.submit("traces", {"service.name": "a"}, spans(5)) == 3     # the new capacity
    clock.advance(0)
    assert [len(r.resource_spans[0].scope_spans[0].spans) for r in senders["traces"].requests][:1] == [2]
    moved = defaults()
    moved["otlp"].update(pipeline.config["otlp"], endpoint="elsewhere:4317")
    assert pipeline.reconfigure(moved) is False
    assert pipeline.config is new


# -- tracked submits (the log tailer's checkpoints wait for these) --------------------------------


def test_tracked_submit_keeps_the_overflow_and_settles_once_every_record_is_exported():
    """Records beyond capacity are left to the caller (no queue_full); done fires when all went out."""
    pipeline, senders, clock, metrics = make()
    senders["traces"].hold = True
    taken, delivery = pipeline.submit_tracked("traces", {}, spans(25))
    assert taken == 20 and delivery.items == 20
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="traces", reason="queue_full") == 0
    assert sample(metrics, "telegen_spans_collected_total") == 20
    # two batches of 5 left for the in-flight slots, so 10 more fit, then nothing
    taken, second = pipeline.submit_tracked("traces", {}, spans(15))
    assert taken == 10
    assert pipeline.submit_tracked("traces", {}, spans(1)) == (0, None)
    fired = []
    delivery.done.addCallback(fired.append)
    senders["traces"].hold = False
    while senders["traces"].held:
        senders["traces"].held.pop(0).callback(OK)
    assert fired == [delivery] and second.done.called
    assert (delivery.exported, delivery.dropped) == (20, {})


def test_tracked_submit_settles_with_drop_reasons():
    """A permanent error and a partial rejection are reported per delivery, with their reasons."""
    pipeline, senders, clock, _ = make()
    senders["traces"].script = [
        Outcome(PERMANENT, "INVALID_ARGUMENT", True, "bad", "grpc_INVALID_ARGUMENT"),
        Outcome(SUCCESS, "OK", True, rejected=2, message="bad spans"),
    ]
    _, first = pipeline.submit_tracked("traces", {}, spans(5))
    _, second = pipeline.submit_tracked("traces", {}, spans(5))
    assert first.dropped == {"rejected": 5} and first.done.called
    assert (second.exported, second.dropped) == (3, {"partial_rejected": 2}) and second.done.called


def test_tracked_records_left_at_shutdown_settle_as_shutdown():
    pipeline, senders, clock, _ = make(telegen={"shutdown_timeout": 1.0})
    pipeline.startService()
    senders["traces"].hold = True
    _, delivery = pipeline.submit_tracked("traces", {}, spans(3))
    pipeline.stopService()
    clock.advance(1.0)
    assert delivery.done.called and delivery.dropped == {"shutdown": 3}


def test_tracked_submit_of_a_disabled_signal_is_settled_dropped_at_once():
    pipeline, senders, clock, metrics = make(otlp={"logs": {"enabled": False, "endpoint": None}})
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    taken, delivery = pipeline.submit_tracked("logs", {}, [LogRecord(), LogRecord()])
    assert taken == 2 and delivery.dropped == {"disabled": 2}
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="logs", reason="disabled") == 2


def test_log_batches_keep_their_order_through_retries():
    """Logs of one source (here: submitted without one) one request at a time: a batch waiting for its retry is not overtaken."""
    pipeline, senders, clock, _ = make(queues={"logs": {"capacity": 100, "max_bytes": 1 << 20, "batch_size": 2,
                                                        "batch_timeout": 1.0}})
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    sender = senders["logs"]
    sender.script = [REFUSED, REFUSED]
    pipeline.submit("logs", {}, [LogRecord(body={"string_value": str(i)}) for i in range(6)])
    clock.pump([1.0] * 10)
    sent = [r.body.string_value for req in sender.requests for rl in req.resource_logs
            for sl in rl.scope_logs for r in sl.log_records]
    assert sent == ["0", "1", "0", "1", "0", "1", "2", "3", "4", "5"]


def test_logs_of_other_sources_go_out_meanwhile_and_a_source_waits_for_its_own_batch():
    """
    Several logs requests at once, never two holding records of one source: a source's next batch
    waits until the one before it settled (also while that one waits for a retry), other sources'
    batches go meanwhile; every source's records arrive in submission order.
    """
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    pipeline, senders, clock, _ = make(queues={"logs": {"capacity": 100, "max_bytes": 1 << 20, "batch_size": 2,
                                                        "batch_timeout": 1.0}})
    sender = senders["logs"]

    def submit(source, *bodies):
        return pipeline.submit_tracked("logs", {}, [LogRecord(body={"string_value": b}) for b in bodies], order=source)

    def sent():
        return [[r.body.string_value for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]
                for req in sender.requests]

    sender.hold = True
    submit("a", "a0", "a1")
    submit("a", "a2", "a3")
    submit("b", "b0", "b1")
    submit("c", "c0", "c1")
    assert sent() == [["a0", "a1"], ["b0", "b1"], ["c0", "c1"]]  # a's second batch waits for its first
    sender.hold = False
    sender.held.pop(0).callback(REFUSED)  # a's first batch: retried later; a2, a3 still wait
    sender.held.pop(0).callback(OK)      # b's
    assert sent() == [["a0", "a1"], ["b0", "b1"], ["c0", "c1"]]
    submit("b", "b2", "b3")              # b is free again: goes at once, past a's retry
    assert sent()[-1] == ["b2", "b3"]
    clock.pump([1.0] * 5)                 # a's retry succeeds, then a2, a3 go
    order = [body for request in sent() for body in request]
    assert [b for b in order if b.startswith("a")] == ["a0", "a1", "a0", "a1", "a2", "a3"]
    assert order.index("a2") > order.index("b2")  # b went past a's retry


def test_a_resource_with_list_values_is_queued_and_merged_like_any_other():
    """Image tags are a list: the resource must still key the queue (it once raised 'unhashable type: list')."""
    pipeline, senders, clock, _ = make()
    resource = {"service.name": "web", "container.image.tags": ["1.2", "latest"]}
    assert pipeline.submit("traces", resource, spans(3)) == 3
    assert pipeline.submit("traces", dict(resource), spans(2, prefix="t")) == 2
    clock.advance(1.0)
    [request] = senders["traces"].requests
    [resource_spans] = request.resource_spans
    assert len(resource_spans.scope_spans[0].spans) == 5
    tags = [kv.value for kv in resource_spans.resource.attributes if kv.key == "container.image.tags"]
    assert [v.string_value for v in tags[0].array_value.values] == ["1.2", "latest"]
