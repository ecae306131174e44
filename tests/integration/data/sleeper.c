/*
 * Blocks for about argv[1] seconds in telegen_nap <- telegen_rest <- main, 20 ms at a time, and
 * burns almost no CPU (the off-CPU profile's known chain).
 *
 * The nanosleep system call is made inline, not through libc: Debian's libc has no frame
 * pointers, so a stack taken inside its wrapper skips the wrapper's caller (docs/profiling.md).
 */
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>

volatile unsigned long sink;

static inline long raw_nanosleep(const struct timespec *t)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"((long)SYS_nanosleep), "D"(t), "S"(0L) : "rcx", "r11", "memory");
    return ret;
}

__attribute__((noinline)) void telegen_nap(void)
{
    struct timespec t = {0, 20 * 1000 * 1000};
    raw_nanosleep(&t);
    sink++;
}

__attribute__((noinline)) void telegen_rest(void) { telegen_nap(); sink++; }

int main(int argc, char **argv)
{
    int naps = (int)((argc > 1 ? atof(argv[1]) : 2.0) * 50);
    for (int i = 0; i < naps; i++)
        telegen_rest();
    return 0;
}
