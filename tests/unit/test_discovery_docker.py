"""
The Docker provider's parts that need no daemon: image references, the event stream's framing
(objects split across reads, unreadable lines counted and skipped), and being off.
(tests/integration/test_discovery_docker.py drives it against a real dockerd.)
"""
import json

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from telegen.contracts import IResourceProvider
from telegen.discovery.docker import DockerProvider, split_image
from telegen.discovery.streams import JsonLines
from telegen.selfmetrics import SelfMetrics


@pytest.mark.parametrize("reference, expected", [
    ("nginx", ("nginx", ["latest"])),
    ("nginx:1.25", ("nginx", ["1.25"])),
    ("registry:5000/team/app:2.0", ("registry:5000/team/app", ["2.0"])),
    ("registry:5000/team/app", ("registry:5000/team/app", ["latest"])),
    ("app@sha256:" + "a" * 64, ("app", [])),
    ("app:3@sha256:" + "a" * 64, ("app", ["3"])),
    ("sha256:" + "b" * 64, (None, [])),
    ("", (None, [])),
])
def test_image_references_give_name_and_tags(reference, expected):
    assert split_image(reference) == expected


def provider(**config):
    metrics = SelfMetrics()
    p = DockerProvider(dict({"enabled": True, "socket": "/nonexistent/docker.sock", "labels": []}, **config),
                       metrics, lambda: None, reactor=Clock())
    return p, metrics


def test_event_lines_split_across_reads_are_joined_and_bad_ones_counted():
    p, metrics = provider(labels=["team"])
    lines = JsonLines(p._apply, p._bad_event, defer.Deferred())
    start = (b'{"Type":"container","Action":"start","Actor":{"ID":"c1","Attributes":'
             b'{"name":"web","image":"shop/web:7","team":"blue","other":"x"}}}\n')
    lines.dataReceived(start[:40])
    assert p.attributes(1, {"container.id": "c1"}) == {}
    lines.dataReceived(start[40:] + b"not json\n\n" + b'{"Type":"container","Action":"exec_start: sh","id":"c1"}\n')
    container = {"container.name": "web", "container.runtime": "docker", "container.image.name": "shop/web",
                 "container.image.tags": ("7",), "container.label.team": "blue"}
    # The container's name names the service unless the process's own environment did.
    assert p.attributes(1, {"container.id": "c1"}) == dict(container, **{"service.name": "web"})
    assert p.attributes(1, {"container.id": "c1", "service.name": "cart"}) == container
    lines.dataReceived(b'{"Type":"container","Action":"start","Actor":{"ID":"c2","Attributes":'
                       b'{"name":"k8s_web_shop-7d9","image":"shop/web:7","io.kubernetes.pod.uid":"u-1"}}}\n')
    assert "service.name" not in p.attributes(1, {"container.id": "c2"})     # the Kubernetes link names it
    assert metrics.registry.get_sample_value("telegen_discovery_errors_total", {"provider": "docker", "reason": "bad_event"}) == 1
    assert metrics.registry.get_sample_value("telegen_discovery_events_total", {"provider": "docker", "action": "start"}) == 2


def test_off_or_without_a_socket_the_provider_is_disabled_and_retries_quietly():
    p, _ = provider(enabled=False)
    verifyObject(IResourceProvider, p)
    p.startService()
    assert (p.ready_check(), p.status()) == ("disabled", {"enabled": False, "connected": False, "containers": 0})
    assert p.reactor.getDelayedCalls() == []
    p.stopService()
    absent, _ = provider()
    absent.startService()
    assert absent.ready_check() == "disabled"
    [retry] = absent.reactor.getDelayedCalls()          # looked for again later: a daemon installed later is found
    absent.reactor.advance(retry.getTime())
    assert absent.reactor.getDelayedCalls()[0].getTime() - absent.reactor.seconds() == 1.0   # backoff doubles
    absent.stopService()
    assert absent.reactor.getDelayedCalls() == []


class Inspect(Resource):
    """GET /containers/<id>/json of one known container; 404 for others."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.asked = []

    def render_GET(self, request):
        cid = request.path.decode().split("/")[2]
        self.asked.append(cid)
        if cid != "c9":
            request.setResponseCode(404)
            return b'{"message": "No such container"}'
        return json.dumps({"Id": "c9", "Name": "/early", "State": {"Running": True},
                           "Config": {"Image": "shop/api:3", "Labels": {}}}).encode()


def test_a_container_a_process_names_before_its_start_event_is_inspected_once():
    changes = []
    p = DockerProvider({"enabled": True, "socket": "/nonexistent", "labels": []}, SelfMetrics(), lambda: changes.append(1), Clock())
    resource = Inspect()
    p.client, p._connected = StubTreq(resource), True
    assert p.attributes(1, {"container.id": "c9"}) == {}
    p.client.flush()
    assert p.attributes(1, {"container.id": "c9"})["container.name"] == "early" and changes == [1]
    assert p.attributes(1, {"container.id": "c0", "container.runtime": "docker"}) == {}
    p.client.flush()
    p.attributes(1, {"container.id": "c0"})                   # not Docker's: asked once only
    p.attributes(1, {"container.id": "c1", "container.runtime": "containerd"})      # another runtime: never asked
    p.client.flush()
    assert resource.asked == ["c9", "c0"] and p.status()["containers"] == 1
