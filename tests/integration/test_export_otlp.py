"""
The export pipeline against a real OTLP receiver (grpcio server and HTTP server built on the
official opentelemetry-proto stubs) on 127.0.0.1: delivery, gzip, headers, TLS, every retryable
and permanent code, Retry-After/RetryInfo, partial success, a collector down at start or going
away mid-run, queue overflow with exact counts, flush and shutdown flush.
"""
import grpc
import pytest
import pytest_twisted
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from twisted.internet import reactor

from telegen.config import defaults
from telegen.export.pipeline import ExportPipeline
from telegen.selfmetrics import SelfMetrics
from tests.support.otlp_receiver import OtlpReceiver, Reply
from tests.support.twisted_wait import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROTOCOLS = ["grpc", "http"]


def make_pipeline(endpoint, protocol, **overrides):
    config = defaults()
    config["otlp"].update(endpoint=endpoint, protocol=protocol, insecure=True, timeout=3.0)
    config["telegen"]["shutdown_timeout"] = 3.0
    for signal in ("traces", "metrics", "logs"):
        config["queues"][signal].update(batch_timeout=0.05)
    config["backoff"].update(initial=0.05, max=0.2, multiplier=2.0, jitter=0.0, max_elapsed=30.0)
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    metrics = SelfMetrics()
    pipeline = ExportPipeline(config, metrics, reactor=reactor)
    pipeline.startService()
    return pipeline, metrics


def spans(n, prefix="s"):
    return [Span(name=f"{prefix}{i}", trace_id=bytes([7]) * 16, span_id=(i + 1).to_bytes(8, "big"),
                 kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=10 + i, end_time_unix_nano=20 + i)
            for i in range(n)]


def queue(pipeline, signal="traces"):
    return pipeline.status()["queues"][signal]


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def stopping():
    """Pipelines registered here are stopped (flushed, channels closed) after the test."""
    pipelines = []
    yield pipelines.append
    for p in pipelines:
        pytest_twisted.blockon(p.stopService())


