"""
What HTTP capture costs the traced applications themselves: wrk against nginx on loopback with

  off     nothing attached (the baseline of each round)
  empty   empty programs on every syscall tracepoint the syscall capture uses: the price of
          syscall tracing itself on this kernel, the floor any design built on them pays
  http    bpf/http.c (agent.ebpf.capture: syscalls) loaded as the agent loads it, with no
          consumer: the ring buffer fills and every exchange becomes a counted loss, so this is
          the capture's kernel-side cost
  sock    the same for bpf/http_sock.c (agent.ebpf.capture: socket, tp_btf programs)
  waker   http, plus a process that only sleeps 1 ms in a loop: does a third process that wakes up
          often (as the agent does, even idle) change what the capture costs nginx and wrk?
  agent   the real `twistd telegen` with its default config (every probe, the CPU governor,
          capture auto: socket on kernels with the hooks), exporting OTLP/gRPC to a receiver in
          this process
  agent_syscalls  the same with agent.ebpf.capture: syscalls

alternated --rounds times (the host drifts by tens of percent within minutes, so each variant is
compared with the off run of its own round, then medians are taken). Per run: requests/s and the
CPU nginx and wrk spent per request (utime + stime over requests), which is what the programs
add to. Then one more `http` run with kernel.bpf_stats_enabled, for the BPF run time per request
of each program (bpf_stats itself costs a few tens of ns per run, so it is kept out of the
throughput runs), for each capture. Run as root from the checkout:

    .venv/bin/python bench/ebpf/kernel_cost.py [--rounds 5] [--seconds 5] [--variants off sock http ...]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as bench  # noqa: E402  (bench/ebpf/run.py: nginx, wrk, agent and CPU helpers)
from telegen.config.loader import defaults  # noqa: E402
from telegen.ebpf import loader  # noqa: E402
from telegen.ebpf.http_probe import HttpProbe, _tracepoints  # noqa: E402
from tests.support import http_apps as apps  # noqa: E402
from tests.support.otlp_receiver import OtlpReceiver  # noqa: E402

VARIANTS = ("off", "empty", "http", "sock", "waker", "agent", "agent_syscalls")
CAPTURES = {"http": "syscalls", "waker": "syscalls", "sock": "socket", "agent": "auto", "agent_syscalls": "syscalls"}
WAKER = "import time\nwhile True:\n    time.sleep(0.001)\n"
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


class AgentDefaults:
    """The options bench/ebpf/run.py's start_agent reads: the agent as shipped (capture: auto)."""
    no_tcp = False
    nice = 0
    capture = "auto"


class AgentSyscalls(AgentDefaults):
    capture = "syscalls"


def load_http(capture):
    """The HTTP probe's kernel half for `capture`, compiled and attached exactly as the agent does it (our pid is the self filter)."""
    config = defaults()
    config["agent"]["ebpf"]["capture"] = capture
    return loader.compile_probe(HttpProbe(config, None, None, None), config, os.getpid())


def load_empty():
    from bcc import BPF
    text = "\n".join("TRACEPOINT_PROBE(%s, %s) { return 0; }" % tuple(tp.split(":")) for tp, _ in _tracepoints())
    return BPF(text=text)


