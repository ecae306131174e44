"""
The production service tree: which children the agent runs, what config each reads, how each is
built. Every factory gets (agent, config), config being the ConfigSlice of exactly the sections
listed beside it: a child reading anything else fails loudly (UndeclaredConfigKey) instead of
missing a reload. Imports happen inside the factories so `twistd --help` and unit tests stay light.
"""
from telegen.service import ChildSpec

# The telegen.* keys behind the resource of the agent's own signals (signals.common.host_resource_attributes).
RESOURCE = ("telegen.service_name", "telegen.instance_id", "telegen.resource_attributes")


def _processes(agent, config):
    from telegen.discovery.processes import ProcessTable

    return ProcessTable(config, agent.metrics, reactor=agent.reactor)


def _export(agent, config):
    from telegen.export.pipeline import ExportPipeline

    return ExportPipeline(config, agent.metrics, reactor=agent.reactor)


def _hostmetrics(agent, config):
    if not config["agent"]["host_metrics"]["enabled"]:
        return None
    from telegen.hostmetrics import HostMetricsService

    def host_facts():
        processes = agent.child("processes")
        return processes.host_facts() if processes is not None else {}

    return HostMetricsService(config, agent.exporter, agent.metrics, reactor=agent.reactor, host_facts=host_facts)


def _ebpf(agent, config):
    if not config["agent"]["ebpf"]["enabled"]:
        return None
    from telegen.ebpf.service import EbpfService

    return EbpfService(config, agent.metrics, agent.exporter, agent.child("processes"), reactor=agent.reactor)


def _logs(agent, config):
    if not config["agent"]["logs"]["enabled"]:
        return None
    from telegen.logs.tailer import LogTailer

    return LogTailer(config, agent.exporter, agent.metrics, reactor=agent.reactor, processes=agent.child("processes"))


def _profiling(agent, config):
    if not config["agent"]["profiling"]["enabled"]:
        return None
    from telegen.profiling.service import ProfilerService

    return ProfilerService(config, agent.metrics, agent.exporter, agent.child("processes"), reactor=agent.reactor)


def _api(agent, config):
    from telegen.api.app import api_service

    return api_service(agent, config)


def _manhole(agent, config):
    if not config["manhole"]["enabled"]:
        return None
    from telegen.manhole import ManholeService

    return ManholeService(agent, config, reactor=agent.reactor)


SPECS = (
    ChildSpec("processes", ("agent.discovery", "cloud") + RESOURCE, _processes),
    ChildSpec("export", ("otlp", "queues", "backoff", "telegen.data_dir", "telegen.shutdown_timeout"), _export),
    ChildSpec("hostmetrics", ("agent.host_metrics",) + RESOURCE, _hostmetrics),
    ChildSpec("ebpf", ("agent.ebpf", "agent.host_metrics.interval", "agent.discovery.poll_interval", "self_telemetry.listen"), _ebpf,
              depends_on=("processes",)),
    ChildSpec("profiling", ("agent.profiling", "telegen.data_dir"), _profiling, depends_on=("processes",)),
    ChildSpec("logs", ("agent.logs", "telegen.data_dir", "telegen.shutdown_timeout") + RESOURCE, _logs,
              depends_on=("processes",)),
    ChildSpec("api", ("self_telemetry", "telegen.log_level"), _api),
    ChildSpec("manhole", ("manhole", "telegen.data_dir"), _manhole),
)
