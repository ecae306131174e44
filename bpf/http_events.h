/*
 * The HTTP capture's events and its in-kernel pairing, shared by both capture modes: syscall
 * tracepoints (bpf/http.c) and socket-level tp_btf tracepoints (bpf/http_sock.c). Each mode finds
 * a connection's `struct conn` and the bytes a read or write moved its own way, then calls
 * http_payload(); the events user space decodes (telegen/ebpf/http_decoder.py) are the same.
 * Pasted by the loader like telegen.h (BCC rewrites map operations only in the main text).
 */
#ifndef TELEGEN_HTTP_EVENTS_H
#define TELEGEN_HTTP_EVENTS_H

#ifndef HTTP_CAPTURE
#define HTTP_CAPTURE 512          /* bytes of request/response head sent; a power of two */
#endif
#ifndef MAX_PENDING_REQUESTS
#define MAX_PENDING_REQUESTS 8192  /* connections with a request waiting for its response */
#endif
#define AF_INET_ 2
#define AF_INET6_ 10

enum { TELEGEN_RB_http_events = 0 };
BPF_RINGBUF_OUTPUT(http_events, RINGBUF_PAGES);

enum role { ROLE_ACCEPTED = 1, ROLE_CONNECTED = 2, ROLE_SERVER = 3, ROLE_CLIENT = 4, ROLE_OTHER = 5, ROLE_UNSEEN = 6 };
enum how { HOW_PLAIN = 1, HOW_IOV = 2, HOW_MSG = 3, HOW_SENDFILE = 4, HOW_ACCEPT = 5, HOW_NONE = 6 };
enum kind { EV_REQUEST = 1, EV_RESPONSE = 2, EV_CLOSE = 3, EV_EXCHANGE = 4 };
#define PROTO_HTTP1 1             /* telegen/l7/protocols.py */
#define HTTP_FLAG_TLS 1           /* the bytes are TLS plaintext (bpf/tls.h): url.scheme https */

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
    u32 owner;                    /* socket capture: the tgid its events carry (0: the current task's) */
    u64 cookie;                   /* socket capture: the socket cookie (the connection's key) */
    u32 proto;                    /* a stream protocol's PROTO_* (bpf/l7_stream.h); 0: HTTP/1 or not classified */
    u32 flags;                    /* HTTP_FLAG_*, copied into its events */
    u32 held_head;                /* bpf/l7_stream.h: a MySQL packet header read on its own, until its payload */
    u32 upgrade;                  /* an HTTP/1 101 passed: 1 until the client's preface (h2c), then 0 (l7_upgrade()) */
    u32 h2_max_sid;               /* HTTP/2: the highest stream id of the client's HEADERS (bpf/l7_stream.h) */
    u32 wrote_last;               /* the last bytes moved were written (1) or read (0): turn_while_full() */
    u64 h2_next;                  /* HTTP/2: the client direction's offset of its next frame header */
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
    u32 flags;                    /* the connection's HTTP_FLAG_* */
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
 * One request slot per HTTP connection, filled in place when a request starts (h.kind =
 * EV_REQUEST) and emptied (h.kind = 0) when its response leaves with it. Filling in place spares
 * a 600-byte map update and a delete per exchange. Where the slot lives is the capture mode's
 * (struct slot_ref): the socket capture keeps it in the socket's own storage (sk_requests,
 * created on the connection's first request, freed with the socket: no eviction however many
 * connections are busy, and no key hash to look up); the syscall capture and the TLS
 * connections, which have no socket at hand, in pending_requests by connection key. That one is LRU: with more busy connections than slots the least recently used
 * slot is evicted, and a request it held is later counted as response_without_request in user
 * space; close deletes its slot. request_scratch is the blank a new LRU slot is created from, and
 * the fallback when no slot can be had.
 */
BPF_TABLE("lru_hash", u64, struct http_event, pending_requests, MAX_PENDING_REQUESTS);
BPF_PERCPU_ARRAY(request_scratch, struct http_event, 1);
#ifdef HTTP_SOCKET_SLOTS
BPF_SK_STORAGE(sk_requests, struct http_event);
#endif

