"""
Host metrics end to end on the real reactor and this machine's /proc: to the file sink when no
endpoint is set (the embedded default), and to a real OTLP receiver over gRPC.
"""
import pytest
import pytest_twisted
from twisted.internet import reactor

from telegen.config import defaults
from telegen.export.pipeline import ExportPipeline
from telegen.hostmetrics import HostMetricsService
from telegen.selfmetrics import SelfMetrics
from tests.support.otlp_files import read_metrics
from tests.support.twisted_wait import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXPECTED = {"system.cpu.time", "system.cpu.utilization", "system.memory.usage", "system.memory.utilization",
            "system.cpu.load_average.1m", "system.network.io", "system.filesystem.usage"}


def start(config):
    config["agent"]["host_metrics"]["interval"] = 0.3
    config["queues"]["metrics"]["batch_timeout"] = 0.05
    metrics = SelfMetrics()
    pipeline = ExportPipeline(config, metrics, reactor=reactor)
    pipeline.startService()
    host = HostMetricsService(config, pipeline, metrics, reactor=reactor)
    host.startService()
    return pipeline, host


@pytest_twisted.inlineCallbacks
def test_host_metrics_reach_the_file_sink_without_an_endpoint(tmp_path):
    config = defaults()
    config["telegen"]["data_dir"] = str(tmp_path)
    pipeline, host = start(config)
    try:
        yield until(lambda: EXPECTED <= {m.name for _, m in read_metrics(tmp_path)}, message="metrics in the sink")
        resource, _ = read_metrics(tmp_path)[0]
        assert resource["service.name"] == "telegen" and resource["os.type"] == "linux"
        yield until(lambda: sum(m.name == "system.cpu.time" for _, m in read_metrics(tmp_path)) >= 2,
                    message="a second collection")
        assert pipeline.status()["queues"]["metrics"]["exported"] > 0
        assert pipeline.ready_check() == "ok"
    finally:
        host.stopService()
        yield pipeline.stopService()


@pytest_twisted.inlineCallbacks
def test_host_metrics_reach_a_collector_over_grpc(otlp_receiver):
    config = defaults()
    config["otlp"].update(endpoint=otlp_receiver.grpc_endpoint, insecure=True)
    pipeline, host = start(config)
    try:
        yield until(lambda: EXPECTED <= {m.name for _, m in otlp_receiver.metrics()}, message="metrics at the collector")
        resource, _ = otlp_receiver.metrics()[0]
        assert {"host.name", "host.arch", "os.description", "service.instance.id"} <= set(resource)
    finally:
        host.stopService()
        yield pipeline.stopService()
