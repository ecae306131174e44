"""
What HTTP capture costs the traced applications themselves: wrk against nginx on loopback with

  off     nothing attached (the baseline of each round)
  empty   empty programs on every syscall tracepoint the syscall capture uses: the price of
          syscall tracing itself on this kernel, the floor any design built on them pays
  http    bpf/http.c (agent.ebpf.capture: syscalls) loaded as the agent loads it, with no
          consumer: the ring buffer fills and every exchange becomes a counted loss, so this is
          the capture's kernel-side cost
  sock    the same for bpf/http_sock.c (agent.ebpf.capture: socket, tp_btf programs)
  sock_drained, http_drained  the same, but a thread in this process empties the ring every
          millisecond without reading it: every reserve succeeds and every event takes the
          capture's full path (copies, submit), its kernel cost when a consumer keeps up
  waker   http, plus a process that only sleeps 1 ms in a loop: does a third process that wakes up
          often (as the agent does, even idle) change what the capture costs nginx and wrk?
  agent   the real `twistd telegen` with its default config (every probe, the CPU governor,
          capture auto: socket on kernels with the hooks), exporting OTLP/gRPC to a receiver in
          this process
  agent_syscalls  the same with agent.ebpf.capture: syscalls
  agent@X  agent with agent.ebpf.min_cpu X, one variant per value of --min-cpu (in agent's place):
          what the consumer's budget under contention costs the server, against the share of
          requests still delivered as spans during the run (the last column)
  agent_stopped  agent, SIGSTOPped once its probes are attached: its kernel side (every probe,
          the ring soon full) without its consumer's CPU, wakeups and cache footprint, so
          agent vs agent_stopped is what the consumer costs and agent_stopped vs sock what the
          agent's other probes cost

alternated --rounds times (the host drifts by tens of percent within minutes, so each variant is
compared with the off run of its own round, then medians are taken). Per run: requests/s and the
CPU nginx and wrk spent per request (utime + stime over requests), which is what the programs
add to. Then one more `http` run with kernel.bpf_stats_enabled, for the BPF run time per request
of each program (bpf_stats itself costs a few tens of ns per run, so it is kept out of the
throughput runs), for each capture.

The server is nginx (`return 200`: ~10 us of CPU per request, the capture's worst case) or, with
`--server burn`, bench/ebpf/burn_server.c: a C epoll server in one process per CPU that spends a
calibrated `--burn-us` (100) of CPU per request, the issue's "realistic server". Run as root from
the checkout:

    .venv/bin/python bench/ebpf/kernel_cost.py [--rounds 5] [--seconds 5] [--variants off sock http ...]
        [--server nginx|burn] [--burn-us 100] [--min-cpu 0.05 0.03 ...]
"""
import argparse
import mmap
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as bench  # noqa: E402  (bench/ebpf/run.py: nginx, wrk, agent and CPU helpers)
from telegen.config.loader import defaults  # noqa: E402
from telegen.ebpf import loader  # noqa: E402
from telegen.ebpf.http_probe import HttpProbe, _tracepoints  # noqa: E402
from telegen.l7.protocols import NAMES  # noqa: E402
from tests.support import http_apps as apps  # noqa: E402
from tests.support.otlp_receiver import OtlpReceiver  # noqa: E402

VARIANTS = ("off", "empty", "http", "sock", "http_drained", "sock_drained", "waker", "agent", "agent_syscalls",
            "agent_stopped")
CAPTURES = {"http": "syscalls", "waker": "syscalls", "sock": "socket", "http_drained": "syscalls",
            "sock_drained": "socket", "agent": "auto", "agent_syscalls": "syscalls", "agent_stopped": "auto"}
WAKER = "import time\nwhile True:\n    time.sleep(0.001)\n"
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


class AgentDefaults:
    """The options bench/ebpf/run.py's start_agent reads: the agent as shipped (capture: auto)."""
    no_tcp = False
    no_tls = False
    nice = 0
    capture = "auto"
    min_cpu = None


class AgentSyscalls(AgentDefaults):
    capture = "syscalls"


