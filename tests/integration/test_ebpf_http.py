"""
HTTP capture end to end on the real kernel: EbpfService (process + http probes) in this process,
the real ExportPipeline shipping to a real OTLP receiver, real servers (Python
ThreadingHTTPServer, nginx-light) and clients in child processes on loopback.

Each test finds its own data by its server's port or its children's pids: other engineers
make traffic on this machine at the same time. The agent's services are shared by the module
(one compile per capture mode: every test runs with agent.ebpf.capture socket and syscalls),
the receiver too.
"""
import os
import subprocess
import sys
import urllib.request
from collections import Counter

import pytest
import pytest_twisted
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from twisted.internet import defer, threads

from telegen.config.loader import defaults
from telegen.discovery.processes import ProcessTable
from telegen.ebpf.http_probe import HttpProbe
from telegen.ebpf.process_events import ProcessProbe
from telegen.ebpf.service import EbpfService
from telegen.export.pipeline import ExportPipeline
from telegen.selfmetrics import SelfMetrics
from tests.support import http_apps as apps
from tests.support.otlp_receiver import OtlpReceiver, attrs_dict
from tests.support.twisted_wait import until

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Agent:
    """The in-process agent parts the tests look at."""

    def __init__(self, receiver, http_probe=HttpProbe, capture="auto"):
        config = defaults()
        config["agent"]["ebpf"]["capture"] = capture
        config["otlp"].update(endpoint=receiver.grpc_endpoint, protocol="grpc", insecure=True)
        for queue in config["queues"].values():
            queue["batch_timeout"] = 0.1
        config["agent"]["host_metrics"]["interval"] = 0.5          # RED flush period
        config["agent"]["discovery"]["poll_interval"] = 0.5
        config["agent"]["ebpf"]["network"].update(routes=["/users/{id}"], exclude_paths=["/health*"])
        # The agent shares this process with the receiver and the test, whose CPU the governor would
        # count as the consumer's: on a busy shared host it then held the reader at min_cpu while
        # other engineers' traffic filled the ring (every test event lost). A fixed one-core budget.
        config["agent"]["ebpf"].update(min_cpu=1.0, max_cpu=1.0)
        self.config = config
        self.metrics = SelfMetrics()
        self.pipeline = ExportPipeline(config, self.metrics)
        self.table = ProcessTable(config, self.metrics)
        self.http = http_probe(config, self.pipeline, self.table, self.metrics)
        self.ebpf = EbpfService(config, self.metrics, self.pipeline, self.table,
                                probes=[ProcessProbe(self.table), self.http])
        self.services = (self.pipeline, self.table, self.ebpf)


@pytest.fixture(scope="module")
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()


def running(agent):
    """Start the agent's services, yield it, stop them (the body of an agent fixture)."""
    for service in agent.services:
        service.startService()
    yield agent
    for service in reversed(agent.services):
        pytest_twisted.blockon(defer.maybeDeferred(service.stopService))


@pytest.fixture(scope="module", params=["socket", "syscalls"])
def agent(receiver, request):
    """The agent, once per capture mode (every test here runs in both)."""
    yield from running(Agent(receiver, capture=request.param))


@pytest.fixture
def python_server():
    child, port = apps.python_server()
    yield child, port
    child.stop()


async def ready(agent):
    await until(lambda: agent.ebpf.ready_check() == "ok", timeout=180, message=f"probes attached ({agent.ebpf.ready_check()})")
    configured = agent.config["agent"]["ebpf"]["capture"]
    assert agent.http.capture == ("socket" if configured == "auto" else configured)     # this kernel has the hooks


def spans_where(receiver, kind, **want):
    """[(resource, attrs, span)] of spans of `kind` whose attributes include `want`."""
    out = []
    for resource, span in receiver.spans():
        attrs = attrs_dict(span.attributes)
        if span.kind == kind and all(attrs.get(k) == v for k, v in want.items()):
            out.append((resource, attrs, span))
    return out


def by_pid(receiver, kind, pid):
    return [(r, a, s) for r, a, s in spans_where(receiver, kind) if r.get("process.pid") == pid]


async def exactly(agent, found, n, what):
    """Wait until found() has n items, flush once more, and check it is still n (not more)."""
    await until(lambda: len(found()) >= n, timeout=30, message=f"{n} {what} (have {len(found())})")
    agent.http.submit_spans()
    await agent.pipeline.flush()
    result = found()
    assert len(result) == n, f"{what}: expected {n}, got {len(result)}"
    return result


