"""
A/B of the HTTP capture's kernel side between bpf/ directories: the BPF run time per wrk request
against nginx (kernel.bpf_stats_enabled), alternated round by round, with the ring full (no
consumer: every reserve fails, the cost at saturation with the consumer held) and drained (a
thread empties the ring every millisecond: every reserve succeeds, the full path). How each
kernel route of issue 14 was measured: copy bpf/ before a change, then

    .venv/bin/python bench/ebpf/capture_ab.py --dirs before=/tmp/bpf_before after=bpf [--capture socket]
        [--rounds 5] [--seconds 2] [--h2load N]

With --h2load N the load is `h2load -n N -c 4 -m 10` against nginx speaking h2c (the HTTP/2
stream capture, bpf/l7_stream.h) instead of wrk, and the cost is per h2load request.

bpf_stats time includes time a program was preempted, so on a shared host the minimum over
rounds says more than the median; both are printed.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kernel_cost  # noqa: E402  (Emptier, stats_during_wrk, load_http)
from telegen.ebpf import loader  # noqa: E402
from tests.support import http_apps as apps  # noqa: E402


def h2load(n):
    """A load for kernel_cost.stats_during_wrk(): n requests by h2load, 10 streams in flight on each of 4 connections."""
    def run(port, _seconds):
        out = subprocess.run(["h2load", "-n", str(n), "-c", "4", "-m", "10", f"http://127.0.0.1:{port}/index.html"],
                             capture_output=True, text=True, check=True).stdout
        assert f"{n} succeeded" in out, out
        return {"requests": n}
    return run


def measure(capture, bpf_dir, drained, port, seconds, load=None):
    """(BPF ns per request of all the probe's programs, {program: ns per run}) for one wrk (or `load`) run."""
    bpf = kernel_cost.load_http(capture, bpf_dir)
    emptier = kernel_cost.Emptier(bpf) if drained else None
    try:
        if emptier:
            emptier.start()
        names = {p["id"]: p["name"] for p in loader.describe_programs(bpf)}
        per_program = kernel_cost.stats_during_wrk(os.getpid(), names, port, seconds, load)
        return sum(v[0] for v in per_program.values()), {k: round(v[2]) for k, v in per_program.items() if v[1] > 0.1}
    finally:
        if emptier:
            emptier.stop()
        bpf.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--dirs", nargs="+", required=True, metavar="NAME=DIR", help="bpf/ directories to compare")
    parser.add_argument("--capture", choices=("socket", "syscalls"), default="socket")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--h2load", type=int, metavar="N", help="h2load N requests against nginx h2c instead of wrk")
    args = parser.parse_args()
    dirs = dict(d.split("=", 1) for d in args.dirs)
    tmp = tempfile.mkdtemp(prefix="telegen-ab-")
    os.chmod(tmp, 0o755)
    nginx, port = apps.nginx(os.path.join(tmp, "nginx"), http2=bool(args.h2load))
    load = h2load(args.h2load) if args.h2load else None
    results = {}
    try:
        apps.wait_listening(port)
        for i in range(args.rounds):
            for drained in (False, True):
                for name, bpf_dir in dirs.items():
                    total, per_run = measure(args.capture, os.path.abspath(bpf_dir), drained, port, args.seconds, load)
                    results.setdefault((name, drained), []).append(total)
                    print(f"round {i} {name} {'drained' if drained else 'ring full'}: {total:,.0f} ns/request {per_run}",
                          file=sys.stderr, flush=True)
    finally:
        nginx.stop()
    print(f"| {args.capture} capture | ring | BPF ns per request, median | min | rounds |")
    print("|---|---|---|---|---|")
    for (name, drained), totals in results.items():
        print(f"| {name} | {'drained' if drained else 'full'} | {statistics.median(totals):,.0f} | {min(totals):,.0f} | "
              f"{', '.join(format(t, ',.0f') for t in totals)} |")


if __name__ == "__main__":
    main()
