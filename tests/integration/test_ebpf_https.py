"""
HTTPS plaintext through the OpenSSL uprobes (bpf/tls.h) end to end on the real kernel, in both
capture modes: nginx-light with a self-signed certificate driven by curl (SSL_read/SSL_write,
both sides), a Python http.server wrapped in ssl driven by http.client (SSL_read_ex/
SSL_write_ex), and a client started after the agent with its own copy of libssl (found through
its exec event and /proc/PID/maps). Each exchange is one span with url.scheme https, on each
side, and the ciphertext makes none.

The agent runs in this process (tests/support/ebpf_agent.py), once per capture mode; the
servers run once per module. Each test finds its data by its server's port or its children's
pids: other engineers make traffic on this machine at the same time.
"""
import os
import shutil
import subprocess
from collections import Counter

import pytest
import pytest_twisted
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from twisted.internet import threads

from tests.support import http_apps as apps
from tests.support.ebpf_agent import (  # noqa: F401 (receiver: a fixture)
    STATUS, Agent, by_pid, drops, exactly, from_now, ready, receiver, running, shape, spans_where)
from tests.support.twisted_wait import until

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]


@pytest.fixture(scope="module", params=["socket", "syscalls"])
def agent(receiver, request, python_https, nginx_https):
    """
    The agent, once per capture mode (every test here runs in both), capturing the two servers'
    ports only: other engineers' load tests on this host would otherwise fill its ring buffer.
    """
    agent = Agent(receiver, capture=request.param)
    agent.config["agent"]["ebpf"]["network"]["include_ports"] = [(port, port) for _, port in (python_https, nginx_https)]
    yield from running(agent)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return apps.self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def python_https(certificate):
    child, port = apps.python_server(tls=certificate)
    yield child, port
    child.stop()


@pytest.fixture(scope="module")
def nginx_https(certificate, tmp_path_factory):
    child, port = apps.nginx(str(tmp_path_factory.mktemp("nginx")), static_bytes=100000, tls=certificate)
    apps.wait_listening(port)
    yield child, port
    child.stop()


def assert_https(spans, port):
    for _, attrs, span in spans:
        assert attrs["url.scheme"] == "https" and attrs["network.protocol.version"] == "1.1"
        assert attrs["server.port"] == port
        assert 0 < span.end_time_unix_nano - span.start_time_unix_nano < 10 * 10**9


PARSE_DROPS = ("unparsed_request", "unparsed_response", "response_without_request", "tls_unlinked")


# GET unless a body is given; /missing closes its connection (the next request opens another).
PLAN = [{"method": "POST" if body else "GET", "path": path, **({"body": body} if body else {}),
         **({"keepalive": False} if path == "/missing" else {})}
        for path, body in (("/ok", None), ("/echo", "abcdef"), ("/missing", None), ("/boom", None), ("/big/200000", None))]


@pytest_twisted.ensureDeferred
async def test_python_https_server_and_client_give_one_span_per_exchange_each(agent, receiver, python_https):
    """http.client over ssl to http.server over ssl (the _ex functions): N SERVER and N CLIENT https spans, keep-alive and not."""
    await ready(agent)
    server, port = python_https
    plan = PLAN * 2
    server_found = from_now(lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid))
    client_pid, results = await threads.deferToThread(apps.run_client, port, plan, 1, True)
    assert [s for worker in results for s, _ in worker] == [STATUS[r["path"]] for r in plan]

    expected = Counter((r["method"], r["path"], STATUS[r["path"]]) for r in plan)
    server_spans = await exactly(agent, server_found, len(plan), "server spans")
    assert shape(server_spans) == expected
    assert_https(server_spans, port)
    for _, attrs, span in server_spans:
        assert attrs["client.address"] == attrs["network.peer.address"] == "127.0.0.1"
        assert (span.status.code == Status.STATUS_CODE_ERROR) == (attrs["http.response.status_code"] >= 500)
        if attrs["url.path"] == "/echo":
            assert attrs["http.request.body.size"] == 6 and attrs["http.response.body.size"] == 1
        if attrs["url.path"] == "/big/200000":
            assert attrs["http.response.body.size"] == 200000

    client_spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, client_pid), len(plan), "client spans")
    assert shape(client_spans) == expected
    assert_https(client_spans, port)
    assert all(a["network.peer.port"] == port for _, a, _ in client_spans)
    assert drops(agent, PARSE_DROPS) == dict.fromkeys(PARSE_DROPS, 0)