def prog_stats(pid):
    """{program fd: (run_time_ns, run_cnt)} of the BPF programs process pid holds."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        if "prog_type" in text:
            out[int(fd)] = (int(re.search(r"run_time_ns:\s+(\d+)", text).group(1)),
                            int(re.search(r"run_cnt:\s+(\d+)", text).group(1)))
    return out


def measured(port, nginx_pid, seconds, agent_pid=None):
    """One wrk run: requests/s and the CPU nginx and wrk spent per request (us)."""
    shares = bench.CpuShares(nginx_pid, agent_pid)
    run = bench.wrk(port, seconds)
    cpu = shares.shares()
    return {"rps": run["rps"], "nginx_us": 1e4 * cpu["nginx"] / run["rps"], "wrk_us": 1e4 * cpu["wrk"] / run["rps"],
            "agent_pct": cpu.get("agent", 0.0)}


def one_run(variant, tmp, receiver, port, nginx_pid, seconds):
    bpf = agent = waker = None
    try:
        if variant == "empty":
            bpf = load_empty()
        elif variant in ("http", "sock", "waker"):
            bpf = load_http(CAPTURES[variant])
        if variant == "waker":
            waker = subprocess.Popen([sys.executable, "-c", WAKER])
        elif variant in ("agent", "agent_syscalls"):
            options = AgentDefaults if variant == "agent" else AgentSyscalls
            agent = bench.start_agent(tmp, receiver, options, ("grpc", "gzip"))
        return measured(port, nginx_pid, seconds, agent.process.pid if agent else None)
    finally:
        if bpf is not None:
            bpf.cleanup()
        if agent is not None:
            agent.stop()
        if waker is not None:
            waker.kill()
            waker.wait()


def bpf_time_per_request(port, seconds, capture):
    """BPF run time per wrk request, per program of the HTTP probe for `capture` (no consumer), from bpf_stats."""
    bpf = load_http(capture)
    names = {fn.fd: name.decode() for name, fn in bpf.funcs.items()}
    with open(BPF_STATS, "w") as f:
        f.write("1")
    try:
        before = prog_stats(os.getpid())
        run = bench.wrk(port, seconds)
        after = prog_stats(os.getpid())
    finally:
        with open(BPF_STATS, "w") as f:
            f.write("0")
        bpf.cleanup()
    per_program = {}
    for fd, (ns, count) in after.items():
        ns -= before.get(fd, (0, 0))[0]
        count -= before.get(fd, (0, 0))[1]
        if count and fd in names:
            per_program[names[fd].replace("tracepoint__", "").replace(loader.TP_BTF_PREFIX, "tp_btf/")] = (
                ns / run["requests"], count / run["requests"], ns / count)
    return per_program


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="off is always run")
    args = parser.parse_args()
    variants = ["off"] + [v for v in args.variants if v != "off"]
    tmp = tempfile.mkdtemp(prefix="telegen-kcost-")
    os.chmod(tmp, 0o755)
    nginx, port = apps.nginx(os.path.join(tmp, "nginx"))
    receiver = OtlpReceiver().start()
    rows = {v: [] for v in variants}
    try:
        apps.wait_listening(port)
        for _ in range(args.rounds):
            for variant in variants:
                rows[variant].append(one_run(variant, tmp, receiver, port, nginx.pid, args.seconds))
                r = rows[variant][-1]
                print(f"{variant}: {r['rps']:,.0f} req/s, nginx {r['nginx_us']:.2f} us/req, wrk {r['wrk_us']:.2f} us/req",
                      file=sys.stderr, flush=True)
        programs = {capture: bpf_time_per_request(port, args.seconds, capture) for capture in ("socket", "syscalls")}
    finally:
        receiver.stop()
        nginx.stop()

    print("| variant | req/s, median | throughput vs off, median of per-round ratios | nginx us CPU/request | "
          "wrk us CPU/request | off's (nginx + wrk) CPU per request / this one's, median |")
    print("|---|---|---|---|---|---|")
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
              f"{cpu_ratio:.2f} |")
    for capture, per_program in programs.items():
        print()
        print(f"| capture {capture}: program (no consumer) | BPF ns per request | runs per request | ns per run |")
        print("|---|---|---|---|")
        for name, (per_request, runs, per_run) in sorted(per_program.items(), key=lambda kv: -kv[1][0]):
            if runs >= 0.01:
                print(f"| {name} | {per_request:.0f} | {runs:.2f} | {per_run:.0f} |")
        print(f"| total | {sum(p[0] for p in per_program.values()):.0f} | | |")


if __name__ == "__main__":
    main()
