# -*- test-case-name: tests.unit.test_ebpf_service -*-
"""
EbpfService: compiles the probes off the reactor thread, attaches them, reads their ring
buffers on the reactor, and reports exactly what the kernel holds (/status/ebpf, /ready).

Compilation takes seconds of CPU per probe, so probes load one after another in a thread
while the rest of the agent (API included) runs; /ready says "not ready: loading" meanwhile.
A probe that fails (no BCC, no kernel headers, a compiler error, the verifier) is reported
with its reason and the other probes and subsystems keep working.

Map entries: a hash map's live entries are only known by walking it key by key (a syscall per
key), so a timer counts them every MAP_COUNT_INTERVAL seconds in a thread, on duplicated fds;
/status/ebpf and /metrics show the last count and its age, and no API request walks a map.

Ring buffer loss: BPF ring buffers have no loss counter, so every bpf/*.c counts failed
reserves in its per-CPU `lost` array (bpf/telegen.h), one slot per ring buffer in the order
of Probe.ring_buffers(). A timer sums them every LOST_POLL seconds into
telegen_ebpf_ringbuf_lost_total; status() polls them first so it is never stale.
"""
import os
import time

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from telegen.contracts import IChild
from telegen.ebpf import loader
from telegen.ebpf.cpu_governor import CpuGovernor
from telegen.ebpf.loader import LoadError
from telegen.ebpf.ringbuf import RingBufferReader

log = Logger()

LOST_POLL = 1.0              # seconds between reads of the kernel's lost counters
MAP_COUNT_INTERVAL = 15.0    # seconds between counts of the maps' live entries
MAP_WALK_LIMIT = 1 << 20     # most keys walked to count a hash map's live entries
_ARRAY_TYPES = frozenset(("array", "percpu_array", "prog_array", "perf_event_array"))
_UNCOUNTABLE_TYPES = frozenset(("ringbuf", "task_storage", "sk_storage"))


class _Loaded:
    """One probe's lifecycle: state (disabled|loading|attached|failed), BPF object, readers."""

    def __init__(self, probe, state):
        self.probe = probe
        self.state = state
        self.error = None
        self.bpf = None
        self.readers = []
        self.lost = []
        self.programs = []
        self.maps = {}


def compiled_shape(probe, config):
    """What of config is compiled into probe's BPF object: a change here needs a reload of it."""
    return probe.enabled(config), tuple(probe.cflags(config)), probe.ringbuf_size(config)


