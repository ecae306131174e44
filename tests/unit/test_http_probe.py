"""
HttpProbe's user-space half with a Clock and fakes: kernel port filter seeded from config, spans
batched per reactor turn and per process, excluded paths counted, RED flushed on its interval.
"""
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from twisted.internet.task import Clock

from telegen.config.loader import defaults
from telegen.ebpf.http_decoder import EV_REQUEST, EV_RESPONSE
from telegen.ebpf.btf import KernelBtf
from telegen.ebpf.http_probe import SOCKET_FIELDS, HttpProbe
from telegen.selfmetrics import SelfMetrics
from telegen.l7.protocols import PROTO_HTTP2
from tests.support.fakes import RecordingPipeline, StubProcesses
from tests.support.h2_peers import Conversation
from tests.support.http_events import RESP, event, stream_event


class Table(dict):
    """A BCC array as the probe uses it: Key/Leaf constructors and item assignment."""

    Key = int
    Leaf = int


class FakeBPF:
    def __init__(self):
        self.tables = {b"port_rules": Table(), b"settings": Table(), b"l7_enabled": Table()}

    def __getitem__(self, name):
        return self.tables[name]


def make(listen=":19090", **network):
    config = defaults()
    config["self_telemetry"]["listen"] = listen
    config["agent"]["ebpf"]["network"].update(network)
    config["agent"]["host_metrics"]["interval"] = 5.0
    clock, pipeline, metrics = Clock(), RecordingPipeline(), SelfMetrics()
    probe = HttpProbe(config, pipeline, StubProcesses(excluded={66}), metrics, reactor=clock)
    bpf = FakeBPF()
    probe.attached(bpf)
    return probe, bpf, clock, pipeline, metrics


def exchange(probe, path, pid=10, conn=1):
    req = b"GET %s HTTP/1.1\r\n\r\n" % path.encode()
    probe._decoder.handle_bytes(event(EV_REQUEST, 100, req, pid=pid, conn_ts=conn))
    probe._decoder.handle_bytes(event(EV_RESPONSE, 200, RESP, rx=len(req), pid=pid, conn_ts=conn))


def test_port_filter_is_seeded_from_config_with_the_api_port_excluded():
    _, bpf, _, _, _ = make(include_ports=[(8080, 8081)], exclude_ports=[(9000, 9000)])
    assert bpf.tables[b"port_rules"] == {8080: 1, 8081: 1, 9000: 2, 19090: 2}
    assert bpf.tables[b"settings"] == {0: 2}
    _, open_bpf, _, _, _ = make()
    assert open_bpf.tables[b"port_rules"] == {19090: 2} and open_bpf.tables[b"settings"] == {0: 1}


def test_protocol_switches_are_written_to_the_kernel_and_changed_in_place():
    """agent.ebpf.protocols -> l7_enabled[PROTO_*] (HTTP/1 also needs network.http); a reload rewrites it."""
    probe, bpf, _, _, _ = make()
    assert bpf.tables[b"l7_enabled"] == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    new = defaults()
    new["agent"]["ebpf"]["protocols"].update(mysql=False)
    new["agent"]["ebpf"]["network"]["http"] = False
    assert probe.enabled(new) and probe.cflags(new) == probe.cflags(probe._config)     # no rebuild
    probe.reconfigure(new)
    assert bpf.tables[b"l7_enabled"] == {1: 0, 2: 1, 3: 0, 4: 1, 5: 1}
    assert {p["name"]: p["enabled"] for p in probe.protocols_status()} == {
        "http": False, "postgresql": True, "mysql": False, "redis": True, "http2": True}
    new["agent"]["ebpf"]["protocols"].update(postgresql=False, redis=False, http2=False)
    assert not probe.enabled(new)


def test_the_api_port_is_excluded_even_when_included():
    _, bpf, _, _, _ = make(listen="127.0.0.1:40549", include_ports=[(40000, 41000)])
    assert bpf.tables[b"port_rules"][40549] == 2 and bpf.tables[b"port_rules"][40548] == 1


def test_nothing_about_ports_is_compiled_in():
    """A port filter or API port change is a map write, never a recompilation."""
    one, _, _, _, _ = make(listen="127.0.0.1:40549", exclude_ports=[(9000, 9000)])
    two, _, _, _, _ = make(listen="127.0.0.1:40550", include_ports=[(80, 80)])
    assert one.cflags(one._config) == two.cflags(two._config)


