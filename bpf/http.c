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
 * if it had never been held, so user space pairs those itself.
 *
 * The local address/port of an accepted socket comes from sock:inet_sock_set_state
 * (SYN_RECV -> ESTABLISHED, keyed by the peer's address/port), matched at accept exit with the
 * peer sockaddr the application passed to accept (read from user memory).
 */
#include "telegen.h"

#ifndef HTTP_CAPTURE
#define HTTP_CAPTURE 512          /* bytes of request/response head sent; a power of two */
#endif
#ifndef MAX_CONNS
#define MAX_CONNS 65536
#endif
#ifndef MAX_PENDING_REQUESTS
#define MAX_PENDING_REQUESTS 8192  /* connections with a request waiting for its response */
#endif

#define AF_INET_ 2
#define AF_INET6_ 10
#define EINPROGRESS_ 115

enum { TELEGEN_RB_http_events = 0 };
BPF_RINGBUF_OUTPUT(http_events, RINGBUF_PAGES);

enum role { ROLE_ACCEPTED = 1, ROLE_CONNECTED = 2, ROLE_SERVER = 3, ROLE_CLIENT = 4, ROLE_OTHER = 5 };
enum kind { EV_REQUEST = 1, EV_RESPONSE = 2, EV_CLOSE = 3, EV_EXCHANGE = 4 };
enum how { HOW_PLAIN = 1, HOW_IOV = 2, HOW_MSG = 3, HOW_SENDFILE = 4, HOW_ACCEPT = 5 };

struct endpoint {
    u8 addr[16];                  /* IPv6 or IPv4-mapped (::ffff:a.b.c.d) */
    u16 port;                     /* host byte order */
    u16 family;
    u32 _pad;
};

struct conn {
    u64 start_ts;
    u64 rx_bytes;
    u64 tx_bytes;
    u64 last_rx_ts;
    u64 last_tx_ts;
    struct endpoint peer;
    struct endpoint local;
    u32 role;
    u32 _pad;
};

/* A syscall in flight on a tracked fd (or an accept), in the calling thread's task storage. */
struct pending {
    u64 buf;                      /* user pointer: data, iovec array, msghdr or sockaddr */
    u64 ts;                       /* entry time where a span uses it (a client's writes), else 0 */
    u32 fd;
    u32 how;                      /* 0: no syscall in flight */
};

struct http_event {
    struct telegen_event_header h;
    u64 enter_ts;
    u64 conn_start_ts;
    u64 rx_bytes;                 /* totals before this syscall */
    u64 tx_bytes;
    u64 last_rx_ts;
    u64 last_tx_ts;
    s64 ret;                      /* bytes moved by this syscall */
    struct endpoint peer;
    struct endpoint local;
    u32 fd;
    u32 role;
    u32 cap_len;
    u32 _pad;
    char data[HTTP_CAPTURE];
};

/* A held request and the response that answered it: `response` has kind EV_EXCHANGE. */
struct http_exchange_event {
    struct http_event response;
    u64 request_enter_ts;         /* the request syscall's entry and exit */
    u64 request_ts;
    u32 request_cap_len;
    u32 _pad;
    char request_data[HTTP_CAPTURE];
};

struct iovec_user {
    u64 base;
    u64 len;
};

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
/*
 * One request slot per HTTP connection (by connection key), filled in place when a request
 * starts (h.kind = EV_REQUEST) and emptied (h.kind = 0) when its response leaves with it; close
 * deletes the slot. Filling in place spares a 600-byte map update and a delete per exchange.
 * LRU: with more busy connections than slots the least recently used slot is evicted, and a
 * request it held is later counted as response_without_request in user space. request_scratch
 * is the blank a new slot is created from, and the fallback when no slot can be had.
 */
BPF_TABLE("lru_hash", u64, struct http_event, pending_requests, MAX_PENDING_REQUESTS);
BPF_PERCPU_ARRAY(request_scratch, struct http_event, 1);
BPF_TABLE("lru_hash", struct endpoint, struct endpoint, passive, 16384);
/* port_rules[port]: 1 = listed in include_ports, 2 = excluded (exclude_ports and the agent's own API port). */
BPF_ARRAY(port_rules, u8, 65536);
/*
 * settings[0]: 0 until user space has written port_rules (nothing is captured before, so the
 * agent's API port is excluded from the first event on), 1 = every port not excluded, 2 = only
 * the ports in include_ports. Written live, so a port filter change needs no recompilation.
 */
BPF_ARRAY(settings, u32, 1);

static __always_inline int port_allowed(u16 port, int known)
{
    u32 z = 0, k = port;
    u32 *mode = settings.lookup(&z);
    if (!mode || *mode == 0)
        return 0;
    u8 *rule = port_rules.lookup(&k);
    u8 r = (known && rule) ? *rule : 0;
    if (r == 2)
        return 0;
    if (*mode == 2 && r != 1)
        return 0;
    return 1;
}

static __always_inline void mapped_v4(u8 *dst, const u8 *v4)
{
    __builtin_memset(dst, 0, 10);
    dst[10] = 0xff;
    dst[11] = 0xff;
    dst[12] = v4[0];
    dst[13] = v4[1];
    dst[14] = v4[2];
    dst[15] = v4[3];
}

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

static __always_inline int is_request(const char *b)
{
    switch (b[0]) {
    case 'G': return b[1] == 'E' && b[2] == 'T' && b[3] == ' ';
    case 'P': return (b[1] == 'O' && b[2] == 'S' && b[3] == 'T' && b[4] == ' ') ||
                     (b[1] == 'U' && b[2] == 'T' && b[3] == ' ') ||
                     (b[1] == 'A' && b[2] == 'T' && b[3] == 'C' && b[4] == 'H' && b[5] == ' ');
    case 'H': return b[1] == 'E' && b[2] == 'A' && b[3] == 'D' && b[4] == ' ';
    case 'D': return b[1] == 'E' && b[2] == 'L' && b[3] == 'E' && b[4] == 'T' && b[5] == 'E' && b[6] == ' ';
    case 'O': return b[1] == 'P' && b[2] == 'T' && b[3] == 'I' && b[4] == 'O' && b[5] == 'N' && b[6] == 'S';
    case 'C': return b[1] == 'O' && b[2] == 'N' && b[3] == 'N' && b[4] == 'E' && b[5] == 'C' && b[6] == 'T';
    case 'T': return b[1] == 'R' && b[2] == 'A' && b[3] == 'C' && b[4] == 'E' && b[5] == ' ';
    }
    return 0;
}

static __always_inline int is_response(const char *b)
{
    return b[0] == 'H' && b[1] == 'T' && b[2] == 'T' && b[3] == 'P' && b[4] == '/' && b[5] == '1' && b[6] == '.';
}

/* Remember the syscall now entering in the thread's storage (created on its first traced syscall). */
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
    if (!c || c->role == ROLE_OTHER)
        return 0;
    /* Only a client's request write starts a span at its entry; everything else uses exit times. */
    int client = c->role == ROLE_CONNECTED || c->role == ROLE_CLIENT;
    inflight_put(buf, (client && is_write) ? bpf_ktime_get_ns() : 0, fd, how);
    return 0;
}

