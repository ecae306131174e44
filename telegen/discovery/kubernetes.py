"""
The Kubernetes link of the resource chain: k8s.* attributes and the service name of the pod a
process runs in, from the API server.

Which pod: the container id the cgroup link found, matched against the pods' containerStatuses
(docker://, containerd://, cri-o:// ids), or else the pod uid in the cgroup path (a container
whose status the kubelet has not reported yet). Pods of this node only (fieldSelector
spec.nodeName, from agent.discovery.kubernetes.node_name or the NODE_NAME / K8S_NODE_NAME the
DaemonSet sets); ReplicaSets and Jobs, to name the Deployment or CronJob that owns a pod's owner;
Services, counted for /status/discovery.

Each kind is one list + watch: list, then watch from the list's resourceVersion with bookmarks
(which move the resourceVersion on while nothing changes), watch again from the last version when
the server ends the stream, and list again when the version is too old (410 Gone, as an ERROR
event or an HTTP status). Failures retry with a doubling delay; what was known stays meanwhile.

service.name, when the process did not set one: the container's OTEL_SERVICE_NAME in the pod
spec, the pod's resource.opentelemetry.io/service.name annotation, its app.kubernetes.io/name
label, the owning workload's name, the container's name (OpenTelemetry's Kubernetes rules).
"""
import base64
import os
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlencode

import yaml
from twisted.application import service
from twisted.internet import defer
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from telegen.contracts import IResourceProvider
from telegen.discovery.streams import Backoff, HTTPStatusError, JsonLines, json_body

log = Logger()

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
LIST_TIMEOUT = 30.0
WATCH_SECONDS = 300         # the server ends a watch after this long; it is then resumed
GONE = 410
MIN_STREAM = 1.0            # a watch that ends sooner than this is retried with backoff, not at once
WATCHDOG = WATCH_SECONDS + 60   # a stream the server has not ended by then is dropped (a silent partition)
# (kind, API path) of what is watched; pods are filtered to this node.
KINDS = (("pods", "/api/v1/pods"), ("replicasets", "/apis/apps/v1/replicasets"),
         ("jobs", "/apis/batch/v1/jobs"), ("services", "/api/v1/services"))
_WORKLOADS = {"ReplicaSet": "k8s.replicaset.name", "StatefulSet": "k8s.statefulset.name",
              "DaemonSet": "k8s.daemonset.name", "Job": "k8s.job.name"}
# The workload that names a service, most specific owner first (a Deployment over its ReplicaSet).
_WORKLOAD_ORDER = ("k8s.deployment.name", "k8s.cronjob.name", "k8s.statefulset.name", "k8s.daemonset.name",
                   "k8s.job.name", "k8s.replicaset.name")


class KubeConfigError(ValueError):
    """A kubeconfig or service account that cannot be used; the message says which part."""


@dataclass(frozen=True)
class ApiServer:
    """Where the API server is and how to authenticate to it."""

    url: str
    token: Optional[str] = field(default=None, repr=False)     # a secret: never in logs or errors
    ca_pem: Optional[bytes] = None
    insecure: bool = False
    namespace: Optional[str] = None     # the agent's own namespace, when known
    client_pem: Optional[bytes] = field(default=None, repr=False)   # certificate + private key: a secret


def in_cluster(environ=os.environ, account_dir=SERVICE_ACCOUNT):
    """
    The ApiServer of the pod's service account, or None outside a cluster (or in a pod given no
    token: automountServiceAccountToken false means the agent is not meant to ask the API).
    """
    host = environ.get("KUBERNETES_SERVICE_HOST")
    if not host or not os.path.exists(os.path.join(account_dir, "token")):
        return None
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host

    def read(name):
        try:
            with open(os.path.join(account_dir, name), "rb") as f:
                return f.read()
        except OSError as exc:
            raise KubeConfigError(f"service account {name}: {exc.strerror}") from None

    return ApiServer(f"https://{host}:{port}", read("token").decode().strip(), read("ca.crt"),
                     namespace=read("namespace").decode().strip())


