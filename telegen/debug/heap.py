"""
The heap profile: Python allocations still alive, as traced by tracemalloc.

Why tracemalloc and why only in-use: it is the only allocation tracer in CPython, and it records
live blocks since tracing started (no history of freed ones), so the honest pprof sample types are
inuse_objects and inuse_space. Tracing starts on the first request and stays on: it slows every
allocation and holds a traceback per live block (the measured cost is in docs/debugging.md).
tracemalloc keeps file and line only, so function names are found by parsing the source file.
"""
import ast
import gc
import sys
import tracemalloc

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


class _FunctionIndex:
    """(file, line) -> the qualified name of the innermost def or class around it, per file."""

    def __init__(self):
        self._spans = {}
        self._modules = {getattr(m, "__file__", None): name for name, m in list(sys.modules.items())}

    def _load(self, filename):
        spans = []
        try:
            with open(filename, "rb") as f:
                tree = ast.parse(f.read(), filename)
        except (OSError, SyntaxError, ValueError):
            return spans

        def walk(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    spans.append((child.lineno, child.end_lineno or child.lineno, name))
                    walk(child, name + ("." if isinstance(child, ast.ClassDef) else ".<locals>."))
                else:
                    walk(child, prefix)

        walk(tree, "")
        return spans

    def lookup(self, filename, line):
        """(module.function name, first line): the innermost enclosing def, or <module>."""
        spans = self._spans.get(filename)
        if spans is None:
            spans = self._spans[filename] = self._load(filename)
        best = ("<module>", 1)
        for start, end, name in spans:
            if start <= line <= end and start >= best[1]:
                best = (name, start)
        return function_name(best[0], self._modules.get(filename, "")), best[1]


def _snapshot(gc_first):
    """The live traced blocks, without those of tracemalloc and of this module."""
    if gc_first:
        gc.collect()
    return tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, __file__),
    ])


def heap_profile(gc_first=False):
    """
    A snapshot of the traced live allocations as a ProfileBuilder (inuse_objects, inuse_space),
    grouped by allocation traceback. Tracing must be on.
    """
    snapshot = _snapshot(gc_first)
    builder = ProfileBuilder([("inuse_objects", "count"), ("inuse_space", "bytes")],
                             default_sample_type="inuse_space")
    functions = _FunctionIndex()
    for stat in snapshot.statistics("traceback"):
        stack = []
        for frame in reversed(stat.traceback):  # tracemalloc: oldest first; pprof: innermost first
            name, first = functions.lookup(frame.filename, frame.lineno)
            stack.append((name, frame.filename, frame.lineno, first))
        builder.add(stack, [stat.count, stat.size])
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
    stats = _snapshot(gc_first).statistics("lineno")
    functions = _FunctionIndex()
    total = sum(stat.size for stat in stats)
    lines = [f"heap profile: {sum(stat.count for stat in stats)} objects, {total} bytes live "
             f"(tracemalloc, {tracemalloc.get_traceback_limit()} frames); top {min(limit, len(stats))} lines:"]
    for stat in stats[:limit]:
        frame = stat.traceback[0]
        name, _first = functions.lookup(frame.filename, frame.lineno)
        lines.append(f"{stat.size:>12} B {stat.count:>8} objs  {name}  {frame.filename}:{frame.lineno}")
    return "\n".join(lines) + "\n"