def test_reconfigure_moves_the_api_port_and_the_filter_in_place():
    probe, bpf, clock, _, _ = make(exclude_ports=[(9000, 9000)])
    new = defaults()
    new["self_telemetry"]["listen"] = "127.0.0.1:19191"
    new["agent"]["ebpf"]["network"]["include_ports"] = [(80, 80)]
    new["agent"]["ebpf"]["network"]["exclude_paths"] = ["/skip*"]
    new["agent"]["host_metrics"]["interval"] = 7.0
    probe.reconfigure(new)
    assert bpf.tables[b"port_rules"] == {9000: 0, 19090: 0, 19191: 2, 80: 1} and bpf.tables[b"settings"] == {0: 2}
    assert probe._loops[0].interval == 7.0
    exchange(probe, "/skipped")
    clock.advance(0)
    assert probe._metrics.registry.get_sample_value("telegen_ebpf_events_dropped_total", {"reason": "excluded_path"}) == 1


def test_changing_the_port_filter_resets_only_what_was_set():
    probe, bpf, _, _, _ = make(exclude_ports=[(9000, 9001)])
    probe.set_port_filter([(80, 80)], [(9001, 9001)])
    assert bpf.tables[b"port_rules"] == {9000: 0, 9001: 2, 80: 1, 19090: 0} and bpf.tables[b"settings"] == {0: 2}


def test_spans_are_submitted_once_per_reactor_turn_per_process():
    probe, _, clock, pipeline, _ = make()
    exchange(probe, "/a")
    exchange(probe, "/b", conn=2)
    exchange(probe, "/c", pid=11, conn=3)
    assert pipeline.calls == []
    clock.advance(0)
    traces = [(r, recs) for s, r, recs in pipeline.calls if s == "traces"]
    assert [(r, len(recs)) for r, recs in traces] == [({"service.name": "svc-10", "process.pid": 10}, 2),
                                                      ({"service.name": "svc-11", "process.pid": 11}, 1)]
    span = Span.FromString(traces[0][1][0])
    assert span.name == "GET" and span.kind == Span.SPAN_KIND_SERVER


def test_excluded_paths_are_dropped_and_counted():
    probe, _, clock, pipeline, metrics = make(exclude_paths=["/health*", "*.ico"])
    exchange(probe, "/healthz")
    exchange(probe, "/favicon.ico", conn=2)
    exchange(probe, "/work", conn=3)
    clock.advance(0)
    [(_, _, spans)] = [c for c in pipeline.calls if c[0] == "traces"]
    assert len(spans) == 1
    assert metrics.registry.get_sample_value("telegen_ebpf_events_dropped_total", {"reason": "excluded_path"}) == 2


def test_exchanges_of_processes_not_selected_are_dropped_and_counted():
    """agent.discovery.instrument/exclude_instrument apply to HTTP as to TCP."""
    probe, _, clock, pipeline, metrics = make()
    exchange(probe, "/a", pid=66)
    exchange(probe, "/b", pid=10)
    clock.advance(0)
    assert [(resource["process.pid"], len(records)) for signal, resource, records in pipeline.calls if signal == "traces"] == [(10, 1)]
    assert metrics.registry.get_sample_value("telegen_ebpf_events_dropped_total", {"reason": "process_not_selected"}) == 1


def test_red_histograms_flush_on_the_host_metrics_interval_and_on_detach():
    probe, _, clock, pipeline, _ = make()
    exchange(probe, "/a")
    clock.advance(5.0)
    [(_, resource, metrics)] = [c for c in pipeline.calls if c[0] == "metrics"]
    assert resource["process.pid"] == 10 and metrics[0].name == "http.server.request.duration"
    probe.detached()
    assert len([c for c in pipeline.calls if c[0] == "metrics"]) == 2
    assert not clock.getDelayedCalls()


def test_a_failing_submit_is_counted_and_does_not_stop_other_processes():
    probe, _, clock, pipeline, metrics = make()

    def submit(signal, resource, records):
        if resource.get("process.pid") == 10:
            raise RuntimeError("pipeline broke")
        pipeline.calls.append((signal, resource, list(records)))
        return len(records)

    pipeline.submit = submit
    exchange(probe, "/a")
    exchange(probe, "/b", pid=11, conn=2)
    clock.advance(0)
    assert [r["process.pid"] for s, r, _ in pipeline.calls if s == "traces"] == [11]
    assert metrics.registry.get_sample_value("telegen_spans_dropped_total", {"reason": "submit_error"}) == 1


