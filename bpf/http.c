/*
 * HTTP/1.x exchanges from syscall tracepoints (no kprobes, no kernel struct layouts here).
 *
 * Connections are learnt at accept/accept4 (server side) and connect (client side) exit and kept
 * in `conns`, keyed by (tgid << 32 | fd). The first bytes of the first read (server) or write
 * (client) classify the connection as HTTP or not. On an HTTP connection every read/write/
 * sendfile updates byte totals; a syscall whose buffer starts a request (method + space) or a
 * response ("HTTP/1.") sends one event with the first HTTP_CAPTURE bytes, the totals before it
 * and the connection's addresses; close sends a last event with the final totals. User space
 * (telegen/ebpf/http_decoder.py) pairs requests and responses, so keep-alive and pipelining work,
 * and derives body sizes and end times of large or sendfile'd responses from the totals.
 *
 * Requests and responses are paired here when they can be: a request is held in
 * `pending_requests` (per connection) until the response starts, and both leave in one
 * EV_EXCHANGE event. That halves the events the Python consumer handles per exchange, and a
 * ring buffer overflow then loses whole exchanges (one counted event each) instead of
 * separating a request from its response. A second request arriving before the response
 * (pipelining), a close, or a full map send the held request alone as EV_REQUEST, exactly as
 * if it had never been held, so user space pairs those itself. The events, the pairing and the
 * classification are shared with the socket-level capture (bpf/http_events.h).
 *
 * The local address/port of an accepted socket comes from sock:inet_sock_set_state
 * (SYN_RECV -> ESTABLISHED, keyed by the peer's address/port), matched at accept exit with the
 * peer sockaddr the application passed to accept (read from user memory).
 */
#include "telegen.h"
#include "http_events.h"
#include "l7_stream.h"
#include "tls.h"

#ifndef MAX_CONNS
#define MAX_CONNS 65536
#endif
#define EINPROGRESS_ 115


/*
 * conns and passive are LRU: entries whose close (or accept) is never seen must age out.
 * `inflight` carries a read/write/accept from its entry to its exit in the thread's own task
 * storage (needs kernel BTF): a lookup there costs ~20-50 ns where a hash keyed by pid_tgid cost
 * ~350 ns per syscall for its update and delete, and every read and write of a traced connection
 * pays it. connect keeps a plain hash: it is rare.
 */
BPF_TABLE("lru_hash", u64, struct conn, conns, MAX_CONNS);
BPF_TASK_STORAGE(inflight, struct pending);
BPF_HASH(connecting, u64, struct endpoint, 4096);
BPF_TABLE("lru_hash", struct endpoint, struct endpoint, passive, 16384);

/* Fill `ep` from a user-space sockaddr; 0 when it is not AF_INET/AF_INET6. */
static __always_inline int read_sockaddr(struct endpoint *ep, u64 uaddr)
{
    u8 sa[24] = {};
    if (!uaddr || bpf_probe_read_user(sa, sizeof(sa), (void *)uaddr) != 0)
        return 0;
    u16 family = sa[0] | (sa[1] << 8);
    ep->port = (sa[2] << 8) | sa[3];
    ep->family = family;
    if (family == AF_INET_) {
        mapped_v4(ep->addr, &sa[4]);
        return 1;
    }
    if (family == AF_INET6_) {
        __builtin_memcpy(ep->addr, &sa[8], 16);
        return 1;
    }
    return 0;
}

static __always_inline void inflight_put(u64 buf, u64 ts, u32 fd, u32 how)
{
    struct pending *p = inflight.task_storage_get(bpf_get_current_task_btf(), 0,
                                                  BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!p)
        return;
    p->buf = buf;
    p->ts = ts;
    p->fd = fd;
    p->how = how;
}

/* Take the syscall now exiting out of the thread's storage: 0 when none was put. */
static __always_inline int inflight_take(struct pending *out)
{
    struct pending *p = inflight.task_storage_get(bpf_get_current_task_btf(), 0, 0);
    if (!p || !p->how)
        return 0;
    *out = *p;
    p->how = 0;
    return 1;
}

static __always_inline int track_enter(u32 fd, u64 buf, u32 how, int is_write)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id & 0xffffffff00000000ULL) | fd;
    struct conn *c = conns.lookup(&key);
    if (!c)
        return 0;
#ifdef TELEGEN_TLS
    if (tls_socket_io(c, key, fd))
        return 0;
#endif
    if (c->role == ROLE_OTHER)
        return 0;
    /* Only a client's request write starts a span at its entry; everything else uses exit times. */
    int client = c->role == ROLE_CONNECTED || c->role == ROLE_CLIENT;
    inflight_put(buf, (client && is_write) ? bpf_ktime_get_ns() : 0, fd, how);
    return 0;
}

