"""
The `process` probe: sched:sched_process_exec/exit events feeding the ProcessTable.

The kernel sends only the common event header; the kind says exec or exit and the pid is the
tgid. The table does the rest (reads /proc on exec, forgets after a grace period on exit).
"""
import ctypes
import struct

from telegen.ebpf.probe import Probe

PROCESS_EXEC = 1
PROCESS_EXIT = 2

# struct telegen_event_header {u64 ts_ns; u32 pid; u32 tid; u32 kind; u32 _pad;}
HEADER = struct.Struct("<QIII4x")


def ringbuf_pages(config):
    """-DRINGBUF_PAGES for a probe's ring buffers: agent.ebpf.ringbuf_size in 4 KiB pages."""
    return f"-DRINGBUF_PAGES={config['agent']['ebpf']['ringbuf_size'] // 4096}"


class ProcessProbe(Probe):
    """Exec and exit of every process on the host, for the process table."""

    name = "process"
    source = "process.c"

    def __init__(self, processes):
        self.processes = processes

    def enabled(self, config):
        return config["agent"]["ebpf"]["enabled"]

    def cflags(self, config):
        return [ringbuf_pages(config)]

    def tracepoints(self):
        return [("sched:sched_process_exec", "tracepoint__sched__sched_process_exec"),
                ("sched:sched_process_exit", "tracepoint__sched__sched_process_exit")]

    def ring_buffers(self):
        return {"process_events": self.on_event}

    def on_event(self, data, size):
        """Decode one header-only event and tell the table."""
        _, pid, _, kind = HEADER.unpack_from(ctypes.string_at(data, size))
        if kind == PROCESS_EXEC:
            self.processes.on_exec(pid)
        elif kind == PROCESS_EXIT:
            self.processes.on_exit(pid)
