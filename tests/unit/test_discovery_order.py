"""
A resource never flaps between two names: the order in which one process's metadata arrives
(/proc only, then its Docker container, then its pod, then the pod's owner) only adds to or
refines its resource, and once known it does not revert when a stream restarts or a re-list
replays what was already known. Real Docker and Kubernetes providers behind a real process table
(fake /proc), fed the events and lists their streams deliver.
"""
from twisted.internet import defer
from twisted.internet.task import Clock

from telegen.discovery.docker import DockerProvider
from telegen.discovery.kubernetes import KubernetesProvider
from tests.support.fake_proc import make_table
from tests.support.kube_api import owned, pod

CID = "ab" * 32
UID = "1d2c3b4a-0000-4000-8000-00000000beef"
CGROUP = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/docker-{CID}.scope\n"
START = {"Type": "container", "Action": "start",
         "Actor": {"ID": CID, "Attributes": {"name": "k8s_web_web-7d9-abc_shop_0", "image": "shop/web:7", "io.kubernetes.pod.uid": UID}}}
LISTED = [{"Id": CID, "Names": ["/k8s_web_web-7d9-abc_shop_0"], "Image": "shop/web:7", "Labels": {"io.kubernetes.pod.uid": UID}}]


class _Silent:
    """The Docker provider's client once it has listed: the /events request it makes stays open."""

    def get(self, url, **kwargs):
        return defer.Deferred()


def web_pod(statuses=True):
    p = pod("web-7d9-abc", UID, containers=[("web", f"docker://{CID}")], owner=("ReplicaSet", "web-7d9"))
    if not statuses:        # the kubelet has not reported the container yet: known by the cgroup's pod uid
        p["status"]["containerStatuses"] = []
    return p


def refines(earlier, later):
    """later keeps every attribute of earlier with the same value (service.name may be refined)."""
    lost = {k: v for k, v in earlier.items() if k != "service.name" and later.get(k) != v}
    assert not lost, f"attributes lost or changed: {lost} -> { {k: later.get(k) for k in lost} }"
    return True


def table_with_providers(tmp_path):
    holder = {}

    def providers(table):
        holder["docker"] = DockerProvider({"enabled": True, "socket": str(tmp_path / "none.sock"), "labels": []},
                                          table.metrics, table.metadata_changed, table.reactor)
        holder["kubernetes"] = KubernetesProvider({"enabled": False, "kubeconfig": "", "node_name": "node-1", "cluster_name": ""},
                                                  table.metrics, table.metadata_changed, reactor=table.reactor, environ={})
        return [holder["docker"], holder["kubernetes"]]

    proc, _, table = make_table(tmp_path, clock=Clock(), providers=providers)
    proc.add(40, "/bin/busybox", ["httpd"], cgroup=CGROUP)
    return table, holder["docker"], holder["kubernetes"]


def test_metadata_arriving_late_refines_the_resource_and_replays_never_revert_it(tmp_path):
    table, docker, kube = table_with_providers(tmp_path)
    table.startService()
    seen = [table.resource_attributes(40)]              # /proc (and the cgroup) only
    assert (seen[0]["service.name"], seen[0]["container.id"], seen[0]["k8s.pod.uid"]) == ("busybox", CID, UID)
    assert "container.name" not in seen[0]

    docker._apply(START)                                 # the container's start event
    seen.append(table.resource_attributes(40))
    assert seen[-1]["container.name"] == "k8s_web_web-7d9-abc_shop_0"
    assert seen[-1]["service.name"] == "busybox"         # a pod's container: the pod's rules will name it, not Docker

    kube.apply("pods", "ADDED", web_pod(statuses=False))    # after the first request; by the cgroup's pod uid
    seen.append(table.resource_attributes(40))
    assert (seen[-1]["k8s.pod.name"], seen[-1]["service.name"]) == ("web-7d9-abc", "web-7d9")
    kube.apply("pods", "MODIFIED", web_pod())            # the kubelet reports the container
    seen.append(table.resource_attributes(40))
    assert seen[-1]["k8s.container.name"] == "web"
    kube.apply("replicasets", "ADDED", owned("replicasets", "web-7d9", owner=("Deployment", "web")))   # the owner, late
    seen.append(table.resource_attributes(40))
    assert (seen[-1]["k8s.deployment.name"], seen[-1]["service.name"]) == ("web", "web")
    assert all(refines(a, b) for a, b in zip(seen, seen[1:]))
    assert [s["service.name"] for s in seen] == ["busybox", "busybox", "web-7d9", "web-7d9", "web"]
    known = seen[-1]

    # Nothing that follows takes anything back.
    docker._lost("event stream ended", "stream_ended")   # the daemon restarts: what it knew stays meanwhile
    table.metadata_changed()
    assert table.resource_attributes(40) == known
    docker._listed(LISTED, _Silent(), 0.0)               # and its new list replaces it with the same
    assert table.resource_attributes(40) == known
    kube.replace("pods", [web_pod()])                    # a re-list on 410 Gone, pods before their owners
    assert table.resource_attributes(40) == known
    kube.replace("replicasets", [owned("replicasets", "web-7d9", owner=("Deployment", "web"))])
    assert table.resource_attributes(40) == known
    kube.apply("pods", "ADDED", web_pod())               # a watch replaying objects already listed
    kube.apply("replicasets", "MODIFIED", owned("replicasets", "web-7d9", owner=("Deployment", "web")))
    docker._apply(START)
    table.rescan()
    assert table.resource_attributes(40) == known
    table.stopService()
