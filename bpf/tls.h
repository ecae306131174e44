/*
 * TLS plaintext through OpenSSL uprobes and Go crypto/tls uprobes (agent.ebpf.tls; Go: below,
 * "Go's crypto/tls"), for both capture modes: pasted at the end of bpf/http_sock.c and bpf/http.c
 * (one BPF object each, so the uprobes share the capture's maps, pairing and ring buffer).
 * Compiled in only with -DTELEGEN_TLS.
 *
 * telegen/ebpf/tls.py attaches, in every libssl.so a process maps (by file: one uprobe per
 * library inode covers every process mapping it):
 *   uprobe    SSL_write / SSL_read       (ssl, buf, num)            -> tls_enter_write / tls_enter_read
 *   uprobe    SSL_write_ex / SSL_read_ex (ssl, buf, num, size_t *n) -> tls_enter_write_ex / tls_enter_read_ex
 *   uretprobe all four                                               -> tls_return
 *
 * Tying plaintext to its connection: the entry remembers (ssl, buf, length pointer) in the
 * thread's task storage (tls_inflight). OpenSSL moves the ciphertext inside that call, in the
 * same thread, through the socket: the capture's data hook (sock_send_length/sock_recv_length
 * in socket mode, the read/write syscalls in syscalls mode) sees it and calls tls_socket_io(),
 * which, on the first such call of an SSL* on a socket already known not to carry plaintext HTTP
 * (its first bytes, the handshake's, were not a request), makes a TLS connection for it (tls_conns: a struct
 * conn with the socket's endpoints, start time and owner, role learnt from the plaintext) and
 * marks the socket's own conn ROLE_TLS, so its ciphertext is never parsed, classified or
 * reported. At return the plaintext (buf, and the length: the return value, or *n for the _ex
 * pair, which return 1) goes through l7_payload() and then http_payload() with the TLS
 * connection's state, as the socket's bytes would: the same classification, pairing and events,
 * with HTTP_FLAG_TLS in the event's flags (url.scheme https in user space). A stream connection
 * (PostgreSQL or MySQL asking for TLS in clear) keeps its protocol and the socket's connection id,
 * so user space feeds the plaintext to the parser that saw the clear start; any other TLS
 * connection is classified by its plaintext's first bytes (Redis over TLS). The socket's close
 * ends the TLS connection (tls_closed()).
 *
 * Losses (tls_lost, by reason, read by user space): plaintext returned by an SSL* whose socket
 * was never seen inside one of its calls (TLS_LOST_UNLINKED: the first call read bytes OpenSSL
 * had buffered before the agent started, or a socket the capture does not track).
 */
#ifndef TELEGEN_TLS_H
#define TELEGEN_TLS_H
#ifdef TELEGEN_TLS

#ifndef MAX_TLS_CONNS
#define MAX_TLS_CONNS 16384
#endif
#define ROLE_TLS 7                         /* a socket carrying TLS: its bytes are the SSL*'s business */
#define TLS_KEY_BIT (1ULL << 63)           /* request-slot keys of TLS connections (never a cookie or tgid|fd) */
#define TLS_LOST_UNLINKED 0
#define TLS_LOST_REASONS 1

/* An SSL_* call in flight in this thread. */
struct tls_call {
    u64 ssl;
    u64 buf;
    u64 len_ptr;                           /* _ex: where the length is written; 0: the return value is it */
    u64 ts;                                /* entry time (a client's request starts there) */
    u64 size;                              /* Go: the buffer's length (b's len) */
    u32 is_write;
    u32 active;
};

struct tls_key {
    u64 ssl;
    u32 tgid;
    u32 _pad;
};

struct tls_conn {
    struct conn c;                         /* plaintext totals and role; endpoints from the socket */
    u64 key;                               /* its request slot: the socket's key | TLS_KEY_BIT */
    u32 fd;                                /* the socket's fd (syscalls) or cookie (socket) in events */
    u32 held;                              /* Go: 0x100 | the byte a 1-byte Read returned (held back), or 0 */
};