static __always_inline void fill_event(struct http_event *e, u32 kind, struct conn *c, struct pending *p,
                                       s64 ret, u64 ptr, u64 avail, u64 now)
{
    telegen_fill_header(&e->h, kind, now);
    e->enter_ts = (p && p->ts) ? p->ts : now;
    e->conn_start_ts = c->start_ts;
    e->rx_bytes = c->rx_bytes;
    e->tx_bytes = c->tx_bytes;
    e->last_rx_ts = c->last_rx_ts;
    e->last_tx_ts = c->last_tx_ts;
    e->ret = ret;
    e->peer = c->peer;
    e->local = c->local;
    e->fd = p ? p->fd : 0;
    e->role = c->role;
    e->_pad = 0;
    u32 n = 0;
    if (ptr) {
        if (avail >= HTTP_CAPTURE) {
            n = HTTP_CAPTURE;
            bpf_probe_read_user(e->data, HTTP_CAPTURE, (void *)ptr);
        } else {
            n = avail & (HTTP_CAPTURE - 1);
            bpf_probe_read_user(e->data, n, (void *)ptr);
        }
    }
    e->cap_len = n;
}

static __always_inline void send_event(u32 kind, struct conn *c, struct pending *p, s64 ret,
                                       u64 ptr, u64 avail, u64 now)
{
    struct http_event *e = telegen_reserved(http_events.ringbuf_reserve(sizeof(struct http_event)),
                                            TELEGEN_RB_http_events);
    if (!e)
        return;
    fill_event(e, kind, c, p, ret, ptr, avail, now);
    http_events.ringbuf_submit(e, telegen_wakeup_flags(sizeof(*e)));
}

/* Send a held (already filled) request event as it is. */
static __always_inline void send_copy(struct http_event *held)
{
    struct http_event *e = telegen_reserved(http_events.ringbuf_reserve(sizeof(struct http_event)),
                                            TELEGEN_RB_http_events);
    if (!e)
        return;
    bpf_probe_read_kernel(e, sizeof(struct http_event), held);
    http_events.ringbuf_submit(e, telegen_wakeup_flags(sizeof(*e)));
}

/* Connection `key` closes: send the request its slot holds, if any, on its own (EV_REQUEST). */
static __always_inline void release_request(u64 key)
{
    struct http_event *held = pending_requests.lookup(&key);
    if (!held)
        return;
    if (held->h.kind)
        send_copy(held);
    pending_requests.delete(&key);
}

