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
from tests.support.twisted_wait import until

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


def http_reader(agent):
    [reader] = [r for st in agent.ebpf._loaded for r in st.readers if r.name == "http_events"]
    return reader


@pytest_twisted.ensureDeferred
async def test_exchanges_while_the_ring_is_full_are_counted_lost_and_pairing_resumes_after(agent, receiver, python_server):
    """
    With nobody reading, the ring fills and the kernel holds requests without their heads
    (bpf/http_events.h, ring_full), reading nothing on keep-alive connections (turn_while_full:
    the server's response goes out in two writes, the client reads it in one or more): every
    exchange after that is one counted loss per side, never a span with an empty or another
    request's head; once the ring is drained again every exchange is a span with its own request.
    """
    await ready(agent)
    server, port = python_server
    reader = http_reader(agent)
    # Only this server's port: other traffic on the host would add its own losses to the count.
    agent.http.set_port_filter([(port, port)], [])
    try:
        lost_before = agent.ebpf.status()["ringbuf"]["events_lost"]
        # Hold the consumer (the fd and the drain timer, as the CPU governor's hold would): the ring fills.
        reader.stopReading()
        reader._drain.stop()
        flood = 2 * RING // 1200                    # exchanges (2 records each) that overfill the ring twice
        try:
            plan = [{"method": "GET", "path": "/ok"}] * flood
            flood_pid, results = await threads.deferToThread(apps.run_client, port, plan, 1)
            assert [s for worker in results for s, _ in worker] == [200] * flood
        finally:
            reader.startReading()
            reader._drain.start(reader._drain_interval, now=True)

        def flood_accounted():
            spans = by_pid(receiver, Span.SPAN_KIND_CLIENT, flood_pid) + by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid)
            lost = agent.ebpf.status()["ringbuf"]["events_lost"] - lost_before
            return len(spans) + lost >= 2 * flood and spans

        await until(flood_accounted, timeout=30, message="the flood's exchanges as spans or losses")
        lost = agent.ebpf.status()["ringbuf"]["events_lost"] - lost_before
        assert lost > flood // 2                    # the ring was full for most of them
        after_plan = [{"method": "GET", "path": "/missing"}] * 50
        after_pid, results = await threads.deferToThread(apps.run_client, port, after_plan, 1)
        assert [s for worker in results for s, _ in worker] == [404] * 50
        after = await exactly(agent, lambda: by_pid(receiver, Span.SPAN_KIND_CLIENT, after_pid), 50, "client spans after the drain")
        assert {(a["url.path"], a["http.response.status_code"]) for _, a, _ in after} == {("/missing", 404)}
        flood_spans = by_pid(receiver, Span.SPAN_KIND_CLIENT, flood_pid)
        server_spans = by_pid(receiver, Span.SPAN_KIND_SERVER, server.pid)
        assert {(a["url.path"], a["http.response.status_code"]) for _, a, _ in flood_spans} <= {("/ok", 200)}
        assert {(a["url.path"], a["http.response.status_code"]) for _, a, _ in server_spans} <= {("/ok", 200), ("/missing", 404)}
        # Each exchange is a span or one loss per side; only the connections' close events come on top.
        total_lost = agent.ebpf.status()["ringbuf"]["events_lost"] - lost_before
        assert 2 * flood <= len(flood_spans) + len(server_spans) - 50 + total_lost <= 2 * flood + 4
    finally:
        agent.http.set_port_filter([], [])
