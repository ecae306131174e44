"""
Host readings -> OTLP Metrics named by the OpenTelemetry system.* semantic conventions.

Why separate from the /proc reader (telegen/hostmetrics.py): the conventions (names, units,
attribute keys, which instruments are monotonic) live here in one place and are tested on
fixed readings, while the reader deals with the kernel's file formats.

Cumulative sums carry a start time: kernel counters (CPU time, network, disk) count since boot,
so their start is the boot time; up-down sums (memory, filesystem usage) start when the agent
started. Utilization between two collections comes from the deltas of CPU time.
"""
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE, Metric

from telegen.signals.common import attributes

CPU_MODES = ("user", "nice", "system", "idle", "iowait", "interrupt", "steal")


def _gauge(name, unit, description, points, now_ns):
    metric = Metric(name=name, unit=unit, description=description)
    for attrs, value in points:
        metric.gauge.data_points.add(time_unix_nano=now_ns, as_double=float(value), attributes=attributes(attrs))
    return metric


def _sum(name, unit, description, points, now_ns, start_ns, monotonic, as_int=True):
    metric = Metric(name=name, unit=unit, description=description)
    metric.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    metric.sum.is_monotonic = monotonic
    for attrs, value in points:
        point = metric.sum.data_points.add(time_unix_nano=now_ns, start_time_unix_nano=start_ns,
                                           attributes=attributes(attrs))
        if as_int:
            point.as_int = int(value)
        else:
            point.as_double = float(value)
    return metric


def cpu_metrics(cpu_times, previous, now_ns, boot_ns):
    """
    system.cpu.time (seconds per cpu and mode, since boot) and system.cpu.utilization (share of
    the interval per cpu and mode; since boot on the first collection when there is no previous).
    cpu_times: {cpu_number: {mode: seconds}}.
    """
    time_points, util_points = [], []
    for cpu, modes in sorted(cpu_times.items()):
        before = (previous or {}).get(cpu, {})
        deltas = {m: modes.get(m, 0.0) - before.get(m, 0.0) for m in CPU_MODES}
        total = sum(deltas.values())
        for mode in CPU_MODES:
            attrs = {"cpu.logical_number": cpu, "cpu.mode": mode}
            time_points.append((attrs, modes.get(mode, 0.0)))
            util_points.append((attrs, deltas[mode] / total if total > 0 else 0.0))
    return [
        _sum("system.cpu.time", "s", "Seconds each logical CPU spent in each mode", time_points, now_ns, boot_ns,
             True, as_int=False),
        _gauge("system.cpu.utilization", "1", "Share of the interval each logical CPU spent in each mode",
               util_points, now_ns),
    ]


def memory_metrics(memory, now_ns, start_ns):
    """system.memory.usage and system.memory.utilization by system.memory.state; memory in bytes."""
    total = memory["total"]
    states = [(s, memory[s]) for s in ("used", "free", "cached", "buffers")]
    return [
        _sum("system.memory.usage", "By", "Bytes of memory in use", [({"system.memory.state": s}, v) for s, v in states],
             now_ns, start_ns, False),
        _gauge("system.memory.utilization", "1", "Share of memory in each state",
               [({"system.memory.state": s}, v / total if total else 0.0) for s, v in states], now_ns),
    ]


def load_metrics(load, now_ns):
    """system.cpu.load_average.1m|5m|15m."""
    return [_gauge(f"system.cpu.load_average.{window}", "{run_queue_item}", f"Load average over {window}",
                   [({}, value)], now_ns) for window, value in zip(("1m", "5m", "15m"), load)]


def _per_direction(table, name_key, direction_key, directions, field):
    """Points of `field` per device/interface and direction from {name: {"<direction>_<field>": n}}."""
    return [({name_key: name, direction_key: direction}, counters[f"{direction}_{field}"])
            for name, counters in sorted(table.items()) for direction in directions]


def network_metrics(interfaces, now_ns, boot_ns):
    """system.network.io, .errors, .dropped per network.interface.name and network.io.direction."""
    def points(field):
        return _per_direction(interfaces, "network.interface.name", "network.io.direction", ("receive", "transmit"), field)

    return [
        _sum("system.network.io", "By", "Bytes received and sent", points("bytes"), now_ns, boot_ns, True),
        _sum("system.network.errors", "{error}", "Receive and transmit errors", points("errors"), now_ns, boot_ns, True),
        _sum("system.network.dropped", "{packet}", "Packets dropped", points("dropped"), now_ns, boot_ns, True),
    ]


def disk_metrics(disks, now_ns, boot_ns):
    """system.disk.io (bytes) and system.disk.operations per system.device and disk.io.direction."""
    def points(field):
        return _per_direction(disks, "system.device", "disk.io.direction", ("read", "write"), field)

    return [
        _sum("system.disk.io", "By", "Bytes read and written", points("bytes"), now_ns, boot_ns, True),
        _sum("system.disk.operations", "{operation}", "Read and write operations completed", points("ops"),
             now_ns, boot_ns, True),
    ]


def filesystem_metrics(filesystems, now_ns, start_ns):
    """system.filesystem.usage by system.filesystem.state and system.filesystem.utilization per mount."""
    usage, utilization = [], []
    for fs in filesystems:
        base = {"system.device": fs["device"], "system.filesystem.mountpoint": fs["mountpoint"],
                "system.filesystem.type": fs["type"]}
        for state in ("used", "free", "reserved"):
            usage.append(({**base, "system.filesystem.state": state}, fs[state]))
        total = fs["used"] + fs["free"] + fs["reserved"]
        utilization.append((base, fs["used"] / total if total else 0.0))
    return [
        _sum("system.filesystem.usage", "By", "Filesystem space by state", usage, now_ns, start_ns, False),
        _gauge("system.filesystem.utilization", "1", "Share of the filesystem in use", utilization, now_ns),
    ]


def host_metrics(readings, previous_cpu, now_ns, boot_ns, start_ns):
    """Every system.* Metric from one set of readings (see telegen.hostmetrics.HostReadings)."""
    return (cpu_metrics(readings.cpu, previous_cpu, now_ns, boot_ns)
            + memory_metrics(readings.memory, now_ns, start_ns)
            + load_metrics(readings.load, now_ns)
            + network_metrics(readings.network, now_ns, boot_ns)
            + disk_metrics(readings.disks, now_ns, boot_ns)
            + filesystem_metrics(readings.filesystems, now_ns, start_ns))
