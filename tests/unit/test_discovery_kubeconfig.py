"""Where the Kubernetes provider finds its API server: the pod's service account or a kubeconfig."""
import base64
import json

import pytest

from telegen.discovery.kubernetes import ApiServer, KubeConfigError, container_id, from_kubeconfig, in_cluster
from tests.support.otlp_receiver import make_tls


def account(tmp_path, files=("token", "ca.crt", "namespace")):
    d = tmp_path / "sa"
    d.mkdir()
    contents = {"token": "tok\n", "ca.crt": "-----BEGIN CERTIFICATE-----\n", "namespace": "monitoring\n"}
    for name in files:
        (d / name).write_text(contents[name])
    return str(d)


def test_in_cluster_reads_the_service_account_and_the_service_address(tmp_path):
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert in_cluster(environ, account(tmp_path)) == ApiServer(
        "https://[fd00::1]:6443", "tok", b"-----BEGIN CERTIFICATE-----\n", namespace="monitoring")


def test_outside_a_cluster_or_without_a_token_there_is_no_api_server(tmp_path):
    assert in_cluster({}, account(tmp_path)) is None
    assert in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, str(tmp_path / "none")) is None


def test_a_service_account_missing_its_ca_is_a_clear_error(tmp_path):
    with pytest.raises(KubeConfigError, match="service account ca.crt"):
        in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, account(tmp_path, files=("token",)))


def kubeconfig(tmp_path, cluster=None, user=None):
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "ctx",
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "team"}}],
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://k8s.example:6443/"}}],
        "users": [{"name": "u", "user": user or {"token": "secret"}}],
    }))
    return str(path)


def test_kubeconfig_current_context_with_ca_data_token_file_or_insecure(tmp_path):
    ca = base64.b64encode(b"PEM").decode()
    (tmp_path / "token").write_text("from-file\n")
    api = from_kubeconfig(kubeconfig(tmp_path, {"server": "https://k8s.example:6443/", "certificate-authority-data": ca},
                                     {"tokenFile": str(tmp_path / "token")}))
    assert api == ApiServer("https://k8s.example:6443", "from-file", b"PEM", False, "team")
    insecure = from_kubeconfig(kubeconfig(tmp_path, {"server": "https://x", "insecure-skip-tls-verify": True}))
    assert (insecure.insecure, insecure.token) == (True, "secret")


@pytest.mark.parametrize("cluster, user, message", [
    ({"server": "https://x"}, {"client-certificate-data": "eA=="}, "needs both client-certificate and client-key"),
    ({"server": "https://x"}, {"client-certificate-data": "eA==", "client-key-data": "not base64!"}, "client-key-data is not base64"),
    ({"server": "https://x", "certificate-authority": "ca.pem"}, None, r"certificate-authority \S*/ca.pem: No such file"),
    ({"certificate-authority-data": ""}, None, "has no server"),
])
def test_kubeconfig_problems_name_themselves(tmp_path, cluster, user, message):
    with pytest.raises(KubeConfigError, match=message):
        from_kubeconfig(kubeconfig(tmp_path, cluster, user))
    with pytest.raises(KubeConfigError, match="kubeconfig .*missing"):
        from_kubeconfig(str(tmp_path / "missing"))


def test_container_ids_lose_their_runtime_scheme():
    assert [container_id(s) for s in ("containerd://abc", "docker://abc", "cri-o://abc", "", None)] == ["abc"] * 3 + [None, None]


def test_the_token_is_not_in_the_api_servers_repr(tmp_path):
    assert "secret" not in repr(from_kubeconfig(kubeconfig(tmp_path)))


def test_relative_file_names_are_read_from_the_kubeconfigs_directory(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(b"CA PEM")
    (tmp_path / "token").write_text("relative\n")
    api = from_kubeconfig(kubeconfig(tmp_path, {"server": "https://x", "certificate-authority": "pki/ca.crt"}, {"tokenFile": "token"}))
    assert (api.ca_pem, api.token) == (b"CA PEM", "relative")


def test_half_a_client_certificate_or_a_mismatched_key_is_refused_without_quoting_it(tmp_path):
    tls, other = make_tls(tmp_path / "tls"), make_tls(tmp_path / "other")
    with pytest.raises(KubeConfigError, match="needs both client-certificate and client-key"):
        from_kubeconfig(kubeconfig(tmp_path, user={"client-certificate": tls.client_cert_file}))
    with pytest.raises(KubeConfigError, match="not a matching") as raised:
        from_kubeconfig(kubeconfig(tmp_path, user={"client-certificate": tls.client_cert_file, "client-key": other.client_key_file}))
    assert "PRIVATE" not in str(raised.value)
    good = from_kubeconfig(kubeconfig(tmp_path, user={"client-certificate": tls.client_cert_file, "client-key": tls.client_key_file}))
    assert b"PRIVATE KEY" in good.client_pem and "PRIVATE" not in repr(good) and good.token is None
