"""
The agent maps a ring buffer's data once (telegen/ebpf/ringbuf.py), so a record whose bytes
pass the end of the ring arrives in two parts that the reader joins. On the real kernel: a small
HTTP ring that several hundred exchanges (~1.3 KB each, which does not divide the ring) wrap
several times, and every exchange still becomes exactly one span on each side with the right
attributes. A record joined wrongly fails to decode (a counted drop) or mis-parses.
"""
import pytest
import pytest_twisted
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from twisted.internet import threads

from tests.support import http_apps as apps
from tests.support.ebpf_agent import Agent, by_pid, exactly, ready, receiver, running  # noqa: F401 (fixture)

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

RING = 1 << 18          # 256 KiB: the exchanges below fill it about three times over
REQUESTS = 600


@pytest.fixture(scope="module")
def agent(receiver):
    yield from running(Agent(receiver, capture="socket", ringbuf_size=RING))


@pytest.fixture
def python_server():
    child, port = apps.python_server()
    yield child, port
    child.stop()


@pytest_twisted.ensureDeferred
async def test_records_across_the_end_of_a_small_ring_each_give_their_span(agent, receiver, python_server):
    await ready(agent)
    server, port = python_server
    plan = [{"method": "GET", "path": "/ok"}] * REQUESTS
    client_pid, results = await threads.deferToThread(apps.run_client, port, plan, 1)
    assert [s for worker in results for s, _ in worker] == [200] * REQUESTS

    server_spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid), REQUESTS, "server spans")
    client_spans = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, client_pid), REQUESTS, "client spans")
    assert {(a["url.path"], a["http.response.status_code"]) for _, a, _ in server_spans + client_spans} == {("/ok", 200)}
    ring = next(b for b in agent.ebpf.status()["ringbuf"]["buffers"] if b["name"] == "http_events")
    assert ring["size"] == RING and ring["events_received"] * 1200 > 2 * RING     # it did wrap (events are ~1.3 KB)
    assert ring["handler_errors"] == 0 and ring["events_lost"] == 0
