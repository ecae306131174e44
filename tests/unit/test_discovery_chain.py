"""
The resource chain as the process table composes it: order, late metadata, status blocks and
readiness taken from the providers (a fake provider checked against IResourceProvider).
"""
from twisted.application.service import Service
from zope.interface import implementer
from zope.interface.verify import verifyObject

from telegen.contracts import IResourceProvider
from telegen.status import discovery_status, readiness
from tests.support.fakes import make_agent
from tests.support.fake_proc import make_table

BLOCK = {"enabled": True, "connected": True, "containers": 1}


@implementer(IResourceProvider)
class FakeDocker(Service):
    """Names the container the cgroup link found (and its service, unless named); a block in /status/discovery; readiness the test sets."""

    name = "docker"
    STATUS_SCHEMA = {"type": "object"}

    def __init__(self):
        self.names = {}
        self.check = "ok"
        self.seen = []

    def attributes(self, pid, found):
        self.seen.append((pid, dict(found)))
        name = self.names.get(found.get("container.id"))
        if not name:
            return {}
        return {"container.name": name} if "service.name" in found else {"container.name": name, "service.name": name}

    def status(self):
        return dict(BLOCK)

    def ready_check(self):
        return self.check


def docker_table(tmp_path):
    fake = FakeDocker()
    verifyObject(IResourceProvider, fake)
    proc, metrics, table = make_table(tmp_path, providers=lambda table: [fake])
    proc.add(30, "/bin/busybox", ["httpd"], cgroup="0::/docker/" + "ab" * 32 + "\n", socket_inodes=[900])
    proc.listen(900, 8080)
    return proc, fake, table


def test_providers_see_earlier_links_and_late_metadata_applies_to_what_follows(tmp_path):
    proc, fake, table = docker_table(tmp_path)
    table.startService()
    assert fake.running
    first = table.resource_attributes(30)
    assert fake.seen[-1][1]["container.id"] == "ab" * 32 and fake.seen[-1][1]["process.pid"] == 30
    assert "container.name" not in first and first["service.name"] == "busybox"
    fake.names["ab" * 32] = "web"
    assert table.resource_attributes(30) is first        # cached until a provider says it learned something
    table.metadata_changed()
    later = table.resource_attributes(30)
    assert (later["container.name"], later["service.name"]) == ("web", "web")
    assert table.services() == [{"name": "web", "namespace": None, "instances": 1, "ports": [8080]}]
    assert first["service.name"] == "busybox"               # what was handed out is not changed under its holder
    table.stopService()
    assert not fake.running


def test_status_blocks_and_readiness_come_from_the_providers(tmp_path):
    proc, fake, table = docker_table(tmp_path)
    agent = make_agent(reactor=None, children=("export",))
    table.setName("processes")
    table.setServiceParent(agent)
    table.startService()
    assert discovery_status(agent)["docker"] == BLOCK
    assert readiness(agent)[1]["checks"]["discovery"] == "ok"
    fake.check = "failed: cannot connect to /run/docker.sock"
    assert readiness(agent) == (False, {"status": "not_ready", "checks": {
        "ebpf": "disabled", "otlp": "ok", "discovery": "failed: docker: cannot connect to /run/docker.sock"}})
    fake.check = "disabled"
    assert readiness(agent)[0]
    table.stopService()


def test_container_selectors_match_once_the_container_is_named(tmp_path):
    """instrument by container name: nothing before Docker names it, its telemetry after; exclude by image."""
    fake = FakeDocker()
    proc, _, table = make_table(tmp_path, providers=lambda table: [fake],
                                instrument=[{"container_name": "web*"}], exclude_instrument=[{"k8s_owner_name": "batch-*"}])
    proc.add(30, "/bin/busybox", ["httpd"], cgroup="0::/docker/" + "ab" * 32 + "\n")
    proc.add(31, "/usr/sbin/sshd", ["sshd"])
    table.startService()
    assert not table.selected(30) and not table.selected(31)
    fake.names["ab" * 32] = "web-1"
    table.metadata_changed()
    assert table.selected(30) and not table.selected(31)
    table.stopService()


def test_the_table_and_its_providers_read_only_the_sections_their_spec_declares():
    """Built from a ConfigSlice of the processes ChildSpec's sections: an undeclared read would raise."""
    from twisted.internet.task import Clock

    from telegen.components import SPECS
    from telegen.config import defaults
    from telegen.config.view import ConfigSlice
    from telegen.discovery.processes import ProcessTable
    from telegen.selfmetrics import SelfMetrics

    [spec] = [s for s in SPECS if s.name == "processes"]
    table = ProcessTable(ConfigSlice(defaults(), spec.sections), SelfMetrics(), reactor=Clock())
    assert [p.name for p in table.chain.providers] == ["procfs", "cgroup", "docker", "kubernetes", "cloud", "host"]
    assert set(table.discovery_blocks()) == {"docker", "kubernetes", "cloud"}


def test_a_containers_resource_is_its_processes_without_their_own_keys_once_a_provider_names_it(tmp_path):
    """What a log file of the container gets: None until discovered, then the spans' resource less process.*."""
    proc, fake, table = docker_table(tmp_path)
    table.startService()
    cid = "ab" * 32
    assert table.container_resource(cid) is None
    fake.names[cid] = "web"
    table.metadata_changed()
    spans = table.resource_attributes(30)
    logs = table.container_resource(cid)
    assert fake.seen[-1] == (0, {"container.id": cid})       # asked by the container, not by a process
    assert logs == {k: v for k, v in spans.items()
                    if not k.startswith("process.") and k not in ("service.instance.id", "container.runtime")}
    assert logs["service.name"] == "web" and logs["deployment.environment"] == "test"
    table.stopService()


def test_a_service_name_the_containers_processes_set_names_its_logs_too(tmp_path):
    proc, fake, table = docker_table(tmp_path)
    cid = "cd" * 32
    proc.add(40, "/usr/bin/python3", ["python3", "app.py"], env={"OTEL_SERVICE_NAME": "checkout"},
             cgroup=f"0::/system.slice/docker-{cid}.scope\n")
    table.startService()
    fake.names[cid] = "shop-checkout"
    assert table.resource_attributes(40)["service.name"] == "checkout"
    logs = table.container_resource(cid)
    assert (logs["service.name"], logs["container.name"]) == ("checkout", "shop-checkout")
    assert table.container_resource("ab" * 32) is None
    table.stopService()
