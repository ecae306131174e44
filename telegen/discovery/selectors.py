"""
agent.discovery.instrument / exclude_instrument: which processes Telegen reports on.

A selector is a mapping of criteria that must all match (AND); a list of selectors matches when
any one does (OR). exclude_instrument wins over instrument; an empty instrument list selects
every process. Container and Kubernetes criteria (container_name, container_image, k8s_namespace,
k8s_pod_name, k8s_deployment_name, k8s_owner_name: globs; k8s_pod_labels: {label: glob}, every one
must match) match the process's resource as the discovery chain built it, so they match only once
Docker or Kubernetes named the process; a process they do not name is not matched (rather than
matched by everything). The Kubernetes provider puts the labels selectors name on the resource as
k8s.pod.label.<key>, and only those.
"""
from fnmatch import fnmatchcase

# selector key -> the resource attributes it matches (any of them)
RESOURCE_KEYS = {
    "container_name": ("container.name",),
    "container_image": ("container.image.name",),
    "k8s_namespace": ("k8s.namespace.name",),
    "k8s_pod_name": ("k8s.pod.name",),
    "k8s_deployment_name": ("k8s.deployment.name",),
    "k8s_owner_name": ("k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name", "k8s.cronjob.name",
                       "k8s.job.name", "k8s.replicaset.name"),
}


def matches(selector, info, resource=None):
    """True when every criterion of one selector matches the ProcessInfo and its resource attributes."""
    for key, names in RESOURCE_KEYS.items():
        if key in selector and not any(fnmatchcase(str(resource[n]), selector[key])
                                       for n in names if resource and resource.get(n)):
            return False
    for label, pattern in selector.get("k8s_pod_labels", {}).items():
        value = resource.get(f"k8s.pod.label.{label}") if resource else None
        if value is None or not fnmatchcase(value, pattern):
            return False
    if "exe_path" in selector and not fnmatchcase(info.exe_path, selector["exe_path"]):
        return False
    if "name" in selector and not fnmatchcase(info.service_name, selector["name"]):
        return False
    if "open_ports" in selector and not any(lo <= port <= hi for port in info.ports for lo, hi in selector["open_ports"]):
        return False
    if selector.get("containers_only") and not info.in_container:
        return False
    return True


class Selection:
    """The two selector lists of agent.discovery, applied to processes."""

    def __init__(self, discovery_config):
        self.instrument = discovery_config["instrument"]
        self.exclude = discovery_config["exclude_instrument"]
        # True when no selector is configured: every process, known or not, is selected. A plain
        # attribute, not a property: ProcessTable.selected() reads it for every HTTP exchange.
        self.everything = not self.instrument and not self.exclude
        # Whether a selector needs the process's resource (containers, pods), not only /proc.
        self.uses_resource = any(key in s for s in (*self.instrument, *self.exclude) for key in (*RESOURCE_KEYS, "k8s_pod_labels"))
        # The pod labels any selector names (the Kubernetes provider copies these to the resource).
        self.pod_labels = sorted({label for s in (*self.instrument, *self.exclude) for label in s.get("k8s_pod_labels", {})})

    def selected(self, info, resource=None):
        """Whether telemetry of this process (a ProcessInfo, or None when unknown; its resource attributes) is reported."""
        if info is None:
            return not self.instrument
        if any(matches(s, info, resource) for s in self.exclude):
            return False
        return not self.instrument or any(matches(s, info, resource) for s in self.instrument)
