# -*- test-case-name: tests.unit.test_ebpf_loader -*-
"""
Compile a Probe's BPF C source with BCC and describe what the kernel holds afterwards.

Runs in a thread (EbpfService uses deferToThread): BCC compilation takes seconds of CPU. Every
failure becomes a LoadError whose message says precisely why (BCC missing, kernel headers
missing, the first compiler error, the verifier's complaint), because that text is what
/ready and /status/ebpf show. BCC prints compiler and verifier output on the process's stderr,
which a thread cannot capture without stealing every other thread's stderr, so after a failure
the same compilation is repeated in a child process only to read its stderr (diagnose()).

Kernel ids, types and sizes are read from /proc/self/fdinfo/<fd>: simpler than
BPF_OBJ_GET_INFO_BY_FD through ctypes and exactly what the kernel reports.
"""
import ctypes
import os
import re
import subprocess
import sys
import threading

from telegen import paths
from telegen.ebpf import tpbtf
from telegen.ebpf.btf import KernelBtf
from telegen.ebpf.compiler_pages import release_compiler_memory

# BCC compiles with process-wide state (clang finds the kernel headers relative to the working
# directory), so two BPF objects compiled at once in two threads (the eBPF and profiling
# children load side by side) fail with "kconfig.h file not found" or crash the process.
_COMPILE_LOCK = threading.Lock()
_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_]+\.h)"$', re.M)

# BPF_PROG_TYPE_* and BPF_MAP_TYPE_* numbers (uapi/linux/bpf.h) -> the names /status/ebpf shows.
PROG_TYPES = {1: "socket_filter", 2: "kprobe", 5: "tracepoint", 7: "perf_event", 17: "raw_tracepoint", 26: "tracing"}
MAP_TYPES = {
    1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash", 6: "percpu_array",
    7: "stack_trace", 9: "lru_hash", 10: "lru_percpu_hash", 24: "sk_storage", 27: "ringbuf", 29: "task_storage",
}


class LoadError(Exception):
    """A probe could not be compiled, loaded or attached; str() is the precise reason."""


def source_text(probe, bpf_dir=None):
    """The probe's C source with the headers of bpf/ it includes (`#include "x.h"`, and theirs)
    pasted in place of their #include lines (BCC rewrites map operations only in the main text)."""
    folder = bpf_dir or paths.bpf_dir()

    def read(name):
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise LoadError(f"BPF source missing: {e.filename}: {e.strerror}") from e

    text = read(probe.source)
    pasted = set()
    while True:
        m = _LOCAL_INCLUDE.search(text)
        if m is None:
            return text
        name = m.group(1)
        header = "" if name in pasted else read(name)
        pasted.add(name)
        text = text[:m.start()] + header + text[m.end():]


def kernel_headers_dir():
    """Where BCC looks for kernel headers."""
    return f"/lib/modules/{os.uname().release}/build"


def kernel_btf_path():
    """The running kernel's BTF (CONFIG_DEBUG_INFO_BTF), which task storage and BTF helpers need."""
    return "/sys/kernel/btf/vmlinux"


def _import_bcc():
    try:
        import bcc
    except ImportError as e:
        raise LoadError(f"BCC is not installed (import bcc: {e})") from e
    return bcc


def common_cflags(probe, config, self_pid):
    """The -D flags every source gets: our pid (self filter), ring buffer pages and CPUs (which set the wakeup level)."""
    return [
        f"-DTELEGEN_PID={self_pid}",
        f"-DRINGBUF_PAGES={probe.ringbuf_size(config) // 4096}",
        f"-DTELEGEN_NCPUS={os.cpu_count() or 1}",
    ]


def compile_probe(probe, config, self_pid, bpf_dir=None):
    """
    Compile, load and attach one probe; returns the bcc.BPF object. Runs in a thread.

    A probe with several capture modes (Probe.capture_modes) has each tried in order until one
    loads; the last one's failure is the probe's.
    """
    modes = probe.capture_modes(config)
    failures = []
    for mode in modes:
        probe.select_capture(mode, failures)
        try:
            bpf = _compile_mode(probe, config, self_pid, bpf_dir)
        except LoadError as e:
            if len(failures) == len(modes) - 1:
                raise
            failures.append((mode, str(e)))
            continue
        probe.select_capture(mode, failures)
        return bpf


def _compile_mode(probe, config, self_pid, bpf_dir):
    """
    Compile, load and attach the probe as it is now. Attaches every (tracepoint, function) the
    probe lists that BCC has not auto-attached (TRACEPOINT_PROBE functions are attached by BCC
    itself), then its tp_btf functions, then its uprobes (Probe.attach_uprobes).
    """
    bcc = _import_bcc()
    headers = kernel_headers_dir()
    if not os.path.isdir(headers):
        raise LoadError(f"kernel headers missing: {headers} does not exist")
    if probe.needs_btf and not os.path.exists(kernel_btf_path()):
        raise LoadError(f"kernel BTF missing: {kernel_btf_path()} does not exist (the {probe.name} probe "
                        "keeps per-thread state in BPF task storage, which needs a kernel built with BTF)")
    text = source_text(probe, bpf_dir)
    cflags = common_cflags(probe, config, self_pid) + list(probe.cflags(config))
    try:
        with _COMPILE_LOCK:
            bpf = bcc.BPF(text=text.encode(), cflags=cflags)
    except Exception as e:
        raise LoadError(diagnose(text, cflags) or _first_line(e)) from e
    release_compiler_memory()
    try:
        for tracepoint, fn_name in probe.tracepoints():
            if tracepoint not in _attached_tracepoints(bpf):
                bpf.attach_tracepoint(tp=tracepoint.encode(), fn_name=fn_name.encode())
        if probe.btf_tracepoints():
            btf = KernelBtf.load()
            for tracepoint in probe.btf_tracepoints():
                tpbtf.load_and_attach(bpf, TP_BTF_PREFIX + tracepoint, tracepoint, btf)
        probe.attach_uprobes(bpf)
    except Exception as e:
        bpf.cleanup()
        raise LoadError(f"attach failed: {_first_line(e)}") from e
    return bpf


