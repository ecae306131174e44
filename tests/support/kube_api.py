"""
A small Kubernetes API server emulator for discovery tests (no kube-apiserver can run here).

It follows the API's list/watch semantics for the paths Telegen reads: a list answers every object
with the collection's resourceVersion; a watch from a resourceVersion streams, one JSON object per
line, every change after it (ADDED, MODIFIED, DELETED), then the changes as they happen, BOOKMARK
events when asked (allowWatchBookmarks) and told (bookmark()), and ends after timeoutSeconds; a
watch from a version older than the compacted history gets an ERROR event with a 410 Status, as
kube-apiserver sends it. fieldSelector spec.nodeName=X filters pods; a bearer token is required,
or, with client_certificates, a client certificate signed by the TLS material's CA (as
kube-apiserver's --client-ca-file authenticates kubeadm's admin.conf).
"""
import json
from urllib.parse import parse_qs, urlparse

from twisted.internet import reactor as default_reactor
from twisted.web import resource, server

PATHS = {"/api/v1/pods": "pods", "/api/v1/services": "services",
         "/apis/apps/v1/replicasets": "replicasets", "/apis/batch/v1/jobs": "jobs"}
LIST_KINDS = {"pods": "PodList", "services": "ServiceList", "replicasets": "ReplicaSetList", "jobs": "JobList"}


