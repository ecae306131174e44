#!/usr/bin/env python3
"""
The tailer's own CPU per line, without processes or sockets: N lines in a file, LogTailer and the
real ExportPipeline on a Clock with a sender that accepts at once; reports CPU seconds from the
file to encoded export requests (cutting, decoding, parsing, encoding, queueing, batching).

Usage: .venv/bin/python bench/logs/inprocess.py [plain|json] [--lines 200000] [--profile]
"""
import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet.defer import succeed  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from telegen.config import defaults  # noqa: E402
from telegen.export.endpoints import Target  # noqa: E402
from telegen.export.pipeline import ExportPipeline  # noqa: E402
from telegen.export.retry import SUCCESS, Outcome  # noqa: E402
from telegen.logs.tailer import LogTailer  # noqa: E402
from telegen.selfmetrics import SelfMetrics  # noqa: E402
from run import line  # noqa: E402 (the lines run.py writes)


class AcceptingSender:
    """Every request succeeds at once."""

    target = Target("http", "bench", False, "bench")

    def send(self, payload):
        return succeed(Outcome(SUCCESS, "200", True))

    def close(self):
        return None


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=("plain", "json"))
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="telegen-logbench-")
    path = os.path.join(work, "app.log")
    with open(path, "w") as f:
        f.write("".join(line(args.format, i, 1.5) for i in range(args.lines)))
    config = defaults()
    config["telegen"]["data_dir"] = os.path.join(work, "data")
    config["otlp"]["endpoint"] = "bench:4318"
    config["queues"]["logs"].update(capacity=10_000_000, max_bytes=1 << 31)
    config["agent"]["logs"].update(enabled=True, include=[path], start_at="beginning", format=args.format)
    clock, metrics = Clock(), SelfMetrics()
    pipeline = ExportPipeline(config, metrics, reactor=clock, sender_factory=lambda *_: AcceptingSender())
    tailer = LogTailer(config, pipeline, metrics, reactor=clock)
    tailer.startService()
    profile = cProfile.Profile() if args.profile else None
    started = time.process_time()
    if profile:
        profile.enable()
    while pipeline.status()["queues"]["logs"]["exported"] < args.lines:
        clock.advance(1)
    if profile:
        profile.disable()
    cpu = time.process_time() - started
    print(f"{args.format}: {args.lines} lines, {cpu:.2f} CPU s, {cpu / args.lines * 1e6:.2f} us/line")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main(sys.argv[1:])
