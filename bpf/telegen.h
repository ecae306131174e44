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
    u32 proto;   /* L7 protocol of the connection (telegen/l7/protocols.py), 0 for non-L7 events */
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

/* CPUs that may run the programs (sets how often each wakes the reader). */
#ifndef TELEGEN_NCPUS
#define TELEGEN_NCPUS 1
#endif

/*
 * Wake the reader only when a ring buffer is filling up: `events.ringbuf_submit(e,
 * telegen_wakeup_flags(sizeof(*e)));` wakes it once a CPU has submitted its share of an eighth
 * of the ring (RINGBUF_PAGES) since its last wakeup. Below that the reader's drain timer
 * (agent.ebpf.drain_interval) collects the events: one drain then handles thousands of events
 * in a row, which costs the Python consumer far less per event than many small batches (its
 * code and data stay in the CPU caches), and a quiet ring costs no wakeups at all.
 * (BCC 0.26 has no ringbuf_query, hence the per-CPU byte count.)
 */
#define TELEGEN_WAKEUP_BYTES ((u64)RINGBUF_PAGES * 4096 / 8 / TELEGEN_NCPUS)
BPF_PERCPU_ARRAY(unwoken_bytes, u64, 1);

static __always_inline u64 telegen_wakeup_flags(u64 size)
{
    u32 zero = 0;
    u64 *n = unwoken_bytes.lookup(&zero);
    if (!n)
        return BPF_RB_FORCE_WAKEUP;
    *n += size;
    if (*n < TELEGEN_WAKEUP_BYTES)
        return BPF_RB_NO_WAKEUP;
    *n = 0;
    return BPF_RB_FORCE_WAKEUP;
}

/* True when the current task belongs to the agent itself. */
static __always_inline int telegen_is_self(void)
{
    return TELEGEN_PID != 0 && (bpf_get_current_pid_tgid() >> 32) == TELEGEN_PID;
}

/* `ts` is the caller's bpf_ktime_get_ns(): a clock read costs ~70 ns here, so programs read it once. */
static __always_inline void telegen_fill_header(struct telegen_event_header *h, u32 kind, u64 ts)
{
    u64 id = bpf_get_current_pid_tgid();
    h->ts_ns = ts;
    h->pid = id >> 32;
    h->tid = (u32)id;
    h->kind = kind;
    h->proto = 0;
}

#endif /* TELEGEN_H */
