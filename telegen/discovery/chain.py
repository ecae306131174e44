"""
The resource chain: the ordered IResourceProviders whose answers make one process's resource.

procfs -> cgroup -> docker -> kubernetes -> cloud -> host: each link sees what the earlier ones
found (the cgroup link's container.id is what Docker and Kubernetes look containers up by) and
its attributes are laid over them. A link sets service.name only when none is found yet (a
process's own OTEL_SERVICE_NAME wins); when no link names the service, the executable's name does,
and for a pid nothing knows "unknown_service", the resource conventions' fallback. Providers that watch something (a daemon, an API server) are
twisted services; the process table starts and stops them with itself. A provider with a block in
GET /status/discovery declares it by a STATUS_SCHEMA (what openapi.py publishes) and reports it
through status(); readiness is the first provider's failure, if any.
"""
from twisted.application.service import IService
from twisted.internet import defer

from telegen.discovery.procfs import UNKNOWN_SERVICE

READY = ("ok", "disabled")


class ResourceChain:
    """Providers in order, composed."""

    def __init__(self, providers):
        self.providers = list(providers)

    def attributes(self, pid):
        """The resource attributes of pid: every provider's answer over the earlier ones'."""
        found = self.compose(pid, {})
        if "service.name" not in found:
            found["service.name"] = found.get("process.executable.name") or UNKNOWN_SERVICE
        return found

    def compose(self, pid, found):
        """Every provider's answer for pid laid over found (a new dict), without the service.name fallback."""
        found = dict(found)
        for provider in self.providers:
            found.update(provider.attributes(pid, found))
        return found

    def provider(self, name):
        """The provider called name, or None."""
        return next((p for p in self.providers if p.name == name), None)

    def blocks(self):
        """{name: status block} of the providers that have a block in /status/discovery."""
        return {p.name: p.status() for p in self.providers if getattr(p, "STATUS_SCHEMA", None) is not None}

    def ready_check(self):
        """'ok', or the first provider's failure prefixed with its name."""
        for provider in self.providers:
            try:
                check = provider.ready_check()
            except Exception as exc:    # a broken check must not break the probe
                check = f"failed: {type(exc).__name__}: {exc}"
            if check not in READY:
                return f"failed: {provider.name}: {check.removeprefix('failed: ')}"
        return "ok"

    def services(self):
        """The providers that run (twisted services)."""
        return [p for p in self.providers if IService.providedBy(p)]

    def start(self):
        for provider in self.services():
            provider.startService()

    def stop(self):
        """Stop the running providers; a Deferred that fires when all have stopped."""
        return defer.DeferredList([defer.maybeDeferred(p.stopService) for p in self.services()])
