"""
A long-lived Python child process for CPU-heavy work, so that the agent's reactor (and the GIL
it shares with the agent's threads) never waits for it.

Why a process and not a thread: on a saturated host a thread doing seconds of Python work holds
the GIL while the reactor waits for it, and the API stalls (a /metrics scrape took 15 s while the
CPU profiler symbolized a 60 s window in a thread). A child has its own interpreter; the agent
only writes a request to a pipe and reads the answer.

The protocol is framed pickles over the child's stdin and stdout (both ends are this code, in
processes the agent started): a request is (call id or None, operation, args); an answer is
(call id, ok, result or error text). Requests with no id get no answer. The child's stderr is
logged by the agent. Extra file descriptors (BPF maps, for the profiler) are passed as the
child's fds 3, 4, ... in the order given.

Worker (agent side) restarts a child that died or did not answer within `timeout`, fails the calls
it had in flight with WorkerCrashed, and counts the restart; serve() is the child's loop.
"""
import os
import pickle
import signal
import struct
import sys
import traceback

from twisted.internet import defer, protocol
from twisted.logger import Logger

log = Logger()
_FRAME = struct.Struct("<I")
# A child that keeps dying is restarted after RESTART_DELAY, doubled up to RESTART_DELAY_MAX:
# a crash loop must not burn the CPU the worker was meant to keep off the reactor.
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 60.0
STOP_GRACE = 5.0
# A worker runs this many nice levels below the agent: on a saturated host the reactor (the API)
# gets the CPU first and a window simply takes longer.
NICE_INCREMENT = 5


class WorkerCrashed(Exception):
    """The child exited or was killed while a call was in flight."""


class WorkerError(Exception):
    """The child's handler raised: the message is its exception and traceback."""


def frame(obj):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


class _Protocol(protocol.ProcessProtocol):
    def __init__(self, worker):
        self.worker = worker
        self.chunks = []
        self.size = 0
        self.needed = None
        self.stderr = b""

    def childDataReceived(self, fd, data):  # noqa: N802 (Twisted hook)
        if fd == 2:
            self.stderr += data
            *lines, self.stderr = self.stderr.split(b"\n")
            for line in lines:
                log.warn("{worker} worker: {line}", worker=self.worker.name, line=line.decode("utf-8", "replace"))
            return
        self.chunks.append(data)
        self.size += len(data)
        # Answers can be megabytes: join only once a whole frame is there.
        while True:
            if self.needed is None and self.size >= _FRAME.size:
                buf = b"".join(self.chunks)
                self.needed = _FRAME.size + _FRAME.unpack_from(buf)[0]
                self.chunks = [buf]
            if self.needed is None or self.size < self.needed:
                return
            buf = b"".join(self.chunks)
            message, rest = buf[_FRAME.size:self.needed], buf[self.needed:]
            self.chunks, self.size, self.needed = ([rest] if rest else []), len(rest), None
            self.worker._answer(pickle.loads(message))

    def processEnded(self, reason):  # noqa: N802 (Twisted hook)
        self.worker._ended(self, reason)