/* The connection's request slot, created empty on its first request; 0 when the map refuses. */
static __always_inline struct http_event *request_slot(u64 key, struct http_event *blank)
{
    struct http_event *slot = pending_requests.lookup(&key);
    if (slot)
        return slot;
    blank->h.kind = 0;
    pending_requests.update(&key, blank);
    return pending_requests.lookup(&key);
}

/* A request started on connection `key`: hold it in the slot until its response (or send it now). */
static __always_inline void hold_request(u64 key, struct conn *c, struct pending *p, s64 ret,
                                         u64 ptr, u64 avail, u64 now)
{
    u32 zero = 0;
    struct http_event *blank = request_scratch.lookup(&zero);
    if (!blank)
        return;
    struct http_event *slot = request_slot(key, blank);
    if (!slot) {
        fill_event(blank, EV_REQUEST, c, p, ret, ptr, avail, now);
        send_copy(blank);
        return;
    }
    if (slot->h.kind)
        send_copy(slot);                   /* pipelined: the earlier one goes alone */
    fill_event(slot, EV_REQUEST, c, p, ret, ptr, avail, now);
}

/* A response started on connection `key`: one EV_EXCHANGE with the held request, else EV_RESPONSE. */
static __always_inline void send_response(u64 key, struct conn *c, struct pending *p, s64 ret,
                                          u64 ptr, u64 avail, u64 now)
{
    struct http_event *held = pending_requests.lookup(&key);
    if (!held || !held->h.kind) {
        send_event(EV_RESPONSE, c, p, ret, ptr, avail, now);
        return;
    }
    struct http_exchange_event *e = telegen_reserved(
        http_events.ringbuf_reserve(sizeof(struct http_exchange_event)), TELEGEN_RB_http_events);
    if (e) {
        fill_event(&e->response, EV_EXCHANGE, c, p, ret, ptr, avail, now);
        e->request_enter_ts = held->enter_ts;
        e->request_ts = held->h.ts_ns;
        e->request_cap_len = held->cap_len;
        e->_pad = 0;
        bpf_probe_read_kernel(e->request_data, HTTP_CAPTURE, held->data);
        http_events.ringbuf_submit(e, telegen_wakeup_flags(sizeof(*e)));
    }
    held->h.kind = 0;                      /* lost with its response when the ring was full */
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

    u64 ptr = p.buf;
    u64 avail = ret;
    struct iovec_user iov = {};
    if (p.how == HOW_MSG) {
        u64 msg_iov = 0;     /* struct msghdr (user ABI): msg_iov at offset 16 */
        bpf_probe_read_user(&msg_iov, sizeof(msg_iov), (void *)(p.buf + 16));
        p.buf = msg_iov;
    }
    if (p.how == HOW_IOV || p.how == HOW_MSG) {
        ptr = 0;
        if (p.buf && bpf_probe_read_user(&iov, sizeof(iov), (void *)p.buf) == 0) {
            ptr = iov.base;
            if (iov.len < avail)
                avail = iov.len;
        }
    } else if (p.how == HOW_SENDFILE) {
        ptr = 0;
    }

    char head[8] = {};
    if (ptr && avail >= 4)
        bpf_probe_read_user(head, sizeof(head), (void *)ptr);

    u32 kind = 0;
    if (is_write) {
        if (c->role == ROLE_CONNECTED)
            c->role = is_request(head) ? ROLE_CLIENT : ROLE_OTHER;
        else if (c->role == ROLE_ACCEPTED)
            c->role = ROLE_OTHER;          /* servers that speak first are not HTTP */
        if (c->role == ROLE_CLIENT && is_request(head))
            kind = EV_REQUEST;
        else if (c->role == ROLE_SERVER && is_response(head))
            kind = EV_RESPONSE;
    } else {
        if (c->role == ROLE_ACCEPTED)
            c->role = is_request(head) ? ROLE_SERVER : ROLE_OTHER;
        else if (c->role == ROLE_CONNECTED)
            c->role = ROLE_OTHER;
        if (c->role == ROLE_SERVER && is_request(head))
            kind = EV_REQUEST;
        else if (c->role == ROLE_CLIENT && is_response(head))
            kind = EV_RESPONSE;
    }
    if (kind == EV_REQUEST)
        hold_request(key, c, &p, ret, ptr, avail, now);
    else if (kind == EV_RESPONSE)
        send_response(key, c, &p, ret, ptr, avail, now);
    if (is_write) {
        c->tx_bytes += ret;
        c->last_tx_ts = now;
    } else {
        c->rx_bytes += ret;
        c->last_rx_ts = now;
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
    if (c->role == ROLE_SERVER || c->role == ROLE_CLIENT) {
        release_request(key);
        struct pending p = {.buf = 0, .ts = 0, .fd = args->fd, .how = 0};
        send_event(EV_CLOSE, c, &p, 0, 0, 0, bpf_ktime_get_ns());
    }
    conns.delete(&key);
    return 0;
}