def from_kubeconfig(path):
    """
    The ApiServer of a kubeconfig's current context: a bearer token (token, tokenFile) or a client
    certificate (client-certificate[-data] and client-key[-data], as kind, minikube and kubeadm
    write them), and the cluster's CA. Relative file names are relative to the kubeconfig's
    directory, as kubectl reads them. Errors name the field, never the key material.
    """
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"kubeconfig {path}: {exc}") from None

    def named(section, name):
        for entry in config.get(section) or []:
            if entry.get("name") == name:
                return entry
        raise KubeConfigError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

    def material(section, key):
        """The bytes of `key`-data (base64) or of the file `key` names, or None."""
        if section.get(f"{key}-data"):
            try:
                return base64.b64decode(section[f"{key}-data"], validate=True)
            except (ValueError, TypeError):
                raise KubeConfigError(f"kubeconfig {path}: {key}-data is not base64") from None
        if section.get(key):
            name = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(section[key]))
            try:
                with open(name, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise KubeConfigError(f"kubeconfig {path}: {key} {name}: {exc.strerror}") from None
        return None

    current = config.get("current-context")
    if not current:
        raise KubeConfigError(f"kubeconfig {path}: no current-context")
    context = named("contexts", current).get("context") or {}
    cluster = named("clusters", context.get("cluster")).get("cluster") or {}
    user = named("users", context.get("user")).get("user") or {} if context.get("user") else {}
    token = user.get("token")
    if user.get("tokenFile"):
        token = material(user, "tokenFile").decode().strip()
    client_pem = _client_pem(path, material(user, "client-certificate"), material(user, "client-key"))
    if not cluster.get("server"):
        raise KubeConfigError(f"kubeconfig {path}: cluster {context.get('cluster')!r} has no server")
    return ApiServer(cluster["server"].rstrip("/"), token, material(cluster, "certificate-authority"),
                     bool(cluster.get("insecure-skip-tls-verify")), context.get("namespace"), client_pem)


def _client_pem(path, certificate, key):
    """A user's certificate and key as one PEM, checked to load and to match (or None without them)."""
    if certificate is None and key is None:
        return None
    if certificate is None or key is None:
        raise KubeConfigError(f"kubeconfig {path}: a client certificate needs both client-certificate and client-key")
    try:
        PrivateCertificate.loadPEM(certificate + b"\n" + key)
    except Exception:   # OpenSSL's errors, a key that does not match: the message could quote nothing useful
        raise KubeConfigError(f"kubeconfig {path}: client-certificate and client-key are not a matching PEM "
                              "certificate and private key") from None
    return certificate + b"\n" + key


_NAME_ANNOTATION = "resource.opentelemetry.io/service.name"
_NAME_LABEL = "app.kubernetes.io/name"


def trim_pod(obj, label_keys=()):
    """
    The fields of a pod the attributes need, nothing else: a pod as the API sends it is kilobytes
    (managed fields, volumes, probes), and a node may run hundreds. label_keys: labels kept
    besides app.kubernetes.io/name.
    """
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    return {
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "labels": {k: labels[k] for k in (_NAME_LABEL, *label_keys) if k in labels},
            "annotations": {_NAME_ANNOTATION: annotations[_NAME_ANNOTATION]} if _NAME_ANNOTATION in annotations else {},
            "ownerReferences": [{"kind": r.get("kind"), "name": r.get("name"), "controller": r.get("controller")}
                                for r in meta.get("ownerReferences") or [] if r.get("controller")],
        },
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": [{"name": c.get("name"), "env": [e for e in c.get("env") or [] if e.get("name") == "OTEL_SERVICE_NAME"]}
                           for c in spec.get("containers") or []],
        },
    }


