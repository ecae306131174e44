"""
Host metrics: read /proc (and statvfs for mounted filesystems) every agent.host_metrics.interval
and submit system.* metrics to the export pipeline, the first collection right at start.

Why /proc directly and synchronously: every file read here is a small in-memory kernel table
(well under a millisecond), so it runs on the reactor thread; statvfs is only called for
filesystems backed by a /dev device, never for network or FUSE mounts that could hang.
The /proc root and statvfs are parameters so tests can feed fixed readings.
"""
import os
import time
from dataclasses import dataclass

from twisted.application.internet import TimerService
from twisted.logger import Logger
from zope.interface import implementer

from telegen.contracts import IChild
from telegen.signals.common import host_resource_attributes
from telegen.signals.host import host_metrics

SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's sector size

_log = Logger()


@dataclass
class HostReadings:
    """One collection's raw values (units: seconds, bytes, counts)."""

    cpu: dict          # {cpu_number: {mode: seconds}}
    boot_time: float   # seconds since the epoch
    memory: dict       # total, used, free, cached, buffers (bytes)
    load: tuple        # 1m, 5m, 15m
    network: dict      # {iface: {receive_bytes, transmit_bytes, receive_errors, ..., transmit_dropped}}
    disks: dict        # {device: {read_bytes, write_bytes, read_ops, write_ops}}
    filesystems: list  # [{device, mountpoint, type, used, free, reserved}]


class ProcReader:
    """Reads HostReadings from a /proc tree."""

    def __init__(self, proc="/proc", statvfs=os.statvfs):
        self.proc = proc
        self._statvfs = statvfs
        self._tick = os.sysconf("SC_CLK_TCK")

    def _lines(self, name):
        with open(os.path.join(self.proc, name), encoding="ascii", errors="replace") as f:
            return f.read().splitlines()

    def read(self):
        """All readings now."""
        cpu, boot = self.cpu_and_boot()
        return HostReadings(cpu, boot, self.memory(), self.load(), self.network(), self.disks(), self.filesystems())

    def cpu_and_boot(self):
        cpu, boot = {}, 0.0
        for line in self._lines("stat"):
            parts = line.split()
            if parts and parts[0].startswith("cpu") and parts[0] != "cpu":
                v = [int(x) / self._tick for x in parts[1:9]] + [0.0] * (8 - len(parts[1:9]))
                user, nice, system, idle, iowait, irq, softirq, steal = v
                # guest time is already inside user/nice, so it is not added again.
                cpu[int(parts[0][3:])] = {"user": user, "nice": nice, "system": system, "idle": idle,
                                          "iowait": iowait, "interrupt": irq + softirq, "steal": steal}
            elif parts and parts[0] == "btime":
                boot = float(parts[1])
        return cpu, boot

    def memory(self):
        info = {}
        for line in self._lines("meminfo"):
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields:
                info[key] = int(fields[0]) * 1024
        total, free = info.get("MemTotal", 0), info.get("MemFree", 0)
        buffers = info.get("Buffers", 0)
        cached = info.get("Cached", 0) + info.get("SReclaimable", 0)
        return {"total": total, "free": free, "buffers": buffers, "cached": cached,
                "used": max(0, total - free - buffers - cached)}

    def load(self):
        return tuple(float(x) for x in self._lines("loadavg")[0].split()[:3])

    def network(self):
        out = {}
        for line in self._lines("net/dev")[2:]:
            name, _, rest = line.partition(":")
            v = [int(x) for x in rest.split()]
            if len(v) >= 12:
                out[name.strip()] = {"receive_bytes": v[0], "receive_errors": v[2], "receive_dropped": v[3],
                                     "transmit_bytes": v[8], "transmit_errors": v[10], "transmit_dropped": v[11]}
        return out

    def disks(self):
        out = {}
        for line in self._lines("diskstats"):
            p = line.split()
            if len(p) < 10:
                continue
            reads, read_sectors, writes, write_sectors = int(p[3]), int(p[5]), int(p[7]), int(p[9])
            if reads or writes:  # idle loop/ram devices would only add noise
                out[p[2]] = {"read_ops": reads, "write_ops": writes,
                             "read_bytes": read_sectors * SECTOR_BYTES, "write_bytes": write_sectors * SECTOR_BYTES}
        return out

    def filesystems(self):
        out, seen = [], set()
        for line in self._lines("mounts"):
            p = line.split()
            if len(p) < 3 or not p[0].startswith("/dev/") or (p[0], p[1]) in seen:
                continue
            seen.add((p[0], p[1]))
            mountpoint = p[1].replace("\\040", " ")
            try:
                st = self._statvfs(mountpoint)
            except OSError:
                continue
            out.append({"device": p[0], "mountpoint": mountpoint, "type": p[2],
                        "used": (st.f_blocks - st.f_bfree) * st.f_frsize,
                        "free": st.f_bavail * st.f_frsize,
                        "reserved": (st.f_bfree - st.f_bavail) * st.f_frsize})
        return out


@implementer(IChild)
class HostMetricsService(TimerService):
    """Collects host metrics every interval (first one at start) and submits them as one resource."""

    def __init__(self, config, pipeline, metrics, reactor=None, reader=None, wall_clock=time.time, host_facts=dict):
        """host_facts() gives discovered facts of the host (the cloud instance) to add to the resource."""
        super().__init__(config["agent"]["host_metrics"]["interval"], self.collect)
        if reactor is not None:
            self.clock = reactor  # TimerService defaults to the global reactor itself when unset
        self.config = config
        self.pipeline = pipeline
        self.metrics = metrics
        self._reader = reader or ProcReader()
        self._wall_clock = wall_clock
        self._resource = host_resource_attributes(config)
        self._host_facts = host_facts
        self._previous_cpu = None
        self._start_ns = int(wall_clock() * 1e9)
        self.collections = 0
        self.last_error = None

    def reconfigure(self, config):
        """The interval and the agent's resource change in place; turning the child off removes it."""
        if not config["agent"]["host_metrics"]["enabled"]:
            return False
        self.config = config
        self.step = config["agent"]["host_metrics"]["interval"]
        if getattr(self, "_loop", None) is not None:
            self._loop.interval = self.step
        self._resource = host_resource_attributes(config)
        return True

    def status(self):
        return {"enabled": True, "interval": self.step, "collections": self.collections, "last_error": self.last_error}

    def ready_check(self):
        return "ok" if self.last_error is None else f"failed: {self.last_error}"

    def collect(self):
        """One collection; a failure is logged and kept in last_error, and the next interval tries again."""
        try:
            readings = self._reader.read()
            now_ns = int(self._wall_clock() * 1e9)
            records = host_metrics(readings, self._previous_cpu, now_ns, int(readings.boot_time * 1e9), self._start_ns)
        except (OSError, ValueError, IndexError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            _log.warn("host metrics collection failed: {error}", error=self.last_error)
            return
        self._previous_cpu = readings.cpu
        self.collections += 1
        self.last_error = None
        self.pipeline.submit("metrics", {**self._resource, **self._host_facts()}, records)
