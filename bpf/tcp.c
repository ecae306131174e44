/*
 * TCP connection telemetry from sock:inet_sock_set_state (plus retransmits and resets).
 *
 * A connection is keyed by its socket's address (skaddr), used as an opaque number: never
 * dereferenced, so no kernel struct layout is read. Direction comes from the transitions:
 *   CLOSE -> SYN_SENT          outgoing (connect); only connect() (or a TCP Fast Open sendmsg) enters
 *                              SYN_SENT, in the connecting task's context: pid = the current task
 *   LISTEN -> SYN_RECV         incoming (the child socket of a listener, in softirq: no pid)
 * Then SYN_SENT/SYN_RECV -> ESTABLISHED reports OPENED/ACCEPTED, ESTABLISHED|CLOSE_WAIT ->
 * FIN_WAIT1|LAST_ACK (only ever done by close()/shutdown() in the owner's context) records the
 * owner's pid for incoming connections, and -> CLOSE reports CLOSED, or FAILED for an outgoing
 * connection that never got established (error: RST received = refused, else unknown).
 * Every state change may run in softirq context, hence no bpf_get_current_pid_tgid() there
 * except where the comment above says the context is the owner's.
 */
#include "telegen.h"

enum { TELEGEN_RB_tcp_events = 0 };
enum { TCP_OPENED = 1, TCP_ACCEPTED = 2, TCP_CLOSED = 3, TCP_FAILED = 4, TCP_RETRANSMIT = 5 };
enum { DIR_OUT = 1, DIR_IN = 2 };
enum { ERR_NONE = 0, ERR_REFUSED = 1, ERR_UNKNOWN = 2 };
enum { FAMILY_INET = 2, PROTO_TCP = 6 };   /* AF_INET, IPPROTO_TCP: uapi values */

/* Kernel TCP states (include/net/tcp_states.h; a stable uapi-like enum). */
enum {
    S_ESTABLISHED = 1, S_SYN_SENT = 2, S_SYN_RECV = 3, S_FIN_WAIT1 = 4, S_CLOSE = 7,
    S_CLOSE_WAIT = 8, S_LAST_ACK = 9, S_LISTEN = 10,
};

#ifndef TCP_MAX_CONNS
#define TCP_MAX_CONNS 65536
#endif

struct conn {
    u64 start_ns;        /* SYN_SENT or SYN_RECV */
    u64 established_ns;  /* 0 until established */
    u32 pid;             /* owner tgid, 0 when not known (yet) */
    u16 family;
    u16 sport;
    u16 dport;
    u8 direction;
    u8 reset;            /* RST received while connecting */
    u8 saddr[16];
    u8 daddr[16];
};

struct tcp_event {
    struct telegen_event_header h;   /* pid = connection owner (0 unknown), not the current task */
    u64 start_ns;
    u64 established_ns;
    u16 family;
    u16 sport;
    u16 dport;
    u8 direction;
    u8 error;
    u8 saddr[16];
    u8 daddr[16];
};

/* Copy a tracepoint's local/remote tuple (same field names in sock and tcp events) into a conn. */
#define COPY_TUPLE(c, a) do {                                     \
        (c)->family = (a)->family;                                \
        (c)->sport = (a)->sport;                                  \
        (c)->dport = (a)->dport;                                  \
        if ((a)->family == FAMILY_INET) {                         \
            __builtin_memcpy((c)->saddr, (a)->saddr, 4);          \
            __builtin_memcpy((c)->daddr, (a)->daddr, 4);          \
        } else {                                                  \
            __builtin_memcpy((c)->saddr, (a)->saddr_v6, 16);      \
            __builtin_memcpy((c)->daddr, (a)->daddr_v6, 16);      \
        }                                                         \
    } while (0)

BPF_RINGBUF_OUTPUT(tcp_events, RINGBUF_PAGES);
BPF_HASH(tcp_conns, u64, struct conn, TCP_MAX_CONNS);
BPF_PERCPU_ARRAY(tcp_untracked, u64, 1);        /* connections not tracked: tcp_conns was full */

static __always_inline void emit(struct conn *c, u32 kind, u8 error, u64 now)
{
    struct tcp_event *e = telegen_reserved(tcp_events.ringbuf_reserve(sizeof(*e)), TELEGEN_RB_tcp_events);
    if (!e)
        return;
    e->h.ts_ns = now;
    e->h.pid = c->pid;
    e->h.tid = 0;
    e->h.kind = kind;
    e->h.proto = 0;
    e->start_ns = c->start_ns;
    e->established_ns = c->established_ns;
    e->family = c->family;
    e->sport = c->sport;
    e->dport = c->dport;
    e->direction = c->direction;
    e->error = error;
    __builtin_memcpy(e->saddr, c->saddr, 16);
    __builtin_memcpy(e->daddr, c->daddr, 16);
    tcp_events.ringbuf_submit(e, telegen_wakeup_flags(sizeof(*e)));
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != PROTO_TCP)
        return 0;
    u64 key = (u64)args->skaddr;
    int old = args->oldstate, new = args->newstate;
    u64 now = bpf_ktime_get_ns();

    if (new == S_SYN_SENT || (old == S_LISTEN && new == S_SYN_RECV)) {
        struct conn c = {};
        c.start_ns = now;
        COPY_TUPLE(&c, args);
        if (new == S_SYN_SENT) {
            if (telegen_is_self())
                return 0;
            c.direction = DIR_OUT;
            c.pid = bpf_get_current_pid_tgid() >> 32;
        } else {
            c.direction = DIR_IN;
        }
        if (tcp_conns.update(&key, &c) != 0) {
            u32 zero = 0;
            u64 *n = tcp_untracked.lookup(&zero);
            if (n)
                (*n)++;
        }
        return 0;
    }

    struct conn *c = tcp_conns.lookup(&key);
    if (!c)
        return 0;
    /* connect() binds the local address and port after entering SYN_SENT: refresh the tuple. */
    COPY_TUPLE(c, args);
    if (new == S_ESTABLISHED && (old == S_SYN_SENT || old == S_SYN_RECV)) {
        c->established_ns = now;
        emit(c, c->direction == DIR_OUT ? TCP_OPENED : TCP_ACCEPTED, ERR_NONE, now);
    } else if ((new == S_FIN_WAIT1 || new == S_LAST_ACK) && c->pid == 0) {
        c->pid = bpf_get_current_pid_tgid() >> 32;
    } else if (new == S_CLOSE) {
        if (c->established_ns)
            emit(c, TCP_CLOSED, ERR_NONE, now);
        else if (c->direction == DIR_OUT)
            emit(c, TCP_FAILED, c->reset ? ERR_REFUSED : ERR_UNKNOWN, now);
        tcp_conns.delete(&key);
    }
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
    u64 key = (u64)args->skaddr;
    struct conn *c = tcp_conns.lookup(&key);
    if (c && !c->established_ns)
        c->reset = 1;
    return 0;
}

/* Retransmits of connections opened before the agent started are reported too (pid and direction unknown). */
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    u64 key = (u64)args->skaddr;
    struct conn *c = tcp_conns.lookup(&key);
    if (c) {
        emit(c, TCP_RETRANSMIT, ERR_NONE, bpf_ktime_get_ns());
        return 0;
    }
    struct conn u = {};
    COPY_TUPLE(&u, args);
    emit(&u, TCP_RETRANSMIT, ERR_NONE, bpf_ktime_get_ns());
    return 0;
}