def container_id(status_id):
    """The runtime's container id of a containerStatuses[].containerID ("containerd://<id>")."""
    return status_id.split("://", 1)[-1] if status_id else None


@implementer(IPolicyForHTTPS)
class _TlsPolicy:
    """
    TLS to the API server: trusting its CA (or the platform's, or, with insecure-skip-tls-verify,
    anything) and presenting the kubeconfig's client certificate when it has one.
    """

    def __init__(self, api):
        self.insecure = api.insecure
        self.trust = Certificate.loadPEM(api.ca_pem) if api.ca_pem else None
        self.client = PrivateCertificate.loadPEM(api.client_pem) if api.client_pem else None

    def creatorForNetloc(self, hostname, port):
        if self.insecure:
            own = {"privateKey": self.client.privateKey.original, "certificate": self.client.original} if self.client else {}
            return CertificateOptions(verify=False, **own)
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.trust, clientCertificate=self.client)


def _http_client(reactor, api):
    """A treq client for the API server (see _TlsPolicy)."""
    import treq.client
    from twisted.web.client import Agent, HTTPConnectionPool

    return treq.client.HTTPClient(Agent(reactor, contextFactory=_TlsPolicy(api), pool=HTTPConnectionPool(reactor, persistent=False)))


def _describe(failure):
    """
    A request's failure as readiness shows it: the reasons a connection failed (TLS's own words),
    not the repr of the Failures treq wraps them in.
    """
    from OpenSSL import SSL

    texts = []
    for reason in getattr(failure.value, "reasons", None) or [failure]:
        if reason.check(SSL.Error):
            errors = reason.value.args[0] if reason.value.args and isinstance(reason.value.args[0], list) else []
            text = "TLS: " + ("; ".join(str(e[-1]) for e in errors) or str(reason.value))
            if "alert" in text:     # an alert is the server's refusal, not our verification's
                text += " (the API server refused the connection, e.g. a client certificate its CA does not sign)"
            texts.append(text)
        else:
            texts.append(reason.getErrorMessage() or reason.type.__name__)
    return "; ".join(texts)


