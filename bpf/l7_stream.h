/*
 * Stream protocols of the L7 capture (PostgreSQL, MySQL/MariaDB, Redis, HTTP/2 and gRPC): connection
 * classification by first bytes and generic data events, shared by both capture modes.
 *
 * HTTP/1 keeps its in-kernel pairing (bpf/http_events.h). The protocols here are stateful
 * (prepared statements, pipelines, result sets spanning many reads), so the kernel does not pair
 * anything: it classifies a connection once, from the first bytes it carries, stamps the
 * connection's protocol id (PROTO_*, telegen/l7/protocols.py) and then sends every read and
 * write of it as one EV_DATA event (direction, connection, bytes moved, a bounded prefix of the
 * bytes); a parser per connection in user space (telegen/ebpf/l7_stream.py) follows the stream.
 * A connection that is neither HTTP nor one of these is ROLE_OTHER from its first bytes on and
 * costs one lookup per read/write after that.
 *
 * Each mode calls l7_payload() before http_payload() with the connection's state (struct conn:
 * socket storage by socket cookie, or the syscall capture's conns by (tgid, fd)); it returns 1
 * when it took the bytes (a stream connection, or one it just classified or refused), 0 when
 * http_payload() should have them. l7_close() sends a stream connection's last event.
 *
 * Only the client side of the database protocols is reported (database client spans): a
 * client-first protocol is recognised in what a connection sends, a server-first one in what it
 * receives, so the server process on the same host (which receives the client-first bytes) is
 * never counted. HTTP/2 has spans on both sides: its preface sent makes a client connection,
 * received a server one (events say which: `server`), see l7_payload().
 * Per-protocol switches (l7_enabled[proto], written live by user space) decide what is classified;
 * PROTO_HTTP1 off makes HTTP connections ROLE_OTHER here before http_payload() sees them.
 *
 * Adding a protocol (docs/ebpf.md, "Adding a protocol"): a PROTO_* id, a test in l7_classify().
 */
#ifndef TELEGEN_L7_STREAM_H
#define TELEGEN_L7_STREAM_H

#ifndef L7_DATA_CAPTURE
#define L7_DATA_CAPTURE 4096      /* bytes of one read/write sent up; a power of two */
#endif
#define PROTO_POSTGRESQL 2
#define PROTO_MYSQL 3
#define PROTO_REDIS 4
#define PROTO_HTTP2 5
#define PROTO_MAX 16
#define EV_DATA 5
#define L7_HEAD 12                /* bytes the classifier looks at */
#define MYSQL_HELD_FLAG 0x01000000 /* in struct conn's held_head: a MySQL greeting's header is held */
#define L7_IOVECS 32              /* iovecs of one readv/writev/recvmsg/sendmsg copied into an event */

/* One read or write of a stream connection (kind EV_DATA), or its close (EV_CLOSE, ret 0). */
struct l7_data_event {
    struct telegen_event_header h;
    u64 conn_id;                  /* socket cookie (socket capture), tgid << 32 | fd (syscall capture) */
    u64 conn_start_ts;            /* with conn_id, names the connection (fds are reused) */
    u64 enter_ts;                 /* a client write's syscall entry (syscall capture), else the event's ts */
    s64 ret;                      /* bytes the read or write moved */
    u64 sent;                     /* stream bytes the traced process sent on the connection before this call */
    u64 received;                 /* and received: user space finds the bytes of events the ring buffer lost */
    struct endpoint peer;
    struct endpoint local;
    u16 from_client;              /* 1: the bytes went from the client to the server */
    u16 server;                   /* 1: the traced process is the connection's server (HTTP/2 server spans) */
    u32 cap_len;                  /* bytes of data[] that are the stream's; ret - cap_len were not captured */
    u32 flags;                    /* the connection's HTTP_FLAG_* (HTTP_FLAG_TLS: plaintext from bpf/tls.h) */
    u32 max_sid;                  /* HTTP/2: the highest stream id the client opened so far (l7_h2_streams()) */
    char data[L7_DATA_CAPTURE];
};

