"""
The CPU profile: every Python thread's stack sampled at a fixed rate from a worker thread.

Why not simply every stack at every tick: sys._current_frames() shows every thread, idle ones
included (the reactor parked in epoll, pool threads waiting for work). So:

- How much CPU each thread used is measured, not sampled: its own clock (pthread_getcpuclockid)
  at every tick. The profile's total is the CPU the threads really used.
- Where it went is sampled: a tick counts a thread only if it used CPU since the previous tick and
  does not sit in a waiting system call (/proc/self/task/<tid>/syscall: epoll_wait, read ...)
  when the tick starts nor after its stack is read. Each thread's CPU is split over its stacks in
  proportion to those hits; CPU no tick caught goes to an explicit "[no tick caught ...]" frame.

The GIL: when the sampler wakes, the thread running Python has to hand it the GIL, so that thread
is seen in futex (waiting for the GIL) at the frame where it was running. futex therefore counts
as on the CPU; a thread waiting on a lock has used no CPU and drops out by the first rule. A thread
just woken from a wait but not yet on a CPU reads as running inside its blocking call, so on a
CPU-starved host some time lands on the waiting call's line (docs/debugging.md).
"""
import ctypes
import os
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


class SyscallReader:
    """
    The waiting system call each thread sits in, from /proc/self/task/<tid>/syscall.

    Why pread through ctypes.PyDLL on kept-open files: a PyDLL call keeps the GIL, so no other
    thread runs while a tick reads states and stacks (os.read would hand the GIL over, let a woken
    thread run, and make the sampler wait up to the 5 ms switch interval to get it back; a thread
    that wakes while the sampler holds the GIL is later seen queued for it at its blocking call).
    Each read costs about 3 us.
    """

    def __init__(self):
        self._libc = ctypes.PyDLL(None, use_errno=True)
        self._libc.pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
        self._libc.pread.restype = ctypes.c_ssize_t
        self._buffer = ctypes.create_string_buffer(32)
        self._fds = {}

    def __call__(self, native_id):
        """The waiting call's name, or None (running, waiting for the GIL or a lock, or gone)."""
        if native_id is None:
            return None
        fd = self._fds.get(native_id)
        if fd is None:
            try:
                fd = self._fds[native_id] = os.open(f"/proc/self/task/{native_id}/syscall", os.O_RDONLY)
            except OSError:
                return None
        size = self._libc.pread(fd, self._buffer, 32, 0)
        if size <= 0:  # the thread has exited
            os.close(self._fds.pop(native_id))
            return None
        first = self._buffer.raw[:size].split(b" ", 1)[0]
        return _WAITING_SYSCALLS.get(int(first)) if first.isdigit() else None

    def close(self):
        """Close the /proc files held open."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


# The stack given to CPU a thread used while no tick found it on the CPU.
UNSAMPLED = (("[no tick caught this thread on the CPU]", "", 0, 0),)


class Sampler:
    """
    Counts, per thread, the ticks that found it on the CPU at each stack, and the CPU it used.

    The profile spreads each thread's measured CPU time over its stacks in proportion to those
    hits, so the total is exact (the threads' own clocks) and only the split is sampled. A thread
    seen for the first time only sets its baseline: the CPU it used before the profile started is
    not the profile's.
    """

    def __init__(self, syscall, cpu_clock=thread_cpu_ns, stacks=current_stacks, threads=threading.enumerate):
        self._syscall = syscall
        self._cpu_clock = cpu_clock
        self._stacks = stacks
        self._threads = threads
        self._last_cpu = {}
        self.hits = {}  # (ident, stack) -> ticks
        self.cpu_used = {}  # ident -> nanoseconds
        self.names = {}  # ident -> thread name
        self.blocked = 0

    def sample(self, exclude=()):
        """
        Take one sample of every thread but those in exclude.

        The system calls are read first thing in the tick and again after the stacks: a thread
        waiting at either moment shows a stack that is not where it used the CPU, so it is not
        counted. Only the stacks of counted threads are walked (that is the costly part).
        """
        waiting_before = set()
        threads = []
        for thread in self._threads():
            if thread.ident is not None and thread.ident not in exclude:
                threads.append(thread)
                if self._syscall(thread.native_id) is not None:
                    waiting_before.add(thread.ident)
        running, seen = {}, {}
        for thread in threads:
            cpu = self._cpu_clock(thread.ident)
            if cpu is None:
                continue
            seen[thread.ident] = cpu
            used = cpu - self._last_cpu.get(thread.ident, cpu)
            if used <= 0:
                continue
            self.cpu_used[thread.ident] = self.cpu_used.get(thread.ident, 0) + used
            self.names[thread.ident] = thread.name
            if thread.ident in waiting_before:
                self.blocked += 1
            else:
                running[thread.ident] = thread.native_id
        self._last_cpu = seen
        for thread in self._stacks(exclude, only=running):
            if self._syscall(running[thread.ident]) is not None:
                self.blocked += 1
                continue
            key = (thread.ident, thread.stack)
            self.hits[key] = self.hits.get(key, 0) + 1

    def profile(self, hz, started_ns, duration_ns):
        """The profile: per thread, its CPU time split over its stacks by hits (Go's CPU sample types)."""
        total = sum(self.cpu_used.values())
        builder = ProfileBuilder(
            [("samples", "count"), ("cpu", "nanoseconds")],
            period_type=("cpu", "nanoseconds"), period=1_000_000_000 // hz,
            default_sample_type="cpu", time_nanos=started_ns, duration_nanos=duration_ns,
            comments=[f"telegen: {total} ns of CPU used by the sampled threads, split by {sum(self.hits.values())} "
                      f"on-CPU ticks; {self.blocked} ticks found a thread blocked after it used CPU"])
        per_thread = {}
        for (ident, stack), hits in self.hits.items():
            per_thread.setdefault(ident, []).append((stack, hits))
        for ident, used in self.cpu_used.items():
            labels = {"thread": self.names[ident]}
            stacks = per_thread.get(ident)
            if not stacks:
                builder.add(UNSAMPLED, [0, used], labels)
                continue
            thread_hits = sum(hits for _stack, hits in stacks)
            for stack, hits in stacks:
                builder.add(stack, [hits, used * hits // thread_hits], labels)
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
        reader = SyscallReader()
        try:
            sampler = Sampler(reader)
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
        finally:
            reader.close()
        return sampler.profile(self.hz, started_ns, duration_ns).gzipped()