def run_curl(*urls):
    """One curl run (all urls on one keep-alive connection) to completion; its pid."""
    child = subprocess.Popen(["curl", "-sk", *sum((["-o", "/dev/null", url] for url in urls), [])])
    assert child.wait(timeout=30) == 0
    return child.pid


@pytest_twisted.ensureDeferred
async def test_curl_against_nginx_over_tls(agent, receiver, nginx_https):
    """curl -k to nginx with TLS: SERVER spans from nginx, CLIENT spans from curl, all https, none from the ciphertext."""
    await ready(agent)
    _, port = nginx_https
    base = f"https://127.0.0.1:{port}"
    on_port = from_now(lambda: spans_where(receiver, Span.SPAN_KIND_SERVER, **{"server.port": port}))
    pids = [await threads.deferToThread(run_curl, base + "/ok", base + "/missing", base + "/big.bin"),
            await threads.deferToThread(run_curl, base + "/boom")]
    expected = Counter({("GET", "/ok", 200): 1, ("GET", "/missing", 404): 1, ("GET", "/big.bin", 200): 1,
                        ("GET", "/boom", 500): 1})

    server_spans = await exactly(agent, on_port, 4, "nginx spans")
    assert shape(server_spans) == expected
    assert_https(server_spans, port)
    assert {r["process.executable.name"] for r, _, _ in server_spans} == {"nginx"}
    assert [a["http.response.body.size"] for _, a, _ in server_spans if a["url.path"] == "/big.bin"] == [100000]

    client_spans = await exactly(agent, lambda: [s for pid in pids for s in by_pid(receiver, Span.SPAN_KIND_CLIENT, pid)],
                                 4, "curl's client spans")
    assert shape(client_spans) == expected
    assert_https(client_spans, port)
    assert all(a["user_agent.original"].startswith("curl/") for _, a, _ in client_spans)
    # Nothing on that port was taken for plaintext HTTP.
    assert [s for s in on_port() if s[1]["url.scheme"] != "https"] == []
    assert drops(agent, PARSE_DROPS) == dict.fromkeys(PARSE_DROPS, 0)


@pytest_twisted.ensureDeferred
async def test_a_client_started_after_the_agent_with_its_own_libssl_is_seen(agent, receiver, python_https, tmp_path):
    """
    A copy of libssl (another inode: no uprobe on it yet) loaded by a process that starts after
    the agent: its exec event (or the maps rescan) attaches the uprobes to that file before it
    makes its requests, and its exchanges are client spans like any other.
    """
    await ready(agent)
    _, port = python_https
    libs = tmp_path / "lib"
    libs.mkdir()
    shutil.copy("/lib/x86_64-linux-gnu/libssl.so.3", libs / "libssl.so.3")
    client = apps.start_client(port, PLAN, tls=True, wait=True, env=dict(os.environ, LD_LIBRARY_PATH=str(libs)))
    try:
        assert client.stdout.readline() == "ready\n"

        def attached():
            libraries = agent.http.status()["tls"]["libraries"]
            return [lib for lib in libraries if os.path.samefile(lib["path"], libs / "libssl.so.3")]

        [library] = await until(attached, timeout=30, message="uprobes on the client's own libssl")
        assert library["symbols"] == ["SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"]
        pid, results = await threads.deferToThread(apps.client_results, client, True)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert [s for worker in results for s, _ in worker] == [STATUS[r["path"]] for r in PLAN]
    spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, pid), len(PLAN), "client spans")
    assert shape(spans) == Counter((r["method"], r["path"], STATUS[r["path"]]) for r in PLAN)
    assert_https(spans, port)
