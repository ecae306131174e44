"""Which container wrote a log file, from the container runtimes' layouts (Docker json-file, kubelet's CRI files)."""
import pytest

from telegen.logs.writers import Writer, writer_of

CID = "0123456789abcdef" * 4
UID = "8f9e6a1c-3b2d-4e5f-9a8b-7c6d5e4f3a2b"


@pytest.mark.parametrize("path", [f"/var/lib/docker/containers/{CID}/{CID}-json.log",
                                  f"/srv/docker-root/containers/{CID}/{CID}-json.log.3"])
def test_docker_json_files_name_their_container_under_any_data_root(path):
    assert writer_of(path) == Writer(CID)
    assert writer_of(path).named == {"container.id": CID, "container.runtime": "docker"}


def test_kubelet_container_links_name_pod_namespace_container_and_id():
    writer = writer_of(f"/var/log/containers/web-7d4b9_shop_nginx-{CID}.log")
    assert writer == Writer(CID)
    assert writer.named == {"k8s.pod.name": "web-7d4b9", "k8s.namespace.name": "shop", "k8s.container.name": "nginx",
                            "container.id": CID}


@pytest.mark.parametrize("name", ["0.log", "2.log", "0.log.20261207-101500"])
def test_kubelet_pod_files_name_the_pod_uid_and_container(name):
    writer = writer_of(f"/var/log/pods/shop_web-7d4b9_{UID}/nginx/{name}")
    assert writer == Writer(pod_uid=UID, container_name="nginx")
    assert writer.named == {"k8s.pod.name": "web-7d4b9", "k8s.namespace.name": "shop", "k8s.pod.uid": UID,
                            "k8s.container.name": "nginx"}


@pytest.mark.parametrize("path", ["/var/log/syslog", f"/var/lib/docker/containers/{'f' * 64}/{CID}-json.log",
                                  f"/tmp/{CID}-json.log", f"/var/log/pods/shop_web_{UID}/nginx/app.log", "app.log"])
def test_other_files_have_no_writer(path):
    assert writer_of(path) is None
