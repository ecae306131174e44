"""
The CPU sampler: which threads count at a tick and with what weight (fake clocks and stacks), and
one real profile of a thread burning CPU beside an idle one.
"""
import os
import select
import threading
import time
from types import SimpleNamespace

import pytest

from telegen.debug.cpu import CpuProfiler, ProfilerBusy, Sampler, SyscallReader
from telegen.debug.stacks import ThreadStack
from tests.support.pprof_read import parse_profile, sample_type_names, stacks_of

BUSY = (("app.busy", "/app.py", 5, 4), ("app.main", "/app.py", 1, 1))
OTHER = (("app.other", "/app.py", 7, 6), ("app.main", "/app.py", 1, 1))
IDLE = (("app.idle", "/app.py", 9, 8),)


class FakeThreads:
    """Two threads whose CPU clocks, stacks and current system calls the test sets."""

    def __init__(self):
        self.cpu = {1: 0, 2: 0}
        self.syscalls = {}
        self.stack = {1: BUSY, 2: IDLE}
        self.walked = None
        self.threads = [SimpleNamespace(ident=1, native_id=101, name="busy"),
                        SimpleNamespace(ident=2, native_id=102, name="idle")]

    def stacks(self, exclude=(), only=None):
        self.walked = set(only)
        every = [ThreadStack(1, "busy", 101, self.stack[1]), ThreadStack(2, "idle", 102, self.stack[2])]
        return [t for t in every if t.ident not in exclude and (only is None or t.ident in only)]

    def sampler(self):
        sampler = Sampler(self.syscalls.get, cpu_clock=self.cpu.get, stacks=self.stacks, threads=lambda: self.threads)
        sampler.sample()  # baselines
        return sampler

    def tick(self, sampler, busy_ns=10_000_000):
        self.cpu[1] += busy_ns
        sampler.sample()


def cpu_by_stack(sampler):
    """{(function names, thread): (samples, cpu ns)} of the encoded profile."""
    profile = parse_profile(sampler.profile(100, 1, 2).gzipped())
    return {(tuple(names), labels["thread"]): tuple(values) for names, values, labels in stacks_of(profile)}


def test_idle_threads_are_never_counted_or_walked():
    """The thread whose clock did not move has no hits, no CPU, and its stack is not even read."""
    fake = FakeThreads()
    sampler = fake.sampler()
    for _ in range(3):
        fake.tick(sampler, busy_ns=4_000_000)
    assert sampler.hits == {(1, BUSY): 3}
    assert fake.walked == {1}
    assert sampler.cpu_used == {1: 12_000_000}


def test_measured_cpu_is_split_over_stacks_by_hits():
    """12 ms used, 2 hits at one stack and 1 at another: 8 ms and 4 ms; the total is the clock's."""
    fake = FakeThreads()
    sampler = fake.sampler()
    fake.tick(sampler, busy_ns=4_000_000)
    fake.tick(sampler, busy_ns=4_000_000)
    fake.stack[1] = OTHER
    fake.tick(sampler, busy_ns=4_000_000)
    assert cpu_by_stack(sampler) == {
        (("app.busy", "app.main"), "busy"): (2, 8_000_000),
        (("app.other", "app.main"), "busy"): (1, 4_000_000),
    }


def test_first_sight_is_a_baseline_not_a_hit():
    """CPU a thread used before the profile started is not counted."""
    fake = FakeThreads()
    fake.cpu[1] = 5_000_000_000
    sampler = fake.sampler()
    assert sampler.hits == {} and sampler.cpu_used == {}


def test_cpu_no_tick_caught_is_kept_under_an_explicit_frame():
    """Used CPU but blocked in epoll_wait at every tick: the CPU is in the total, under the pseudo-frame."""
    fake = FakeThreads()
    sampler = fake.sampler()
    fake.syscalls[101] = "epoll_wait"
    fake.tick(sampler, busy_ns=3_000_000)
    assert sampler.hits == {} and sampler.blocked == 1
    assert cpu_by_stack(sampler) == {(("[no tick caught this thread on the CPU]",), "busy"): (0, 3_000_000)}


@pytest.mark.parametrize("answers", [["epoll_wait"], [None, "epoll_wait"]], ids=["before", "after"])
def test_a_thread_waiting_before_or_after_its_stack_is_read_is_not_a_hit(answers):
    """Waiting when the tick starts, or by the time its stack has been read: no hit either way."""
    fake = FakeThreads()
    sampler = fake.sampler()
    replies = iter(answers)
    sampler._syscall = lambda native: next(replies) if native == 101 else None
    fake.tick(sampler)
    assert sampler.hits == {} and sampler.blocked == 1


