"""
eBPF HTTP capture cost: nginx on loopback, agent off vs on, in the same run.

(a) saturation with wrk: requests/s and p99 without the agent and with it, alternated --rounds
    times (a fresh agent each time) and compared by their medians, because this shared machine
    drifts by tens of percent within minutes; also spans exported vs requests and the ring buffer
    losses the kernel counted.
(b) a fixed rate with h2load (default 5,000 req/s), --rate-rounds times with a fresh agent: the
    agent's CPU (% of one core, from /proc/<pid>/stat; median of the runs), its steady RSS, SERVER
    spans exported vs requests made, and nginx's CPU per request as the host's speed of the moment.

The agent is the real `twistd telegen` with every probe (process, http, tcp), exporting OTLP/gRPC
with gzip (or what --export names) to a receiver in this process (tests/support/otlp_receiver.py).
Run as root from the checkout:

    .venv/bin/python bench/ebpf/run.py [--rounds 3] [--seconds 8] [--rate 5000] [--rate-seconds 20] [--rate-rounds 3]
        [--export grpc+gzip [grpc+none http+gzip ...]] [--https]

--https: nginx with a self-signed certificate, wrk and h2load over TLS (both link OpenSSL), so
the agent's spans come from the OpenSSL uprobes (agent.ebpf.tls) on both sides.
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from opentelemetry.proto.trace.v1.trace_pb2 import Span  # noqa: E402

from tests.support.agent_process import AgentProcess, wait_for  # noqa: E402
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


def process_tree(pid):
    """pid and its descendants (nginx's master and its worker)."""
    pids = [pid]
    for p in pids:
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                pids.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


class CpuShares:
    """
    CPU of each party during a run, in % of one core: the server (nginx), the load generator
    (wrk, a reaped child), the bench process itself (it hosts the OTLP receiver) and the agent.
    Shows where the two cores go when throughput drops, instead of guessing.
    """

    def __init__(self, server_pid, agent_pid=None):
        self.pids = {"nginx": process_tree(server_pid)}
        if agent_pid:
            self.pids["agent"] = [agent_pid]
        self.t0 = time.monotonic()
        self.cpu0 = self._sample()

    def _sample(self):
        children, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        out = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}
        out["wrk"] = children.ru_utime + children.ru_stime
        out["bench"] = me.ru_utime + me.ru_stime
        return out

    def shares(self):
        wall = time.monotonic() - self.t0
        return {name: round(100 * (v - self.cpu0[name]) / wall, 1) for name, v in self._sample().items()}


SCHEME = "http"             # "https" with --https


def wrk(port, seconds, connections=32):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", f"{SCHEME}://127.0.0.1:{port}/ok"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    return {"rps": rps, "requests": total, "p99_ms": float(p99.group(1)) * scale}