class _Watch:
    """List + watch of one kind, feeding the provider; resumes, re-lists on 410, retries with backoff."""

    def __init__(self, provider, kind, path, selector):
        self.provider = provider
        self.kind = kind
        self.path = path
        self.selector = selector        # a fieldSelector, or ""
        self.version = None             # the resourceVersion to watch from
        self.listed = False             # a list has succeeded once
        self.healthy = False            # the last request succeeded
        self.error = None
        self._gone = False
        self._events = 0                # objects received since the last list
        self._opened = 0.0              # when the current stream opened
        self._backoff = Backoff()
        self._pending = None
        self._stream = None
        self._retry = None
        self._watchdog = None

    def _url(self, **params):
        query = {"fieldSelector": self.selector} if self.selector else {}
        query.update(params)
        return f"{self.provider.api.url}{self.path}" + (f"?{urlencode(query)}" if query else "")

    def start(self):
        self._list()

    def stop(self):
        for call in (self._retry, self._watchdog):
            if call is not None and call.active():
                call.cancel()
        if self._pending is not None:
            self._pending.cancel()
        if self._stream is not None:
            self._stream.abort()

    def _get(self, url, **kwargs):
        return self.provider.client.get(url, headers=self.provider.headers, **kwargs)

    def _list(self):
        self._retry = None
        self._pending = d = self._get(self._url(), timeout=LIST_TIMEOUT)
        d.addCallback(json_body)
        d.addCallback(self._listed)
        d.addErrback(self._failed, "list")

    def _listed(self, body):
        self._pending = None
        self.version = (body.get("metadata") or {}).get("resourceVersion")
        self.provider.replace(self.kind, body.get("items") or [])
        self.listed = self.healthy = True
        self.error = None
        self._events = 0
        self._backoff.reset()
        self._watch()

    def _watch(self):
        self._retry = None
        url = self._url(watch="1", resourceVersion=self.version or "", allowWatchBookmarks="true",
                        timeoutSeconds=str(WATCH_SECONDS))
        self._pending = d = self._get(url, unbuffered=True)
        d.addCallback(self._follow)
        d.addErrback(self._failed, "watch")

    def _follow(self, response):
        self._pending = None
        if response.code != 200:
            return json_body(response)      # fails with HTTPStatusError
        self.healthy = True
        self._opened = self.provider.reactor.seconds()
        finished = defer.Deferred()
        self._stream = JsonLines(self._event, self._bad, finished)
        self._watchdog = self.provider.reactor.callLater(WATCHDOG, self._stream.abort)
        response.deliverBody(self._stream)
        finished.addCallback(self._ended)
        return None

    def _event(self, event):
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == GONE:
                self._gone = True
            else:
                self.provider.count_error(f"{self.kind}_watch_error")
                log.warn("kubernetes: {kind} watch error: {message}", kind=self.kind, message=obj.get("message"))
            self._stream.abort()
            return
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.version = version
        self._events += 1
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.provider.apply(self.kind, kind, obj)

    def _bad(self, line):
        self.provider.count_error("bad_event")

    def _ended(self, reason):
        self._stream = None
        if self._watchdog.active():
            self._watchdog.cancel()
        if not self.provider.running:
            return
        self.provider.count_restart()
        if self._gone:
            self._gone = False
            self._relist()
        elif self.provider.reactor.seconds() - self._opened >= MIN_STREAM:
            self._watch()       # the server's timeoutSeconds: resume from the last version
        else:
            self._failed_with(f"{self.kind} watch ended at once: {reason}", "watch_ended")

    def _failed(self, failure, step):
        self._pending = None
        if not self.provider.running or failure.check(defer.CancelledError):
            return None
        if failure.check(HTTPStatusError) and failure.value.code == GONE:
            self._relist()
            return None
        self._failed_with(f"{self.kind} {step}: {_describe(failure)}", step)
        return None

    def _relist(self):
        """The resourceVersion is gone (410): list again, at once unless nothing came since the last list."""
        gone, self.version = self.version, None
        if self._events:
            log.info("kubernetes: {kind} resourceVersion {version} is gone; listing again", kind=self.kind, version=gone)
            self._list()
        else:
            self._failed_with(f"{self.kind} watch: resourceVersion {gone} of the last list is already gone", "gone")

    def _failed_with(self, error, reason):
        self.healthy = False
        self.error = error
        self.provider.count_error(reason)
        delay = self._backoff.next()
        log.warn("kubernetes: {error}; retrying in {delay}s", error=error, delay=delay)
        self._retry = self.provider.reactor.callLater(delay, self._watch if self.version else self._list)


