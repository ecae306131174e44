"""
CPU profiler cost at 99 Hz with both CPUs busy, next to BCC's profile-bpfcc on the same load.

Load: two copies of tests/integration/data/burn.c (gcc -O2 -fno-omit-frame-pointer) spinning for
the whole run, one per CPU. Three phases of --seconds each, one after another:
  agent-off: the agent (twistd telegen) with profiling off, eBPF and host metrics off: its baseline;
  agent-on:  the same agent with agent.profiling.enabled (upload_interval --window);
  bcc:       /usr/sbin/profile-bpfcc -F 99 -f for the same seconds (it drains once, at the end).
For each: CPU seconds of the process (the agent with its worker processes) per second of the measured span (which starts after the
compile: the agent's --warmup windows after its first drain, profile-bpfcc's once its perf events are open), peak RSS,
and samples received vs the theoretical rate x CPUs x seconds (the agent's span starts and ends just
after a drain, so --seconds should be a multiple of --window).

Usage (root): .venv/bin/python bench/profiling/profiler_cost.py [--seconds 60] [--window 10] [--warmup 1] [--no-bcc]
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TICK = os.sysconf("SC_CLK_TCK")
RATE = 99


def cpu_seconds(pid):
    """utime + stime of pid and its reaped children, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def descendants(pid):
    """Live descendants of pid (the agent's worker processes and their c++filt)."""
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        return out
    return out + [d for c in out for d in descendants(c)]


def tree_cpu_seconds(pid):
    """CPU of pid and its live descendants; those that exited are in pid's reaped-children fields."""
    total = cpu_seconds(pid)
    for child in descendants(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            pass
    return total


def peak_rss_mib(pid, field="VmHWM", tree=False):
    """A memory field of pid, summed over its live descendants with tree."""
    total = 0
    for each in [pid] + (descendants(pid) if tree else []):
        try:
            with open(f"/proc/{each}/status") as f:
                total += int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024
        except OSError:
            pass
    return total


def rss_mib(pid, tree=False):
    return peak_rss_mib(pid, "VmRSS", tree)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_burner(directory):
    path = os.path.join(directory, "burn")
    subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", "-o", path,
                    os.path.join(ROOT, "tests", "integration", "data", "burn.c")], check=True)
    return path


SCRAPE_LATENCY = []     # seconds per /metrics scrape of the current phase


def metric(port, name):
    started = time.monotonic()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    SCRAPE_LATENCY.append(time.monotonic() - started)
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def agent_phase(profiling, args, workdir):
    port = free_port()
    env = dict(os.environ, TELEGEN_AGENT_PROFILING_ENABLED=str(profiling).lower(),
               TELEGEN_AGENT_PROFILING_UPLOAD_INTERVAL=f"{args.window}s", TELEGEN_AGENT_EBPF_ENABLED="false",
               TELEGEN_AGENT_HOST_METRICS_ENABLED="false", TELEGEN_SELF_TELEMETRY_LISTEN=f"127.0.0.1:{port}",
               TELEGEN_TELEGEN_DATA_DIR=os.path.join(workdir, f"data-{profiling}"))
    agent = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "twistd"), "-n", "telegen", "--config",
                              os.path.join(ROOT, "etc", "telegen", "config.yaml")],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        # The span runs from one drain to the --seconds/--window-th drain after it (a drain shows as
        # a step of telegen_profiler_samples_total), so the compile is outside it and the samples
        # counted are those of whole windows.
        deadline = time.monotonic() + 300
        while True:
            try:
                if not profiling and urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2).read():
                    break
                if profiling and metric(port, "telegen_profiler_samples_total") > 0:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not start")
            time.sleep(0.1)
        # Warm-up windows: the first windows load kallsyms and the symbol tables of every mapped
        # file, and the file sink starts its JSON worker: one-time costs, left out of the span.
        seen = metric(port, "telegen_profiler_samples_total")
        for _ in range(args.warmup if profiling else 0):
            while metric(port, "telegen_profiler_samples_total") == seen:
                time.sleep(0.2)
            seen = metric(port, "telegen_profiler_samples_total")
        cpu0, own0 = tree_cpu_seconds(agent.pid), cpu_seconds(agent.pid)
        samples0, t0 = metric(port, "telegen_profiler_samples_total"), time.monotonic()
        SCRAPE_LATENCY.clear()
        windows = max(1, round(args.seconds / args.window))
        # One scrape a second in both phases (a scrape costs the agent CPU; the off phase pays the
        # same), counting the drains' steps in the on phase.
        steps, samples1 = 0, samples0
        while (steps < windows) if profiling else (time.monotonic() - t0 < args.seconds):
            time.sleep(1)
            value = metric(port, "telegen_profiler_samples_total")
            steps, samples1 = steps + (value != samples1), value
        cpu1, own1, t1 = tree_cpu_seconds(agent.pid), cpu_seconds(agent.pid), time.monotonic()
        rss, rss_now = peak_rss_mib(agent.pid, tree=True), rss_mib(agent.pid, tree=True)
        rss_anon = peak_rss_mib(agent.pid, "RssAnon", tree=True)
    finally:
        agent.terminate()
        agent.wait(30)
    return {"cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "own_pct": 100 * (own1 - own0) / (t1 - t0), "rss_mib": rss, "rss_now_mib": rss_now, "rss_anon_mib": rss_anon,
            "scrape_max": max(SCRAPE_LATENCY, default=0.0),
            "samples": samples1 - samples0, "span": windows * args.window if profiling else t1 - t0}


