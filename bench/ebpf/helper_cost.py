"""
What single BPF operations cost on this kernel, and what syscall tracing itself costs: the numbers
bpf/http.c was tuned by (bench/README.md, "eBPF").

1. Dispatch: a C loop making 1,000,000 getppid() calls, wall time per call with nothing attached,
   with empty programs on syscalls:sys_{enter,exit}_getppid, and with empty raw_syscalls programs.
2. Helpers: one program at a time on syscalls:sys_enter_getppid doing one operation, its mean run
   time from kernel.bpf_stats_enabled (includes bpf_stats' own clock reads; compare with `empty`).

Run as root from the checkout (needs gcc):

    .venv/bin/python bench/ebpf/helper_cost.py
"""
import os
import re
import subprocess
import tempfile
import time

from bcc import BPF

CALLS = 1_000_000
LOOP_C = "#include <unistd.h>\n#include <sys/syscall.h>\nint main(void) { for (int i = 0; i < %d; i++) syscall(SYS_getppid); return 0; }\n" % CALLS

HELPERS = r"""
struct small { u64 a, b; u32 c, d; };
struct big { char d[600]; };
BPF_TABLE("lru_hash", u64, struct small, lru, 65536);
BPF_TABLE("lru_hash", u64, struct big, lru_big, 8192);
BPF_HASH(hash, u64, struct small, 16384);
BPF_PERCPU_ARRAY(scratch, struct big, 1);
BPF_TASK_STORAGE(task, struct small);
BPF_RINGBUF_OUTPUT(ring, 64);
static char source[512];

int empty(void *ctx) { return 0; }
int pid_tgid(void *ctx) { return bpf_get_current_pid_tgid() == 7; }
int clock_read(void *ctx) { return bpf_ktime_get_ns() == 7; }
int lru_lookup_miss(void *ctx) { u64 id = bpf_get_current_pid_tgid(); return lru.lookup(&id) != 0; }
int hash_update(void *ctx) { u64 id = bpf_get_current_pid_tgid(); struct small s = {.a = id}; hash.update(&id, &s); return 0; }
int hash_update_delete(void *ctx) {
    u64 id = bpf_get_current_pid_tgid(); struct small s = {.a = id}; hash.update(&id, &s); hash.delete(&id); return 0;
}
int task_storage_put_take(void *ctx) {
    struct small *s = task.task_storage_get(bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (s) { s->c = 1; s->c = 0; }
    return 0;
}
int lru_update_600_bytes(void *ctx) {
    u32 zero = 0; struct big *b = scratch.lookup(&zero); if (!b) return 0;
    u64 id = bpf_get_current_pid_tgid(); lru_big.update(&id, b); return 0;
}
int read_512_bytes(void *ctx) {
    u32 zero = 0; struct big *b = scratch.lookup(&zero); if (!b) return 0;
    bpf_probe_read_kernel(b->d, 512, source); return 0;
}
int ringbuf_reserve_discard(void *ctx) { char *p = ring.ringbuf_reserve(1232); if (p) ring.ringbuf_discard(p, 0); return 0; }
"""
NAMES = re.findall(r"^int (\w+)\(void \*ctx\)", HELPERS, re.M)
TRACEPOINTS = {
    "empty tracepoints (sys_enter/exit_getppid)": "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }\n"
                                                  "TRACEPOINT_PROBE(syscalls, sys_exit_getppid) { return 0; }",
    "empty raw_syscalls (sys_enter/exit, every syscall)": "RAW_TRACEPOINT_PROBE(sys_enter) { return 0; }\n"
                                                          "RAW_TRACEPOINT_PROBE(sys_exit) { return 0; }",
}


def build_loop(folder):
    path = os.path.join(folder, "loop")
    with open(path + ".c", "w") as f:
        f.write(LOOP_C)
    subprocess.run(["gcc", "-O2", "-o", path, path + ".c"], check=True)
    return path


def ns_per_call(loop, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([loop], check=True)
        best = min(best, time.perf_counter() - t0)
    return best / CALLS * 1e9


def run_stats(fd):
    with open(f"/proc/self/fdinfo/{fd}") as f:
        text = f.read()
    return int(re.search(r"run_time_ns:\s+(\d+)", text).group(1)), int(re.search(r"run_cnt:\s+(\d+)", text).group(1))


def main():
    loop = build_loop(tempfile.mkdtemp(prefix="telegen-helpers-"))
    print("| syscall tracing | ns per getppid() |")
    print("|---|---|")
    print(f"| nothing attached | {ns_per_call(loop):.0f} |")
    for name, text in TRACEPOINTS.items():
        bpf = BPF(text=text)
        try:
            print(f"| {name} | {ns_per_call(loop):.0f} |")
        finally:
            bpf.cleanup()
    print()
    print("| one operation in a program | ns per run (bpf_stats) |")
    print("|---|---|")
    bpf = BPF(text=HELPERS)
    with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
        f.write("1")
    try:
        for name in NAMES:
            fn = bpf.load_func(name.encode(), BPF.TRACEPOINT)
            bpf.attach_tracepoint(tp=b"syscalls:sys_enter_getppid", fn_name=name.encode())
            before = run_stats(fn.fd)
            subprocess.run([loop], check=True)
            after = run_stats(fn.fd)
            bpf.detach_tracepoint(tp=b"syscalls:sys_enter_getppid")
            print(f"| {name} | {(after[0] - before[0]) / max(after[1] - before[1], 1):.0f} |")
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("0")
        bpf.cleanup()


if __name__ == "__main__":
    main()
