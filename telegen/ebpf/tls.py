# -*- test-case-name: tests.unit.test_ebpf_tls -*-
"""
Where the HTTP probe's TLS uprobes go (bpf/tls.h): every libssl.so a process maps and every Go
executable a process runs (Go's crypto/tls is linked into the program), attached once per file.

A uprobe is registered on a file (its inode) and fires in every process that maps that file,
now or later, so one attachment per distinct libssl covers a host: BCC's attach_uprobe with the
library's path and pid -1. The files are found in the system library directories when the
probe loads (so a process that starts later with the system libssl is covered before its first
call), in /proc/PID/maps of every process (a container's own libssl, an application's vendored
one) at load and every agent.discovery.poll_interval, and in the maps of each process that
execs (the process table's exec events), once when the event arrives and once more
EXEC_RECHECK seconds later, because a program maps its libraries after its exec and Python
dlopens libssl only when `ssl` is imported. A container's file is reached through
/proc/PID/root, whose path stays valid for the kernel after the process is gone: the uprobe
holds the inode.

Only OpenSSL's libssl (libssl.so, libssl.so.N) is probed: NSS's libssl3.so has no SSL_write,
statically linked OpenSSL (no libssl.so mapped), BoringSSL/rustls/GnuTLS are not seen
(docs/ebpf.md, "HTTPS").

Go: each process's executable (/proc/PID/exe), found the same ways, is examined once per file: a
Go program (a .go.buildinfo or .gopclntab section) built by Go >= 1.18 (its buildinfo names the
version inline; the register ABI the BPF side reads came with 1.17) that has
crypto/tls.(*Conn).Write and Read (in its symbol table or, stripped, in Go's own function table,
the pclntab) gets an entry uprobe on each and a uprobe on each of their RET instructions (found by
disassembling the functions with binutils' objdump): Go copies a goroutine's stack when it grows,
which breaks the return address a uretprobe plants. A Go program that cannot be probed is listed
with why, counted and logged, never skipped silently.
"""
import glob
import os
import re
import struct
import subprocess

from twisted.internet import threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from telegen.profiling import elf

log = Logger()

# libssl.so[.N], and the copies Python wheels vendor under a hashed name (auditwheel:
# psycopg_binary.libs/libssl-6a9b88ec.so.3, which psycopg[binary]'s libpq uses).
LIBSSL = re.compile(r"/libssl(-[0-9a-f]{8})?\.so(\.[0-9][0-9.]*)?$")
SYSTEM_GLOBS = ("/lib/*/libssl.so*", "/usr/lib/*/libssl.so*", "/lib64/libssl.so*", "/usr/lib64/libssl.so*",
                "/usr/lib/libssl.so*", "/usr/local/lib/libssl.so*", "/usr/local/lib64/libssl.so*")
# symbol -> the bpf/tls.h function its entry runs; every one's return runs tls_return.
ENTRIES = {"SSL_write": "tls_enter_write", "SSL_read": "tls_enter_read",
           "SSL_write_ex": "tls_enter_write_ex", "SSL_read_ex": "tls_enter_read_ex"}
RETURN_FN = "tls_return"
EXEC_RECHECK = 1.0           # seconds after an exec event when the process's maps are read again
# Go's crypto/tls: symbol -> the bpf/tls.h functions its entry and its RET instructions run. The
# handshake (whose socket I/O links the socket to the *Conn) is optional: without it, the first
# Read or Write that does socket I/O links it.
GO_FUNCTIONS = {"crypto/tls.(*Conn).Write": ("gotls_enter_write", "gotls_return"),
                "crypto/tls.(*Conn).Read": ("gotls_enter_read", "gotls_return"),
                "crypto/tls.(*Conn).handshakeContext": ("gotls_enter_handshake", "gotls_handshake_return")}
GO_REQUIRED = ("crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read")
GO_SECTIONS = (".go.buildinfo", ".gopclntab")
GO_STRIPPED = "stripped, and no function table (Go >= 1.18 pclntab) found: crypto/tls.(*Conn) not found"
# The first 8 bytes of a Go >= 1.18 pclntab header on amd64 (magic, two pad bytes, quantum 1, pointer size 8).
PCLNTAB_HEADS = (b"\xf1\xff\xff\xff\x00\x00\x01\x08", b"\xf0\xff\xff\xff\x00\x00\x01\x08")   # 1.20+, 1.18-1.19
_BUILDINFO_MAGIC = b"\xff Go buildinf:"
_RET = re.compile(r"^\s*([0-9a-f]+):\s+ret[q]?\b", re.M)


