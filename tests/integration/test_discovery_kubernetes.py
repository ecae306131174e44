"""
The Kubernetes provider against the API emulator (tests/support/kube_api.py) on loopback, through
a kubeconfig: list then watch, pods of this node only, owners named late, bookmarks carried into
the next watch, a re-list on 410 Gone, and OpenTelemetry's service.name rules.
"""
import base64
import json

import pytest
import pytest_twisted

from telegen.discovery import kubernetes
from telegen.discovery.kubernetes import KubernetesProvider
from telegen.selfmetrics import SelfMetrics
from tests.support.kube_api import KubeApi, owned, pod
from tests.support.otlp_receiver import make_tls
from tests.support.providers import run_provider  # noqa: F401 (fixture)
from tests.support.twisted_wait import until

pytestmark = [pytest.mark.integration]

CID = "c" * 64
OTHER_CID = "d" * 64


@pytest.fixture
def api():
    emulator = KubeApi().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def start(api, tmp_path, run_provider):
    """start(**config) -> (provider, metrics, changes) against the emulator; stopped at the end."""
    def run(**config):
        settings = {"enabled": True, "kubeconfig": api.kubeconfig(str(tmp_path / "kubeconfig")),
                    "node_name": "node-1", "cluster_name": "test-cluster", **config}
        return run_provider(KubernetesProvider, settings, environ={})
    return run


def ready(provider):
    return until(lambda: provider.ready_check() == "ok", message="kubernetes listed and watching")


def web_pod(**kw):
    return pod("web-7d9-abc", "uid-1", containers=[("web", f"containerd://{CID}")],
               owner=("ReplicaSet", "web-7d9"), **kw)


async def pod_then_its_owner(api, provider):
    """Once watching: the web pod is ADDED, named by its ReplicaSet, then by the Deployment that arrives late."""
    await ready(provider)
    api.put("pods", web_pod())
    await until(lambda: provider.attributes(1, {"container.id": CID}), message="ADDED pod")
    assert provider.attributes(1, {"container.id": CID})["service.name"] == "web-7d9"     # its ReplicaSet, for now
    api.put("replicasets", owned("replicasets", "web-7d9", owner=("Deployment", "web")))
    await until(lambda: provider.attributes(1, {"container.id": CID}).get("k8s.deployment.name") == "web", message="owner")
    assert provider.attributes(1, {"container.id": CID})["service.name"] == "web"


@pytest_twisted.ensureDeferred
async def test_pods_of_this_node_are_listed_and_named_with_their_workload(api, start):
    api.put("pods", web_pod())
    api.put("pods", pod("elsewhere", "uid-2", node="node-2", containers=[("x", f"docker://{OTHER_CID}")]))
    api.put("replicasets", owned("replicasets", "web-7d9", owner=("Deployment", "web")))
    api.put("services", owned("services", "web"))
    provider, metrics, changes = start()
    await ready(provider)
    assert provider.status() == {"enabled": True, "connected": True, "cluster": "test-cluster", "namespace": "monitoring",
                                 "pods_watched": 1, "services_watched": 1}
    assert provider.attributes(1, {"container.id": CID}) == {
        "k8s.pod.name": "web-7d9-abc", "k8s.pod.uid": "uid-1", "k8s.namespace.name": "shop", "k8s.node.name": "node-1",
        "k8s.cluster.name": "test-cluster", "k8s.container.name": "web", "k8s.replicaset.name": "web-7d9",
        "k8s.deployment.name": "web", "service.name": "web", "service.namespace": "shop"}
    assert provider.attributes(1, {"container.id": OTHER_CID}) == {}           # another node's pod is not listed
    # The pod's uid from the cgroup path finds a pod whose container ids are not reported yet.
    assert provider.attributes(1, {"k8s.pod.uid": "uid-1"})["k8s.pod.name"] == "web-7d9-abc"
    # A process that named itself keeps its name.
    assert "service.name" not in provider.attributes(1, {"container.id": CID, "service.name": "own", "service.namespace": "x"})
    await until(lambda: api.watch_queries("pods"), message="the pods watch")
    assert [q["fieldSelector"] for q in api.watch_queries("pods")] == ["spec.nodeName=node-1"]
    assert metrics.registry.get_sample_value("telegen_k8s_pods_discovered") == 1


