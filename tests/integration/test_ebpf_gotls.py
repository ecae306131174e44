"""
HTTPS plaintext from Go's crypto/tls (bpf/tls.h, uprobes on crypto/tls.(*Conn).Write/Read and on
their RET instructions in the Go executable) end to end on the real kernel, in both capture
modes: a Go net/http server over TLS (self-signed certificate) driven by a Go client speaking
HTTP/2 (ALPN h2, Go's default) and HTTP/1.1 only, and by curl -k (OpenSSL: its client spans come
from the libssl uprobes). Each exchange is one span per side with url.scheme https and the
protocol version spoken; the ciphertext makes none. Stripped and position-independent builds are
probed like the other; one whose function table cannot be read is listed as not probed.

The agent runs in this process (tests/support/ebpf_agent.py), once per capture mode; the Go
programs are built once for the module (tests/support/go_tls.py). Each test finds its data by
the server's port or the client's pid: other engineers make traffic on this machine too.
"""
import os
import shutil
import subprocess
from collections import Counter

import pytest
import pytest_twisted
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from twisted.internet import threads

from telegen.ebpf.tls import GO_FUNCTIONS, GO_STRIPPED, PCLNTAB_HEADS
from tests.support import go_tls
from tests.support import http_apps as apps
from tests.support.ebpf_agent import (  # noqa: F401 (receiver: a fixture)
    Agent, by_pid, drops, exactly, from_now, ready, receiver, running, shape)
from tests.support.twisted_wait import until

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

STATUS = {"/ok": 200, "/echo": 200, "/missing": 404, "/boom": 500, "/big/200000": 200}
PATHS = list(STATUS)
# Not tls_unlinked: it counts the plaintext of every unlinked TLS connection of the host, whatever
# its port (other engineers' TLS traffic); the exact span counts say none of the tests' was lost.
PARSE_DROPS = ("unparsed_request", "unparsed_response", "response_without_request")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(executable, its stripped build, its stripped position-independent build (as Debian builds Go)), built once."""
    folder = str(tmp_path_factory.mktemp("go"))
    return (go_tls.build(folder), go_tls.build(folder, stripped=True),
            go_tls.build(folder, stripped=True, pie=True))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return apps.self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def go_server(built, certificate):
    child, port = go_tls.server(built[0], certificate)
    yield child, port
    child.stop()


@pytest.fixture(scope="module")
def pie_server(built, certificate):
    child, port = go_tls.server(built[2], certificate)
    yield child, port
    child.stop()


@pytest.fixture(scope="module", params=["socket", "syscalls"])
def agent(receiver, request, go_server, pie_server):
    """The agent in one capture mode with Go's crypto/tls probes on (agent.ebpf.tls_go, off by default), capturing the Go servers' ports only."""
    agent = Agent(receiver, capture=request.param)
    agent.config["agent"]["ebpf"]["tls_go"] = True
    agent.config["agent"]["ebpf"]["network"]["include_ports"] = [(port, port) for _, port in (go_server, pie_server)]
    yield from running(agent)


def go_status(agent, binary):
    return [exe for exe in agent.http.status()["tls"]["go_executables"] if os.path.samefile(exe["path"], binary)]


async def probed(agent, binary):
    """The Go executable's status once its uprobes are attached (the server runs it: found by the process scan)."""
    await ready(agent)
    [exe] = await until(lambda: go_status(agent, binary), timeout=30, message=f"Go TLS uprobes on {binary}")
    return exe


def assert_https(spans, port, version):
    """https spans of that version to port named by their method, errors per the conventions (5xx for servers, 4xx too for clients)."""
    for _, attrs, span in spans:
        assert span.name == attrs["http.request.method"]                 # no route known for these paths
        assert (attrs["url.scheme"], attrs["network.protocol.version"], attrs["server.port"]) == ("https", version, port)
        error_from = 500 if span.kind == Span.SPAN_KIND_SERVER else 400
        assert (span.status.code == Status.STATUS_CODE_ERROR) == (attrs["http.response.status_code"] >= error_from)
        assert 0 < span.end_time_unix_nano - span.start_time_unix_nano < 10 * 10**9


