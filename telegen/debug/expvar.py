"""
The /debug/vars document: Go's expvar with Python's memory statistics and the agent's counters.

Why the counters come from the SelfMetrics registry: it is the one place every subsystem counts
into, so /debug/vars and /metrics can never disagree.
"""
import gc
import os
import resource
import sys

from telegen.debug.heap import tracemalloc_totals

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _statm():
    """(virtual, resident) bytes of this process from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as f:
        size, resident = f.read().split()[:2]
    return int(size) * _PAGE, int(resident) * _PAGE


def memstats():
    """RSS, GC counters per generation and, when tracing, tracemalloc's totals."""
    vms, rss = _statm()
    return {
        "rss_bytes": rss,
        "vms_bytes": vms,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "gc": {
            "enabled": gc.isenabled(),
            "thresholds": list(gc.get_threshold()),
            "pending": list(gc.get_count()),  # allocations minus deallocations since each gen's last run
            "generations": gc.get_stats(),  # collections, collected, uncollectable per generation
            "objects_tracked": len(gc.get_objects()),
        },
        "tracemalloc": tracemalloc_totals(),
    }


def _label_key(labels):
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def counters(registry):
    """
    Every sample of the registry: an unlabelled sample is a number, a labelled family a dict keyed
    by "label=value,..." (the prometheus_client _created timestamps are left out: not counters).
    """
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if sample.labels:
                out.setdefault(sample.name, {})[_label_key(sample.labels)] = sample.value
            else:
                out[sample.name] = sample.value
    return out


def debug_vars(metrics):
    """The whole /debug/vars document."""
    return {
        "cmdline": list(sys.argv),
        "memstats": memstats(),
        "counters": counters(metrics.registry),
    }
