"""
EbpfService with MemoryReactor, a fake compiler and a fake BCC object: the loading/ready
states, failures that leave the rest running, status/summary/self-metrics agreeing, kernel
loss counters, stop.
"""
import os

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from telegen.config.loader import defaults
from telegen.ebpf import loader
from telegen.ebpf.cpu_governor import GROWTH, WINDOW
from telegen.ebpf.loader import LoadError
from telegen.ebpf.probe import Probe
from telegen.ebpf.service import MAP_COUNT_INTERVAL, EbpfService
from telegen.selfmetrics import SelfMetrics
from telegen.ebpf.ringbuf import MappedRing
from tests.support.ring import FakeTable, KernelSide


class FakeLost:
    """A per-CPU array: table[Key(slot)] -> one value per CPU."""

    Key = int

    def __init__(self, per_cpu):
        self.per_cpu = per_cpu

    def __getitem__(self, slot):
        return self.per_cpu[slot]


class FakeBPF:
    def __init__(self, lost):
        self.tables = {b"events": FakeTable(), b"process_events": FakeTable(), b"http_events": FakeTable(),
                       b"lost": FakeLost(lost)}
        self.cleaned = False

    def __getitem__(self, name):
        return self.tables[name]

    def cleanup(self):
        self.cleaned = True


class FakeProbe(Probe):
    source = "fake.c"

    def __init__(self, name, on=True):
        self.name = name
        self.on = on
        self.attached_to = None
        self.detached_called = False

    def enabled(self, config):
        return self.on

    def ring_buffers(self):
        return {"events": lambda raw: None}

    def attached(self, bpf):
        self.attached_to = bpf

    def detached(self):
        self.detached_called = True


@pytest.fixture(autouse=True)
def fake_kernel_facts(monkeypatch):
    """What loader reads from /proc/self/fdinfo and libbcc, for a fake BPF object."""
    monkeypatch.setattr(loader, "describe_programs", lambda bpf, uprobes=None: [
        {"name": "tracepoint__syscalls__sys_enter_read", "type": "tracepoint", "attached": True, "id": 101,
         "tracepoint": "syscalls:sys_enter_read"},
        {"name": "tracepoint__sock__inet_sock_set_state", "type": "tracepoint", "attached": True, "id": 102,
         "tracepoint": "sock:inet_sock_set_state"},
    ])
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]      # real fds: the service dups them
    names = dict(zip(("events", "lost", "conns", "inflight"), fds))
    monkeypatch.setattr(loader, "map_fds", lambda bpf: names)
    kinds = dict(zip(fds, (("ringbuf", 4096), ("percpu_array", 4), ("lru_hash", 1024), ("task_storage", 0))))
    monkeypatch.setattr(loader, "describe_map", lambda fd: {"type": kinds[fd][0], "max_entries": kinds[fd][1],
                                                            "id": 200 + fds.index(fd), "key_size": 8})
    walked = []
    monkeypatch.setattr(loader, "count_keys", lambda fd, key_size, limit: walked.append(fd) or 3)
    monkeypatch.setattr(MappedRing, "from_fd", classmethod(lambda cls, fd, size: KernelSide(size).ring))
    yield walked
    for fd in fds:
        os.close(fd)


class Harness:
    """The service plus control over its 'thread' (each compile is a Deferred the test fires)."""

    def __init__(self, probes, config=None, lost=((0, 0),)):
        self.config = config or defaults()
        self.metrics = SelfMetrics()
        self.reactor = MemoryReactorClock()
        self.calls = []
        self.bpfs = {}
        self.lost = [list(x) for x in lost]
        self.service = EbpfService(self.config, self.metrics, pipeline=None, processes=None, reactor=self.reactor,
                                   probes=probes, compile_probe=self.compile, run_in_thread=self.run_in_thread)

    def compile(self, probe, config, pid):
        self.bpfs[probe.name] = FakeBPF(self.lost)
        return self.bpfs[probe.name]

    def run_in_thread(self, fn, *args):
        d = defer.Deferred()
        self.calls.append((fn, args, d))
        return d

    def finish(self, error=None):
        fn, args, d = self.calls.pop(0)
        if error is not None:
            d.errback(error)
        else:
            d.callback(fn(*args))


def test_not_ready_while_loading_then_ok_with_readers_registered():
    probe = FakeProbe("http")
    h = Harness([probe])
    h.service.startService()
    assert h.service.ready_check() == "not ready: loading"
    assert h.service.status()["state"] == "loading"
    h.finish()
    assert h.service.ready_check() == "ok"
    assert probe.attached_to is h.bpfs["http"]
    assert [r.fileno() for r in h.reactor.readers] == [FakeTable.map_fd]


def test_contention_seen_while_compiling_is_forgotten_once_the_probes_are_loaded():
    """The reactor thread queued behind the agent's own compiler: that must not keep the budget at min_cpu."""
    h = Harness([FakeProbe("process"), FakeProbe("http")])
    h.service.startService()
    governor = h.service._governor
    governor._schedstat = lambda: (10**9, 0)       # this machine's own load is not what the test is about
    governor.budget, governor._wait_share = governor.min_cpu, 0.9     # as the windows during the compiles left them
    h.finish()
    h.finish()
    h.reactor.advance(WINDOW)
    assert governor.budget == governor.min_cpu + GROWTH


