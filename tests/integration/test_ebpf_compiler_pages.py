"""
On a real process: after a BCC compile, releasing the compiler's code pages lowers RSS, and the
next compile still works (the pages fault back in from the page cache).
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.ebpf
def test_releasing_lowers_rss_and_the_next_compile_still_works():
    """In a child process (the test process must keep its pages): compile, release, compile again."""
    code = (
        "from bcc import BPF\n"
        "from telegen.ebpf.compiler_pages import release_compiler_memory\n"
        "def rss():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])\n"
        "BPF(text=b'TRACEPOINT_PROBE(syscalls, sys_enter_getpid) { return 0; }')\n"
        "before = rss(); released = release_compiler_memory(); after = rss()\n"
        "BPF(text=b'TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }')\n"
        "print(before, after, released)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    before, after, released = (int(x) for x in out.stdout.split())
    assert released > 10 << 20
    assert after < before - 10 * 1024, (before, after)
