"""
The pieces under the pipeline: queue bounds and splitting, the OTLP retry tables and backoff,
endpoint resolution, the OTLP/JSON codec and the file sink with rotation.
"""
import json
import os
import random

import pytest
import pytest_twisted
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from telegen.config import defaults
from telegen.export import otlpjson
from telegen.export.endpoints import main_target, resolve
from telegen.export.wire import ResourceCache, encode_request
from telegen.protowire import varint
from telegen.export.file_sink import FileSink
from telegen.export.kinds import KINDS, data_points
from telegen.export.queue import BoundedQueue
from telegen.export.retry import (PERMANENT, RETRYABLE, Backoff, grpc_outcome, http_outcome,
                                  parse_retry_after)
from tests.support.otlp_files import read_spans, sink_files


def spans(n):
    return [Span(name=f"s{i}", trace_id=bytes(range(16)), span_id=bytes(range(8)), kind=2) for i in range(n)]


# -- queue -------------------------------------------------------------------------------------

def test_queue_accepts_leading_records_up_to_item_capacity():
    q = BoundedQueue(capacity=10, max_bytes=1 << 20)
    assert q.offer("r", {}, spans(7), None) == (7, 7)
    assert q.offer("r", {}, spans(7), None) == (3, 3)
    assert len(q) == 10


def test_queue_take_skips_blocked_sources_and_keeps_each_sources_order():
    """take(n, blocked): chunks of sources still out stay queued, in order; a straddling chunk is split."""
    from telegen.export.delivery import Delivery

    q = BoundedQueue(capacity=100, max_bytes=1 << 20)
    for source, n in (("a", 3), ("b", 3), ("a", 2), (None, 1)):
        q.offer("r", {}, spans(n), None, Delivery(n, source) if source else None)
    assert q.ready({"b"}) == 6 and q.ready(set()) == 9
    taken = q.take(4, {"b"})
    assert [(c.delivery.order, c.items) for c in taken] == [("a", 3), ("a", 1)]
    assert len(q) == 5 and q.nbytes == sum(c.nbytes for c in q._chunks)
    assert q.ready({"a"}) == 4 and q.ready({"a", "b", None}) == 0
    rest = q.take(10, {"a"})  # b, and the record submitted without a source; a's last record waits
    assert [(c.delivery.order if c.delivery else None, c.items) for c in rest] == [("b", 3), (None, 1)]
    assert [(c.delivery.order, c.items) for c in q.take(10)] == [("a", 1)] and len(q) == 0 and q.ready({"a"}) == 0


def test_queue_byte_bound():
    one = spans(1)[0].ByteSize()
    q = BoundedQueue(capacity=1000, max_bytes=one * 3 + 1)
    assert q.offer("r", {}, spans(5), None) == (3, 3)
    assert q.nbytes == one * 3
    q.take(2)
    assert q.nbytes == one and len(q) == 1


def test_serialized_records_are_bounded_like_messages_and_kept_as_a_copy():
    """Records that arrive as bytes (the HTTP probe's spans) take the bulk path: same bounds, own list."""
    data = [s.SerializeToString() for s in spans(7)]
    q = BoundedQueue(capacity=10, max_bytes=1 << 20)
    assert q.offer("r", {}, data, None) == (7, 7)
    assert q.offer("r", {}, data, None) == (3, 3)
    data.clear()                                   # the caller's list is its own to reuse
    assert [Span.FromString(r).name for c in q.take(10) for r in c.records] == [f"s{i}" for i in range(7)] + ["s0", "s1", "s2"]
    one = len(spans(1)[0].SerializeToString())
    small = BoundedQueue(capacity=1000, max_bytes=one * 3 + 1)
    assert small.offer("r", {}, [s.SerializeToString() for s in spans(5)], None) == (3, 3)
    assert small.nbytes == one * 3
    mixed = BoundedQueue(capacity=10, max_bytes=1 << 20)
    assert mixed.offer("r", {}, [spans(1)[0].SerializeToString(), spans(1)[0]], None) == (2, 2)
    assert mixed.nbytes == 2 * one


def test_take_splits_a_chunk_at_the_batch_boundary_and_keeps_order():
    q = BoundedQueue(100, 1 << 20)
    q.offer("a", {}, spans(4), None)
    q.offer("b", {}, spans(4), None)
    first = q.take(6)
    assert [(c.resource_key, [Span.FromString(s).name for s in c.records]) for c in first] == [
        ("a", ["s0", "s1", "s2", "s3"]), ("b", ["s0", "s1"])]
    rest = q.take(6)
    assert [Span.FromString(s).name for c in rest for s in c.records] == ["s2", "s3"]
    assert len(q) == 0 and q.nbytes == 0


