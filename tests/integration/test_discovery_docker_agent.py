"""
The issue's "done": the real `twistd telegen` with eBPF and a private dockerd. A web server in a
container started after the agent serves curl on loopback: every one of its server spans, the
first included, carries the container's id, name and image, and /status/discovery shows Docker
connected with that container among the discovered services.
"""
import os
import subprocess

import pytest

from tests.agent_process import AgentProcess, wait_for
from tests.integration.test_agent_process import schema_validator
from tests.support.dockerd import containers, dockerd  # noqa: F401 (fixtures)
from tests.support.otlp_files import read_spans
from tests.support.otlp_receiver import free_port

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]


@pytest.fixture
def agent(tmp_path, dockerd):
    agent = AgentProcess(str(tmp_path), config={"agent": {
        "ebpf": {"enabled": True, "ringbuf_size": 1 << 20, "network": {"tcp": False}},
        "discovery": {"poll_interval": "1s", "docker": {"socket": dockerd.socket}}}})
    agent.start()
    wait_for(lambda: agent.get("/ready").json()["status"] == "ready", timeout=180,
             message="agent ready (%s)" % agent.get("/ready").json()["checks"])
    yield agent
    agent.stop()


def test_a_container_started_after_the_agent_is_named_on_its_first_span(agent, dockerd, containers, tmp_path):
    data_dir = os.path.join(str(tmp_path), "data")
    port = free_port()
    containers.append("shop-web")
    # Python's http.server (the host's, through /usr): busybox httpd forks a worker per
    # connection that reads the socket as fd 0, which the HTTP probe (connections by pid and fd,
    # learnt at accept) does not follow.
    cid = dockerd.run("shop-web", "/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1",
                      "--directory", "/www", str(port), usr=True)
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