PLAN = [
    {"method": "GET", "path": "/ok"},
    {"method": "GET", "path": "/missing", "keepalive": False},
    {"method": "POST", "path": "/echo", "body": "abcdef"},
    {"method": "GET", "path": "/boom"},
    {"method": "DELETE", "path": "/ok"},
    {"method": "PUT", "path": "/create", "body": "xyz"},
    {"method": "HEAD", "path": "/ok", "keepalive": False},
    {"method": "GET", "path": "/big/200000"},
]
STATUS = {"/ok": 200, "/missing": 404, "/echo": 200, "/boom": 500, "/create": 201, "/big/200000": 200}


@pytest_twisted.ensureDeferred
async def test_python_server_and_client_give_exactly_one_span_per_request_each(agent, receiver, python_server):
    """3 concurrent clients, keep-alive and not, 200/201/404/500, bodies: N SERVER and N CLIENT spans, right attributes."""
    await ready(agent)
    server, port = python_server
    plan = PLAN * 3
    client_pid, results = await threads.deferToThread(apps.run_client, port, plan, 3)
    assert sorted(s for worker in results for s, _ in worker) == sorted(STATUS[r["path"]] for r in plan)

    server_spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid), len(plan), "server spans")
    expected = Counter((r["method"], r["path"], STATUS[r["path"]]) for r in plan)
    assert Counter((a["http.request.method"], a["url.path"], a["http.response.status_code"]) for _, a, _ in server_spans) == expected
    for resource, attrs, span in server_spans:
        assert resource["service.name"] == "python3" or resource["process.executable.name"].startswith("python")
        assert span.name == attrs["http.request.method"]
        assert attrs["url.scheme"] == "http" and attrs["network.protocol.version"] == "1.1"
        assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == port
        assert attrs["client.address"] == attrs["network.peer.address"] == "127.0.0.1"
        assert 0 < attrs["network.peer.port"] != port
        assert 0 < span.end_time_unix_nano - span.start_time_unix_nano < 10 * 10**9
        error = attrs["http.response.status_code"] >= 500
        assert (span.status.code == Status.STATUS_CODE_ERROR) == error
        if attrs["url.path"] == "/echo":
            assert attrs["http.request.body.size"] == 6 and attrs["http.response.body.size"] == 1
        if attrs["url.path"] == "/big/200000":
            assert attrs["http.response.body.size"] == 200000
        if attrs["http.request.method"] == "HEAD":
            assert attrs["http.response.body.size"] == 0

    client_spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, client_pid), len(plan), "client spans")
    assert Counter((a["http.request.method"], a["url.path"], a["http.response.status_code"]) for _, a, _ in client_spans) == expected
    for _, attrs, span in client_spans:
        assert attrs["server.port"] == attrs["network.peer.port"] == port
        assert (span.status.code == Status.STATUS_CODE_ERROR) == (attrs["http.response.status_code"] >= 400)


def run_curl(url):
    """One curl run to completion; its pid."""
    child = subprocess.Popen(["curl", "-s", "-o", "/dev/null", url])
    assert child.wait(timeout=30) == 0
    return child.pid


@pytest_twisted.ensureDeferred
async def test_a_short_lived_client_is_named_by_its_executable(agent, receiver, python_server):
    """
    curl runs for milliseconds and is usually gone from /proc before its events are read: its
    CLIENT spans still carry service.name and process.executable.name curl (the exec event's comm).
    """
    await ready(agent)
    _, port = python_server
    pids = [await threads.deferToThread(run_curl, f"http://127.0.0.1:{port}/ok?i={i}") for i in range(5)]
    spans = await exactly(agent, lambda: [s for pid in pids for s in by_pid(receiver, Span.SPAN_KIND_CLIENT, pid)],
                          len(pids), "curl's client spans")
    for resource, attrs, _ in spans:
        assert (resource["service.name"], resource["process.executable.name"]) == ("curl", "curl")
        assert attrs["user_agent.original"].startswith("curl/") and attrs["server.port"] == port


@pytest_twisted.ensureDeferred
async def test_red_metrics_count_every_server_request_by_status(agent, receiver, python_server):
    """http.server.request.duration: cumulative histogram points for the server process, counts per status code."""
    await ready(agent)
    server, port = python_server
    plan = [{"method": "GET", "path": "/ok"}] * 4 + [{"method": "GET", "path": "/boom"}] * 2
    await threads.deferToThread(apps.run_client, port, plan)

    def counts():
        latest = {}
        for resource, metric in receiver.metrics():
            if metric.name == "http.server.request.duration" and resource.get("process.pid") == server.pid:
                for p in metric.histogram.data_points:
                    latest[attrs_dict(p.attributes)["http.response.status_code"]] = p
        return latest

    latest = await until(lambda: (lambda c: c if c.get(200) and c[200].count == 4 and c.get(500) and c[500].count == 2 else None)(counts()),
                         timeout=30, message="RED histogram points")
    point = latest[200]
    assert sum(point.bucket_counts) == point.count == 4 and 0 < point.sum < 40
    assert list(point.explicit_bounds)[:3] == [0.005, 0.01, 0.025]