BPF_TASK_STORAGE(tls_inflight, struct tls_call);
BPF_TABLE("lru_hash", struct tls_key, struct tls_conn, tls_conns, MAX_TLS_CONNS);
BPF_TABLE("lru_hash", u64, struct tls_key, tls_sockets, MAX_TLS_CONNS);   /* socket key -> its SSL* */
BPF_PERCPU_ARRAY(tls_lost, u64, TLS_LOST_REASONS);
BPF_PERCPU_ARRAY(tls_scratch, struct tls_conn, 1);

static __always_inline int tls_enter(struct pt_regs *ctx, u32 is_write, int ex)
{
    if (telegen_is_self())
        return 0;
    struct tls_call *t = tls_inflight.task_storage_get(bpf_get_current_task_btf(), 0,
                                                       BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!t)
        return 0;
    t->ssl = PT_REGS_PARM1(ctx);
    t->buf = PT_REGS_PARM2(ctx);
    t->len_ptr = ex ? PT_REGS_PARM4(ctx) : 0;
    t->ts = bpf_ktime_get_ns();
    t->is_write = is_write;
    t->active = 1;
    return 0;
}

int tls_enter_write(struct pt_regs *ctx) { return tls_enter(ctx, 1, 0); }
int tls_enter_read(struct pt_regs *ctx) { return tls_enter(ctx, 0, 0); }
int tls_enter_write_ex(struct pt_regs *ctx) { return tls_enter(ctx, 1, 1); }
int tls_enter_read_ex(struct pt_regs *ctx) { return tls_enter(ctx, 0, 1); }

/*
 * Go's crypto/tls (statically linked: no libssl), uprobes on (*Conn).Write and (*Conn).Read in
 * each Go executable (telegen/ebpf/tls.py): at the entry (register ABI, Go >= 1.17: the *Conn in
 * RAX, the slice's pointer and length in RBX and RCX) and on every RET instruction of each (no
 * uretprobe: the kernel's return trampoline rewrites the return address on the goroutine's stack,
 * which Go copies elsewhere when the stack grows), where RAX is n. The call in flight is keyed
 * by goroutine (its g, R14 in Go's ABI, constant across the call), not by thread: a Read that
 * finds no data parks its goroutine in the netpoller, and the read that brings the data runs
 * later, possibly on another thread (M). The socket hook finds the goroutine of the syscall it
 * runs in from the saved user registers (R14 is still g at Go's syscall instruction) and links
 * the socket to the *Conn as tls_socket_io() does for an SSL*, normally during the handshake
 * (handshakeContext is probed for that). go_tls_on[0] is set by user space once a Go executable
 * has the uprobes: until then the socket hook does not look. A Write on a linked *Conn sends its
 * plaintext at the entry, a Read at its RET.
 */
struct go_key {
    u64 g;
    u32 tgid;
    u32 _pad;
};

#ifndef MAX_GO_CALLS
#define MAX_GO_CALLS 16384
#endif
BPF_TABLE("lru_hash", struct go_key, struct tls_call, go_inflight, MAX_GO_CALLS);
BPF_ARRAY(go_tls_on, u32, 1);

/* The Go TLS call in flight in the goroutine whose syscall this is (0: none, or no Go executable probed). */
static __always_inline struct tls_call *go_current_call(void)
{
    u32 zero = 0;
    u32 *on = go_tls_on.lookup(&zero);
    if (!on || !*on)
        return 0;
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
    struct go_key k = {.g = 0, .tgid = bpf_get_current_pid_tgid() >> 32, ._pad = 0};
    if (!regs || bpf_probe_read_kernel(&k.g, sizeof(k.g), &regs->r14) != 0)
        return 0;
    struct tls_call *t = go_inflight.lookup(&k);
    return t && t->active ? t : 0;
}

/*
 * The capture's data hook saw socket I/O on connection `key` (its conn `c`, `fd` as events name
 * it). Inside an SSL_* call of this thread, the socket is that SSL*'s: link them on first sight.
 * Returns 1 when the bytes are TLS (the caller neither parses nor counts them), 0 otherwise.
 */
