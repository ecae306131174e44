/*
 * The "realistic server" of issue 14's benchmark: HTTP/1.1 keep-alive on 127.0.0.1 that spends a
 * calibrated amount of CPU on every request (100 us by default), where nginx's `return 200`
 * spends ~10 us and is the capture's worst case. C, not Python or Go, so that the server's own
 * machinery (an interpreter, a runtime's futex/epoll/nanosleep traffic) does not swamp the
 * calibrated work and its syscalls stay those of a plain epoll server: one read and one write per
 * request, which is what the capture hooks cost.
 *
 *     burn_server PORT [BURN_US] [WORKERS]
 *
 * WORKERS processes (default 2, one per CPU here, so that saturation uses both cores as nginx
 * and wrk do) each listen on PORT with SO_REUSEPORT and serve their connections from one epoll
 * loop. The burn is a dependent xorshift chain whose iterations per microsecond are measured at
 * start against CLOCK_THREAD_CPUTIME_ID (best of several trials, so a preempted trial does not
 * inflate it); no clock is read while serving (a clock syscall per request would put extra
 * syscalls on the traced path). Prints "ready PORT ITERATIONS_PER_US" once every worker listens.
 * Workers die with the parent (PR_SET_PDEATHSIG), so stopping the parent by its pid stops all.
 * Built by bench/ebpf/kernel_cost.py with gcc -O2 into its temporary directory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BUF 16384
#define MAX_FDS 4096

static volatile uint64_t sink;

static void burn(uint64_t iterations)
{
    uint64_t x = 0x9e3779b97f4a7c15ull ^ iterations;
    for (uint64_t i = 0; i < iterations; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    sink = x;
}

static double thread_cpu_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* Iterations of burn() per microsecond of this thread's CPU: the fastest of 7 trials of ~20 ms. */
static double calibrate(void)
{
    const uint64_t n = 20000000;
    double best = 0;
    for (int i = 0; i < 7; i++) {
        double t0 = thread_cpu_us();
        burn(n);
        double rate = n / (thread_cpu_us() - t0);
        if (rate > best)
            best = rate;
    }
    return best;
}

struct conn {
    char in[BUF];
    size_t used;
};

static struct conn *conns[MAX_FDS];

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nServer: burn\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";

/* Answer every complete request head in c->in (GET without a body, as wrk sends); 0 when the connection is done. */
static int serve(int fd, struct conn *c, uint64_t iterations)
{
    for (;;) {
        ssize_t n = read(fd, c->in + c->used, BUF - c->used);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return 0;
        if (n < 0)
            return 1;
        c->used += n;
        char out[sizeof(RESPONSE) * 16];
        size_t len = 0;
        char *start = c->in, *end;
        while ((end = memmem(start, c->in + c->used - start, "\r\n\r\n", 4)) != NULL && len + sizeof(RESPONSE) <= sizeof(out)) {
            burn(iterations);
            memcpy(out + len, RESPONSE, sizeof(RESPONSE) - 1);
            len += sizeof(RESPONSE) - 1;
            start = end + 4;
        }
        c->used -= start - c->in;
        memmove(c->in, start, c->used);
        if (c->used == BUF)
            return 0;                       /* a head larger than the buffer: not this benchmark's traffic */
        if (len && write(fd, out, len) != (ssize_t)len)
            return 0;                       /* small answers fit the socket buffer; a short write ends the connection */
    }
}

static int listener(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 1024)) {
        perror("listen");
        exit(1);
    }
    return fd;
}

static void worker(int lfd, uint64_t iterations)
{
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, events[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    for (;;) {
        int n = epoll_wait(ep, events, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAX_FDS) {
                        close(c);
                        continue;
                    }
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    conns[c] = calloc(1, sizeof(struct conn));
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
            } else if (!serve(fd, conns[fd], iterations)) {
                close(fd);
                free(conns[fd]);
                conns[fd] = NULL;
            }
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [BURN_US] [WORKERS]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    double burn_us = argc > 2 ? atof(argv[2]) : 100;
    int workers = argc > 3 ? atoi(argv[3]) : 2;
    double per_us = calibrate();
    uint64_t iterations = (uint64_t)(per_us * burn_us);
    int fds[64];
    for (int i = 0; i < workers && i < 64; i++)
        fds[i] = listener(port);
    for (int i = 0; i < workers && i < 64; i++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() == 1)
                _exit(0);
            for (int j = 0; j < workers; j++)
                if (j != i)
                    close(fds[j]);
            worker(fds[i], iterations);
        }
    }
    printf("ready %d %.1f\n", port, per_us);
    fflush(stdout);
    for (;;)
        if (wait(NULL) < 0 && errno == ECHILD)
            return 0;
}
