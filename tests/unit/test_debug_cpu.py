"""
The CPU sampler: which threads count at a tick and with what weight (fake clocks and stacks), and
one real profile of a thread burning CPU beside an idle one.
"""
import threading
import time
from types import SimpleNamespace

import pytest

from telegen.debug.cpu import CpuProfiler, ProfilerBusy, Sampler, waiting_syscall
from telegen.debug.stacks import ThreadStack
from tests.unit.test_debug_pprof import parse_profile, sample_type_names, stacks_of

BUSY = (("app.busy", "/app.py", 5, 4), ("app.main", "/app.py", 1, 1))
IDLE = (("app.idle", "/app.py", 9, 8),)


class FakeThreads:
    """Threads whose CPU clocks, stacks and current system calls the test sets."""

    def __init__(self):
        self.cpu = {1: 0, 2: 0}
        self.syscalls = {}
        self.now = 0
        self.threads = [SimpleNamespace(ident=1, native_id=101), SimpleNamespace(ident=2, native_id=102)]

    def stacks(self, exclude=()):
        return [ThreadStack(1, "busy", 101, BUSY), ThreadStack(2, "idle", 102, IDLE)]

    def sampler(self):
        return Sampler(cpu_clock=self.cpu.get, stacks=self.stacks, syscall=self.syscalls.get,
                       threads=lambda: self.threads, clock=lambda: self.now)

    def tick(self, sampler, busy_ns=10_000_000):
        self.now += 10_000_000
        self.cpu[1] += busy_ns
        sampler.sample()


def test_only_threads_that_used_cpu_count_weighted_by_the_tick():
    """The idle thread never appears; each hit of the busy thread is worth the time since the last tick."""
    fake = FakeThreads()
    sampler = fake.sampler()
    sampler.sample()  # baselines
    for _ in range(3):
        fake.tick(sampler, busy_ns=4_000_000)
    assert sampler.counts == {("busy", BUSY): [3, 30_000_000]}


def test_first_sight_is_a_baseline_not_a_hit():
    """CPU a thread used before the profile started is not counted."""
    fake = FakeThreads()
    fake.cpu[1] = 5_000_000_000
    sampler = fake.sampler()
    sampler.sample()
    assert sampler.counts == {}


def test_a_thread_blocked_in_a_waiting_syscall_is_not_attributed():
    """Used CPU but now in epoll_wait: its stack is the wait, not the work; it is counted as blocked."""
    fake = FakeThreads()
    sampler = fake.sampler()
    sampler.sample()
    fake.syscalls[101] = "epoll_wait"
    fake.tick(sampler)
    assert sampler.counts == {}
    assert sampler.blocked == 1


def test_a_thread_waiting_before_the_stacks_were_read_is_not_attributed():
    """Waiting at the first read and running at the second (woke in between): not counted either."""
    fake = FakeThreads()
    sampler = fake.sampler()
    sampler.sample()
    answers = iter(["epoll_wait", None])
    sampler._syscall = lambda native: next(answers) if native == 101 else None
    fake.tick(sampler)
    assert sampler.counts == {} and sampler.blocked == 1


def test_excluded_and_vanished_threads_are_skipped():
    """The sampler's own thread is excluded; a thread whose clock is gone is ignored."""
    fake = FakeThreads()
    sampler = fake.sampler()
    sampler.sample(exclude={1})
    fake.now += 10_000_000
    fake.cpu[1] += 1
    del fake.cpu[2]
    sampler.sample(exclude={1})
    assert sampler.counts == {}


def test_profile_has_go_cpu_types_and_thread_labels():
    """samples/count and cpu/nanoseconds, cpu the default, period from the rate, a comment with the blocked ticks."""
    fake = FakeThreads()
    sampler = fake.sampler()
    sampler.sample()
    fake.tick(sampler)
    profile = parse_profile(sampler.profile(100, 1, 2).gzipped())
    assert sample_type_names(profile) == [("samples", "count"), ("cpu", "nanoseconds")]
    assert profile.string_table[profile.default_sample_type] == "cpu"
    assert profile.period == 10_000_000
    assert stacks_of(profile) == [(["app.busy", "app.main"], [1, 10_000_000], {"thread": "busy"})]
    assert "0 ticks found a thread blocked" in profile.string_table[profile.comment[0]]


def test_waiting_syscall_reads_this_process():
    """A thread parked in a sleep shows a waiting call; a vanished thread id gives None."""
    parked = threading.Event()
    release = threading.Event()

    def park():
        parked.set()
        release.wait()

    thread = threading.Thread(target=park, name="parked")
    thread.start()
    try:
        parked.wait(5)
        # Event.wait waits on a lock (futex), which deliberately does not count as waiting.
        assert waiting_syscall(thread.native_id) is None
        assert waiting_syscall(2 ** 22 + 12345) is None
    finally:
        release.set()
        thread.join()


class _NeverRuns:
    """A thread pool that keeps the work it is given, so the test decides when it runs."""

    def __init__(self):
        self.calls = []

    def callInThreadWithCallback(self, on_result, func, *args, **kwargs):
        self.calls.append((on_result, func, args, kwargs))


def test_one_profile_at_a_time_per_process():
    """A second profile, even from another CpuProfiler, is refused until the first finishes."""
    pool = _NeverRuns()
    reactor = SimpleNamespace(callFromThread=lambda f, *a, **kw: f(*a, **kw))
    first = CpuProfiler(reactor, threadpool=pool)
    d = first.profile(60)
    with pytest.raises(ProfilerBusy) as busy:
        CpuProfiler(reactor, threadpool=pool).profile(1)
    assert 58 <= busy.value.remaining <= 60
    stop = pool.calls[0][2][1]
    stop.set()  # ends the sampling at once
    on_result, func, args, kwargs = pool.calls[0]
    on_result(True, func(*args, **kwargs))
    data = []
    d.addCallback(data.append)
    assert data and data[0][:2] == b"\x1f\x8b"
    CpuProfiler(reactor, threadpool=pool).profile(1)  # free again
    pool.calls[-1][2][1].set()
    pool.calls[-1][1](*pool.calls[-1][2])


def _burn(deadline):
    total = 0
    while time.monotonic() < deadline:
        total += sum(i * i for i in range(200))
    return total


def test_real_profile_finds_the_burning_thread_and_not_the_sleeping_one():
    """Half a second of real sampling: the CPU goes to the burner's frames; the sleeper is absent."""
    deadline = time.monotonic() + 0.8
    burner = threading.Thread(target=_burn, args=(deadline,), name="burner")
    sleeper = threading.Thread(target=time.sleep, args=(0.8,), name="sleeper")
    burner.start()
    sleeper.start()
    try:
        data = CpuProfiler(None)._sample_for(0.5, threading.Event())
    finally:
        burner.join()
        sleeper.join()
    samples = stacks_of(parse_profile(data))
    threads = {labels["thread"] for _names, _values, labels in samples}
    assert "burner" in threads and "sleeper" not in threads
    burner_cpu = sum(v[1] for names, v, labels in samples if labels["thread"] == "burner")
    assert burner_cpu >= 200_000_000  # ran most of the 0.5 s (the GIL is shared with the sampler)
    assert any(f"{__name__}._burn" in names for names, _v, labels in samples if labels["thread"] == "burner")
