"""
Host metrics from a fixed /proc tree on a Clock: first collection at start, then every
interval; system.* names, units, attributes, temporality, start times and values as the
semantic conventions define them; CPU utilization from the deltas between collections.
"""
import os
from types import SimpleNamespace

from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE
from twisted.internet.task import Clock

from telegen.config import defaults
from telegen.hostmetrics import HostMetricsService, ProcReader
from tests.support.otlp_receiver import attrs_dict

TICK = os.sysconf("SC_CLK_TCK")
BOOT = 1_700_000_000


def write_proc(root, user_ticks=100):
    files = {
        "stat": f"cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 {user_ticks} 0 {2 * TICK} {10 * TICK} 0 {TICK} {TICK} 0 0 0\n"
                f"intr 1\nbtime {BOOT}\n",
        "meminfo": "MemTotal: 1000 kB\nMemFree: 400 kB\nBuffers: 100 kB\nCached: 150 kB\nSReclaimable: 50 kB\n",
        "loadavg": "0.50 0.25 0.10 1/100 42\n",
        "net/dev": "Inter-| Receive | Transmit\n face |bytes ...\n"
                   "  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n",
        "diskstats": "   8 0 sda 5 0 16 0 7 0 32 0 0 0 0\n   7 0 loop0 0 0 0 0 0 0 0 0 0 0 0\n",
        "mounts": "/dev/sda1 /data ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/sda1 /data ext4 rw 0 0\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def fake_statvfs(path):
    assert path == "/data"
    return SimpleNamespace(f_frsize=4096, f_blocks=100, f_bfree=40, f_bavail=30)


class Sink:
    def __init__(self):
        self.calls = []

    def submit(self, signal, resource_attrs, records):
        self.calls.append((signal, resource_attrs, records))
        return len(records)


def start(tmp_path, interval=15.0, host_facts=dict):
    write_proc(tmp_path)
    config = defaults()
    config["agent"]["host_metrics"]["interval"] = interval
    clock, sink, wall = Clock(), Sink(), [BOOT + 100.0]
    service = HostMetricsService(config, sink, None, reactor=clock, host_facts=host_facts,
                                 reader=ProcReader(str(tmp_path), statvfs=fake_statvfs), wall_clock=lambda: wall[0])
    service.startService()
    return service, sink, clock, wall


def by_name(records):
    return {m.name: m for m in records}


def points(metric):
    data = getattr(metric, metric.WhichOneof("data"))
    return {tuple(sorted(attrs_dict(p.attributes).items())): (p.as_double if p.HasField("as_double") else p.as_int)
            for p in data.data_points}


def test_first_collection_at_start_then_every_interval(tmp_path):
    service, sink, clock, _ = start(tmp_path, interval=15.0)
    assert len(sink.calls) == 1
    clock.advance(14.9)
    assert len(sink.calls) == 1
    clock.advance(0.1)
    assert len(sink.calls) == 2
    service.stopService()
    clock.advance(60)
    assert len(sink.calls) == 2


def test_resource_and_signal(tmp_path):
    _, sink, _, _ = start(tmp_path)
    signal, resource, _ = sink.calls[0]
    assert signal == "metrics"
    assert {"host.name", "host.arch", "os.type", "os.description", "service.name", "service.instance.id"} <= set(resource)
    assert resource["service.name"] == "telegen" and resource["os.type"] == "linux"


def test_semantic_convention_names_units_and_attributes(tmp_path):
    _, sink, _, _ = start(tmp_path)
    metrics = by_name(sink.calls[0][2])
    assert set(metrics) == {
        "system.cpu.time", "system.cpu.utilization", "system.memory.usage", "system.memory.utilization",
        "system.cpu.load_average.1m", "system.cpu.load_average.5m", "system.cpu.load_average.15m",
        "system.network.io", "system.network.errors", "system.network.dropped", "system.disk.io",
        "system.disk.operations", "system.filesystem.usage", "system.filesystem.utilization"}
    units = {name: m.unit for name, m in metrics.items()}
    assert units["system.cpu.time"] == "s" and units["system.memory.usage"] == "By"
    assert units["system.cpu.utilization"] == "1" and units["system.network.io"] == "By"

    cpu_time = metrics["system.cpu.time"]
    assert cpu_time.sum.is_monotonic and cpu_time.sum.aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE
    assert all(p.start_time_unix_nano == BOOT * 10**9 for p in cpu_time.sum.data_points)
    cpu = points(cpu_time)
    assert cpu[(("cpu.logical_number", 0), ("cpu.mode", "user"))] == 100 / TICK
    assert cpu[(("cpu.logical_number", 0), ("cpu.mode", "system"))] == 2.0
    assert cpu[(("cpu.logical_number", 0), ("cpu.mode", "interrupt"))] == 2.0  # irq + softirq

    memory = metrics["system.memory.usage"]
    assert not memory.sum.is_monotonic
    assert points(memory) == {(("system.memory.state", "used"),): 300 * 1024, (("system.memory.state", "free"),): 400 * 1024,
                              (("system.memory.state", "cached"),): 200 * 1024, (("system.memory.state", "buffers"),): 100 * 1024}
    assert points(metrics["system.memory.utilization"])[(("system.memory.state", "used"),)] == 0.3
    assert points(metrics["system.cpu.load_average.5m"]) == {(): 0.25}

    net = points(metrics["system.network.io"])
    assert net[(("network.interface.name", "eth0"), ("network.io.direction", "receive"))] == 1000
    assert net[(("network.interface.name", "eth0"), ("network.io.direction", "transmit"))] == 2000
    assert points(metrics["system.network.errors"])[(("network.interface.name", "eth0"), ("network.io.direction", "transmit"))] == 3
    assert points(metrics["system.network.dropped"])[(("network.interface.name", "eth0"), ("network.io.direction", "receive"))] == 2

    disk = points(metrics["system.disk.io"])
    assert disk == {(("disk.io.direction", "read"), ("system.device", "sda")): 16 * 512,
                    (("disk.io.direction", "write"), ("system.device", "sda")): 32 * 512}  # idle loop0 left out
    assert points(metrics["system.disk.operations"])[(("disk.io.direction", "write"), ("system.device", "sda"))] == 7

    fs = points(metrics["system.filesystem.usage"])
    base = (("system.device", "/dev/sda1"), ("system.filesystem.mountpoint", "/data"))
    key = lambda state: tuple(sorted(base + (("system.filesystem.state", state), ("system.filesystem.type", "ext4")))) # noqa: E731
    assert (fs[key("used")], fs[key("free")], fs[key("reserved")]) == (60 * 4096, 30 * 4096, 10 * 4096)
    assert len(fs) == 3  # the duplicate mount line and /proc are skipped
    assert list(points(metrics["system.filesystem.utilization"]).values()) == [0.6]


def test_cpu_utilization_comes_from_deltas_between_collections(tmp_path):
    service, sink, clock, wall = start(tmp_path)
    # one interval later: +10s of idle and +10s of user on cpu0
    write_proc(tmp_path, user_ticks=100 + 10 * TICK)
    stat = (tmp_path / "stat").read_text().replace(f" {10 * TICK} 0", f" {20 * TICK} 0", 1)
    (tmp_path / "stat").write_text(stat)
    wall[0] += 15
    clock.advance(15)
    util = points(by_name(sink.calls[1][2])["system.cpu.utilization"])
    assert util[(("cpu.logical_number", 0), ("cpu.mode", "user"))] == 0.5
    assert util[(("cpu.logical_number", 0), ("cpu.mode", "idle"))] == 0.5
    assert util[(("cpu.logical_number", 0), ("cpu.mode", "system"))] == 0.0


def test_unreadable_proc_is_logged_and_retried_next_interval(tmp_path):
    service, sink, clock, _ = start(tmp_path)
    (tmp_path / "meminfo").unlink()
    clock.advance(15)
    assert len(sink.calls) == 1 and "FileNotFoundError" in service.last_error
    write_proc(tmp_path)
    clock.advance(15)
    assert len(sink.calls) == 2 and service.last_error is None


def test_reads_the_real_proc():
    """The reader understands this machine's /proc (at least one CPU, memory, a filesystem)."""
    readings = ProcReader().read()
    assert readings.cpu and readings.memory["total"] > 0 and readings.boot_time > 0
    assert len(readings.load) == 3 and "lo" in readings.network


def test_discovered_host_facts_join_the_resource_when_they_arrive(tmp_path):
    """Cloud metadata found after the first collection is on the next one's resource."""
    facts = {}
    service, sink, clock, _ = start(tmp_path, interval=15.0, host_facts=lambda: facts)
    assert "cloud.provider" not in sink.calls[0][1]
    facts.update({"cloud.provider": "aws", "host.id": "i-0abc"})
    clock.advance(15.0)
    assert (sink.calls[-1][1]["cloud.provider"], sink.calls[-1][1]["host.id"]) == ("aws", "i-0abc")
    service.stopService()