def h2load(port, rate, seconds, clients=10):
    out = subprocess.run(["h2load", "--h1", f"-c{clients}", "-t1", f"--rps={rate // clients}", f"-D{seconds}",
                          f"{SCHEME}://127.0.0.1:{port}/ok"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out)
    return {"requests": int(m.group(4)), "rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))}


def spans_of(receiver, port):
    """(SERVER, CLIENT) spans of exchanges with nginx: nginx's side and the load generator's."""
    counts = {Span.SPAN_KIND_SERVER: 0, Span.SPAN_KIND_CLIENT: 0}
    for _, span in receiver.spans():
        if span.kind in counts:
            for kv in span.attributes:
                if kv.key == "server.port" and kv.value.int_value == port:
                    counts[span.kind] += 1
                    break
    return counts[Span.SPAN_KIND_SERVER], counts[Span.SPAN_KIND_CLIENT]


def settle(receiver, port, agent, timeout=60):
    """
    (server, client) span counts once everything queued is flushed and the counts stop growing.
    Flushed on every poll: events still in a ring buffer (a reader paused by the CPU governor
    drains them a window later) become spans after the first flush.
    """
    last, stable_since = None, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.post("/admin/flush")
        n = spans_of(receiver, port)
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since > 3:
            return n
        time.sleep(0.5)
    return last


def export_setting(text):
    """"grpc+gzip" -> ("grpc", "gzip"): an --export argument."""
    protocol, _, compression = text.partition("+")
    if protocol not in ("grpc", "http") or compression not in ("gzip", "none"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected grpc|http + gzip|none, e.g. grpc+gzip")
    return protocol, compression


def start_agent(tmp, receiver, args, export):
    """A fresh agent exporting with `export` = (otlp.protocol, otlp.compression)."""
    protocol, compression = export
    ebpf = {"enabled": True, "capture": args.capture, "tls": not args.no_tls, "network": {"tcp": not args.no_tcp}}
    if args.min_cpu is not None:
        ebpf["min_cpu"] = args.min_cpu
    agent = AgentProcess(tmp, config={
        "otlp": {"endpoint": receiver.endpoint(protocol), "protocol": protocol, "insecure": True,
                 "compression": compression},
        "agent": {"ebpf": ebpf, "host_metrics": {"interval": "15s"}}})
    agent.start()
    wait_for(lambda: agent.get("/ready").json()["checks"]["ebpf"] == "ok", timeout=300, message="probes attached")
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, agent.process.pid, args.nice)
    return agent


def saturated(agent, receiver, port, server_pid, seconds):
    """wrk against nginx with the agent on: throughput, the agent's CPU, spans and counted losses."""
    pid = agent.process.pid
    receiver.clear()
    lost0 = agent.get("/status/ebpf").json()["ringbuf"]["events_lost"]
    shares = CpuShares(server_pid, pid)
    run = wrk(port, seconds)
    run["cpu_pct"] = shares.shares()
    run["agent_cpu_pct"] = run["cpu_pct"]["agent"]
    run["spans"], run["client_spans"] = settle(receiver, port, agent)
    run["events_lost"] = agent.get("/status/ebpf").json()["ringbuf"]["events_lost"] - lost0
    run["counters"] = counters(agent)
    run["dropped"] = counted_drops(run["counters"])
    return run


def counted_drops(agent_counters):
    """
    Exchanges that reached the agent but not the receiver, each counted with a reason: spans
    dropped on export (queue_full after a backlog drains at once, ...) and events the decoder
    dropped. A fresh agent per run, so the totals are the run's.
    """
    return int(sum(v for k, v in agent_counters.items()
                   if k.startswith(("telegen_spans_dropped_total", "telegen_ebpf_events_dropped_total"))))


def fixed_rate(agent, receiver, port, server_pid, rate, seconds):
    """
    h2load at a fixed rate with the agent on: its CPU, steady RSS, spans and counted losses, and
    nginx's CPU per request (the same work every run: how fast the host is right now).
    """
    pid = agent.process.pid
    receiver.clear()
    sampler = Sampler(pid)
    sampler.start()
    lost0 = agent.get("/status/ebpf").json()["ringbuf"]["events_lost"]
    shares = CpuShares(server_pid, pid)
    fixed = h2load(port, rate, seconds)
    cpu = shares.shares()
    fixed["agent_cpu_pct"] = cpu["agent"]
    fixed["nginx_us_per_request"] = 1e4 * cpu["nginx"] / fixed["rps"]
    sampler.done.set()
    steady = sampler.samples[len(sampler.samples) // 2:]
    for part in ("rss", "anon", "bpf_maps"):
        fixed[f"{part}_mb_steady"] = statistics.median(s[part] for s in steady)
    fixed["rss_mb_max"] = max(s["rss"] for s in sampler.samples)
    fixed["spans"], fixed["client_spans"] = settle(receiver, port, agent)
    fixed["events_lost"] = agent.get("/status/ebpf").json()["ringbuf"]["events_lost"] - lost0
    fixed["counters"] = counters(agent)
    return fixed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--rounds", type=int, default=3, help="agent-off/agent-on saturation pairs")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--rate-seconds", type=int, default=20)
    parser.add_argument("--rate-rounds", type=int, default=3, help="fixed-rate runs, a fresh agent each")
    parser.add_argument("--export", nargs="+", type=export_setting, default=[("grpc", "gzip")],
                        metavar="PROTOCOL+COMPRESSION",
                        help="otlp settings of the agent (grpc+gzip, grpc+none, http+gzip, http+none); with several, "
                             "the fixed-rate runs alternate them round by round; saturation uses the first")
    parser.add_argument("--no-tcp", action="store_true", help="turn the tcp probe off (isolates the HTTP cost)")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the agent's reactor thread (yield CPU to apps)")
    parser.add_argument("--capture", choices=("auto", "socket", "syscalls"), default="auto", help="agent.ebpf.capture")
    parser.add_argument("--min-cpu", type=float, help="agent.ebpf.min_cpu (default: the agent's)")
    parser.add_argument("--https", action="store_true", help="nginx, wrk and h2load over TLS (spans from the OpenSSL uprobes)")
    parser.add_argument("--no-tls", action="store_true", help="agent.ebpf.tls off (no OpenSSL uprobes: with --https, the cost of the rest)")
    args = parser.parse_args()
    global SCHEME
    tmp = tempfile.mkdtemp(prefix="telegen-bench-")
    os.chmod(tmp, 0o755)
    tls = None
    if args.https:
        SCHEME = "https"
        tls = apps.self_signed(tmp)
    nginx, port = apps.nginx(os.path.join(tmp, "nginx"), tls=tls)
    receiver = OtlpReceiver().start()
    agent = None
    off, on = [], []
    try:
        apps.wait_listening(port)
        for _ in range(args.rounds):
            shares = CpuShares(nginx.pid)
            off.append(wrk(port, args.seconds))
            off[-1]["cpu_pct"] = shares.shares()
            agent = start_agent(tmp, receiver, args, args.export[0])
            on.append(saturated(agent, receiver, port, nginx.pid, args.seconds))
            agent.stop()
            agent = None
        fixed = {export: [] for export in args.export}
        for _ in range(args.rate_rounds):
            for export in args.export:
                agent = start_agent(tmp, receiver, args, export)
                fixed[export].append(fixed_rate(agent, receiver, port, nginx.pid, args.rate, args.rate_seconds))
                agent.stop()
                agent = None
    finally:
        if agent is not None:
            agent.stop()
        receiver.stop()
        nginx.stop()

    print(json.dumps({"off": off, "on": on, "fixed": {"+".join(k): v for k, v in fixed.items()}}, indent=2))
    print()
    print("| measure | agent off | agent on | ratio / target |")
    print("|---|---|---|---|")
    if args.rounds:
        saturation_rows(args, off, on)
    for export, runs in fixed.items():
        if runs:
            fixed_rate_rows(args, "+".join(export), runs)


def saturation_rows(args, off, on):
    off_rps = statistics.median(r["rps"] for r in off)
    on_rps = statistics.median(r["rps"] for r in on)
    requests, spans, client_spans, lost, dropped = (sum(r[k] for r in on) for k in (
        "requests", "spans", "client_spans", "events_lost", "dropped"))
    runs = lambda key, rows, fmt: ", ".join(format(r[key], fmt) for r in rows)  # noqa: E731
    print(f"| wrk saturation req/s, median of {args.rounds} (runs) | {off_rps:,.0f} ({runs('rps', off, ',.0f')}) "
          f"| {on_rps:,.0f} ({runs('rps', on, ',.0f')}) | {on_rps / off_rps:.2f} (target >= 0.90) |")
    print(f"| wrk p99 latency ms (runs) | {runs('p99_ms', off, '.2f')} | {runs('p99_ms', on, '.2f')} | |")
    for party in ("nginx", "wrk", "bench", "agent"):
        cells = [", ".join(format(r["cpu_pct"].get(party, 0), ".0f") for r in rows) for rows in (off, on)]
        print(f"| saturation: {party} CPU % of one core (runs) | {cells[0]} | {cells[1]} | |")
    # Every request is two exchanges (nginx's and wrk's), each one kernel event: a span, a counted
    # kernel loss, or counted by the agent as dropped.
    print(f"| saturation: requests / server + client spans / events lost / counted drops (all runs) | | {requests:,} / "
          f"{spans:,} + {client_spans:,} / {lost:,} / {dropped:,} | (spans + lost + dropped) / (2 x requests) = "
          f"{(spans + client_spans + lost + dropped) / (2 * requests):.3f} |")


def fixed_rate_rows(args, export, fixed):
    median = lambda key: statistics.median(r[key] for r in fixed)  # noqa: E731
    runs = lambda key, fmt: ", ".join(format(r[key], fmt) for r in fixed)  # noqa: E731
    requests, spans, lost = (sum(r[k] for r in fixed) for k in ("requests", "spans", "events_lost"))
    head = f"| h2load {args.rate}/s, {export}"
    print(f"{head}: achieved req/s (runs) | | {runs('rps', ',.0f')} | |")
    print(f"{head}: agent CPU % of one core, median of {len(fixed)} (runs) | | {median('agent_cpu_pct'):.1f} "
          f"({runs('agent_cpu_pct', '.1f')}) | target < 15 |")
    print(f"{head}: nginx us CPU per request (host speed, runs) | | {runs('nginx_us_per_request', '.1f')} | |")
    print(f"{head}: agent RSS MB steady, median (max) | | {median('rss_mb_steady'):.0f} "
          f"({max(r['rss_mb_max'] for r in fixed):.0f}) | target < 150 |")
    print(f"| of which anonymous / BPF map (ring buffer) pages | | {median('anon_mb_steady'):.0f} / "
          f"{median('bpf_maps_mb_steady'):.0f} | |")
    print(f"{head}: requests / server spans / events lost (all runs) | | {requests:,} / {spans:,} / {lost:,} | "
          f"spans {100 * spans / requests:.2f}% (target 100%) |")


if __name__ == "__main__":
    main()