/* A close the ring buffer had no room for (it was full): user space takes these from the map on
 * its expiry tick, so that a connection's end, and what the ring lost of its last bytes, is still
 * known (telegen/ebpf/l7_stream.py). */
struct l7_close_key {
    u64 conn_id;
    u64 conn_start_ts;
};
struct l7_lost_close {
    u64 ts;
    u64 sent;
    u64 received;
    u32 max_sid;
    u16 proto;
    u16 server;
};
BPF_TABLE("lru_hash", struct l7_close_key, struct l7_lost_close, l7_lost_closes, 4096);

/* l7_enabled[PROTO_*] = 1 when the protocol is switched on (agent.ebpf.protocols); live. */
BPF_ARRAY(l7_enabled, u8, PROTO_MAX);
/* An event built here (too big for the stack), then sent with only its captured bytes; `spill`
 * makes any copy of at most L7_DATA_CAPTURE bytes at an offset below L7_DATA_CAPTURE provably
 * inside the value, which is what the verifier needs of l7_copy_iov()'s variable offsets. */
struct l7_scratch_event {
    struct l7_data_event e;
    char spill[L7_DATA_CAPTURE];
    u64 left;                     /* l7_copy_iov(): bytes of the call not yet copied */
};
BPF_PERCPU_ARRAY(l7_scratch, struct l7_scratch_event, 1);

static __always_inline int l7_on(u32 proto)
{
    u8 *on = l7_enabled.lookup(&proto);
    return on && *on;
}

#define L7_DIGIT(c) ((c) >= '0' && (c) <= '9')
/* CRLF at b[k], then a bulk string's '$' and the first digit of its length. */
#define L7_RESP_AT(b, k) ((b)[k] == '\r' && (b)[(k) + 1] == '\n' && (b)[(k) + 2] == '$' && L7_DIGIT((b)[(k) + 3]))

/* The 32-bit big-endian int at b[at]. */
static __always_inline u32 be32(const u8 *b, int at)
{
    return ((u32)b[at] << 24) | ((u32)b[at + 1] << 16) | ((u32)b[at + 2] << 8) | b[at + 3];
}

/* A MySQL greeting's packet header: payload length 30..1024 (little-endian), sequence id 0. */
static __always_inline int l7_mysql_header(const u8 *b)
{
    u32 plen = b[0] | (b[1] << 8) | (b[2] << 16);
    return plen >= 30 && plen <= 1024 && b[3] == 0;
}

/* The HTTP/2 client preface's first 12 bytes, `PRI * HTTP/2` (h2c prior knowledge). */
static __always_inline int l7_h2_preface(const u8 *b)
{
    return b[0] == 'P' && b[1] == 'R' && b[2] == 'I' && b[3] == ' ' && b[4] == '*' && b[5] == ' ' &&
           b[6] == 'H' && b[7] == 'T' && b[8] == 'T' && b[9] == 'P' && b[10] == '/' && b[11] == '2';
}

/* An HTTP/2 SETTINGS frame header (not an ACK): length a multiple of 6, type 4, flags 0, stream 0. */
static __always_inline int l7_h2_settings(const u8 *b)
{
    return b[0] == 0 && ((b[1] << 8) | b[2]) % 6 == 0 && b[3] == 4 && b[4] == 0 && b[5] == 0 && b[6] == 0 && b[7] == 0 && b[8] == 0;
}

/*
 * The protocol of a client's first bytes: what the client sends first (sent = 1) or what the
 * server sends first (sent = 0: the bytes arrived). The user-space twins are the classify()
 * functions of telegen/protocols/ (docs/protocols.md has each rule).
 */