static __always_inline int track_exit(s64 ret, int is_write)
{
    struct pending p;
    if (!inflight_take(&p) || p.how == HOW_ACCEPT || ret <= 0)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id & 0xffffffff00000000ULL) | p.fd;
    struct conn *c = conns.lookup(&key);
    if (!c)
        return 0;
    u64 now = bpf_ktime_get_ns();

    u64 ptr = 0, avail = 0;
    user_payload(p.how, p.buf, ret, &ptr, &avail);
    if (!l7_payload(key, c, &p, ret, ptr, avail, is_write, now)) {
        struct slot_ref r = {.key = key, .sk = 0};
        http_payload(&r, c, &p, ret, ptr, avail, is_write, now);
    }
    return 0;
}

/* ---- data syscalls ---- */
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return track_enter(args->fd, (u64)args->buf, HOW_PLAIN, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return track_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return track_enter(args->fd, (u64)args->vec, HOW_IOV, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return track_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return track_enter(args->fd, (u64)args->ubuf, HOW_PLAIN, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return track_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return track_enter(args->fd, (u64)args->msg, HOW_MSG, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return track_exit(args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return track_enter(args->fd, (u64)args->buf, HOW_PLAIN, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return track_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return track_enter(args->fd, (u64)args->vec, HOW_IOV, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return track_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return track_enter(args->fd, (u64)args->buff, HOW_PLAIN, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return track_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return track_enter(args->fd, (u64)args->msg, HOW_MSG, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return track_exit(args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendfile64) { return track_enter(args->out_fd, 0, HOW_SENDFILE, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendfile64) { return track_exit(args->ret, 1); }

/* ---- connection lifecycle ---- */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    /* Passive opens only: remember local address/port by the peer's, for accept exit. */
    if (args->protocol != 6 /* IPPROTO_TCP */ || args->newstate != 1 /* ESTABLISHED */ ||
        args->oldstate != 3 /* SYN_RECV */)
        return 0;
    struct endpoint peer = {}, local = {};
    if (args->family == AF_INET_) {
        mapped_v4(peer.addr, args->daddr);
        mapped_v4(local.addr, args->saddr);
    } else {
        __builtin_memcpy(peer.addr, args->daddr_v6, 16);
        __builtin_memcpy(local.addr, args->saddr_v6, 16);
    }
    peer.port = args->dport;
    local.port = args->sport;
    local.family = args->family;
    passive.update(&peer, &local);
    return 0;
}

static __always_inline int accept_enter(u32 fd, u64 uaddr)
{
    if (telegen_is_self())
        return 0;
    inflight_put(uaddr, 0, fd, HOW_ACCEPT);
    return 0;
}

static __always_inline int accept_exit(s64 ret)
{
    struct pending p;
    if (!inflight_take(&p) || ret < 0 || p.how != HOW_ACCEPT)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u64 uaddr = p.buf;
    struct conn c = {};
    if (read_sockaddr(&c.peer, uaddr)) {
        struct endpoint key = {};
        __builtin_memcpy(key.addr, c.peer.addr, 16);
        key.port = c.peer.port;
        struct endpoint *local = passive.lookup(&key);
        if (local) {
            c.local = *local;
            passive.delete(&key);
        }
    }
    if (!port_allowed(c.local.port, c.local.port != 0))
        return 0;
    c.start_ts = bpf_ktime_get_ns();
    c.role = ROLE_ACCEPTED;
    u64 key = (id & 0xffffffff00000000ULL) | (u32)ret;
    conns.update(&key, &c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept) { return accept_enter(args->fd, (u64)args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return accept_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return accept_enter(args->fd, (u64)args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return accept_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    if (telegen_is_self())
        return 0;
    struct endpoint peer = {};
    if (!read_sockaddr(&peer, (u64)args->uservaddr))
        return 0;
    if (!port_allowed(peer.port, 1))
        return 0;
    peer._pad = args->fd;         /* carried to the exit in the spare field */
    u64 id = bpf_get_current_pid_tgid();
    connecting.update(&id, &peer);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    u64 id = bpf_get_current_pid_tgid();
    struct endpoint *pp = connecting.lookup(&id);
    if (!pp)
        return 0;
    struct endpoint peer = *pp;
    connecting.delete(&id);
    if (args->ret != 0 && args->ret != -EINPROGRESS_)
        return 0;
    struct conn c = {};
    u32 fd = peer._pad;
    peer._pad = 0;
    c.peer = peer;
    c.start_ts = bpf_ktime_get_ns();
    c.role = ROLE_CONNECTED;
    u64 key = (id & 0xffffffff00000000ULL) | fd;
    conns.update(&key, &c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id & 0xffffffff00000000ULL) | (u32)args->fd;
    struct conn *c = conns.lookup(&key);
    if (!c)
        return 0;
#ifdef TELEGEN_TLS
    if (c->role == ROLE_TLS)
        tls_closed(key);
#endif
    if (c->proto) {
        l7_close(key, c, bpf_ktime_get_ns());
    } else if (c->role == ROLE_SERVER || c->role == ROLE_CLIENT) {
        struct slot_ref r = {.key = key, .sk = 0};
        release_request(&r);
        struct pending p = {.buf = 0, .ts = 0, .fd = args->fd, .how = 0};
        send_event(EV_CLOSE, c, &p, 0, 0, 0, bpf_ktime_get_ns());
    }
    conns.delete(&key);
    return 0;
}
