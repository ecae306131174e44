"""
Stand-ins for the agent's parts in unit tests: children of the tree, the export pipeline as its
producers see it, the process table, a sender. Each declares the contract of the real part
(telegen.contracts) and tests/unit/test_contracts.py checks it, so a fake cannot answer what the
real class does not.
"""
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from telegen.config import defaults
from telegen.contracts import IChild, IProcessResources, IRecordSink, ISender
from telegen.export.endpoints import Target
from telegen.export.retry import SUCCESS, Outcome
from telegen.service import AgentService, ChildSpec


@implementer(IChild)
class FakeChild(Service):
    """
    A child with a readiness answer the test sets. It applies a new slice in place when
    in_place is true (and remembers it), and asks for a rebuild otherwise.
    """

    in_place = False

    def __init__(self, agent, config, check="ok"):
        self.agent = agent
        self.check = check
        self.config_seen = config
        self.reconfigured = []

    def ready_check(self):
        return self.check

    def status(self):
        return {"ready": self.check}

    def reconfigure(self, config):
        if not self.in_place:
            return False
        self.config_seen = config
        self.reconfigured.append(config)
        return True


class FakeExport(FakeChild):
    """An export pipeline whose queues the test fills by hand."""

    def __init__(self, agent, config, check="ok"):
        super().__init__(agent, config, check)
        self.queued = {"traces": 0, "metrics": 0, "logs": 0, "profiles": 0}
        self.exported = dict(self.queued)
        self.submitted = []

    def submit(self, signal, resource_attrs, records):
        self.submitted.append((signal, resource_attrs, list(records)))
        self.queued[signal] += len(records)
        return len(records)

    def flush(self):
        flushed = dict(self.queued)
        for signal, count in flushed.items():
            self.exported[signal] += count
            self.queued[signal] = 0
        return defer.succeed(flushed)

    def status(self):
        capacities = self.agent.config["queues"]
        return {
            "endpoint": "collector.example:4317",
            "protocol": "grpc",
            "tls": False,
            "compression": "gzip",
            "connected": self.check == "ok",
            "last_export": None,
            "last_error": None if self.check == "ok" else self.check,
            "queues": {
                s: {"size": self.queued[s], "capacity": capacities[s]["capacity"], "exported": self.exported[s], "dropped": 0}
                for s in self.queued
            },
        }


class FakeProcesses(FakeChild):
    """A process table that knows one service."""

    def services(self):
        return [{"name": "nginx", "namespace": None, "instances": 2, "ports": [80]}]

    def discovery_blocks(self):
        return {}


def make_agent(reactor, config=None, loader=None, children=("processes", "export")):
    """An AgentService with fake children, on the given (fake) reactor."""
    factories = {"processes": FakeProcesses, "export": FakeExport}
    sections = {"processes": ("agent.discovery",), "export": ("otlp", "queues", "backoff")}
    specs = [ChildSpec(name, sections[name], factories[name]) for name in children]
    return AgentService(config or defaults(), config_path="/nonexistent.yaml", reactor=reactor,
                        specs=specs, loader=loader)


def make_config(**telegen):
    """The default config with agent resource attributes (which process resources must not take)."""
    config = defaults()
    config["telegen"]["resource_attributes"] = {"service.name": "agent-own", "deployment.environment": "test"}
    config["telegen"].update(telegen)
    return config


@implementer(IRecordSink)
class RecordingPipeline:
    """Records submit() calls as (signal, resource, records); accepts everything."""

    def __init__(self):
        self.calls = []

    def submit(self, signal, resource_attrs, records):
        self.calls.append((signal, resource_attrs, list(records)))
        return len(records)

    def of(self, signal):
        return [c for c in self.calls if c[0] == signal]


@implementer(IProcessResources)
class StubProcesses:
    """resource_attributes by pid, listener owners by port and container resources, as ProcessTable answers them."""

    def __init__(self, listeners=None, excluded=(), containers=None):
        self.listeners = listeners or {}
        self.excluded = set(excluded)
        self.containers = containers if containers is not None else {}

    def resource_attributes(self, pid):
        return {"service.name": f"svc-{pid}", "process.pid": pid} if pid else {"host.name": "h"}

    def listener_pid(self, port):
        return self.listeners.get(port)

    def selected(self, pid):
        return pid not in self.excluded

    def container_resource(self, container_id=None, pod_uid=None, container_name=None):
        """containers[container_id or (pod_uid, container_name)], None for a container not discovered (yet)."""
        return self.containers.get(container_id or (pod_uid, container_name))


OK = Outcome(SUCCESS, "OK", True)


@implementer(ISender)
class ScriptedSender:
    """Records requests; answers each with the next scripted Outcome, or holds it when `hold`."""

    def __init__(self, kind):
        self.kind = kind
        self.target = Target("grpc", "collector:4317", False, "collector:4317")
        self.requests = []
        self.script = []
        self.default = OK
        self.hold = False
        self.held = []
        self.closed = False

    def send(self, payload):
        self.requests.append(self.kind.request_cls.FromString(payload))
        d = Deferred()
        if self.hold:
            self.held.append(d)
        else:
            d.callback(self.script.pop(0) if self.script else self.default)
        return d

    def close(self):
        self.closed = True

    def items(self):
        return sum(len(ss.spans) for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans)
