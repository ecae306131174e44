"""
C++ (Itanium ABI, `_Z...`) and Rust (`_ZN...17h<hash>E` legacy, `_R...` v0) symbol names made
readable, by binutils' c++filt kept running as a co-process of the profiler's worker.

Why c++filt: an Itanium demangler is thousands of lines (templates, substitutions, lambdas);
binutils ships a complete one that also knows Rust's schemes. It answers line by line (it
flushes after each line on a pipe), so one process serves every name; each name is demangled
once, since the symbolizer caches the frames that carry it. Without c++filt names stay mangled.
"""
import re
import shutil
import subprocess
import sys

MANGLED_PREFIXES = ("_Z", "_R")
# Rust's legacy mangling ends in a hash of the crate (`::h0123456789abcdef`), noise in a profile.
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")
# Names demangled, kept for the next process that maps the same library (frames are cached per
# process); beyond this many it starts over.
CACHE_ENTRIES = 50_000


def looks_mangled(name):
    return name.startswith(MANGLED_PREFIXES)


class Demangler:
    def __init__(self, command="c++filt"):
        self._command = shutil.which(command)
        self._proc = None
        self._cache = {}
        if self._command is None:
            print(f"{command} not found: C++ and Rust function names stay mangled", file=sys.stderr)

    def demangle(self, name):
        """The readable form of a mangled name; the name itself when c++filt is missing or cannot."""
        readable = self._cache.get(name)
        if readable is None:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            readable = self._cache[name] = self._demangle(name)
        return readable

    def _demangle(self, name):
        if self._command is None or any(c.isspace() for c in name):
            return name
        try:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen([self._command], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self._proc.stdin.write(name.encode("utf-8", "surrogateescape") + b"\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except OSError as e:
            print(f"c++filt failed ({e}): names stay mangled", file=sys.stderr)
            self._command = None
            return name
        readable = line.decode("utf-8", "replace").rstrip("\n")
        return _RUST_HASH.sub("", readable) if readable else name

    def close(self):
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait()
            self._proc = None
