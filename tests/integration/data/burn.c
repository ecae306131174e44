/*
 * Burns CPU for argv[1] seconds in telegen_leaf <- telegen_middle <- telegen_outer <- main.
 * telegen_leaf calls telegen_tick (rarely, and it does next to nothing) so that it is not a leaf
 * function: gcc -fno-omit-frame-pointer still omits the frame of leaf functions, which would hide
 * their caller (docs/profiling.md).
 */
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;

__attribute__((noinline)) void telegen_tick(void) { sink++; }

__attribute__((noinline)) void telegen_leaf(void)
{
    for (int i = 0; i < 100000; i++)
        sink += i * sink;
    telegen_tick();
    sink++;
}

__attribute__((noinline)) void telegen_middle(void) { telegen_leaf(); sink++; }
__attribute__((noinline)) void telegen_outer(void) { telegen_middle(); sink++; }

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do {
        telegen_outer();
        clock_gettime(CLOCK_MONOTONIC, &b);
    } while ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 < seconds);
    return 0;
}