@pytest_twisted.ensureDeferred
async def test_nginx_keepalive_sendfile_and_errors(agent, receiver, tmp_path):
    """nginx-light: keep-alive and not, a sendfile'd 1 MiB file, 404 and 500: one SERVER span each."""
    await ready(agent)
    nginx, port = apps.nginx(str(tmp_path), static_bytes=1 << 20)
    try:
        await threads.deferToThread(apps.wait_listening, port)
        plan = ([{"method": "GET", "path": "/ok"}] * 5 + [{"method": "GET", "path": "/missing", "keepalive": False},
                {"method": "GET", "path": "/static/big.bin"}, {"method": "GET", "path": "/boom"},
                {"method": "GET", "path": "/index.html", "keepalive": False}])
        _, results = await threads.deferToThread(apps.run_client, port, plan, 2)
        assert sorted(s for w in results for s, _ in w) == sorted([200] * 7 + [404, 500])
        spans = await exactly(agent, lambda: spans_where(receiver, Span.SPAN_KIND_SERVER, **{"server.port": port}), len(plan), "nginx spans")
        by_path = Counter(a["url.path"] for _, a, _ in spans)
        assert by_path == Counter(r["path"] for r in plan)
        [big] = [a for _, a, _ in spans if a["url.path"] == "/static/big.bin"]
        assert big["http.response.body.size"] == 1 << 20 and big["http.response.status_code"] == 200
        assert {r["process.executable.name"] for r, _, _ in spans} == {"nginx"}
    finally:
        nginx.stop()


@pytest_twisted.ensureDeferred
async def test_traceparent_joins_the_callers_trace(agent, receiver, python_server):
    await ready(agent)
    server, port = python_server
    await threads.deferToThread(apps.run_client, port, [{"method": "GET", "path": "/ok", "headers": {"traceparent": TRACEPARENT}}])
    [(_, _, span)] = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid), 1, "joined span")
    assert span.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent_span_id.hex() == "00f067aa0ba902b7"
    assert span.span_id.hex() not in ("00f067aa0ba902b7", "")


PIPELINED = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"".join(b"GET /p%d HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" % i for i in range(3)))
data = b""
while data.count(b"HTTP/1.1 200") < 3:
    data += s.recv(65536)
s.close()
"""


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_each_get_a_span(agent, receiver, python_server):
    """Three requests in one write: three SERVER spans, in order."""
    await ready(agent)
    server, port = python_server
    await threads.deferToThread(subprocess.run, [sys.executable, "-c", PIPELINED, str(port)], check=True, timeout=30)
    spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid), 3, "pipelined spans")
    ordered = sorted(spans, key=lambda x: (x[2].end_time_unix_nano, x[1]["url.path"]))
    assert [a["url.path"] for _, a, _ in ordered] == ["/p0", "/p1", "/p2"]
    assert all(a["server.address"] == "x" for _, a, _ in spans)


@pytest_twisted.ensureDeferred
async def test_routes_name_spans_and_excluded_paths_are_dropped_and_counted(agent, receiver, python_server):
    await ready(agent)
    server, port = python_server
    dropped = agent.metrics.ebpf_events_dropped.labels(reason="excluded_path")
    before = dropped._value.get()
    await threads.deferToThread(apps.run_client, port, [{"method": "GET", "path": "/healthz"}, {"method": "GET", "path": "/users/42"}])
    [(_, attrs, span)] = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid), 1, "routed span")
    assert span.name == "GET /users/{id}" and attrs["http.route"] == "/users/{id}" and attrs["url.path"] == "/users/42"
    # Both sides of /healthz (server and client) are dropped; other tests on this host may add more.
    assert dropped._value.get() >= before + 2
    assert not [s for r, s in receiver.spans() if attrs_dict(s.attributes).get("url.path") == "/healthz"
                and r.get("process.pid") == server.pid]


@pytest_twisted.ensureDeferred
async def test_the_agents_own_http_traffic_is_invisible(agent, receiver, python_server):
    """This process is the agent: its requests give the server's SERVER span but no CLIENT span of its own."""
    await ready(agent)
    server, port = python_server

    def fetch():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ok", timeout=10) as r:
            return r.status

    assert await threads.deferToThread(fetch) == 200
    await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid), 1, "server span of our request")
    assert [s for r, s in receiver.spans() if r.get("process.pid") == os.getpid()] == []


