"""
The issue's "done": the real `twistd telegen` with eBPF and a private dockerd. busybox httpd in a
container started after the agent serves curl on loopback, each request in a worker it forks:
every one of its server spans, the first included, carries the container's id, name and image,
and /status/discovery shows Docker connected with that container among the discovered services.
With the Kubernetes API emulator (as a process) listing a pod whose containerStatuses name that
Docker container, its spans carry the pod's k8s.* attributes and the service name the pod's
annotation gives; that pod runs the host's Python http.server, a server that answers in its own
process (the other shape next to busybox's forked workers).
"""
import json
import os
import subprocess
import sys

import pytest

from tests.support.agent_process import ROOT, AgentProcess, wait_for
from tests.support.openapi_check import schema_validator
from tests.support.dockerd import containers, dockerd, httpd_command  # noqa: F401 (fixtures)
from tests.support.kube_api import owned, pod
from tests.support.otlp_files import read_spans
from tests.support.otlp_receiver import free_port

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]


@pytest.fixture
def agent(tmp_path, dockerd):
    # The socket capture (the default where it loads) follows a connection by its socket, whichever
    # process reads it; the syscall capture knows it only in the process that accepted it, and busybox
    # httpd serves each connection in a forked worker (docs/ebpf.md, "Limits").
    agent = AgentProcess(str(tmp_path), config={"agent": {
        "ebpf": {"enabled": True, "capture": "socket", "ringbuf_size": 1 << 20, "network": {"tcp": False}},
        "discovery": {"poll_interval": "1s", "docker": {"socket": dockerd.socket}}}})
    agent.start()
    agent.wait_ready(timeout=180)
    yield agent
    agent.stop()


def test_a_container_started_after_the_agent_is_named_on_its_first_span(agent, dockerd, containers, tmp_path):
    data_dir = os.path.join(str(tmp_path), "data")
    port = free_port()
    containers.append("shop-web")
    cid = dockerd.run("shop-web", *httpd_command(port))
    parent = dockerd.pid("shop-web")
    url = f"http://127.0.0.1:{port}/index.html"
    wait_for(lambda: subprocess.run(["curl", "-sf", "-o", "/dev/null", url], timeout=10).returncode == 0,
             timeout=30, message="httpd in the container answers")
    for _ in range(2):
        subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True, timeout=10)

    def server_spans():
        return [(r, s) for r, s in read_spans(data_dir)
                if any(kv.key == "server.port" and kv.value.int_value == port for kv in s.attributes)
                and s.kind == s.SPAN_KIND_SERVER]

    spans = wait_for(lambda: len(server_spans()) >= 3 and server_spans(), timeout=30, message="3 server spans")
    assert len(spans) == 3
    # Each request was served by a worker busybox forked for it, gone within milliseconds.
    assert len({resource["process.pid"] for resource, _ in spans} - {parent}) == 3
    for resource, _ in spans:
        assert (resource["container.id"], resource["container.name"]) == (cid, "shop-web")
        assert (resource["container.image.name"], [v.string_value for v in resource["container.image.tags"].values]) == ("telegen-test/busybox", ["1"])
        assert resource["container.runtime"] == "docker" and resource["service.name"] == "shop-web"

    status = wait_for(lambda: (lambda s: any(d["name"] == "shop-web" for d in s["discovered_services"]) and s)(
        agent.get("/status/discovery").json()), timeout=30, message="shop-web among discovered services")
    schema_validator(agent.get("/openapi.json").json(), "/status/discovery", "get", 200).validate(status)
    assert status["docker"] == {"enabled": True, "connected": True, "containers": 1}
    assert {"name": "shop-web", "namespace": None, "instances": 1, "ports": [port]} in status["discovered_services"]
    summary = agent.get("/status").json()["discovery"]
    assert (summary["docker"], summary["containers_discovered"]) == (True, 1)


@pytest.fixture
def kube_api(tmp_path):
    """The API emulator as a process (the agent runs apart); (objects file, kubeconfig path)."""
    objects, kubeconfig = tmp_path / "objects.json", tmp_path / "kubeconfig"
    holder = {}

    def start(**kinds):
        objects.write_text(json.dumps(kinds))
        holder["process"] = subprocess.Popen([sys.executable, "-m", "tests.support.kube_api", str(objects), str(kubeconfig)],
                                             cwd=ROOT)
        wait_for(lambda: kubeconfig.exists() and kubeconfig.stat().st_size, timeout=30, message="emulator up")
        return str(kubeconfig)

    yield start
    if "process" in holder:
        holder["process"].terminate()
        holder["process"].wait(timeout=10)


def test_a_pod_running_a_docker_container_gives_its_spans_the_pods_attributes_and_service(dockerd, containers, kube_api, tmp_path):
    port = free_port()
    containers.append("k8s_app_checkout-6c9")
    cid = dockerd.run("k8s_app_checkout-6c9", "/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1",
                      "--directory", "/www", str(port), usr=True, labels=("io.kubernetes.pod.uid=uid-42",))
    kubeconfig = kube_api(
        pods=[pod("checkout-6c9-x2", "uid-42", namespace="shop", containers=[("app", f"docker://{cid}")],
                  owner=("ReplicaSet", "checkout-6c9"), annotations={"resource.opentelemetry.io/service.name": "checkout"})],
        replicasets=[owned("replicasets", "checkout-6c9", namespace="shop", owner=("Deployment", "checkout"))])
    agent = AgentProcess(str(tmp_path), config={"agent": {
        "ebpf": {"enabled": True, "ringbuf_size": 1 << 20, "network": {"tcp": False}},
        "discovery": {"docker": {"socket": dockerd.socket},
                      "kubernetes": {"kubeconfig": kubeconfig, "node_name": "node-1", "cluster_name": "test"}}}})
    agent.start()
    try:
        agent.wait_ready(timeout=180)
        url = f"http://127.0.0.1:{port}/index.html"
        wait_for(lambda: subprocess.run(["curl", "-sf", "-o", "/dev/null", url], timeout=10).returncode == 0,
                 timeout=30, message="the pod's server answers")
        data_dir = os.path.join(str(tmp_path), "data")
        spans = wait_for(lambda: [r for r, s in read_spans(data_dir) if r.get("container.id") == cid], timeout=30,
                         message="a span of the pod's container")
        resource = spans[0]
        assert (resource["k8s.pod.name"], resource["k8s.namespace.name"], resource["k8s.container.name"]) == (
            "checkout-6c9-x2", "shop", "app")
        assert (resource["k8s.deployment.name"], resource["k8s.cluster.name"], resource["k8s.node.name"]) == (
            "checkout", "test", "node-1")
        assert (resource["service.name"], resource["service.namespace"]) == ("checkout", "shop")
        status = agent.get("/status/discovery").json()["kubernetes"]
        assert status == {"enabled": True, "connected": True, "cluster": "test", "namespace": "monitoring",
                          "pods_watched": 1, "services_watched": 0}
    finally:
        agent.stop()
