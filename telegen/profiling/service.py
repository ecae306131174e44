# -*- test-case-name: tests.integration.test_profiler -*-
"""
ProfilerService: the `profiling` child. Samples every CPU at agent.profiling.sample_rate with
bpf/profile.c, and every upload_interval turns the window's samples into one profile per process:
OTLP profiles through the export pipeline's `profiles` queue, and a pprof file per service.

Nothing heavy runs on the reactor: compiling, draining the maps, symbolizing and encoding run in
the thread pool. The reactor only reads the `new_pids` ring (and records the new process's
mappings at once, while it still runs), asks the process table for resources and selection, and
submits the records. One window is processed at a time; a window that takes longer than the
interval delays the next drain, which then covers a longer period (nothing is lost in the kernel).
"""
import os
import struct
from collections import defaultdict

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from telegen.contracts import IChild
from telegen.ebpf.ringbuf import RingBufferReader
from telegen.profiling import otlp, pprof_files
from telegen.profiling.sampler import Sampler
from telegen.profiling.symbolize import Symbolizer

log = Logger()
UNKNOWN_SERVICE = "unknown_service"
# Each new_pids event wakes the reader at once (new processes are rare); the drain timer is only
# a fallback, so it can be slow.
NEW_PID_DRAIN = 1.0
# A new_pids event is bpf/telegen.h's struct telegen_event_header: ts_ns, then the pid (tgid).
_NEW_PID = struct.Struct("<QI")


