# -*- test-case-name: tests.unit.test_ebpf_compiler_pages -*-
"""
Give back the memory BCC's compiler leaves behind once the programs are loaded.

BCC links LLVM and clang (~80 MB of machine code) into the agent. A compile pages that code in
and it stays in the agent's RSS, unused, until the next compile. Code pages of a shared library
are clean copies of the file: MADV_DONTNEED drops them and the next compile simply faults them
back in from the page cache. Only executable mappings are touched (never data or relocated
pages, whose private contents would be lost). glibc keeps the compile's freed heap in its
arenas, so malloc_trim returns that too.
"""
import ctypes
import re

MADV_DONTNEED = 4
COMPILER_LIBRARIES = re.compile(r"/lib(LLVM|clang)[^/]*\.so")


def compiler_text_ranges(maps_text):
    """(start, end) of every executable mapping of an LLVM or clang library in /proc/<pid>/maps text."""
    ranges = []
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[1] == "r-xp" and COMPILER_LIBRARIES.search(fields[5]):
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def release_compiler_memory(maps_path="/proc/self/maps"):
    """Drop the compiler's code pages and trim the heap; returns the bytes of code advised away."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    with open(maps_path) as f:
        ranges = compiler_text_ranges(f.read())
    released = sum(end - start for start, end in ranges if libc.madvise(start, end - start, MADV_DONTNEED) == 0)
    libc.malloc_trim(0)
    return released
