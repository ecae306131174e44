"""
The event consumer's CPU budget: AIMD on the reactor thread's scheduling delay, readers paused
for the rest of a window once it is spent and resumed at the next, with a Clock and fake CPU clocks.
"""
from twisted.internet.testing import MemoryReactorClock

from telegen.ebpf import ringbuf
from telegen.ebpf.cpu_governor import GROWTH, WINDOW, CpuGovernor, thread_schedstat
from telegen.ebpf.ringbuf import RingBufferReader
from telegen.selfmetrics import SelfMetrics
from tests.support.ring import FakeBPF, KernelSide


class Clocks:
    """Process CPU seconds and (run, wait) ns of the reactor thread, advanced by the test."""

    def __init__(self):
        self.cpu = 0.0
        self.run = 0
        self.wait = 0

    def spend(self, cpu_seconds=0.0, run_ms=0, wait_ms=0):
        self.cpu += cpu_seconds
        self.run += run_ms * 1_000_000
        self.wait += wait_ms * 1_000_000


class Reader:
    """A ring buffer reader as the governor handles it."""

    def stopReading(self):  # noqa: N802 (Twisted's name)
        pass

    def resume(self):
        pass


def make(min_cpu=0.05, max_cpu=1.0):
    clock, clocks, metrics = MemoryReactorClock(), Clocks(), SelfMetrics()
    governor = CpuGovernor(min_cpu, max_cpu, metrics, clock, cpu_time=lambda: clocks.cpu,
                           schedstat=lambda: (clocks.run, clocks.wait))
    governor.start()
    return governor, clock, clocks, metrics


def contend_down_to_min_cpu(clock, clocks, governor):
    """Six windows with half the runnable time queueing: the budget halves down to min_cpu (0.05)."""
    for _ in range(6):
        clocks.spend(run_ms=10, wait_ms=10)
        clock.advance(WINDOW)
    assert governor.budget == 0.05


def test_contended_windows_halve_the_budget_down_to_min_cpu_and_free_ones_grow_it_back():
    governor, clock, clocks, metrics = make()
    for expected in (1.0, 0.5, 0.25, 0.125, 0.0625, 0.05):
        clocks.spend(run_ms=10, wait_ms=10)          # half its runnable time queueing: contended once smoothed
        clock.advance(WINDOW)
        assert governor.budget == expected
    clocks.spend(run_ms=10, wait_ms=0)               # no waiting: the smoothed share halves, below 0.25
    clock.advance(WINDOW)
    assert governor.budget == 0.05 + GROWTH
    for _ in range(20):
        clock.advance(WINDOW)                        # idle windows (share 0) keep growing it
    assert governor.budget == 1.0
    assert metrics.registry.get_sample_value("telegen_ebpf_cpu_budget_cores") == 1.0


def test_a_thread_gone_idle_after_contention_is_no_longer_contended():
    """An idle window is share 0: the last busy share must not hold the budget at min_cpu while nothing runs."""
    governor, clock, clocks, _ = make()
    contend_down_to_min_cpu(clock, clocks, governor)
    clock.advance(WINDOW)                            # idle: the smoothed share (0.49) halves, below 0.25
    assert governor.budget == 0.05 + GROWTH
    for _ in range(10):
        clock.advance(WINDOW)
    assert governor.budget == 1.0


def test_a_window_the_budget_held_the_thread_in_says_nothing():
    """At saturation the held thread barely runs: that must not read as idle and grow the budget."""
    governor, clock, clocks, _ = make()
    contend_down_to_min_cpu(clock, clocks, governor)
    for _ in range(5):
        governor.hold(Reader())
        clocks.spend(run_ms=1)                       # held: under 2 ms runnable
        clock.advance(WINDOW)
        assert governor.budget == 0.05