/*
 * When the last reserve on http_events failed (bpf_jiffies64(): the ring is full, the consumer is
 * behind), 0 once one succeeded, on any CPU. Until the next timer tick after a failure a request is
 * held without its head (cap_len 0: direct_request()), since no exchange record could carry it,
 * and its response counts it lost without trying a reserve (a failed reserve still takes the
 * ring's lock, a cache line both CPUs fight over); after that the next request is copied again
 * and its response's reserve learns whether the ring has room. At most a tick of exchanges (1-4 ms)
 * more are lost after the consumer made room; each loss is counted, one per exchange. Jiffies, not
 * the clock: reading them costs nothing (inlined), bpf_ktime_get_ns() ~55 ns on these VMs, which
 * turn_while_full() spares.
 * One value for all CPUs, written only when it changes: a per-CPU flag can stay set on a CPU where
 * requests arrive while their responses' reserves run on another (with one, 6 of the 11 syscall
 * capture tests of test_ebpf_http.py lost their spans on a busy shared host).
 */
BPF_ARRAY(ring_full, u64, 1);

/* A connection's request slot: in the socket's storage when `sk` is set, else pending_requests[key]. */
struct slot_ref {
    u64 key;
    void *sk;
};

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

/* A response head (12 bytes at least) whose status is 101 Switching Protocols. */
static __always_inline int is_switching(const char *b)
{
    return b[8] == ' ' && b[9] == '1' && b[10] == '0' && b[11] == '1';
}

/* An event's fields but its capture: the connection's totals before this read or write. */
static __always_inline void fill_meta(struct http_event *e, u32 kind, struct conn *c, struct pending *p,
                                      s64 ret, u64 now)
{
    telegen_fill_header(&e->h, kind, now);
    e->h.proto = PROTO_HTTP1;
    if (c->owner)
        e->h.pid = c->owner;
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
    e->flags = c->flags;
}

/* Copy the head of a message (what is there, up to HTTP_CAPTURE bytes) from user memory; its length. */
static __always_inline u32 read_capture(char *dst, u64 ptr, u64 avail)
{
    if (!ptr)
        return 0;
    if (avail >= HTTP_CAPTURE) {
        bpf_probe_read_user(dst, HTTP_CAPTURE, (void *)ptr);
        return HTTP_CAPTURE;
    }
    u32 n = avail & (HTTP_CAPTURE - 1);
    bpf_probe_read_user(dst, n, (void *)ptr);
    return n;
}

static __always_inline void fill_event(struct http_event *e, u32 kind, struct conn *c, struct pending *p,
                                       s64 ret, u64 ptr, u64 avail, u64 now)
{
    fill_meta(e, kind, c, p, ret, now);
    e->cap_len = read_capture(e->data, ptr, avail);
}

/* Note whether a reserve on http_events succeeded (ring_full); returns e. */
static __always_inline void *noted(void *e)
{
    u32 zero = 0;
    u64 *full = ring_full.lookup(&zero);
    if (!full)
        return e;
    if (!e)
        *full = bpf_jiffies64();           /* rare: while full, reserves are tried once per tick */
    else if (*full)
        *full = 0;
    return e;
}

/* A reserve failed in this timer tick, none succeeded since. */
static __always_inline int ring_was_full(void)
{
    u32 zero = 0;
    u64 *full = ring_full.lookup(&zero);
    return full && *full && *full == bpf_jiffies64();
}

/* A reserve on http_events: noted, and counted lost when it fails. */
static __always_inline void *http_reserved(void *e)
{
    return telegen_reserved(noted(e), TELEGEN_RB_http_events);
}

static __always_inline void send_event(u32 kind, struct conn *c, struct pending *p, s64 ret,
                                       u64 ptr, u64 avail, u64 now)
{
    struct http_event *e = http_reserved(http_events.ringbuf_reserve(sizeof(struct http_event)));
    if (!e)
        return;
    fill_event(e, kind, c, p, ret, ptr, avail, now);
    http_events.ringbuf_submit(e, telegen_wakeup_flags(sizeof(*e)));
}

/* Send a held (already filled) request event as it is; one held without its head (ring_full) is lost. */
static __always_inline void send_copy(struct http_event *held)
{
    if (!held->cap_len) {
        telegen_count_lost(TELEGEN_RB_http_events);
        return;
    }
    struct http_event *e = http_reserved(http_events.ringbuf_reserve(sizeof(struct http_event)));
    if (!e)
        return;
    bpf_probe_read_kernel(e, sizeof(struct http_event), held);
    http_events.ringbuf_submit(e, telegen_wakeup_flags(sizeof(*e)));
}

/* The connection's request slot, 0 when it has none yet. */
static __always_inline struct http_event *slot_lookup(struct slot_ref *r)
{
#ifdef HTTP_SOCKET_SLOTS
    if (r->sk)
        return sk_requests.sk_storage_get(r->sk, 0, 0);
#endif
    return pending_requests.lookup(&r->key);
}

