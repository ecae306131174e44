"""
Where the agent's CPU goes at a fixed request rate: the reactor thread's CPU time inside the ring
buffer drains (decoding, span templates and encoding, RED histograms), inside span submission
(which runs the export: request encoding and grpcio's call, its gzip included), inside each timer
and in the garbage collector, and in the rest of the process, measured with time.thread_time()
around those calls (and gc.callbacks).

nginx on loopback at --rate requests/s (h2load), the real agent with every probe exporting to a
receiver in this process, as bench/ebpf/run.py does; the agent runs through this file (--agent),
which wraps those methods before handing over to twistd. A SIGUSR2 makes it log the split since
the previous one and start again: one after --warmup seconds of load, one at the end.

    .venv/bin/python bench/ebpf/cpu_split.py [--rate 5000] [--seconds 20] [--warmup 3] [--export grpc+gzip]
"""
import argparse
import functools
import gc
import os
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.support.agent_process import wait_for  # noqa: E402

MARK = "cpu-split"


class Split:
    """Reactor-thread CPU seconds per labelled call since the last dump (calls nest: times are inclusive)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._start = self._now()

    @staticmethod
    def _now():
        return time.monotonic(), time.process_time(), time.thread_time()

    def wrap(self, cls, name, label):
        """Account cls.name's calls under label (a string, or a function of the call's arguments)."""
        original = getattr(cls, name)

        @functools.wraps(original)
        def accounted(*args, **kwargs):
            began = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                key = label(args) if callable(label) else label
                self.seconds[key] += time.thread_time() - began
                self.calls[key] += 1

        setattr(cls, name, accounted)

    def watch_gc(self):
        """Account the garbage collector's passes, per generation (they run inside whatever allocated)."""
        began = {}

        def on_gc(phase, info):
            if phase == "start":
                began[0] = time.thread_time()
            elif 0 in began:
                key = f"garbage collection, generation {info['generation']}"
                self.seconds[key] += time.thread_time() - began.pop(0)
                self.calls[key] += 1

        gc.callbacks.append(on_gc)

    def dump(self, *_):
        """Log one line per label (% of a core over the interval) and start a new interval."""
        wall, process, thread = (now - then for now, then in zip(self._now(), self._start))
        lines = [f"{MARK} total | {wall:.1f} s | process {100 * process / wall:.2f} | reactor thread {100 * thread / wall:.2f}"]
        lines += [f"{MARK} {key} | {self.calls[key]} | {100 * seconds / wall:.2f}"
                  for key, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1])]
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        self.seconds.clear()
        self.calls.clear()
        self._start = self._now()


def run_agent(twistd_args):
    """The agent with its hot paths accounted (this file run with --agent)."""
    from twisted.internet.base import ReactorBase
    from twisted.internet.task import LoopingCall
    from twisted.scripts.twistd import run

    from telegen.ebpf.http_probe import HttpProbe
    from telegen.ebpf.ringbuf import RingBufferReader
    from telegen.export.exporter import SignalExporter

    split = Split()
    split.wrap(RingBufferReader, "doRead", "ring drains: decode, spans, RED")
    split.wrap(HttpProbe, "submit_spans", "span submission, export included")
    split.wrap(SignalExporter, "_pump", "export: encode request, grpcio call (gzip)")
    split.wrap(ReactorBase, "runUntilCurrent", "timed and thread calls (submission included)")
    split.wrap(LoopingCall, "__call__", lambda args: "timer " + getattr(args[0].f, "__qualname__", "?"))
    split.watch_gc()
    signal.signal(signal.SIGUSR2, split.dump)
    sys.argv = ["twistd"] + twistd_args
    run()


def main():
    if sys.argv[1:2] == ["--agent"]:
        return run_agent(sys.argv[2:])
    import run as bench                                  # bench/ebpf/run.py: nginx, h2load, the agent's config
    from tests.support import http_apps as apps
    from tests.support.otlp_receiver import OtlpReceiver

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--export", type=bench.export_setting, default=("grpc", "gzip"))
    args = parser.parse_args()
    args.no_tcp, args.nice, args.capture = False, 0, "auto"

    class AccountedAgent(bench.AgentProcess):
        """The agent started through this file, so its hot paths are accounted."""

        def command(self):
            return [sys.executable, os.path.abspath(__file__), "--agent"] + super().command()[1:]

    bench.AgentProcess = AccountedAgent
    tmp = tempfile.mkdtemp(prefix="telegen-bench-")
    os.chmod(tmp, 0o755)
    nginx, port = apps.nginx(os.path.join(tmp, "nginx"))
    receiver = OtlpReceiver().start()
    agent = None
    try:
        apps.wait_listening(port)
        agent = bench.start_agent(tmp, receiver, args, args.export)
        load = threading.Thread(target=bench.h2load, args=(port, args.rate, args.seconds))
        load.start()
        time.sleep(args.warmup)
        agent.process.send_signal(signal.SIGUSR2)        # the split from here on
        load.join()
        agent.process.send_signal(signal.SIGUSR2)
        wait_for(lambda: agent.log().count(f"{MARK} total") >= 2, timeout=10, message="the agent's split")
        lines = [line.split(MARK, 1)[1].strip() for line in agent.log().splitlines() if MARK in line]
    finally:
        if agent is not None:
            agent.stop()
        receiver.stop()
        nginx.stop()
    last = lines[max(i for i, line in enumerate(lines) if line.startswith("total")):]
    _, wall, process, thread = (part.strip() for part in last[0].split("|"))
    print(f"h2load {args.rate}/s, {'+'.join(args.export)}, the last {wall} of load:")
    print()
    print("| where (on the reactor thread; nested rows are inside the ones above them) | calls | % of one core |")
    print("|---|---|---|")
    print(f"| the whole agent process | | {process.split()[-1]} |")
    print(f"| the reactor thread | | {thread.split()[-1]} |")
    for line in last[1:]:
        key, calls, share = (part.strip() for part in line.split("|"))
        print(f"| {key} | {calls} | {share} |")


if __name__ == "__main__":
    main()