def test_forgetting_contention_lets_the_budget_grow_back_from_where_it_is():
    """What the agent did to itself (compiling probes) is forgotten; the budget is not reset to max_cpu."""
    governor, clock, clocks, _ = make()
    contend_down_to_min_cpu(clock, clocks, governor)
    governor.forget_contention()
    assert governor.budget == 0.05
    clocks.spend(run_ms=10, wait_ms=3)               # 23 %: contended on top of the old share, not alone
    clock.advance(WINDOW)
    assert governor.budget == 0.05 + GROWTH


def test_one_contended_window_among_free_ones_is_smoothed_away():
    governor, clock, clocks, _ = make()
    clocks.spend(run_ms=10, wait_ms=4)               # a 29% hiccup: smoothed to 14%
    clock.advance(WINDOW)
    assert governor.budget == 1.0
    clocks.spend(run_ms=0, wait_ms=1)                # 1 ms of samples, all waiting: too little to say
    clock.advance(WINDOW)
    assert governor.budget == 1.0


def test_the_budget_is_cpu_seconds_per_window():
    governor, clock, clocks, _ = make(max_cpu=0.5)
    clocks.spend(cpu_seconds=0.5 * WINDOW - 0.001)
    assert governor.may_consume()
    clocks.spend(cpu_seconds=0.002)
    assert not governor.may_consume()
    clock.advance(WINDOW)                            # a new window starts from the CPU time now
    assert governor.may_consume()


def test_overspending_a_window_is_paid_back_in_the_next_ones_and_idle_windows_save_nothing():
    """Exporting what was drained is counted too: the debt of one window shrinks the next."""
    governor, clock, clocks, _ = make(max_cpu=0.5)      # 0.1 CPU seconds per window
    clocks.spend(cpu_seconds=0.17)                   # 0.07 s over
    clock.advance(WINDOW)                            # -0.07 + 0.1: 0.03 left for this window
    clocks.spend(cpu_seconds=0.029)
    assert governor.may_consume()
    clocks.spend(cpu_seconds=0.002)
    assert not governor.may_consume()
    clocks.spend(cpu_seconds=5.0)                    # a compile: the debt stops at one window
    clock.advance(WINDOW)
    clock.advance(WINDOW)
    assert not governor.may_consume()                # paid back
    clock.advance(WINDOW)
    assert governor.may_consume()
    for _ in range(5):
        clock.advance(WINDOW)
    clocks.spend(cpu_seconds=0.11)
    assert not governor.may_consume()                # never more than one window's worth


def test_a_reader_over_budget_pauses_until_the_next_window_and_the_rest_stays_in_the_ring(monkeypatch):
    """The drain stops within one slice of the budget running out; the next window resumes reading."""
    monkeypatch.setattr(ringbuf, "BUDGET_SLICE", 2)
    governor, clock, clocks, metrics = make(min_cpu=0.01, max_cpu=0.01)
    handled = []

    def handler(raw):
        handled.append(raw)
        clocks.spend(cpu_seconds=0.001)              # each event costs 1 ms; the window allows 2 ms
    kernel = KernelSide()
    for i in range(7):
        kernel.submit(b"e%d" % i)
    reader = RingBufferReader(FakeBPF(), "events", handler, metrics, reactor=clock, drain_interval=10,
                              ring=kernel.ring, governor=governor)
    reader.start()
    reader.doRead()
    assert handled == [b"e0", b"e1"] and reader not in clock.readers
    assert metrics.registry.get_sample_value("telegen_ebpf_consumer_held_total") == 1
    clock.advance(WINDOW)
    assert reader in clock.readers
    reader.doRead()
    assert handled == [b"e0", b"e1", b"e2", b"e3"] and kernel.consumed < kernel.position
    reader.stop()
    governor.stop()


def test_schedstat_of_this_thread_or_none(tmp_path):
    assert thread_schedstat() is None or all(v >= 0 for v in thread_schedstat())
    assert thread_schedstat(str(tmp_path / "missing")) is None