static __always_inline int tls_socket_io(struct conn *c, u64 key, u32 fd)
{
    if (c->role == ROLE_TLS)
        return 1;
    /*
     * Only a connection whose first bytes were not HTTP (the TLS handshake's) is linked: an entry
     * whose return was missed leaves `active` set, and must not take a plaintext HTTP connection.
     * A handshake done inside SSL_read/SSL_write links at its second socket operation. A stream
     * connection (c->proto) is linked too: PostgreSQL's SSLRequest and MySQL's SSL request packet
     * go in clear and classify the socket, then the same socket carries TLS.
     */
    if (c->role != ROLE_OTHER && !c->proto)
        return 0;
    struct tls_call *t = tls_inflight.task_storage_get(bpf_get_current_task_btf(), 0, 0);
    if (!t || !t->active)
        t = go_current_call();
    if (!t)
        return 0;
    /* A stream connection's clear start came first: an SSL_* call begun before it is a stale entry. */
    if (c->proto && t->ts < c->start_ts)
        return 0;
    u32 zero = 0;
    struct tls_conn *n = tls_scratch.lookup(&zero);
    if (!n)
        return 0;
    struct tls_key k = {.ssl = t->ssl, .tgid = bpf_get_current_pid_tgid() >> 32, ._pad = 0};
    __builtin_memset(n, 0, sizeof(*n));
    n->c.start_ts = c->start_ts;
    n->c.peer = c->peer;
    n->c.local = c->local;
    n->c.owner = c->owner;
    n->c.cookie = c->cookie;
    /* A stream connection stays one: its plaintext goes to the same parser (same key, same start). */
    n->c.proto = c->proto;
    n->c.role = c->proto ? ROLE_CLIENT : ROLE_UNSEEN;
    n->c.flags = HTTP_FLAG_TLS;
    n->key = key | TLS_KEY_BIT;
    n->fd = fd;
    tls_conns.update(&k, n);
    tls_sockets.update(&key, &k);
    c->role = ROLE_TLS;
    c->proto = 0;                          /* its ciphertext is no stream's, its close is tls_closed()'s */
    return 1;
}

/*
 * A TLS call `t` returned `ret` (bytes of plaintext, or <= 0): its plaintext through the linked
 * TLS connection's decoders, or counted lost when its socket was never seen inside one of its calls.
 */
static __always_inline int tls_plaintext(struct tls_call *t, s64 ret, int go)
{
    if (ret <= 0)
        return 0;
    struct tls_key k = {.ssl = t->ssl, .tgid = bpf_get_current_pid_tgid() >> 32, ._pad = 0};
    struct tls_conn *tc = tls_conns.lookup(&k);
    if (!tc) {
        u32 reason = TLS_LOST_UNLINKED;
        u64 *lost = tls_lost.lookup(&reason);
        if (lost)
            (*lost)++;
        return 0;
    }
    u64 buf = t->buf;
    if (go && !t->is_write) {
        /*
         * net/http's server reads one byte in the background while a handler runs (to notice a
         * client gone); when the next request comes meanwhile, its first byte arrives alone and
         * the rest in the next Read, which bufio makes right after that byte in its buffer. The
         * byte is held back and the next Read's plaintext taken from one byte earlier when that
         * byte is there, so the request's head is whole.
         */
        u8 byte = 0;
        if (t->size == 1 && ret == 1) {
            if (bpf_probe_read_user(&byte, 1, (void *)buf) == 0)
                tc->held = 0x100 | byte;
            return 0;
        }
        if (tc->held) {
            if (bpf_probe_read_user(&byte, 1, (void *)(buf - 1)) == 0 && byte == (tc->held & 0xff)) {
                buf -= 1;
                ret += 1;
            }
            tc->held = 0;
        }
    }
    struct pending p = {.buf = buf, .ts = t->is_write ? t->ts : 0, .fd = tc->fd, .how = HOW_PLAIN};
    u64 now = bpf_ktime_get_ns();
    /* The stream protocols first, under the socket's own connection id (one parser per connection). */
    if (!l7_payload(tc->key & ~TLS_KEY_BIT, &tc->c, &p, ret, buf, ret, t->is_write, now)) {
        struct slot_ref r = {.key = tc->key, .sk = 0};     /* no socket here: pending_requests */
        http_payload(&r, &tc->c, &p, ret, buf, ret, t->is_write, now);
    }
    return 0;
}

