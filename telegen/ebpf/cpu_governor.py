# -*- test-case-name: tests.unit.test_cpu_governor -*-
"""
How much CPU the agent may spend consuming kernel events, decided again every window.

Why: on a host whose CPUs are saturated by the applications, every microsecond the agent spends
decoding and exporting is taken from them; measured here (bench/README.md), an agent that keeps
up with nginx at saturation costs it more than half its throughput, and niceness alone does not
help, because the agent runs in the scheduling gaps between client and server and delays their
wakeups. So under contention the agent consumes only agent.ebpf.min_cpu worth of events and lets
the kernel drop the rest of the ring buffer's overflow, each drop counted (events_lost): spans
plus counted losses still equal the requests. Without contention it may use up to
agent.ebpf.max_cpu, which a host with idle CPUs easily gives.

The contention signal is the agent's own scheduling delay: the share of the time its reactor
thread was runnable but waiting for a CPU (/proc/thread-self/schedstat). Unlike the host's idle
time or its pressure stall (PSI), it does not vanish when the agent backs off: whenever it runs,
it still queues behind the applications. The share is smoothed over windows (an EWMA, so one
scheduling hiccup is not a trend) and the budget follows AIMD, as TCP's window does: a contended
window halves it (down to min_cpu), an uncontended one adds GROWTH cores (up to max_cpu).
A reader whose drain finds the window's budget spent stops reading until the next window.

A window in which the thread hardly ran says nothing when a reader was held in it (the thread had
work; the budget stopped it), but counts as share 0 when none was: an idle thread takes nothing
from anyone. Keeping the last busy share through idleness left the budget at min_cpu for as long
as the agent stayed idle, so the next burst of traffic met a reader held to min_cpu and filled
the ring (measured: 15.9 of 16 MiB two seconds into a 5,000 req/s run; 2.2-5.4 MiB since). Counting held windows
as share 0 too made the budget climb at saturation, where the held thread barely runs: the agent
took 11-20 % of a core there instead of 5-7 %. For the same reason the service calls
forget_contention() once the probes are compiled: while BCC compiles, the reactor thread queues
behind the agent's own compiler thread, which says nothing about the applications. The budget
itself is not reset: it grows back by GROWTH per window, so an agent started on a saturated host
does not consume at max_cpu until the next contended windows halve it again.

The budget counts all the agent's CPU (process time), not only the draining: exporting the spans
of what was drained costs about as much again. A window that overspends starts the next one in
debt (a token bucket refilled by one window's budget per window, never above it and never more
than one window in debt: a one-off cost such as compiling the probes is not paid back by
starving the consumer for seconds), so over any few windows the agent stays at its budget.
"""
import time

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

WINDOW = 0.2            # seconds per budget decision
CONTENDED = 0.25        # wait share of the runnable time above which CPUs are contended
GROWTH = 0.1            # cores added per uncontended window
MIN_SAMPLE_NS = 2_000_000   # a window where the thread was runnable less than this was idle (or held)
SMOOTHING = 0.5         # weight of the newest window in the smoothed wait share


def thread_schedstat(path="/proc/thread-self/schedstat"):
    """(ns on a CPU, ns runnable but waiting for one) of the calling thread; None where unavailable."""
    try:
        with open(path) as f:
            run, wait = f.read().split()[:2]
        return int(run), int(wait)
    except (OSError, ValueError):
        return None


class CpuGovernor:
    """
    The per-window CPU budget shared by the agent's ring buffer readers.

    @param min_cpu: cores the consumer keeps when CPUs are contended.
    @param max_cpu: cores it may use otherwise.
    """

    def __init__(self, min_cpu, max_cpu, metrics, reactor, cpu_time=time.process_time, schedstat=thread_schedstat):
        self.min_cpu = min_cpu
        self.max_cpu = max_cpu
        self.budget = max_cpu
        self._metrics = metrics
        self._reactor = reactor
        self._cpu_time = cpu_time
        self._schedstat = schedstat
        self._window_cpu = 0.0
        self._tokens = 0.0
        self._sched = None
        self._wait_share = 0.0
        self._held = []
        self._loop = None

    def start(self):
        """Begin the first window."""
        self._window_cpu = self._cpu_time()
        self._tokens = self.budget * WINDOW
        self._sched = self._schedstat()
        self._metrics.ebpf_cpu_budget.set(self.budget)
        if self._sched is None:
            log.warn("no schedstat for the reactor thread: the event consumer's CPU budget stays at max_cpu")
        self._loop = LoopingCall(self._next_window)
        self._loop.clock = self._reactor
        self._loop.start(WINDOW, now=False).addErrback(lambda f: log.failure("CPU governor failed", f))

    def set_limits(self, min_cpu, max_cpu):
        """New bounds from a reload; the budget is clamped into them now and moves within them after."""
        self.min_cpu, self.max_cpu = min_cpu, max_cpu
        self.budget = min(max_cpu, max(min_cpu, self.budget))
        self._metrics.ebpf_cpu_budget.set(self.budget)

    def stop(self):
        """Stop deciding; held readers are the caller's to stop."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._held = []

    def may_consume(self):
        """Whether this window's CPU seconds (agent CPU time, all threads, since it began) are not all spent."""
        return self._cpu_time() - self._window_cpu < self._tokens

    def forget_contention(self):
        """Forget the wait seen so far (the agent's own doing); the budget grows back from where it is."""
        self._wait_share = 0.0
        self._sched = self._schedstat()

    def hold(self, reader):
        """Stop `reader` reading until the next window (its ring buffer fills; the kernel counts overflow)."""
        if reader not in self._held:
            reader.stopReading()
            self._held.append(reader)
            self._metrics.ebpf_consumer_held.inc()

    def _contended(self):
        sched = self._schedstat()
        if sched is None or self._sched is None:
            return False
        run, wait = sched[0] - self._sched[0], sched[1] - self._sched[1]
        self._sched = sched
        if run + wait >= MIN_SAMPLE_NS:
            self._wait_share += SMOOTHING * (wait / (run + wait) - self._wait_share)
        elif not self._held:
            self._wait_share -= SMOOTHING * self._wait_share         # idle: a share of 0
        return self._wait_share > CONTENDED

    def _next_window(self):
        if self._contended():
            self.budget = max(self.min_cpu, self.budget / 2)
        else:
            self.budget = min(self.max_cpu, self.budget + GROWTH)
        self._metrics.ebpf_cpu_budget.set(self.budget)
        now = self._cpu_time()
        allowance = self.budget * WINDOW
        self._tokens = max(-allowance, min(self._tokens - (now - self._window_cpu) + allowance, allowance))
        self._window_cpu = now
        held, self._held = self._held, []
        for reader in held:
            reader.resume()
