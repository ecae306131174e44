"""
The Docker provider against a real dockerd (tests/support/dockerd.py) on a private socket:
list, then events (start, rename, die, destroy), labels only when configured, a daemon restart
reconnects, a missing socket is "not present"; and the process table names a container's process.
"""

import pytest
import pytest_twisted

from telegen.discovery.docker import DockerProvider
from telegen.discovery.processes import ProcessTable
from telegen.selfmetrics import SelfMetrics
from tests.support.dockerd import containers, dockerd, httpd_command  # noqa: F401 (fixtures)
from tests.support.kube_api import KubeApi, pod
from tests.support.otlp_receiver import free_port
from tests.support.providers import run_provider  # noqa: F401 (fixture)
from tests.support.twisted_wait import until
from tests.support.fakes import make_config

pytestmark = [pytest.mark.integration]


@pytest.fixture
def start_provider(run_provider):
    """start_provider(socket, labels) -> (provider, metrics, changes); stopped at the test's end."""
    return lambda socket, labels=(): run_provider(DockerProvider, {"enabled": True, "socket": socket, "labels": list(labels)})


def connected(provider):
    return until(lambda: provider.ready_check() == "ok", message="docker connected")


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, dict(provider="docker", **labels)) or 0


@pytest_twisted.ensureDeferred
async def test_running_containers_are_listed_with_image_and_configured_labels(dockerd, containers, start_provider):
    containers.append("listed")
    cid = dockerd.run("listed", "sleep", "600", labels=("team=shop", "secret=no-copy"))
    provider, metrics, changed = start_provider(dockerd.socket, labels=("team",))
    await connected(provider)
    assert provider.status() == {"enabled": True, "connected": True, "containers": 1}
    assert provider.attributes(1, {"container.id": cid, "service.name": "own"}) == {
        "container.name": "listed", "container.runtime": "docker",
        "container.image.name": "telegen-test/busybox", "container.image.tags": ("1",),
        "container.label.team": "shop",
    }
    assert provider.attributes(1, {"container.id": "0" * 64}) == {} == provider.attributes(1, {})
    assert changed.count == 1


@pytest_twisted.ensureDeferred
async def test_events_name_a_new_container_follow_a_rename_and_forget_a_destroyed_one(dockerd, containers, start_provider):
    provider, metrics, changed = start_provider(dockerd.socket)
    await connected(provider)
    containers.extend(["late", "renamed"])
    cid = dockerd.run("late", "sleep", "600")
    found = {"container.id": cid}
    await until(lambda: provider.attributes(1, found).get("container.name") == "late", message="start event")
    assert provider.status()["containers"] == 1 and changed.count >= 2
    dockerd.docker("rename", "late", "renamed")
    await until(lambda: provider.attributes(1, found).get("container.name") == "renamed", message="rename event")
    dockerd.docker("stop", "-t", "0", "renamed")
    await until(lambda: provider.status()["containers"] == 0, message="die event")
    assert provider.attributes(1, found)["container.name"] == "renamed"     # late telemetry keeps the name
    dockerd.docker("rm", "renamed")
    await until(lambda: provider.attributes(1, found) == {}, message="destroy event")
    assert sample(metrics, "telegen_discovery_events_total", action="destroy") == 1
    assert sample(metrics, "telegen_discovery_watch_restarts_total") == 0


@pytest_twisted.ensureDeferred
async def test_the_process_table_names_a_containers_process(dockerd, containers):
    containers.append("web")
    port = free_port()
    cid = dockerd.run("web", *httpd_command(port))
    pid = dockerd.pid("web")
    config = make_config()
    config["agent"]["discovery"]["docker"]["socket"] = dockerd.socket
    table = ProcessTable(config, SelfMetrics())
    table.startService()
    try:
        await until(lambda: table.ready_check() == "ok", message="table and docker ready")
        attrs = table.resource_attributes(pid)
        assert (attrs["container.id"], attrs["container.name"], attrs["container.runtime"]) == (cid, "web", "docker")
        assert attrs["process.pid"] == pid and attrs["process.executable.name"] == "busybox"
        assert table.discovery_blocks()["docker"] == {"enabled": True, "connected": True, "containers": 1}
        await until(lambda: table.listener_pid(port) == pid, message="a rescan finds the listener")
        assert {"name": "web", "namespace": None, "instances": 1, "ports": [port]} in table.services()
    finally:
        await table.stopService()


@pytest_twisted.ensureDeferred
async def test_a_pod_running_a_docker_container_names_its_process_after_the_pod(dockerd, containers, tmp_path):
    """The Kubernetes link finds the pod by the container id the cgroup link read; the pod's rules name the service."""
    containers.append("k8s_app_shop-abc")
    cid = dockerd.run("k8s_app_shop-abc", "sleep", "600", labels=("io.kubernetes.pod.uid=uid-7",))
    pid = dockerd.pid("k8s_app_shop-abc")
    api = KubeApi().start()
    api.put("pods", pod("shop-abc", "uid-7", containers=[("app", f"docker://{cid}")], owner=("ReplicaSet", "shop-5f6"),
                        labels={"app.kubernetes.io/name": "shop"}))
    config = make_config()
    discovery = config["agent"]["discovery"]
    discovery["docker"]["socket"] = dockerd.socket
    discovery["kubernetes"].update(kubeconfig=api.kubeconfig(str(tmp_path / "kubeconfig")), node_name="node-1")
    table = ProcessTable(config, SelfMetrics())
    table.startService()
    try:
        await until(lambda: table.ready_check() == "ok", message="table, docker and kubernetes ready")
        attrs = table.resource_attributes(pid)
        assert (attrs["container.name"], attrs["k8s.pod.name"], attrs["k8s.container.name"]) == ("k8s_app_shop-abc", "shop-abc", "app")
        assert (attrs["service.name"], attrs["service.namespace"], attrs["k8s.replicaset.name"]) == ("shop", "shop", "shop-5f6")
        assert table.discovery_blocks()["kubernetes"]["pods_watched"] == 1
    finally:
        await table.stopService()
        await api.stop()


@pytest_twisted.ensureDeferred
async def test_a_missing_socket_is_not_present_and_does_not_hold_readiness(tmp_path, start_provider):
    provider, metrics, _ = start_provider(str(tmp_path / "no.sock"))
    assert provider.ready_check() == "disabled"
    assert provider.status() == {"enabled": False, "connected": False, "containers": 0}


@pytest_twisted.ensureDeferred
async def test_a_daemon_restart_reconnects_and_lists_again(dockerd, containers, start_provider):
    """Last in the module: the daemon is restarted (its containers stop with it)."""
    provider, metrics, changed = start_provider(dockerd.socket)
    await connected(provider)
    dockerd.stop()
    await until(lambda: not provider.status()["connected"], message="disconnect seen")
    assert provider.ready_check().startswith("failed: ")
    dockerd.start()
    containers.append("after-restart")
    cid = dockerd.run("after-restart", "sleep", "600")
    await until(lambda: provider.attributes(1, {"container.id": cid}).get("container.name") == "after-restart",
                timeout=60, message="reconnected and named")
    assert provider.ready_check() == "ok"
    assert sample(metrics, "telegen_discovery_watch_restarts_total") >= 1
