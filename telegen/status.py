"""
The status documents of the API (and the manhole's status()), composed from live state.

Nothing here invents a value: a subsystem that is off reports enabled false, zero counters and
empty lists; times are RFC 3339 UTC; durations use Go's form (24h15m30s).
"""
import time

from telegen import __version__, _build
from telegen.selfmetrics import SIGNALS
from telegen.signals.common import host_identity
from telegen.timefmt import go_duration

READY_VALUES = ("ok", "disabled")


def _disabled_queues(config):
    return {
        signal: {"size": 0, "capacity": config["queues"][signal]["capacity"], "exported": 0, "dropped": 0}
        for signal in SIGNALS
    }


def export_status(agent):
    """GET /status/export."""
    pipeline = agent.child("export")
    if pipeline is not None:
        return pipeline.status()
    otlp = agent.config["otlp"]
    return {
        "endpoint": None,
        "protocol": otlp["protocol"],
        "tls": False,
        "compression": otlp["compression"],
        "connected": False,
        "last_export": None,
        "last_error": None,
        "queues": _disabled_queues(agent.config),
    }


def ebpf_status(agent):
    """GET /status/ebpf."""
    ebpf = agent.child("ebpf")
    if ebpf is not None:
        return ebpf.status()
    return {
        "enabled": False,
        "programs": [],
        "maps": [],
        "ringbuf": {"size": agent.config["agent"]["ebpf"]["ringbuf_size"], "events_received": 0, "events_lost": 0},
    }


def _ebpf_summary(agent):
    ebpf = agent.child("ebpf")
    if ebpf is not None:
        return ebpf.summary()
    return {
        "enabled": False,
        "programs_loaded": 0,
        "maps_created": 0,
        "ringbuf_size": agent.config["agent"]["ebpf"]["ringbuf_size"],
    }


def discovery_status(agent):
    """
    GET /status/discovery: each block from its resource provider (telegen/discovery/chain.py);
    without a process table every provider is off.
    """
    processes = agent.child("processes")
    blocks = processes.discovery_blocks() if processes is not None else {}
    return {
        "kubernetes": blocks.get("kubernetes") or {
            "enabled": False,
            "connected": False,
            "cluster": None,
            "namespace": None,
            "pods_watched": 0,
            "services_watched": 0,
        },
        "docker": blocks.get("docker") or {"enabled": False, "connected": False, "containers": 0},
        "cloud": blocks.get("cloud") or {"provider": None, "region": None, "instance_id": None},
        "discovered_services": processes.services() if processes is not None else [],
    }


def _profiling_summary(agent):
    """The /status "profiling" object: live from the profiler, or off with the configured rate."""
    profiler = agent.child("profiling")
    if profiler is not None:
        doc = profiler.status()
        return {key: doc[key] for key in ("enabled", "sample_rate", "profiles_collected")}
    return {"enabled": False, "sample_rate": agent.config["agent"]["profiling"]["sample_rate"], "profiles_collected": 0}


def agent_status(agent):
    """GET /status."""
    export = export_status(agent)
    discovery = discovery_status(agent)
    return {
        "version": __version__,
        "commit": _build.COMMIT,
        "built": _build.BUILT,
        "uptime": go_duration(time.time() - agent.started_at),
        "mode": agent.config["telegen"]["mode"],
        "host": host_identity(),
        "ebpf": _ebpf_summary(agent),
        "profiling": _profiling_summary(agent),
        "export": {
            "endpoint": export["endpoint"],
            "connected": export["connected"],
            "last_export": export["last_export"],
            "spans_exported": export["queues"]["traces"]["exported"],
            "metrics_exported": export["queues"]["metrics"]["exported"],
        },
        "discovery": {
            "kubernetes": discovery["kubernetes"]["enabled"],
            "docker": discovery["docker"]["enabled"],
            "pods_discovered": discovery["kubernetes"]["pods_watched"],
            "containers_discovered": discovery["docker"]["containers"],
        },
    }


def _check(agent, child_name):
    child = agent.child(child_name)
    if child is None:
        return "disabled"
    try:
        return child.ready_check()
    except Exception as exc:  # a broken check must not break the probe
        return f"failed: {type(exc).__name__}: {exc}"


def _discovery_check(agent):
    return _check(agent, "processes")


def readiness(agent):
    """GET /ready: (ready?, document). A check is ready when it is "ok" or "disabled"."""
    checks = {
        "ebpf": _check(agent, "ebpf"),
        "otlp": _check(agent, "export"),
        "discovery": _discovery_check(agent),
    }
    ready = all(value in READY_VALUES for value in checks.values())
    return ready, {"status": "ready" if ready else "not_ready", "checks": checks}