@pytest_twisted.ensureDeferred
async def test_watch_events_add_modify_and_delete_and_late_owners_apply(api, start):
    provider, metrics, changes = start()
    await pod_then_its_owner(api, provider)
    api.put("pods", web_pod(labels={"app.kubernetes.io/name": "storefront"}))
    await until(lambda: provider.attributes(1, {"container.id": CID})["service.name"] == "storefront", message="MODIFIED")
    before = changes.count
    api.delete("pods", "shop", "web-7d9-abc")
    await until(lambda: provider.status()["pods_watched"] == 0, message="DELETED")
    assert provider.attributes(1, {"container.id": CID}) == {} and changes.count == before


@pytest_twisted.ensureDeferred
async def test_bookmarks_move_the_version_and_410_gone_lists_again(api, start):
    provider, metrics, _ = start()
    await until(lambda: len(api.watchers) == 4, message="four watches open")
    api.bookmark()
    bookmark = str(api.version)
    await until(lambda: all(w.version == bookmark for w in provider._watches if w.kind == "pods"), message="bookmark seen")
    api.end_watches()           # the server's timeoutSeconds: the watch resumes from the bookmark
    await until(lambda: len(api.watch_queries("pods")) == 2, message="watch resumed")
    assert api.watch_queries("pods")[-1]["resourceVersion"] == bookmark and api.list_count("pods") == 1
    await until(lambda: len(api.watchers) == 4, message="four watches open again")
    # Disconnected while a pod is added and the history compacted: resuming from the old version
    # gets ERROR 410, and a new list finds the pod.
    api.hold_watches()
    api.end_watches()
    await until(lambda: len(api.held) == 4, message="four watches waiting")
    api.put("pods", web_pod())
    api.compact()
    api.release()
    await until(lambda: provider.attributes(1, {"container.id": CID}), message="the new list applied")
    assert api.list_count("pods") == 2 and provider.attributes(1, {"container.id": CID})["k8s.pod.name"] == "web-7d9-abc"
    await until(lambda: provider.ready_check() == "ok", message="every kind listed again")
    assert metrics.registry.get_sample_value("telegen_discovery_watch_restarts_total", {"provider": "kubernetes"}) >= 5


@pytest_twisted.ensureDeferred
async def test_a_wrong_token_fails_readiness_with_the_reason_and_outside_a_cluster_it_is_disabled(api, start, tmp_path):
    kubeconfig = api.kubeconfig(str(tmp_path / "old-token"))
    api.token = "rotated"
    provider, metrics, _ = start(kubeconfig=kubeconfig)
    await until(lambda: "401" in provider.ready_check(), message="401 reported")
    assert provider.status()["connected"] is False
    off, _, _ = start(kubeconfig="")          # no kubeconfig, no KUBERNETES_SERVICE_HOST
    assert (off.ready_check(), off.status()["enabled"]) == ("disabled", False)
    broken, _, _ = start(kubeconfig=str(tmp_path / "missing"))
    assert broken.ready_check().startswith("failed: kubeconfig ") and broken.status()["enabled"] is True


def test_labels_selectors_name_are_on_the_resource_and_select_the_pods_processes():
    """k8s_pod_labels selectors: the provider copies those labels (only) and the selection matches them."""
    from telegen.discovery.procfs import ProcessInfo
    from telegen.discovery.selectors import Selection

    selection = Selection({"instrument": [{"k8s_pod_labels": {"tier": "front*"}}],
                           "exclude_instrument": [{"k8s_pod_labels": {"canary": "true"}}]})
    provider = KubernetesProvider({"enabled": False, "kubeconfig": "", "node_name": "", "cluster_name": ""},
                                  SelfMetrics(), lambda: None, reactor=None, environ={}, label_keys=selection.pod_labels)
    provider.replace("pods", [web_pod(labels={"tier": "frontend", "team": "shop"})])
    attrs = provider.attributes(1, {"container.id": CID})
    assert attrs["k8s.pod.label.tier"] == "frontend" and "k8s.pod.label.team" not in attrs
    info = ProcessInfo(1, 1)
    assert selection.selected(info, attrs) and not selection.selected(info, {})
    provider.replace("pods", [web_pod(labels={"tier": "frontend", "canary": "true"})])
    assert not selection.selected(info, provider.attributes(1, {"container.id": CID}))


