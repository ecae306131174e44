"""
The cgroup provider: container id, runtime and pod uid from real-shaped /proc/PID/cgroup files of
each runtime and cgroup version (tests/unit/data/cgroup), and through the process table's chain.
"""
import os

import pytest
from zope.interface.verify import verifyObject

from telegen.contracts import IResourceProvider
from telegen.discovery import cgroup
from telegen.discovery.procfs import ProcessInfo
from tests.support.fake_proc import make_table

DATA = os.path.join(os.path.dirname(__file__), "data", "cgroup")
ID = "3f4e9c0a1b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f"
POD = "5c3b6a8e-1f2d-4c3b-9a8e-7d6c5b4a3f21"


def sample(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("name, runtime, pod_uid", [
    ("docker_v1_cgroupfs", "docker", None),
    ("docker_v2_cgroupfs", "docker", None),
    ("docker_v2_systemd", "docker", None),
    ("docker_hybrid", "docker", None),
    ("docker_in_docker", "docker", None),
    ("containerd_cri_v2_systemd", "containerd", POD),
    ("containerd_cri_v1_cgroupfs", None, POD),     # cgroupfs under kubepods: the path does not name the runtime
    ("crio_v2", "cri-o", POD),
    ("podman_rootful_v2", "podman", None),
    ("podman_rootless_v2", "podman", None),
    ("podman_v1_cgroupfs", "podman", None),
    ("nerdctl_v2", "containerd", None),
])
def test_each_runtime_and_cgroup_version_gives_the_container(name, runtime, pod_uid):
    assert cgroup.parse(sample(name)) == cgroup.Container(ID, runtime, pod_uid)


@pytest.mark.parametrize("name", ["host_v2", "host_hybrid", "crio_conmon"])
def test_a_host_process_or_a_runtime_monitor_is_in_no_container(name):
    assert cgroup.parse(sample(name)) is None


def test_malformed_lines_and_empty_files_are_no_container():
    assert cgroup.parse(b"") is None
    assert cgroup.parse(b"garbage\n0::\n") is None
    assert cgroup.parse("0::/docker/" + "0" * 63) is None       # not a whole id


def test_provider_answers_from_the_recorded_container():
    infos = {
        7: ProcessInfo(7, 1, container=cgroup.Container(ID, "cri-o", POD)),
        8: ProcessInfo(8, 1, container=cgroup.Container(ID, None, None)),
        9: ProcessInfo(9, 1),
    }
    provider = cgroup.CgroupProvider(infos.get)
    verifyObject(IResourceProvider, provider)
    assert provider.attributes(7, {}) == {"container.id": ID, "container.runtime": "cri-o", "k8s.pod.uid": POD}
    assert provider.attributes(8, {}) == {"container.id": ID}
    assert provider.attributes(9, {}) == {} == provider.attributes(10, {})
    assert provider.ready_check() == "ok"


def test_process_table_resources_carry_the_container_of_the_process(tmp_path):
    """The chain puts container.* between the process's own facts and the host's."""
    proc, _, table = make_table(tmp_path)
    proc.add(20, "/bin/busybox", ["httpd", "-f"], cgroup=sample("docker_v2_systemd").decode())
    proc.add(21, "/usr/sbin/sshd", ["sshd"], cgroup=sample("host_hybrid").decode())
    table.startService()
    attrs = table.resource_attributes(20)
    assert (attrs["container.id"], attrs["container.runtime"]) == (ID, "docker")
    assert attrs["process.pid"] == 20 and attrs["host.name"]
    assert not any(k.startswith("container.") for k in table.resource_attributes(21))
    table.stopService()


def test_a_forked_worker_gone_before_it_was_read_keeps_its_parents_container(tmp_path):
    """busybox httpd forks a worker per connection, which exits within milliseconds, never exec'ing."""
    proc, _, table = make_table(tmp_path)
    proc.add(60, "/bin/busybox", ["httpd", "-f"], cgroup=sample("docker_v2_cgroupfs").decode())
    table.startService()
    table.on_exit(61, "httpd", ppid=60)
    table.on_exit(62, "sh", ppid=999)               # a parent nothing knows: the comm only
    worker = table.resource_attributes(61)
    assert (worker["process.pid"], worker["container.id"], worker["process.executable.name"]) == (61, ID, "busybox")
    assert "container.id" not in table.resource_attributes(62) and table.resource_attributes(62)["service.name"] == "sh"
    table.stopService()


def test_a_worker_asked_for_after_it_is_gone_is_named_by_the_exit_event_the_table_catches_up_with(tmp_path):
    """
    A span of a forked worker can be read before the worker's exit event: /proc no longer has it,
    so the table catches up with the events in the ring (here: its exit, naming its parent) first.
    """
    proc, _, table = make_table(tmp_path)
    proc.add(60, "/bin/busybox", ["httpd", "-f"], cgroup=sample("docker_v2_cgroupfs").decode())
    table.startService()
    caught_up = []

    def catch_up():
        caught_up.append(True)
        table.on_exit(63, "busybox", 60)        # the worker's exit event, waiting in the ring
    table.catch_up_events = catch_up
    worker = table.resource_attributes(63)
    assert (worker["process.pid"], worker["container.id"], worker["process.executable.name"]) == (63, ID, "busybox")
    assert caught_up == [True]
    table.stopService()