def _attached_tracepoints(bpf):
    """The "category:event" names BCC attached (its dict keys are bytes)."""
    return {tp.decode() if isinstance(tp, bytes) else tp for tp in bpf.tracepoint_fds}


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


_ERROR_PATTERNS = (
    re.compile(r"error: .*"),                                   # clang
    re.compile(r"bpf: Failed to load program: .*"),             # kernel refusal (errno)
)


def first_error(stderr):
    """
    The most precise line of BCC's stderr: the first compiler error, else the kernel's refusal
    followed by the verifier's first complaint (the line before "processed N insns").
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        m = _ERROR_PATTERNS[0].search(line)
        if m:
            return m.group(0)
    for i, line in enumerate(lines):
        m = _ERROR_PATTERNS[1].search(line)
        if m:
            detail = next((lines[j - 1] for j in range(i + 1, len(lines)) if lines[j].startswith("processed ")), None)
            return f"{m.group(0)}: {detail}" if detail else m.group(0)
    return None


def diagnose(text, cflags, timeout=120):
    """Compile again in a child process and return the first error line of its stderr, or None."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "telegen.ebpf.loader", *cflags],
            input=text, capture_output=True, text=True, timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return first_error(proc.stderr)


def fdinfo(fd, pid="self"):
    """The key: value pairs of /proc/<pid>/fdinfo/<fd> (kernel facts about a BPF prog or map fd)."""
    out = {}
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        return {}
    return out


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


TP_BTF_PREFIX = "tp_btf__"        # a probe's function for tp_btf/<name> is tp_btf__<name>


def describe_programs(bpf, uprobes=None):
    """
    [{name, type, attached, id, tracepoint}] for every program of a BPF object (tp_btf ones:
    tracepoint "tp_btf/<name>"); uprobes: Probe.uprobe_programs(), whose programs get
    "uprobe": the symbols they probe, and are attached when that is not None.
    """
    uprobes = uprobes or {}
    attached_fns = {f"tracepoint__{tp.replace(':', '__')}": tp for tp in _attached_tracepoints(bpf)}
    for key in bpf.raw_tracepoint_fds:
        key = key.decode() if isinstance(key, bytes) else key
        if key.startswith(tpbtf.ATTACH_PREFIX):
            attached_fns[TP_BTF_PREFIX + key[len(tpbtf.ATTACH_PREFIX):]] = key
    out = []
    for name, fn in sorted(bpf.funcs.items()):
        name = name.decode() if isinstance(name, bytes) else name
        info = fdinfo(fn.fd)
        program = {
            "name": name,
            "type": PROG_TYPES.get(_int(info.get("prog_type")), info.get("prog_type")),
            "attached": name in attached_fns or uprobes.get(name) is not None,
            "id": _int(info.get("prog_id")),
            "tracepoint": attached_fns.get(name),
        }
        if name in uprobes:
            program["uprobe"] = uprobes[name]
        out.append(program)
    return out


def map_fds(bpf):
    """{map name: fd} for every map of a BPF object (BCC's Python API lists only opened ones)."""
    lib = bpf_lib()
    count = lib.bpf_num_tables(bpf.module)
    return {lib.bpf_table_name(bpf.module, i).decode(): lib.bpf_table_fd_id(bpf.module, i) for i in range(count)}


def describe_map(fd):
    """{type, max_entries, id, key_size} of a map fd from fdinfo."""
    info = fdinfo(fd)
    return {
        "type": MAP_TYPES.get(_int(info.get("map_type")), info.get("map_type")),
        "max_entries": _int(info.get("max_entries")),
        "id": _int(info.get("map_id")),
        "key_size": _int(info.get("key_size")),
    }


_LIB = None


def bpf_lib():
    """libbcc with the table-enumeration functions bcc's libbcc.py does not declare."""
    global _LIB
    if _LIB is None:
        from bcc.libbcc import lib
        lib.bpf_num_tables.restype = ctypes.c_size_t
        lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
        lib.bpf_table_name.restype = ctypes.c_char_p
        lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.bpf_table_fd_id.restype = ctypes.c_int
        lib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.bpf_get_next_key.restype = ctypes.c_int
        lib.bpf_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        _LIB = lib
    return _LIB


def count_keys(fd, key_size, limit):
    """Live keys of a hash map, walking at most `limit` keys (the walk costs a syscall per key)."""
    lib = bpf_lib()
    key = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    n = 0
    prev = None
    while n < limit and lib.bpf_get_next_key(fd, prev, nxt) == 0:
        n += 1
        ctypes.memmove(key, nxt, key_size)
        prev = key
    return n


def _main(argv):
    """Child side of diagnose(): compile the source on stdin with the given cflags."""
    from bcc import BPF
    BPF(text=sys.stdin.read(), cflags=argv)


if __name__ == "__main__":
    _main(sys.argv[1:])