@pytest.mark.parametrize("compression", ["gzip", "none"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.inlineCallbacks
def test_delivered_data_equals_what_was_queued(otlp_receiver, stopping, protocol, compression):
    pipeline, metrics = make_pipeline(otlp_receiver.endpoint(protocol), protocol, **{"otlp.compression": compression})
    stopping(pipeline)
    a, b = spans(3, "a"), spans(2, "b")
    metric = Metric(name="system.test", unit="1")
    metric.gauge.data_points.add(as_double=1.5, time_unix_nano=5)
    metric.gauge.data_points.add(as_double=2.5, time_unix_nano=6)
    logs = [LogRecord(severity_number=9, time_unix_nano=3)]
    pipeline.submit("traces", {"service.name": "a"}, a)
    pipeline.submit("traces", {"service.name": "b", "k": 1}, b)
    pipeline.submit("metrics", {"service.name": "a"}, [metric])
    pipeline.submit("logs", {"service.name": "a"}, logs)
    yield until(lambda: len(otlp_receiver.spans()) == 5 and otlp_receiver.metrics() and otlp_receiver.logs(),
                message="all signals")
    got = otlp_receiver.spans()
    assert [(r, s) for r, s in got if r["service.name"] == "a"] == [({"service.name": "a"}, s) for s in a]
    assert [(r, s) for r, s in got if r["service.name"] == "b"] == [({"service.name": "b", "k": 1}, s) for s in b]
    assert otlp_receiver.metrics() == [({"service.name": "a"}, metric)]
    assert otlp_receiver.logs() == [({"service.name": "a"}, logs[0])]
    if protocol == "http":
        assert {r.compressed for r in otlp_receiver.requests()} == {compression == "gzip"}
    yield until(lambda: queue(pipeline)["exported"] == 5, message="exported count")
    assert queue(pipeline, "metrics")["exported"] == 2  # data points
    status = pipeline.status()
    assert status["connected"] is True and status["last_error"] is None and status["last_export"]
    assert sample(metrics, "telegen_spans_exported_total") == 5
    ok_status = "OK" if protocol == "grpc" else "200"
    assert sample(metrics, "telegen_export_requests_total", endpoint=status["endpoint"] if protocol == "grpc"
                  else status["endpoint"] + "/v1/traces", status=ok_status) >= 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.inlineCallbacks
def test_headers_arrive_as_metadata_or_http_headers(otlp_receiver, stopping, protocol):
    pipeline, _ = make_pipeline(otlp_receiver.endpoint(protocol), protocol,
                                **{"otlp.headers": {"X-Api-Key": "k-123", "x-tenant": "t1"}})
    stopping(pipeline)
    pipeline.submit("traces", {}, spans(1))
    yield until(lambda: otlp_receiver.requests("traces"), message="request")
    headers = otlp_receiver.requests("traces")[0].headers
    assert headers["x-api-key"] == "k-123" and headers["x-tenant"] == "t1"


@pytest.mark.parametrize("mutual", [False, True])
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.inlineCallbacks
def test_tls_with_a_generated_ca(otlp_tls, stopping, protocol, mutual):
    receiver = OtlpReceiver(tls=otlp_tls, require_client_cert=mutual).start()
    try:
        tls = {"ca_file": otlp_tls.ca_file, "cert_file": otlp_tls.client_cert_file if mutual else None,
               "key_file": otlp_tls.client_key_file if mutual else None, "insecure_skip_verify": False}
        pipeline, _ = make_pipeline(receiver.endpoint(protocol), protocol,
                                    **{"otlp.insecure": False, "otlp.tls": tls})
        stopping(pipeline)
        assert pipeline.status()["tls"] is True
        pipeline.submit("traces", {}, spans(4))
        yield until(lambda: len(receiver.spans()) == 4, message="spans over TLS")
    finally:
        receiver.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.inlineCallbacks
def test_tls_without_the_ca_fails_with_a_reason(otlp_tls_receiver, stopping, protocol):
    pipeline, _ = make_pipeline(otlp_tls_receiver.endpoint(protocol), protocol, **{"otlp.insecure": False})
    stopping(pipeline)
    pipeline.submit("traces", {}, spans(1))
    yield until(lambda: pipeline.ready_check() != "ok", message="ready check to fail")
    assert pipeline.ready_check() == "failed: tls handshake failed"
    assert otlp_tls_receiver.requests() == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.inlineCallbacks
def test_skip_verify_accepts_an_unknown_ca(otlp_tls_receiver, stopping, protocol):
    pipeline, _ = make_pipeline(otlp_tls_receiver.endpoint(protocol), protocol,
                                **{"otlp.insecure": False, "otlp.tls.insecure_skip_verify": True})
    stopping(pipeline)
    pipeline.submit("traces", {}, spans(2))
    yield until(lambda: len(otlp_tls_receiver.spans()) == 2, message="spans")


RETRYABLE = ([("grpc", Reply(grpc_code=getattr(grpc.StatusCode, c))) for c in
              ("CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS")]
             + [("grpc", Reply(grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.1))]
             + [("http", Reply(http_status=c)) for c in (429, 502, 503, 504)])
PERMANENT = ([("grpc", Reply(grpc_code=getattr(grpc.StatusCode, c))) for c in
              ("INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "INTERNAL",
               "UNIMPLEMENTED")]
             + [("http", Reply(http_status=c)) for c in (400, 401, 403, 404, 413, 500)])


def _id(case):
    protocol, reply = case
    return f"{protocol}-{reply.grpc_code.name if reply.grpc_code else reply.http_status}" + (
        "-retryinfo" if reply.retry_delay else "")


@pytest.mark.parametrize("case", RETRYABLE, ids=_id)
@pytest_twisted.inlineCallbacks
def test_retryable_answers_are_retried_until_delivered(otlp_receiver, stopping, case):
    protocol, reply = case
    otlp_receiver.script(reply, reply)
    pipeline, metrics = make_pipeline(otlp_receiver.endpoint(protocol), protocol)
    stopping(pipeline)
    pipeline.submit("traces", {}, spans(5))
    yield until(lambda: queue(pipeline)["exported"] == 5, message="delivery after retries")
    assert len(otlp_receiver.requests("traces", accepted_only=False)) == 3
    assert otlp_receiver.spans() == [({}, s) for s in spans(5)]
    assert queue(pipeline)["dropped"] == 0
    endpoint = pipeline.sender_label("traces")
    assert sample(metrics, "telegen_export_retries_total", endpoint=endpoint) == 2


@pytest.mark.parametrize("case", PERMANENT, ids=_id)
@pytest_twisted.inlineCallbacks
def test_permanent_answers_are_dropped_as_rejected_without_retry(otlp_receiver, stopping, case):
    protocol, reply = case
    otlp_receiver.script(reply)
    pipeline, metrics = make_pipeline(otlp_receiver.endpoint(protocol), protocol)
    stopping(pipeline)
    pipeline.submit("traces", {}, spans(5))
    yield until(lambda: queue(pipeline)["dropped"] == 5, message="rejection")
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="traces", reason="rejected") == 5
    # a later batch goes through: nothing is stuck, and the rejected one was never re-sent
    pipeline.submit("traces", {}, spans(1, "later"))
    yield until(lambda: queue(pipeline)["exported"] == 1, message="next batch")
    assert len(otlp_receiver.requests("traces", accepted_only=False)) == 2
    assert pipeline.ready_check() == "ok"


@pytest.mark.parametrize("protocol,reply,gap", [
    ("http", Reply(http_status=503, retry_after="1"), 1.0),
    ("http", Reply(http_status=429, retry_after="1"), 1.0),
    ("grpc", Reply(grpc_code=grpc.StatusCode.UNAVAILABLE, retry_delay=0.8), 0.8),
], ids=["http-503-retry-after", "http-429-retry-after", "grpc-retryinfo"])
@pytest_twisted.inlineCallbacks
def test_server_retry_hints_are_honoured(otlp_receiver, stopping, protocol, reply, gap):
    otlp_receiver.script(reply)
    pipeline, _ = make_pipeline(otlp_receiver.endpoint(protocol), protocol)  # backoff would be 0.05s
    stopping(pipeline)
    pipeline.submit("traces", {}, spans(2))
    yield until(lambda: queue(pipeline)["exported"] == 2, message="delivery")
    first, second = otlp_receiver.requests("traces", accepted_only=False)
    assert second.at - first.at >= gap * 0.95


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.inlineCallbacks
def test_partial_success_counts_rejected_and_is_not_retried(otlp_receiver, stopping, protocol):
    otlp_receiver.script(Reply(rejected=2, error_message="2 spans too old"))
    pipeline, metrics = make_pipeline(otlp_receiver.endpoint(protocol), protocol)
    stopping(pipeline)
    pipeline.submit("traces", {}, spans(5))
    yield until(lambda: queue(pipeline)["dropped"] == 2, message="partial rejection counted")
    assert queue(pipeline)["exported"] == 3
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="traces", reason="partial_rejected") == 2
    assert len(otlp_receiver.requests("traces", accepted_only=False)) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.inlineCallbacks
