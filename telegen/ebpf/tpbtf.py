# -*- test-case-name: tests.integration.test_ebpf_tpbtf -*-
"""
Load and attach BCC-compiled functions as tp_btf programs (BPF_PROG_TYPE_TRACING with
expected_attach_type BPF_TRACE_RAW_TP) with two raw bpf(2) calls.

Why raw calls: BCC 0.26 loads a TRACING program with expected_attach_type 0 unless its name
carries a kfunc/lsm/iter prefix, and the kernel then refuses it; fentry/fexit (what those
prefixes mean) are refused outright on these machines (EPERM). tp_btf programs run only at their
own tracepoint's call sites, unlike anything on sys_enter/sys_exit, which puts every syscall of
every thread on the tracing slow path (docs/ebpf.md, "Capture modes").

BCC still compiles the C and creates the maps: dump_func() gives the bytecode with the map fds
already in it. The loaded program and its attachment are registered in the BPF object's own
tables (funcs, raw_tracepoint_fds), so bpf.cleanup() closes them like the ones BCC made.
"""
import ctypes
import os
import struct

SYS_BPF = 321                     # x86-64
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_RAW_TP = 23
_ATTR_SIZE = 144                  # union bpf_attr, enough for both commands
_LOG_SIZE = 1 << 20
# union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
# kern_version, prog_flags, prog_name[16] (at 48), prog_ifindex, expected_attach_type (at 68), ...,
# attach_btf_id (at 108).
_LOAD = struct.Struct("=IIQQIIQII16sII")
_ATTACH_BTF_ID_AT = 108
_OBJ_NAME_LEN = 16
ATTACH_PREFIX = "tp_btf/"

_libc = None


class TpBtfError(Exception):
    """The kernel refused to load or attach a tp_btf program; str() has the errno and the verifier's complaint."""


def _bpf(cmd, attr):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(bytes(attr), _ATTR_SIZE)
    fd = _libc.syscall(SYS_BPF, cmd, buf, _ATTR_SIZE)
    return fd, ctypes.get_errno()


def _verifier_complaint(log):
    """The verifier's last words before "processed N insns" (or its last line)."""
    lines = [line for line in log.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("processed ") and i:
            return lines[i - 1]
    return lines[-1] if lines else ""


def load(insns, name, attach_btf_id, license=b"GPL"):
    """BPF_PROG_LOAD of `insns` (bytecode) as tp_btf on the tracepoint whose btf_trace_ typedef is attach_btf_id; the prog fd."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license)
    log = ctypes.create_string_buffer(_LOG_SIZE)
    attr = bytearray(_ATTR_SIZE)
    _LOAD.pack_into(attr, 0, BPF_PROG_TYPE_TRACING, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic),
                    1, _LOG_SIZE, ctypes.addressof(log), 0, 0, name[:_OBJ_NAME_LEN - 1].encode(), 0, BPF_TRACE_RAW_TP)
    struct.pack_into("=I", attr, _ATTACH_BTF_ID_AT, attach_btf_id)
    fd, err = _bpf(BPF_PROG_LOAD, attr)
    if fd < 0:
        complaint = _verifier_complaint(log.value.decode("utf-8", "replace"))
        raise TpBtfError(f"tp_btf {name}: BPF_PROG_LOAD: {os.strerror(err)}" + (f": {complaint}" if complaint else ""))
    return fd


def attach(prog_fd):
    """BPF_RAW_TRACEPOINT_OPEN of a loaded tp_btf program (the kernel knows where from its attach_btf_id); the link fd."""
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=QI", attr, 0, 0, prog_fd)
    fd, err = _bpf(BPF_RAW_TRACEPOINT_OPEN, attr)
    if fd < 0:
        raise TpBtfError(f"BPF_RAW_TRACEPOINT_OPEN: {os.strerror(err)}")
    return fd


def load_and_attach(bpf, fn_name, tracepoint, btf):
    """
    Load BCC function fn_name of the compiled BPF object as tp_btf/<tracepoint> and attach it.
    Registered in bpf.funcs and bpf.raw_tracepoint_fds (key "tp_btf/<tracepoint>"), so cleanup() releases both.
    """
    from bcc import BPF

    insns = bpf.dump_func(fn_name.encode())
    prog_fd = load(insns, fn_name, btf.tracepoint_id(tracepoint))
    try:
        link_fd = attach(prog_fd)
    except TpBtfError:
        os.close(prog_fd)
        raise
    bpf.funcs[fn_name.encode()] = BPF.Function(bpf, fn_name.encode(), prog_fd)
    bpf.raw_tracepoint_fds[attach_key(tracepoint).encode()] = link_fd


def attach_key(tracepoint):
    """How a tp_btf attachment is named in status and in bpf.raw_tracepoint_fds."""
    return ATTACH_PREFIX + tracepoint
