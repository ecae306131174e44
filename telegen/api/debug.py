"""
The /debug routes: Python's equivalents of Go's net/http/pprof and expvar.

Why a separate Klein app: the main app mounts it under /debug only when
self_telemetry.debug.enabled, behind the same gate (auth, rate limit, CORS). The main app renders
a mounted resource without its own error handlers, so this app registers the main app's handlers:
every error here is the standard error JSON too.
"""
import html
import json
import sys
import threading
import tracemalloc

from klein import Klein
from twisted.internet.threads import deferToThreadPool

from telegen.api.app import add_error_handling
from telegen.api.errors import ApiError
from telegen.debug import expvar, stacks, threads
from telegen.debug import heap as tracemalloc_heap
from telegen.debug.cpu import CpuProfiler, ProfilerBusy

MAX_PROFILE_SECONDS = 300
DEFAULT_PROFILE_SECONDS = 30
MAX_TRACE_FRAMES = 64

# (name, link, description): the index, in Go's order, with what each means here.
PROFILES = (
    ("block", "block", "Not available: CPython does not record where threads wait (answers 501 with the reason)."),
    ("cmdline", "cmdline", "The command line of the agent, arguments separated by NUL bytes."),
    ("goroutine", "goroutine?debug=1",
     "Stack traces of all Python threads and the reactor's pending delayed calls. debug=1 groups equal "
     "stacks, debug=2 lists every thread; no debug: profile.proto."),
    ("heap", "heap",
     "Live Python allocations traced by tracemalloc (inuse_objects, inuse_space). Tracing starts on the first "
     "request (frames=1..64 stack depth, default 16) and stays on: it slows allocation several times; gc=1 "
     "collects first; debug=1 gives the top lines as text."),
    ("mutex", "mutex", "Not available: CPython does not record lock contention (answers 501 with the reason)."),
    ("profile", "profile?seconds=30",
     "CPU profile of all Python threads: each thread's measured CPU time, split over the stacks where 100 Hz "
     "ticks found it running. seconds=1..300 (default 30)."),
    ("threadcreate", "threadcreate", "Every live thread, located at the function it runs, labelled with its name."),
    ("trace", "trace", "Not available: there is no Python equivalent of Go's execution tracer (answers 501)."),
)

_NOT_AVAILABLE = {
    "block": ("CPython does not record where or how long threads block; use goroutine?debug=2 to see where "
              "every thread waits now, or profile to see where CPU goes"),
    "mutex": ("CPython does not instrument lock contention (threading.Lock has no wait statistics); "
              "use goroutine?debug=2 to see which threads wait on a lock now"),
    "trace": ("Go's execution trace format records runtime scheduler events that CPython does not have; "
              "use profile for CPU and goroutine for thread states"),
}


def int_arg(request, name, default, lowest, highest):
    """A query argument as an int within [lowest, highest]; 400 invalid_request otherwise."""
    raw = request.args.get(name.encode())
    if not raw or raw[0] == b"":
        return default
    text = raw[0].decode("utf-8", "replace")
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer", {name: text[:64]}) from None
    if not lowest <= value <= highest:
        raise ApiError(400, f"{name} must be between {lowest} and {highest}", {name: value})
    return value


def _profile_answer(request, data, name):
    """Headers Go's pprof handler sets on a binary profile."""
    request.setHeader(b"content-type", b"application/octet-stream")
    request.setHeader(b"content-disposition", f'attachment; filename="{name}"'.encode())
    request.setHeader(b"x-content-type-options", b"nosniff")
    return data


def _text_answer(request, text):
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return text.encode("utf-8")


