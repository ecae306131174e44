"""
The loader's failure reasons and kernel facts, without root: the header pasted into sources,
BCC or headers missing, the most precise line of BCC's stderr, /proc fdinfo parsing.
"""
import builtins

import pytest

from telegen.config.loader import defaults
from telegen.ebpf import loader
from telegen.ebpf.loader import LoadError
from telegen.ebpf.probe import Probe

CLANG = """/virtual/main.c:586:27: warning: unused variable
/virtual/main.c:600:3: error: use of undeclared identifier 'IPPROTO_TCP'
    if (args->protocol != IPPROTO_TCP)
1 error generated.
Traceback (most recent call last):
Exception: Failed to compile BPF module <text>
"""

VERIFIER = """bpf: Failed to load program: Permission denied
0: (79) r6 = *(u64 *)(r1 +16)
; bpf_probe_read_user(e->data, n, (void *)ptr);
12: (85) call bpf_probe_read_user#112
R2 unbounded memory access, use 'var &= const' or 'if (var < const)'
processed 40 insns (limit 1000000) max_states_per_insn 0 total_states 2
"""


class OneFile(Probe):
    name = "one"
    source = "one.c"


def test_the_shared_header_is_pasted_in_place_of_its_include(tmp_path):
    (tmp_path / "telegen.h").write_text("#define HEADER_WAS_HERE 1\n")
    (tmp_path / "one.c").write_text('#include "telegen.h"\nint x;\n')
    assert loader.source_text(OneFile(), str(tmp_path)) == "#define HEADER_WAS_HERE 1\n\nint x;\n"


def test_a_missing_source_is_a_load_error_naming_the_file(tmp_path):
    with pytest.raises(LoadError, match=r"BPF source missing: .*one\.c"):
        loader.source_text(OneFile(), str(tmp_path))


def test_first_error_prefers_the_compiler_error():
    assert loader.first_error(CLANG) == "error: use of undeclared identifier 'IPPROTO_TCP'"


def test_first_error_gives_the_kernel_refusal_and_the_verifier_complaint():
    assert loader.first_error(VERIFIER) == ("bpf: Failed to load program: Permission denied: "
                                            "R2 unbounded memory access, use 'var &= const' or 'if (var < const)'")
    assert loader.first_error("nothing useful") is None


def test_missing_bcc_is_said_plainly(monkeypatch):
    real_import = builtins.__import__

    def no_bcc(name, *args, **kwargs):
        if name == "bcc":
            raise ImportError("No module named 'bcc'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bcc)
    with pytest.raises(LoadError, match=r"^BCC is not installed \(import bcc: No module named 'bcc'\)$"):
        loader.compile_probe(OneFile(), defaults(), 1)


def test_missing_kernel_headers_are_said_plainly(monkeypatch, tmp_path):
    pytest.importorskip("bcc")
    monkeypatch.setattr(loader, "kernel_headers_dir", lambda: str(tmp_path / "nope"))
    with pytest.raises(LoadError, match=r"^kernel headers missing: .*nope does not exist$"):
        loader.compile_probe(OneFile(), defaults(), 1)


def test_missing_kernel_btf_is_said_plainly_for_probes_that_need_it(monkeypatch, tmp_path):
    pytest.importorskip("bcc")
    monkeypatch.setattr(loader, "kernel_btf_path", lambda: str(tmp_path / "vmlinux"))
    needs_btf = OneFile()
    needs_btf.needs_btf = True
    with pytest.raises(LoadError, match=r"^kernel BTF missing: .*vmlinux does not exist \(the .* probe keeps"):
        loader.compile_probe(needs_btf, defaults(), 1)


def test_fdinfo_parses_key_value_lines(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    with open(path) as f:
        info = loader.fdinfo(f.fileno())
    assert info["pos"] == "0" and "flags" in info
    assert loader.fdinfo(10 ** 6) == {}


def test_headers_of_bpf_dir_are_pasted_where_included_once_each(tmp_path):
    """A source including telegen.h and a header that includes it too: each header's text appears once."""
    (tmp_path / "telegen.h").write_text("#define BASE 1\n")
    (tmp_path / "shared.h").write_text('#include "telegen.h"\n#define SHARED 2\n')
    (tmp_path / "one.c").write_text('#include "telegen.h"\n#include "shared.h"\n#include <linux/ptrace.h>\nint x;\n')
    assert loader.source_text(OneFile(), str(tmp_path)) == (
        "#define BASE 1\n\n\n#define SHARED 2\n\n#include <linux/ptrace.h>\nint x;\n")


class TwoWays(Probe):
    """A probe with two capture modes, recording what the loader told it."""

    name = "two"
    source = "two.c"

    def __init__(self):
        self.selected = []

    def capture_modes(self, config):
        return ["fast", "slow"]

    def select_capture(self, mode, failures):
        self.selected.append((mode, list(failures)))


def test_capture_modes_are_tried_in_order_and_the_first_that_loads_is_kept(monkeypatch):
    def compile_mode(probe, config, self_pid, bpf_dir):
        if probe.selected[-1][0] == "fast":
            raise LoadError("attach failed: no such tracepoint")
        return "bpf of " + probe.selected[-1][0]

    monkeypatch.setattr(loader, "_compile_mode", compile_mode)
    probe = TwoWays()
    assert loader.compile_probe(probe, defaults(), 1) == "bpf of slow"
    failed = [("fast", "attach failed: no such tracepoint")]
    assert probe.selected == [("fast", []), ("slow", failed), ("slow", failed)]


def test_when_every_capture_mode_fails_the_last_failure_is_the_probes(monkeypatch):
    def compile_mode(probe, config, self_pid, bpf_dir):
        raise LoadError(f"{probe.selected[-1][0]} refused")

    monkeypatch.setattr(loader, "_compile_mode", compile_mode)
    with pytest.raises(LoadError, match="^slow refused$"):
        loader.compile_probe(TwoWays(), defaults(), 1)
