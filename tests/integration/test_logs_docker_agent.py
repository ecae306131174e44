"""
Issue 17 item 4 end to end: the real `twistd telegen` tails the json-file log of a container run
by a private dockerd (its data-root in the test's temp dir, so only the <id>/<id>-json.log shape
says whose file it is). The container starts after the agent: its records carry the resource its
spans would (container id, name, image, runtime, the container's name as service.name), once
Docker discovery knows the container, and keep it; none carries another container's id. When
the daemon's socket appears only after the first lines went out, those keep what the file's path
says and the lines after discovery carry the container's resource, never changing back.
"""
import os

import pytest

from tests.support.agent_process import AgentProcess, wait_for
from tests.support.dockerd import containers, dockerd  # noqa: F401 (fixtures)
from tests.support.otlp_files import read_logs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LINES = 40


def start_agent(tmp_path, dockerd, socket):
    """An agent tailing the daemon's json-file logs, its Docker discovery on socket."""
    agent = AgentProcess(str(tmp_path), config={
        "queues": {"logs": {"batch_timeout": "200ms"}},
        "agent": {"host_metrics": {"enabled": False},
                  "discovery": {"poll_interval": "1s", "docker": {"socket": socket}},
                  "logs": {"enabled": True, "start_at": "beginning", "poll_interval": "100ms",
                           "include": [os.path.join(dockerd.root, "data", "containers", "*", "*-json.log*")]}}})
    return agent.start()


@pytest.fixture
def agent(tmp_path, dockerd):
    agent = start_agent(tmp_path, dockerd, dockerd.socket)
    agent.wait_ready()
    yield agent
    agent.stop()


def container_logs(tmp_path, cid):
    """[(resource, LogRecord)] of container cid in the file sink, in arrival order."""
    return [(resource, record) for resource, record in read_logs(os.path.join(str(tmp_path), "data"))
            if resource.get("container.id") == cid]


def assert_docker_resource(resource, cid, name):
    """The resource a span of that container carries, less process.* (tests/integration/test_discovery_docker_agent.py)."""
    assert (resource["container.id"], resource["container.name"], resource["service.name"]) == (cid, name, name)
    assert resource["container.image.name"] == "telegen-test/busybox"
    assert [v.string_value for v in resource["container.image.tags"].values] == ["1"]
    assert resource["container.runtime"] == "docker"
    assert not any(key.startswith("process.") for key in resource)


def test_a_containers_json_file_log_carries_the_containers_resource(agent, dockerd, containers, tmp_path):
    containers.append("shop-logger")
    script = f'i=0; while [ $i -lt {LINES} ]; do echo "line $i"; i=$((i+1)); sleep 0.05; done; sleep 3600'
    cid = dockerd.run("shop-logger", "/bin/sh", "-c", script, network="none")

    def lines():
        return container_logs(tmp_path, cid)

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
        assert_docker_resource(resource, cid, "shop-logger")
    for resource in resources[:named[0]]:     # before: what the file's path says
        assert (resource["container.id"], resource["container.runtime"], resource["service.name"]) == (
            cid, "docker", "unknown_service")


def test_lines_read_before_docker_discovery_connects_keep_the_paths_resource_and_the_later_ones_get_the_containers(
        dockerd, containers, tmp_path):
    """The daemon's socket appears only after the first lines were exported (a daemon the agent reaches late)."""
    containers.append("late-logger")
    cid = dockerd.run("late-logger", "/bin/sh", "-c", 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.05; done',
                      network="none")
    socket = str(tmp_path / "d.sock")    # not there yet: discovery looks for it again at every retry
    agent = start_agent(tmp_path, dockerd, socket)
    try:
        early = wait_for(lambda: len(container_logs(tmp_path, cid)) >= 10 and container_logs(tmp_path, cid), timeout=30,
                         message="the container's first lines")
        assert all(resource["service.name"] == "unknown_service" and "container.name" not in resource
                   for resource, _ in early)
        os.symlink(dockerd.socket, socket)
        wait_for(lambda: any("container.name" in resource for resource, _ in container_logs(tmp_path, cid)), timeout=60,
                 message="a line carrying the container's name")
    finally:
        agent.stop()
    records = container_logs(tmp_path, cid)
    assert [r.body.string_value for _, r in records] == [f"tick {i}" for i in range(len(records))]
    first = next(i for i, (resource, _) in enumerate(records) if "container.name" in resource)
    assert first >= len(early)
    for resource, _ in records[first:]:     # never back to the path's resource
        assert_docker_resource(resource, cid, "late-logger")