class Worker:
    """
    The agent's handle on one child: call() returns a Deferred of the handler's result.

    @param argv: the child's command line (a module's main() that calls serve()).
    @param fds: file descriptors of this process to hand to the child as its fds 3, 4, ...
    @param on_start: called with the child's pid each time one starts (the profiler excludes it).
    @param on_crash: called with a reason ("exited", "timeout") each time one dies unasked.
    @param timeout: seconds a call may take before the child is killed and restarted.
    """

    def __init__(self, reactor, name, argv, fds=(), env=None, timeout=300.0, on_start=None, on_crash=None):
        self.reactor = reactor
        self.name = name
        self._argv = argv
        self._fds = list(fds)
        self._env = env
        self.timeout = timeout
        self._on_start = on_start
        self._on_crash = on_crash
        self._proto = None
        self._pending = {}          # call id -> (Deferred, timeout DelayedCall)
        self._next_id = 0
        self._stopping = None
        self._restart = None
        self._delay = RESTART_DELAY
        self.restarts = 0
        self.pid = None

    def start(self):
        child_fds = {0: "w", 1: "r", 2: "r"}
        child_fds.update({3 + i: fd for i, fd in enumerate(self._fds)})
        self._proto = _Protocol(self)
        env = dict(os.environ if self._env is None else self._env)
        env["PYTHONPATH"] = os.pathsep.join([_package_root()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        transport = self.reactor.spawnProcess(self._proto, self._argv[0], self._argv, env=env, childFDs=child_fds)
        self.pid = transport.pid
        if self._on_start is not None:
            self._on_start(self.pid)

    @property
    def running(self):
        return self._proto is not None

    def send(self, op, *args):
        """A request that gets no answer (lost if no child runs)."""
        if self._proto is not None:
            self._proto.transport.write(frame((None, op, args)))

    def call(self, op, *args):
        if self._proto is None:
            return defer.fail(WorkerCrashed(f"{self.name} worker is not running"))
        self._next_id += 1
        call_id = self._next_id
        d = defer.Deferred()
        self._pending[call_id] = (d, self.reactor.callLater(self.timeout, self._timed_out, self._proto))
        self._proto.transport.write(frame((call_id, op, args)))
        return d

    def _answer(self, message):
        call_id, ok, result = message
        d, timer = self._pending.pop(call_id, (None, None))
        if d is None:
            return
        timer.cancel()
        self._delay = RESTART_DELAY        # it works: the next crash restarts quickly again
        if ok:
            d.callback(result)
        else:
            d.errback(WorkerError(result))

    def _timed_out(self, proto):
        log.error("{worker} worker did not answer within {timeout} s: killing it", worker=self.name, timeout=self.timeout)
        self._kill(proto, "timeout")

    def _kill(self, proto, reason):
        proto.crash_reason = reason
        try:
            proto.transport.signalProcess("KILL")
        except Exception:  # already gone: processEnded follows
            pass

    def _ended(self, proto, reason):
        if proto is not self._proto:
            return
        self._proto, self.pid = None, None
        stopping, self._stopping = self._stopping, None
        if stopping is None:
            # Counted before the calls fail, so their errbacks see the restart.
            why = getattr(proto, "crash_reason", "exited")
            self.restarts += 1
            log.error("{worker} worker died ({why}: {reason}); restarting in {delay} s", worker=self.name, why=why,
                      reason=reason.getErrorMessage(), delay=self._delay)
            if self._on_crash is not None:
                self._on_crash(why)
            self._restart = self.reactor.callLater(self._delay, self._restarted)
            self._delay = min(self._delay * 2, RESTART_DELAY_MAX)
        pending, self._pending = self._pending, {}
        for d, timer in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(WorkerCrashed(f"{self.name} worker ended: {reason.getErrorMessage()}"))
        if stopping is not None:
            stopping.callback(None)

    def _restarted(self):
        self._restart = None
        self.start()

    def stop(self):
        """Close the child's stdin (it exits when it reads EOF), kill it after STOP_GRACE seconds."""
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        if self._proto is None:
            return defer.succeed(None)
        self._stopping = defer.Deferred()
        proto = self._proto
        proto.transport.closeStdin()
        killer = self.reactor.callLater(STOP_GRACE, self._kill, proto, "stop")
        return self._stopping.addBoth(lambda result: killer.cancel() if killer.active() else None)


def _package_root():
    """The directory that holds the telegen package, so that the child imports the same code."""
    import telegen
    return os.path.dirname(os.path.dirname(os.path.abspath(telegen.__file__)))


# -- the child's side ------------------------------------------------------------------------


def _read_exact(fd, n):
    parts = []
    while n:
        data = os.read(fd, n)
        if not data:
            return None
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def serve(handlers):
    """
    The child's loop: answer requests on stdin until EOF. Handlers run one at a time, in order.
    stdout carries frames only: anything printed goes to stderr (logged by the agent).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the agent's ^C is the agent's to handle
    os.nice(NICE_INCREMENT)
    out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    while True:
        header = _read_exact(0, _FRAME.size)
        if header is None:
            return
        body = _read_exact(0, _FRAME.unpack(header)[0])
        if body is None:
            return
        call_id, op, args = pickle.loads(body)
        try:
            answer = (call_id, True, handlers[op](*args))
        except Exception as e:
            answer = (call_id, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            if call_id is None:
                print(answer[2], file=sys.stderr, flush=True)
        if call_id is not None:
            data = memoryview(frame(answer))
            while data:
                data = data[os.write(out, data):]