class NotProbed(Exception):
    """A Go executable whose crypto/tls cannot be probed (the message says why)."""


def go_version(data, sections, names):
    """The Go version in .go.buildinfo ("go1.19.8"), or None when it is not inline (Go < 1.18) or absent."""
    if ".go.buildinfo" not in names:
        return None
    start = sections[names.index(".go.buildinfo")][4]
    head = data[start:start + 32]
    if head[:14] != _BUILDINFO_MAGIC or not head[15] & 2:
        return None
    length, shift, at = 0, 0, start + 32          # a uvarint length, then the string
    while True:
        byte = data[at]
        length |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            break
        shift += 7
    return data[at:at + length].decode("ascii", "replace")


def ret_offsets(path, start, size):
    """Offsets from `start` of the RET instructions of the function at [start, start + size) of path (objdump)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={start:#x}",
                          f"--stop-address={start + size:#x}", path],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [int(m.group(1), 16) - start for m in _RET.finditer(out)]


def _pclntab_start(data, sections, names):
    """
    The file offset of the pclntab: its own section (.data.rel.ro.gopclntab in internally linked
    PIE builds), or found by its header in .data.rel.ro (externally linked PIE builds).
    """
    for name in (".gopclntab", ".data.rel.ro.gopclntab"):
        if name in names:
            return sections[names.index(name)][4]
    if ".data.rel.ro" not in names:
        return None
    sh = sections[names.index(".data.rel.ro")]
    for head in PCLNTAB_HEADS:
        at = data.find(head, sh[4], sh[4] + sh[5])
        while at >= 0 and at % 8:
            at = data.find(head, at + 1, sh[4] + sh[5])
        if at >= 0:
            return at
    return None


def pclntab_functions(data, sections, names, wanted):
    """
    {name: (address, size)} of the wanted functions from Go's own function table (pclntab, Go
    >= 1.18 layout), which stripping keeps: {} when it has none of them, None when there is no
    table this reads. The size runs to the next function (its padding included).
    """
    start = _pclntab_start(data, sections, names)
    if start is None or data[start:start + 8] not in PCLNTAB_HEADS:
        return None
    nfunc, _, text, funcname_off, _, _, _, functab_off = struct.unpack_from("<8Q", data, start + 8)
    funcnames, functab = start + funcname_off, start + functab_off
    want = {name.encode(): name for name in wanted}
    out = {}
    # functab: nfunc (entry offset from text, _func offset from functab) pairs and an end entry;
    # _func starts with its entry offset and the offset of its name in the name table.
    for i, (entry, func) in enumerate(struct.iter_unpack("<II", data[functab:functab + 8 * nfunc])):
        at = funcnames + struct.unpack_from("<i", data, functab + func + 4)[0]
        name = data[at:data.find(b"\0", at)]
        if name in want:
            out[want[name]] = (text + entry, struct.unpack_from("<I", data, functab + 8 * (i + 1))[0] - entry)
    return out


def go_tls_functions(path):
    """
    {symbol: (address, [RET offsets])} of the crypto/tls.(*Conn) Write, Read and
    handshakeContext of the Go executable at path, from its symbol table or, stripped, from
    Go's own function table; None when it is not a Go program, or one without crypto/tls;
    NotProbed when it is one that cannot be probed.
    """
    try:
        data = elf.map_file(path)
        sections = elf.section_headers(data)
    except (OSError, elf.ElfError):
        return None
    try:
        names = elf.section_names(data, sections)
        if not any(name in names for name in GO_SECTIONS):
            return None
        if ".symtab" in names:
            found = elf.find_symbols(data, sections, GO_FUNCTIONS)
        else:
            found = pclntab_functions(data, sections, names, GO_FUNCTIONS)
        if found == {}:
            return None
        version = go_version(data, sections, names)
        if version is None or not re.match(r"go1\.(1[89]|[2-9][0-9])", version):
            raise NotProbed(f"Go {version or 'older than 1.18'}: only Go >= 1.18 builds are probed")
        if found is None:
            raise NotProbed(GO_STRIPPED)
    finally:
        data.close()
    if not set(GO_REQUIRED) <= set(found):
        raise NotProbed("missing " + ", ".join(sorted(set(GO_REQUIRED) - set(found))))
    try:
        rets = {symbol: (start, ret_offsets(path, start, size)) for symbol, (start, size) in found.items()}
    except (OSError, subprocess.SubprocessError) as e:
        raise NotProbed(f"disassembling with objdump failed: {e}") from e
    empty = [symbol for symbol, (_, offsets) in rets.items() if not offsets]
    if empty:
        raise NotProbed("no RET instruction found in " + ", ".join(empty))
    return rets


def system_libraries():
    """OpenSSL libssl files in the usual library directories (symlinks included: attach() dedupes by inode)."""
    return [p for pattern in SYSTEM_GLOBS for p in glob.glob(pattern) if LIBSSL.search(p)]


def mapped_libraries(pid, proc_root="/proc"):
    """
    Paths through which the agent reaches the libssl files process pid maps: the path itself
    when it names the same file here, else through the process's root (a container's file).
    """
    try:
        with open(f"{proc_root}/{pid}/maps", encoding="utf-8", errors="replace") as f:
            names = {line.split(None, 5)[5].strip() for line in f if line.count(" ") >= 5 and "libssl" in line}
    except OSError:
        return []
    out = []
    for name in sorted(names):
        if LIBSSL.search(name):              # not "(deleted)" files nor NSS's libssl3.so
            out.append(_through_root(pid, name, proc_root))
    return out


def _through_root(pid, name, proc_root):
    """name if it is the same file here as for process pid, else the path through the process's root (a container's file)."""
    through_root = f"{proc_root}/{pid}/root{name}"
    try:
        same = os.stat(name).st_ino == os.stat(through_root).st_ino
    except OSError:
        same = False
    return name if same else through_root


def executable(pid, proc_root="/proc"):
    """The path through which the agent reaches process pid's executable ([] for kernel threads and gone processes)."""
    try:
        name = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:
        return []
    if name.endswith(" (deleted)"):
        return [f"{proc_root}/{pid}/exe"]   # replaced on disk: the running file is still reachable there
    return [_through_root(pid, name, proc_root)]