def test_capture_modes_follow_the_config_and_say_why():
    """auto tries the socket capture first; a fallback names the socket capture's failure; each mode has its own programs."""
    probe, _, _, _, _ = make()
    assert probe._config["agent"]["ebpf"]["capture"] == "auto"
    assert probe.capture_modes(probe._config) == ["socket", "syscalls"]
    probe.select_capture("socket", [])
    assert (probe.source, probe.tracepoints(), probe.capture_status()) == (
        "http_sock.c", [], {"mode": "socket", "reason": "auto: the socket-level tracepoints (tp_btf) loaded"})
    assert probe.btf_tracepoints() == ["sock_send_length", "sock_recv_length", "inet_sock_set_state"]
    probe.select_capture("syscalls", [("socket", "attach failed: tp_btf: Invalid argument")])
    assert probe.capture_status() == {
        "mode": "syscalls", "reason": "auto: the socket-level capture did not load: attach failed: tp_btf: Invalid argument"}
    assert probe.source == "http.c" and probe.btf_tracepoints() == []
    assert not [tp for tp, _ in probe.tracepoints() if not tp.startswith(("syscalls:", "sock:"))]
    probe._config["agent"]["ebpf"]["capture"] = "syscalls"
    assert probe.capture_modes(probe._config) == ["syscalls"]
    probe.select_capture("syscalls", [])
    assert probe.capture_status()["reason"] == "agent.ebpf.capture is syscalls"


def test_the_socket_capture_gets_the_running_kernels_struct_offsets():
    """Every field bpf/http_sock.c reads arrives as a -D flag with its offset in /sys/kernel/btf/vmlinux."""
    probe, _, _, _, _ = make()
    probe.select_capture("socket", [])
    flags = dict(f[2:].split("=") for f in probe.cflags(probe._config))
    assert {name for name in SOCKET_FIELDS} <= flags.keys()
    btf = KernelBtf.load()
    assert int(flags["OFF_SK_FAMILY"]) == btf.member("sock", "__sk_common.skc_family")[0]
    assert int(flags["OFF_REGS_ORIG_AX"]) == btf.member("pt_regs", "orig_ax")[0]


