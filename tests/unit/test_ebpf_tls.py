"""
Where the OpenSSL uprobes go (telegen.ebpf.tls): OpenSSL's libssl files among what processes map
(a container's through its root), each file attached once whatever the path that names it, and
a library lacking a symbol (OpenSSL 1.0 has no _ex) keeps the symbols it has.
"""
import os

import pytest

from telegen.ebpf import tls
from telegen.ebpf.tls import ENTRIES, GO_FUNCTIONS, GO_STRIPPED, RETURN_FN, NotProbed, TlsLibraries, mapped_libraries

MAPS = """\
7f0000000000-7f0000001000 r--p 00000000 08:01 100 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 08:01 100 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r--p 00000000 08:01 101 /usr/lib/x86_64-linux-gnu/libssl3.so
7f0000005000-7f0000006000 r--p 00000000 08:01 102 /opt/app/lib/libssl.so.1.1 (deleted)
7f0000007000-7f0000008000 r--p 00000000 08:01 103 /opt/app/lib/libcrypto.so.3
7f0000008000-7f0000009000 r-xp 00000000 08:01 104 /usr/lib/x86_64-linux-gnu/libssl-6a9b88ec.so.3
7f0000009000-7f000000a000 rw-p 00000000 00:00 0
"""


class FakeBPF:
    def __init__(self, missing=()):
        self.missing = set(missing)
        self.uprobes = []
        self.tables = {}

    def _attach(self, kind, name, sym, fn_name, pid):
        if sym.decode() in self.missing:
            raise Exception(f"could not determine address of symbol {sym.decode()}")
        self.uprobes.append((kind, name.decode(), sym.decode(), fn_name.decode(), pid))

    def attach_uprobe(self, name, fn_name, pid, sym=b"", addr=None):
        if addr is not None:                 # Go: by address
            self.uprobes.append((f"uprobe@{addr}", name.decode(), fn_name.decode(), pid))
            self.tables[b"go_tls_on"] = self.tables.get(b"go_tls_on", GoOn())
            return
        self._attach("uprobe", name, sym, fn_name, pid)

    def __getitem__(self, name):
        return self.tables[name]

    def attach_uretprobe(self, name, sym, fn_name, pid):
        self._attach("uretprobe", name, sym, fn_name, pid)


def test_only_openssls_libssl_is_taken_from_the_maps_through_the_process_root(tmp_path):
    """
    NSS's libssl3.so, deleted files and other libraries are not; a wheel's vendored copy
    (libssl-HASH.so.3, psycopg[binary]) is; a file not at that path here is reached through /proc/PID/root.
    """
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "maps").write_text(MAPS)
    assert mapped_libraries(42, str(tmp_path)) == [f"{tmp_path}/42/root/usr/lib/x86_64-linux-gnu/{name}"
                                                   for name in ("libssl-6a9b88ec.so.3", "libssl.so.3")]
    assert mapped_libraries(43, str(tmp_path)) == []             # gone


def test_each_file_is_attached_once_with_every_symbol_it_has(tmp_path):
    lib = tmp_path / "libssl.so.3"
    lib.write_bytes(b"\x7fELF")
    os.symlink(lib, tmp_path / "libssl.so")
    bpf = FakeBPF()
    libraries = TlsLibraries(bpf)
    assert libraries.attach_all([str(lib), str(tmp_path / "libssl.so"), str(lib)]) == 1
    assert bpf.uprobes == [(kind, str(lib), sym, fn if kind == "uprobe" else RETURN_FN, -1)
                           for sym, fn in ENTRIES.items() for kind in ("uretprobe", "uprobe")]
    old = tmp_path / "libssl.so.1.0.0"
    old.write_bytes(b"\x7fELF")
    old_bpf = FakeBPF(missing={"SSL_write_ex", "SSL_read_ex"})
    partial = TlsLibraries(old_bpf)
    partial.attach(str(old))
    [record] = partial.status()
    assert record["symbols"] == ["SSL_write", "SSL_read"] and record["error"].startswith("SSL_read_ex: ")
    assert [u[2] for u in old_bpf.uprobes] == ["SSL_write", "SSL_write", "SSL_read", "SSL_read"]


class GoOn(dict):
    """A BCC array's Key/Leaf constructors, enough for go_tls_on."""
    Key = Leaf = staticmethod(lambda value: value)


class Table:
    def __init__(self):
        self.exec_hooks = []


