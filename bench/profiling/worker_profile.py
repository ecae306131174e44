"""
Where the profiler's worker spends its CPU: loads bpf/profile.c at 99 Hz in this process, keeps
both CPUs busy with burn.c, and runs the worker's window steps (telegen.profiling.worker: drain,
symbolize, encode, pprof files) under cProfile for --windows windows of --window seconds, with
resources as the agent would give them (pid only). Prints the top functions by own time, the
worker's CPU per window, and what the file sink's JSON worker would spend on the window's record.

Usage (root): .venv/bin/python bench/profiling/worker_profile.py [--windows 6] [--window 10] [--top 25]
"""
import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from telegen.config import defaults  # noqa: E402
from telegen.export.json_worker import otlp_json  # noqa: E402
from telegen.profiling.bpfmaps import BpfMap  # noqa: E402
from telegen.profiling.sampler import Sampler  # noqa: E402
from telegen.profiling.worker import Drainer, WindowBuilder  # noqa: E402
from profiler_cost import build_burner  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--window", type=float, default=10)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    profiling = dict(defaults()["agent"]["profiling"], enabled=True)
    with tempfile.TemporaryDirectory() as workdir:
        burner = build_burner(workdir)
        load = [subprocess.Popen([burner, "3600"]) for _ in range(os.cpu_count())]
        sampler = Sampler(profiling, os.getpid())
        sampler.load()
        try:
            maps = {name: BpfMap(fd, per_cpu=name == "drops") for name, fd in sampler.map_fds()}
            builder = WindowBuilder(profiling, workdir, Drainer(maps, False))
            builder.drain()                       # start from an empty window
            profile = cProfile.Profile()
            cpu = []
            for _ in range(args.windows):
                start = time.time()
                time.sleep(args.window)
                before = time.process_time()
                profile.enable()
                drained = builder.drain()
                built = builder.build(start, time.time(), {pid: ({"process.pid": pid}, True) for pid in drained["pids"]})
                profile.disable()
                cpu.append(time.process_time() - before)
                before = time.process_time()
                line = otlp_json("profiles", built["record"]) if built["record"] else b""
                json_cpu = time.process_time() - before
                print(f"window: {drained['samples']} samples, {len(drained['pids'])} pids, {built['profiles']} profiles, "
                      f"{cpu[-1] * 1000:.0f} ms CPU under cProfile ({100 * cpu[-1] / args.window:.2f} % of a core); "
                      f"record {len(built['record'] or b'')} bytes, its OTLP JSON ({len(line)} bytes) {json_cpu * 1000:.0f} ms",
                      flush=True)
            print(f"mean {100 * sum(cpu) / len(cpu) / args.window:.2f} % of a core")
            pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
        finally:
            sampler.detach()
            for p in load:
                p.terminate()
                p.wait()


if __name__ == "__main__":
    main()