int tls_return(struct pt_regs *ctx)
{
    struct tls_call *t = tls_inflight.task_storage_get(bpf_get_current_task_btf(), 0, 0);
    if (!t || !t->active)
        return 0;
    t->active = 0;
    s64 ret = (int)PT_REGS_RC(ctx);
    if (ret > 0 && t->len_ptr) {
        u64 n = 0;
        if (bpf_probe_read_user(&n, sizeof(n), (void *)t->len_ptr) != 0)
            return 0;
        ret = n;
    }
    return tls_plaintext(t, ret, 0);
}

#define GO_HANDSHAKE 2                     /* tls_call.is_write of a handshake in flight: no plaintext */

static __always_inline int go_enter(struct pt_regs *ctx, u32 is_write)
{
    struct go_key k = {.g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32, ._pad = 0};
    struct tls_call t = {.ssl = ctx->ax, .buf = ctx->bx, .len_ptr = 0, .ts = bpf_ktime_get_ns(),
                         .size = ctx->cx, .is_write = is_write, .active = 1};
    if (is_write == 1) {
        /*
         * A Write on a linked *Conn goes out now, all of b (Write returns len(b) unless it fails):
         * at its RET it could come after the reply's Read, which another goroutine makes (net/http's
         * read loop), when the writer waits for a P after its write syscall.
         */
        struct tls_key tk = {.ssl = t.ssl, .tgid = k.tgid, ._pad = 0};
        if (tls_conns.lookup(&tk)) {
            go_inflight.delete(&k);
            return tls_plaintext(&t, (s64)t.size, 1);
        }
    }
    go_inflight.update(&k, &t);
    return 0;
}

int gotls_enter_write(struct pt_regs *ctx) { return go_enter(ctx, 1); }
int gotls_enter_read(struct pt_regs *ctx) { return go_enter(ctx, 0); }

/*
 * (*Conn).handshakeContext: its socket I/O links the socket to the *Conn. Without it the link
 * would wait for a Read or Write that does socket I/O, and the first Read often does none: the
 * handshake's own read already took the request that followed the client's Finished into the
 * *Conn's buffer. Called inside a Read or Write (an implicit handshake), it leaves their entry.
 */
int gotls_enter_handshake(struct pt_regs *ctx)
{
    struct go_key k = {.g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32, ._pad = 0};
    struct tls_call *t = go_inflight.lookup(&k);
    if (t && t->active && t->ssl == ctx->ax)
        return 0;
    return go_enter(ctx, GO_HANDSHAKE);
}

int gotls_handshake_return(struct pt_regs *ctx)
{
    struct go_key k = {.g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32, ._pad = 0};
    struct tls_call *t = go_inflight.lookup(&k);
    if (t && t->is_write == GO_HANDSHAKE)
        t->active = 0;
    return 0;
}

int gotls_return(struct pt_regs *ctx)
{
    struct go_key k = {.g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32, ._pad = 0};
    struct tls_call *t = go_inflight.lookup(&k);
    if (!t || !t->active || t->is_write == GO_HANDSHAKE)
        return 0;
    t->active = 0;
    return tls_plaintext(t, (s64)ctx->ax, 1);
}

/* Connection `key` (a ROLE_TLS socket) closes: its TLS connection's held request and close go out. */
static __always_inline void tls_closed(u64 key)
{
    struct tls_key *found = tls_sockets.lookup(&key);
    if (!found)
        return;
    struct tls_key k = *found;
    tls_sockets.delete(&key);
    struct tls_conn *tc = tls_conns.lookup(&k);
    if (!tc || tc->key != (key | TLS_KEY_BIT))
        return;
    if (tc->c.proto) {
        l7_close(key, &tc->c, bpf_ktime_get_ns());
    } else if (tc->c.role == ROLE_SERVER || tc->c.role == ROLE_CLIENT) {
        struct slot_ref r = {.key = tc->key, .sk = 0};
        release_request(&r);
        struct pending p = {.buf = 0, .ts = 0, .fd = tc->fd, .how = HOW_NONE};
        send_event(EV_CLOSE, &tc->c, &p, 0, 0, 0, bpf_ktime_get_ns());
    }
    tls_conns.delete(&k);
}

#endif /* TELEGEN_TLS */
#endif /* TELEGEN_TLS_H */