def process_files(pid, proc_root="/proc"):
    """The files of process pid that may take TLS uprobes: its libssl libraries and its executable."""
    return mapped_libraries(pid, proc_root) + executable(pid, proc_root)


def all_process_files(proc_root="/proc"):
    """process_files() of every process (run in a thread: it reads every process's maps)."""
    out = set()
    for entry in os.listdir(proc_root):
        if entry.isdigit():
            out.update(process_files(int(entry), proc_root))
    return sorted(out)


class TlsLibraries:
    """
    The files the TLS uprobes are attached to (libssl libraries and Go executables), by (device, inode).

    @param bpf: the HTTP probe's BCC object (compiled with -DTELEGEN_TLS).
    @param processes: the process table (exec events), or None.
    @param go: also Go executables (agent.ebpf.tls_go); else only libssl libraries are probed.
    """

    def __init__(self, bpf, processes=None, proc_root="/proc", go=True):
        self._bpf = bpf
        self._probe_go = go
        self._processes = processes
        self._proc_root = proc_root
        self._files = {}             # (st_dev, st_ino) -> {"path", "symbols", "error"} (+ "returns" for Go)
        self._go = set()             # the keys of _files that are Go executables
        self._not_go = set()         # executables examined and not Go programs with crypto/tls: not again
        self._loop = None
        self._scanning = False
        self._rechecks = set()       # the exec rechecks still to come (cancelled by stop())

    def attach(self, path):
        """Attach the uprobes to the file at path unless its inode already has them; True when newly attached (or listed)."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino)
        if key in self._files or key in self._not_go:
            return False
        if LIBSSL.search(path):
            self._files[key] = self._attach_libssl(path)
            return True
        record = self._attach_go(path) if self._probe_go else None
        if record is None:
            self._not_go.add(key)
            return False
        self._files[key] = record
        self._go.add(key)
        return True

    def _attach_libssl(self, path):
        record = {"path": path, "symbols": [], "error": None}
        for symbol, entry in ENTRIES.items():
            try:
                # The return first: a call entered between the two attachments would leave its thread's entry unanswered.
                self._bpf.attach_uretprobe(name=path.encode(), sym=symbol.encode(), fn_name=RETURN_FN.encode(), pid=-1)
                self._bpf.attach_uprobe(name=path.encode(), sym=symbol.encode(), fn_name=entry.encode(), pid=-1)
            except Exception as e:        # BCC raises Exception: a symbol this OpenSSL lacks (1.0 has no _ex)
                record["error"] = f"{symbol}: {e}"
                continue
            record["symbols"].append(symbol)
        log.info("TLS uprobes on {path}: {symbols}", path=path, symbols=",".join(record["symbols"]) or "none")
        return record

    def _attach_go(self, path):
        """A Go executable's record (its uprobes attached, or why not), or None when it is no Go program using crypto/tls."""
        try:
            functions = go_tls_functions(path)
        except NotProbed as e:
            log.warn("Go TLS not probed in {path}: {why}", path=path, why=str(e))
            return {"path": path, "symbols": [], "returns": 0, "error": str(e)}
        if functions is None:
            return None
        record = {"path": path, "symbols": [], "returns": 0, "error": None}
        for symbol, (entry, ret) in GO_FUNCTIONS.items():
            if symbol not in functions:
                record["error"] = f"{symbol}: not found"
                continue
            try:
                # By address (BCC turns it into the file offset): a stripped build has no symbol to name.
                # The RETs first, as the uretprobes above: an entry without its return would stay in flight.
                start, offsets = functions[symbol]
                for offset in offsets:
                    self._bpf.attach_uprobe(name=path.encode(), addr=start + offset, fn_name=ret.encode(), pid=-1)
                    record["returns"] += 1
                self._bpf.attach_uprobe(name=path.encode(), addr=start, fn_name=entry.encode(), pid=-1)
            except Exception as e:        # BCC raises Exception
                record["error"] = f"{symbol}: {e}"
                continue
            record["symbols"].append(symbol)
        if record["symbols"]:
            go_on = self._bpf[b"go_tls_on"]
            go_on[go_on.Key(0)] = go_on.Leaf(1)          # the socket hooks start looking for Go calls
        log.info("Go TLS uprobes on {path}: {symbols} and {returns} RET instructions", path=path,
                 symbols=",".join(record["symbols"]) or "none", returns=record["returns"])
        return record

    def attach_all(self, paths):
        """attach() each path; how many files were new."""
        return sum(self.attach(p) for p in paths)

    def start(self):
        """The system libraries and every process's now (in the loader's thread), then exec events and a periodic rescan."""
        self.attach_all(system_libraries())
        self.attach_all(all_process_files(self._proc_root))

    def watch(self, poll_interval, clock):
        """Follow exec events and rescan every process's maps every poll_interval (on the reactor)."""
        self._clock = clock
        if self._processes is not None:
            self._processes.exec_hooks.append(self.on_exec)
        self._loop = LoopingCall(self.rescan)
        self._loop.clock = clock
        self._loop.start(poll_interval, now=False).addErrback(lambda f: log.failure("TLS library rescan failed", f))

    def set_interval(self, poll_interval):
        """A reload changed agent.discovery.poll_interval: the rescan follows it."""
        if self._loop is not None:
            self._loop.interval = poll_interval

    def stop(self):
        if self._processes is not None and self.on_exec in self._processes.exec_hooks:
            self._processes.exec_hooks.remove(self.on_exec)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for call in self._rechecks:
            call.cancel()
        self._rechecks.clear()

    def on_exec(self, pid):
        """A process exec'd: its executable and libssl now, the libssl again once it has had time to map (or dlopen) it."""
        self.attach_all(process_files(pid, self._proc_root))

        def recheck():
            self._rechecks.discard(call)
            self.attach_all(mapped_libraries(pid, self._proc_root))
        call = self._clock.callLater(EXEC_RECHECK, recheck)
        self._rechecks.add(call)

    def rescan(self):
        """Every process's maps, read in a thread, attached on the reactor; skipped while one still runs."""
        if self._scanning:
            return None
        self._scanning = True

        def done(paths):
            self._scanning = False
            if self._loop is not None and self._loop.running:       # not stopped (the BPF object released) meanwhile
                self.attach_all(paths)

        def failed(failure):
            self._scanning = False
            log.failure("reading /proc/*/maps and exe for TLS uprobes failed", failure)

        d = threads.deferToThreadPool(self._clock, self._clock.getThreadPool(), all_process_files, self._proc_root)
        return d.addCallbacks(done, failed)

    def status(self):
        """[{path, symbols, error}] of the attached libraries."""
        return sorted((r for k, r in self._files.items() if k not in self._go), key=lambda r: r["path"])

    def go_status(self):
        """[{path, symbols, returns, error}] of the Go executables (attached, or why not: stripped ones among them)."""
        return sorted((self._files[k] for k in self._go), key=lambda r: r["path"])