class DebugApi:
    """
    The debug routes, relative to /debug.

    @ivar agent: the root service (config, metrics, status()).
    """

    app = Klein()

    def __init__(self, agent, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.agent = agent
        self.reactor = reactor
        self.cpu = CpuProfiler(reactor)

    def _in_thread(self, f, *args):
        """Run blocking work (snapshots, encoding) off the reactor thread."""
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    @app.route("/pprof/", methods=["GET"])
    def index(self, request):
        """Go's index page: each profile with its count (threads, where it is one) and what it means here."""
        rows = []
        counts = {"goroutine": len(sys._current_frames()), "threadcreate": threading.active_count()}
        for name, link, description in PROFILES:
            count = counts.get(name)
            rows.append(f"<tr><td align=right>{'' if count is None else count}</td>"
                        f"<td><a href=\"{html.escape(link)}\">{name}</a></td><td>{html.escape(description)}</td></tr>")
        body = (
            "<html><head><title>/debug/pprof/</title></head><body>\n"
            "<h1>/debug/pprof/</h1>\n<p>Python equivalents of Go's profiles; read the binary ones with "
            "<code>go tool pprof</code>. Also: <a href=\"../vars\">/debug/vars</a>.</p>\n"
            "<table><tr><th>Count</th><th>Profile</th><th>What</th></tr>\n"
            + "\n".join(rows) + "\n</table></body></html>\n")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return body.encode("utf-8")

    @app.route("/pprof/cmdline", methods=["GET"])
    def cmdline(self, request):
        """The command line, as Go's cmdline handler gives it."""
        return _text_answer(request, "\x00".join(sys.argv))

    @app.route("/pprof/profile", methods=["GET"])
    def profile(self, request):
        """The CPU profile; the answer comes when sampling ends, the reactor serving meanwhile."""
        seconds = int_arg(request, "seconds", DEFAULT_PROFILE_SECONDS, 1, MAX_PROFILE_SECONDS)
        stop = threading.Event()
        try:
            d = self.cpu.profile(seconds, stop)
        except ProfilerBusy as busy:
            retry = max(1, int(busy.remaining + 0.999))
            raise ApiError(503, str(busy), {"retry_after_seconds": retry},
                           headers={"Retry-After": str(retry)}) from None
        # A client that hangs up ends the sampling early instead of leaving it running.
        request.notifyFinish().addErrback(lambda _: stop.set())
        return d.addCallback(lambda data: _profile_answer(request, data, "profile"))

    @app.route("/pprof/heap", methods=["GET"])
    def heap(self, request):
        """The tracemalloc heap; snapshot and encoding run in a pool thread (they take seconds on big heaps)."""
        debug = int_arg(request, "debug", 0, 0, 2)
        gc_first = int_arg(request, "gc", 0, 0, 1) == 1
        frames = int_arg(request, "frames", tracemalloc_heap.TRACE_FRAMES, 1, MAX_TRACE_FRAMES)
        started = tracemalloc_heap.ensure_tracing(frames)
        # Tells the caller the first answer only holds what was allocated since this request, and
        # how deep the stacks are (frames only applies to the request that starts tracing).
        request.setHeader(b"x-tracemalloc-started", b"true" if started else b"false")
        request.setHeader(b"x-tracemalloc-frames", str(tracemalloc.get_traceback_limit()).encode())
        if debug:
            d = self._in_thread(tracemalloc_heap.top_lines, gc_first)
            return d.addCallback(lambda text: _text_answer(request, text))
        d = self._in_thread(lambda: tracemalloc_heap.heap_profile(gc_first).gzipped())
        return d.addCallback(lambda data: _profile_answer(request, data, "heap"))

    @app.route("/pprof/goroutine", methods=["GET"])
    def goroutine(self, request):
        """Every thread's stack: text with debug=1|2, profile.proto otherwise."""
        debug = int_arg(request, "debug", 0, 0, 2)
        current = stacks.current_stacks()
        if debug == 1:
            return _text_answer(request, stacks.text_grouped(current, self.reactor))
        if debug == 2:
            return _text_answer(request, stacks.text_full(current, self.reactor))
        return _profile_answer(request, threads.goroutine_profile(current).gzipped(), "goroutine")

    @app.route("/pprof/threadcreate", methods=["GET"])
    def threadcreate(self, request):
        """Live threads at their entry functions (see telegen.debug.threads for why that is honest)."""
        return _profile_answer(request, threads.threadcreate_profile().gzipped(), "threadcreate")

    @app.route("/pprof/block", methods=["GET"])
    @app.route("/pprof/mutex", methods=["GET"])
    @app.route("/pprof/trace", methods=["GET"])
    def not_available(self, request):
        """The profiles CPython cannot produce: the error JSON says why and what to use instead."""
        name = request.path.rstrip(b"/").rsplit(b"/", 1)[-1].decode()
        raise ApiError(501, f"no Python equivalent of Go's {name} profile",
                       {"profile": name, "reason": _NOT_AVAILABLE[name]})

    @app.route("/vars", methods=["GET"])
    def debug_vars(self, request):
        """expvar's equivalent: command line, Python memory statistics, the agent's counters."""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(expvar.debug_vars(self.agent.metrics)).encode()


# Errors here render exactly as in the main app (Klein applies only the serving app's handlers).
add_error_handling(DebugApi.app)
