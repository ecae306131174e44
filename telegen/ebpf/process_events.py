"""
The `process` probe: sched:sched_process_exec/exit events feeding the ProcessTable.

The kernel sends the common event header (the kind says exec or exit, the pid is the tgid) and
the task's comm, the executable's name as the kernel keeps it (15 bytes at most). The table does
the rest: it reads /proc on exec, keeps the comm for a process already gone from /proc, and forgets
processes a grace period after they exit. Exits also carry the parent's pid, read at the running
kernel's task_struct offsets (from its BTF): a forking server's worker, gone before it is read,
is known by its parent.
"""
import struct

from twisted.logger import Logger

from telegen.ebpf.btf import BtfError, KernelBtf
from telegen.ebpf.probe import Probe

log = Logger()

PROCESS_EXEC = 1
PROCESS_EXIT = 2

# struct process_event {struct telegen_event_header {u64 ts_ns; u32 pid; u32 tid; u32 kind; u32 _pad;}; char comm[16]; u32 ppid;}
EVENT = struct.Struct("<QIII4x16sI")
# -D flag of bpf/process.c -> (kernel struct, member): task->real_parent->tgid.
PARENT_FIELDS = {"OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"), "OFF_TASK_TGID": ("task_struct", "tgid")}


# Process and TCP events are small and rare next to HTTP's: a 1 MiB ring buffer holds tens of
# thousands of them, and every byte of a ring buffer is mapped into the agent (twice, in RSS).
EVENT_RINGBUF_MAX = 1 << 20


def small_ringbuf_size(config):
    """The ring buffer size of the process and TCP probes: the configured size, at most 1 MiB."""
    return min(config["agent"]["ebpf"]["ringbuf_size"], EVENT_RINGBUF_MAX)


class ProcessProbe(Probe):
    """Exec and exit of every process on the host, for the process table."""

    name = "process"
    source = "process.c"
    # A process's exec event is committed before any of its HTTP or TCP events. Draining this ring
    # first, whenever another is drained, lets the table know a short-lived process (read from
    # /proc, or by its comm) before its spans ask for their resource; rings drained in any
    # order would often name curl "unknown_service".
    drains_first = True

    def __init__(self, processes):
        self.processes = processes

    def enabled(self, config):
        return config["agent"]["ebpf"]["enabled"]

    def ringbuf_size(self, config):
        return small_ringbuf_size(config)

    def tracepoints(self):
        return [("sched:sched_process_exec", "tracepoint__sched__sched_process_exec"),
                ("sched:sched_process_exit", "tracepoint__sched__sched_process_exit")]

    def cflags(self, config):
        """The parent's offsets; without kernel BTF exits carry ppid 0 (workers known by comm only)."""
        try:
            return KernelBtf.load().offset_flags(PARENT_FIELDS)
        except BtfError as e:
            log.warn("process exits will not name their parent: {error}", error=str(e))
            return []

    def ring_buffers(self):
        return {"process_events": self.on_event}

    def on_event(self, raw):
        """Decode one event and tell the table."""
        _, pid, _, kind, comm, ppid = EVENT.unpack_from(raw)
        name = comm.split(b"\0", 1)[0].decode("utf-8", "replace")
        if kind == PROCESS_EXEC:
            self.processes.on_exec(pid, name)
        elif kind == PROCESS_EXIT:
            self.processes.on_exit(pid, name, ppid)