def agent_options(variant):
    """The start_agent options of an agent variant: "agent", "agent_syscalls", "agent_stopped" or
    "agent@0.03" (the agent with agent.ebpf.min_cpu 0.03, from --min-cpu)."""
    if variant == "agent_syscalls":
        return AgentSyscalls
    if variant.startswith("agent@"):
        return type("AgentMinCpu", (AgentDefaults,), {"min_cpu": float(variant[len("agent@"):])})
    return AgentDefaults


def burn_server(tmp, burn_us):
    """(Child, port) of bench/ebpf/burn_server.c, built with gcc into tmp, once it listens."""
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "burn_server.c")
    binary = os.path.join(tmp, "burn_server")
    subprocess.run(["gcc", "-O2", "-o", binary, source], check=True)
    port = apps.free_port()
    child = apps.Child([binary, str(port), str(burn_us), str(os.cpu_count())], stdout=subprocess.PIPE, text=True)
    ready = child.proc.stdout.readline().split()
    print(f"burn_server: {burn_us} us per request, {ready[2]} iterations per us", file=sys.stderr, flush=True)
    return child, port


def load_http(capture, bpf_dir=None):
    """
    The HTTP probe's kernel half for `capture`, compiled and attached exactly as the agent does
    it (our pid is the self filter), with the port filter open as the agent's default config
    writes it (settings[0] = 1) and the protocol switches on. Until 2026-12-07 this left settings[0] at 0, which captures
    nothing: every connection was classified as not HTTP, so the `sock` and `http` variants
    measured the capture's reject path, not the capture.
    """
    config = defaults()
    config["agent"]["ebpf"]["capture"] = capture
    bpf = loader.compile_probe(HttpProbe(config, None, None, None), config, os.getpid(), bpf_dir=bpf_dir)
    settings = bpf[b"settings"]
    settings[settings.Key(0)] = settings.Leaf(1)
    # The protocol switches too (l7_enabled, as the agent writes them from agent.ebpf.protocols):
    # left at 0, HTTP/1 is off and every connection takes the reject path again.
    enabled = bpf[b"l7_enabled"]
    for proto, name in NAMES.items():
        enabled[enabled.Key(proto)] = enabled.Leaf(1 if config["agent"]["ebpf"]["protocols"].get(name) else 0)
    return bpf


class Emptier(threading.Thread):
    """
    Empties a BPF object's HTTP ring every millisecond by moving the consumer position to the
    producer's, reading nothing: the kernel side's full path at the price of a sleeping thread.
    (Records still being written are skipped too; the ring is 16 MiB, so the kernel does not
    reach them again before they are committed.)
    """

    def __init__(self, bpf):
        super().__init__(daemon=True)
        fd = loader.map_fds(bpf)["http_events"]
        self._consumer = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=mmap.PAGESIZE)
        self.done = threading.Event()

    def run(self):
        consumer, producer = memoryview(self._consumer)[:8].cast("Q"), memoryview(self._producer)[:8].cast("Q")
        while not self.done.wait(0.001):
            consumer[0] = producer[0]
        consumer.release()
        producer.release()

    def stop(self):
        self.done.set()
        self.join()
        self._consumer.close()
        self._producer.close()


def load_empty():
    from bcc import BPF
    text = "\n".join("TRACEPOINT_PROBE(%s, %s) { return 0; }" % tuple(tp.split(":")) for tp, _ in _tracepoints())
    return BPF(text=text)


def prog_stats(pid):
    """{kernel program id: (run_time_ns, run_cnt)} of the BPF programs process pid holds."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        if "prog_type" in text:
            out[int(re.search(r"prog_id:\s+(\d+)", text).group(1))] = (
                int(re.search(r"run_time_ns:\s+(\d+)", text).group(1)), int(re.search(r"run_cnt:\s+(\d+)", text).group(1)))
    return out


def context_switches(pid):
    """Context switches (voluntary and not) of all of process pid's threads so far: each one of the
    agent's is a wakeup that took a CPU from nginx or wrk."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
        except OSError:
            continue                       # a thread that ended
    return total


