"""The probes the agent loads by default (EbpfService asks this when given no explicit list)."""


def default_probes(config, pipeline, processes, metrics, reactor=None):
    """One Probe per concern; each decides from config whether it is enabled."""
    from telegen.ebpf.http_probe import HttpProbe

    return [HttpProbe(config, pipeline, processes, metrics, reactor=reactor)]
