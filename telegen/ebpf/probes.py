"""The probes the agent loads by default (EbpfService asks this when given no explicit list)."""


def default_probes(config, pipeline, processes, metrics, reactor=None):
    """
    One Probe per concern; each decides from config whether it is enabled. Process events come
    first so the process table is live before HTTP and TCP events need resources.
    """
    from telegen.ebpf.http_probe import HttpProbe
    from telegen.ebpf.process_events import ProcessProbe
    from telegen.ebpf.tcp import TcpProbe

    probes = [ProcessProbe(processes)] if processes is not None else []
    probes.append(HttpProbe(config, pipeline, processes, metrics, reactor=reactor))
    probes.append(TcpProbe(config, pipeline, processes, metrics, reactor=reactor))
    return probes