static __always_inline u32 l7_classify(const u8 *b, int sent)
{
    if (sent) {
        /* PostgreSQL StartupMessage (3.0), SSLRequest, GSSENCRequest: int32 length 8..10000, int32 code. */
        u32 len = be32(b, 0), code = be32(b, 4);
        if (len >= 8 && len <= 10000 && (code == 196608 || code == 80877103 || code == 80877104))
            return PROTO_POSTGRESQL;
        /* Redis RESP array of bulk strings: '*', 1-6 digits, CRLF, '$', a digit (constant indices only:
         * the verifier refuses the pointer arithmetic clang makes of a loop over b[i]). */
        if (b[0] != '*' || !L7_DIGIT(b[1]))
            return 0;
        if (L7_RESP_AT(b, 2)) return PROTO_REDIS;
        if (!L7_DIGIT(b[2])) return 0;
        if (L7_RESP_AT(b, 3)) return PROTO_REDIS;
        if (!L7_DIGIT(b[3])) return 0;
        if (L7_RESP_AT(b, 4)) return PROTO_REDIS;
        if (!L7_DIGIT(b[4])) return 0;
        if (L7_RESP_AT(b, 5)) return PROTO_REDIS;
        if (!L7_DIGIT(b[5])) return 0;
        if (L7_RESP_AT(b, 6)) return PROTO_REDIS;
        if (!L7_DIGIT(b[6])) return 0;
        if (L7_RESP_AT(b, 7)) return PROTO_REDIS;
        return 0;
    }
    /* MySQL/MariaDB Initial Handshake: payload length 30..1024 (LE), sequence 0, protocol 10, a digit. */
    if (l7_mysql_header(b) && b[4] == 10 && L7_DIGIT(b[5]))
        return PROTO_MYSQL;
    return 0;
}

/*
 * The first L7_DATA_CAPTURE of the `ret` bytes a vectored call (HOW_IOV: buf is the iovec array;
 * HOW_MSG: buf is a struct msghdr) moved, from up to L7_IOVECS iovecs in order, into s's data;
 * the count is left in s->e.cap_len. HTTP/2 peers write frames from many buffers (nginx writev's
 * a frame header and its payload apart, grpcio sendmsg's a header block in a dozen slices), so the
 * first iovec alone is often 9 bytes of a larger write. Stops after `ret` bytes (a read fills its
 * iovecs in order), so the iovec count is not needed.
 *
 * The copy's position and what is left live in the map value, not in registers: the verifier
 * knows nothing of map memory, so every iteration starts from the same state and is checked once
 * (kept in registers, each clamp's outcome made a state of its own and 16 iovecs passed the
 * verifier's budget). The mask and the clamp then bound each copy inside data[] + spill[].
 */
static __always_inline void l7_copy_iov(struct l7_scratch_event *s, u32 how, u64 buf, s64 ret)
{
    u64 vec = buf;
    s->e.cap_len = 0;
    if (how == HOW_MSG) {
        vec = 0;
        bpf_probe_read_user(&vec, sizeof(vec), (void *)(buf + 16));      /* msg_iov */
    }
    if (!vec || ret <= 0)
        return;
    s->left = ret;
#pragma unroll
    for (int i = 0; i < L7_IOVECS; i++) {
        u32 n = *(volatile u32 *)&s->e.cap_len;
        u64 left = *(volatile u64 *)&s->left;
        struct iovec_user iov = {};
        if (n >= L7_DATA_CAPTURE || !left ||
            bpf_probe_read_user(&iov, sizeof(iov), (void *)(vec + i * sizeof(iov))) != 0)
            break;
        u64 len = iov.len < left ? iov.len : left;
        *(volatile u64 *)&s->left = left - len;
        if (len > L7_DATA_CAPTURE - n)
            len = L7_DATA_CAPTURE - n;
        u64 off = n & (L7_DATA_CAPTURE - 1);
        u64 size = len;
        if (size > L7_DATA_CAPTURE)
            size = L7_DATA_CAPTURE;
        if (bpf_probe_read_user(s->e.data + off, size, (void *)iov.base) != 0)
            break;
        *(volatile u32 *)&s->e.cap_len = n + size;
    }
}

