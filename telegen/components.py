"""
The production service tree: which children the agent runs, what config each reads, how each is
built. Imports happen inside the factories so `twistd --help` and unit tests stay light.
"""
from telegen.service import ChildSpec


def _processes(agent):
    from telegen.discovery.processes import ProcessTable

    return ProcessTable(agent.config, agent.metrics, reactor=agent.reactor)


def _export(agent):
    from telegen.export.pipeline import ExportPipeline

    return ExportPipeline(agent.config, agent.metrics, reactor=agent.reactor)


def _hostmetrics(agent):
    if not agent.config["agent"]["host_metrics"]["enabled"]:
        return None
    from telegen.hostmetrics import HostMetricsService

    def host_facts():
        processes = agent.child("processes")
        return processes.host_facts() if processes is not None else {}

    return HostMetricsService(agent.config, agent.exporter, agent.metrics, reactor=agent.reactor, host_facts=host_facts)


def _ebpf(agent):
    if not agent.config["agent"]["ebpf"]["enabled"]:
        return None
    from telegen.ebpf.service import EbpfService

    return EbpfService(agent.config, agent.metrics, agent.exporter, agent.child("processes"), reactor=agent.reactor)


def _api(agent):
    from telegen.api.app import api_service

    return api_service(agent)


def _manhole(agent):
    if not agent.config["manhole"]["enabled"]:
        return None
    from telegen.manhole import ManholeService

    return ManholeService(agent, agent.config, reactor=agent.reactor)


SPECS = (
    ChildSpec("processes", ("agent.discovery", "cloud", "telegen.service_name", "telegen.instance_id",
                            "telegen.resource_attributes"), _processes),
    ChildSpec("export", ("otlp", "queues", "backoff", "telegen"), _export),
    ChildSpec("hostmetrics", ("agent.host_metrics", "telegen"), _hostmetrics),
    ChildSpec("ebpf", ("agent.ebpf",), _ebpf, depends_on=("processes",)),
    ChildSpec("api", ("self_telemetry",), _api),
    ChildSpec("manhole", ("manhole", "telegen.data_dir"), _manhole),
)