@implementer(IResourceProvider)
class KubernetesProvider(service.Service):
    """Pods of this node, their owners and the cluster's services, kept current by watches."""

    name = "kubernetes"  # type: ignore[assignment]  # IResourceProvider.name; Service types it None
    STATUS_SCHEMA = {
        "type": "object",
        "properties": {
            "enabled": {"type": "boolean"}, "connected": {"type": "boolean"},
            "cluster": {"type": ["string", "null"]}, "namespace": {"type": ["string", "null"]},
            "pods_watched": {"type": "integer", "minimum": 0}, "services_watched": {"type": "integer", "minimum": 0},
        },
        "required": ["enabled", "connected", "cluster", "namespace", "pods_watched", "services_watched"],
        "additionalProperties": False,
    }

    def __init__(self, config, metrics, changed, reactor, environ=os.environ, account_dir=SERVICE_ACCOUNT, label_keys=()):
        """
        config is agent.discovery.kubernetes; changed() tells the process table what it cached may
        be stale; label_keys are pod labels copied to k8s.pod.label.<key> (those selectors name).
        """
        self.label_keys = tuple(label_keys)
        self.metrics = metrics
        self._changed = changed
        self.reactor = reactor
        self.cluster = config["cluster_name"] or None
        self.node = config["node_name"] or environ.get("NODE_NAME") or environ.get("K8S_NODE_NAME") or ""
        self.api = None
        self.config_error = None
        if config["enabled"]:
            try:
                self.api = from_kubeconfig(config["kubeconfig"]) if config["kubeconfig"] else in_cluster(environ, account_dir)
            except KubeConfigError as exc:
                self.config_error = str(exc)
        self.client = None
        self.headers = {b"Accept": [b"application/json"]}
        if self.api is not None and self.api.token:
            self.headers[b"Authorization"] = [f"Bearer {self.api.token}".encode()]
        self._pods = {}             # uid -> pod object
        self._by_container = {}     # container id -> (pod uid, container name)
        self._containers_of = {}    # pod uid -> its container ids
        self._owners = {"replicasets": {}, "jobs": {}}     # kind -> {(namespace, name): owner's name or None}
        self._services = set()      # (namespace, name)
        selector = f"spec.nodeName={self.node}" if self.node else ""
        self._watches = [_Watch(self, kind, path, selector if kind == "pods" else "") for kind, path in KINDS]

    @property
    def active(self):
        """Whether this provider talks to an API server (enabled, and in a cluster or given a kubeconfig)."""
        return self.api is not None or self.config_error is not None

    # -- service -------------------------------------------------------------------------------

    def startService(self):
        super().startService()
        if self.config_error:
            log.error("kubernetes discovery: {error}", error=self.config_error)
        if self.api is None:
            return
        self.client = _http_client(self.reactor, self.api)
        for watch in self._watches:
            watch.start()

    def stopService(self):
        super().stopService()
        for watch in self._watches:
            watch.stop()

    # -- IResourceProvider ---------------------------------------------------------------------

    def status(self):
        return {
            "enabled": self.active,
            "connected": self.api is not None and all(w.healthy for w in self._watches),
            "cluster": self.cluster,
            "namespace": self.api.namespace if self.api is not None else None,
            "pods_watched": len(self._pods),
            "services_watched": len(self._services),
        }

    def ready_check(self):
        """'disabled' outside a cluster; 'ok' once every kind was listed and is watched; otherwise why not."""
        if not self.active:
            return "disabled"
        if self.config_error:
            return f"failed: {self.config_error}"
        for watch in self._watches:
            if not (watch.listed and watch.healthy):
                return f"failed: {watch.error or 'listing ' + watch.kind}"
        return "ok"

    def attributes(self, pid, found):
        pod, container = None, None
        known = self._by_container.get(found.get("container.id"))
        if known is not None:
            pod, container = self._pods.get(known[0]), known[1]
        if pod is None:
            # a container not in the pod's statuses yet, or one known by its pod and name (a log file's)
            pod, container = self._pods.get(found.get("k8s.pod.uid")), found.get("k8s.container.name")
        if pod is None:
            return {}
        return self.pod_attributes(pod, container, found)

    def pod_attributes(self, pod, container, found):
        """The k8s.* attributes of a pod (and one of its containers), and its service name rules."""
        meta = pod.get("metadata") or {}
        namespace = meta.get("namespace")
        attrs = {
            "k8s.pod.name": meta.get("name"),
            "k8s.pod.uid": meta.get("uid"),
            "k8s.namespace.name": namespace,
            "k8s.node.name": (pod.get("spec") or {}).get("nodeName"),
            "k8s.cluster.name": self.cluster,
            "k8s.container.name": container,
        }
        for ref in meta.get("ownerReferences") or []:
            if not ref.get("controller") or ref.get("kind") not in _WORKLOADS:
                continue
            attrs[_WORKLOADS[ref["kind"]]] = ref.get("name")
            if ref["kind"] == "ReplicaSet":
                attrs["k8s.deployment.name"] = self._owners["replicasets"].get((namespace, ref.get("name")))
            elif ref["kind"] == "Job":
                attrs["k8s.cronjob.name"] = self._owners["jobs"].get((namespace, ref.get("name")))
        labels = meta.get("labels") or {}
        for key in self.label_keys:
            attrs[f"k8s.pod.label.{key}"] = labels.get(key)
        if "service.name" not in found:
            attrs["service.name"] = self._service_name(pod, container, attrs)
        if "service.namespace" not in found:
            attrs["service.namespace"] = namespace
        return {k: v for k, v in attrs.items() if v}

    @staticmethod
    def _service_name(pod, container, attrs):
        meta = pod.get("metadata") or {}
        for spec in (pod.get("spec") or {}).get("containers") or []:
            if spec.get("name") == container:
                for env in spec.get("env") or []:
                    if env.get("name") == "OTEL_SERVICE_NAME" and env.get("value"):
                        return env["value"]
        named = (meta.get("annotations") or {}).get(_NAME_ANNOTATION) or (meta.get("labels") or {}).get(_NAME_LABEL)
        if named:
            return named
        workload = next((attrs[k] for k in _WORKLOAD_ORDER if attrs.get(k)), None)
        return workload or container or meta.get("name")

    # -- what the watches report ---------------------------------------------------------------

    def replace(self, kind, items):
        """A list's answer: everything of that kind."""
        if kind == "pods":
            self._pods, self._by_container, self._containers_of = {}, {}, {}
        elif kind == "services":
            self._services = set()
        else:
            self._owners[kind] = {}
        for obj in items:
            self._store(kind, obj)
        self._count()
        self._changed()

    def apply(self, kind, change, obj):
        """One watch event (ADDED, MODIFIED or DELETED)."""
        self.metrics.discovery_events.labels(provider=self.name, action=f"{kind}_{change.lower()}").inc()
        if change == "DELETED":
            self._forget(kind, obj)
        else:
            self._store(kind, obj)
        self._count()
        if change != "DELETED":
            self._changed()

    def _store(self, kind, obj):
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if kind == "pods":
            self._forget(kind, obj)
            uid = meta.get("uid")
            self._pods[uid] = trim_pod(obj, self.label_keys)
            cids = self._containers_of[uid] = []
            for status in (obj.get("status") or {}).get("containerStatuses") or []:
                cid = container_id(status.get("containerID"))
                if cid:
                    self._by_container[cid] = (uid, status.get("name"))
                    cids.append(cid)
        elif kind == "services":
            self._services.add(key)
        else:
            owner = next((ref.get("name") for ref in meta.get("ownerReferences") or []
                          if ref.get("controller") and ref.get("kind") in ("Deployment", "CronJob")), None)
            self._owners[kind][key] = owner

    def _forget(self, kind, obj):
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if kind == "pods":
            uid = meta.get("uid")
            self._pods.pop(uid, None)
            for cid in self._containers_of.pop(uid, ()):
                self._by_container.pop(cid, None)
        elif kind == "services":
            self._services.discard(key)
        else:
            self._owners[kind].pop(key, None)

    def _count(self):
        gauge = self.metrics.discovery_objects
        gauge.labels(provider=self.name, kind="pod").set(len(self._pods))
        gauge.labels(provider=self.name, kind="service").set(len(self._services))
        for kind, owners in self._owners.items():
            gauge.labels(provider=self.name, kind=kind[:-1]).set(len(owners))
        self.metrics.k8s_pods_discovered.set(len(self._pods))
        self.metrics.k8s_services_discovered.set(len(self._services))

    def count_error(self, reason):
        self.metrics.discovery_errors.labels(provider=self.name, reason=reason).inc()

    def count_restart(self):
        self.metrics.discovery_watch_restarts.labels(provider=self.name).inc()
