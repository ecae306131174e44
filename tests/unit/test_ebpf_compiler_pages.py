"""
Which mappings the agent gives back after a compile: executable LLVM/clang code only, never data
or relocated pages (the real process is in tests/integration/test_ebpf_compiler_pages.py).
"""
from telegen.ebpf.compiler_pages import compiler_text_ranges, release_compiler_memory

MAPS = """\
7f0000000000-7f0000100000 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0000100000-7f0004000000 r-xp 00100000 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0004000000-7f0004100000 rw-p 04000000 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0005000000-7f0006000000 r-xp 00100000 08:01 2 /usr/lib/llvm-14/lib/libclang-cpp.so.14
7f0007000000-7f0007100000 r-xp 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0008000000-7f0008100000 r-xp 00000000 08:01 4 /usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0
7f0009000000-7f0009001000 rw-p 00000000 00:00 0
"""


def test_only_executable_compiler_mappings_are_chosen():
    assert compiler_text_ranges(MAPS) == [(0x7F0000100000, 0x7F0004000000), (0x7F0005000000, 0x7F0006000000)]


def test_no_compiler_loaded_releases_nothing(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f0007000000-7f0007100000 r-xp 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert release_compiler_memory(str(maps)) == 0