EXPECTED = Counter(("POST" if p == "/echo" else "GET", p, s) for p, s in STATUS.items())


@pytest.mark.parametrize("proto, version", [(2, "2"), (1, "1.1")])
@pytest_twisted.ensureDeferred
async def test_go_client_and_go_server_give_one_https_span_per_exchange_each(agent, receiver, built, go_server, proto,
                                                                             version):
    """A Go client (HTTP/2 by ALPN, or HTTP/1.1 only) to the Go server: N SERVER and N CLIENT https spans of that version."""
    exe = await probed(agent, built[0])
    assert exe["symbols"] == list(GO_FUNCTIONS) and exe["error"] is None
    assert exe["returns"] >= 2
    server, port = go_server
    server_found = from_now(lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid))
    urls = [f"https://127.0.0.1:{port}{p}" for p in PATHS]
    pid, lines = await threads.deferToThread(go_tls.run_client, built[0], urls, proto)
    assert lines == [f"{STATUS[p]} HTTP/{'2.0' if proto == 2 else '1.1'}" for p in PATHS]

    server_spans = await exactly(agent, server_found, len(PATHS), "Go server spans")
    assert shape(server_spans) == EXPECTED
    assert_https(server_spans, port, version)
    assert {a["client.address"] for _, a, _ in server_spans} == {"127.0.0.1"}
    client_spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, pid), len(PATHS), "Go client spans")
    assert shape(client_spans) == EXPECTED
    assert_https(client_spans, port, version)
    assert all(a["user_agent.original"].startswith("Go-http-client/") for _, a, _ in client_spans)
    big = [a for _, a, _ in server_spans + client_spans if a["url.path"] == "/big/200000"]
    assert [a["http.response.body.size"] for a in big] == [200000, 200000]
    assert drops(agent, PARSE_DROPS) == dict.fromkeys(PARSE_DROPS, 0)


def run_curl(*args):
    """(pid, "STATUS VERSION" per transfer) of one curl run on one connection."""
    proc = subprocess.Popen(["curl", "-sk", "-w", "%{http_code} %{http_version}\\n", *args],
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return proc.pid, out.split("\n")[:-1]


@pytest.mark.parametrize("how, version", [("--http2", "2"), ("--http1.1", "1.1")])
@pytest_twisted.ensureDeferred
async def test_curl_against_the_go_server(agent, receiver, built, go_server, how, version):
    """curl -k (OpenSSL) to the Go server: SERVER spans from the Go uprobes, CLIENT spans from the libssl ones."""
    await probed(agent, built[0])
    server, port = go_server
    server_found = from_now(lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid))
    paths = ["/ok", "/missing", "/boom"]
    args = [how]
    for p in paths:
        args += ["-o", "/dev/null", f"https://127.0.0.1:{port}{p}"]
    pid, out = await threads.deferToThread(run_curl, *args)
    assert out == [f"{STATUS[p]} {version}" for p in paths]
    expected = Counter(("GET", p, STATUS[p]) for p in paths)
    server_spans = await exactly(agent, server_found, 3, "Go server spans")
    assert shape(server_spans) == expected
    assert_https(server_spans, port, version)
    client_spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, pid), 3, "curl's client spans")
    assert shape(client_spans) == expected
    assert_https(client_spans, port, version)
    assert drops(agent, PARSE_DROPS) == dict.fromkeys(PARSE_DROPS, 0)