def test_weighted_records_split_at_record_boundaries():
    """A metric with 3 points and a batch of 4: the batch takes whole metrics (at least one)."""
    metric = Metric(name="m")
    for i in range(3):
        metric.sum.data_points.add(as_int=i)
    q = BoundedQueue(100, 1 << 20)
    q.offer("r", {}, [metric, metric, metric], data_points)
    assert len(q) == 9
    assert sum(c.items for c in q.take(4)) == 3
    big = BoundedQueue(100, 1 << 20)
    big.offer("r", {}, [metric], data_points)
    assert sum(c.items for c in big.take(1)) == 3  # never stuck on an oversized record


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 0x3FFF, 0x4000, 2**21, 2**35])
def test_varint_matches_protobuf(n):
    from google.protobuf.internal.encoder import _VarintBytes
    assert varint(n) == _VarintBytes(n)


def test_negative_varints_are_their_64_bit_twos_complement():
    assert varint(-1) == b"\xff" * 9 + b"\x01"


def test_encoded_request_equals_the_one_protobuf_builds():
    """Bytes joined from queued records decode to exactly the request built message by message."""
    from telegen.signals.common import SCOPE, resource
    q = BoundedQueue(100, 1 << 20)
    q.offer(("x",), {"service.name": "x"}, spans(2), None)
    q.offer(("y",), {"service.name": "y", "n": 3}, spans(1), None)
    q.offer(("x",), {"service.name": "x"}, spans(3)[2:], None)
    expected = KINDS["traces"].request_cls()
    for attrs, records in (({"service.name": "x"}, spans(2) + spans(3)[2:]), ({"service.name": "y", "n": 3}, spans(1))):
        rs = expected.resource_spans.add(resource=resource(attrs))
        rs.scope_spans.add(scope=SCOPE).spans.extend(records)
    got = KINDS["traces"].request_cls.FromString(encode_request(q.take(10), ResourceCache()))
    assert got == expected


def test_encoded_request_frames_records_of_every_size():
    """Short records (framed from the prefix table) and long ones (varint framed) in one request."""
    def span_of_size(size):
        base = Span(trace_id=bytes(16), span_id=bytes(8), name="n" * 200).ByteSize() - 200
        return Span(trace_id=bytes(16), span_id=bytes(8), name="n" * (size - base))

    records = [span_of_size(size) for size in (300, 4095, 4096, 10000)]
    assert [r.ByteSize() for r in records] == [300, 4095, 4096, 10000]     # both sides of the table's end
    q = BoundedQueue(100, 1 << 20)
    q.offer(("x",), {"service.name": "x"}, [r.SerializeToString() for r in records], None)
    got = KINDS["traces"].request_cls.FromString(encode_request(q.take(10), ResourceCache()))
    assert list(got.resource_spans[0].scope_spans[0].spans) == records


# -- retry rules -------------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"])
def test_retryable_grpc_codes(code):
    assert grpc_outcome(code, False, None, "x", "x", True).kind == RETRYABLE


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
                                  "UNAUTHENTICATED", "FAILED_PRECONDITION", "UNIMPLEMENTED", "INTERNAL", "UNKNOWN",
                                  "RESOURCE_EXHAUSTED"])
def test_permanent_grpc_codes(code):
    assert grpc_outcome(code, False, None, "x", "x", True).kind == PERMANENT


def test_resource_exhausted_is_retryable_only_with_retry_info():
    assert grpc_outcome("RESOURCE_EXHAUSTED", True, 2.0, "x", "x", True).kind == RETRYABLE


@pytest.mark.parametrize("code,kind", [(429, RETRYABLE), (502, RETRYABLE), (503, RETRYABLE), (504, RETRYABLE),
                                       (400, PERMANENT), (401, PERMANENT), (403, PERMANENT), (404, PERMANENT),
                                       (413, PERMANENT), (500, PERMANENT)])
def test_http_codes(code, kind):
    outcome = http_outcome(code, None, f"HTTP {code}")
    assert (outcome.kind, outcome.status, outcome.error_type) == (kind, str(code), f"http_{code}")


def test_retry_after_forms():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_is_exponential_capped_and_jittered_within_bounds():
    config = {"initial": 5.0, "max": 30.0, "multiplier": 1.5, "jitter": 0.5, "max_elapsed": 300.0}
    b = Backoff(config, rng=random.Random(1))
    for attempt, base in enumerate([5.0, 7.5, 11.25, 16.875, 25.3125, 30.0, 30.0]):
        for _ in range(50):
            assert base * 0.5 <= b.delay(attempt) <= base * 1.5
    assert b.delay(3, hint=2.0) == 2.0
    assert not b.gives_up(290.0, 10.0) and b.gives_up(290.0, 10.1)