def test_excluded_and_vanished_threads_are_skipped():
    """The sampler's own thread is excluded; a thread whose clock is gone is ignored."""
    fake = FakeThreads()
    sampler = fake.sampler()
    fake.cpu[1] += 1
    fake.cpu[2] += 5
    sampler.sample(exclude={2})
    del fake.cpu[1]
    sampler.sample()
    assert sampler.hits == {(1, BUSY): 1}
    assert 2 not in sampler.cpu_used


def test_profile_has_go_cpu_types_and_thread_labels():
    """samples/count and cpu/nanoseconds, cpu the default, period from the rate, a comment with the totals."""
    fake = FakeThreads()
    sampler = fake.sampler()
    fake.tick(sampler)
    profile = parse_profile(sampler.profile(100, 1, 2).gzipped())
    assert sample_type_names(profile) == [("samples", "count"), ("cpu", "nanoseconds")]
    assert profile.string_table[profile.default_sample_type] == "cpu"
    assert profile.period == 10_000_000
    assert stacks_of(profile) == [(["app.busy", "app.main"], [1, 10_000_000], {"thread": "busy"})]
    assert profile.string_table[profile.comment[0]] == (
        "telegen: 10000000 ns of CPU used by the sampled threads, split by 1 on-CPU ticks; "
        "0 ticks found a thread blocked after it used CPU")


def test_syscall_reader_tells_epoll_wait_from_a_lock_wait():
    """A thread in epoll_wait is waiting; one on a lock (futex, like the GIL) is not; a gone one is None."""
    ready = threading.Event()
    release = threading.Event()
    wake_read, wake_write = os.pipe()
    poller = select.epoll()
    poller.register(wake_read, select.EPOLLIN)
    in_poll = threading.Thread(target=lambda: (ready.set(), poller.poll(10)), name="in-poll")
    on_lock = threading.Thread(target=release.wait, name="on-lock")
    reader = SyscallReader()
    in_poll.start()
    on_lock.start()
    try:
        ready.wait(5)
        deadline = time.monotonic() + 5
        while reader(in_poll.native_id) != "epoll_wait" and time.monotonic() < deadline:
            time.sleep(0.005)  # the thread reaches the syscall a moment after setting the event
        assert reader(in_poll.native_id) == "epoll_wait"
        assert reader(on_lock.native_id) is None
        assert reader(2 ** 22 + 12345) is None
    finally:
        release.set()
        os.write(wake_write, b"x")  # ends the poll
        in_poll.join()
        for fd in (wake_read, wake_write):
            os.close(fd)
        poller.close()
        on_lock.join()
        reader.close()


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


def _blocked(native_id):
    """True once the thread is asleep in the kernel (state S in /proc), past its start-up code."""
    with open(f"/proc/self/task/{native_id}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "S"


def test_real_profile_finds_the_burning_thread_and_not_the_sleeping_one():
    """Half a second of real sampling: the CPU goes to the burner's frames; the sleeper is absent."""
    done = threading.Event()
    sleeper = threading.Thread(target=done.wait, name="sleeper")
    sleeper.start()
    # A thread runs Python start-up code before it blocks: on a busy machine that could land after
    # the sampler's baseline and show as the sleeper's CPU. Sample only once it sleeps.
    deadline = time.monotonic() + 10
    while not _blocked(sleeper.native_id):
        assert time.monotonic() < deadline, "the sleeper thread never blocked"
        time.sleep(0.001)
    burner = threading.Thread(target=_burn, args=(time.monotonic() + 0.8,), name="burner")
    burner.start()
    try:
        data = CpuProfiler(None)._sample_for(0.5, threading.Event())
    finally:
        done.set()
        burner.join()
        sleeper.join()
    samples = stacks_of(parse_profile(data))
    threads = {labels["thread"] for _names, _values, labels in samples}
    assert "burner" in threads and "sleeper" not in threads
    burner_cpu = sum(v[1] for names, v, labels in samples if labels["thread"] == "burner")
    assert burner_cpu >= 200_000_000  # ran most of the 0.5 s (the GIL is shared with the sampler)
    assert any(f"{__name__}._burn" in names for names, _v, labels in samples if labels["thread"] == "burner")
