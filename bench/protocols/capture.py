"""
The database capture end to end: agent CPU and span throughput per protocol, from the real agent.

Starts Debian's PostgreSQL and redis-server (as the tests do), then for each capture mode the real
`twistd telegen` with eBPF capturing only those servers' ports, exporting OTLP/gRPC with gzip (the
default export, as bench/ebpf/run.py measures HTTP/1) to a receiver in this process, and drives each server
with its own benchmark client for a fixed number of operations: `pgbench -S` (libpq, simple query
protocol, one primary-key SELECT per transaction) and `redis-benchmark -t get` (one GET per
request, no pipelining). For each run it reports the operations the client made, the SERVER and
CLIENT spans of the server's port the receiver got, the agent's CPU (utime + stime from /proc) over
the run and its drain per operation, and the BPF run time of the capture's programs per operation
(kernel.bpf_stats_enabled, switched on for the run and restored). A run with no agent gives the
clients' own rate. bench/protocols/every.py runs the same measurement over every protocol.

--tls: the servers over TLS only (a self-signed certificate; PostgreSQL ssl=on, redis-server on a
tls-port), pgbench with sslmode=require and redis-benchmark --tls: the spans then come from the
OpenSSL uprobes' plaintext (docs/protocols.md, "Over TLS").

Usage (root): .venv/bin/python bench/protocols/capture.py [--ops 20000] [--modes socket,syscalls] [--tls]
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.support.agent_process import AgentProcess, wait_for  # noqa: E402
from tests.support.db_servers import Postgres, Redis  # noqa: E402
from tests.support.http_apps import self_signed  # noqa: E402
from tests.support.otlp_receiver import OtlpReceiver  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
SERVER, CLIENT = 2, 3     # Span.SPAN_KIND_*


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def bpf_run_ns(pid):
    """Summed run_time_ns and run_cnt of the BPF programs process pid holds."""
    total = count = 0
    for path in glob.glob(f"/proc/{pid}/fdinfo/*"):
        try:
            text = open(path).read()
        except OSError:
            continue
        if "prog_id:" in text and "run_time_ns:" in text:
            total += int(re.search(r"run_time_ns:\s+(\d+)", text).group(1))
            count += int(re.search(r"run_cnt:\s+(\d+)", text).group(1))
    return total, count


def pgbench(pg, ops, rate=None):
    """pgbench -S for `ops` transactions over 2 connections (throttled to `rate` per second in all with rate); seconds."""
    started = time.monotonic()
    proc = subprocess.Popen([f"{pg.bindir}/pgbench", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-S",
                             "-n", "-c", "2", "-t", str(ops // 2), *(["-R", str(rate)] if rate else []), "telegen"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PGSSLMODE="require" if pg.tls else "disable"))
    proc.wait()
    assert proc.returncode == 0
    return time.monotonic() - started


def redis_bench(redis, ops):
    """redis-benchmark GET, `ops` requests over 2 connections (it has no rate limit); seconds."""
    started = time.monotonic()
    proc = subprocess.Popen(["redis-benchmark", "-h", "127.0.0.1", "-p", str(redis.port), "-t", "get", "-n", str(ops),
                             "-c", "2", "-q", *(["--tls", "--insecure"] if redis.tls else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.wait()
    assert proc.returncode == 0
    return time.monotonic() - started


class Load:
    """One client against one server: `drive()` makes `ops` operations and returns the seconds it took;
    the spans counted are those with server.port == port; `protocol` names its /status/ebpf losses."""

    def __init__(self, name, protocol, port, ops, drive):
        self.name, self.protocol, self.port, self.ops, self.drive = name, protocol, port, ops, drive


def spans_of(receiver, port):
    """(SERVER, CLIENT) spans the receiver holds of the server on `port`."""
    counts = {SERVER: 0, CLIENT: 0}
    for _, span in receiver.spans():
        if span.kind in counts and any(kv.key == "server.port" and kv.value.int_value == port for kv in span.attributes):
            counts[span.kind] += 1
    return counts[SERVER], counts[CLIENT]


def run(mode, loads, receiver):
    """Rows (mode, load, ops/s, SERVER spans, CLIENT spans, agent CPU us/op, the same net of the idle agent's,
    idle agent CPU ms/s, BPF us/op, losses) of one agent's run
    (none with mode "off") over every load in turn."""
    tmp = tempfile.mkdtemp(prefix="telegen-bench-protocols-")
    agent = None
    if mode != "off":
        agent = AgentProcess(tmp, config={
            "otlp": {"endpoint": receiver.endpoint("grpc"), "protocol": "grpc", "insecure": True, "compression": "gzip"},
            "agent": {"ebpf": {"enabled": True, "capture": mode,
                               "network": {"tcp": False, "include_ports": [load.port for load in loads]}},
                      "host_metrics": {"interval": "15s"}}})
        agent.start()
        wait_for(lambda: agent.get("/ready").json()["checks"]["ebpf"] == "ok", timeout=300, message="ebpf ready")
    rows = []
    try:
        for load in loads:
            if agent is None:
                rows.append((mode, load, load.ops / load.drive(), "", "", "", "", "", "", ""))
                continue
            before = spans_of(receiver, load.port)
            t0, cpu0, (bpf0, _) = time.monotonic(), cpu_seconds(agent.process.pid), bpf_run_ns(agent.process.pid)
            seconds = load.drive()
            # Wait until the spans stop growing for longer than the export queue's batch_timeout
            # (5 s: a partial batch waits that long), then take the CPU. That last wait, with no new
            # span, gives the idle agent's CPU rate (its timers, host metrics), which the net column
            # takes off: at a fixed low rate it is a large part of the total.
            last, idle_from = None, None
            while True:
                time.sleep(6)
                counts = spans_of(receiver, load.port)
                t1, cpu1 = time.monotonic(), cpu_seconds(agent.process.pid)
                if counts == last:
                    break
                last, idle_from = counts, (t1, cpu1)
            bpf1, _ = bpf_run_ns(agent.process.pid)
            idle_rate = (cpu1 - idle_from[1]) / (t1 - idle_from[0])
            status = agent.get("/status/ebpf").json()
            losses = {k: v for k, v in {p["name"]: p["losses"] for p in status["protocols"]}[load.protocol].items() if v}
            if status["ringbuf"]["events_lost"]:
                losses["ring_lost(all)"] = status["ringbuf"]["events_lost"]
            rows.append((mode, load, load.ops / seconds, last[0] - before[0], last[1] - before[1],
                         (cpu1 - cpu0) / load.ops * 1e6, (cpu1 - cpu0 - idle_rate * (t1 - t0)) / load.ops * 1e6,
                         idle_rate * 1000, (bpf1 - bpf0) / load.ops / 1000, losses or "none"))
    finally:
        if agent is not None:
            agent.stop()
    return rows


def measure(loads, modes):
    """Run every load without the agent, then under one agent per capture mode; print the table."""
    receiver = OtlpReceiver().start()
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        stats = f.read().strip()
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("1")
        rows = []
        for mode in ["off"] + modes:
            rows += run(mode, loads, receiver)
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(stats)
        receiver.stop()
    print("| capture | client | ops | ops/s | SERVER spans | CLIENT spans | agent CPU us/op | net of idle"
          " | idle agent CPU ms/s | BPF us/op (all programs) | losses (cumulative) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, load, rate, server, client, cpu, net, idle, bpf, losses in rows:
        cells = [str(load.ops), f"{rate:,.0f}", str(server), str(client), *(f"{v:.1f}" if v != "" else "" for v in
                                                                             (cpu, net, idle)),
                 f"{bpf:.2f}" if bpf != "" else "", str(losses)]
        print(f"| {mode} | {load.name} | " + " | ".join(cells) + " |")


def setup_pgbench(pg):
    subprocess.run([f"{pg.bindir}/pgbench", "-i", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "telegen"],
                   check=True, capture_output=True, env=dict(os.environ, PGSSLMODE="require" if pg.tls else "disable"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--modes", default="socket,syscalls")
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    tls = self_signed(tempfile.mkdtemp(prefix="telegen-bench-tls-")) if args.tls else None
    pg, redis = Postgres(tls=tls), Redis(tls=tls)
    try:
        setup_pgbench(pg)
        measure([Load("pgbench -S", "postgresql", pg.port, args.ops, lambda: pgbench(pg, args.ops)),
                 Load("redis-benchmark GET", "redis", redis.port, args.ops, lambda: redis_bench(redis, args.ops))],
                args.modes.split(","))
    finally:
        pg.stop()
        redis.stop()


if __name__ == "__main__":
    main()
