"""
The CPU profile: every Python thread's stack sampled at a fixed rate from a worker thread.

Why not simply every stack at every tick: sys._current_frames() shows every thread, idle ones
included (the reactor parked in epoll, pool threads waiting for work). A thread counts at a tick
only if it is on the CPU then: it used CPU since the previous tick (its own clock,
pthread_getcpuclockid) and it does not sit in a waiting system call (read from
/proc/self/task/<tid>/syscall). Each hit is worth the time since the previous tick, so the
cpu/nanoseconds total estimates the CPU the threads used, as Go's SIGPROF samples do.

The GIL: when the sampler wakes, the thread running Python has to hand it the GIL, so that thread
is seen in futex (waiting for the GIL) at the frame where it was running. futex therefore counts
as on the CPU; a thread waiting on a lock has used no CPU and drops out by the first rule.
Ticks that found a thread blocked (before or after its stack was read) after it had used CPU are
not attributed (their time is represented by the ticks that hit the work); their number is in the
profile's comments.
"""
import platform
import threading
import time

from twisted.internet.threads import deferToThreadPool

from telegen.debug.pprof import ProfileBuilder
from telegen.debug.stacks import current_stacks

DEFAULT_HZ = 100

# Waiting system calls by number, per architecture. futex is left out on purpose: a thread waiting
# for the GIL is in futex, and it is exactly the running Python thread the sampler interrupted.
_WAITING_SYSCALLS = {
    "x86_64": {0: "read", 7: "poll", 23: "select", 35: "nanosleep", 43: "accept", 45: "recvfrom",
               47: "recvmsg", 61: "wait4", 230: "clock_nanosleep", 232: "epoll_wait", 270: "pselect6",
               271: "ppoll", 281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2"},
    "aarch64": {22: "epoll_pwait", 63: "read", 72: "pselect6", 73: "ppoll", 101: "nanosleep",
                115: "clock_nanosleep", 202: "accept", 207: "recvfrom", 212: "recvmsg",
                242: "accept4", 260: "wait4", 441: "epoll_pwait2"},
}.get(platform.machine(), {})


class ProfilerBusy(Exception):
    """A CPU profile is already running; remaining is how many seconds it has left."""

    def __init__(self, remaining):
        super().__init__(f"a CPU profile is already running ({remaining:.0f}s left)")
        self.remaining = remaining


def thread_cpu_ns(ident):
    """The CPU nanoseconds a thread has used, or None when it has gone."""
    try:
        return time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
    except (OSError, OverflowError):
        return None


def waiting_syscall(native_id):
    """The name of the waiting system call the thread sits in now, or None (running, or unknown)."""
    if native_id is None:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/syscall", "rb") as f:
            first = f.read(32).split(b" ", 1)[0]
    except OSError:
        return None
    return _WAITING_SYSCALLS.get(int(first)) if first.isdigit() else None


class Sampler:
    """
    Aggregates hits: (thread name, stack) -> [samples, cpu nanoseconds].

    A thread seen for the first time only sets its baseline: the CPU it used before the profile
    started is not the profile's.
    """

    def __init__(self, cpu_clock=thread_cpu_ns, stacks=current_stacks, syscall=waiting_syscall,
                 threads=threading.enumerate, clock=time.monotonic_ns):
        self._cpu_clock = cpu_clock
        self._stacks = stacks
        self._syscall = syscall
        self._threads = threads
        self._clock = clock
        self._last_cpu = {}
        self._last_tick = clock()
        self.counts = {}
        self.blocked = 0

    def _busy_threads(self, exclude):
        """ident -> native id of the threads that used CPU since the previous tick."""
        busy, seen = {}, {}
        for thread in self._threads():
            if thread.ident in exclude or thread.ident is None:
                continue
            cpu = self._cpu_clock(thread.ident)
            if cpu is None:
                continue
            seen[thread.ident] = cpu
            if cpu > self._last_cpu.get(thread.ident, cpu):
                busy[thread.ident] = thread.native_id
        self._last_cpu = seen
        return busy

    def sample(self, exclude=()):
        """
        Take one sample of every thread but those in exclude.

        The system call is read before and after the stacks are taken: a thread that was waiting
        at either moment may show a stack that is not where it used the CPU, so it is not counted.
        """
        now = self._clock()
        elapsed, self._last_tick = now - self._last_tick, now
        busy = self._busy_threads(exclude)
        waiting_before = {ident for ident, native in busy.items() if self._syscall(native) is not None}
        for thread in self._stacks(exclude):
            if thread.ident not in busy:
                continue
            if thread.ident in waiting_before or self._syscall(busy[thread.ident]) is not None:
                self.blocked += 1
                continue
            entry = self.counts.setdefault((thread.name, thread.stack), [0, 0])
            entry[0] += 1
            entry[1] += elapsed

    def profile(self, hz, started_ns, duration_ns):
        """The samples as a ProfileBuilder with Go's CPU sample types."""
        builder = ProfileBuilder(
            [("samples", "count"), ("cpu", "nanoseconds")],
            period_type=("cpu", "nanoseconds"), period=1_000_000_000 // hz,
            default_sample_type="cpu", time_nanos=started_ns, duration_nanos=duration_ns,
            comments=[f"telegen: {self.blocked} ticks found a thread blocked after it used CPU; not attributed"])
        for (name, stack), values in self.counts.items():
            builder.add(stack, values, {"thread": name})
        return builder


class CpuProfiler:
    """
    Runs a CPU profile on a reactor thread-pool thread so the reactor keeps serving while it samples.

    At most one profile runs per process, whatever the number of CpuProfiler objects: sampling
    already sees every thread, and two samplers would only double the cost. The deadline of the
    running profile is therefore a class attribute, cleared by the sampling thread when it ends.
    """

    _deadline = None

    def __init__(self, reactor, hz=DEFAULT_HZ, threadpool=None):
        self._reactor = reactor
        self._threadpool = threadpool
        self.hz = hz

    def profile(self, seconds, stop=None):
        """
        Sample for seconds (or until the threading.Event stop is set).

        Returns a Deferred firing with the gzipped profile.proto; raises ProfilerBusy at once if
        a profile is running.
        """
        deadline = CpuProfiler._deadline
        if deadline is not None:
            raise ProfilerBusy(max(0.0, deadline - time.monotonic()))
        CpuProfiler._deadline = time.monotonic() + seconds
        pool = self._threadpool or self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, self._run, seconds, stop or threading.Event())

    def _run(self, seconds, stop):
        """The sampling loop (in a worker thread); returns the gzipped profile."""
        try:
            return self._sample_for(seconds, stop)
        finally:
            CpuProfiler._deadline = None

    def _sample_for(self, seconds, stop):
        sampler = Sampler()
        me = {threading.get_ident()}
        interval = 1.0 / self.hz
        started_ns = time.time_ns()
        start = time.monotonic()
        end = start + seconds
        next_tick = start
        sampler.sample(me)  # baselines
        while True:
            next_tick += interval
            wait = min(next_tick, end) - time.monotonic()
            if wait > 0 and stop.wait(wait):
                break
            sampler.sample(me)
            now = time.monotonic()
            if now >= end:
                break
            next_tick = max(next_tick, now - interval)  # fell behind (GIL): do not burst
        duration_ns = int((time.monotonic() - start) * 1e9)
        return sampler.profile(self.hz, started_ns, duration_ns).gzipped()
