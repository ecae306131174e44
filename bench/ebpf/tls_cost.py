"""
What the OpenSSL uprobes (agent.ebpf.tls, bpf/tls.h) cost the applications: nginx over TLS and a
keep-alive HTTPS client (Python http.client: SSL_write_ex/SSL_read_ex; nginx: SSL_read/SSL_write),
one request at a time, with the HTTP probe loaded in this process and its uprobes on the system
libssl attached or detached, alternated --rounds times at the same moment (this shared machine
drifts by tens of percent within minutes). Reports the client's wall time per request and the CPU
per request of nginx and of the client (both sides are probed), median of the rounds, and how
many uprobe hits (entries) each request makes and how long the BPF programs themselves ran (the
rest of the difference is the uprobe and uretprobe traps).

Only the kernel side runs (nobody drains the ring buffer: its overflow is counted, not paid by
the applications), so the difference is the uprobes' cost to the applications, not the agent's.
Run as root from the checkout:

    .venv/bin/python bench/ebpf/tls_cost.py [--rounds 5] [--requests 3000] [--capture socket|syscalls]
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from telegen.config.loader import defaults  # noqa: E402
from telegen.ebpf import loader  # noqa: E402
from telegen.ebpf.http_probe import HttpProbe  # noqa: E402
from telegen.ebpf.tls import ENTRIES, RETURN_FN  # noqa: E402
from tests.support import http_apps as apps  # noqa: E402
from bench.ebpf.run import cpu_seconds, process_tree  # noqa: E402

LIBSSL = "/lib/x86_64-linux-gnu/libssl.so.3"

# One keep-alive HTTPS connection, n requests one after the other; prints its own CPU seconds.
CLIENT = textwrap.dedent('''
    import http.client, os, ssl, sys, time
    port, n = int(sys.argv[1]), int(sys.argv[2])
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context())
    for _ in range(n):
        conn.request("GET", "/ok")
        conn.getresponse().read()
    t = os.times()
    print(t.user + t.system)
''')


def run_client(port, n, nginx_pid):
    """(wall s, client CPU s, nginx CPU s) of n requests."""
    nginx0 = sum(cpu_seconds(p) for p in process_tree(nginx_pid))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(n)], capture_output=True, text=True, check=True)
    wall = time.monotonic() - t0
    return wall, float(out.stdout), sum(cpu_seconds(p) for p in process_tree(nginx_pid)) - nginx0


def uprobes(bpf, attach):
    """Attach the entry and return uprobes on the system libssl (what TlsLibraries attaches), or detach every uprobe."""
    if not attach:
        for event in list(bpf.uprobe_fds):
            bpf.detach_uprobe_event(event)
        return
    for symbol, fn in ENTRIES.items():
        bpf.attach_uretprobe(name=LIBSSL.encode(), sym=symbol.encode(), fn_name=RETURN_FN.encode(), pid=-1)
        bpf.attach_uprobe(name=LIBSSL.encode(), sym=symbol.encode(), fn_name=fn.encode(), pid=-1)


def program_stats(bpf):
    """(entry program runs, ns all the TLS programs ran) so far (kernel.bpf_stats_enabled)."""
    runs = ns = 0
    for fn in (*ENTRIES.values(), RETURN_FN):
        info = loader.fdinfo(bpf.funcs[fn.encode()].fd)
        runs += int(info.get("run_cnt", 0)) if fn != RETURN_FN else 0
        ns += int(info.get("run_time_ns", 0))
    return runs, ns


def arguments(doc, requests, switches=None):
    """--rounds, --requests and --capture of a TLS cost bench, and its own switches ({flag: help})."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--capture", choices=("socket", "syscalls"), default="socket")
    for flag, text in (switches or {}).items():
        parser.add_argument(flag, action="store_true", help=text)
    return parser.parse_args()


@contextlib.contextmanager
def probe_with_stats(capture):
    """The HTTP probe compiled in this process, capturing every port, with kernel.bpf_stats_enabled on (both undone after)."""
    config = defaults()
    config["agent"]["ebpf"].update(capture=capture, ringbuf_size=1 << 16)
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        stats_before = f.read().strip()
    bpf = None
    try:
        bpf = loader.compile_probe(HttpProbe(config, None, None, None), config, os.getpid())
        bpf[b"settings"][bpf[b"settings"].Key(0)] = bpf[b"settings"].Leaf(1)      # capture every port
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("1")
        yield bpf
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(stats_before)
        if bpf is not None:
            bpf.cleanup()


def main():
    args = arguments(__doc__, 3000)
    tmp = tempfile.mkdtemp(prefix="telegen-tls-bench-")
    os.chmod(tmp, 0o755)
    nginx, port = apps.nginx(os.path.join(tmp, "nginx"), tls=apps.self_signed(tmp))
    rows = {"attached": [], "detached": []}
    try:
        apps.wait_listening(port)
        with probe_with_stats(args.capture) as bpf:
            uprobes(bpf, False)               # compile_probe attached them to every libssl found; the system one's are toggled from here
            attached = False
            run_client(port, 200, nginx.pid)  # warm up (certificate, page cache)
            for _ in range(args.rounds):
                for state in ("detached", "attached"):
                    if (state == "attached") != attached:
                        uprobes(bpf, state == "attached")
                        attached = state == "attached"
                    runs0, ns0 = program_stats(bpf)
                    wall, client_cpu, nginx_cpu = run_client(port, args.requests, nginx.pid)
                    rows[state].append({"us_per_request": 1e6 * wall / args.requests,
                                        "client_cpu_us": 1e6 * client_cpu / args.requests,
                                        "nginx_cpu_us": 1e6 * nginx_cpu / args.requests,
                                        "entries_per_request": (program_stats(bpf)[0] - runs0) / args.requests,
                                        "bpf_us_per_request": (program_stats(bpf)[1] - ns0) / 1e3 / args.requests})
    finally:
        nginx.stop()
    print(json.dumps(rows, indent=2))
    print()
    print(f"| {args.capture} capture, {args.requests} keep-alive HTTPS requests x {args.rounds} rounds, median (runs) "
          "| uprobes detached | uprobes attached | difference |")
    print("|---|---|---|---|")
    for key, label in (("us_per_request", "client wall us per request"), ("client_cpu_us", "client CPU us per request"),
                       ("nginx_cpu_us", "nginx CPU us per request"), ("entries_per_request", "uprobe entries per request"),
                       ("bpf_us_per_request", "TLS BPF programs' run time us per request (both sides)")):
        off, on = (statistics.median(r[key] for r in rows[s]) for s in ("detached", "attached"))
        runs = lambda s: ", ".join(format(r[key], ".1f") for r in rows[s])  # noqa: E731
        print(f"| {label} | {off:.1f} ({runs('detached')}) | {on:.1f} ({runs('attached')}) | {on - off:+.1f} |")


if __name__ == "__main__":
    main()
