"""
TCP events -> records -> OTLP metrics and failed-connect spans, without a kernel.

Events are packed exactly as bpf/tcp.c lays out struct tcp_event; the pipeline is a recorder of
submit() calls; the process table is a small stand-in answering resources and listener owners.
"""
import os
import socket
import time

from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.trace.v1 import trace_pb2 as t
from twisted.internet.task import Clock

from telegen.ebpf.tcp import EVENT, TcpProbe, decode
from telegen.selfmetrics import SelfMetrics
from telegen.signals import tcp as signals
from tests.support.fakes import RecordingPipeline, StubProcesses, make_config


def pack(kind, pid=0, direction=1, family=socket.AF_INET, local=("127.0.0.1", 40000), peer=("127.0.0.1", 8080),
         start=1_000_000_000, established=0, end=2_000_000_000, error=0):
    """Bytes of one struct tcp_event."""
    fam = socket.AF_INET if family == socket.AF_INET else socket.AF_INET6
    raw = [socket.inet_pton(fam, a).ljust(16, b"\0") for a in (local[0], peer[0])]
    return EVENT.pack(end, pid, 0, kind, start, established, family, local[1], peer[1], direction, error, raw[0], raw[1])


def attrs_of(point):
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in point.attributes}


def make_probe(listeners=None, **network):
    config = make_config()
    config["agent"]["ebpf"]["network"].update(network)
    pipeline, metrics = RecordingPipeline(), SelfMetrics()
    probe = TcpProbe(config, pipeline, StubProcesses(listeners), metrics, reactor=Clock())
    return probe, pipeline, metrics


def metrics_by_name(pipeline):
    out = {}
    for _, resource, records in pipeline.of("metrics"):
        for metric in records:
            out.setdefault(metric.name, []).append((resource, metric))
    return out


def test_decode_ipv4_and_mapped_ipv6():
    """Tuple, kind, direction and error decode; an IPv4-mapped IPv6 address reads as IPv4."""
    conn = decode(pack(4, pid=7, error=1))
    assert (conn.kind, conn.pid, conn.direction, conn.error_type) == ("failed", 7, "outgoing", "connection_refused")
    assert (conn.local_address, conn.local_port, conn.peer_address, conn.peer_port) == ("127.0.0.1", 40000, "127.0.0.1", 8080)
    assert conn.network_type == "ipv4" and conn.server == ("127.0.0.1", 8080)
    mapped = decode(pack(2, direction=2, family=socket.AF_INET6, local=("::ffff:10.0.0.1", 443), peer=("::ffff:10.0.0.2", 5555)))
    assert (mapped.local_address, mapped.peer_address, mapped.network_type) == ("10.0.0.1", "10.0.0.2", "ipv4")
    assert mapped.server == ("10.0.0.1", 443)
    v6 = decode(pack(3, family=socket.AF_INET6, local=("2001:db8::2", 40000), peer=("2001:db8::1", 443)))
    assert (v6.local_address, v6.peer_address, v6.network_type) == ("2001:db8::2", "2001:db8::1", "ipv6")


def test_failed_connect_makes_error_client_span_and_failed_metric():
    """A FAILED event yields one CLIENT span with status ERROR and a failed-connection data point."""
    probe, pipeline, metrics = make_probe()
    now = time.monotonic_ns()
    probe.handle(decode(pack(4, pid=42, error=1, start=now - 300_000, end=now)))
    [(_, resource, [span])] = pipeline.of("traces")
    assert resource == {"service.name": "svc-42", "process.pid": 42}
    assert span.kind == t.Span.SPAN_KIND_CLIENT and span.name == signals.CONNECT_SPAN_NAME
    assert span.status.code == t.Status.STATUS_CODE_ERROR
    assert span.end_time_unix_nano - span.start_time_unix_nano == 300_000
    assert abs(span.end_time_unix_nano - time.time_ns()) < 10**9       # kernel monotonic -> Unix time
    a = attrs_of(span)
    assert a == {"server.address": "127.0.0.1", "server.port": 8080, "network.peer.address": "127.0.0.1",
                 "network.peer.port": 8080, "network.transport": "tcp", "network.type": "ipv4",
                 "error.type": "connection_refused"}
    assert len(span.trace_id) == 16 and len(span.span_id) == 8
    assert metrics.registry.get_sample_value("telegen_spans_collected_total") == 1
    probe.flush()
    by_name = metrics_by_name(pipeline)
    [(resource, failed)] = by_name["telegen.tcp.connections.failed"]
    assert resource["process.pid"] == 42
    assert failed.sum.aggregation_temporality == m.AGGREGATION_TEMPORALITY_CUMULATIVE and failed.sum.is_monotonic
    [point] = failed.sum.data_points
    assert point.as_int == 1
    assert attrs_of(point)["error.type"] == "connection_refused"
    [(_, connect)] = by_name["telegen.tcp.connect.duration"]
    assert connect.histogram.data_points[0].sum == 300_000 / 1e9


