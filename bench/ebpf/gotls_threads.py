"""
Why bpf/tls.h keys Go's crypto/tls calls by goroutine, not by thread: how often a
crypto/tls.(*Conn).Read or Write returns on another thread (M) than it was entered on. A thread-
keyed link (what the OpenSSL uprobes use) needs the call's socket I/O on the entry's thread; a
call that moved did its I/O, or part of it, elsewhere. The Go test server of tests/support/go/gotls
is driven by a keep-alive Python http.client (HTTP/1.1) and by the Go client over HTTP/2, and a
small BCC program on the executable's entries and RET instructions counts, per function, the calls
that returned data and those of them whose RET ran on another thread. Run as root from the checkout:

    .venv/bin/python bench/ebpf/gotls_threads.py [--requests 2000]
"""
import argparse
import os
import sys
import tempfile

from bcc import BPF

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from telegen.ebpf.tls import go_tls_functions  # noqa: E402
from tests.support import go_tls  # noqa: E402
from tests.support import http_apps as apps  # noqa: E402
from bench.ebpf.gotls_cost import run_go, run_python  # noqa: E402

PROGRAM = r"""
#include <uapi/linux/ptrace.h>
struct key { u64 g; u32 tgid; u32 pad; };
struct call { u32 tid; u32 kind; };
BPF_HASH(calls, struct key, struct call, 65536);
BPF_ARRAY(counts, u64, 4);          /* [2*kind]: calls returning data, [2*kind+1]: of those, RET on another thread */

static int enter(struct pt_regs *ctx, u32 kind) {
    u64 id = bpf_get_current_pid_tgid();
    struct key k = {.g = ctx->r14, .tgid = id >> 32};
    struct call c = {.tid = (u32)id, .kind = kind};
    calls.update(&k, &c);
    return 0;
}
int enter_read(struct pt_regs *ctx) { return enter(ctx, 0); }
int enter_write(struct pt_regs *ctx) { return enter(ctx, 1); }
int on_ret(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct key k = {.g = ctx->r14, .tgid = id >> 32};
    struct call *c = calls.lookup(&k);
    if (!c || (s64)ctx->ax <= 0) {
        calls.delete(&k);
        return 0;
    }
    u32 i = 2 * (c->kind & 1);
    counts.increment(i);
    if (c->tid != (u32)id)
        counts.increment(i + 1);
    calls.delete(&k);
    return 0;
}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="telegen-gotls-threads-")
    binary = go_tls.build(tmp)
    server, port = go_tls.server(binary, apps.self_signed(tmp))
    bpf = None
    try:
        bpf = BPF(text=PROGRAM)
        for symbol, (start, rets) in go_tls_functions(binary).items():
            kind = {"crypto/tls.(*Conn).Read": "enter_read", "crypto/tls.(*Conn).Write": "enter_write"}.get(symbol)
            if kind is None:
                continue
            for offset in rets:
                bpf.attach_uprobe(name=binary.encode(), addr=start + offset, fn_name=b"on_ret", pid=-1)
            bpf.attach_uprobe(name=binary.encode(), addr=start, fn_name=kind.encode(), pid=-1)
        counts = bpf[b"counts"]
        print("| client | Read calls returning data | of which returned on another thread | Write calls | of which on another thread |")
        print("|---|---|---|---|---|")
        for name, run in (("Python http.client, HTTP/1.1 (server side only)", lambda: run_python(port, args.requests)),
                          ("Go client, HTTP/2 (both sides)", lambda: run_go(binary, port, args.requests))):
            counts.clear()
            run()
            c = [counts[counts.Key(i)].value for i in range(4)]
            print(f"| {name} | {c[0]} | {c[1]} ({100 * c[1] / max(c[0], 1):.1f} %) | {c[2]} | {c[3]} ({100 * c[3] / max(c[2], 1):.1f} %) |")
    finally:
        if bpf is not None:
            bpf.cleanup()
        server.stop()


if __name__ == "__main__":
    main()