@pytest_twisted.ensureDeferred
async def test_status_lists_the_go_uprobes_a_stripped_build_probed_and_an_unreadable_one_not(agent, built, certificate,
                                                                                             tmp_path):
    """
    /status/ebpf: each executable with its symbols and RET count, the programs attached; a
    stripped build (functions from Go's pclntab) like the other; one whose function table cannot
    be read (its header zeroed here) listed with why and counted.
    """
    await probed(agent, built[0])
    stripped, _ = go_tls.server(built[1], certificate)
    try:
        [exe] = await until(lambda: go_status(agent, built[1]), timeout=30, message="the stripped binary listed")
    finally:
        stripped.stop()
    assert (exe["symbols"], exe["returns"] > 0, exe["error"]) == (list(GO_FUNCTIONS), True, None)
    unreadable = tmp_path / "gotls-unreadable"
    with open(built[1], "rb") as f:
        image = f.read()
    [magic] = [at for at in map(image.find, PCLNTAB_HEADS) if at >= 0]     # the pclntab header
    unreadable.write_bytes(image[:magic] + bytes(8) + image[magic + 8:])
    before = agent.http.status()["tls"]["go_not_probed"]
    assert agent.http._tls.attach(str(unreadable))                  # as the process scan would on its exec
    assert go_status(agent, unreadable) == [{"path": str(unreadable), "symbols": [], "returns": 0, "error": GO_STRIPPED}]
    assert agent.http.status()["tls"]["go_not_probed"] == before + 1
    programs = {p["name"]: p for p in agent.ebpf.status()["programs"]}
    assert programs["gotls_enter_write"]["uprobe"] == "crypto/tls.(*Conn).Write"
    assert programs["gotls_enter_read"]["uprobe"] == "crypto/tls.(*Conn).Read"
    assert programs["gotls_enter_handshake"]["uprobe"] == "crypto/tls.(*Conn).handshakeContext"
    assert programs["gotls_return"]["uprobe"] == "ret:crypto/tls.(*Conn).Write,crypto/tls.(*Conn).Read"
    assert programs["gotls_handshake_return"]["uprobe"] == "ret:crypto/tls.(*Conn).handshakeContext"
    assert all(programs[p]["attached"] and programs[p]["type"] == "kprobe"
               for p in ("gotls_enter_write", "gotls_enter_read", "gotls_enter_handshake", "gotls_return",
                         "gotls_handshake_return"))


@pytest_twisted.ensureDeferred
async def test_a_go_program_started_after_the_agent_is_probed_from_its_exec(agent, receiver, built, go_server, tmp_path):
    """
    A copy of the executable (another inode: no uprobes yet) started after the agent: its exec
    event (or the rescan) attaches the uprobes to that file before it makes its requests.
    """
    await ready(agent)
    _, port = go_server
    copy = tmp_path / "gotls-copy"
    shutil.copy(built[0], copy)
    client = go_tls.start_client(str(copy), [f"https://127.0.0.1:{port}/ok", f"https://127.0.0.1:{port}/missing"], 2,
                                 wait=True)
    try:
        assert client.stdout.readline() == "ready\n"
        [exe] = await until(lambda: go_status(agent, copy), timeout=30, message="uprobes on the copy")
        assert exe["symbols"] == list(GO_FUNCTIONS)
        pid, lines = await threads.deferToThread(go_tls.client_results, client, True)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert lines == ["200 HTTP/2.0", "404 HTTP/2.0"]
    spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, pid), 2, "the copy's client spans")
    assert shape(spans) == Counter({("GET", "/ok", 200): 1, ("GET", "/missing", 404): 1})
    assert_https(spans, port, "2")


@pytest_twisted.ensureDeferred
async def test_a_stripped_position_independent_go_build_is_probed_on_both_sides(agent, receiver, built, pie_server):
    """-buildmode=pie -ldflags=-s (ELF type DYN, no .symtab: functions from the pclntab): server and client spans over HTTP/2."""
    exe = await probed(agent, built[2])
    assert exe["symbols"] == list(GO_FUNCTIONS) and exe["error"] is None
    server, port = pie_server
    server_found = from_now(lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid))
    pid, lines = await threads.deferToThread(go_tls.run_client, built[2], [f"https://127.0.0.1:{port}/ok",
                                                                            f"https://127.0.0.1:{port}/boom"], 2)
    assert lines == ["200 HTTP/2.0", "500 HTTP/2.0"]
    expected = Counter({("GET", "/ok", 200): 1, ("GET", "/boom", 500): 1})
    for found, what in ((server_found, "PIE server spans"), (lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, pid), "PIE client spans")):
        spans = await exactly(agent, found, 2, what)
        assert shape(spans) == expected
        assert_https(spans, port, "2")
