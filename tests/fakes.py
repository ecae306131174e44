"""
Stand-ins for the agent's children in unit tests of the tree and the API: each returns documents
of the real shape from state the test controls.
"""
from twisted.application.service import Service
from twisted.internet import defer

from telegen.config import defaults
from telegen.service import AgentService, ChildSpec


class FakeChild(Service):
    """A child with a readiness answer the test sets."""

    def __init__(self, agent, check="ok"):
        self.agent = agent
        self.check = check
        self.config_seen = agent.config

    def ready_check(self):
        return self.check


class FakeExport(FakeChild):
    """An export pipeline whose queues the test fills by hand."""

    def __init__(self, agent, check="ok"):
        super().__init__(agent, check)
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
