"""
Turns sampled addresses into frames (function, module), off the reactor thread, with caches.

- Kernel addresses: /proc/kallsyms, read once (kptr_restrict=0 gives real addresses).
- User addresses: the process's executable mappings, recorded while it ran (remember() is
  called on its first sample), then the ELF symbols of the mapped file, cached by file identity
  (device, inode), so a process that exited before the drain still resolves and a library
  mapped by a hundred processes is read once.
- JIT code: /tmp/perf-PID.map (the perf map convention of V8, the JVM agents, CPython -X perf).
- Anything else keeps its module and offset ("libfoo.so+0x1a2b", "[unknown] 0x7f..."), never dropped.
- C++ and Rust names are demangled (telegen.profiling.demangle) once, when their frame is resolved.

Frame pointers are all the kernel unwinds with here: see docs/profiling.md for the limits.
"""
import bisect
import os
from collections import OrderedDict

from telegen.profiling.demangle import Demangler, looks_mangled
from telegen.profiling.elf import ElfError, ElfSymbols

KERNEL_MODULE = "[kernel.kallsyms]"
UNKNOWN_MODULE = "[unknown]"
_TEXT_TYPES = frozenset("tTwW")


class KernelSymbols:
    """Sorted text symbols of /proc/kallsyms."""

    def __init__(self, path="/proc/kallsyms"):
        entries = []
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in _TEXT_TYPES:
                    address = int(parts[0], 16)
                    if address:
                        entries.append((address, parts[2]))
        entries.sort()
        self._starts = [a for a, _ in entries]
        self._names = [n for _, n in entries]

    def function(self, address):
        i = bisect.bisect_right(self._starts, address) - 1
        return self._names[i] if i >= 0 else None


class Mapping:
    """One executable mapping of a process: [start, end) from `offset` of a file."""

    __slots__ = ("start", "end", "offset", "device", "inode", "path")

    def __init__(self, start, end, offset, device, inode, path):
        self.start, self.end, self.offset, self.device, self.inode, self.path = start, end, offset, device, inode, path


def read_maps(pid, proc="/proc"):
    """The raw text of /proc/PID/maps, or None when the process is gone."""
    try:
        with open(f"{proc}/{pid}/maps", "rb") as f:
            return f.read()
    except OSError:
        return None


def parse_maps(text):
    """Executable mappings (sorted by start) of a /proc/PID/maps text (bytes)."""
    out = []
    for line in text.decode("utf-8", "replace").splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or "x" not in parts[1]:
            continue
        start, _, end = parts[0].partition("-")
        major, _, minor = parts[3].partition(":")
        out.append(Mapping(int(start, 16), int(end, 16), int(parts[2], 16),
                           os.makedev(int(major, 16), int(minor, 16)), int(parts[4]),
                           parts[5].strip() if len(parts) > 5 else ""))
    out.sort(key=lambda m: m.start)
    return out


class PerfMap:
    """The symbols a JIT wrote to /tmp/perf-PID.map: "START SIZE name" in hex."""

    def __init__(self, path):
        entries = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(" ", 2)
                if len(parts) == 3:
                    try:
                        entries.append((int(parts[0], 16), int(parts[1], 16), parts[2]))
                    except ValueError:
                        continue
        entries.sort()
        self._starts = [e[0] for e in entries]
        self._entries = entries

    def function(self, address):
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        start, size, name = self._entries[i]
        return name if address < start + size else None


