"""
The agent's capture path in the test process (EbpfService with the process and HTTP probes, the
real ExportPipeline, a real OTLP receiver), and what the eBPF HTTP tests ask of it: readiness in
the expected capture mode, spans by kind, pid and attributes, exact counts after a flush.
"""
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import defer

from telegen.config.loader import defaults
from telegen.discovery.processes import ProcessTable
from telegen.ebpf.http_probe import HttpProbe
from telegen.ebpf.process_events import ProcessProbe
from telegen.ebpf.service import EbpfService
from telegen.export.pipeline import ExportPipeline
from telegen.selfmetrics import SelfMetrics
from tests.support.otlp_receiver import OtlpReceiver, attrs_dict
from tests.support.twisted_wait import until

# What tests/support/http_apps.python_server answers per path.
STATUS = {"/ok": 200, "/missing": 404, "/echo": 200, "/boom": 500, "/create": 201, "/big/200000": 200}


class Agent:
    """The in-process agent parts the tests look at."""

    def __init__(self, receiver, http_probe=HttpProbe, capture="auto", ringbuf_size=None):
        config = defaults()
        config["agent"]["ebpf"]["capture"] = capture
        if ringbuf_size is not None:
            config["agent"]["ebpf"]["ringbuf_size"] = ringbuf_size
        config["otlp"].update(endpoint=receiver.grpc_endpoint, protocol="grpc", insecure=True)
        for queue in config["queues"].values():
            queue["batch_timeout"] = 0.1
        config["agent"]["host_metrics"]["interval"] = 0.5          # RED flush period
        config["agent"]["discovery"]["poll_interval"] = 0.5
        config["agent"]["ebpf"]["network"].update(routes=["/users/{id}"], exclude_paths=["/health*"])
        # The CPU governor measures this process's CPU, which here is also the receiver's and
        # pytest's: on a busy machine it would hold the consumer for what they spend. Capture is
        # what these tests are about; the governor has its own tests (and the agent-process ones).
        config["agent"]["ebpf"].update(min_cpu=64.0, max_cpu=64.0)
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


def drops(agent, reasons):
    """{reason: count} of the agent's telegen_ebpf_events_dropped_total for those reasons (the TLS losses polled first)."""
    agent.http.poll_tls_lost()
    return {r: agent.metrics.registry.get_sample_value("telegen_ebpf_events_dropped_total", {"reason": r}) or 0
            for r in reasons}


def from_now(found):
    """found() without the spans it returns now: a module's servers serve every test of it, in both capture modes."""
    before = {span.span_id for _, _, span in found()}
    return lambda: [s for s in found() if s[2].span_id not in before]


def shape(spans):
    """Counter of (method, path, status) of HTTP spans."""
    return Counter((a["http.request.method"], a["url.path"], a["http.response.status_code"]) for _, a, _ in spans)
