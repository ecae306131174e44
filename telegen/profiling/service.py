# -*- test-case-name: tests.integration.test_profiler -*-
"""
ProfilerService: the `profiling` child. Samples every CPU at agent.profiling.sample_rate with
bpf/profile.c, and every upload_interval turns the window's samples into one profile per process:
OTLP profiles through the export pipeline's `profiles` queue, and a pprof file per service.

Nothing heavy runs in the agent's process: compiling runs in a thread; draining the maps,
symbolizing and encoding run in a worker process (telegen.profiling.worker, through
telegen.workerproc) that holds the BPF maps' fds, so neither the reactor nor the GIL it shares
with the agent's threads waits for them. The reactor only reads the `new_pids` ring (and passes
the new process's mappings to the worker at once, while it still runs), asks the process table
for resources and selection, and submits the encoded record. One window is processed at a time;
a window that takes longer than the interval delays the next drain, which then covers a longer
period (nothing is lost in the kernel). A worker that dies is restarted; the window it held is
counted as dropped (`worker_crashed`).
"""
import json
import os
import struct
import sys

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from telegen.contracts import IChild
from telegen.ebpf.ringbuf import RingBufferReader
from telegen.profiling.sampler import Sampler
from telegen.profiling.symbolize import read_maps
from telegen.workerproc import Worker, WorkerCrashed

log = Logger()
# Each new_pids event wakes the reader at once (new processes are rare); the drain timer is only
# a fallback, so it can be slow.
NEW_PID_DRAIN = 1.0
# A new_pids event is bpf/telegen.h's struct telegen_event_header: ts_ns, then the pid (tgid).
_NEW_PID = struct.Struct("<QI")
# A worker that takes longer than this for one step of a window is killed and restarted.
MIN_WORKER_TIMEOUT = 120.0


def start_worker(service):
    """The real worker: `python -m telegen.profiling.worker`, handed the sampler's maps as fds 3, 4, ..."""
    names, fds = zip(*service.sampler.map_fds())
    setup = {"profiling": dict(service.profiling), "data_dir": service.config["telegen"]["data_dir"], "maps": names}
    worker = Worker(service.reactor, "profiler", [sys.executable, "-m", "telegen.profiling.worker", json.dumps(setup)],
                    fds, timeout=max(MIN_WORKER_TIMEOUT, 2 * service.profiling["upload_interval"]),
                    on_start=service._worker_started, on_crash=service._worker_crashed)
    worker.start()
    return worker


@implementer(IChild)
class ProfilerService(service.Service):
    """
    @param sampler_factory: (profiling config, self pid) -> Sampler; tests swap it.
    @param worker_factory: (this service) -> a started Worker; tests run the worker's handlers in-process.
    @param reader_factory: RingBufferReader's signature, for the new_pids ring; tests swap it.
    @param proc: where /proc is (tests give a made-up one).
    """

    def __init__(self, config, metrics, exporter, processes, reactor=None, sampler_factory=Sampler,
                 worker_factory=start_worker, run_in_thread=None, reader_factory=RingBufferReader, proc="/proc"):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._config = config
        self.metrics = metrics
        self.exporter = exporter
        self.processes = processes
        self._sampler_factory = sampler_factory
        self._reader_factory = reader_factory
        self._worker_factory = worker_factory
        self._proc = proc
        self.worker = None
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

    @property
    def config(self):
        return self._config

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
        self.loading.addErrback(self._load_failed)      # _loaded itself failed (the worker did not start)

    def _loaded(self, _):
        if not self.running:
            self.sampler.detach()
            return
        self._window_start = self.reactor.seconds()
        self.worker = self._worker_factory(self)
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
        text = read_maps(pid, self._proc)
        if text is not None:
            self.worker.send("maps", pid, text)
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
        d = self.worker.stop() if self.worker is not None else defer.succeed(None)

        def detached(_):
            self.sampler.detach()
            self.state = "stopped"
        return d.addCallback(detached)

    def _worker_started(self, pid):
        """A worker's own CPU is the agent's: never sample it."""
        self.sampler.exclude(pid)

    def _worker_crashed(self, why):
        self.metrics.profiler_worker_restarts.inc()

    # -- windows -----------------------------------------------------------------------------

    def collect(self):
        """Drain the window and export it; fires with the number of profiles built (0 if one is already running)."""
        if self._busy is not None or self.state != "attached":
            return defer.succeed(0)
        start, end = self._window_start, self.reactor.seconds()
        self._window_start = end
        self._reader.catch_up()        # mappings of processes that started just now, before they go
        self._busy = defer.maybeDeferred(self.sampler.attach_new_cpus)
        self._busy.addCallback(lambda _: self.worker.call("drain"))
        self._busy.addCallback(self._drained, start, end)
        self._busy.addCallback(self._submit)
        self._busy.addErrback(self._window_failed)

        def done(result):
            self._busy = None
            return result
        return self._busy.addBoth(done)

    def _drained(self, drained, start, end):
        """On the reactor: count the samples and drops; the worker builds with the pids' resources and selection."""
        self.samples += drained["samples"]
        self.metrics.profiler_samples.inc(drained["samples"])
        for reason, n in drained["drops"].items():
            self.metrics.profiler_dropped.labels(reason=reason).inc(n)
        resources = {pid: self._resource(pid) for pid in drained["pids"]}
        self._early_before, self._early = self._early, {}
        return self.worker.call("build", start, end, resources)

    def _submit(self, built):
        """On the reactor: hand the window's record (already serialized) to the export pipeline."""
        if built["not_selected"]:
            self.metrics.profiler_dropped.labels(reason="not_selected").inc(built["not_selected"])
        self.metrics.profiler_symbol_evictions.inc(built["evictions"])
        if built["record"] is not None:
            # The record carries every process's resource; the queue's own resource key is unused.
            self.exporter.submit("profiles", {}, [built["record"]])
        self.profiles += built["profiles"]
        self.metrics.profiler_profiles.inc(built["profiles"])
        self.files_written += len(built["files"])
        self.windows += 1
        self.last_window = {"profiles": built["profiles"], "files": built["files"]}
        return built["profiles"]

    def _window_failed(self, failure):
        if failure.check(WorkerCrashed):
            # Logged by the worker's handle with the reason; the window's samples are gone.
            self.metrics.profiler_dropped.labels(reason="worker_crashed").inc()
            return 0
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
            "worker_pid": self.worker.pid if self.worker is not None else None,
            "worker_restarts": self.worker.restarts if self.worker is not None else 0,
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