class _Watcher:
    def __init__(self, request, kind, node, bookmarks):
        self.request, self.kind, self.node, self.bookmarks = request, kind, node, bookmarks
        self.timer = None

    def wants(self, kind, obj):
        return kind == self.kind and (self.node is None or (obj.get("spec") or {}).get("nodeName") == self.node)

    def send(self, event_type, obj):
        self.request.write(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")


class KubeApi(resource.Resource):
    """The emulated API server; start() listens on a loopback port."""

    isLeaf = True

    def __init__(self, token="test-token", reactor=default_reactor, tls=None, client_certificates=False):
        """
        tls: a tests.support.otlp_receiver.TlsMaterial to serve HTTPS with its server certificate;
        client_certificates: the TLS handshake then requires a client certificate of its CA.
        """
        super().__init__()
        self.token = token
        self.tls = tls
        self.client_certificates = client_certificates
        self.client_names = []      # the subject CN of every client certificate a request came with
        self.reactor = reactor
        self.version = 1000
        self.objects = {kind: {} for kind in LIST_KINDS}     # kind -> {(namespace, name): object}
        self.history = []           # (version, kind, event type, object)
        self.compacted = 0          # watches from a version below this get 410
        self.watchers = []
        self.requests = []          # (kind, query dict) of every request answered
        self.holding = False        # watch requests wait in held until release()
        self.held = []
        self.port = None
        self._listening = None

    # -- the test's side --------------------------------------------------------------------

    def start(self):
        if self.tls is not None:
            from twisted.internet import ssl

            certificate = ssl.PrivateCertificate.loadPEM(self.tls.read("server_cert_file") + self.tls.read("server_key_file"))
            authorities = [ssl.Certificate.loadPEM(self.tls.read("ca_file"))] if self.client_certificates else []
            self._listening = self.reactor.listenSSL(0, server.Site(self), certificate.options(*authorities), interface="127.0.0.1")
        else:
            self._listening = self.reactor.listenTCP(0, server.Site(self), interface="127.0.0.1")
        self.port = self._listening.getHost().port
        return self

    def stop(self):
        for watcher in list(self.watchers):
            self._end(watcher)
        return self._listening.stopListening()

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def kubeconfig(self, path, namespace="monitoring"):
        """Write a kubeconfig naming this server and its token; returns the path."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": "agent", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "emulated", "user": "agent", "namespace": namespace}}],
        }
        with open(path, "w") as f:
            json.dump(config, f)
        return path

    def put(self, kind, obj):
        """Create or replace an object (ADDED or MODIFIED)."""
        meta = obj["metadata"]
        key = (meta.get("namespace"), meta["name"])
        event_type = "MODIFIED" if key in self.objects[kind] else "ADDED"
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        self.objects[kind][key] = obj
        self._record(kind, event_type, obj)

    def delete(self, kind, namespace, name):
        obj = self.objects[kind].pop((namespace, name))
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self._record(kind, "DELETED", obj)

    def compact(self):
        """Forget the history: a watch from any version before the current one gets 410 Gone."""
        self.history = []
        self.compacted = self.version

    def bookmark(self):
        """A BOOKMARK at the current version to every watch that allows them."""
        self.version += 1
        for watcher in self.watchers:
            if watcher.bookmarks:
                watcher.send("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": str(self.version)}})

    def hold_watches(self):
        """Answer no watch request until release() (changes meanwhile reach them as history)."""
        self.holding = True

    def release(self):
        self.holding = False
        held, self.held = self.held, []
        for watcher, since in held:
            self._serve_watch(watcher, since)

    def end_watches(self):
        """End every watch stream, as the server does at timeoutSeconds."""
        for watcher in list(self.watchers):
            self._end(watcher)

    def watch_queries(self, kind):
        return [q for k, q in self.requests if k == kind and q.get("watch") == "1"]

    def list_count(self, kind):
        return sum(1 for k, q in self.requests if k == kind and q.get("watch") != "1")

    # -- the server's side ----------------------------------------------------------------------

    def _record(self, kind, event_type, obj):
        self.history.append((self.version, kind, event_type, json.loads(json.dumps(obj))))
        for watcher in self.watchers:
            if watcher.wants(kind, obj):
                watcher.send(event_type, obj)

    def _end(self, watcher):
        if watcher in self.watchers:
            self.watchers.remove(watcher)
            if watcher.timer is not None and watcher.timer.active():
                watcher.timer.cancel()
            watcher.request.finish()

    def render_GET(self, request):
        url = urlparse(request.uri.decode())
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        kind = PATHS.get(url.path)
        if not self._certified(request) and request.getHeader("authorization") != f"Bearer {self.token}":
            return self._status(request, 401, "Unauthorized")
        if kind is None:
            return self._status(request, 404, "NotFound")
        self.requests.append((kind, query))
        node = None
        selector = query.get("fieldSelector", "")
        if selector:
            field, _, value = selector.partition("=")
            if kind != "pods" or field != "spec.nodeName":
                return self._status(request, 400, f"field label not supported: {field}")
            node = value
        request.setHeader(b"content-type", b"application/json")
        watcher = _Watcher(request, kind, node, query.get("allowWatchBookmarks") == "true")
        if query.get("watch") != "1":
            items = [o for o in self.objects[kind].values() if watcher.wants(kind, o)]
            return json.dumps({"kind": LIST_KINDS[kind], "apiVersion": "v1",
                               "metadata": {"resourceVersion": str(self.version)}, "items": items}).encode()
        watcher.timeout = int(query.get("timeoutSeconds", 1800))
        since = int(query.get("resourceVersion") or self.version)
        if self.holding:
            self.held.append((watcher, since))
        else:
            self._serve_watch(watcher, since)
        return server.NOT_DONE_YET

    def _certified(self, request):
        """Whether the request came with a client certificate (which the handshake verified)."""
        if not self.client_certificates:
            return False
        peer = request.channel.transport.getPeerCertificate()
        if peer is None:
            return False
        from cryptography.x509.oid import NameOID

        self.client_names.append(peer.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        return True

    def _serve_watch(self, watcher, since):
        if since < self.compacted:
            watcher.send("ERROR", {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
                                   "message": f"too old resource version: {since} ({self.compacted})", "code": 410})
            watcher.request.finish()
            return
        watcher.request.write(b"")         # the status line and headers now, as kube-apiserver sends them
        for version, k, event_type, obj in self.history:
            if version > since and watcher.wants(k, obj):
                watcher.send(event_type, obj)
        self.watchers.append(watcher)
        watcher.timer = self.reactor.callLater(watcher.timeout, self._end, watcher)
        watcher.request.notifyFinish().addBoth(lambda _: self.watchers.remove(watcher) if watcher in self.watchers else None)

    def _status(self, request, code, reason):
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}).encode()


def pod(name, uid, node="node-1", namespace="shop", containers=(), labels=None, annotations=None, owner=None, env=None):
    """A Pod object: containers are (name, containerID) pairs; owner is (kind, name)."""
    meta = {"name": name, "namespace": namespace, "uid": uid, "labels": labels or {}, "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True, "apiVersion": "apps/v1", "uid": "o-" + owner[1]}]
    return {
        "kind": "Pod", "apiVersion": "v1", "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": c, "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
                                                  for c, _ in containers]},
        "status": {"containerStatuses": [{"name": c, "containerID": cid} for c, cid in containers]},
    }


def owned(kind, name, namespace="shop", owner=None):
    """A ReplicaSet or Job (or Service, without owner) object."""
    meta = {"name": name, "namespace": namespace, "uid": f"{kind}-{name}"}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True, "apiVersion": "apps/v1", "uid": "o-" + owner[1]}]
    return {"metadata": meta}


def main():
    """
    Run the emulator as its own process (for tests that drive a real agent without a reactor):
    `python -m tests.support.kube_api OBJECTS.json KUBECONFIG` loads {kind: [objects]}, writes a
    kubeconfig naming the port it listens on, and serves until terminated.
    """
    import sys

    objects_path, kubeconfig_path = sys.argv[1:3]
    api = KubeApi().start()
    with open(objects_path) as f:
        for kind, items in json.load(f).items():
            for obj in items:
                api.put(kind, obj)
    api.kubeconfig(kubeconfig_path)
    default_reactor.run()


if __name__ == "__main__":
    main()
