"""
The agent of the database span tests (tests/integration/test_ebpf_db_agent.py and
test_ebpf_db_tls.py): the real `twistd telegen` with eBPF in one capture mode, capturing only the
test servers' ports (the host's other traffic must not fill its ring buffer or spend its CPU
budget), and this test process's CLIENT spans read back from its file sink.
"""
import os

from tests.support.agent_process import capture_agent, wait_for
from tests.support.db_clients import POSTGRES_SESSION_SPANS
from tests.support.otlp_files import read_metrics, read_spans

CLIENT = 3      # Span.SPAN_KIND_CLIENT


def agent_config(capture, *servers, **protocols):
    return {"agent": {"ebpf": {"enabled": True, "ringbuf_size": 1 << 22, "capture": capture, "protocols": protocols,
                               "network": {"tcp": False, "include_ports": [s.port for s in servers]}}}}


def running_agent(capture, folder, *servers):
    """Yield the agent started in `capture` mode with its eBPF ready, capturing only the servers' ports; stopped after."""
    agent = capture_agent(folder, capture, [s.port for s in servers])
    try:
        yield agent
    finally:
        agent.stop()


def db_spans(agent, system, port):
    """[(name, attributes, span)] of this process's CLIENT spans to the server on `port`."""
    out = []
    for resource, span in read_spans(agent.data_dir):
        attrs = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}
        if (resource.get("process.pid") == os.getpid() and attrs.get("db.system.name") == system
                and attrs.get("server.port") == port):
            out.append((span.name, attrs, span))
    return out


def exactly(agent, system, port, n):
    """The spans once there are n, checked to stay n after another export interval."""
    found = wait_for(lambda: len(db_spans(agent, system, port)) >= n and db_spans(agent, system, port), timeout=30,
                     message=f"{n} {system} spans (have {len(db_spans(agent, system, port))})")
    assert len(found) == n, [name for name, _, _ in found]
    return found


def facts(spans):
    return [(name, a.get("db.query.text"), a.get("db.namespace"), a.get("error.type")) for name, a, _ in spans]


def metric_count(agent, system):
    """Operations the db.client.operation.duration histogram of this process counted for `system`."""
    total = 0
    for resource, metric in read_metrics(agent.data_dir):
        if metric.name == "db.client.operation.duration" and resource.get("process.pid") == os.getpid():
            total = max(total, sum(p.count for p in metric.histogram.data_points
                                   if any(kv.key == "db.system.name" and kv.value.string_value == system
                                          for kv in p.attributes)))
    return total


def settled_losses(agent, name):
    """The decoder losses by reason of protocol `name` (/status/ebpf), once its closed connections are forgotten."""
    def protocol():
        return {p["name"]: p for p in agent.get("/status/ebpf").json()["protocols"]}[name]

    wait_for(lambda: protocol()["open_connections"] == 0, timeout=30, message=f"closed {name} connections forgotten")
    return protocol()["losses"]


def postgres_session_spans(agent, port):
    """The spans of tests.support.db_clients.postgres_session(), checked: names, attributes, the error's status."""
    spans = exactly(agent, "postgresql", port, len(POSTGRES_SESSION_SPANS))
    assert facts(spans) == POSTGRES_SESSION_SPANS
    for name, attrs, span in spans:
        assert span.kind == CLIENT and span.start_time_unix_nano <= span.end_time_unix_nano
        assert attrs["server.address"] == "127.0.0.1"
        assert attrs["db.operation.name"] == name.split()[0]
    error = spans[-1]
    assert error[1]["db.response.status_code"] == "42P01" and error[2].status.code == 2
    assert error[2].status.message == 'relation "nope" does not exist'
    return spans


def redis_spans_from_select(agent, port, n):
    """
    The facts of this process's Redis spans from the first SELECT on, once there are n of them:
    redis-py opens a connection with HELLO and CLIENT SETINFO calls of its own before it.
    """
    def after_setup():
        names = facts(db_spans(agent, "redis", port))
        start = next((i for i, f in enumerate(names) if f[0] == "SELECT"), None)
        assert start is None or {f[0] for f in names[:start]} <= {"HELLO", "CLIENT"}
        return names[start:] if start is not None and len(names) - start >= n else None

    return wait_for(after_setup, timeout=30, message=f"{n} redis spans from SELECT on")