def measured(port, nginx_pid, seconds, receiver, agent_pid=None):
    """
    One wrk run: requests/s, the CPU nginx and wrk spent per request (us), the agent's CPU and
    wakeups, and the server's SERVER spans the receiver got during the run per request (what the
    agent still delivers at saturation; the rest is shed and counted).
    """
    shares = bench.CpuShares(nginx_pid, agent_pid)
    switches = context_switches(agent_pid) if agent_pid else 0
    receiver.clear()
    run = bench.wrk(port, seconds)
    cpu = shares.shares()
    switches = (context_switches(agent_pid) - switches) / seconds if agent_pid else 0.0
    spans = bench.spans_of(receiver, port)[0] if agent_pid else 0
    return {"rps": run["rps"], "nginx_us": 1e4 * cpu["nginx"] / run["rps"], "wrk_us": 1e4 * cpu["wrk"] / run["rps"],
            "agent_pct": cpu.get("agent", 0.0), "bench_pct": cpu["bench"], "agent_switches": switches,
            "span_share": spans / run["requests"]}


def one_run(variant, tmp, receiver, port, nginx_pid, seconds):
    bpf = agent = waker = emptier = None
    try:
        if variant == "empty":
            bpf = load_empty()
        elif variant in ("http", "sock", "waker", "http_drained", "sock_drained"):
            bpf = load_http(CAPTURES[variant])
        if variant.endswith("_drained"):
            emptier = Emptier(bpf)
            emptier.start()
        if variant == "waker":
            waker = subprocess.Popen([sys.executable, "-c", WAKER])
        elif variant.startswith("agent"):
            agent = bench.start_agent(tmp, receiver, agent_options(variant), ("grpc", "gzip"))
            if variant == "agent_stopped":
                os.kill(agent.process.pid, signal.SIGSTOP)
        return measured(port, nginx_pid, seconds, receiver, agent.process.pid if agent else None)
    finally:
        if agent is not None and variant == "agent_stopped":
            os.kill(agent.process.pid, signal.SIGCONT)
        if emptier is not None:
            emptier.stop()
        if bpf is not None:
            bpf.cleanup()
        if agent is not None:
            agent.stop()
        if waker is not None:
            waker.kill()
            waker.wait()


def stats_during_wrk(pid, names, port, seconds, load=None):
    """
    BPF run time per wrk request of each program in names ({program id: name}) that process pid
    holds, from bpf_stats switched on for this one run: {name: (ns per request, runs per request, ns per run)}.
    `load(port, seconds)` replaces wrk (it returns {"requests": n} too).
    """
    with open(BPF_STATS, "w") as f:
        f.write("1")
    try:
        before = prog_stats(pid)
        run = (load or bench.wrk)(port, seconds)
        after = prog_stats(pid)
    finally:
        with open(BPF_STATS, "w") as f:
            f.write("0")
    per_program = {}
    for prog_id, (ns, count) in after.items():
        ns -= before.get(prog_id, (0, 0))[0]
        count -= before.get(prog_id, (0, 0))[1]
        if count and prog_id in names:
            per_program[names[prog_id].replace("tracepoint__", "").replace(loader.TP_BTF_PREFIX, "tp_btf/")] = (
                ns / run["requests"], count / run["requests"], ns / count)
    return per_program


def bpf_time_per_request(port, seconds, capture, drained):
    """
    BPF run time per wrk request, per program of the HTTP probe for `capture`: with no consumer
    (the ring stays full, every reserve fails) or drained (every reserve succeeds).
    """
    bpf = load_http(capture)
    emptier = Emptier(bpf) if drained else None
    try:
        if emptier:
            emptier.start()
        names = {p["id"]: p["name"] for p in loader.describe_programs(bpf)}
        return stats_during_wrk(os.getpid(), names, port, seconds)
    finally:
        if emptier:
            emptier.stop()
        bpf.cleanup()