def test_collector_down_at_start_then_up_receives_what_was_queued(stopping, protocol):
    receiver = OtlpReceiver().start()
    receiver.stop()  # ports known, nothing listening
    try:
        pipeline, _ = make_pipeline(receiver.endpoint(protocol), protocol)
        stopping(pipeline)
        pipeline.submit("traces", {}, spans(7))
        yield until(lambda: pipeline.ready_check() == "failed: connection refused", message="refused")
        assert pipeline.status()["connected"] is False
        receiver.start()
        yield until(lambda: len(receiver.spans()) == 7, timeout=20, message="queued spans after start")
        assert receiver.spans() == [({}, s) for s in spans(7)]
        yield until(lambda: pipeline.ready_check() == "ok", message="ready again")
    finally:
        receiver.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.inlineCallbacks
def test_collector_going_away_fills_the_queue_with_exact_drops_then_recovers(otlp_receiver, stopping, protocol):
    pipeline, metrics = make_pipeline(otlp_receiver.endpoint(protocol), protocol,
                                      **{"queues.traces.capacity": 10, "queues.traces.batch_size": 5})
    stopping(pipeline)
    pipeline.submit("traces", {}, spans(5, "before"))
    yield until(lambda: queue(pipeline)["exported"] == 5, message="first delivery")
    otlp_receiver.stop()
    pipeline.submit("traces", {}, spans(10, "held"))  # two batches take both in-flight slots
    yield until(lambda: pipeline.ready_check() == "failed: connection refused", message="not ready")
    assert pipeline.submit("traces", {}, spans(25, "queued")) == 10
    assert queue(pipeline) == {"size": 10, "capacity": 10, "exported": 5, "dropped": 15, "enabled": True}
    assert sample(metrics, "telegen_queue_dropped_total", signal_type="traces", reason="queue_full") == 15
    otlp_receiver.start()
    yield until(lambda: queue(pipeline)["exported"] == 25, timeout=20, message="recovery")
    assert pipeline.ready_check() == "ok"
    names = sorted(s.name for _, s in otlp_receiver.spans())
    assert names == sorted([f"before{i}" for i in range(5)] + [f"held{i}" for i in range(10)]
                           + [f"queued{i}" for i in range(10)])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.inlineCallbacks
def test_flush_and_shutdown_flush_deliver_without_waiting_for_batch_timeout(otlp_receiver, protocol):
    pipeline, _ = make_pipeline(otlp_receiver.endpoint(protocol), protocol, **{"queues.traces.batch_timeout": 600.0})
    pipeline.submit("traces", {}, spans(7))
    assert otlp_receiver.requests() == []
    counts = yield pipeline.flush()
    assert counts == {"traces": 7, "metrics": 0, "logs": 0, "profiles": 0}
    assert len(otlp_receiver.spans()) == 7  # flush answers after delivery
    pipeline.submit("traces", {}, spans(3, "last"))
    yield pipeline.stopService()
    assert [s.name for _, s in otlp_receiver.spans()][7:] == ["last0", "last1", "last2"]
    assert queue(pipeline) == {"size": 0, "capacity": 10000, "exported": 10, "dropped": 0, "enabled": True}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest_twisted.inlineCallbacks
def test_a_slow_answer_times_out_and_is_retried(otlp_receiver, stopping, protocol):
    """otlp.timeout 0.3s against a 1s answer: the attempt is abandoned, counted, and retried."""
    otlp_receiver.script(Reply(delay=1.0))
    pipeline, metrics = make_pipeline(otlp_receiver.endpoint(protocol), protocol, **{"otlp.timeout": 0.3})
    stopping(pipeline)
    pipeline.submit("traces", {}, spans(2))
    yield until(lambda: queue(pipeline)["exported"] == 2, message="delivery after a timeout")
    assert len(otlp_receiver.requests("traces", accepted_only=False)) >= 2
    errors = {s.labels["error_type"] for s in metrics.export_errors.collect()[0].samples if s.name.endswith("_total")}
    assert errors & {"timeout", "deadline_exceeded"}