def test_map_entries_are_counted_off_the_reactor_thread_never_by_a_status_request(fake_kernel_facts):
    h = Harness([FakeProbe("http")])
    h.service.startService()
    h.finish()                                          # the compile
    status = h.service.status()
    assert {m["name"]: m["entries"] for m in status["maps"]}["http.conns"] is None
    assert status["map_entries_age_seconds"] is None and fake_kernel_facts == []
    fn, _, _ = h.calls[0]
    assert fn.__name__ == "_count_maps"                 # handed to the thread
    h.finish()
    assert len(fake_kernel_facts) == 1                  # one hash map walked
    h.service.status()
    h.service.status()
    assert len(fake_kernel_facts) == 1
    h.reactor.advance(MAP_COUNT_INTERVAL)
    h.finish()
    assert len(fake_kernel_facts) == 2
    assert 0 <= h.service.status()["map_entries_age_seconds"] < 5
    assert h.metrics.registry.get_sample_value("telegen_ebpf_map_entries_counted_timestamp_seconds") > 0


def test_status_summary_and_self_metrics_agree():
    h = Harness([FakeProbe("http")])
    h.service.startService()
    h.finish()
    h.finish()                                          # the first count of the map entries
    status = h.service.status()
    assert [(p["name"], p["type"], p["attached"], p["id"]) for p in status["programs"]] == [
        ("tracepoint__syscalls__sys_enter_read", "tracepoint", True, 101),
        ("tracepoint__sock__inet_sock_set_state", "tracepoint", True, 102)]
    assert {m["name"]: (m["type"], m["entries"], m["max_entries"]) for m in status["maps"]} == {
        "http.events": ("ringbuf", None, 4096), "http.lost": ("percpu_array", 4, 4), "http.conns": ("lru_hash", 3, 1024),
        "http.inflight": ("task_storage", None, 0)}      # per-thread entries cannot be walked: unknown, not 0
    assert status["ringbuf"]["size"] == h.config["agent"]["ebpf"]["ringbuf_size"]
    assert h.service.summary() == {"enabled": True, "programs_loaded": 2, "maps_created": 4,
                                   "ringbuf_size": h.config["agent"]["ebpf"]["ringbuf_size"]}
    sample = h.metrics.registry.get_sample_value
    assert sample("telegen_ebpf_programs_loaded", {"program_type": "tracepoint"}) == 2
    assert sample("telegen_ebpf_maps_created", {"map_type": "lru_hash"}) == 1
    assert sample("telegen_ebpf_map_entries", {"map_name": "http.conns"}) == 3
    assert sample("telegen_ebpf_map_entries", {"map_name": "http.inflight"}) is None


def test_status_shows_each_ring_buffers_fill_at_its_last_drain_and_the_highest(monkeypatch):
    kernels = []
    monkeypatch.setattr(MappedRing, "from_fd", classmethod(lambda cls, fd, size: kernels.append(KernelSide(size)) or kernels[-1].ring))
    h = Harness([FakeProbe("http")])
    h.service.startService()
    h.finish()
    [kernel], [reader] = kernels, h.service._loaded[0].readers
    kernel.submit(b"x" * 1016)                       # 1,024 bytes with its header
    reader.doRead()
    reader.doRead()
    [buffer] = h.service.status()["ringbuf"]["buffers"]
    assert (buffer["pending_bytes"], buffer["max_pending_bytes"]) == (0, 1024)


def test_a_failed_probe_is_reported_precisely_and_the_others_still_load():
    bad, good = FakeProbe("http"), FakeProbe("tcp")
    h = Harness([bad, good])
    h.service.startService()
    h.finish(LoadError("kernel headers missing: /lib/modules/x/build does not exist"))
    reason = "failed: http: kernel headers missing: /lib/modules/x/build does not exist"
    assert h.service.ready_check() == reason        # final at once, while tcp still loads
    h.finish()
    assert h.service.ready_check() == reason
    status = h.service.status()
    assert [(p["name"], p["state"]) for p in status["probes"]] == [("http", "failed"), ("tcp", "attached")]
    assert good.attached_to is not None and {p["probe"] for p in status["programs"]} == {"tcp"}


def test_kernel_loss_counters_feed_status_and_metrics_by_delta():
    h = Harness([FakeProbe("http")], lost=[(3, 2)])
    h.service.startService()
    h.finish()
    assert h.service.status()["ringbuf"]["events_lost"] == 5
    h.lost[0][:] = [4, 6]
    h.reactor.advance(1.0)          # the periodic poll
    assert h.metrics.registry.get_sample_value("telegen_ebpf_ringbuf_lost_total") == 10
    assert h.service.status()["ringbuf"]["events_lost"] == 10


