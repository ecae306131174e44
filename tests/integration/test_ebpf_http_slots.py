"""
The kernel's per-connection request slots under pressure, in both capture modes: compiled with 4 slots
(MAX_PENDING_REQUESTS) while 8 keep-alive clients and their 8 server connections need 16. Slots
are evicted and recreated all the time; whatever happens, no exchange may be mispaired (a span's
path and status always belong together) and none may vanish uncounted: every exchange becomes a
span or a response_without_request drop (its held request was evicted).

Its own module: the agent here must not run while test_ebpf_http's captures the same traffic.
"""
from collections import Counter

import pytest
import pytest_twisted
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from twisted.internet import threads

from telegen.ebpf.http_probe import HttpProbe
from tests.support.ebpf_agent import STATUS, Agent, by_pid, ready, receiver, running  # noqa: F401 (fixture)
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
    finally:
        agent.http.set_port_filter([], [])
        server.stop()