def test_lifecycle_counts_and_durations_per_direction():
    """opened/accepted/closed per direction, durations into the right buckets, one submit per process."""
    probe, pipeline, metrics = make_probe(listeners={8080: 9})
    s = 1_000_000_000
    for _ in range(3):
        probe.handle(decode(pack(1, pid=5, start=s, established=s + 2_000_000, end=s + 2_000_000)))
        probe.handle(decode(pack(3, pid=5, start=s, established=s + 2_000_000, end=s + 2_000_000 + 700_000_000)))
    probe.handle(decode(pack(2, direction=2, local=("127.0.0.1", 8080), peer=("127.0.0.2", 51000), start=s, established=s + 1000, end=s + 1000)))
    probe.handle(decode(pack(3, pid=9, direction=2, local=("127.0.0.1", 8080), peer=("127.0.0.2", 51000), start=s, established=s + 1000, end=s + 4 * 10**9)))
    probe.handle(decode(pack(5, pid=0, direction=0)))
    points = probe.flush()
    by_name = metrics_by_name(pipeline)
    [(res, opened)] = by_name["telegen.tcp.connections.opened"]
    assert res["process.pid"] == 5 and opened.sum.data_points[0].as_int == 3
    assert attrs_of(opened.sum.data_points[0]) == {"telegen.tcp.direction": "outgoing", "network.type": "ipv4",
                                                  "network.peer.address": "127.0.0.1", "server.address": "127.0.0.1", "server.port": 8080}
    [(res, accepted)] = by_name["telegen.tcp.connections.accepted"]
    assert res["process.pid"] == 9                      # the listener's owner
    acc = attrs_of(accepted.sum.data_points[0])
    assert (acc["client.address"], acc["server.port"], acc["telegen.tcp.direction"]) == ("127.0.0.2", 8080, "incoming")
    assert "network.peer.port" not in acc               # no ephemeral ports in metrics
    durations = {res["process.pid"]: metric.histogram.data_points[0] for res, metric in by_name["telegen.tcp.connection.duration"]}
    assert durations[5].count == 3 and abs(durations[5].sum - 2.1) < 1e-9
    bounds = list(durations[5].explicit_bounds)
    assert durations[5].bucket_counts[bounds.index(1)] == 3      # 0.7 s lands in (0.5, 1]
    assert durations[9].bucket_counts[bounds.index(5)] == 1      # ~4 s lands in (2.5, 5]
    [(res, retrans)] = by_name["telegen.tcp.retransmits"]
    assert res == {"host.name": "h"} and "telegen.tcp.direction" not in attrs_of(retrans.sum.data_points[0])
    # opened, connect.duration, accepted, retransmits: 1 series each; closed and connection.duration: 2 each
    assert points == metrics.registry.get_sample_value("telegen_metrics_collected_total") == 8


def test_cumulative_series_keep_counting_then_idle_ones_are_dropped():
    """Cumulative: a series keeps its start time and grows; after idle_flushes flushes without updates it is exported no more."""
    probe, pipeline, _ = make_probe()
    probe.telemetry.idle_flushes = 2
    probe.handle(decode(pack(4, pid=3, error=1)))
    probe.flush()
    probe.handle(decode(pack(4, pid=3, error=1)))
    probe.flush()

    def failed_points():
        return [p for _, metric in metrics_by_name(pipeline).get("telegen.tcp.connections.failed", [])
                for p in metric.sum.data_points]

    first, second = failed_points()
    assert (first.as_int, second.as_int) == (1, 2)
    assert first.start_time_unix_nano == second.start_time_unix_nano < second.time_unix_nano
    probe.flush()                                   # idle once: still exported
    probe.flush()                                   # idle twice: exported a last time, then dropped
    assert [p.as_int for p in failed_points()] == [1, 2, 2, 2]
    probe.flush()
    assert [p.as_int for p in failed_points()] == [1, 2, 2, 2]
    probe.handle(decode(pack(4, pid=3, error=1)))
    probe.flush()                                   # a new series, counting from 1 with a new start
    latest = failed_points()[-1]
    assert latest.as_int == 1 and latest.start_time_unix_nano > first.start_time_unix_nano