def test_an_exec_reads_the_maps_now_and_once_more_later_and_stop_cancels_what_is_pending(tmp_path):
    """A process maps (or dlopens) its libssl after its exec: read now and EXEC_RECHECK later; a stopped probe attaches nothing."""
    from twisted.internet.task import Clock

    from telegen.ebpf.tls import EXEC_RECHECK

    lib = tmp_path / "libssl.so.3"
    lib.write_bytes(b"\x7fELF")
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "maps").write_text("")
    clock, table, bpf = Clock(), Table(), FakeBPF()
    libraries = TlsLibraries(bpf, table, proc_root=str(tmp_path))
    libraries.watch(60.0, clock)
    [hook] = table.exec_hooks
    hook(7)
    assert bpf.uprobes == []
    (tmp_path / "7" / "maps").write_text(f"7f0000000000-7f0000001000 r-xp 00000000 08:01 5 {lib}\n")
    os.symlink("/", tmp_path / "7" / "root")
    clock.advance(EXEC_RECHECK)
    assert {u[1] for u in bpf.uprobes} == {str(lib)}
    hook(7)
    libraries.stop()
    assert table.exec_hooks == [] and clock.getDelayedCalls() == []


def test_files_that_are_not_go_programs_using_crypto_tls_are_not_probed(tmp_path):
    """An ELF that is no Go program (this Python), and a file that is no ELF at all."""
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert tls.go_tls_functions(os.path.realpath("/proc/self/exe")) is None
    assert tls.go_tls_functions(str(tmp_path / "script")) is None


def test_a_go_executable_gets_its_ret_uprobes_before_each_entry_and_is_examined_once(tmp_path, monkeypatch):
    """RETs first (an entry without its return would stay in flight), the socket hooks told; a non-Go file is not examined again."""
    exe, other = tmp_path / "server", tmp_path / "python"
    exe.write_bytes(b"go")
    other.write_bytes(b"py")
    rets = {symbol: (1000 * (i + 1), [10 + i, 20 + i]) for i, symbol in enumerate(GO_FUNCTIONS)}
    examined = []

    def functions(path):
        examined.append(path)
        return rets if path == str(exe) else None
    monkeypatch.setattr(tls, "go_tls_functions", functions)
    bpf = FakeBPF()
    files = TlsLibraries(bpf)
    assert files.attach_all([str(exe), str(other), str(exe), str(other)]) == 1
    assert examined == [str(exe), str(other)]
    assert bpf.uprobes == [(f"uprobe@{rets[symbol][0] + offset}", str(exe), fn, -1)
                           for symbol, (entry, ret) in GO_FUNCTIONS.items()
                           for offset, fn in ((rets[symbol][1][0], ret), (rets[symbol][1][1], ret), (0, entry))]
    assert bpf[b"go_tls_on"] == {0: 1}
    assert files.go_status() == [{"path": str(exe), "symbols": list(GO_FUNCTIONS), "returns": 6, "error": None}]
    assert files.status() == []


def test_a_stripped_go_executable_is_listed_with_why_once(tmp_path, monkeypatch):
    exe = tmp_path / "stripped"
    exe.write_bytes(b"go")

    def stripped(path):
        raise NotProbed(GO_STRIPPED)
    monkeypatch.setattr(tls, "go_tls_functions", stripped)
    bpf = FakeBPF()
    files = TlsLibraries(bpf)
    assert files.attach(str(exe)) and not files.attach(str(exe))
    assert files.go_status() == [{"path": str(exe), "symbols": [], "returns": 0, "error": GO_STRIPPED}]
    assert bpf.uprobes == [] and b"go_tls_on" not in bpf.tables


@pytest.mark.parametrize("version, inline", [(b"go1.19.8", True), (b"go1.22.0", True), (None, False)])
def test_the_go_version_is_read_from_the_inline_buildinfo(version, inline):
    """Go >= 1.18 writes the version inline (flag 2, a uvarint length); older builds point to it (not read: not probed)."""
    head = b"\xff Go buildinf:" + bytes([8, 2 if inline else 0]) + bytes(16)
    data = head + (bytes([len(version)]) + version if version else b"") + bytes(8)
    assert tls.go_version(data, [(0, 0, 0, 0, 0, len(data))], [".go.buildinfo"]) == (version.decode() if version else None)


def test_with_tls_go_off_executables_are_not_examined_and_libssl_still_is(tmp_path, monkeypatch):
    """agent.ebpf.tls_go false: a Go program costs nothing (not even the ELF reading), OpenSSL is still probed."""
    exe, lib = tmp_path / "server", tmp_path / "libssl.so.3"
    exe.write_bytes(b"go")
    lib.write_bytes(b"ssl")
    examined = []
    monkeypatch.setattr(tls, "go_tls_functions", lambda path: examined.append(path))
    bpf = FakeBPF()
    files = TlsLibraries(bpf, go=False)
    assert files.attach_all([str(exe), str(lib), str(exe)]) == 1
    assert examined == [] and files.go_status() == [] and b"go_tls_on" not in bpf.tables
    assert [path for _, path, *_ in bpf.uprobes] == [str(lib)] * 2 * len(ENTRIES)
