"""
The kernel's per-connection request slots under pressure, in both capture modes: compiled with 4
slots in pending_requests (MAX_PENDING_REQUESTS) while 8 keep-alive clients and their 8 server
connections need 16. The syscall capture's slots are that LRU: evicted and recreated all the
time; whatever happens, no exchange may be mispaired (a span's path and status always belong
together) and none may vanish uncounted: every exchange becomes a span or a
response_without_request drop (its held request was evicted). The socket capture keeps each
slot in its socket's storage instead, so there all 16 connections pair every exchange.

Its own module: the agent here must not run while test_ebpf_http's captures the same traffic.
"""
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import pytest_twisted
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from twisted.internet import threads

from telegen.ebpf.http_probe import HttpProbe
from tests.support.ebpf_agent import STATUS, Agent, by_pid, ready, receiver, running, spans_where  # noqa: F401 (fixture)
from tests.support import http_apps as apps
from tests.support.twisted_wait import until

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

SLOTS = 4


class FewSlots(HttpProbe):
    def cflags(self, config):
        return super().cflags(config) + [f"-DMAX_PENDING_REQUESTS={SLOTS}"]


@pytest.fixture(scope="module", params=["socket", "syscalls"])
def agent(receiver, request):
    yield from running(Agent(receiver, http_probe=FewSlots, capture=request.param))


def without_request(agent):
    return agent.metrics.registry.get_sample_value("telegen_ebpf_events_dropped_total",
                                                   {"reason": "response_without_request"}) or 0


@pytest_twisted.ensureDeferred
async def test_evicted_slots_never_mispair_and_every_exchange_is_a_span_or_counted(agent, receiver):
    await ready(agent)
    server, port = apps.python_server()
    # Only this server's port: other engineers' HTTP traffic on this host would share the 4 slots
    # and add its own (counted) evictions to the drop counter this test balances.
    agent.http.set_port_filter([(port, port)], [])
    try:
        paths = ["/ok", "/missing", "/boom", "/ok", "/missing"]          # consecutive requests differ
        plan = [{"method": "GET", "path": paths[i % len(paths)]} for i in range(8 * 25)]
        dropped_before = without_request(agent)
        client_pid, results = await threads.deferToThread(apps.run_client, port, plan, 8)
        assert sorted(s for worker in results for s, _ in worker) == sorted(STATUS[r["path"]] for r in plan)

        def accounted():
            spans = by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid) + by_pid(receiver, Span.SPAN_KIND_CLIENT, client_pid)
            return len(spans) + without_request(agent) - dropped_before >= 2 * len(plan) and spans

        spans = await until(accounted, timeout=30, message="every exchange a span or a counted drop")
        agent.http.submit_spans()
        await agent.pipeline.flush()
        spans = by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid) + by_pid(receiver, Span.SPAN_KIND_CLIENT, client_pid)
        assert len(spans) + without_request(agent) - dropped_before == 2 * len(plan)
        assert {(a["url.path"], a["http.response.status_code"]) for _, a, _ in spans} <= set(STATUS.items())
        per_side = Counter(s.kind for _, _, s in spans)
        assert per_side[Span.SPAN_KIND_SERVER] <= len(plan) and per_side[Span.SPAN_KIND_CLIENT] <= len(plan)
        assert agent.ebpf.status()["ringbuf"]["events_lost"] == 0
        if agent.http.capture == "socket":
            # Slots in socket storage: twice the old LRU's size in busy connections, nothing evicted.
            assert without_request(agent) == dropped_before
            assert len(spans) == 2 * len(plan)
    finally:
        agent.http.set_port_filter([], [])
        server.stop()


# A server that reads one request and closes without answering, and its client, in one child.
HELD_AT_CLOSE = textwrap.dedent(r"""
    import socket, sys
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    client = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    server, _ = listener.accept()
    client.sendall(b"GET /never-answered HTTP/1.1\r\nHost: x\r\n\r\n")
    assert server.recv(4096).startswith(b"GET /never-answered")
    server.close()
    assert client.recv(4096) == b""
    client.close()
""")


def no_response(agent):
    return agent.metrics.registry.get_sample_value("telegen_ebpf_events_dropped_total", {"reason": "no_response"}) or 0


@pytest_twisted.ensureDeferred
async def test_a_request_held_when_its_connection_closes_leaves_with_the_close(agent, receiver):
    """
    The held request of a connection that closes unanswered leaves the kernel at the close (socket
    capture: out of the socket's storage, which goes with the socket), on both sides: user space
    then counts each as no_response, and neither becomes a span.
    """
    await ready(agent)
    port = apps.free_port()
    agent.http.set_port_filter([(port, port)], [])
    try:
        before = no_response(agent)
        done = await threads.deferToThread(subprocess.run, [sys.executable, "-c", HELD_AT_CLOSE, str(port)], timeout=30)
        assert done.returncode == 0
        await until(lambda: no_response(agent) - before >= 2, timeout=30, message="both held requests released at close")
        agent.http.submit_spans()
        await agent.pipeline.flush()
        assert no_response(agent) - before == 2
        assert not [s for s in spans_where(receiver, Span.SPAN_KIND_SERVER) if s[1].get("url.path") == "/never-answered"]
    finally:
        agent.http.set_port_filter([], [])
