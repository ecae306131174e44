"""
The goroutine and threadcreate profiles as profile.proto, Python's threads standing in for goroutines.

Why threadcreate is an honest equivalent: Go's shows the stacks that created OS threads; CPython
does not record where a thread was started, but every threading.Thread keeps the function it runs,
so each live thread becomes one sample located at that function, labelled with its name.
"""
import threading

from telegen.debug.pprof import ProfileBuilder
from telegen.debug.stacks import function_name

# Names without angle brackets or parentheses: pprof shortens C++-looking names and would show
# "<main>" as the bare mapping.
MAIN_ENTRY = "python.main_thread"
UNKNOWN_ENTRY = "python.unknown_entry"


def goroutine_profile(stacks):
    """One sample of value 1 per thread, labelled with its name (pprof sums equal stacks)."""
    builder = ProfileBuilder([("goroutine", "count")], period_type=("goroutine", "count"), period=1)
    for thread in stacks:
        builder.add(thread.stack, [1], {"thread": thread.name})
    return builder


def _entry_frame(thread):
    """The function a thread runs, as a frame tuple (its definition line as the line)."""
    target = getattr(thread, "_target", None) or getattr(type(thread), "run", None)
    code = getattr(target, "__code__", None)
    if code is None:
        return (UNKNOWN_ENTRY, "", 0, 0)
    qualname = getattr(target, "__qualname__", code.co_name)
    return (function_name(qualname, getattr(target, "__module__", "")), code.co_filename,
            code.co_firstlineno, code.co_firstlineno)


def threadcreate_profile(threads=None):
    """
    One sample per live thread: located at its entry function (the main thread at MAIN_ENTRY),
    labelled with its name and daemon flag.
    """
    builder = ProfileBuilder([("threadcreate", "count")], period_type=("threadcreate", "count"), period=1)
    for thread in threads if threads is not None else threading.enumerate():
        if thread is threading.main_thread():
            frame = (MAIN_ENTRY, "", 0, 0)
        else:
            frame = _entry_frame(thread)
        builder.add([frame], [1], {"thread": thread.name, "daemon": str(thread.daemon).lower()})
    return builder