/*
 * The HTTP/2 client's frames in the captured bytes of one of its writes (data[0] is at stream
 * offset `at`, n bytes captured): the highest stream id its HEADERS opened goes into every event,
 * so that streams whose bytes the ring buffer lost at a connection's end are still counted (by
 * the close's max_sid). Frame headers are followed by length from the preface on (c->h2_next); one
 * that falls outside the captured bytes stops the walk for good (max_sid stays a lower bound).
 */
#define L7_H2_FRAMES 64
static __always_inline void l7_h2_streams(struct l7_scratch_event *s, struct conn *c, u64 at, u32 n)
{
    for (int i = 0; i < L7_H2_FRAMES; i++) {
        u64 next = c->h2_next;
        if (next < at || next + 9 > at + n)
            break;
        u8 *f = (u8 *)s->e.data + ((next - at) & (L7_DATA_CAPTURE - 1));
        if (f[3] == 1) {                   /* HEADERS */
            u32 sid = be32(f, 5) & 0x7fffffff;
            if (sid > c->h2_max_sid)
                c->h2_max_sid = sid;
        }
        c->h2_next = next + 9 + (((u32)f[0] << 16) | ((u32)f[1] << 8) | f[2]);
    }
}

/*
 * Send one read/write (or, with kind EV_CLOSE, the close) of stream connection c. `held`, when
 * not 0, is a 4-byte packet header the connection read on its own before this read
 * (MYSQL_HELD_FLAG set in its sequence byte, which was 0): it goes first in data[], as if read together.
 */
static __always_inline void l7_send(u32 kind, u64 conn_id, struct conn *c, struct pending *p, s64 ret,
                                    u64 ptr, u64 avail, int is_write, u64 now, u32 held)
{
    u32 zero = 0;
    struct l7_scratch_event *s = l7_scratch.lookup(&zero);
    if (!s)
        return;
    struct l7_data_event *e = &s->e;
    telegen_fill_header(&e->h, kind, now);
    e->h.proto = c->proto;
    if (c->owner)
        e->h.pid = c->owner;
    e->conn_id = conn_id;
    e->conn_start_ts = c->start_ts;
    e->enter_ts = (p && p->ts) ? p->ts : now;
    e->ret = ret;
    e->peer = c->peer;
    e->local = c->local;
    e->from_client = (c->role == ROLE_CLIENT) == is_write;
    e->server = c->role == ROLE_SERVER;
    e->flags = c->flags;
    e->sent = c->tx_bytes;
    e->received = c->rx_bytes;
    u32 n = 0;
    if (held) {
        held &= ~MYSQL_HELD_FLAG;
        __builtin_memcpy(e->data, &held, 4);
        e->ret = ret + 4;
        if (ptr) {
            n = avail < L7_DATA_CAPTURE - 4 ? avail : L7_DATA_CAPTURE - 4;
            n &= L7_DATA_CAPTURE - 1;
            if (n > L7_DATA_CAPTURE - 4)
                n = L7_DATA_CAPTURE - 4;
            bpf_probe_read_user(e->data + 4, n, (void *)ptr);
        }
        n += 4;
    } else if (ptr && p && (p->how == HOW_IOV || p->how == HOW_MSG) && avail < ret) {
        l7_copy_iov(s, p->how, p->buf, ret);
        n = e->cap_len & (L7_DATA_CAPTURE * 2 - 1);
        if (n > L7_DATA_CAPTURE)
            n = L7_DATA_CAPTURE;
    } else if (ptr) {
        if (avail >= L7_DATA_CAPTURE) {
            n = L7_DATA_CAPTURE;
            bpf_probe_read_user(e->data, L7_DATA_CAPTURE, (void *)ptr);
        } else {
            n = avail & (L7_DATA_CAPTURE - 1);
            bpf_probe_read_user(e->data, n, (void *)ptr);
        }
    }
    e->cap_len = n;
    if (kind == EV_DATA && c->proto == PROTO_HTTP2 && e->from_client)
        l7_h2_streams(s, c, is_write ? e->sent : e->received, n);
    e->max_sid = c->h2_max_sid;
    /* Counted whether or not the event fits in the ring buffer: the next event's offsets say how
     * many bytes a lost one carried (its close's, how many the lost last ones did). */
    if (kind == EV_DATA && e->ret > 0)
        count_bytes(c, e->ret, is_write);
    /* A call with nothing captured (sendfile, a truncating read) is not sent: the next event's
     * offsets, or the close's, carry its length (nginx sendfile's every DATA payload, a third of
     * an HTTP/2 server's events). */
    if (kind == EV_DATA && !n)
        return;
    u64 size = __builtin_offsetof(struct l7_data_event, data) + n;
    if (size > sizeof(*e))
        size = sizeof(*e);
    if (http_events.ringbuf_output(e, size, telegen_wakeup_flags(size)) != 0) {
        telegen_count_lost(TELEGEN_RB_http_events);
        if (kind == EV_CLOSE) {
            struct l7_close_key k = {.conn_id = conn_id, .conn_start_ts = c->start_ts};
            struct l7_lost_close v = {.ts = now, .sent = e->sent, .received = e->received, .max_sid = e->max_sid,
                                      .proto = c->proto, .server = e->server};
            l7_lost_closes.update(&k, &v);
        }
    }
}

