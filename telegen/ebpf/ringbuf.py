# -*- test-case-name: tests.unit.test_ebpf_ringbuf -*-
"""
A BPF ring buffer as a reactor reader (IReadDescriptor), modelled on twisted.internet.inotify.

The ring buffer's map fd is itself pollable (libbpf registers it with EPOLLIN), so the reactor
watches it and doRead() drains it with the non-blocking ring_buffer_consume(): no polling
thread. The kernel side wakes us only every agent.ebpf.wakeup_events events per CPU (telegen.h),
so a timer also drains every drain_interval: a quiet moment never strands events. BCC calls
our callback through ctypes, which swallows exceptions, and exits the process on EPIPE; so the
callback catches everything, counts it, and returns 0.
"""
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

# Events handled per doRead. libbpf's consume loops until the ring is empty, which under a
# sustained flood is never: without a bound one doRead would hold the reactor (and the API)
# for seconds. Returning < 0 from the callback makes libbpf commit that event and stop; the
# fd stays readable, so the reactor comes back after serving everything else.
MAX_EVENTS_PER_READ = 2048


class RingBufferReader(FileDescriptor):
    """
    Reads ring buffer `name` of a BPF object and calls handler(data_ptr, size) per event.

    @ivar events_received: events handed to the handler since start.
    @ivar handler_errors: events whose handler raised (each also counted in
        telegen_ebpf_events_dropped{reason="handler_error"}).
    """

    def __init__(self, bpf, name, handler, metrics, reactor=None, drain_interval=0.1):
        FileDescriptor.__init__(self, reactor=reactor)
        self._drain = LoopingCall(self.doRead)
        self._drain.clock = self.reactor
        self._drain_interval = drain_interval
        self.name = name
        self.events_received = 0
        self.handler_errors = 0
        self.error = None
        self._budget = MAX_EVENTS_PER_READ
        self._bpf = bpf
        self._handler = handler
        self._metrics = metrics
        table = bpf[name.encode()]
        # Keep a reference to the callback: BCC holds only the ctypes wrapper.
        table.open_ring_buffer(self._callback)
        self._fd = table.map_fd

    def fileno(self):
        """The ring buffer map fd the reactor polls."""
        return self._fd

    def _callback(self, ctx, data, size):
        """Called by BCC once per event during ring_buffer_consume(); never raises; -1 ends this drain."""
        self.events_received += 1
        try:
            self._handler(data, size)
        except Exception:
            self.handler_errors += 1
            self._metrics.ebpf_events_dropped.labels(reason="handler_error").inc()
            if self.handler_errors == 1:
                log.failure("ring buffer {name}: event handler failed (further failures only counted)", name=self.name)
        self._budget -= 1
        return 0 if self._budget > 0 else -1

    def doRead(self):
        """Drain every ready event; count them in telegen_ebpf_ringbuf_events_total."""
        before = self.events_received
        self._budget = MAX_EVENTS_PER_READ
        self._bpf.ring_buffer_consume()
        arrived = self.events_received - before
        if arrived:
            self._metrics.ebpf_ringbuf_events.inc(arrived)

    def connectionLost(self, reason):
        """The reactor stopped watching (consume failed or stop()); the fd stays BCC's to close."""
        FileDescriptor.connectionLost(self, reason)
        if not reason.check(ConnectionDone, ConnectionLost):
            self.error = reason.getErrorMessage()
            log.error("ring buffer {name} reader stopped: {reason}", name=self.name, reason=self.error)

    def start(self):
        """Start watching the fd."""
        self.connected = True
        self.startReading()
        self._drain.start(self._drain_interval, now=False)

    def stop(self):
        """Stop watching the fd (the BPF object, which owns it, is cleaned up by the caller)."""
        if self._drain.running:
            self._drain.stop()
        if self.connected:
            self.stopReading()
            self.connected = False
            self.disconnected = True

