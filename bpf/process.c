/*
 * Process lifecycle for the process table: one event per exec and per process exit.
 *
 * User space reads everything else from /proc/PID when the exec event arrives. The event adds
 * only the task's comm (the executable's name as the kernel keeps it, up to 15 bytes): a
 * short-lived process such as curl is often gone from /proc by the time the event is read, and
 * its telemetry still needs a service.name. Exits are reported when the thread-group leader exits (tid == tgid):
 * a thread exiting is not a process exit. The periodic /proc rescan corrects what this misses
 * (a leader exiting before its other threads, lost events). Both events carry the parent's pid: a
 * child forked without exec (a forking server's per-connection worker) runs its parent's program
 * in its parent's container, which is how the table knows one that is gone before it is read.
 * The parent is read at the running kernel's task_struct offsets (OFF_TASK_REAL_PARENT and
 * OFF_TASK_TGID from its BTF, telegen/ebpf/process_events.py), never the kernel headers' (6.1's on
 * a 6.18 kernel here: task->real_parent->tgid read 0 for every process); without BTF ppid is 0.
 */
#include <linux/sched.h>
#include "telegen.h"

enum { TELEGEN_RB_process_events = 0 };
enum { PROCESS_EXEC = 1, PROCESS_EXIT = 2 };

struct process_event {
    struct telegen_event_header h;
    char comm[16];      /* TASK_COMM_LEN, NUL-padded */
    u32 ppid;           /* the parent's tgid */
};

BPF_RINGBUF_OUTPUT(process_events, RINGBUF_PAGES);

static __always_inline void emit(u32 kind)
{
    struct process_event *e = telegen_reserved(
        process_events.ringbuf_reserve(sizeof(*e)), TELEGEN_RB_process_events);
    if (!e)
        return;
    telegen_fill_header(&e->h, kind, bpf_ktime_get_ns());
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    e->ppid = 0;
#ifdef OFF_TASK_REAL_PARENT
    char *parent = 0;
    bpf_probe_read_kernel(&parent, sizeof(parent), (char *)bpf_get_current_task() + OFF_TASK_REAL_PARENT);
    bpf_probe_read_kernel(&e->ppid, sizeof(e->ppid), parent + OFF_TASK_TGID);
#endif
    process_events.ringbuf_submit(e, telegen_wakeup_flags(sizeof(*e)));
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    emit(PROCESS_EXEC);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id == (u32)(id >> 32))
        emit(PROCESS_EXIT);
    return 0;
}