/*
 * An unclassified connection's bytes (ptr/avail: where the first are, ret: how many moved): 1 when
 * they classify it (c->proto and c->role set: send them, after *held when that is not 0), -1 when
 * they are taken without a protocol (HTTP/1 off, an HTTP/2 SETTINGS before the preface, a MySQL
 * header read on its own), 0 when they are http_payload()'s.
 */
static __always_inline int l7_first_bytes(struct conn *c, u64 ptr, u64 avail, s64 ret, int is_write, u32 *held)
{
    if (c->role != ROLE_UNSEEN && c->role != ROLE_ACCEPTED && c->role != ROLE_CONNECTED)
        return 0;
    u8 head[L7_HEAD] = {};
    if (ptr && avail >= L7_HEAD)
        bpf_probe_read_user(head, L7_HEAD, (void *)ptr);
    else if (ptr && avail >= 8)
        bpf_probe_read_user(head, 8, (void *)ptr);     /* an SSLRequest is 8 bytes */
    else if (ptr && avail >= 4)
        bpf_probe_read_user(head, 4, (void *)ptr);
    *held = c->held_head;
    c->held_head = 0;
    if (is_request((const char *)head)) {
        if (l7_on(PROTO_HTTP1))
            return 0;
        c->role = ROLE_OTHER;
        return -1;
    }
    if (l7_on(PROTO_HTTP2)) {
        /* HTTP/2 has both sides: the preface sent makes a client, received a server (the side the
         * syscall capture learnt at accept/connect must agree). */
        if (l7_h2_preface(head)) {
            if ((c->role == ROLE_ACCEPTED && is_write) || (c->role == ROLE_CONNECTED && !is_write))
                return 0;
            if (c->role == ROLE_UNSEEN && !port_allowed(is_write ? c->peer.port : c->local.port, 1))
                return 0;
            c->proto = PROTO_HTTP2;
            c->role = is_write ? ROLE_CLIENT : ROLE_SERVER;
            c->h2_next = 24;               /* the preface; the stream offsets start with it */
            return 1;
        }
        /* A server's SETTINGS may come before the client's preface (grpcio sends it on accept):
         * the connection stays unclassified, the preface decides (the parser does without it). */
        if (l7_h2_settings(head))
            return -1;
    }
    /* A client: the side that connected (syscall capture) or, unseen, the one the rule's direction says. */
    if (c->role == ROLE_ACCEPTED)
        return 0;
    u32 proto = 0;
    if (*held) {
        /* The payload after a MySQL header read on its own (mysql-connector reads 4 bytes, then the rest). */
        if (!is_write && head[0] == 10 && L7_DIGIT(head[1]))
            proto = PROTO_MYSQL;
    } else if (!is_write && ret == 4 && l7_mysql_header(head)) {
        c->held_head = (head[0] | (head[1] << 8) | (head[2] << 16)) | MYSQL_HELD_FLAG;
        return -1;                         /* unclassified until its payload comes */
    } else {
        proto = l7_classify(head, is_write);
    }
    if (!proto || !l7_on(proto) || (c->role == ROLE_UNSEEN && !port_allowed(c->peer.port, 1)))
        return 0;                          /* http_payload() makes it ROLE_OTHER */
    c->proto = proto;
    c->role = ROLE_CLIENT;
    return 1;
}