# -- endpoints ---------------------------------------------------------------------------------

def otlp(**kw):
    o = defaults()["otlp"]
    o.update(kw)
    return o


def test_grpc_endpoint_forms():
    assert resolve(otlp(endpoint="collector"), KINDS["traces"]).address == "collector:4317"
    t = resolve(otlp(endpoint="http://c:1234"), KINDS["traces"])
    assert (t.address, t.tls) == ("c:1234", False)
    assert resolve(otlp(endpoint="c:1234"), KINDS["traces"]).tls is True
    assert resolve(otlp(endpoint="c:1234", insecure=True), KINDS["traces"]).tls is False
    assert resolve(otlp(endpoint=None), KINDS["traces"]) is None


def test_http_endpoint_appends_signal_path_but_override_is_used_as_is():
    o = otlp(endpoint="https://user:pw@c/base/", protocol="http")
    assert resolve(o, KINDS["metrics"]).address == "https://c:4318/base/v1/metrics"
    o["logs"]["endpoint"] = "http://logs:9999/custom"
    assert resolve(o, KINDS["logs"]).address == "http://logs:9999/custom"
    assert main_target(o).label == "https://c:4318/base"  # no credentials in the label


# -- OTLP/JSON and the file sink ---------------------------------------------------------------

def test_otlp_json_uses_hex_ids_and_integer_enums():
    request = KINDS["traces"].request_cls()
    request.resource_spans.add().scope_spans.add().spans.extend(spans(1))
    line = otlpjson.encode(request)
    span = json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "000102030405060708090a0b0c0d0e0f" and span["spanId"] == "0001020304050607"
    assert span["kind"] == 2
    assert otlpjson.decode(line, KINDS["traces"].request_cls) == request


def test_file_sink_writes_lines_and_rotates_keeping_max_files(tmp_path):
    sink = FileSink(str(tmp_path / "otlp"), KINDS["traces"], {"max_bytes": 1024, "max_files": 2})
    sent = []
    for i in range(30):
        request = KINDS["traces"].request_cls()
        request.resource_spans.add().scope_spans.add().spans.extend(
            [Span(name=f"r{i}-{j}", trace_id=bytes(16), span_id=bytes(8)) for j in range(3)])
        outcomes = []
        sink.send(request.SerializeToString()).addCallback(outcomes.append)
        assert outcomes[0].kind == "success"
        sent.append(request)
    files = sink_files(tmp_path, "traces")
    assert [f.rsplit("/", 1)[1] for f in files] == ["traces.jsonl.2", "traces.jsonl.1", "traces.jsonl"]
    assert all((tmp_path / "otlp" / f).stat().st_size <= 1024 for f in ("traces.jsonl.2", "traces.jsonl.1"))
    kept = [s.name for _, s in read_spans(tmp_path)]
    expected = [s.name for r in sent for s in r.resource_spans[0].scope_spans[0].spans]
    assert kept and kept == expected[-len(kept):]  # the newest lines, in order, none mangled


@pytest_twisted.ensureDeferred
async def test_file_sink_converts_profiles_in_a_worker_process_and_retries_when_it_dies(tmp_path):
    """A window of profiles is megabytes: its JSON line is made by a child, and a dead child is a retryable outcome."""
    from twisted.internet import reactor

    from telegen.export import json_worker
    from telegen.profiling import otlp as profiles_otlp

    workers = []

    def start(reactor, name):
        workers.append(json_worker.start(reactor, name))
        return workers[-1]

    sink = FileSink(str(tmp_path / "otlp"), KINDS["profiles"], {"max_bytes": 1 << 20, "max_files": 2}, reactor, start)
    try:
        record = profiles_otlp.window_profiles([({"service.name": "svc"}, [((("f", "m"),), 3)], [])], 0.0, 10.0, 99)
        outcome = await sink.send(record.SerializeToString())
        assert outcome.kind == "success" and workers[0].pid != os.getpid()
        line = (tmp_path / "otlp" / "profiles.jsonl").read_text()
        assert otlpjson.decode(line, KINDS["profiles"].request_cls).SerializeToString() == record.SerializeToString()
        workers[0]._proto.transport.signalProcess("KILL")
        outcome = await sink.send(b"\xff")      # sent before the death is noticed, or to no worker at all
        assert outcome.kind == RETRYABLE and outcome.error_type == "worker_crashed"
    finally:
        await sink.close()
