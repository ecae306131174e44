"""
TCP telemetry end to end on the real kernel: child processes make real loopback connections,
EbpfService runs the `tcp` and `process` probes, the real ExportPipeline ships to a real OTLP
receiver, and the test finds its own connections there by port and pid.

Traffic comes from child processes because the agent drops its own connections (the test
process is the agent here).
"""
import os
import socket
import subprocess
import sys

import pytest
import pytest_twisted
from opentelemetry.proto.trace.v1 import trace_pb2 as t
from twisted.internet import defer

from telegen.discovery.processes import ProcessTable
from telegen.ebpf.process_events import ProcessProbe
from telegen.ebpf.service import EbpfService
from telegen.ebpf.tcp import TcpProbe
from telegen.export.pipeline import ExportPipeline
from telegen.selfmetrics import SelfMetrics
from tests.support.otlp_receiver import attrs_dict
from tests.support.twisted_wait import until
from tests.support.fakes import make_config

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

CLIENT = """
import socket, sys
host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
try:
    s.connect((host, int(sys.argv[1])))
    s.sendall(b"hello")
    s.close()
    print("connected", flush=True)
except OSError as e:
    print(e.errno, flush=True)
sys.stdin.read()
"""

SERVER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
for _ in range(int(sys.argv[1])):
    c, _ = s.accept()
    while c.recv(4096):
        pass
    c.close()
sys.stdin.read()
"""


def child(code, *args, service):
    """A Python child with OTEL_SERVICE_NAME=service; it waits on stdin after its work."""
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "OTEL_SERVICE_NAME": service})


def closed_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def points(receiver, name, **want):
    """
    [(resource, point attrs, value)] of metric `name` whose point attributes include `want`: the
    latest export of each series (the metrics are cumulative, so each flush repeats a series).
    """
    latest = {}
    for resource, metric in receiver.metrics():
        if metric.name != name:
            continue
        data = metric.histogram.data_points if metric.HasField("histogram") else metric.sum.data_points
        for p in data:
            attrs = attrs_dict(p.attributes)
            if all(attrs.get(k) == v for k, v in want.items()):
                series = (tuple(sorted(resource.items())), tuple(sorted(attrs.items())), p.start_time_unix_nano)
                latest[series] = (resource, attrs, p.count if metric.HasField("histogram") else p.as_int)
    return list(latest.values())


@pytest.fixture
def agent(otlp_receiver):
    """ProcessTable + EbpfService(tcp, process) + ExportPipeline to the receiver, started and stopped."""
    config = make_config()
    config["otlp"].update(endpoint=otlp_receiver.grpc_endpoint, protocol="grpc", insecure=True)
    for queue in config["queues"].values():
        queue["batch_timeout"] = 0.1
    config["agent"]["discovery"]["poll_interval"] = 0.3
    metrics = SelfMetrics()
    pipeline = ExportPipeline(config, metrics)
    table = ProcessTable(config, metrics, exit_grace=5.0)
    tcp = TcpProbe(config, pipeline, table, metrics, interval=0.3)
    ebpf = EbpfService(config, metrics, pipeline, table, probes=[tcp, ProcessProbe(table)])
    for service in (pipeline, table, ebpf):
        service.startService()
    yield ebpf, table, metrics
    for service in (ebpf, table, pipeline):
        pytest_twisted.blockon(defer.maybeDeferred(service.stopService))


async def ready(ebpf):
    await until(lambda: ebpf.ready_check() == "ok", timeout=180, message=f"probes attached ({ebpf.ready_check()})")


@pytest.mark.parametrize("host, network_type", [("127.0.0.1", "ipv4"), ("::1", "ipv6")])
@pytest_twisted.ensureDeferred
async def test_failed_connect_yields_error_span_and_failed_metric(agent, otlp_receiver, host, network_type):
    """A refused connect becomes a CLIENT span with status ERROR and a failed-connection data point, with the client's resource."""
    ebpf, _, metrics = agent
    await ready(ebpf)
    port = closed_port(host)
    client = child(CLIENT, port, host, service="tcp-client")
    try:
        assert client.stdout.readline().strip() == "111"        # ECONNREFUSED
        spans = await until(lambda: [(r, s) for r, s in otlp_receiver.spans()
                                     if attrs_dict(s.attributes).get("server.port") == port], message="failed-connect span")
        [(resource, span)] = spans
        assert span.name == "tcp connect" and span.kind == t.Span.SPAN_KIND_CLIENT
        assert span.status.code == t.Status.STATUS_CODE_ERROR
        attrs = attrs_dict(span.attributes)
        assert attrs["error.type"] == "connection_refused"
        assert attrs["server.address"] == attrs["network.peer.address"] == host
        assert attrs["network.type"] == network_type
        assert 0 < span.end_time_unix_nano - span.start_time_unix_nano < 10**9
        assert (resource["process.pid"], resource["service.name"]) == (client.pid, "tcp-client")
        failed = await until(lambda: points(otlp_receiver, "telegen.tcp.connections.failed", **{"server.port": port}),
                             message="failed-connection metric")
        [(resource, attrs, value)] = failed
        assert value == 1 and attrs["error.type"] == "connection_refused"
        assert resource["process.pid"] == client.pid
        assert metrics.registry.get_sample_value("telegen_spans_collected_total") >= 1
    finally:
        client.communicate("")


