"""
The loader against the real BCC and kernel: a compiler error and a verifier refusal come back as
one precise line (what /ready and /status/ebpf show), and the shipped HTTP probe loads and
attaches in both capture modes.
"""
import os

import pytest

from telegen import paths
from telegen.config.loader import defaults
from telegen.ebpf import loader
from telegen.ebpf.http_probe import HttpProbe
from telegen.ebpf.loader import LoadError
from telegen.ebpf.probe import Probe
from telegen.ebpf.tls import GO_FUNCTIONS

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

BROKEN = '#include "telegen.h"\nTRACEPOINT_PROBE(syscalls, sys_enter_close) { return undefined_thing; }\n'
REFUSED = '''#include "telegen.h"
TRACEPOINT_PROBE(syscalls, sys_enter_close) {
    char buf[16];
    u32 n = args->fd;
    bpf_probe_read_user(buf, n, (void *)0);   /* size unbounded: the verifier says no */
    return buf[0];
}
'''


class FileProbe(Probe):
    name = "file"
    source = "probe.c"


def compile_text(tmp_path, text):
    (tmp_path / "probe.c").write_text(text)
    with open(os.path.join(paths.bpf_dir(), "telegen.h")) as f:
        (tmp_path / "telegen.h").write_text(f.read())
    return loader.compile_probe(FileProbe(), defaults(), os.getpid(), bpf_dir=str(tmp_path))


def test_a_compiler_error_is_reported_by_its_first_line(tmp_path):
    with pytest.raises(LoadError) as info:
        compile_text(tmp_path, BROKEN)
    assert str(info.value) == "error: use of undeclared identifier 'undefined_thing'"


def test_a_verifier_refusal_is_reported_with_the_verifiers_reason(tmp_path):
    with pytest.raises(LoadError) as info:
        compile_text(tmp_path, REFUSED)
    message = str(info.value)
    assert message.startswith("bpf: Failed to load program: ") and message.count(": ") >= 2, message


@pytest.mark.parametrize("capture", ["socket", "syscalls"])
def test_the_shipped_http_probe_loads_and_attaches_every_tracepoint(capture):
    config = defaults()
    config["agent"]["ebpf"]["ringbuf_size"] = 1 << 16
    config["agent"]["ebpf"]["capture"] = capture
    config["agent"]["ebpf"]["tls_go"] = True           # off by default; here every program must load
    probe = HttpProbe(config, None, None, None)
    bpf = loader.compile_probe(probe, config, os.getpid())
    try:
        assert probe.capture == capture and probe.capture_reason == f"agent.ebpf.capture is {capture}"
        programs = loader.describe_programs(bpf, probe.uprobe_programs())
        # The OpenSSL uprobes (agent.ebpf.tls, on by default), on the system libssl: kprobe programs.
        uprobes = {p["name"]: p for p in programs if "uprobe" in p}
        openssl = {name: p for name, p in uprobes.items() if not name.startswith("gotls_")}
        assert {name: (p["type"], p["attached"], p["uprobe"]) for name, p in openssl.items()} == {
            "tls_enter_read": ("kprobe", True, "SSL_read"), "tls_enter_read_ex": ("kprobe", True, "SSL_read_ex"),
            "tls_enter_write": ("kprobe", True, "SSL_write"), "tls_enter_write_ex": ("kprobe", True, "SSL_write_ex"),
            "tls_return": ("kprobe", True, "uretprobe:SSL_write,SSL_read,SSL_write_ex,SSL_read_ex")}
        # Go's crypto/tls ones: attached once a Go executable using it runs here (other engineers' may).
        assert sorted(set(uprobes) - set(openssl)) == sorted({fn for fns in GO_FUNCTIONS.values() for fn in fns})
        assert all(p["type"] == "kprobe" and p["attached"] == (p["uprobe"] is not None)
                   for name, p in uprobes.items() if name not in openssl)
        [system] = [lib for lib in probe._tls.status() if os.path.samefile(lib["path"], "/lib/x86_64-linux-gnu/libssl.so.3")]
        assert system["symbols"] == ["SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"] and system["error"] is None
        programs = [p for p in programs if p["name"] not in uprobes]
        if capture == "socket":
            assert probe.tracepoints() == []
            assert {p["tracepoint"] for p in programs} == {"tp_btf/" + tp for tp in probe.btf_tracepoints()}
            assert all(p["attached"] and p["type"] == "tracing" and p["id"] > 0 for p in programs)
        else:
            assert {p["tracepoint"] for p in programs} == {tp for tp, _ in probe.tracepoints()}
            assert all(p["attached"] and p["type"] == "tracepoint" and p["id"] > 0 for p in programs)
        maps = {name: loader.describe_map(fd) for name, fd in loader.map_fds(bpf).items()}
        assert maps["http_events"]["type"] == "ringbuf" and maps["http_events"]["max_entries"] == 1 << 16
        assert maps["lost"]["type"] == "percpu_array"
    finally:
        bpf.cleanup()