def perf_event_fds(pid):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]"
        except OSError:
            pass
    return count


def bcc_phase(args):
    """profile-bpfcc samples for --seconds after it attached (its compile is before that)."""
    proc = subprocess.Popen(["/usr/sbin/profile-bpfcc", "-F", str(RATE), "-f", str(int(args.seconds))],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while proc.poll() is None and perf_event_fds(proc.pid) < os.cpu_count():
        time.sleep(0.05)
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(args.seconds * 0.9)
    cpu_steady, span = cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
    rss = peak_rss_mib(proc.pid)
    before_exit = cpu_seconds(proc.pid)
    out = proc.stdout.read()
    _, _, usage = os.wait4(proc.pid, 0)          # its CPU to the end: the symbolization at exit
    proc.returncode = 0
    samples = sum(int(line.rpartition(" ")[2]) for line in out.splitlines() if line.strip())
    return {"cpu_pct_steady": 100 * cpu_steady / span, "rss_mib": rss, "samples": samples, "span": int(args.seconds),
            "compile_cpu": cpu0, "exit_cpu": usage.ru_utime + usage.ru_stime - before_exit}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--window", type=float, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="windows left out before the agent's span starts")
    parser.add_argument("--no-bcc", action="store_true", help="skip the profile-bpfcc phase (A/B runs of the agent)")
    args = parser.parse_args()
    cpus = os.cpu_count()
    with tempfile.TemporaryDirectory() as workdir:
        burner = build_burner(workdir)
        total = 3600       # the burners are stopped when the phases are done
        load = [subprocess.Popen([burner, str(total)]) for _ in range(cpus)]
        try:
            print(f"load: {cpus} x burn ({burner}); load average {os.getloadavg()[0]:.1f}", flush=True)
            off = agent_phase(False, args, workdir)
            print(f"agent, profiling off: {off['cpu_pct']:.2f} % of a core, RSS {off['rss_now_mib']:.0f} MiB "
                  f"(anonymous {off['rss_anon_mib']:.0f}, peak {off['rss_mib']:.0f}); slowest /metrics scrape "
                  f"{off['scrape_max']:.2f} s", flush=True)
            on = agent_phase(True, args, workdir)
            theory = RATE * cpus * on["span"]
            print(f"agent, profiling on:  {on['cpu_pct']:.2f} % of a core with its workers ({on['own_pct']:.2f} % in the "
                  f"agent's own process; profiler share {on['cpu_pct'] - off['cpu_pct']:.2f} %), "
                  f"RSS {on['rss_now_mib']:.0f} MiB (anonymous {on['rss_anon_mib']:.0f}, peak {on['rss_mib']:.0f}: the compile), "
                  f"samples {on['samples']:.0f} of {theory:.0f} theoretical "
                  f"({100 * on['samples'] / theory:.1f} %); slowest /metrics scrape {on['scrape_max']:.2f} s", flush=True)
            if args.no_bcc:
                return
            bcc = bcc_phase(args)
            theory = RATE * cpus * bcc["span"]
            print(f"profile-bpfcc -F 99:  {bcc['cpu_pct_steady']:.2f} % of a core while sampling, then "
                  f"{bcc['exit_cpu']:.2f} s CPU to symbolize and print at exit ({100 * bcc['exit_cpu'] / bcc['span']:.2f} % "
                  f"of a core over the span; compile {bcc['compile_cpu']:.1f} s), peak RSS {bcc['rss_mib']:.0f} MiB, "
                  f"samples {bcc['samples']} of {theory:.0f} theoretical ({100 * bcc['samples'] / theory:.1f} %) "
                  f"over {bcc['span']:.0f} s", flush=True)
            print(f"load average at the end {os.getloadavg()[0]:.1f}")
        finally:
            for p in load:
                p.terminate()
                p.wait()


if __name__ == "__main__":
    sys.exit(main())
