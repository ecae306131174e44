"""
Watch a running agent's HTTP ring buffer from outside: how full it gets, what the CPU governor
does meanwhile, and when the kernel counts a lost event, so a loss can be told apart as a full
ring (the reader fell behind) or a reserve that failed with room to spare.

It borrows the agent's ring buffer fd (pidfd_getfd, root), maps the consumer and producer
pages read-only and samples both positions every --interval; /metrics gives the governor's
budget and held count, /status/ebpf the loss count per ring buffer.

    .venv/bin/python bench/ebpf/ringwatch.py --pid PID --api http://127.0.0.1:PORT [--seconds 30]

Prints every loss as it is counted (with the ring's fill at that moment), then the highest fill
and a timeline of the first --timeline seconds (fill, budget, held, the reactor thread's wait share).
"""
import argparse
import ctypes
import json
import mmap
import os
import re
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from telegen.ebpf.cpu_governor import thread_schedstat  # noqa: E402
from telegen.ebpf.loader import fdinfo  # noqa: E402
from telegen.ebpf.ringbuf import PAGE, MappedRing  # noqa: E402
from telegen.hostmetrics import ProcReader  # noqa: E402

RINGBUF_MAP_TYPE = 27
SYS_PIDFD_GETFD = 438          # x86-64


def ring_fd(pid, size):
    """A copy of the agent's fd of its ring buffer map of `size` bytes (the HTTP one)."""
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        info = fdinfo(fd, pid)
        if info.get("map_type") == str(RINGBUF_MAP_TYPE) and info.get("max_entries") == str(size):
            libc = ctypes.CDLL(None, use_errno=True)
            copy = libc.syscall(SYS_PIDFD_GETFD, os.pidfd_open(pid), int(fd), 0)
            if copy < 0:
                raise OSError(ctypes.get_errno(), "pidfd_getfd")
            return copy
    raise SystemExit(f"no ring buffer of {size} bytes in process {pid}")


def get(url):
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read()


def reactor_thread(pid, host=ProcReader()):
    """(ns on a CPU, ns waiting for one) of the agent's main (reactor) thread, and the host's (idle, total) CPU seconds."""
    sched = thread_schedstat(f"/proc/{pid}/task/{pid}/schedstat")
    if sched is None:
        raise OSError(f"process {pid} is gone")
    cpus = host.cpu_and_boot()[0].values()
    return (*sched, sum(c["idle"] for c in cpus), sum(sum(c.values()) for c in cpus))


class Agent:
    """The governor's state and the per-ring loss counts, polled from the API in a thread."""

    def __init__(self, api, every):
        self.api = api
        self.budget = self.held = None
        self.lost = 0
        self.losses = []            # (time, {probe: events_lost})
        self._every = every

    def poll(self):
        while True:
            try:
                text = get(self.api + "/metrics").decode()
                self.budget = _sample(text, "telegen_ebpf_cpu_budget_cores")
                self.held = _sample(text, "telegen_ebpf_consumer_held_total")
                lost = _sample(text, "telegen_ebpf_ringbuf_lost_total") or 0
                if lost != self.lost:
                    status = json.loads(get(self.api + "/status/ebpf"))
                    self.losses.append((time.time(), {b["probe"]: b["events_lost"] for b in status["ringbuf"]["buffers"]}))
                    self.lost = lost
            except OSError:
                return              # the agent is gone
            time.sleep(self._every)


def _sample(text, name):
    found = re.search(r"^" + name + r" (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--pid", type=int, required=True, help="the agent's process id")
    parser.add_argument("--api", required=True, help="the agent's API, e.g. http://127.0.0.1:19090")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--size", type=int, default=16 * 1024 * 1024, help="agent.ebpf.ringbuf_size")
    parser.add_argument("--interval", type=float, default=0.002, help="seconds between fill samples")
    parser.add_argument("--timeline", type=float, default=4, help="seconds of timeline to print from the start")
    args = parser.parse_args()

    fd = ring_fd(args.pid, args.size)
    # Both pages read-only: the agent's consumer position is the agent's to move.
    ring = MappedRing(mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ, offset=0),
                      mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE), args.size)
    agent = Agent(args.api, 0.05)
    threading.Thread(target=agent.poll, daemon=True).start()
    samples, reported = [], 0
    end = time.time() + args.seconds
    while time.time() < end:
        try:
            sched = reactor_thread(args.pid)
        except OSError:
            break                   # the agent exited
        fill = ring.pending()
        samples.append((time.time(), fill, agent.budget, agent.held, sched))
        for at, per_ring in agent.losses[reported:]:
            recent = max(f for t, f, *_ in samples if t >= at - 2)
            print(f"{time.strftime('%H:%M:%S', time.localtime(at))} lost, per ring: {per_ring}; "
                  f"highest fill in the 2 s before: {recent / 1e6:.2f} of {args.size / 1e6:.2f} MB", flush=True)
        reported = len(agent.losses)
        time.sleep(args.interval)
    if not samples:
        raise SystemExit("no samples")
    top = max(samples, key=lambda s: s[1])
    print(f"highest fill {top[1] / 1e6:.2f} of {args.size / 1e6:.2f} MB at "
          f"{time.strftime('%H:%M:%S', time.localtime(top[0]))}; events lost {agent.lost:g}")
    start, shown, previous = samples[0][0], -1, None
    for t, fill, budget, held, sched in samples:
        if t - start > args.timeline:
            break
        step = int((t - start) * 5)
        if step == shown:
            continue
        shown = step
        if previous is not None:
            ran, waited = sched[0] - previous[0], sched[1] - previous[1]
            idle = (sched[2] - previous[2]) / ((sched[3] - previous[3]) or 1)
            print(f"  {t - start:5.2f} s  fill {fill / 1e6:6.2f} MB  budget {budget}  held {held}  "
                  f"wait share {waited / max(1, ran + waited):.2f}  host idle {idle:.2f}")
        previous = sched


if __name__ == "__main__":
    main()
