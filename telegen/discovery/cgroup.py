"""
Which container a process runs in, from its /proc/PID/cgroup: the cgroup provider of the chain.

Every container runtime puts a container's processes in a cgroup whose path ends in the
container's 64-hex id, but each spells the path its own way, and the same runtime differs
between cgroup v1 (one line per controller), v2 (one "0::" line) and hybrid hosts (both):

  docker, cgroupfs driver         /docker/<id>                       (v1 and v2)
  docker, systemd driver          /system.slice/docker-<id>.scope
  containerd CRI (systemd)        /kubepods.slice/.../cri-containerd-<id>.scope
  containerd/docker in kubepods   /kubepods/burstable/pod<uid>/<id>  (cgroupfs: runtime not in the path)
  cri-o                           /kubepods.slice/.../crio-<id>.scope
  podman                          /machine.slice/libpod-<id>.scope, /libpod_parent/libpod-<id>,
                                  rootless: .../user@1000.service/user.slice/libpod-<id>.scope/container
  nerdctl (containerd)            /system.slice/nerdctl-<id>.scope, /default/<id>

The last id in the path wins (docker in docker nests one container's cgroup in another's).
conmon's own scopes (crio-conmon-<id>, libpod-conmon-<id>) hold the monitor, not the container.
A Kubernetes pod's uid is in the path too (pod<uid>, or kubepods-...-pod<uid with _>.slice),
which lets the Kubernetes provider find the pod before the runtime reports container ids.
"""
import re
from dataclasses import dataclass
from typing import Optional

from zope.interface import implementer

from telegen.contracts import IResourceProvider

_ID = r"[0-9a-f]{64}"
# <prefix>-<id>[.scope]: the runtime the prefix names (OTel container.runtime spelling).
_SCOPE = re.compile(rf"^(docker|cri-containerd|crio|libpod|nerdctl)-({_ID})(?:\.scope)?$")
_SCOPE_RUNTIME = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o",
                  "libpod": "podman", "nerdctl": "containerd"}
_BARE = re.compile(rf"^{_ID}$")
# A bare id's runtime, from a parent component (the cgroupfs drivers' parents).
_PARENT_RUNTIME = {"docker": "docker", "libpod_parent": "podman", "default": "containerd"}
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$")


@dataclass(frozen=True)
class Container:
    """A process's container as its cgroup path tells it."""

    id: str
    runtime: Optional[str] = None      # None when the path does not say (a bare id under kubepods)
    pod_uid: Optional[str] = None      # a Kubernetes pod's uid, when the path holds one


def parse_path(path):
    """The Container of one cgroup path, or None when it is not a container's."""
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) - 1, -1, -1):
        scoped = _SCOPE.match(parts[i])
        if scoped:
            return Container(scoped.group(2), _SCOPE_RUNTIME[scoped.group(1)], _pod_uid(parts[:i]))
        if _BARE.match(parts[i]):
            runtime = next((_PARENT_RUNTIME[p] for p in reversed(parts[:i]) if p in _PARENT_RUNTIME), None)
            pod_uid = _pod_uid(parts[:i])
            if pod_uid is not None and runtime == "containerd":     # "default" is a namespace only outside kubepods
                runtime = None
            return Container(parts[i], runtime, pod_uid)
    return None


def _pod_uid(parts):
    for part in reversed(parts):
        found = _POD.search(part)
        if found:
            return found.group(1).replace("_", "-")
    return None


def parse(text):
    """
    The Container of a whole /proc/PID/cgroup file (str or bytes), or None. The lines of a hybrid
    host agree; the first line that names a container is taken.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            found = parse_path(fields[2])
            if found is not None:
                return found
    return None


@implementer(IResourceProvider)
class CgroupProvider:
    """
    container.id and container.runtime of a process, from the Container procfs recorded when it
    read the process (so a process already gone keeps its container). lookup(pid) is the process
    table's ProcessInfo lookup.
    """

    name = "cgroup"
    STATUS_SCHEMA = None        # no block of its own in /status/discovery

    def __init__(self, lookup):
        self._lookup = lookup

    def attributes(self, pid, found):
        info = self._lookup(pid)
        container = info.container if info is not None else None
        if container is None:
            return {}
        attrs = {"container.id": container.id}
        if container.runtime:
            attrs["container.runtime"] = container.runtime
        if container.pod_uid:
            attrs["k8s.pod.uid"] = container.pod_uid
        return attrs

    def status(self):
        return {}

    def ready_check(self):
        return "ok"