def redis_get(probe, conn):
    probe._decoders.handle_bytes(stream_event(100, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", conn=conn))
    probe._decoders.handle_bytes(stream_event(200, b"-ERR no\r\n", from_client=False, conn=conn))


def test_database_exchanges_share_the_sink_and_query_text_switches_in_place():
    """A Redis exchange from the registry: a CLIENT span in the same per-process batch as HTTP's,
    db.client.operation.duration next to the HTTP histograms; db.query_text off takes the text
    and the error message away on reload."""
    probe, _, clock, pipeline, _ = make()
    exchange(probe, "/a")
    redis_get(probe, 1)
    clock.advance(0)
    [(_, resource, records)] = pipeline.of("traces")
    http, db = [Span.FromString(r) for r in records]
    attrs = {kv.key: kv.value for kv in db.attributes}
    assert (db.name, db.kind, http.name) == ("GET", Span.SPAN_KIND_CLIENT, "GET")
    assert attrs["db.query.text"].string_value == "GET k" and attrs["error.type"].string_value == "ERR"
    assert (db.status.code, db.status.message) == (2, "ERR no") and resource["process.pid"] == 10
    assert {p["name"]: p["exchanges"] for p in probe.protocols_status()}["redis"] == 1
    clock.advance(5.0)
    names = {m.name for _, _, metrics in pipeline.of("metrics") for m in metrics}
    assert {"db.client.operation.duration", "http.server.request.duration"} <= names

    new = defaults()
    new["agent"]["ebpf"]["db"]["query_text"] = False
    probe.reconfigure(new)
    redis_get(probe, 2)
    clock.advance(0)
    db = Span.FromString(pipeline.of("traces")[-1][2][0])
    assert "db.query.text" not in {kv.key for kv in db.attributes} and db.status.message == ""


def test_agent_ebpf_tls_compiles_the_openssl_uprobes_in_or_out():
    """The switch is compiled in (a change reloads the probe): on, -DTELEGEN_TLS=1; off, no flag and no uprobes."""
    probe, _, _, _, _ = make()
    probe.select_capture("syscalls", [])
    assert "-DTELEGEN_TLS=1" in probe.cflags(probe._config)
    probe._config["agent"]["ebpf"]["tls"] = False
    assert not [f for f in probe.cflags(probe._config) if "TLS" in f]
    probe.attach_uprobes(FakeBPF())
    assert probe.uprobe_programs() == {} and "tls" not in probe.status()


def test_http2_and_grpc_exchanges_make_server_and_client_spans_and_histograms():
    """The http2 stream decoder's exchanges through the shared sink: the event's `server` flag
    makes SERVER spans (client.address from the peer), else CLIENT spans; gRPC calls go to
    rpc.*.duration in ms, HTTP ones to http.*.request.duration with version 2."""
    probe, _, clock, pipeline, _ = make()
    talk = Conversation()
    talk.respond(talk.request("/ok"), body=b"hi")
    grpc = [("content-type", "application/grpc")]
    talk.respond(talk.request("/demo.Echo/Fail", method="POST", body=b"\0\0\0\0\0", headers=grpc),
                 headers=grpc, trailers=[("grpc-status", "5"), ("grpc-message", "no such item")])
    for conn, server in ((1, True), (2, False)):
        for from_client, data, ts in talk.chunks:
            probe._decoders.handle_bytes(stream_event(ts * 100, data, from_client=from_client, conn=conn, server=server,
                                                      proto=PROTO_HTTP2, peer_port=50000 if server else 8080))
    clock.advance(0)
    spans = [Span.FromString(raw) for s, _, recs in pipeline.calls if s == "traces" for raw in recs]
    facts = [(s.name, s.kind, s.status.code, {kv.key: kv.value for kv in s.attributes}) for s in spans]
    assert [(name, kind, code) for name, kind, code, _ in facts] == [
        ("GET", Span.SPAN_KIND_SERVER, 0), ("demo.Echo/Fail", Span.SPAN_KIND_SERVER, 0),
        ("GET", Span.SPAN_KIND_CLIENT, 0), ("demo.Echo/Fail", Span.SPAN_KIND_CLIENT, 2)]
    server_http, server_rpc, client_http, client_rpc = (attrs for _, _, _, attrs in facts)
    assert server_http["network.protocol.version"].string_value == "2"
    assert server_http["client.address"].string_value == "127.0.0.1"
    assert server_http["network.peer.port"].int_value == 50000
    assert client_http["server.port"].int_value == 8080
    assert server_rpc["rpc.grpc.status_code"].int_value == 5 and client_rpc["rpc.method"].string_value == "Fail"
    assert spans[3].status.message == "no such item"
    probe.flush_metrics()
    metrics = {m.name: m for s, _, recs in pipeline.calls if s == "metrics" for m in recs}
    assert metrics["rpc.server.duration"].unit == "ms" and metrics["rpc.client.duration"].unit == "ms"
    assert metrics["http.server.request.duration"].histogram.data_points[0].count == 1
    assert {p["name"]: p["exchanges"] for p in probe.protocols_status()}["http2"] == 4


def test_an_http2_requests_traceparent_makes_its_span_a_child_of_the_caller():
    """Two requests of one shape with different traceparents (and one without, one invalid):
    each span joins its own caller's trace; the shared template does not carry a parent over."""
    probe, _, clock, pipeline, _ = make()
    talk = Conversation()
    parents = [("1" * 32, "a" * 16), ("2" * 32, "b" * 16)]
    for trace, parent in parents:
        talk.respond(talk.request("/ok", headers=[("traceparent", f"00-{trace}-{parent}-01")]))
    talk.respond(talk.request("/ok"))
    talk.respond(talk.request("/ok", headers=[("traceparent", "00-not-a-valid-header-01")]))
    for from_client, data, ts in talk.chunks:
        probe._decoders.handle_bytes(stream_event(ts * 100, data, from_client=from_client, conn=1, server=True,
                                                  proto=PROTO_HTTP2, peer_port=50000))
    clock.advance(0)
    spans = [Span.FromString(raw) for s, _, recs in pipeline.calls if s == "traces" for raw in recs]
    assert len(spans) == 4
    for span, (trace, parent) in zip(spans, parents):
        assert (span.trace_id.hex(), span.parent_span_id.hex()) == (trace, parent)
    for span in spans[2:]:
        assert span.parent_span_id == b"" and span.trace_id.hex() not in {t for t, _ in parents}
