/*
 * HTTP/1.x exchanges from socket-level BTF tracepoints (agent.ebpf.capture: socket), with no
 * program on any syscall tracepoint: a program on sys_enter/sys_exit puts every syscall of every
 * thread on the tracing slow path, these run only where a socket sends or receives.
 *
 * - tp_btf/sock_send_length and tp_btf/sock_recv_length (void *sk, int ret, int flags)
 *   fire for every socket send and receive, in the calling process, after the data moved. The
 *   bytes are still in the caller's buffer: the syscall's arguments are in the task's saved user
 *   registers (bpf_task_pt_regs; orig_ax is the syscall number), so the head is read from user
 *   memory as the syscall capture reads it (docs/ebpf.md, "Capture modes").
 * - tp_btf/inet_sock_set_state: the connection's close (our side's FIN, or a reset).
 *
 * A connection's state (struct conn) lives in the socket's own storage: created on its first
 * send or receive, freed with the socket. Its side is learnt from its first bytes (a request
 * received: server; sent: client); everything else (pairing, events) is bpf/http_events.h, so
 * user space decodes both modes alike. The socket cookie stands for the fd in events; the held
 * request is in the socket's storage too (HTTP_SOCKET_SLOTS).
 *
 * Kernel structs are read with plain loads at offsets taken from the running kernel's BTF
 * (telegen/ebpf/btf.py passes them as -D flags), never from the kernel headers BCC compiles
 * against: the verifier checks each load against the BTF type of sk, task and pt_regs.
 * x86-64 only (syscall numbers, pt_regs).
 */
#include "telegen.h"
#define HTTP_SOCKET_SLOTS                  /* request slots in socket storage (bpf/http_events.h) */
#include "http_events.h"
#include "l7_stream.h"
#include "tls.h"

#define FIELD(type, base, off) (*(type *)((char *)(base) + (off)))

#define IPPROTO_TCP_ 6
#define SOCK_STREAM_ 1
#define MSG_OOB_ 0x1
#define MSG_PEEK_ 0x2
#define MSG_TRUNC_ 0x20
#define MSG_ERRQUEUE_ 0x2000
#define PF_IO_WORKER_ 0x10
#define PF_KTHREAD_ 0x00200000
#define USER_CS_ 0x33                      /* 64-bit user code segment; compat tasks are not decoded */
#define TCP_FIN_WAIT1_ 4
#define TCP_CLOSE_ 7
#define TCP_LAST_ACK_ 9

BPF_SK_STORAGE(sk_conns, struct conn);

/* The socket's connection, created on first sight (whatever its role); 0 for what is not tracked. */
static __always_inline struct conn *sock_conn(void *sk)
{
    u16 family = FIELD(u16, sk, OFF_SK_FAMILY);
    if (family != AF_INET_ && family != AF_INET6_)
        return 0;
    if (FIELD(u16, sk, OFF_SK_PROTOCOL) != IPPROTO_TCP_ || FIELD(u16, sk, OFF_SK_TYPE) != SOCK_STREAM_)
        return 0;
    struct conn *c = sk_conns.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!c)
        return 0;
    if (!c->role) {
        /*
         * The agent's own sockets are marked not HTTP on their first event (it happens in the
         * agent), so later events skip the self check: one helper call fewer on the hot path.
         */
        if (telegen_is_self()) {
            c->role = ROLE_OTHER;
            return 0;
        }
        c->start_ts = bpf_ktime_get_ns();
        c->owner = bpf_get_current_pid_tgid() >> 32;
        c->cookie = bpf_get_socket_cookie(sk);
        c->peer.port = __builtin_bswap16(FIELD(u16, sk, OFF_SK_DPORT));
        c->local.port = FIELD(u16, sk, OFF_SK_NUM);
        c->peer.family = family;
        c->local.family = family;
        if (family == AF_INET_) {
            u32 peer = FIELD(u32, sk, OFF_SK_DADDR), local = FIELD(u32, sk, OFF_SK_RCV_SADDR);
            mapped_v4(c->peer.addr, (u8 *)&peer);
            mapped_v4(c->local.addr, (u8 *)&local);
        } else {
            bpf_probe_read_kernel(c->peer.addr, 16, (char *)sk + OFF_SK_V6_DADDR);
            bpf_probe_read_kernel(c->local.addr, 16, (char *)sk + OFF_SK_V6_RCV_SADDR);
        }
        c->role = ROLE_UNSEEN;
    }
    return c;
}