def agent_bpf_time_per_request(tmp, receiver, port, seconds, options):
    """The same with the real agent consuming (some reserves succeed and take the full path: copies, submits)."""
    agent = bench.start_agent(tmp, receiver, options, ("grpc", "gzip"))
    try:
        names = {p["id"]: p["name"] for p in agent.get("/status/ebpf").json()["programs"] if p["probe"] == "http"}
        return stats_during_wrk(agent.process.pid, names, port, seconds)
    finally:
        agent.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="off is always run")
    parser.add_argument("--server", choices=("nginx", "burn"), default="nginx",
                        help="nginx (~10 us of CPU per request) or burn_server.c (--burn-us per request)")
    parser.add_argument("--burn-us", type=float, default=100.0)
    parser.add_argument("--min-cpu", type=float, nargs="+", default=[],
                        help="run the agent variant once per agent.ebpf.min_cpu given (agent@0.05, agent@0.03, ...)")
    args = parser.parse_args()
    variants = ["off"] + [v for v in args.variants if v != "off"]
    if args.min_cpu:
        at = variants.index("agent") if "agent" in variants else len(variants)
        variants[at:at + 1] = [f"agent@{value:g}" for value in args.min_cpu]
    tmp = tempfile.mkdtemp(prefix="telegen-kcost-")
    os.chmod(tmp, 0o755)
    if args.server == "burn":
        server, port = burn_server(tmp, args.burn_us)
    else:
        server, port = apps.nginx(os.path.join(tmp, "nginx"))
    receiver = OtlpReceiver().start()
    rows = {v: [] for v in variants}
    try:
        apps.wait_listening(port)
        for _ in range(args.rounds):
            for variant in variants:
                rows[variant].append(one_run(variant, tmp, receiver, port, server.pid, args.seconds))
                r = rows[variant][-1]
                print(f"{variant}: {r['rps']:,.0f} req/s, {args.server} {r['nginx_us']:.2f} us/req, wrk {r['wrk_us']:.2f} us/req",
                      file=sys.stderr, flush=True)
        programs = {f"{capture} ({'drained' if drained else 'no consumer'})":
                    bpf_time_per_request(port, args.seconds, capture, drained)
                    for drained in (False, True) for capture in ("socket", "syscalls")}
        for variant in variants:
            if variant.startswith("agent") and variant != "agent_stopped":
                options = agent_options(variant)
                programs[f"{options.capture}, {variant}"] = agent_bpf_time_per_request(
                    tmp, receiver, port, args.seconds, options)
    finally:
        receiver.stop()
        server.stop()

    print(f"| variant | req/s, median | throughput vs off, median of per-round ratios | {args.server} us CPU/request | "
          "wrk us CPU/request | off's (nginx + wrk) CPU per request / this one's, median | "
          "agent % of a core | agent context switches/s | bench process (OTLP receiver) % of a core | "
          "SERVER spans received during the run / requests |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant in variants:
        runs = rows[variant]
        ratio = statistics.median(r["rps"] / off["rps"] for r, off in zip(runs, rows["off"]))
        # At saturation both cores are busy, so throughput follows the CPU nginx and wrk need per
        # request; this ratio is the same comparison with less of the host's noise in it.
        cpu_ratio = statistics.median((off["nginx_us"] + off["wrk_us"]) / (r["nginx_us"] + r["wrk_us"])
                                      for r, off in zip(runs, rows["off"]))
        print(f"| {variant} | {statistics.median(r['rps'] for r in runs):,.0f} | {ratio:.2f} "
              f"({', '.join(format(r['rps'] / off['rps'], '.2f') for r, off in zip(runs, rows['off']))}) | "
              f"{statistics.median(r['nginx_us'] for r in runs):.2f} | {statistics.median(r['wrk_us'] for r in runs):.2f} | "
              f"{cpu_ratio:.2f} | {statistics.median(r['agent_pct'] for r in runs):.1f} | "
              f"{statistics.median(r['agent_switches'] for r in runs):,.0f} | "
              f"{statistics.median(r['bench_pct'] for r in runs):.1f} | "
              f"{statistics.median(r['span_share'] for r in runs):.3f} |")
    for capture, per_program in programs.items():
        print()
        print(f"| capture {capture}: program | BPF ns per request | runs per request | ns per run |")
        print("|---|---|---|---|")
        for name, (per_request, runs, per_run) in sorted(per_program.items(), key=lambda kv: -kv[1][0]):
            if runs >= 0.01:
                print(f"| {name} | {per_request:.0f} | {runs:.2f} | {per_run:.0f} |")
        print(f"| total | {sum(p[0] for p in per_program.values()):.0f} | | |")


if __name__ == "__main__":
    main()
