"""
A telegen.workerproc.Worker stand-in that runs the handlers in this process: unit tests drive the
profiler's window flow (ProfilerService + telegen.profiling.worker.WindowBuilder) on a Clock
without a child process.
"""
from twisted.internet import defer


class InProcessWorker:
    def __init__(self, handlers):
        self.handlers = handlers
        self.pid = None
        self.restarts = 0
        self.stopped = False

    def send(self, op, *args):
        self.handlers[op](*args)

    def call(self, op, *args):
        return defer.maybeDeferred(self.handlers[op], *args)

    def stop(self):
        self.stopped = True
        return defer.succeed(None)