class _Lru(OrderedDict):
    """A small LRU of loaded symbol tables (a table can be megabytes)."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def remember(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)
        return value


class Symbolizer:
    """
    Frames for the stacks of a window. remember_text(pid, ...) records a process's mappings;
    stack() resolves. One caller at a time (the profiler's worker process).

    Resolved frames are cached per process (until its mappings change) and for the kernel, at
    most `cache_entries` in all: beyond that the caches of the processes sampled longest ago are
    dropped whole (cheaper than an LRU per lookup), and `evictions` counts the frames dropped.
    """

    def __init__(self, proc="/proc", kallsyms="/proc/kallsyms", perf_map_dir="/tmp", elf_cache=256, forget_after=4,
                 cache_entries=200_000, demangler=None):
        self._proc = proc
        self._kallsyms = kallsyms
        self._perf_map_dir = perf_map_dir
        self._kernel = None
        self._maps = {}                      # pid -> ([start], [Mapping]) sorted by start
        self._maps_text = {}                 # pid -> the /proc/PID/maps text they were parsed from
        self._layouts = {}                   # pid -> its mappings' identity, to know when they changed
        self._frames = {}                    # pid -> {(address, is_return): frame} resolved from ELF files
        self._kernel_frames = {}             # (address, is_return) -> frame
        self._perf_maps_now = {}             # pid -> PerfMap or None, this window
        self._last_window = {}               # pid -> window number it was last sampled in
        self._elves = _Lru(elf_cache)        # (device, inode) -> ElfSymbols or None (unreadable)
        self._perf_maps = _Lru(64)           # (path, mtime, size) -> PerfMap
        self._window = 0
        self._forget_after = forget_after
        self._cache_entries = cache_entries
        self._cached = 0                     # frames in _frames and _kernel_frames
        self.evictions = 0
        self._demangler = demangler or Demangler()

    # -- process mappings ------------------------------------------------------------------

    def remember(self, pid):
        """Record pid's mappings now, from /proc (a pid sampled again: dlopen, exec)."""
        text = read_maps(pid, self._proc)
        if text is not None:
            self.remember_text(pid, text)

    def remember_text(self, pid, text):
        """
        Record pid's mappings from its /proc/PID/maps text (read by the agent at its first sample,
        while it ran, or by refresh()). Most processes' maps do not change between windows:
        an identical text is not parsed again.
        """
        if self._maps_text.get(pid) == text:
            self._last_window[pid] = self._window
            return
        self._maps_text[pid] = text
        self._remember_maps(pid, parse_maps(text))

    def _remember_maps(self, pid, maps):
        layout = tuple((m.start, m.end, m.offset, m.device, m.inode) for m in maps)
        if self._layouts.get(pid) != layout:      # exec, dlopen, munmap: cached frames may be wrong
            self._layouts[pid] = layout
            self._drop_frames(pid)
        self._maps[pid] = ([m.start for m in maps], maps)
        self._last_window[pid] = self._window

    def refresh(self, pids):
        """Before resolving a window: re-read the mappings of pids still alive (dlopen, exec)."""
        self._window += 1
        self._perf_maps_now = {}
        for pid in pids:
            self.remember(pid)
            self._last_window.setdefault(pid, self._window)
        stale = [pid for pid, seen in self._last_window.items() if self._window - seen > self._forget_after]
        for pid in stale:
            for table in (self._maps, self._maps_text, self._layouts):
                table.pop(pid, None)
            self._drop_frames(pid)
            del self._last_window[pid]

    # -- the cache bound -------------------------------------------------------------------

    def _drop_frames(self, pid):
        self._cached -= len(self._frames.pop(pid, ()))

    def _make_room(self):
        """
        Over cache_entries: drop the frame caches of the processes sampled longest ago until a
        tenth of the bound is free (so this runs rarely), the kernel's last, counting what went.
        """
        target = self._cache_entries * 9 // 10
        before = self._cached
        for pid in sorted(self._frames, key=lambda p: self._last_window.get(p, 0)):
            if self._cached <= target:
                break
            self._drop_frames(pid)
        if self._cached > target:
            self._cached -= len(self._kernel_frames)
            self._kernel_frames = {}
        self.evictions += before - self._cached

    def take_evictions(self):
        """Frames evicted since the last call."""
        n, self.evictions = self.evictions, 0
        return n

    def cached(self):
        return self._cached

    # -- resolving -------------------------------------------------------------------------

    def stack(self, pid, user, kernel):
        """((function, module), ...) innermost first: the kernel part, then the user part."""
        return (tuple([self.kernel_frame(a, i > 0) for i, a in enumerate(kernel)])
                + tuple([self.user_frame(pid, a, i > 0) for i, a in enumerate(user)]))

    def kernel_frame(self, address, is_return):
        frame = self._kernel_frames.get((address, is_return))
        if frame is None:
            frame = self._resolve_kernel(address, is_return)
            if self._cached >= self._cache_entries:
                self._make_room()
            self._kernel_frames[(address, is_return)] = frame
            self._cached += 1
        return frame

    def _resolve_kernel(self, address, is_return):
        if self._kernel is None:
            try:
                self._kernel = KernelSymbols(self._kallsyms)
            except OSError:
                self._kernel = False
        name = self._kernel.function(address - is_return) if self._kernel else None
        return (name or f"[kernel] 0x{address:x}", KERNEL_MODULE)

    def user_frame(self, pid, address, is_return):
        """
        A return address is looked up one byte back: the call, not what follows it. Frames are
        cached per process until its mappings change, except in a process with a perf map, whose
        JIT and unknown frames are looked up every window (a JIT adds symbols as it goes).
        """
        frames = self._frames.get(pid)
        if frames is None:
            frames = self._frames[pid] = {}
        frame = frames.get((address, is_return))
        if frame is not None:
            return frame
        frame, cacheable = self._resolve_user(pid, address, is_return)
        if cacheable:
            if self._cached >= self._cache_entries:
                self._make_room()
                frames = self._frames.setdefault(pid, {})
            frames[(address, is_return)] = frame
            self._cached += 1
        return frame

    def _resolve_user(self, pid, address, is_return):
        """(frame, whether it may be cached)."""
        lookup = address - 1 if is_return else address
        mapping = self._mapping(pid, address)
        if mapping is None or not mapping.path.startswith("/"):
            # JIT code lives in anonymous mappings (or ones the snapshot missed).
            name = self._perf_map_function(pid, lookup)
            if name:
                return (name, self._perf_map_path(pid)), False
            # Unknown stays unknown until the mappings change, unless a JIT may name it later.
            unknown = (f"{UNKNOWN_MODULE} 0x{address:x}", mapping.path if mapping and mapping.path else UNKNOWN_MODULE)
            return unknown, self._perf_maps_now.get(pid) is None
        file_offset = lookup - mapping.start + mapping.offset
        elf = self._elf(pid, mapping)
        vaddr = elf.vaddr(file_offset) if elf is not None else None
        name = elf.function(vaddr) if vaddr is not None else None
        if name is None:
            return (f"{os.path.basename(mapping.path)}+0x{file_offset:x}", mapping.path), True
        return (self._demangler.demangle(name) if looks_mangled(name) else name, mapping.path), True

    def _mapping(self, pid, address):
        starts, maps = self._maps.get(pid, ((), ()))
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < maps[i].end:
            return maps[i]
        return None

    def _elf(self, pid, mapping):
        """The file's symbols by identity; opened through the process's root while it lives, else by path."""
        if not mapping.path.startswith("/"):
            return None
        key = (mapping.device, mapping.inode)
        if key in self._elves:
            self._elves.move_to_end(key)
            return self._elves[key]
        elf = None
        for path in (f"{self._proc}/{pid}/map_files/{mapping.start:x}-{mapping.end:x}",
                     f"{self._proc}/{pid}/root{mapping.path}", mapping.path):
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) != key:
                    continue               # replaced on disk since it was mapped: not the same file
                elf = ElfSymbols.from_path(path)
                break
            except (OSError, ElfError):
                continue
        return self._elves.remember(key, elf)

    def _perf_map_path(self, pid):
        return f"{self._perf_map_dir}/perf-{pid}.map"

    def _perf_map_function(self, pid, address):
        if pid not in self._perf_maps_now:
            self._perf_maps_now[pid] = self._perf_map(pid)
        table = self._perf_maps_now[pid]
        return table.function(address) if table is not None else None

    def _perf_map(self, pid):
        """The process's perf map as it is now (checked once per window), or None."""
        path = self._perf_map_path(pid)
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (path, st.st_mtime_ns, st.st_size)
        table = self._perf_maps.get(key)
        if table is None:
            try:
                table = self._perf_maps.remember(key, PerfMap(path))
            except OSError:
                return None
        return table
