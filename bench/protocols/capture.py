"""
The database capture end to end: agent CPU and span throughput per protocol, from the real agent.

Starts Debian's PostgreSQL and redis-server (as the tests do), then for each capture mode the real
`twistd telegen` with eBPF capturing only those servers' ports, exporting OTLP/gRPC with gzip (the
default export, as bench/ebpf/run.py measures HTTP/1) to a receiver in this process, and drives each server
with its own benchmark client for a fixed number of operations: `pgbench -S` (libpq, simple query
protocol, one primary-key SELECT per transaction) and `redis-benchmark -t get` (one GET per
request, no pipelining). For each run it reports the operations the client made, the CLIENT spans
of that client's pid the receiver got, the agent's CPU (utime + stime from /proc) over the run and
its drain, and the BPF run time of the capture's programs per operation (kernel.bpf_stats_enabled,
switched on for the run and restored). A run with no agent gives the clients' own rate.

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


def pgbench(pg, ops):
    """pgbench -S for `ops` transactions over 2 connections; (pid, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen([f"{pg.bindir}/pgbench", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-S",
                             "-n", "-c", "2", "-t", str(ops // 2), "telegen"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, PGSSLMODE="require" if pg.tls else "disable"))
    proc.wait()
    assert proc.returncode == 0
    return proc.pid, time.monotonic() - started


def redis_bench(redis, ops):
    started = time.monotonic()
    proc = subprocess.Popen(["redis-benchmark", "-h", "127.0.0.1", "-p", str(redis.port), "-t", "get", "-n", str(ops),
                             "-c", "2", "-q", *(["--tls", "--insecure"] if redis.tls else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.wait()
    assert proc.returncode == 0
    return proc.pid, time.monotonic() - started


def spans_of(receiver, pid, system):
    return sum(1 for r, s in receiver.spans() if r.get("process.pid") == pid
               and any(kv.key == "db.system.name" and kv.value.string_value == system for kv in s.attributes))


def run(mode, pg, redis, ops, receiver):
    tmp = tempfile.mkdtemp(prefix="telegen-bench-db-")
    agent = None
    if mode != "off":
        agent = AgentProcess(tmp, config={
            "otlp": {"endpoint": receiver.endpoint("grpc"), "protocol": "grpc", "insecure": True, "compression": "gzip"},
            "agent": {"ebpf": {"enabled": True, "capture": mode,
                               "network": {"tcp": False, "include_ports": [pg.port, redis.port]}},
                      "host_metrics": {"interval": "15s"}}})
        agent.start()
        wait_for(lambda: agent.get("/ready").json()["checks"]["ebpf"] == "ok", timeout=300, message="ebpf ready")
    rows = []
    try:
        for name, system, load in (("pgbench -S", "postgresql", lambda: pgbench(pg, ops)),
                                   ("redis-benchmark GET", "redis", lambda: redis_bench(redis, ops))):
            if agent is None:
                _, seconds = load()
                rows.append((mode, name, ops / seconds, "", "", "", ""))
                continue
            cpu0, (bpf0, _) = cpu_seconds(agent.process.pid), bpf_run_ns(agent.process.pid)
            pid, seconds = load()
            # Wait until the spans stop growing for longer than the export queue's batch_timeout
            # (5 s: a partial batch waits that long), then take the CPU.
            last = -1
            while True:
                time.sleep(6)
                n = spans_of(receiver, pid, system)
                if n == last:
                    break
                last = n
            cpu1, (bpf1, _) = cpu_seconds(agent.process.pid), bpf_run_ns(agent.process.pid)
            status = agent.get("/status/ebpf").json()
            losses = {p["name"]: p["losses"] for p in status["protocols"]}[system]
            losses["ring_lost(all)"] = status["ringbuf"]["events_lost"]
            rows.append((mode, name, ops / seconds, n, (cpu1 - cpu0) / max(n, 1) * 1e6, (bpf1 - bpf0) / ops / 1000,
                         losses))
    finally:
        if agent is not None:
            agent.stop()
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--modes", default="socket,syscalls")
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    tls = self_signed(tempfile.mkdtemp(prefix="telegen-bench-tls-")) if args.tls else None
    pg, redis = Postgres(tls=tls), Redis(tls=tls)
    receiver = OtlpReceiver().start()
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        stats = f.read().strip()
    try:
        subprocess.run([f"{pg.bindir}/pgbench", "-i", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "telegen"],
                       check=True, capture_output=True, env=dict(os.environ, PGSSLMODE="require" if tls else "disable"))
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("1")
        rows = []
        for mode in ["off"] + args.modes.split(","):
            rows += run(mode, pg, redis, args.ops, receiver)
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(stats)
        pg.stop()
        redis.stop()
        receiver.stop()
    print(f"| capture | client | ops/s | spans (of {args.ops}) | agent CPU us/span | BPF us/op (all programs) | losses (cumulative) |")
    print("|---|---|---|---|---|---|---|")
    for mode, name, rate, spans, cpu, bpf, losses in rows:
        cells = [f"{rate:,.0f}", str(spans), f"{cpu:.1f}" if cpu != "" else "", f"{bpf:.2f}" if bpf != "" else "",
                 str(losses)]
        print(f"| {mode} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