def test_disabled_probes_and_disabled_ebpf():
    h = Harness([FakeProbe("http", on=False)])
    h.service.startService()
    assert h.calls == [] and h.service.ready_check() == "ok"
    config = defaults()
    config["agent"]["ebpf"]["enabled"] = False
    off = Harness([FakeProbe("http")], config=config)
    off.service.startService()
    assert off.calls == [] and off.service.ready_check() == "ok"
    assert off.service.status()["enabled"] is False and off.service.summary()["programs_loaded"] == 0


def test_stop_detaches_readers_and_cleans_up():
    probe = FakeProbe("http")
    h = Harness([probe])
    h.service.startService()
    h.finish()
    h.service.stopService()
    assert not h.reactor.readers
    assert probe.detached_called and h.bpfs["http"].cleaned
    assert h.metrics.ebpf_programs_loaded.collect()[0].samples == []


def test_a_probe_finishing_after_stop_is_cleaned_up():
    h = Harness([FakeProbe("http")])
    h.service.startService()
    h.service.stopService()
    h.finish()
    assert h.bpfs["http"].cleaned and not h.reactor.readers


class RecordingProbe(FakeProbe):
    """A FakeProbe whose ring buffer handler records (probe name, event)."""

    def __init__(self, name, seen, drains_first=False):
        super().__init__(name)
        self.seen = seen
        self.drains_first = drains_first

    def ring_buffers(self):
        return {f"{self.name}_events": lambda raw: self.seen.append((self.name, bytes(raw)))}


def test_the_drains_first_probes_rings_are_caught_up_before_any_other_ring_is_drained(monkeypatch):
    """
    A process's exec event precedes its HTTP events in time: with the process ring drained first,
    the table knows the process before its spans ask for their resource, whichever timer fires.
    """
    kernels = []

    def ring(cls, fd, size):
        kernels.append(KernelSide(size))
        return kernels[-1].ring
    monkeypatch.setattr(MappedRing, "from_fd", classmethod(ring))
    seen = []
    h = Harness([RecordingProbe("process", seen, drains_first=True), RecordingProbe("http", seen)])
    h.service.startService()
    h.finish()
    h.finish()
    process_ring, http_ring = kernels
    process_ring.submit(b"exec 7")
    http_ring.submit(b"exchange of 7")
    [http_reader] = [r for r in h.reactor.readers if r.name == "http_events"]
    http_reader.doRead()
    assert seen == [("process", b"exec 7"), ("http", b"exchange of 7")]
    h.service.stopService()
    http_ring.submit(b"after stop")
    http_reader.catch_up()                       # a stopped reader (and its unmapped ring) is left alone
    assert len(seen) == 2


class ShapedProbe(FakeProbe):
    """A probe whose -D flags follow ringbuf_size and which records the configs it is handed."""

    def __init__(self, name):
        super().__init__(name)
        self.reconfigured = []

    def cflags(self, config):
        return [f"-DSIZE={config['agent']['ebpf']['ringbuf_size']}"]

    def reconfigure(self, config):
        self.reconfigured.append(config)


def test_a_reload_reconfigures_in_place_unless_a_probe_would_compile_differently():
    probe = ShapedProbe("http")
    h = Harness([probe])
    h.service.startService()
    h.finish()
    h.finish()
    new = defaults()
    new["agent"]["ebpf"]["network"]["exclude_ports"] = [(8080, 8080)]
    new["agent"]["ebpf"].update(max_cpu=0.5, min_cpu=0.1, drain_interval=2.0)
    assert h.service.reconfigure(new) is True
    assert probe.reconfigured == [new] and h.calls == []               # nothing compiled again
    assert (h.service._governor.min_cpu, h.service._governor.max_cpu) == (0.1, 0.5)
    assert h.service._governor.budget <= 0.5
    assert all(r._drain.interval == 2.0 for st in h.service._loaded for r in st.readers)
    compiled_differently = defaults()
    compiled_differently["agent"]["ebpf"]["ringbuf_size"] = 1 << 20
    assert h.service.reconfigure(compiled_differently) is False
    assert probe.reconfigured == [new] and h.service.config is new      # a refusal changes nothing


class CapturingProbe(FakeProbe):
    """A probe that reports a capture mode, as HttpProbe does."""

    def capture_status(self):
        return {"mode": "socket", "reason": "auto: the socket-level tracepoints (tp_btf) loaded"}


def test_status_says_which_capture_runs_and_why_or_why_none_does():
    h = Harness([FakeProbe("process"), CapturingProbe("http")])
    h.service.startService()
    assert h.service.status()["capture"] == {"mode": None, "reason": "loading"}
    h.finish()
    h.finish()
    assert h.service.status()["capture"] == {"mode": "socket", "reason": "auto: the socket-level tracepoints (tp_btf) loaded"}
    failing = Harness([CapturingProbe("http")])
    failing.service.startService()
    failing.finish(LoadError("kernel BTF missing"))
    assert failing.service.status()["capture"] == {"mode": None, "reason": "kernel BTF missing"}
    none = Harness([FakeProbe("process"), CapturingProbe("http", on=False)])
    none.service.startService()
    assert none.service.status()["capture"] is None