/*
 * How the current task's syscall passed its bytes (HOW_*), from its saved user registers, and
 * the buffer argument. HOW_NONE when there is no user buffer to read: sendfile/splice, the
 * *mmsg calls (which entry is unknown), kernel threads and io_uring workers (whose registers
 * are not this call's), compat tasks.
 */
static __always_inline u32 user_call(int is_write, u64 *buf)
{
    void *task = bpf_get_current_task_btf();
    if (FIELD(u32, task, OFF_TASK_FLAGS) & (PF_KTHREAD_ | PF_IO_WORKER_))
        return HOW_NONE;
    void *regs = (void *)bpf_task_pt_regs(task);
    if (!regs || FIELD(u16, regs, OFF_REGS_CS) != USER_CS_)
        return HOW_NONE;
    u64 nr = FIELD(u64, regs, OFF_REGS_ORIG_AX);
    *buf = FIELD(u64, regs, OFF_REGS_SI);
    switch (nr) {
    case 0:  /* read */
    case 1:  /* write */
    case 44: /* sendto */
    case 45: /* recvfrom */
        return HOW_PLAIN;
    case 19: /* readv */
    case 20: /* writev */
        return HOW_IOV;
    case 46: /* sendmsg */
    case 47: /* recvmsg */
        return HOW_MSG;
    }
    return HOW_NONE;
}

static __always_inline int on_data(void *sk, int ret, u32 flags, int is_write)
{
    if (ret <= 0)
        return 0;
    /* Peeked bytes come again; out-of-band and error-queue bytes are not the stream's. */
    if (!is_write && (flags & (MSG_PEEK_ | MSG_OOB_ | MSG_ERRQUEUE_)))
        return 0;
    struct conn *c = sock_conn(sk);
    if (!c)
        return 0;
#ifdef TELEGEN_TLS
    if (tls_socket_io(c, c->cookie, (u32)c->cookie))
        return 0;
#endif
    if (c->role == ROLE_OTHER)
        return 0;
    struct slot_ref r = {.key = c->cookie, .sk = sk};
    if (turn_while_full(&r, c, ret, is_write))
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct pending p = {.buf = 0, .ts = 0, .fd = (u32)c->cookie, .how = HOW_NONE};
    p.how = user_call(is_write, &p.buf);
    if (!is_write && (flags & MSG_TRUNC_))
        p.how = HOW_NONE;                  /* consumed, never copied: the buffer holds stale bytes */
    u64 ptr = 0, avail = 0;
    user_payload(p.how, p.buf, ret, &ptr, &avail);
    if (!l7_payload(c->cookie, c, &p, ret, ptr, avail, is_write, now))
        http_payload(&r, c, &p, ret, ptr, avail, is_write, now);
    return 0;
}

int tp_btf__sock_send_length(u64 *ctx)
{
    return on_data((void *)ctx[0], (int)ctx[1], (u32)ctx[2], 1);
}

int tp_btf__sock_recv_length(u64 *ctx)
{
    return on_data((void *)ctx[0], (int)ctx[1], (u32)ctx[2], 0);
}

/* Our side closed (FIN_WAIT1, LAST_ACK) or the connection was reset (CLOSE): the last event. */
int tp_btf__inet_sock_set_state(u64 *ctx)
{
    int state = (int)ctx[2];
    if (state != TCP_FIN_WAIT1_ && state != TCP_LAST_ACK_ && state != TCP_CLOSE_)
        return 0;
    void *sk = (void *)ctx[0];
    struct conn *c = sk_conns.sk_storage_get(sk, 0, 0);
#ifdef TELEGEN_TLS
    if (c && c->role == ROLE_TLS)
        tls_closed(c->cookie);
#endif
    if (!c || (c->role != ROLE_SERVER && c->role != ROLE_CLIENT))
        return 0;
    if (c->proto) {
        l7_close(c->cookie, c, bpf_ktime_get_ns());
        c->role = ROLE_OTHER;
        return 0;
    }
    struct slot_ref r = {.key = c->cookie, .sk = sk};
    release_request(&r);
    struct pending p = {.buf = 0, .ts = 0, .fd = (u32)c->cookie, .how = HOW_NONE};
    send_event(EV_CLOSE, c, &p, 0, 0, 0, bpf_ktime_get_ns());
    c->role = ROLE_OTHER;                  /* closed: nothing more is reported */
    return 0;
}