@implementer(IChild)
class ProfilerService(service.Service):
    """
    @param sampler_factory: (profiling config, self pid) -> Sampler; tests swap it.
    @param symbolizer: a Symbolizer (tests give one with fake /proc paths).
    @param reader_factory: RingBufferReader's signature, for the new_pids ring; tests swap it.
    """

    def __init__(self, config, metrics, exporter, processes, reactor=None, sampler_factory=Sampler,
                 symbolizer=None, run_in_thread=None, reader_factory=RingBufferReader):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._config = config
        self.metrics = metrics
        self.exporter = exporter
        self.processes = processes
        self._sampler_factory = sampler_factory
        self._reader_factory = reader_factory
        self.symbolizer = symbolizer or Symbolizer()
        self._run_in_thread = run_in_thread or (
            lambda fn, *args: threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args))
        self.sampler = None
        self.state = "disabled"
        self.error = None
        self.samples = 0
        self.profiles = 0
        self.windows = 0
        self.files_written = 0
        self.last_window = None
        self._window_start = None
        self._loop = None
        self._reader = None
        self._busy = None
        self._early = {}           # pid -> (resource, selected) at its first sample, this window
        self._early_before = {}    # the same from the window before (a drain may straddle)
        self.loading = None

    @property
    def profiling(self):
        return self._config["agent"]["profiling"]

    def _thread(self, fn, *args):
        return self._run_in_thread(fn, *args)

    # -- lifecycle ---------------------------------------------------------------------------

    def startService(self):  # noqa: N802 (Twisted hook)
        service.Service.startService(self)
        if not self.profiling["enabled"]:
            return
        self.state = "loading"
        self.sampler = self._sampler_factory(self.profiling, os.getpid())
        self.loading = self._thread(self.sampler.load)
        self.loading.addCallbacks(self._loaded, self._load_failed)

    def _loaded(self, _):
        if not self.running:
            self.sampler.detach()
            return
        self._window_start = self.reactor.seconds()
        self._reader = self._reader_factory(self.sampler.bpf, "new_pids", self._on_new_pid, self.metrics,
                                        reactor=self.reactor, drain_interval=NEW_PID_DRAIN)
        self._reader.start()
        self._loop = LoopingCall(self.collect)
        self._loop.clock = self.reactor
        self._loop.start(self.profiling["upload_interval"], now=False)
        self.state = "attached"
        log.info("CPU profiler attached at {rate} Hz on CPUs {cpus}", rate=self.profiling["sample_rate"],
                 cpus=self.sampler.cpus)

    def _load_failed(self, failure):
        self.state = "failed"
        self.error = failure.getErrorMessage()
        log.error("CPU profiler failed to load: {error}", error=self.error)

    def _on_new_pid(self, raw):
        """
        A process's first sample: record its mappings and its resource while it runs (it may
        exit before the drain, and the process table forgets what it never saw).
        """
        pid = _NEW_PID.unpack_from(raw)[1]
        self.symbolizer.remember(pid)
        if self.processes is not None:
            if self.processes.lookup(pid) is None:
                self.processes.on_exec(pid)
            self._early[pid] = (self.processes.resource_attributes(pid), self.processes.selected(pid))

    def _resource(self, pid):
        """(resource attributes, selected) of pid: as seen at its first sample if this window had one."""
        early = self._early.get(pid) or self._early_before.get(pid)
        if early is not None:
            return early
        if self.processes is None:
            return {"process.pid": pid}, True
        return self.processes.resource_attributes(pid), self.processes.selected(pid)

    def stopService(self):  # noqa: N802 (Twisted hook)
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        d = self._busy if self._busy is not None else defer.succeed(None)
        if self.state == "attached":
            d.addBoth(lambda _: self._detach())
        return d

    def _detach(self):
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self.sampler.detach()
        self.state = "stopped"

    # -- windows -----------------------------------------------------------------------------

    def collect(self):
        """Drain the window and export it; fires with the number of profiles built (0 if one is already running)."""
        if self._busy is not None or self.state != "attached":
            return defer.succeed(0)
        start, end = self._window_start, self.reactor.seconds()
        self._window_start = end
        self._reader.catch_up()        # mappings of processes that started just now, before they go
        self._busy = self._thread(self._drain_and_symbolize)
        self._busy.addCallback(self._grouped, start, end)
        self._busy.addCallback(lambda grouped: self._thread(self._encode, grouped, start, end))
        self._busy.addCallback(self._submit)
        self._busy.addErrback(self._window_failed)

        def done(result):
            self._busy = None
            return result
        return self._busy.addBoth(done)

    def _drain_and_symbolize(self):
        """
        In a thread: {pid: [(frames, count)]} of the window's CPU samples, the same of its off-CPU
        nanoseconds, the sample total, and the kernel's new drops.
        """
        self.sampler.attach_new_cpus()
        window = self.sampler.drain()
        drops = self.sampler.new_drops()
        self.symbolizer.refresh({pid for pid, _, _ in window.counts} | {pid for pid, _, _ in window.off_cpu})
        return self._symbolized(window.counts), self._symbolized(window.off_cpu), window.samples, drops

    def _symbolized(self, counts):
        stacks = defaultdict(lambda: defaultdict(int))
        for (pid, user, kernel), value in counts.items():
            stacks[pid][tuple(self.symbolizer.stack(pid, user, kernel))] += value
        return {pid: list(by_stack.items()) for pid, by_stack in stacks.items()}

    def _grouped(self, drained, start, end):
        """On the reactor: resources and selection from the process table; [(pid, attrs, cpu, off_cpu)]."""
        cpu, off_cpu, samples, drops = drained
        self.samples += samples
        self.metrics.profiler_samples.inc(samples)
        for reason, n in drops.items():
            self.metrics.profiler_dropped.labels(reason=reason).inc(n)
        processes = []
        for pid in cpu.keys() | off_cpu.keys():
            attrs, selected = self._resource(pid)
            if not selected:
                self.metrics.profiler_dropped.labels(reason="not_selected").inc(sum(n for _, n in cpu.get(pid, ())))
                continue
            processes.append((pid, attrs, cpu.get(pid, []), off_cpu.get(pid, [])))
        self._early_before, self._early = self._early, {}
        return processes

    def _encode(self, processes, start, end):
        """In a thread: the window's OTLP record (all processes, one dictionary), one pprof file per service."""
        rate, duration = self.profiling["sample_rate"], end - start
        record = otlp.window_profiles([(attrs, cpu, off_cpu) for _, attrs, cpu, off_cpu in processes],
                                      start, duration, rate) if processes else None
        written = []
        if self.profiling["pprof_files"]:
            directory = pprof_files.profiles_dir(self._config["telegen"]["data_dir"])
            by_service = defaultdict(list)
            for process in processes:
                by_service[process[1].get("service.name", UNKNOWN_SERVICE)].append(process)
            for service_name, members in by_service.items():
                labelled = [[(frames, value, {"pid": pid}) for pid, _, *kinds in members for frames, value in kinds[i]]
                            for i in (0, 1)]
                builder = pprof_files.cpu_profile(labelled[0], start, duration, rate,
                                                  members[0][1].get("process.executable.path", ""),
                                                  off_cpu=labelled[1] if self.profiling["off_cpu"] else None)
                written.append(pprof_files.write(directory, service_name, start, builder.gzipped()))
            pprof_files.rotate(directory, self.profiling["pprof_max_age"], self.profiling["pprof_max_bytes"])
        return (record.SerializeToString(), otlp.profile_count(record)) if record else (None, 0), written

    def _submit(self, encoded):
        """On the reactor: hand the window's record (already serialized) to the export pipeline."""
        (record, profiles), written = encoded
        if record is not None:
            # The record carries every process's resource; the queue's own resource key is unused.
            self.exporter.submit("profiles", {}, [record])
        self.profiles += profiles
        self.metrics.profiler_profiles.inc(profiles)
        self.files_written += len(written)
        self.windows += 1
        self.last_window = {"profiles": profiles, "files": written}
        return profiles

    def _window_failed(self, failure):
        self.metrics.profiler_dropped.labels(reason="window_failed").inc()
        log.failure("CPU profile window failed", failure)
        return 0

    # -- IChild ------------------------------------------------------------------------------

    def status(self):
        """The /status "profiling" block plus the profiler's own details."""
        return {
            "enabled": self.state in ("loading", "attached"),
            "sample_rate": self.profiling["sample_rate"],
            "profiles_collected": self.profiles,
            "state": self.state,
            "error": self.error,
            "cpus": self.sampler.cpus if self.sampler is not None and self.state == "attached" else [],
            "samples": self.samples,
            "windows": self.windows,
            "files_written": self.files_written,
        }

    def ready_check(self):
        if not self.profiling["enabled"]:
            return "disabled"
        if self.state == "failed":
            return f"failed: {self.error}"
        return "ok"

    def reconfigure(self, config):
        """The rate and the map sizes are compiled in or fixed at attach: any change rebuilds."""
        return False