def test_cardinality_cap_folds_into_overflow_series():
    """Beyond max_series attribute sets a metric's new points go to otel.metric.overflow and are counted."""
    probe, pipeline, metrics = make_probe()
    probe.telemetry.max_series = 3
    for port in range(8000, 8010):
        probe.handle(decode(pack(1, pid=5, peer=("10.0.0.1", port), established=1)))
    probe.flush()
    [(_, opened)] = metrics_by_name(pipeline)["telegen.tcp.connections.opened"]
    points = {tuple(sorted(attrs_of(p).items())): p.as_int for p in opened.sum.data_points}
    assert len(points) == 4
    assert points[(("otel.metric.overflow", True),)] == 7
    assert metrics.registry.get_sample_value("telegen_metric_attribute_overflow_total", {"metric": "telegen.tcp.connections.opened"}) == 7


def test_port_filters_and_self_are_dropped():
    """Port filters apply to the server port; the agent's own and unselected processes' connections never count."""
    probe, pipeline, _ = make_probe(listeners={19090: os.getpid()}, exclude_ports=[(22, 22)])
    probe.handle(decode(pack(1, pid=5, peer=("10.0.0.1", 22), established=1)))
    probe.handle(decode(pack(2, direction=2, local=("127.0.0.1", 19090), peer=("127.0.0.1", 5000), established=1)))
    probe.handle(decode(pack(3, pid=os.getpid(), direction=2, local=("127.0.0.1", 19090), established=1)))
    probe.handle(decode(pack(1, pid=5, peer=("127.0.0.1", 19090), established=1)))     # a client of the agent's API
    assert probe.flush() == 0
    only, pipeline2, _ = make_probe(include_ports=[(8000, 8100)])
    only.handle(decode(pack(1, pid=5, peer=("10.0.0.1", 9000), established=1)))
    only.handle(decode(pack(1, pid=5, peer=("10.0.0.1", 8080), established=1)))
    only.flush()
    [(_, opened)] = metrics_by_name(pipeline2)["telegen.tcp.connections.opened"]
    assert [attrs_of(p)["server.port"] for p in opened.sum.data_points] == [8080]
    unselected, pipeline3, _ = make_probe()
    unselected.processes.excluded.add(5)
    unselected.handle(decode(pack(4, pid=5, error=1)))
    assert unselected.flush() == 0 and pipeline3.calls == []     # neither the span nor the metric


def test_probe_describes_itself_for_the_service():
    """Enabled per config, a small ring buffer (at most 1 MiB), every tracepoint listed for status."""
    probe, _, _ = make_probe()
    config = make_config()
    assert probe.enabled(config)
    config["agent"]["ebpf"]["network"]["tcp"] = False
    assert not probe.enabled(config)
    assert probe.ringbuf_size(make_config()) == 1 << 20
    assert ("sock:inet_sock_set_state", "tracepoint__sock__inet_sock_set_state") in probe.tracepoints()
    assert set(probe.ring_buffers()) == {"tcp_events"}


def test_metrics_flush_on_the_probe_clock_and_on_detach():
    """attached() flushes every interval on the given clock; detached() flushes what is left."""
    config = make_config()
    pipeline, clock = RecordingPipeline(), Clock()
    probe = TcpProbe(config, pipeline, StubProcesses(), SelfMetrics(), reactor=clock, interval=10)
    probe.attached(None)
    probe.handle(decode(pack(1, pid=5, established=1)))
    clock.advance(9)
    assert pipeline.of("metrics") == []
    clock.advance(1)
    assert len(pipeline.of("metrics")) == 1
    probe.handle(decode(pack(3, pid=5, established=1)))
    probe.detached()
    assert len(pipeline.of("metrics")) == 2 and not clock.getDelayedCalls()