@pytest.mark.parametrize("extra, expected", [
    ({"env": {"OTEL_SERVICE_NAME": "from-env"}, "annotations": {"resource.opentelemetry.io/service.name": "a"}}, "from-env"),
    ({"annotations": {"resource.opentelemetry.io/service.name": "annotated"}, "labels": {"app.kubernetes.io/name": "l"}}, "annotated"),
    ({"labels": {"app.kubernetes.io/name": "labelled"}}, "labelled"),
    ({}, "web-7d9"),
])
def test_service_name_rules_in_order(extra, expected):
    provider = KubernetesProvider({"enabled": False, "kubeconfig": "", "node_name": "", "cluster_name": ""},
                                  SelfMetrics(), lambda: None, reactor=None, environ={})
    assert provider.pod_attributes(web_pod(**extra), "web", {})["service.name"] == expected
    bare = pod("solo", "uid-9", containers=[("main", "cri-o://" + CID)])
    assert provider.pod_attributes(bare, "main", {})["service.name"] == "main"


def test_a_container_known_by_its_pod_uid_and_name_gets_that_containers_attributes():
    """A kubelet log file under /var/log/pods names the pod's uid and the container, not its id."""
    provider = KubernetesProvider({"enabled": False, "kubeconfig": "", "node_name": "", "cluster_name": ""},
                                  SelfMetrics(), lambda: None, reactor=None, environ={})
    provider.replace("pods", [pod("multi", "uid-7", containers=[("app", "containerd://" + CID), ("sidecar", "")],
                                  env={"OTEL_SERVICE_NAME": "from-env"})])
    attrs = provider.attributes(0, {"k8s.pod.uid": "uid-7", "k8s.container.name": "sidecar"})
    assert (attrs["k8s.pod.name"], attrs["k8s.container.name"], attrs["service.name"]) == ("multi", "sidecar", "from-env")
    assert provider.attributes(0, {"container.id": CID, "k8s.container.name": "sidecar"})["k8s.container.name"] == "app"


@pytest_twisted.ensureDeferred
async def test_a_stream_the_server_never_ends_is_dropped_by_the_watchdog_and_resumed(api, start, monkeypatch):
    """A silent partition leaves a watch open with nothing arriving: the client ends it itself."""
    monkeypatch.setattr(kubernetes, "WATCHDOG", 1.5)
    provider, _, _ = start()
    await until(lambda: len(api.watch_queries("pods")) >= 2, message="the pods watch resumed")
    assert api.list_count("pods") == 1 and provider.ready_check() == "ok"


@pytest.fixture
def tls_api(tmp_path):
    emulator = KubeApi(tls=make_tls(tmp_path / "tls")).start()
    yield emulator
    emulator.stop()


def service_account(directory, ca_pem, token="test-token"):
    directory.mkdir()
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(ca_pem)
    (directory / "namespace").write_text("observability")
    return str(directory)


@pytest_twisted.ensureDeferred
async def test_in_cluster_over_tls_trusting_the_service_accounts_ca(tls_api, run_provider, tmp_path):
    tls_api.put("pods", web_pod())
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(tls_api.port), "NODE_NAME": "node-1"}
    config = {"enabled": True, "kubeconfig": "", "node_name": "", "cluster_name": ""}
    provider, _, _ = run_provider(KubernetesProvider, config, environ=environ,
                                  account_dir=service_account(tmp_path / "account", tls_api.tls.read("ca_file")))
    await ready(provider)
    assert provider.attributes(1, {"container.id": CID})["k8s.pod.name"] == "web-7d9-abc"
    assert provider.status()["namespace"] == "observability" and provider.node == "node-1"
    # Another CA: the server is not trusted, and readiness says so.
    other = make_tls(tmp_path / "other")
    distrustful, _, _ = run_provider(KubernetesProvider, config, environ=environ,
                                     account_dir=service_account(tmp_path / "other-account", other.read("ca_file")))
    await until(lambda: "certificate verify failed" in distrustful.ready_check(), message="TLS refusal reported")


