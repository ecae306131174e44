"""
agent.discovery.instrument / exclude_instrument: which processes Telegen reports on.

A selector is a mapping of criteria that must all match (AND); a list of selectors matches when
any one does (OR). exclude_instrument wins over instrument; an empty instrument list selects
every process. Kubernetes criteria (k8s_namespace, k8s_pod_name, k8s_deployment_name) cannot
match while Kubernetes metadata is not built, so a selector using them matches nothing rather
than everything.
"""
from fnmatch import fnmatchcase

_K8S_KEYS = ("k8s_namespace", "k8s_pod_name", "k8s_deployment_name")


def matches(selector, info):
    """True when every criterion of one selector matches the ProcessInfo."""
    if any(key in selector for key in _K8S_KEYS):
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

    def selected(self, info):
        """Whether telemetry of this process (a ProcessInfo, or None when unknown) is reported."""
        if info is None:
            return not self.instrument
        if any(matches(s, info) for s in self.exclude):
            return False
        return not self.instrument or any(matches(s, info) for s in self.instrument)