/* Stream connection c closes: its last event, so user space frees the connection's parser. */
static __always_inline void l7_close(u64 conn_id, struct conn *c, u64 now)
{
    l7_send(EV_CLOSE, conn_id, c, 0, 0, 0, 0, 0, now, 0);
}

/*
 * An HTTP/1 connection whose 101 passed (c->upgrade, set by http_payload()): an h2c upgrade goes on
 * in HTTP/2 frames, so its bytes are HTTP/2 stream events from the 101 on (the user-space HTTP/1
 * decoder hands the upgrade request and the 101 to the HTTP/2 parser). 1 when these bytes are to
 * be sent as such; 0 otherwise (then ROLE_OTHER when it gave up, or HTTP/2 is off: HTTP/1's). The client's first bytes after the 101 must be the preface: anything else (a
 * WebSocket, another protocol) ends it here, a close event for user space and ROLE_OTHER, as do
 * L7_UPGRADE_WAIT server calls without the client's (a server pushing over a WebSocket), so other
 * upgrades cost a few events, not a stream.
 */
#define L7_UPGRADE_WAIT 8
static __always_inline int l7_upgrade(u64 conn_id, struct conn *c, u64 ptr, u64 avail, int is_write, u64 now)
{
    if (!l7_on(PROTO_HTTP2)) {
        c->upgrade = 0;                    /* stays HTTP/1's, which ignores what follows a 101 */
        return 0;
    }
    c->proto = PROTO_HTTP2;
    if (is_write == (c->role == ROLE_CLIENT)) {
        u8 head[L7_HEAD] = {};
        if (ptr && avail >= L7_HEAD)
            bpf_probe_read_user(head, L7_HEAD, (void *)ptr);
        if (l7_h2_preface(head)) {
            c->upgrade = 0;
            c->h2_next = (is_write ? c->tx_bytes : c->rx_bytes) + 24;
            return 1;
        }
    } else if (++c->upgrade <= L7_UPGRADE_WAIT) {
        return 1;
    }
    l7_close(conn_id, c, now);
    c->upgrade = 0;
    c->proto = 0;
    c->role = ROLE_OTHER;
    return 0;
}

/*
 * Bytes moved on connection c (see the top of this file): 1 when taken here, 0 when they are
 * http_payload()'s. Classifies a connection still unclassified (ROLE_UNSEEN, ROLE_ACCEPTED,
 * ROLE_CONNECTED) by its first bytes; HTTP/1 connections (ROLE_SERVER/CLIENT with no stream
 * protocol) and ROLE_OTHER ones cost one compare.
 */
static __always_inline int l7_payload(u64 conn_id, struct conn *c, struct pending *p, s64 ret, u64 ptr,
                                      u64 avail, int is_write, u64 now)
{
    u32 held = 0;
    if (c->upgrade) {
        if (!l7_upgrade(conn_id, c, ptr, avail, is_write, now))
            return c->role == ROLE_OTHER;
    } else if (!c->proto) {
        int taken = l7_first_bytes(c, ptr, avail, ret, is_write, &held);
        if (taken <= 0)
            return taken == 0 ? 0 : 1;
    }
    /* One call site: l7_send()'s iovec copy is verified once per site, and there is a budget. */
    l7_send(EV_DATA, conn_id, c, p, ret, ptr, avail, is_write, now, held);
    return 1;
}

#endif /* TELEGEN_L7_STREAM_H */
