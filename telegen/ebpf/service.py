# -*- test-case-name: tests.unit.test_ebpf_service -*-
"""
EbpfService: compiles the probes off the reactor thread, attaches them, reads their ring
buffers on the reactor, and reports exactly what the kernel holds (/status/ebpf, /ready).

Compilation takes seconds of CPU per probe, so probes load one after another in a thread
while the rest of the agent (API included) runs; /ready says "not ready: loading" meanwhile.
A probe that fails (no BCC, no kernel headers, a compiler error, the verifier) is reported
with its reason and the other probes and subsystems keep working.

Ring buffer loss: BPF ring buffers have no loss counter, so every bpf/*.c counts failed
reserves in its per-CPU `lost` array (bpf/telegen.h), one slot per ring buffer in the order
of Probe.ring_buffers(). A timer sums them every LOST_POLL seconds into
telegen_ebpf_ringbuf_lost_total; status() polls them first so it is never stale.
"""
import os

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from telegen.ebpf import loader
from telegen.ebpf.cpu_governor import CpuGovernor
from telegen.ebpf.loader import LoadError
from telegen.ebpf.ringbuf import RingBufferReader

log = Logger()

LOST_POLL = 1.0              # seconds between reads of the kernel's lost counters
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


class EbpfService(service.Service):
    """
    The `ebpf` child of the agent.

    @param probes: the Probe list; None means telegen.ebpf.probes.default_probes(...).
    @param compile_probe: (probe, config, self_pid) -> bcc.BPF, run in a thread; tests swap it.
    @param run_in_thread: (fn, *args) -> Deferred; defaults to the reactor's thread pool.
    """

    name = "ebpf"

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
        st.programs = loader.describe_programs(bpf)
        st.maps = {name: dict(loader.describe_map(fd), fd=fd) for name, fd in loader.map_fds(bpf).items()}
        for name, handler in st.probe.ring_buffers().items():
            reader = RingBufferReader(bpf, name, handler, self.metrics, reactor=self.reactor,
                                      drain_interval=self.config["agent"]["ebpf"]["drain_interval"],
                                      governor=self._governor,
                                      drain_before=() if st.probe.drains_first else self._first_readers)
            if st.probe.drains_first:
                self._first_readers.append(reader)
            st.readers.append(reader)
            st.lost.append(0)
            reader.start()
        st.probe.attached(bpf)
        st.state = "attached"
        log.info("eBPF probe {probe} attached: {n} programs", probe=st.probe.name, n=len(st.programs))

    def _release(self, st):
        for reader in st.readers:
            reader.stop()
            if reader in self._first_readers:
                self._first_readers.remove(reader)
        st.readers = []
        st.lost = []

    def stopService(self):
        service.Service.stopService(self)
        if self._lost_loop is not None and self._lost_loop.running:
            self._lost_loop.stop()
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

    def _update_gauges(self):
        programs, maps = {}, {}
        for st in self._loaded:
            if st.state != "attached":
                continue
            for p in st.programs:
                if p["attached"]:
                    programs[p["type"]] = programs.get(p["type"], 0) + 1
            for m in st.maps.values():
                maps[m["type"]] = maps.get(m["type"], 0) + 1
        for gauge, counts in ((self.metrics.ebpf_programs_loaded, programs), (self.metrics.ebpf_maps_created, maps)):
            gauge.clear()
            for kind, n in counts.items():
                gauge.labels(kind).set(n)

    def _entries(self, m):
        """Live entries: arrays are preallocated (all slots exist); hash maps are walked; ring buffers
        have none, and task storage cannot be walked (its entries live on the threads)."""
        if m["type"] in _ARRAY_TYPES:
            return m["max_entries"]
        if m["type"] in _UNCOUNTABLE_TYPES:
            return None
        return loader.count_keys(m["fd"], m["key_size"], min(m["max_entries"] or MAP_WALK_LIMIT, MAP_WALK_LIMIT))

    # ---- reporting ----

    def _attached(self):
        return [st for st in self._loaded if st.state == "attached"]

    def status(self):
        """The /status/ebpf document."""
        self.poll_lost()
        programs, maps, buffers = [], [], []
        size = self.config["agent"]["ebpf"]["ringbuf_size"]
        for st in self._attached():
            for p in st.programs:
                programs.append(dict(p, probe=st.probe.name))
            for name, m in sorted(st.maps.items()):
                entries = self._entries(m)
                qualified = f"{st.probe.name}.{name}"
                if entries is not None:
                    self.metrics.ebpf_map_entries.labels(qualified).set(entries)
                maps.append({"name": qualified, "type": m["type"], "entries": entries,
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
            "programs": programs,
            "maps": maps,
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

    def summary(self):
        """The /status "ebpf" object."""
        attached = self._attached()
        return {
            "enabled": self.enabled,
            "programs_loaded": sum(1 for st in attached for p in st.programs if p["attached"]),
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
