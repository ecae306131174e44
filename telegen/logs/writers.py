"""
Which container wrote a log file, from the file's path: the container runtimes' own layouts.

  Docker json-file        <data-root>/containers/<id>/<id>-json.log[.N]   (any data-root: the shape is matched)
  kubelet (CRI) links     /var/log/containers/<pod>_<namespace>_<container>-<id>.log
  kubelet (CRI) files     /var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log[.<rotated>]

The container id (or the pod's uid and the container's name) is what discovery knows a container
by (ProcessTable.container_resource), so the file's records get the resource of that container's
spans; what the path itself names is the resource until discovery knows it, or if it never does.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Optional

_ID = r"[0-9a-f]{64}"
_DOCKER = re.compile(rf"^(?P<id>{_ID})-json\.log(?:\.\d+)?$")
_CONTAINERS = re.compile(rf"^(?P<pod>[^_]+)_(?P<ns>[^_]+)_(?P<container>.+)-(?P<id>{_ID})\.log$")
_POD_DIR = re.compile(r"^(?P<ns>[^_]+)_(?P<pod>[^_]+)_(?P<uid>[0-9a-f][0-9a-f-]{15,})$")
_POD_FILE = re.compile(r"^\d+\.log(?:\..+)?$")


@dataclass(frozen=True)
class Writer:
    """The container behind a log file as its path names it."""

    container_id: Optional[str] = None
    pod_uid: Optional[str] = None
    container_name: Optional[str] = None
    named: dict = field(default_factory=dict, compare=False)   # resource attributes the path itself gives


def writer_of(path):
    """The Writer of a container runtime's log file, or None for any other file."""
    head, name = os.path.split(path)
    head, parent = os.path.split(head)
    m = _DOCKER.match(name)
    if m is not None and parent == m["id"]:
        return Writer(m["id"], named={"container.id": m["id"], "container.runtime": "docker"})
    m = _CONTAINERS.match(name)
    if m is not None:
        return Writer(m["id"], named={"k8s.pod.name": m["pod"], "k8s.namespace.name": m["ns"],
                                      "k8s.container.name": m["container"], "container.id": m["id"]})
    pod = _POD_DIR.match(os.path.basename(head))
    if pod is not None and _POD_FILE.match(name):
        return Writer(pod_uid=pod["uid"], container_name=parent,
                      named={"k8s.pod.name": pod["pod"], "k8s.namespace.name": pod["ns"], "k8s.pod.uid": pod["uid"],
                             "k8s.container.name": parent})
    return None