@implementer(IChild)
class EbpfService(service.Service):
    """
    The `ebpf` child of the agent.

    @param probes: the Probe list; None means telegen.ebpf.probes.default_probes(...).
    @param compile_probe: (probe, config, self_pid) -> bcc.BPF, run in a thread; tests swap it.
    @param run_in_thread: (fn, *args) -> Deferred; defaults to the reactor's thread pool.
    """

    def __init__(self, config, metrics, pipeline, processes, reactor=None, probes=None,
                 compile_probe=None, run_in_thread=None):
        self.config = config
        self.metrics = metrics
        self.pipeline = pipeline
        self.processes = processes
        self._reactor = reactor
        self._probes = probes
        self._compile = compile_probe or loader.compile_probe
        self._run_in_thread = run_in_thread
        self._loaded = []
        self._lost_loop = None
        self._count_loop = None
        self._counting = False
        self._entries = {}              # "<probe>.<map>" -> live entries at the last count
        self._counted_at = None         # time.time() of the last count
        self._governor = None
        self._first_readers = []        # readers of probes that drain first (ProcessProbe)
        self.loading = None

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    @property
    def enabled(self):
        return bool(self.config["agent"]["ebpf"]["enabled"])

    # ---- lifecycle ----

    def startService(self):
        service.Service.startService(self)
        if not self.enabled:
            return
        if self._probes is None:
            from telegen.ebpf.probes import default_probes
            self._probes = default_probes(self.config, self.pipeline, self.processes, self.metrics, reactor=self.reactor)
        self._loaded = [_Loaded(p, "loading" if p.enabled(self.config) else "disabled") for p in self._probes]
        ebpf = self.config["agent"]["ebpf"]
        self._governor = CpuGovernor(ebpf["min_cpu"], ebpf["max_cpu"], self.metrics, self.reactor)
        self._governor.start()
        self.loading = self._load_all()
        self._lost_loop = LoopingCall(self.poll_lost)
        self._lost_loop.clock = self.reactor
        self._lost_loop.start(LOST_POLL, now=False)
        self._count_loop = LoopingCall(self.count_entries)
        self._count_loop.clock = self.reactor
        self._count_loop.start(MAP_COUNT_INTERVAL, now=False)

    @defer.inlineCallbacks
    def _load_all(self):
        """Load probes one at a time (each compile uses a whole core for seconds)."""
        for st in self._loaded:
            if st.state != "loading":
                continue
            try:
                bpf = yield self._thread(self._compile, st.probe, self.config, os.getpid())
            except Exception as e:
                self._failed(st, e)
                continue
            if not self.running:
                bpf.cleanup()
                return
            try:
                self._attach(st, bpf)
            except Exception as e:
                self._release(st)
                bpf.cleanup()
                self._failed(st, e)
        self._governor.forget_contention()
        self._update_gauges()
        yield self.count_entries()

    def _thread(self, fn, *args):
        if self._run_in_thread is not None:
            return self._run_in_thread(fn, *args)
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def _failed(self, st, exc):
        st.state = "failed"
        st.error = str(exc) if isinstance(exc, LoadError) else f"{type(exc).__name__}: {exc}"
        log.error("eBPF probe {probe} failed: {error}", probe=st.probe.name, error=st.error)

    def _attach(self, st, bpf):
        """On the reactor thread: describe what the kernel holds, start readers, call the hook."""
        st.bpf = bpf
        st.programs = loader.describe_programs(bpf, st.probe.uprobe_programs())
        st.maps = {name: dict(loader.describe_map(fd), fd=fd) for name, fd in loader.map_fds(bpf).items()}
        for name, handler in st.probe.ring_buffers().items():
            reader = RingBufferReader(bpf, name, handler, self.metrics, reactor=self.reactor,
                                      drain_interval=self.config["agent"]["ebpf"]["drain_interval"],
                                      governor=self._governor,
                                      drain_before=() if st.probe.drains_first else self._first_readers)
            if st.probe.drains_first:
                self._first_readers.append(reader)
                if self.processes is not None:
                    self.processes.catch_up_events = self._catch_up_first
            st.readers.append(reader)
            st.lost.append(0)
            reader.start()
        st.probe.attached(bpf)
        st.state = "attached"
        log.info("eBPF probe {probe} attached: {n} programs", probe=st.probe.name, n=len(st.programs))

    def _catch_up_first(self):
        """Drain the rings that drain first (process events) now, for a table asked about a pid it lacks."""
        for reader in list(self._first_readers):
            reader.catch_up()

    def _release(self, st):
        for reader in st.readers:
            reader.stop()
            if reader in self._first_readers:
                self._first_readers.remove(reader)
        st.readers = []
        st.lost = []

    def stopService(self):
        service.Service.stopService(self)
        for loop in (self._lost_loop, self._count_loop):
            if loop is not None and loop.running:
                loop.stop()
        if self._governor is not None:
            self._governor.stop()
        for st in self._loaded:
            if st.state != "attached":
                continue
            self.poll_lost()
            self._release(st)
            try:
                st.probe.detached()
            finally:
                st.bpf.cleanup()
                st.state = "stopped"
        self._update_gauges()

    def reconfigure(self, config):
        """
        Apply a new agent.ebpf (and the API port and metric interval) in place: port filters,
        routes, excluded paths, intervals and the CPU budget. Anything compiled into a probe
        (its enabled state, -D flags, ring buffer size) needs a rebuild: answer False then.
        """
        if bool(config["agent"]["ebpf"]["enabled"]) != self.enabled:
            return False
        if self._probes is not None and any(
                compiled_shape(p, config) != compiled_shape(p, self.config) for p in self._probes):
            return False
        self.config = config
        ebpf = config["agent"]["ebpf"]
        if self._governor is not None:
            self._governor.set_limits(ebpf["min_cpu"], ebpf["max_cpu"])
        for st in self._loaded:
            for reader in st.readers:
                reader.set_drain_interval(ebpf["drain_interval"])
        for probe in self._probes or ():
            probe.reconfigure(config)
        return True

    # ---- counters ----

    def poll_lost(self):
        """Sum each ring buffer's per-CPU lost slot; add the growth to telegen_ebpf_ringbuf_lost_total."""
        for st in self._loaded:
            if st.state != "attached" or not st.readers:
                continue
            table = st.bpf[b"lost"]
            for slot in range(len(st.readers)):
                total = sum(table[table.Key(slot)])
                if total > st.lost[slot]:
                    self.metrics.ebpf_ringbuf_lost.inc(total - st.lost[slot])
                    st.lost[slot] = total

    @staticmethod
    def _programs(st):
        """The probe's programs, the uprobe ones as attached now: a library or executable found after the load gets them later."""
        uprobes = st.probe.uprobe_programs()
        return [dict(p, attached=uprobes[p["name"]] is not None, uprobe=uprobes[p["name"]]) if p["name"] in uprobes else p
                for p in st.programs]

    def _update_gauges(self):
        programs, maps = {}, {}
        for st in self._loaded:
            if st.state != "attached":
                continue
            for p in self._programs(st):
                if p["attached"]:
                    programs[p["type"]] = programs.get(p["type"], 0) + 1
            for m in st.maps.values():
                maps[m["type"]] = maps.get(m["type"], 0) + 1
        for gauge, counts in ((self.metrics.ebpf_programs_loaded, programs), (self.metrics.ebpf_maps_created, maps)):
            gauge.clear()
            for kind, n in counts.items():
                gauge.labels(kind).set(n)

    def count_entries(self):
        """
        Count every attached probe's map entries in a thread (on duplicated fds, so a probe
        unloaded meanwhile cannot close them under the walk), then publish the counts on the
        reactor thread. A count still running when the timer fires again is not doubled.
        """
        if self._counting or not self._attached():
            return None
        walks = [(f"{st.probe.name}.{name}", m["type"], m["max_entries"], m["key_size"], os.dup(m["fd"]))
                 for st in self._attached() for name, m in st.maps.items() if m["type"] not in _UNCOUNTABLE_TYPES]
        self._counting = True

        def published(counts):
            self._counting = False
            self._entries, self._counted_at = counts, time.time()
            self.metrics.ebpf_map_entries.clear()
            for qualified, entries in counts.items():
                self.metrics.ebpf_map_entries.labels(qualified).set(entries)
            self.metrics.ebpf_map_entries_counted.set(self._counted_at)

        def failed(failure):
            self._counting = False
            log.failure("counting BPF map entries failed", failure)

        return self._thread(_count_maps, walks).addCallbacks(published, failed)

    # ---- reporting ----

    def _attached(self):
        return [st for st in self._loaded if st.state == "attached"]

    def status(self):
        """The /status/ebpf document."""
        self.poll_lost()
        programs, maps, buffers = [], [], []
        size = self.config["agent"]["ebpf"]["ringbuf_size"]
        for st in self._attached():
            for p in self._programs(st):
                programs.append(dict(p, probe=st.probe.name))
            for name, m in sorted(st.maps.items()):
                qualified = f"{st.probe.name}.{name}"
                maps.append({"name": qualified, "type": m["type"], "entries": self._entries.get(qualified),
                             "max_entries": m["max_entries"], "id": m["id"], "probe": st.probe.name})
            for reader, lost in zip(st.readers, st.lost):
                buffers.append({"probe": st.probe.name, "name": reader.name, "size": st.probe.ringbuf_size(self.config),
                                "events_received": reader.events_received, "events_lost": lost,
                                "pending_bytes": reader.pending_bytes, "max_pending_bytes": reader.max_pending_bytes,
                                "handler_errors": reader.handler_errors, "error": reader.error})
        return {
            "enabled": self.enabled,
            "state": self._state(),
            "probes": [{"name": st.probe.name, "state": st.state, "error": st.error,
                        **(st.probe.status() if st.state == "attached" and hasattr(st.probe, "status") else {})}
                       for st in self._loaded],
            "capture": self._capture(),
            "protocols": self._protocols(),
            "programs": programs,
            "maps": maps,
            "map_entries_age_seconds": None if self._counted_at is None else round(time.time() - self._counted_at, 3),
            "ringbuf": {
                "size": size,
                "events_received": sum(b["events_received"] for b in buffers),
                "events_lost": sum(b["events_lost"] for b in buffers),
                "buffers": buffers,
            },
        }

    def _capture(self):
        """Which HTTP capture runs and why ({"mode", "reason"}, the probe's capture_status()); null when no probe has one enabled."""
        for st in self._loaded:
            if st.state != "disabled" and hasattr(st.probe, "capture_status"):
                return st.probe.capture_status() if st.state == "attached" else {"mode": None, "reason": st.error or st.state}
        return None

    def _protocols(self):
        """The L7 protocols of the attached capture probe, with their counts (its protocols_status()); [] when none runs."""
        for st in self._attached():
            if hasattr(st.probe, "protocols_status"):
                return st.probe.protocols_status()
        return []

    def summary(self):
        """The /status "ebpf" object."""
        attached = self._attached()
        return {
            "enabled": self.enabled,
            "programs_loaded": sum(1 for st in attached for p in self._programs(st) if p["attached"]),
            "maps_created": sum(len(st.maps) for st in attached),
            "ringbuf_size": self.config["agent"]["ebpf"]["ringbuf_size"],
        }

    def _state(self):
        if not self.enabled:
            return "disabled"
        states = {st.state for st in self._loaded}
        if not self.running and not states:
            return "stopped"
        for state in ("loading", "failed", "attached"):
            if state in states:
                return state
        return "disabled"

    def ready_check(self):
        """'ok', 'not ready: loading' until every enabled probe is attached, or 'failed: <probe>: <why>'."""
        if not self.enabled:
            return "ok"
        if not self.running:
            return "not ready: not started"
        failed = [st for st in self._loaded if st.state == "failed"]
        if failed:
            return "failed: " + "; ".join(f"{st.probe.name}: {st.error}" for st in failed)
        if any(st.state == "loading" for st in self._loaded):
            return "not ready: loading"
        return "ok"


def _count_maps(walks):
    """
    Live entries of each (name, type, max_entries, key_size, fd) walk, closing each fd. Arrays
    are preallocated (every slot exists); hash maps are walked up to MAP_WALK_LIMIT keys. Runs in
    a thread.
    """
    counts = {}
    for name, kind, max_entries, key_size, fd in walks:
        try:
            if kind in _ARRAY_TYPES:
                counts[name] = max_entries
            else:
                counts[name] = loader.count_keys(fd, key_size, min(max_entries or MAP_WALK_LIMIT, MAP_WALK_LIMIT))
        finally:
            os.close(fd)
    return counts
