/*
 * Shared by every Telegen BPF program (compiled by BCC, one BPF object per file).
 *
 * Rules on these machines (see docs/ebpf.md): tracepoints only, never read kernel struct
 * layouts (headers may not match the running kernel), read user memory with
 * bpf_probe_read_user. Parameters arrive as -D flags from the Probe's cflags().
 *
 * The loader (telegen.ebpf.loader) pastes this file in place of the line `#include "telegen.h"`
 * because BCC only rewrites map operations (lost.lookup ...) in the main source text, not in
 * included files.
 */
#ifndef TELEGEN_H
#define TELEGEN_H

#include <uapi/linux/ptrace.h>

/* The agent's own tgid: its traffic is never reported (0 = no self filter). */
#ifndef TELEGEN_PID
#define TELEGEN_PID 0
#endif

/* Pages per ring buffer (agent.ebpf.ringbuf_size / 4096). */
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 4096
#endif

/* Wake the reader once per this many submitted events per CPU (agent.ebpf.wakeup_events). */
#ifndef TELEGEN_WAKEUP_EVENTS
#define TELEGEN_WAKEUP_EVENTS 1
#endif

/* Ring buffers per BPF object; the lost array is indexed by TELEGEN_RB_<name>. */
#ifndef TELEGEN_MAX_RINGBUFS
#define TELEGEN_MAX_RINGBUFS 4
#endif

/* Common header of every event sent to user space. */
struct telegen_event_header {
    u64 ts_ns;   /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u32 pid;     /* tgid */
    u32 tid;
    u32 kind;    /* per-probe event kind */
    u32 _pad;
};

/*
 * Failed ring buffer reserves, per CPU, one slot per ring buffer of this object. A source
 * declares `enum { TELEGEN_RB_events = 0 };` for a ring buffer named `events` (slot = the
 * ring buffer's position in its Probe.ring_buffers()), and user space sums the CPUs.
 */
BPF_PERCPU_ARRAY(lost, u64, TELEGEN_MAX_RINGBUFS);

static __always_inline void telegen_count_lost(u32 slot)
{
    u64 *n = lost.lookup(&slot);
    if (n)
        (*n)++;
}

/*
 * Count a failed reserve: `e = telegen_reserved(events.ringbuf_reserve(sizeof(*e)), TELEGEN_RB_events);`
 * (BCC refuses map methods inside macros, so this is a function around the reserve, not a macro.)
 */
static __always_inline void *telegen_reserved(void *p, u32 slot)
{
    if (!p)
        telegen_count_lost(slot);
    return p;
}

/*
 * Events submitted per CPU, to batch wakeups: `events.ringbuf_submit(e, telegen_wakeup_flags());`
 * wakes the reader on every TELEGEN_WAKEUP_EVENTS-th event of a CPU only. Under load that turns
 * thousands of epoll wakeups a second into tens; the reader's drain timer picks up what is left
 * when traffic stops (libbpf's consume reads whatever is committed, woken or not).
 */
BPF_PERCPU_ARRAY(submitted, u64, 1);

static __always_inline u64 telegen_wakeup_flags(void)
{
    u32 zero = 0;
    u64 *n = submitted.lookup(&zero);
    if (!n)
        return 0;
    (*n)++;
    return (*n % TELEGEN_WAKEUP_EVENTS) == 0 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* True when the current task belongs to the agent itself. */
static __always_inline int telegen_is_self(void)
{
    return TELEGEN_PID != 0 && (bpf_get_current_pid_tgid() >> 32) == TELEGEN_PID;
}

static __always_inline void telegen_fill_header(struct telegen_event_header *h, u32 kind)
{
    u64 id = bpf_get_current_pid_tgid();
    h->ts_ns = bpf_ktime_get_ns();
    h->pid = id >> 32;
    h->tid = (u32)id;
    h->kind = kind;
    h->_pad = 0;
}

#endif /* TELEGEN_H */
