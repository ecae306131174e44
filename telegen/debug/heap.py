"""
The heap profile: Python allocations still alive, as traced by tracemalloc.

Why tracemalloc and why only in-use: it is the only allocation tracer in CPython, and it records
live blocks since tracing started (no history of freed ones), so the honest pprof sample types are
inuse_objects and inuse_space. Tracing starts on the first request and stays on: it slows every
allocation and holds a traceback per live block (the measured cost is in docs/debugging.md).
tracemalloc keeps file and line only, so function names are read from the source file.
"""
import bisect
import gc
import re
import sys
import tracemalloc
from itertools import groupby
from operator import itemgetter

from telegen.debug.pprof import ProfileBuilder
from telegen.debug.stacks import function_name

# Frames kept per allocation: deep enough to see the caller in the agent behind a library call.
TRACE_FRAMES = 16


def ensure_tracing(frames=TRACE_FRAMES):
    """Start tracemalloc unless it runs; True when this call started it."""
    if tracemalloc.is_tracing():
        return False
    tracemalloc.start(frames)
    return True


_HEADER = re.compile(r"^([ \t]*)(?:async[ \t]+def|def|class)[ \t]+([A-Za-z_]\w*)", re.MULTILINE)


def _read_source(filename):
    """
    (indentation of every line as bytes, def/class lines) of a source file.

    Read here, not through linecache: linecache would keep every source file alive and show up in
    the very heap profile being taken. Only the small summary is kept.
    """
    try:
        with open(filename, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return b"", []
    indents = bytes(min(255, len(line) - len(line.lstrip(" \t"))) for line in text.split("\n"))
    headers = []
    number, position = 1, 0
    for match in _HEADER.finditer(text):
        number += text.count("\n", position, match.start())
        position = match.start()
        headers.append((number, len(match.group(1)), match.group(2), match.group(0).lstrip().startswith("class")))
    return indents, headers


class _FunctionIndex:
    """
    (file, line) -> the qualified name of the def or class around it, from the source's def and
    class lines and their indentation.

    Why not ast: parsing every file on a stack costs seconds with tracemalloc on (it traces the
    parser's own allocations). The nearest def or class line above with less indentation encloses
    the line; its own parent is found the same way.
    """

    # Shared by every index: the source of a running module does not change under it.
    _sources: dict = {}

    def __init__(self):
        self._found = {}
        self._modules = {getattr(m, "__file__", None): name for name, m in list(sys.modules.items())}

    def lookup(self, filename, line):
        """(module.function name, first line): the innermost enclosing def, or <module>."""
        found = self._found.get((filename, line))
        if found is None:
            found = self._found[(filename, line)] = self._enclosing(filename, line)
        return found

    def _enclosing(self, filename, line):
        source = self._sources.get(filename)
        if source is None:
            source = self._sources[filename] = _read_source(filename)
        indents, headers = source
        limit = indents[line - 1] if 0 < line <= len(indents) else 0
        chain = []
        for number, indent, name, is_class in reversed(headers[:bisect.bisect_left(headers, (line,))]):
            if indent < limit:
                chain.append((name, is_class, number))
                limit = indent
                if indent == 0:
                    break
        if not chain:
            return function_name("<module>", self._modules.get(filename, "")), 1
        chain.reverse()
        qualname = chain[0][0]
        for (_outer, outer_is_class, _n), (name, _c, _m) in zip(chain, chain[1:]):
            qualname += ("." if outer_is_class else ".<locals>.") + name
        return function_name(qualname, self._modules.get(filename, "")), chain[-1][2]


# Blocks allocated by the profiler itself, recognised by the innermost frame's file.
_OWN_FILES = {tracemalloc.__file__, __file__}


def _live_blocks(gc_first):
    """
    [(traceback innermost first, blocks, bytes)] of the live traced blocks, one entry per distinct
    traceback, without the profiler's own.

    Why the raw traces (Snapshot.traces._traces, tuples of (domain, size, traceback, frames)) and
    sort + groupby instead of Snapshot.statistics(): statistics() builds Python objects per block,
    every one of them traced too, which took 21 s for 1.4 M blocks here; sorting is fast because
    equal tracebacks are the same tuple object. Measured in bench/debug/overhead.py.
    """
    if gc_first:
        gc.collect()
    raw = tracemalloc.take_snapshot().traces._traces
    out = []
    for traceback, group in groupby(sorted(raw, key=itemgetter(2)), key=itemgetter(2)):
        if not traceback or traceback[0][0] in _OWN_FILES:
            continue
        sizes = list(map(itemgetter(1), group))
        out.append((traceback, len(sizes), sum(sizes)))
    return out


def heap_profile(gc_first=False):
    """
    The traced live allocations as a ProfileBuilder (inuse_objects, inuse_space), one sample per
    allocation traceback. Tracing must be on.
    """
    builder = ProfileBuilder([("inuse_objects", "count"), ("inuse_space", "bytes")],
                             default_sample_type="inuse_space")
    functions = _FunctionIndex()
    for traceback, blocks, size in _live_blocks(gc_first):
        stack = []
        for filename, line in traceback:
            name, first = functions.lookup(filename, line)
            stack.append((name, filename, line, first))
        builder.add(stack, [blocks, size])
    return builder


def tracemalloc_totals():
    """The /debug/vars tracemalloc block: totals when tracing, else just {"tracing": false}."""
    if not tracemalloc.is_tracing():
        return {"tracing": False}
    current, peak = tracemalloc.get_traced_memory()
    return {
        "tracing": True,
        "frames": tracemalloc.get_traceback_limit(),
        "traced_current_bytes": current,
        "traced_peak_bytes": peak,
        "tracemalloc_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
    }


def top_lines(gc_first=False, limit=100):
    """The debug=1 view: the source lines holding the most live memory, as text."""
    by_line = {}
    for traceback, blocks, size in _live_blocks(gc_first):
        entry = by_line.setdefault(traceback[0], [0, 0])
        entry[0] += blocks
        entry[1] += size
    ranked = sorted(by_line.items(), key=lambda item: -item[1][1])
    functions = _FunctionIndex()
    objects = sum(blocks for blocks, _size in by_line.values())
    live = sum(size for _blocks, size in by_line.values())
    lines = [f"heap profile: {objects} objects, {live} bytes live (tracemalloc, "
             f"{tracemalloc.get_traceback_limit()} frames); top {min(limit, len(ranked))} lines:"]
    for (filename, line), (blocks, size) in ranked[:limit]:
        name, _first = functions.lookup(filename, line)
        lines.append(f"{size:>12} B {blocks:>8} objs  {name}  {filename}:{line}")
    return "\n".join(lines) + "\n"
