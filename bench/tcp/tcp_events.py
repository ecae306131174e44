"""
TCP telemetry costs, each against a baseline measured in the same run.

  micro:  user-space cost per TCP event (decode + filter + aggregate) vs a bare struct.unpack_from
          of the same bytes, and ProcessTable.on_exec (reads /proc/PID) per exec event.
  kernel: a child process opens and closes loopback connections as fast as it can, first with no
          agent, then with the `tcp` probe loaded through EbpfService in this process, then with no
          agent again: connections per second (ratio to the mean of the two no-agent runs), agent
          CPU per second of load, events received and lost.

Usage (root for `kernel`): .venv/bin/python bench/tcp/tcp_events.py [micro|kernel|all] [--seconds 5]
"""
import argparse
import os
import resource
import subprocess
import sys
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from telegen.config.loader import defaults  # noqa: E402
from telegen.discovery.processes import ProcessTable  # noqa: E402
from telegen.ebpf.tcp import EVENT, TcpProbe, decode  # noqa: E402
from telegen.selfmetrics import SelfMetrics  # noqa: E402

LOAD = """
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1024)
port = srv.getsockname()[1]
deadline = time.monotonic() + float(sys.argv[1]); n = 0
while time.monotonic() < deadline:
    c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
    c.close(); a.close(); n += 1
print(n / float(sys.argv[1]))
"""


class NullPipeline:
    """Accepts and forgets records (the pipeline's cost is measured by the export benchmarks)."""

    def submit(self, signal, resource_attrs, records):
        return len(records)


def micro(rounds=200_000):
    config = defaults()
    metrics = SelfMetrics()
    table = ProcessTable(config, metrics)
    probe = TcpProbe(config, NullPipeline(), table, metrics)
    raw = [EVENT.pack(2_000_000_000, os.getpid() + 1, 0, kind, 1_000_000_000, 1_500_000_000, 2, 40000 + i % 50,
                      8080, 1, 0, bytes([127, 0, 0, 1]) + bytes(12), bytes([10, 0, 0, i % 20]) + bytes(12))
           for i, kind in enumerate([1, 3] * 500)]
    base = min(timeit.repeat(lambda: [EVENT.unpack_from(r) for r in raw], number=rounds // len(raw), repeat=5))
    full = min(timeit.repeat(lambda: [probe.handle(decode(r)) for r in raw], number=rounds // len(raw), repeat=5))
    n = (rounds // len(raw)) * len(raw)
    print(f"per TCP event: baseline unpack {base / n * 1e6:.2f} us, decode+filter+aggregate {full / n * 1e6:.2f} us "
          f"({full / base:.1f}x baseline)")
    pid = os.getpid()
    t = min(timeit.repeat(lambda: table.on_exec(pid), number=200, repeat=5)) / 200
    print(f"per exec event: ProcessTable.on_exec (reads /proc/PID) {t * 1e6:.0f} us")


def load(seconds):
    out = subprocess.run([sys.executable, "-c", LOAD, str(seconds)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def kernel(seconds):
    from twisted.internet import reactor, threads

    from telegen.ebpf.service import EbpfService

    config = defaults()
    metrics = SelfMetrics()
    table = ProcessTable(config, metrics)
    probe = TcpProbe(config, NullPipeline(), table, metrics)
    ebpf = EbpfService(config, metrics, NullPipeline(), table, probes=[probe])
    results = {}

    def lost():
        return metrics.registry.get_sample_value("telegen_ebpf_ringbuf_lost_total") or 0

    def run():
        results["off"] = load(seconds)
        reactor.callFromThread(table.startService)
        reactor.callFromThread(ebpf.startService)
        while ebpf.ready_check() != "ok":
            time.sleep(0.1)
        events0 = metrics.registry.get_sample_value("telegen_ebpf_ringbuf_events_total") or 0
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        results["on"] = load(seconds)
        time.sleep(0.5)   # let the reactor drain the ring buffer
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        results["cpu"] = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / (seconds + 0.5)
        results["events"] = (metrics.registry.get_sample_value("telegen_ebpf_ringbuf_events_total") or 0) - events0
        results["lost"] = lost()
        reactor.callFromThread(ebpf.stopService)
        while ebpf.ready_check() == "ok":
            time.sleep(0.1)
        results["off_after"] = load(seconds)    # brackets the loaded run: the machine is shared and noisy

    d = threads.deferToThread(run)
    d.addBoth(lambda r: (reactor.stop(), r)[1])
    d.addErrback(lambda f: print(f.getTraceback()))
    reactor.run()
    off, on, after = results["off"], results["on"], results["off_after"]
    print(f"connections/s: no agent {off:.0f} before / {after:.0f} after, tcp probe on {on:.0f} "
          f"(ratio {on / ((off + after) / 2):.2f}); "
          f"agent CPU {results['cpu'] * 100:.1f}% of one core; events {results['events']:.0f} "
          f"(~{results['events'] / (on * seconds):.2f} per connection), lost {results['lost']:.0f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="all", choices=("micro", "kernel", "all"))
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.mode in ("micro", "all"):
        micro()
    if args.mode in ("kernel", "all"):
        kernel(args.seconds)


if __name__ == "__main__":
    main()