@pytest_twisted.ensureDeferred
async def test_kernel_port_filter_excludes_and_includes(agent, receiver, python_server):
    """exclude_ports hides both sides of a port; include_ports hides every other port; clearing it restores capture."""
    await ready(agent)
    server, port = python_server
    one = [{"method": "GET", "path": "/ok"}]
    try:
        agent.http.set_port_filter([], [(port, port)])
        excluded_client, _ = await threads.deferToThread(apps.run_client, port, one)
        agent.http.set_port_filter([(port + 1, port + 1)], [])
        other_client, _ = await threads.deferToThread(apps.run_client, port, one)
    finally:
        agent.http.set_port_filter([], [])
    client, _ = await threads.deferToThread(apps.run_client, port, one)
    # The last request is captured; once its spans are in, the filtered ones would be too.
    await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, client), 1, "client span after clearing the filter")
    await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid), 1, "only the unfiltered server span")
    assert by_pid(receiver, Span.SPAN_KIND_CLIENT, excluded_client) == []
    assert by_pid(receiver, Span.SPAN_KIND_CLIENT, other_client) == []


def run_curl_expect_continue(url, body_file):
    """curl POSTing a file with `Expect: 100-continue`; (pid, status it got)."""
    child = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect: 100-continue",
                              "--data-binary", f"@{body_file}", url], stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    return child.pid, int(out)


@pytest_twisted.ensureDeferred
async def test_100_continue_is_interim_the_spans_carry_the_final_status(agent, receiver, python_server, tmp_path):
    """
    curl sends its headers, waits for `100 Continue`, then the 3 kB body; the server answers 201.
    Both spans say 201 (not 100), with the request body size, and nothing is dropped as unanswered.
    """
    await ready(agent)
    server, port = python_server
    body = tmp_path / "3kB.bin"
    body.write_bytes(os.urandom(3000).replace(b"G", b"g"))
    curl, status = await threads.deferToThread(run_curl_expect_continue, f"http://127.0.0.1:{port}/create", body)
    assert status == 201
    [(_, server_attrs, _)] = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid), 1, "server span")
    [(_, client_attrs, _)] = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, curl), 1, "curl's span")
    for attrs in (server_attrs, client_attrs):
        assert (attrs["http.request.method"], attrs["url.path"], attrs["http.response.status_code"]) == ("POST", "/create", 201)
        assert attrs["http.request.body.size"] == 3000 and attrs["http.response.body.size"] == 4


VECTORED = """
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
fd = s.fileno()

def response(read):
    data = b""
    while True:
        head, sep, body = data.partition(b"\\r\\n\\r\\n")
        if sep:
            length = int(next(line.split(b":")[1] for line in head.split(b"\\r\\n") if line.lower().startswith(b"content-length")))
            if len(body) >= length:
                return data
        data += read()

# 1: sendmsg of two buffers, a peek first (its bytes come again), then recvmsg
s.sendmsg([b"POST /echo HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 5\\r\\n\\r\\n", b"hello"])
assert s.recv(16, socket.MSG_PEEK).startswith(b"HTTP/1.1 200")
response(lambda: s.recvmsg(65536)[0])
# 2: writev, then readv into a small and a large buffer
os.writev(fd, [b"GET /ok HTTP/1.1\\r\\n", b"Host: x\\r\\n\\r\\n"])
def readv():
    small, large = bytearray(64), bytearray(65536)
    n = os.readv(fd, [small, large])
    return bytes((small + large)[:n])
response(readv)
# 3: write and read
os.write(fd, b"GET /missing HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
response(lambda: os.read(fd, 65536))
s.close()
"""


@pytest_twisted.ensureDeferred
async def test_vectored_and_peeked_io_on_both_sides(agent, receiver, python_server):
    """sendmsg/recvmsg (with a MSG_PEEK first), writev/readv, write/read: every exchange once, on both sides."""
    await ready(agent)
    server, port = python_server
    await threads.deferToThread(subprocess.run, [sys.executable, "-c", VECTORED, str(port)], check=True, timeout=30)
    want = Counter([("POST", "/echo", 200), ("GET", "/ok", 200), ("GET", "/missing", 404)])
    spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid), 3, "server spans")
    assert Counter((a["http.request.method"], a["url.path"], a["http.response.status_code"]) for _, a, _ in spans) == want
    clients = await exactly(agent, lambda: [x for x in spans_where(receiver, Span.SPAN_KIND_CLIENT, **{"server.port": port})
                                            if x[0].get("process.pid") != os.getpid()], 3, "client spans")
    assert Counter((a["http.request.method"], a["url.path"], a["http.response.status_code"]) for _, a, _ in clients) == want
    [echo] = [a for _, a, _ in spans if a["url.path"] == "/echo"]
    assert echo["http.request.body.size"] == 5
