"""
Reading the stacks of every Python thread, and the goroutine-style text views of them.

Why here: the CPU profile, the goroutine profile and the threadcreate profile all turn frames into
the same (function, file, line, first line) tuples, and the text views need the same thread names.
"""
import linecache
import sys
import threading
from typing import NamedTuple

# Deep recursion would make one stack dominate the profile's size; frames past this depth (the
# outermost ones) are left out.
MAX_DEPTH = 128


def function_name(qualname, module):
    """
    A pprof function name: module plus qualified name, the way Go shows package.Func. A bare
    "<module>" or "<genexpr>" gets a prefix even without a module: pprof shortens a name that is
    all angle brackets to nothing.
    """
    if module or qualname.startswith("<"):
        return f"{module or 'unknown'}.{qualname}"
    return qualname


def frame_tuple(frame):
    """One frame as (function name, file name, current line, first line of the function)."""
    code = frame.f_code
    module = frame.f_globals.get("__name__", "")
    qualname = getattr(code, "co_qualname", code.co_name)
    return (function_name(qualname, module), code.co_filename, frame.f_lineno or 0, code.co_firstlineno)


def stack_of(frame, limit=MAX_DEPTH):
    """The stack from frame outwards, innermost first, as a tuple of frame tuples."""
    out = []
    while frame is not None and len(out) < limit:
        out.append(frame_tuple(frame))
        frame = frame.f_back
    return tuple(out)


def threads_by_ident():
    """Thread ident -> Thread object, for the threads the threading module knows."""
    return {t.ident: t for t in threading.enumerate()}


class ThreadStack(NamedTuple):
    """One thread's stack: Python's ident, its name, the kernel's thread id (or None), the frames."""

    ident: int
    name: str
    native_id: object
    stack: tuple


def current_stacks(exclude=(), only=None):
    """
    A ThreadStack for every Python thread except the idents in exclude (and, when only is given,
    just the idents in it: walking a stack is the costly part, and the CPU sampler holds the GIL,
    delaying the agent, while it walks).
    """
    threads = threads_by_ident()
    out = []
    for ident, frame in sys._current_frames().items():
        if ident in exclude or (only is not None and ident not in only):
            continue
        thread = threads.get(ident)
        name = thread.name if thread else f"thread-{ident}"
        out.append(ThreadStack(ident, name, getattr(thread, "native_id", None), stack_of(frame)))
    return out


def _pending_calls(reactor):
    """
    The reactor's pending delayed calls as text lines, soonest first.

    Only the callable's name is shown, never its arguments: they can hold config values or tokens.
    """
    now = reactor.seconds()
    calls = sorted(reactor.getDelayedCalls(), key=lambda c: c.getTime())
    lines = [f"reactor: {len(calls)} pending delayed calls"]
    for call in calls:
        func = call.func
        name = getattr(func, "__qualname__", None) or type(func).__qualname__
        module = getattr(func, "__module__", "") or ""
        lines.append(f"#\tin {call.getTime() - now:.3f}s\t{module}.{name}")
    return lines


def text_grouped(stacks, reactor):
    """
    The debug=1 view: identical stacks grouped with a count (Go's `goroutine?debug=1`), then the
    reactor's pending delayed calls.
    """
    groups = {}
    for thread in stacks:
        groups.setdefault(thread.stack, []).append(thread.name)
    lines = [f"thread profile: total {len(stacks)}"]
    for stack, names in sorted(groups.items(), key=lambda item: -len(item[1])):
        lines.append(f"{len(names)} @ {', '.join(sorted(names))}")
        lines.extend(f"#\t{fn}\t{filename}:{line}" for fn, filename, line, _first in stack)
        lines.append("")
    lines.extend(_pending_calls(reactor))
    return "\n".join(lines) + "\n"


def text_full(stacks, reactor):
    """
    The debug=2 view: every thread on its own, outermost frame first with source lines, the way a
    Python traceback reads (Go's `goroutine?debug=2` is its panic-style dump), then the reactor's
    pending delayed calls.
    """
    threads = threads_by_ident()
    lines = []
    for ident, name, native_id, stack in stacks:
        daemon = getattr(threads.get(ident), "daemon", None)
        lines.append(f"thread {ident} [{name}] native_id={native_id} daemon={daemon}:")
        for fn, filename, line, _first in reversed(stack):
            lines.append(f'  File "{filename}", line {line}, in {fn}')
            source = linecache.getline(filename, line).strip()
            if source:
                lines.append(f"    {source}")
        lines.append("")
    lines.extend(_pending_calls(reactor))
    return "\n".join(lines) + "\n"