/* The connection closes: send the request its slot holds, if any, on its own (EV_REQUEST). */
static __always_inline void release_request(struct slot_ref *r)
{
    struct http_event *held = slot_lookup(r);
    if (!held)
        return;
    if (held->h.kind)
        send_copy(held);
#ifdef HTTP_SOCKET_SLOTS
    if (r->sk) {
        held->h.kind = 0;                  /* the storage goes with the socket */
        return;
    }
#endif
    pending_requests.delete(&r->key);
}

/* The connection's request slot, created empty on its first request; 0 when none can be had. */
static __always_inline struct http_event *slot_create(struct slot_ref *r, struct http_event *blank)
{
#ifdef HTTP_SOCKET_SLOTS
    if (r->sk)
        return sk_requests.sk_storage_get(r->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
#endif
    blank->h.kind = 0;
    pending_requests.update(&r->key, blank);
    return pending_requests.lookup(&r->key);
}

/*
 * A request started on the connection (`slot`: its request slot, 0 when it has none yet): hold
 * it in the slot until its response (or send it now when no slot can be had).
 */
static __always_inline void hold_request(struct slot_ref *r, struct http_event *slot, struct conn *c,
                                         struct pending *p, s64 ret, u64 ptr, u64 avail, u64 now)
{
    if (!slot) {
        u32 zero = 0;
        struct http_event *blank = request_scratch.lookup(&zero);
        if (!blank)
            return;
        slot = slot_create(r, blank);
        if (!slot) {
            fill_event(blank, EV_REQUEST, c, p, ret, ptr, avail, now);
            send_copy(blank);
            return;
        }
    }
    if (slot->h.kind)
        send_copy(slot);                   /* pipelined: the earlier one goes alone */
    fill_event(slot, EV_REQUEST, c, p, ret, ptr, avail, now);
}

/*
 * The held request's part of an exchange event. Its capture is copied with plain loads and
 * stores (clang expands the constant-size memcpy): cheaper here than a bpf_probe_read_kernel
 * call (a helper call costs 70-130 ns on these VMs before it copies anything).
 */
static __always_inline void copy_held(struct http_exchange_event *e, struct http_event *held)
{
    e->request_enter_ts = held->enter_ts;
    e->request_ts = held->h.ts_ns;
    e->request_cap_len = held->cap_len;
    e->_pad = 0;
    __builtin_memcpy(e->request_data, held->data, HTTP_CAPTURE);
}

/* A response started (`held`: the request slot, if any): one EV_EXCHANGE with its request, else EV_RESPONSE. */
static __always_inline void send_response(struct http_event *held, struct conn *c, struct pending *p, s64 ret,
                                          u64 ptr, u64 avail, u64 now)
{
    if (!held || !held->h.kind) {
        send_event(EV_RESPONSE, c, p, ret, ptr, avail, now);
        return;
    }
    if (!held->cap_len) {                  /* held without its head while the ring was full: lost */
        if (!ring_was_full()) {            /* a reserve, only to learn whether the ring has room */
            void *probe = noted(http_events.ringbuf_reserve(sizeof(struct http_exchange_event)));
            if (probe)
                http_events.ringbuf_discard(probe, BPF_RB_NO_WAKEUP);
        }
        telegen_count_lost(TELEGEN_RB_http_events);
        held->h.kind = 0;
        return;
    }
    struct http_exchange_event *e = http_reserved(http_events.ringbuf_reserve(sizeof(struct http_exchange_event)));
    if (e) {
        fill_event(&e->response, EV_EXCHANGE, c, p, ret, ptr, avail, now);
        copy_held(e, held);
        http_events.ringbuf_submit(e, telegen_wakeup_flags(sizeof(*e)));
    }
    held->h.kind = 0;                      /* lost with its response when the ring was full */
}

/*
 * The hot path of a connection whose side is known (ROLE_SERVER/ROLE_CLIENT), where its state
 * says which message may start: a request where its slot is empty (direct_request), a response
 * where a request is held (direct_response). Each reads the head once, straight into the place
 * it is sent from, and classifies it there, instead of an 8-byte classification read followed
 * by the capture read: a bpf_probe_read_user call costs ~0.2-0.4 us on these VMs whatever its
 * size. Both return 0 to leave the event to the general path of http_payload() (a first request
 * with no slot yet, a request body or pipelined request while one is held, a response with no
 * request held, a full ring), which then behaves exactly as without them.
 */
static __always_inline int direct_request(struct http_event *slot, struct conn *c, struct pending *p, s64 ret,
                                          u64 ptr, u64 avail, u64 now)
{
    if (!slot || slot->h.kind)
        return 0;
    if (ring_was_full()) {
        /* No record can carry its head now: only whether a request starts, held as lost (cap_len 0). */
        char head[8] = {};
        bpf_probe_read_user(head, sizeof(head), (void *)ptr);
        if (is_request(head)) {
            slot->h.kind = EV_REQUEST;
            slot->cap_len = 0;
        }
        return 1;
    }
    u32 n = read_capture(slot->data, ptr, avail);
    if (is_request(slot->data)) {          /* else: no message start, the slot stays empty */
        fill_meta(slot, EV_REQUEST, c, p, ret, now);
        slot->cap_len = n;
    }
    return 1;
}

static __always_inline int direct_response(struct http_event *held, struct conn *c, struct pending *p, s64 ret,
                                           u64 ptr, u64 avail, u64 now)
{
    if (!held || !held->h.kind)
        return 0;
    struct http_exchange_event *e = 0;
    /* A request held without its head while the ring is full is lost anyway: no reserve tried. */
    if (held->cap_len || !ring_was_full())
        e = noted(http_events.ringbuf_reserve(sizeof(struct http_exchange_event)));
    if (!e) {                              /* ring full: lost, if this starts the response */
        char head[8] = {};
        bpf_probe_read_user(head, sizeof(head), (void *)ptr);
        if (is_response(head)) {
            telegen_count_lost(TELEGEN_RB_http_events);
            held->h.kind = 0;
        }
        return 1;
    }
    u32 n = read_capture(e->response.data, ptr, avail);
    if (!is_response(e->response.data)) {
        http_events.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
        return 1;
    }
    if (!held->cap_len) {                  /* its request was held without its head (ring_full) */
        http_events.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
        telegen_count_lost(TELEGEN_RB_http_events);
        held->h.kind = 0;
        return 1;
    }
    fill_meta(&e->response, EV_EXCHANGE, c, p, ret, now);
    e->response.cap_len = n;
    copy_held(e, held);
    if (n >= 12 && is_switching(e->response.data))
        c->upgrade = 1;
    http_events.ringbuf_submit(e, telegen_wakeup_flags(sizeof(*e)));
    held->h.kind = 0;
    return 1;
}

/* The direct paths above for a connection of known side (`slot`: its request slot, 0 when none
 * yet); 0 when the general path must decide. */
static __always_inline int direct_payload(struct http_event *slot, struct conn *c, struct pending *p, s64 ret, u64 ptr,
                                          u64 avail, int is_write, u64 now)
{
    if (!ptr || avail < 8 || (c->role != ROLE_SERVER && c->role != ROLE_CLIENT))
        return 0;                          /* under 8 bytes the head is read as before (zero-padded) */
    if ((c->role == ROLE_CLIENT) == (is_write != 0))
        return direct_request(slot, c, p, ret, ptr, avail, now);
    return direct_response(slot, c, p, ret, ptr, avail, now);
}

/*
 * Where the bytes of a read or write are: the buffer itself (HOW_PLAIN), the first iovec of an
 * iovec array (HOW_IOV) or of a user-ABI struct msghdr (HOW_MSG, msg_iov at offset 16), nothing
 * for sendfile. *ptr = 0 when there is no user buffer to look at; *avail caps what is read.
 */
static __always_inline void user_payload(u32 how, u64 buf, s64 ret, u64 *ptr, u64 *avail)
{
    *ptr = buf;
    *avail = ret;
    struct iovec_user iov = {};
    if (how == HOW_MSG) {
        u64 msg_iov = 0;
        bpf_probe_read_user(&msg_iov, sizeof(msg_iov), (void *)(buf + 16));
        buf = msg_iov;
    }
    if (how == HOW_IOV || how == HOW_MSG) {
        *ptr = 0;
        if (buf && bpf_probe_read_user(&iov, sizeof(iov), (void *)buf) == 0) {
            *ptr = iov.base;
            if (iov.len < *avail)
                *avail = iov.len;
        }
    } else if (how != HOW_PLAIN) {
        *ptr = 0;
    }
}

/* The connection's byte totals after `ret` bytes moved, and which way they went. */
static __always_inline void count_bytes(struct conn *c, s64 ret, int is_write)
{
    c->wrote_last = is_write;
    if (is_write)
        c->tx_bytes += ret;
    else
        c->rx_bytes += ret;
}

/* The same, and when: the last read's and write's times end a message in user space. */
static __always_inline void count_io(struct conn *c, s64 ret, int is_write, u64 now)
{
    count_bytes(c, ret, is_write);
    if (is_write)
        c->last_tx_ts = now;
    else
        c->last_rx_ts = now;
}

/*
 * `ret` bytes moved on HTTP-tracked connection c (r: where its request slot is; ptr/avail: where
 * its first bytes are, 0 when unknown): classify the connection by its first bytes, send a request or response start, count
 * the bytes. ROLE_ACCEPTED/ROLE_CONNECTED (syscall capture) know their side from accept/connect;
 * ROLE_UNSEEN (socket capture) learns it here: a request received makes a server, a request sent
 * a client, and only then is the port filter known to apply to the local or the peer port.
 */
static __always_inline void http_payload(struct slot_ref *r, struct conn *c, struct pending *p, s64 ret, u64 ptr,
                                         u64 avail, int is_write, u64 now)
{
    /* Looked up once here: a connection whose side is not known yet has no slot. */
    struct http_event *slot = (c->role == ROLE_SERVER || c->role == ROLE_CLIENT) ? slot_lookup(r) : 0;
    if (direct_payload(slot, c, p, ret, ptr, avail, is_write, now))
        goto count;
    char head[8] = {};
    if (ptr && avail >= 4)
        bpf_probe_read_user(head, sizeof(head), (void *)ptr);

    if (c->role == ROLE_UNSEEN) {
        c->role = !is_request(head) ? ROLE_OTHER : is_write ? ROLE_CLIENT : ROLE_SERVER;
        if (c->role != ROLE_OTHER && !port_allowed(c->role == ROLE_SERVER ? c->local.port : c->peer.port, 1))
            c->role = ROLE_OTHER;
    }
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
    if (kind == EV_REQUEST) {
        hold_request(r, slot, c, p, ret, ptr, avail, now);
    } else if (kind == EV_RESPONSE) {
        send_response(slot, c, p, ret, ptr, avail, now);
        /* `HTTP/1.1 101`: the connection switches protocols after this (an h2c upgrade: l7_upgrade()). */
        char status[12] = {};
        if (avail >= 12 && bpf_probe_read_user(status, 12, (void *)ptr) == 0 && is_switching(status))
            c->upgrade = 1;
    }
count:
    count_io(c, ret, is_write, now);
}

#ifdef HTTP_SOCKET_SLOTS
/*
 * While the ring is full (ring_was_full()) no record can carry a message, so on an HTTP/1
 * connection of known side nothing is read from user memory: not the registers, not an iovec, not
 * a head (on these VMs a user-memory read costs 130-200 ns, the registers' lookup ~50, and they
 * were most of what an exchange cost the kernel at saturation). The bytes are counted, and a
 * message starts where the connection turns: its first read after a write, or its first write
 * after a read (HTTP/1: a request, then its response). A request start holds an empty slot
 * (cap_len 0, as direct_request() does while full), its response's start counts it lost, one loss
 * per exchange as when the heads were read (like it, turns count an exchange with a 1xx answer as
 * two, and requests pipelined in one read as one); what turns miss is a 101 answered while the
 * ring is full: the upgraded connection's turns are counted as lost exchanges.
 * 1 when it took the event (the ring is full and the connection HTTP/1 of known side).
 */
static __always_inline int turn_while_full(struct slot_ref *r, struct conn *c, s64 ret, int is_write)
{
    if (c->proto || c->upgrade || (c->role != ROLE_SERVER && c->role != ROLE_CLIENT) || !ring_was_full())
        return 0;
    if (is_write != c->wrote_last) {
        struct http_event *slot = sk_requests.sk_storage_get(r->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if ((c->role == ROLE_CLIENT) == (is_write != 0)) {
            if (slot) {                    /* else its response counts it */
                if (slot->h.kind)
                    telegen_count_lost(TELEGEN_RB_http_events);    /* the one before was not answered */
                slot->h.kind = EV_REQUEST;
                slot->cap_len = 0;
            }
        } else {
            /* The held request is lost with its response; a response with none held is lost as its event. */
            telegen_count_lost(TELEGEN_RB_http_events);
            if (slot)
                slot->h.kind = 0;
        }
    }
    count_bytes(c, ret, is_write);         /* no clock read: the times stay those of the last message seen */
    return 1;
}
#endif

#endif /* TELEGEN_HTTP_EVENTS_H */
