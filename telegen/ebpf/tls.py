# -*- test-case-name: tests.unit.test_ebpf_tls -*-
"""
Where the HTTP probe's OpenSSL uprobes go (bpf/tls.h): every libssl.so a process maps, attached
once per library file.

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
statically linked OpenSSL (no libssl.so mapped), BoringSSL/rustls/GnuTLS and Go's crypto/tls
are not seen (docs/ebpf.md, "HTTPS").
"""
import glob
import os
import re

from twisted.internet import threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

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
        if not LIBSSL.search(name):
            continue                         # "(deleted)" files, NSS's libssl3.so
        through_root = f"{proc_root}/{pid}/root{name}"
        try:
            same = os.stat(name).st_ino == os.stat(through_root).st_ino
        except OSError:
            same = False
        out.append(name if same else through_root)
    return out


def all_mapped_libraries(proc_root="/proc"):
    """mapped_libraries() of every process (run in a thread: it reads every process's maps)."""
    out = set()
    for entry in os.listdir(proc_root):
        if entry.isdigit():
            out.update(mapped_libraries(int(entry), proc_root))
    return sorted(out)


class TlsLibraries:
    """
    The libssl files the uprobes are attached to, by (device, inode).

    @param bpf: the HTTP probe's BCC object (compiled with -DTELEGEN_TLS).
    @param processes: the process table (exec events), or None.
    """

    def __init__(self, bpf, processes=None, proc_root="/proc"):
        self._bpf = bpf
        self._processes = processes
        self._proc_root = proc_root
        self._files = {}             # (st_dev, st_ino) -> {"path", "symbols", "error"}
        self._loop = None
        self._scanning = False
        self._rechecks = set()       # the exec rechecks still to come (cancelled by stop())

    def attach(self, path):
        """Attach the uprobes to the file at path unless its inode already has them; True when newly attached."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino)
        if key in self._files:
            return False
        record = self._files[key] = {"path": path, "symbols": [], "error": None}
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
        return True

    def attach_all(self, paths):
        """attach() each path; how many files were new."""
        return sum(self.attach(p) for p in paths)

    def start(self):
        """The system libraries and every process's now (in the loader's thread), then exec events and a periodic rescan."""
        self.attach_all(system_libraries())
        self.attach_all(all_mapped_libraries(self._proc_root))

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
        """A process exec'd: its libssl now, and again once it has had time to map (or dlopen) it."""
        self.attach_all(mapped_libraries(pid, self._proc_root))

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
            log.failure("reading /proc/*/maps for libssl failed", failure)

        d = threads.deferToThreadPool(self._clock, self._clock.getThreadPool(), all_mapped_libraries, self._proc_root)
        return d.addCallbacks(done, failed)

    def status(self):
        """[{path, symbols, error}] of the attached libraries."""
        return sorted(self._files.values(), key=lambda r: r["path"])
