"""
What the Go crypto/tls uprobes (agent.ebpf.tls, bpf/tls.h) cost a Go HTTPS server: the test
program of tests/support/go/gotls (net/http over TLS) served to a keep-alive Python http.client
(HTTP/1.1) and to the Go client speaking HTTP/2 (ALPN h2), one request at a time, with the HTTP
probe loaded in this process and its uprobes on the Go executable attached or detached,
alternated --rounds times at the same moment (this shared machine drifts by tens of percent
within minutes). Reports, per client, the Go server's CPU per request (and the Go client's, which
is probed too: same executable), medians of the rounds, the uprobe entries per request and how
long the Go TLS BPF programs themselves ran. Every other TLS uprobe (the libssl ones, other
processes' Go executables) stays detached, so the Python client is not probed.

Only the kernel side runs (nobody drains the ring buffer: its overflow is counted, not paid by
the applications), so the difference is the uprobes' cost to the applications. Run as root from
the checkout:

    .venv/bin/python bench/ebpf/gotls_cost.py [--rounds 5] [--requests 2000] [--capture socket|syscalls] [--entries-only]
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from telegen.ebpf import loader  # noqa: E402
from telegen.ebpf.tls import GO_FUNCTIONS, TlsLibraries  # noqa: E402
from tests.support import go_tls  # noqa: E402
from tests.support import http_apps as apps  # noqa: E402
from bench.ebpf.run import cpu_seconds  # noqa: E402
from bench.ebpf.tls_cost import CLIENT, arguments, probe_with_stats  # noqa: E402

GO_PROGRAMS = sorted({fn for fns in GO_FUNCTIONS.values() for fn in fns})
ENTRY_PROGRAMS = {entry for entry, _ in GO_FUNCTIONS.values()}


def run_python(port, n):
    """CPU seconds of the Python client making n HTTP/1.1 requests (it prints them)."""
    out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def child_cpu():
    """CPU seconds of this process's reaped children so far."""
    t = os.times()
    return t.children_user + t.children_system


def run_go(binary, port, n):
    """CPU seconds of the Go client making n HTTP/2 requests (the reaped child's rusage)."""
    before = child_cpu()
    proc = go_tls.start_client(binary, [f"https://127.0.0.1:{port}/ok"] * n, 2)
    out, _ = proc.communicate(timeout=600)
    assert out.count("200 HTTP/2.0") == n, out[-200:]
    return child_cpu() - before


def program_stats(bpf):
    """(entry program runs, ns all the Go TLS programs ran) so far (kernel.bpf_stats_enabled)."""
    runs = ns = 0
    for fn in GO_PROGRAMS:
        info = loader.fdinfo(bpf.funcs[fn.encode()].fd)
        runs += int(info.get("run_cnt", 0)) if fn in ENTRY_PROGRAMS else 0
        ns += int(info.get("run_time_ns", 0))
    return runs, ns


def uprobes(bpf, binary, attach, entries_only=False):
    """
    Attach the Go TLS uprobes to the executable (what TlsLibraries attaches; with entries_only,
    the function entries only, to tell the RET uprobes' share), or detach every uprobe.
    """
    if attach and entries_only:
        for symbol, (entry, _) in GO_FUNCTIONS.items():
            bpf.attach_uprobe(name=binary.encode(), sym=symbol.encode(), fn_name=entry.encode(), pid=-1)
        return
    if attach:
        TlsLibraries(bpf).attach(binary)
        return
    for event in list(bpf.uprobe_fds):
        bpf.detach_uprobe_event(event)


def main():
    args = arguments(__doc__, 2000, {"--entries-only": "attach the entry uprobes only (no RET uprobes)"})
    tmp = tempfile.mkdtemp(prefix="telegen-gotls-bench-")
    binary = go_tls.build(tmp)
    server, port = go_tls.server(binary, apps.self_signed(tmp))
    clients = {"http1 (Python client)": lambda: run_python(port, args.requests),
               "h2 (Go client)": lambda: run_go(binary, port, args.requests)}
    rows = {(c, s): [] for c in clients for s in ("detached", "attached")}
    try:
        with probe_with_stats(args.capture) as bpf:
            uprobes(bpf, binary, False)       # compile_probe attached every libssl and Go executable found
            attached = False
            run_python(port, 200)             # warm up
            for _ in range(args.rounds):
                for state in ("detached", "attached"):
                    if (state == "attached") != attached:
                        uprobes(bpf, binary, state == "attached", args.entries_only)
                        attached = state == "attached"
                    for name, run in clients.items():
                        runs0, ns0 = program_stats(bpf)
                        server0 = cpu_seconds(server.pid)
                        client_cpu = run()
                        runs1, ns1 = program_stats(bpf)
                        rows[name, state].append({
                            "server_cpu_us": 1e6 * (cpu_seconds(server.pid) - server0) / args.requests,
                            "client_cpu_us": 1e6 * client_cpu / args.requests,
                            "entries_per_request": (runs1 - runs0) / args.requests,
                            "bpf_us_per_request": (ns1 - ns0) / 1e3 / args.requests})
    finally:
        server.stop()
    print(json.dumps({f"{c} {s}": r for (c, s), r in rows.items()}, indent=2))
    print()
    print(f"| {args.capture} capture, {args.requests} keep-alive requests x {args.rounds} rounds, median (runs) "
          "| uprobes detached | uprobes attached | difference |")
    print("|---|---|---|---|")
    for name in clients:
        for key, label in (("server_cpu_us", "Go server CPU us per request"), ("client_cpu_us", "client CPU us per request"),
                           ("entries_per_request", "Go uprobe entries per request"),
                           ("bpf_us_per_request", "Go TLS BPF programs' run time us per request")):
            off, on = (statistics.median(r[key] for r in rows[name, s]) for s in ("detached", "attached"))
            runs = lambda s: ", ".join(format(r[key], ".1f") for r in rows[name, s])  # noqa: E731
            print(f"| {name}: {label} | {off:.1f} ({runs('detached')}) | {on:.1f} ({runs('attached')}) | {on - off:+.1f} |")


if __name__ == "__main__":
    main()
