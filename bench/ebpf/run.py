"""
eBPF HTTP capture cost: nginx on loopback, agent off vs on, in the same run.

(a) saturation with wrk: requests/s and p99 without the agent, with it, without it again
    (the ratio uses the mean of the two agent-off runs to cancel drift on a shared machine);
    also spans exported vs requests and the ring buffer losses the kernel counted.
(b) a fixed rate with h2load (default 5,000 req/s): the agent's CPU (% of one core, from
    /proc/<pid>/stat), its steady RSS, and SERVER spans exported vs requests made.

The agent is the real `twistd telegen` with every probe (process, http, tcp), exporting OTLP/gRPC
to a receiver in this process (tests/support/otlp_receiver.py). Run as root from the checkout:

    .venv/bin/python bench/ebpf/run.py [--seconds 10] [--rate 5000] [--rate-seconds 20]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from opentelemetry.proto.trace.v1.trace_pb2 import Span  # noqa: E402

from tests.agent_process import AgentProcess, wait_for  # noqa: E402
from tests.support import http_apps as apps  # noqa: E402
from tests.support.otlp_receiver import OtlpReceiver  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid):
    """RSS, its anonymous part, and the part that is BPF maps (ring buffers are mmapped, data pages twice)."""
    rss = anon = maps = 0
    mapping = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts[0].endswith(":"):
                mapping = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:":
                rss += int(parts[1])
                if mapping == "anon_inode:bpf-map":
                    maps += int(parts[1])
            elif parts[0] == "Anonymous:":
                anon += int(parts[1])
    return {"rss": rss / 1024, "anon": anon / 1024, "bpf_maps": maps / 1024}


def counters(agent):
    """The drop and collection counters of the agent's /metrics that explain missing spans."""
    out = {}
    for line in agent.get("/metrics").body.decode().splitlines():
        if line.startswith(("telegen_queue_dropped_total", "telegen_ebpf_events_dropped_total",
                            "telegen_spans_collected_total", "telegen_spans_dropped_total", "telegen_ebpf_ringbuf")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class Sampler(threading.Thread):
    """RSS of a process once a second while a phase runs."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples = []
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(1.0):
            self.samples.append(memory_mb(self.pid))


def wrk(port, seconds, connections=32):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/ok"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    return {"rps": rps, "requests": total, "p99_ms": float(p99.group(1)) * scale}


def h2load(port, rate, seconds, clients=10):
    out = subprocess.run(["h2load", "--h1", f"-c{clients}", "-t1", f"--rps={rate // clients}", f"-D{seconds}",
                          f"http://127.0.0.1:{port}/ok"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out)
    return {"requests": int(m.group(4)), "rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))}


def server_spans(receiver, port):
    n = 0
    for _, span in receiver.spans():
        if span.kind == Span.SPAN_KIND_SERVER:
            for kv in span.attributes:
                if kv.key == "server.port" and kv.value.int_value == port:
                    n += 1
                    break
    return n


def settle(receiver, port, agent, timeout=60):
    """Span count once everything queued is flushed and the count stops growing."""
    agent.post("/admin/flush")
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = server_spans(receiver, port)
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since > 3:
            return n
        time.sleep(0.5)
    return last


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--rate-seconds", type=int, default=20)
    parser.add_argument("--no-tcp", action="store_true", help="turn the tcp probe off (isolates the HTTP cost)")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the agent's reactor thread (yield CPU to apps)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="telegen-bench-")
    os.chmod(tmp, 0o755)
    nginx, port = apps.nginx(os.path.join(tmp, "nginx"))
    receiver = OtlpReceiver().start()
    agent = None
    results = {}
    try:
        apps.wait_listening(port)
        results["off1"] = wrk(port, args.seconds)
        agent = AgentProcess(tmp, config={
            "otlp": {"endpoint": receiver.grpc_endpoint, "protocol": "grpc", "insecure": True},
            "agent": {"ebpf": {"enabled": True, "network": {"tcp": not args.no_tcp}}, "host_metrics": {"interval": "15s"}}})
        agent.start()
        wait_for(lambda: agent.get("/ready").json()["checks"]["ebpf"] == "ok", timeout=300, message="probes attached")
        pid = agent.process.pid
        if args.nice:
            os.setpriority(os.PRIO_PROCESS, pid, args.nice)

        lost0 = agent.get("/status/ebpf").json()["ringbuf"]["events_lost"]
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        results["on"] = wrk(port, args.seconds)
        results["on"]["agent_cpu_pct"] = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        results["on"]["spans"] = settle(receiver, port, agent)
        results["on"]["events_lost"] = agent.get("/status/ebpf").json()["ringbuf"]["events_lost"] - lost0

        receiver.clear()
        sampler = Sampler(pid)
        sampler.start()
        lost0 = agent.get("/status/ebpf").json()["ringbuf"]["events_lost"]
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        fixed = h2load(port, args.rate, args.rate_seconds)
        fixed["agent_cpu_pct"] = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        sampler.done.set()
        steady = sampler.samples[len(sampler.samples) // 2:]
        for part in ("rss", "anon", "bpf_maps"):
            fixed[f"{part}_mb_steady"] = statistics.median(s[part] for s in steady)
        fixed["rss_mb_max"] = max(s["rss"] for s in sampler.samples)
        fixed["spans"] = settle(receiver, port, agent)
        fixed["events_lost"] = agent.get("/status/ebpf").json()["ringbuf"]["events_lost"] - lost0
        results["fixed"] = fixed
        results["counters"] = counters(agent)
        agent.stop()
        agent = None
        results["off2"] = wrk(port, args.seconds)
    finally:
        if agent is not None:
            agent.stop()
        receiver.stop()
        nginx.stop()

    off_rps = (results["off1"]["rps"] + results["off2"]["rps"]) / 2
    on = results["on"]
    print(json.dumps(results, indent=2))
    print()
    print("| measure | agent off | agent on | ratio / target |")
    print("|---|---|---|---|")
    print(f"| wrk saturation req/s | {off_rps:,.0f} (runs {results['off1']['rps']:,.0f}, {results['off2']['rps']:,.0f}) "
          f"| {on['rps']:,.0f} | {on['rps'] / off_rps:.2f} (target >= 0.90) |")
    print(f"| wrk p99 latency ms | {results['off1']['p99_ms']:.2f} / {results['off2']['p99_ms']:.2f} | {on['p99_ms']:.2f} | |")
    print(f"| saturation: agent CPU % of one core | | {on['agent_cpu_pct']:.0f} | |")
    print(f"| saturation: requests / server spans / events lost | | {on['requests']:,} / {on['spans']:,} / {on['events_lost']:,} "
          f"| spans {100 * on['spans'] / on['requests']:.1f}% |")
    print(f"| h2load {args.rate}/s: achieved req/s | | {fixed['rps']:,.0f} | |")
    print(f"| h2load {args.rate}/s: agent CPU % of one core | | {fixed['agent_cpu_pct']:.1f} | target < 15 |")
    print(f"| h2load {args.rate}/s: agent RSS MB steady (max) | | {fixed['rss_mb_steady']:.0f} ({fixed['rss_mb_max']:.0f}) | target < 150 |")
    print(f"| of which anonymous / BPF map (ring buffer) pages | | {fixed['anon_mb_steady']:.0f} / {fixed['bpf_maps_mb_steady']:.0f} | |")
    print(f"| h2load {args.rate}/s: requests / server spans / events lost | | {fixed['requests']:,} / {fixed['spans']:,} / "
          f"{fixed['events_lost']:,} | spans {100 * fixed['spans'] / fixed['requests']:.1f}% (target 100%) |")


if __name__ == "__main__":
    main()
