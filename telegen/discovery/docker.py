"""
The Docker link of the resource chain: container.name, image and labels of the container the
cgroup link found, from the Engine API on the daemon's unix socket.

On start (and every reconnect) it lists the running containers, then follows the /events stream
from just before the list, so a container started after the agent is known as soon as its start
event arrives, usually before its first request. start and rename (re)name a container, die
marks it stopped (its late telemetry keeps the name), destroy forgets it. When the stream ends or
a request fails (the daemon restarts), it reconnects with a doubling delay; what it knew stays
until the next list replaces it, so a resource does not lose its name while the daemon is away.

Default on, used when the socket exists: a host without Docker has no socket, which is "not
present" (enabled false, readiness "disabled") rather than an error; the socket is looked for
again at every retry, so a daemon installed later is found.
"""
import json
import os
import stat
from urllib.parse import quote

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from telegen.contracts import IResourceProvider
from telegen.discovery.streams import Backoff, HTTPStatusError, JsonLines, json_body

log = Logger()

LIST_TIMEOUT = 10.0
_BASE = "http://docker"     # the host part is not used: every request goes to the socket
_POD_LABEL = "io.kubernetes.pod.uid"     # what the kubelet labels the containers of a pod with
_EVENT_FILTER = quote(json.dumps({"type": ["container"]}))


def split_image(reference):
    """
    (container.image.name, container.image.tags) of an image reference as Docker reports it:
    "registry:5000/team/app:1.2" -> ("registry:5000/team/app", ["1.2"]); no tag means Docker's
    implicit "latest"; a digest is not a tag; a bare image id names nothing (None, []).
    """
    if not reference or reference.startswith("sha256:"):
        return None, []
    name = reference.split("@", 1)[0]
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], [name[colon + 1:]]
    return name, ([] if "@" in reference else ["latest"])


@implementer(IAgentEndpointFactory)
class _UnixEndpoints:
    """Every URI to the one unix socket (the Engine API is plain HTTP on it)."""

    def __init__(self, reactor, path):
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(self._reactor, self._path)