@pytest_twisted.ensureDeferred
async def test_connection_lifecycle_metrics_per_direction_and_process(agent, otlp_receiver):
    """Three real connections: opened by the client, accepted by the listener's owner, closed on both sides with durations."""
    ebpf, table, _ = agent
    await ready(ebpf)
    server = child(SERVER, 3, service="tcp-server")
    port = int(server.stdout.readline())
    clients = []
    try:
        await until(lambda: table.listener_pid(port) == server.pid, message="listener known to the process table")
        for _ in range(3):
            c = child(CLIENT, port, service="tcp-client")
            assert c.stdout.readline().strip() == "connected"
            clients.append(c)
        pids = {c.pid for c in clients}
        port_match = {"server.port": port}

        def total(name, direction, pid):
            found = points(otlp_receiver, name, **port_match, **{"telegen.tcp.direction": direction})
            return sum(v for r, _, v in found if r.get("process.pid") in pid)

        await until(lambda: total("telegen.tcp.connections.closed", "incoming", {server.pid}) == 3
                    and total("telegen.tcp.connections.closed", "outgoing", pids) == 3, message="closed on both sides")
        assert total("telegen.tcp.connections.opened", "outgoing", pids) == 3
        assert total("telegen.tcp.connections.accepted", "incoming", {server.pid}) == 3
        assert total("telegen.tcp.connection.duration", "incoming", {server.pid}) == 3
        assert total("telegen.tcp.connect.duration", "outgoing", pids) == 3
        [(resource, attrs, _)] = points(otlp_receiver, "telegen.tcp.connections.accepted", **port_match)[:1]
        assert resource["service.name"] == "tcp-server" and attrs["client.address"] == "127.0.0.1"
        assert not points(otlp_receiver, "telegen.tcp.connections.failed", **port_match)
    finally:
        for proc in clients + [server]:
            proc.kill()
            proc.communicate()


FULL_BACKLOG = """
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(0)
port = srv.getsockname()[1]
first = socket.create_connection(("127.0.0.1", port))    # fills the accept queue (backlog 0)
late = socket.socket(); late.settimeout(1.5)
try:
    late.connect(("127.0.0.1", port))                     # its SYNs are dropped: retransmitted, then given up
except OSError as e:
    print(port, type(e).__name__, flush=True)
late.close()
sys.stdin.read()
"""


@pytest_twisted.ensureDeferred
async def test_timed_out_connect_is_connect_failed_with_syn_retransmits(agent, otlp_receiver):
    """SYNs dropped by a full accept queue: a retransmitted SYN is counted and the abandoned connect fails as connect_failed."""
    ebpf, _, _ = agent
    await ready(ebpf)
    proc = child(FULL_BACKLOG, service="tcp-timeout")
    try:
        port, error = proc.stdout.readline().split()
        port = int(port)
        assert error in ("TimeoutError", "timeout")
        spans = await until(lambda: [s for r, s in otlp_receiver.spans()
                                     if attrs_dict(s.attributes).get("server.port") == port], message="failed-connect span")
        [span] = spans
        assert attrs_dict(span.attributes)["error.type"] == "connect_failed"
        assert span.end_time_unix_nano - span.start_time_unix_nano >= 10**9      # at least one retransmission timeout
        retransmits = await until(lambda: points(otlp_receiver, "telegen.tcp.retransmits", **{"server.port": port}),
                                  message="retransmit metric")
        assert sum(v for _, _, v in retransmits) >= 1
        assert all(r["process.pid"] == proc.pid and a["telegen.tcp.direction"] == "outgoing" for r, a, _ in retransmits)
        [(_, attrs, value)] = await until(lambda: points(otlp_receiver, "telegen.tcp.connections.failed", **{"server.port": port}),
                                          message="failed metric")
        assert value == 1 and attrs["error.type"] == "connect_failed"
    finally:
        proc.communicate("")


@pytest_twisted.ensureDeferred
async def test_the_agents_own_connections_are_not_reported(agent, otlp_receiver):
    """Connections to and from the agent's process (this test process) never appear; a later failed connect proves the events were consumed."""
    ebpf, table, _ = agent
    await ready(ebpf)
    own = socket.socket()
    own.bind(("127.0.0.1", 0))
    own.listen()
    own_port = own.getsockname()[1]
    server = child(SERVER, 1, service="tcp-peer")
    peer_port = int(server.stdout.readline())
    try:
        await until(lambda: table.listener_pid(own_port) == os.getpid(), message="own listener known")
        incoming = child(CLIENT, own_port, service="tcp-to-agent")       # accepted by the agent
        assert incoming.stdout.readline().strip() == "connected"
        outgoing = socket.create_connection(("127.0.0.1", peer_port))    # opened by the agent
        outgoing.close()
        marker_port = closed_port()
        marker = child(CLIENT, marker_port, service="tcp-marker")
        assert marker.stdout.readline().strip() == "111"
        await until(lambda: points(otlp_receiver, "telegen.tcp.connections.failed", **{"server.port": marker_port}),
                    message="marker consumed and flushed")
        assert not points(otlp_receiver, "telegen.tcp.connections.accepted", **{"server.port": own_port})
        assert not points(otlp_receiver, "telegen.tcp.connections.opened", **{"server.port": peer_port})
        own_resources = [r for r, _ in otlp_receiver.metrics() if r.get("process.pid") == os.getpid()]
        assert own_resources == []
        for proc in (incoming, marker):
            proc.communicate("")
    finally:
        own.close()
        server.kill()
        server.communicate()