@pytest_twisted.ensureDeferred
async def test_a_kubeconfig_may_skip_tls_verification(tls_api, run_provider, tmp_path):
    path = tmp_path / "kubeconfig"
    tls_api.kubeconfig(str(path))
    config = json.loads(path.read_text())
    config["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = True
    path.write_text(json.dumps(config))
    provider, _, _ = run_provider(KubernetesProvider, {"enabled": True, "kubeconfig": str(path), "node_name": "node-1",
                                                       "cluster_name": ""}, environ={})
    await ready(provider)


@pytest.fixture
def mtls_api(tmp_path):
    """The emulator over TLS requiring a client certificate signed by its CA (no token accepted)."""
    emulator = KubeApi(token="no-token-here", tls=make_tls(tmp_path / "tls"), client_certificates=True).start()
    yield emulator
    emulator.stop()


def certificate_kubeconfig(api, directory, tls, form):
    """A kubeconfig as kind or kubeadm write it: the CA (or insecure) and a client certificate, as files or -data."""
    directory.mkdir()
    if form == "files":         # relative names: kubectl resolves them from the kubeconfig's directory
        (directory / "pki").mkdir()
        for name, label in (("ca.crt", "ca_file"), ("admin.crt", "client_cert_file"), ("admin.key", "client_key_file")):
            (directory / "pki" / name).write_bytes(tls.read(label) if label != "ca_file" else api.tls.read("ca_file"))
        cluster = {"certificate-authority": "pki/ca.crt"}
        user = {"client-certificate": "pki/admin.crt", "client-key": "pki/admin.key"}
    else:
        def data(pem):
            return base64.b64encode(pem).decode()
        cluster = ({"insecure-skip-tls-verify": True} if form == "insecure"
                   else {"certificate-authority-data": data(api.tls.read("ca_file"))})
        user = {"client-certificate-data": data(tls.read("client_cert_file")), "client-key-data": data(tls.read("client_key_file"))}
    path = directory / "config"
    api.kubeconfig(str(path))
    config = json.loads(path.read_text())
    config["clusters"][0]["cluster"].update(cluster)
    config["users"][0]["user"] = user
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize("form", ["files", "data", "insecure"])
@pytest_twisted.ensureDeferred
async def test_a_kubeconfigs_client_certificate_authenticates_and_one_of_another_ca_is_refused(mtls_api, run_provider, tmp_path, form):
    mtls_api.put("pods", web_pod())
    config = {"enabled": True, "node_name": "node-1", "cluster_name": ""}
    kubeconfig = certificate_kubeconfig(mtls_api, tmp_path / "good", mtls_api.tls, form)
    provider, _, _ = run_provider(KubernetesProvider, {**config, "kubeconfig": kubeconfig}, environ={})
    await ready(provider)
    assert provider.attributes(1, {"container.id": CID})["k8s.pod.name"] == "web-7d9-abc"
    await until(lambda: mtls_api.watch_queries("pods"), message="the pods watch")
    assert set(mtls_api.client_names) == {"telegen test client"}
    # The key is nowhere the agent shows its state.
    key = mtls_api.tls.read("client_key_file").decode()
    assert key not in repr(provider.api) and "PRIVATE KEY" not in repr(provider.api) and "PRIVATE" not in str(provider.status())
    # A certificate of another CA: the server refuses the handshake, and readiness says so.
    stranger = make_tls(tmp_path / "stranger")
    refused, _, _ = run_provider(KubernetesProvider, {**config, "kubeconfig": certificate_kubeconfig(
        mtls_api, tmp_path / "bad", stranger, form)}, environ={})
    await until(lambda: "the API server refused the connection" in refused.ready_check(), message="TLS refusal reported")
    assert refused.ready_check().startswith("failed: pods list: TLS: tlsv1 alert ")
    assert refused.status()["connected"] is False and "PRIVATE" not in refused.ready_check()



@pytest_twisted.ensureDeferred
async def test_a_known_pods_attributes_survive_watch_restarts_and_a_relist_on_410(api, start):
    """The order test (tests/unit/test_discovery_order.py) over real streams: nothing reverts."""
    provider, _, _ = start()
    await pod_then_its_owner(api, provider)
    known = provider.attributes(1, {"container.id": CID})
    api.end_watches()           # the server's timeoutSeconds: every watch resumes
    await until(lambda: len(api.watch_queries("replicasets")) == 2 and len(api.watchers) == 4, message="watches resumed")
    assert provider.attributes(1, {"container.id": CID}) == known
    api.hold_watches()
    api.end_watches()
    await until(lambda: len(api.held) == 4, message="four watches waiting")
    api.put("services", owned("services", "web"))     # something changed meanwhile, and the history is compacted
    api.compact()
    api.release()
    await until(lambda: api.list_count("pods") == 2 and api.list_count("replicasets") == 2 and provider.ready_check() == "ok",
                message="every kind listed again")
    assert provider.attributes(1, {"container.id": CID}) == known