@implementer(IResourceProvider)
class DockerProvider(service.Service):
    """Containers of the local Docker daemon by id, kept current by its event stream."""

    name = "docker"  # type: ignore[assignment]  # IResourceProvider.name; Service types it None
    STATUS_SCHEMA = {
        "type": "object",
        "properties": {"enabled": {"type": "boolean"}, "connected": {"type": "boolean"},
                       "containers": {"type": "integer", "minimum": 0}},
        "required": ["enabled", "connected", "containers"],
        "additionalProperties": False,
    }

    def __init__(self, config, metrics, changed, reactor):
        """
        config is agent.discovery.docker; changed() tells the process table that cached resources
        may now carry more (a container was named or renamed).
        """
        self.enabled = config["enabled"]
        self.socket = config["socket"]
        self.label_keys = list(config["labels"])
        self.metrics = metrics
        self._changed = changed
        self.reactor = reactor
        self._containers = {}       # id -> resource attributes of the container
        self._running = set()       # ids of the containers running now
        self._kubernetes = set()    # ids of the containers a kubelet runs (labelled with their pod)
        self._present = False
        self._connected = False
        self._error = None
        self._backoff = Backoff()
        self._retry = None
        self._pending = None        # the list request in flight
        self._events = None         # the JsonLines reading the stream
        self.client = None          # the treq client of the current connection
        self._asked = set()         # container ids inspected because a process named them first

    # -- IResourceProvider ---------------------------------------------------------------------

    def attributes(self, pid, found):
        """
        The container's attributes. Its name is the service's unless the process named it, or
        Kubernetes runs the container (the pod's rules name it then, in the next link).
        """
        cid = found.get("container.id")
        attrs = self._containers.get(cid)
        if attrs is None:
            if cid and found.get("container.runtime", "docker") == "docker":
                self._inspect(cid)
            return {}
        if "service.name" in found or cid in self._kubernetes:
            return attrs
        return dict(attrs, **{"service.name": attrs["container.name"]})

    def status(self):
        return {"enabled": self.enabled and self._present, "connected": self._connected, "containers": len(self._running)}

    def ready_check(self):
        """'disabled' when off or no socket; 'ok' while connected; otherwise why not."""
        if not self.enabled or not self._present:
            return "disabled"
        if self._connected:
            return "ok"
        return f"failed: {self._error or 'connecting to ' + self.socket}"

    # -- service -------------------------------------------------------------------------------

    def startService(self):
        super().startService()
        if self.enabled:
            self._connect()

    def stopService(self):
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._pending is not None:
            self._pending.cancel()
        if self._events is not None:
            self._events.abort()
        self._connected = False

    # -- connection ----------------------------------------------------------------------------

    def _socket_exists(self):
        try:
            return stat.S_ISSOCK(os.stat(self.socket).st_mode)
        except OSError:
            return False

    def _connect(self):
        self._retry = None
        self._present = self._socket_exists()
        if not self._present:
            self._schedule()
            return
        import treq.client

        pool = HTTPConnectionPool(self.reactor, persistent=False)
        client = self.client = treq.client.HTTPClient(
            Agent.usingEndpointFactory(self.reactor, _UnixEndpoints(self.reactor, self.socket), pool=pool))
        since = self.reactor.seconds()
        self._pending = d = client.get(f"{_BASE}/containers/json", timeout=LIST_TIMEOUT)
        d.addCallback(json_body)
        d.addCallback(self._listed, client, since)
        d.addErrback(self._failed, "list")

    def _listed(self, containers, client, since):
        self._pending = None
        self._containers = {}
        self._running = set()
        self._kubernetes = set()
        for c in containers:
            names = c.get("Names") or ["/"]
            self._remember(c["Id"], names[0].lstrip("/"), c.get("Image"), c.get("Labels") or {})
        self._connected = True
        self._error = None
        self._backoff.reset()
        self._count()
        self._changed()
        log.info("docker: {n} containers running on {socket}", n=len(self._running), socket=self.socket)
        url = f"{_BASE}/events?since={since:.6f}&filters={_EVENT_FILTER}"
        self._pending = d = client.get(url, unbuffered=True)
        d.addCallback(self._follow)
        d.addErrback(self._failed, "events")

    def _follow(self, response):
        self._pending = None
        if response.code != 200:
            raise RuntimeError(f"events: HTTP {response.code}")
        finished = defer.Deferred()
        self._events = JsonLines(self._apply, self._bad_event, finished)
        response.deliverBody(self._events)
        finished.addCallback(self._stream_ended)

    def _stream_ended(self, reason):
        self._events = None
        if not self.running:
            return
        self._lost(f"event stream ended: {reason}", "stream_ended")

    def _failed(self, failure, step):
        self._pending = None
        if not self.running or failure.check(defer.CancelledError):
            return None
        self._lost(f"{step}: {failure.getErrorMessage() or failure.type.__name__}", step)
        return None

    def _lost(self, error, reason):
        self._connected = False
        self._error = error
        self.metrics.discovery_errors.labels(provider=self.name, reason=reason).inc()
        self.metrics.discovery_watch_restarts.labels(provider=self.name).inc()
        log.warn("docker: {error}; reconnecting in {delay}s", error=error, delay=self._backoff.delay)
        self._schedule()

    def _schedule(self):
        if self.running:
            self._retry = self.reactor.callLater(self._backoff.next(), self._connect)

    def _inspect(self, cid):
        """
        A process names a container the daemon has not told about yet (its start event is still
        on the way, or it started while the stream was down): ask for it once. Ids the daemon does
        not know (another runtime's containers) are not asked again.
        """
        if not self._connected or cid in self._asked:
            return
        self._asked.add(cid)
        d = self.client.get(f"{_BASE}/containers/{cid}/json", timeout=LIST_TIMEOUT)
        d.addCallback(json_body)
        d.addCallback(self._inspected, cid)
        d.addErrback(self._inspect_failed, cid)

    def _inspected(self, info, cid):
        if cid in self._containers:
            return
        config = info.get("Config") or {}
        self._remember(cid, (info.get("Name") or "").lstrip("/"), config.get("Image"), config.get("Labels") or {})
        if not (info.get("State") or {}).get("Running"):
            self._running.discard(cid)
        self._count()
        self._changed()

    def _inspect_failed(self, failure, cid):
        if not (failure.check(HTTPStatusError) and failure.value.code == 404):
            self._asked.discard(cid)        # the daemon may answer later
            self.metrics.discovery_errors.labels(provider=self.name, reason="inspect").inc()

    # -- events --------------------------------------------------------------------------------

    def _apply(self, event):
        """One container event: start, rename, die and destroy change what is known."""
        action = event.get("Action") or event.get("status") or ""
        actor = event.get("Actor") or {}
        cid = actor.get("ID") or event.get("id")
        attrs = actor.get("Attributes") or {}
        if event.get("Type", "container") != "container" or not cid:
            return
        if action == "start":
            self._remember(cid, attrs.get("name", ""), attrs.get("image"), attrs)
        elif action == "rename" and cid in self._containers:
            self._containers[cid] = dict(self._containers[cid], **{"container.name": attrs.get("name", "").lstrip("/")})
        elif action == "die":
            self._running.discard(cid)
        elif action == "destroy":
            self._running.discard(cid)
            self._kubernetes.discard(cid)
            self._containers.pop(cid, None)
        else:
            return
        self.metrics.discovery_events.labels(provider=self.name, action=action).inc()
        self._count()
        if action in ("start", "rename"):
            self._changed()

    def _bad_event(self, line):
        self.metrics.discovery_errors.labels(provider=self.name, reason="bad_event").inc()
        log.warn("docker: unreadable event skipped: {line!r}", line=line[:200])

    def _remember(self, cid, name, image, labels):
        """
        The resource attributes of one running container. labels holds the container's labels
        (in events they come mixed with name and image; only configured keys are copied).
        """
        image_name, tags = split_image(image)
        attrs = {"container.name": name, "container.runtime": "docker"}
        if image_name:
            attrs["container.image.name"] = image_name
        if tags:
            attrs["container.image.tags"] = tuple(tags)     # hashable: the exporter keys batches by resource
        for key in self.label_keys:
            if key in labels:
                attrs[f"container.label.{key}"] = labels[key]
        self._containers[cid] = attrs
        self._running.add(cid)
        if _POD_LABEL in labels:
            self._kubernetes.add(cid)

    def _count(self):
        self.metrics.discovery_objects.labels(provider=self.name, kind="container").set(len(self._containers))
