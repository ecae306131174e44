"""
What the debug endpoints cost the agent while they run.

Cases, each against a baseline measured in the same run and interleaved with it (A B A B ...) so
machine noise hits both alike:
  cpu:        a CPU-bound Python loop in the main thread with 8 idle threads around, without and
              with the CPU profiler sampling at 100 Hz (its cost is GIL time taken from the work);
              and the cost of one sampler tick.
  tracemalloc: an allocation-heavy loop (dicts, lists, small objects) without tracing, with
              tracemalloc at 1, 4 and the frames the heap endpoint uses; plus the memory
              tracemalloc itself holds per live block.
  heap:       how long one heap profile (snapshot, grouping, encoding) takes with the loop's live
              objects, against the stdlib's Snapshot.statistics("traceback") alone.

Usage: .venv/bin/python bench/debug/overhead.py [--rounds 5]
"""
import argparse
import os
import statistics
import sys
import threading
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from telegen.debug import heap  # noqa: E402
from telegen.debug.cpu import CpuProfiler, Sampler, SyscallReader  # noqa: E402


def cpu_work():
    total = 0
    for i in range(1_500_000):
        total += i * i % 7
    return total


def alloc_work():
    keep = []
    for i in range(200_000):
        keep.append({"id": i, "name": str(i), "tags": [i, i + 1]})
    return keep


def timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def with_profiler(f):
    """Run f while a CPU profile samples every thread (the profile thread is a plain thread here)."""
    stop = threading.Event()
    profiler = CpuProfiler(None)
    sampler = threading.Thread(target=profiler._run, args=(600, stop))
    sampler.start()
    try:
        return timed(f)
    finally:
        stop.set()
        sampler.join()


def with_tracing(frames, f):
    tracemalloc.start(frames)
    try:
        return timed(f)
    finally:
        tracemalloc.stop()


def report(name, baseline, cases):
    base = statistics.median(baseline)
    print(f"{name}: baseline {base * 1000:.1f} ms (median)")
    for label, values in cases.items():
        value = statistics.median(values)
        print(f"  {label:<28} {value * 1000:8.1f} ms  {value / base:5.2f}x")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    idle = threading.Event()
    idlers = [threading.Thread(target=idle.wait, name=f"idle-{i}") for i in range(8)]
    for t in idlers:
        t.start()
    try:
        base, profiled = [], []
        for _ in range(args.rounds):
            base.append(timed(cpu_work))
            profiled.append(with_profiler(cpu_work))
        report("cpu (1.5M-iteration loop, 8 idle threads)", base, {"CPU profile at 100 Hz": profiled})
        reader = SyscallReader()
        sampler = Sampler(reader)
        me = {threading.get_ident()}
        sampler.sample(me)
        ticks = 1000
        took = timed(lambda: [sampler.sample(me) for _ in range(ticks)])
        reader.close()
        print(f"  one sampler tick with {len(idlers) + 1} threads: {took / ticks * 1e6:.0f} us "
              f"({took / ticks * 100 * 100:.2f}% of a core at 100 Hz)")
    finally:
        idle.set()
        for t in idlers:
            t.join()

    base = []
    traced = {frames: [] for frames in (1, 4, heap.TRACE_FRAMES)}
    for _ in range(args.rounds):
        base.append(timed(alloc_work))
        for frames, values in traced.items():
            values.append(with_tracing(frames, alloc_work))
    report("tracemalloc (200k dicts with a str and a list)", base,
           {f"tracemalloc, {frames} frames": values for frames, values in traced.items()})

    tracemalloc.start(heap.TRACE_FRAMES)
    kept = alloc_work()
    traced, _peak = tracemalloc.get_traced_memory()
    overhead = tracemalloc.get_tracemalloc_memory()
    blocks = len(tracemalloc.take_snapshot().traces)
    start = time.perf_counter()
    data = heap.heap_profile().gzipped()
    took = time.perf_counter() - start
    start = time.perf_counter()
    tracemalloc.take_snapshot().statistics("traceback")
    stdlib = time.perf_counter() - start
    tracemalloc.stop()
    print(f"tracemalloc memory: {overhead / 1e6:.1f} MB for {traced / 1e6:.1f} MB traced in {blocks} blocks "
          f"({overhead / max(1, blocks):.0f} B per live block, {overhead / max(1, traced):.2f}x the traced bytes)")
    print(f"heap profile of that heap: {took * 1000:.0f} ms, {len(data)} bytes gzipped; "
          f"baseline Snapshot.statistics('traceback') alone: {stdlib * 1000:.0f} ms ({stdlib / took:.1f}x)")
    del kept


if __name__ == "__main__":
    main()
