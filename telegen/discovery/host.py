"""
The last link of the resource chain: the host's facts (host.*, os.*) and the agent's configured
telegen.resource_attributes, minus service.* (those name the agent, not the observed process).
"""
from zope.interface import implementer

from telegen.contracts import IResourceProvider
from telegen.signals.common import host_resource_attributes


@implementer(IResourceProvider)
class HostProvider:
    """Host facts every resource carries; they win over what earlier links found, as before."""

    name = "host"
    STATUS_SCHEMA = None        # /status shows the host in its own block

    def __init__(self, config):
        self.reconfigure(config)

    def reconfigure(self, config):
        """The agent's resource keys changed (a reload): attributes from now on carry the new ones."""
        self._host = {k: v for k, v in host_resource_attributes(config).items() if not k.startswith("service.")}

    def attributes(self, pid, found):
        return self._host

    def status(self):
        return {}

    def ready_check(self):
        return "ok"
