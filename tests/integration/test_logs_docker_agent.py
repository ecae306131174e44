"""
Issue 17 item 4 end to end: the real `twistd telegen` tails the json-file log of a container run
by a private dockerd (its data-root in the test's temp dir, so only the <id>/<id>-json.log shape
says whose file it is). The container starts after the agent: its records carry the resource its
spans would (container id, name, image, runtime, the container's name as service.name), once
Docker discovery knows the container, and keep it; none carries another container's id.
"""
import os

import pytest

from tests.support.agent_process import AgentProcess, wait_for
from tests.support.dockerd import containers, dockerd  # noqa: F401 (fixtures)
from tests.support.otlp_files import read_logs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LINES = 40


@pytest.fixture
def agent(tmp_path, dockerd):
    agent = AgentProcess(str(tmp_path), config={
        "queues": {"logs": {"batch_timeout": "200ms"}},
        "agent": {"host_metrics": {"enabled": False},
                  "discovery": {"poll_interval": "1s", "docker": {"socket": dockerd.socket}},
                  "logs": {"enabled": True, "start_at": "beginning", "poll_interval": "100ms",
                           "include": [os.path.join(dockerd.root, "data", "containers", "*", "*-json.log*")]}}})
    agent.start()
    agent.wait_ready()
    yield agent
    agent.stop()


def test_a_containers_json_file_log_carries_the_containers_resource(agent, dockerd, containers, tmp_path):
    containers.append("shop-logger")
    script = f'i=0; while [ $i -lt {LINES} ]; do echo "line $i"; i=$((i+1)); sleep 0.05; done; sleep 3600'
    cid = dockerd.run("shop-logger", "/bin/sh", "-c", script, network="none")
    data_dir = os.path.join(str(tmp_path), "data")

    def lines():
        return [(resource, record) for resource, record in read_logs(data_dir) if resource.get("container.id") == cid]

    records = wait_for(lambda: len(lines()) >= LINES and lines(), timeout=60, message=f"{LINES} lines of the container")
    assert [r.body.string_value for _, r in records] == [f"line {i}" for i in range(LINES)]
    assert all(attrs["log.iostream"].string_value == "stdout" and attrs["log.file.path"].string_value.endswith(
        f"/containers/{cid}/{cid}-json.log") for attrs in ({kv.key: kv.value for kv in r.attributes} for _, r in records))
    resources = [resource for resource, _ in records]
    named = [i for i, resource in enumerate(resources) if "container.name" in resource]
    assert named, "no record carries the container's name: %s" % resources[-1]
    # Discovery may learn of the container after its first lines: from then on every record has its resource.
    assert named == list(range(named[0], LINES))
    for resource in resources[named[0]:]:
        assert (resource["container.id"], resource["container.name"], resource["service.name"]) == (cid, "shop-logger", "shop-logger")
        assert resource["container.image.name"] == "telegen-test/busybox"
        assert [v.string_value for v in resource["container.image.tags"].values] == ["1"]
        assert resource["container.runtime"] == "docker"
        assert not any(key.startswith("process.") for key in resource)
    for resource in resources[:named[0]]:     # before: what the file's path says
        assert (resource["container.id"], resource["container.runtime"], resource["service.name"]) == (
            cid, "docker", "unknown_service")
