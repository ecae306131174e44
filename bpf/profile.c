/*
 * CPU profiler: a perf_event program on the software cpu-clock of every CPU (the VMs have no
 * hardware PMU) that counts samples per (pid, user stack id, kernel stack id) in the kernel.
 *
 * Two generations of (counts, stacks) maps: the program writes the generation named by
 * `generation[0]`; user space flips it every upload_interval and drains the other one at
 * leisure, so the kernel never waits for user space and no sample falls between windows.
 * Failures are counted in `drops` (per CPU, slots below), never silent: a stack id refused
 * because its bucket holds another stack (-EEXIST, we do not pass BPF_F_REUSE_STACKID, which
 * would silently give older keys the newer stack), a full stack map (-ENOMEM), a full counts
 * map. -EFAULT is not a failure: a user stack of a kernel thread, a kernel stack of a sample
 * taken in user mode.
 *
 * The first sample of a pid the program has not seen sends its pid on `new_pids`, so user space
 * records the process's memory mappings while it still runs (it may exit before the drain).
 */
#include "telegen.h"
#include <uapi/linux/bpf_perf_event.h>

#ifndef COUNTS_ENTRIES
#define COUNTS_ENTRIES 16384
#endif
#ifndef STACK_ENTRIES
#define STACK_ENTRIES 16384
#endif
#ifndef PROFILE_SELF
#define PROFILE_SELF 0
#endif
#ifndef OFF_CPU
#define OFF_CPU 0
#endif

enum { TELEGEN_RB_new_pids = 0 };
enum { DROP_STACK_COLLISION = 0, DROP_STACK_MAP_FULL = 1, DROP_COUNTS_MAP_FULL = 2, DROP_OFF_CPU_THREADS_FULL = 3,
       DROP_OFF_CPU_CROSSED_WINDOW = 4, DROP_SLOTS = 5 };

struct sample_key {
    u32 pid;
    s32 user_stack;     /* stack id, or a negative errno */
    s32 kernel_stack;
};

BPF_HASH(counts0, struct sample_key, u64, COUNTS_ENTRIES);
BPF_HASH(counts1, struct sample_key, u64, COUNTS_ENTRIES);
BPF_STACK_TRACE(stacks0, STACK_ENTRIES);
BPF_STACK_TRACE(stacks1, STACK_ENTRIES);
BPF_ARRAY(generation, u32, 1);
BPF_PERCPU_ARRAY(drops, u64, DROP_SLOTS);
BPF_TABLE("lru_hash", u32, u8, seen_pids, 8192);
BPF_HASH(helper_pids, u32, u8, 16);     /* the agent's worker processes: their CPU is the agent's */
BPF_RINGBUF_OUTPUT(new_pids, RINGBUF_PAGES);

static __always_inline void count_drop(u32 slot)
{
    u64 *n = drops.lookup(&slot);
    if (n)
        (*n)++;
}

static __always_inline void check_stack(s32 id)
{
    if (id == -EEXIST)
        count_drop(DROP_STACK_COLLISION);
    else if (id == -ENOMEM)
        count_drop(DROP_STACK_MAP_FULL);
}

static __always_inline void note_pid(u32 pid)
{
    u8 one = 1;
    if (seen_pids.lookup(&pid))
        return;
    seen_pids.update(&pid, &one);
    struct telegen_event_header *e = telegen_reserved(new_pids.ringbuf_reserve(sizeof(*e)), TELEGEN_RB_new_pids);
    if (!e)
        return;
    telegen_fill_header(e, 1, bpf_ktime_get_ns());
    new_pids.ringbuf_submit(e, 0);
}

int on_sample(struct bpf_perf_event_data *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid == 0)                       /* the idle task: not CPU anyone spent */
        return 0;
#if !PROFILE_SELF
    if (telegen_is_self() || helper_pids.lookup(&pid))
        return 0;
#endif
    u32 zero = 0;
    u32 *gen = generation.lookup(&zero);
    struct sample_key key = {.pid = pid};
    u64 init = 0, *n;
    if (gen && *gen) {
        key.user_stack = stacks1.get_stackid(&ctx->regs, BPF_F_USER_STACK);
        key.kernel_stack = stacks1.get_stackid(&ctx->regs, 0);
        n = counts1.lookup_or_try_init(&key, &init);
    } else {
        key.user_stack = stacks0.get_stackid(&ctx->regs, BPF_F_USER_STACK);
        key.kernel_stack = stacks0.get_stackid(&ctx->regs, 0);
        n = counts0.lookup_or_try_init(&key, &init);
    }
    check_stack(key.user_stack);
    check_stack(key.kernel_stack);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        count_drop(DROP_COUNTS_MAP_FULL);
    note_pid(pid);
    return 0;
}

#if OFF_CPU
/*
 * Off-CPU time: at sched_switch the task going to sleep (prev, which is `current` here) has its
 * stacks taken and its start time kept by thread id; when it is switched in again (next), the
 * time in between is added to offcpu<generation> under those stacks, in nanoseconds. Only
 * blocking counts (prev_state S or D), not preemption nor exit. A block that spans a generation
 * flip cannot use its stack ids (that generation's stacks were drained): its time is counted as
 * a drop instead (DROP_OFF_CPU_CROSSED_WINDOW, in samples of one).
 */
struct offcpu_start {
    u64 ts;
    u32 tgid;
    u32 generation;
    s32 user_stack;
    s32 kernel_stack;
};

BPF_HASH(offcpu_started, u32, struct offcpu_start, COUNTS_ENTRIES);
BPF_HASH(offcpu0, struct sample_key, u64, COUNTS_ENTRIES);
BPF_HASH(offcpu1, struct sample_key, u64, COUNTS_ENTRIES);

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = bpf_ktime_get_ns();
    u32 zero = 0;
    u32 *g = generation.lookup(&zero);
    u32 gen = g ? *g : 0;
    u32 prev = args->prev_pid, next = args->next_pid;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (prev != 0 && (args->prev_state & 3) != 0     /* TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE: blocked */
#if !PROFILE_SELF
        && !telegen_is_self() && !helper_pids.lookup(&tgid)
#endif
    ) {
        struct offcpu_start start = {.ts = now, .tgid = tgid, .generation = gen};
        if (gen) {
            start.user_stack = stacks1.get_stackid(args, BPF_F_USER_STACK);
            start.kernel_stack = stacks1.get_stackid(args, 0);
        } else {
            start.user_stack = stacks0.get_stackid(args, BPF_F_USER_STACK);
            start.kernel_stack = stacks0.get_stackid(args, 0);
        }
        check_stack(start.user_stack);
        check_stack(start.kernel_stack);
        if (offcpu_started.update(&prev, &start) != 0)
            count_drop(DROP_OFF_CPU_THREADS_FULL);
        note_pid(tgid);                 /* a process that only sleeps is never sampled on CPU */
    }
    if (next == 0)
        return 0;
    struct offcpu_start *s = offcpu_started.lookup(&next);
    if (!s)
        return 0;
    if (s->generation != gen) {
        count_drop(DROP_OFF_CPU_CROSSED_WINDOW);
    } else {
        struct sample_key key = {.pid = s->tgid, .user_stack = s->user_stack, .kernel_stack = s->kernel_stack};
        u64 init = 0, *n;
        n = gen ? offcpu1.lookup_or_try_init(&key, &init) : offcpu0.lookup_or_try_init(&key, &init);
        if (n)
            __sync_fetch_and_add(n, now - s->ts);
        else
            count_drop(DROP_COUNTS_MAP_FULL);
    }
    offcpu_started.delete(&next);
    return 0;
}
#endif
