"""
The cloud provider against metadata services on loopback: moto's server for AWS IMDSv2, small
GCP and Azure servers following their documented APIs, and endpoints where nothing answers
(a closed port, a server that never replies): detection then ends after the timeouts, ready.
"""
import pytest
import pytest_twisted
from twisted.internet import protocol, reactor

from telegen.discovery.cloud import CloudProvider
from tests.support import metadata_servers
from tests.support.otlp_receiver import free_port
from tests.support.providers import run_provider  # noqa: F401 (fixture)
from tests.support.twisted_wait import until

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def moto():
    server = metadata_servers.MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def metadata():
    """metadata(kind) -> (resource, base URL) of a GCP or Azure server; closed at the end."""
    ports = []

    def start(kind):
        site, port = metadata_servers.listen(kind)
        ports.append(port)
        return site, f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in ports:
        port.stopListening()


class _Silent(protocol.Protocol):
    """Accepts and never answers."""


@pytest.fixture
def silent():
    factory = protocol.Factory.forProtocol(_Silent)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    port.stopListening()


def cloud_config(timeout=2.0, **endpoints):
    return {name: {"enabled": name in endpoints, "timeout": timeout, "endpoint": endpoints.get(name, "http://127.0.0.1:9")}
            for name in ("aws", "gcp", "azure")}


async def detected(run_provider, config):
    provider, metrics, _ = run_provider(CloudProvider, config)
    await until(lambda: provider.detecting is None, message="detection ended")
    assert provider.ready_check() == "ok"
    return provider, metrics


@pytest_twisted.ensureDeferred
async def test_aws_imdsv2_through_moto(run_provider, moto):
    provider, _ = await detected(run_provider, cloud_config(aws=moto.url))
    assert provider.attributes(1, {}) == {
        "cloud.provider": "aws", "cloud.platform": "aws_ec2", "cloud.region": "us-east-1",
        "cloud.availability_zone": "us-east-1a", "host.id": "i-fake", "host.type": "moto.virtual"}
    assert provider.status() == {"provider": "aws", "region": "us-east-1", "instance_id": "i-fake"}


@pytest_twisted.ensureDeferred
async def test_gcp_with_its_metadata_flavor_header(run_provider, metadata):
    site, url = metadata("gcp")
    provider, _ = await detected(run_provider, cloud_config(gcp=url))
    assert provider.attributes(1, {}) == {
        "cloud.provider": "gcp", "cloud.platform": "gcp_compute_engine", "cloud.account.id": "shop-prod",
        "cloud.region": "europe-west1", "cloud.availability_zone": "europe-west1-b",
        "host.id": "4520031799277581759", "host.type": "e2-medium"}
    assert site.requests == 2


@pytest_twisted.ensureDeferred
async def test_azure_with_its_metadata_header_and_api_version(run_provider, metadata):
    _, url = metadata("azure")
    provider, _ = await detected(run_provider, cloud_config(azure=url))
    compute = metadata_servers.AZURE_COMPUTE
    assert provider.attributes(1, {}) == {
        "cloud.provider": "azure", "cloud.platform": "azure_vm", "cloud.region": "westeurope", "cloud.availability_zone": "2",
        "cloud.account.id": compute["subscriptionId"], "host.id": compute["vmId"], "host.type": "Standard_D2s_v3"}


@pytest_twisted.ensureDeferred
async def test_the_first_cloud_in_order_that_answers_wins_and_a_wrong_flavor_is_refused(run_provider, moto, metadata):
    _, gcp = metadata("gcp")
    provider, metrics = await detected(run_provider, cloud_config(aws=moto.url, gcp=gcp, azure=gcp))
    assert provider.status()["provider"] == "aws"
    # azure's request to the GCP server lacks Metadata-Flavor: refused, counted.
    assert metrics.registry.get_sample_value("telegen_discovery_errors_total", {"provider": "cloud.azure", "reason": "no_answer"}) == 1


@pytest_twisted.ensureDeferred
async def test_when_nothing_answers_detection_ends_after_the_timeouts_with_nothing_known(run_provider, silent):
    closed = f"http://127.0.0.1:{free_port()}"
    provider, metrics, _ = run_provider(CloudProvider, cloud_config(timeout=0.3, aws=silent, gcp=closed, azure=silent))
    assert provider.ready_check() == "failed: asking aws, gcp, azure instance metadata"
    await until(lambda: provider.detecting is None, timeout=10, message="detection ends after the timeouts")
    assert (provider.ready_check(), provider.status(), provider.attributes(1, {})) == (
        "ok", {"provider": None, "region": None, "instance_id": None}, {})
    assert metrics.registry.get_sample_value("telegen_discovery_errors_total", {"provider": "cloud.aws", "reason": "timeout"}) == 1


def test_no_cloud_enabled_is_disabled_and_sends_nothing():
    provider = CloudProvider(cloud_config(), metrics=None, changed=None, reactor=None)
    provider.startService()
    assert (provider.ready_check(), provider.detecting, provider.status()["provider"]) == ("disabled", None, None)
