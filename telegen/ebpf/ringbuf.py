# -*- test-case-name: tests.unit.test_ebpf_ringbuf -*-
"""
A BPF ring buffer as a reactor reader (IReadDescriptor), modelled on twisted.internet.inotify.

The ring buffer's map fd is itself pollable, so the reactor watches it, and doRead() drains the
ring straight from its memory: the agent maps the consumer page (read-write) and the producer
page plus the data pages (read-only), walks the records and moves the consumer position.
libbpf maps the data twice (the kernel offers it so), so that a record wrapping around the end
is contiguous; we map it once and join the two parts of the rare record that wraps. The kernel
populates the whole mapping at mmap time, so the second copy cost the agent's RSS the ring's
size again (16 MiB of 150 at 5,000 req/s) for one join per ring's worth of records. That skips BCC's per-event ctypes callback (and libbpf's loop around it),
which cost more than decoding a small event. The kernel wakes us only once a CPU has filled
its share of an eighth of the ring (telegen.h), so a timer drains every drain_interval: a quiet
moment never strands events, and under load one drain handles thousands of events. A CpuGovernor
may pause the reader for the rest of a budget window (cpu_governor.py). A reader may name readers
to catch up before each of its own drains (drain_before): the process ring before the HTTP and
TCP rings, so the process table knows a process before the spans it caused ask for its resource.

Memory ordering: loads and stores of aligned 8-byte positions are ordered as the kernel needs on
x86-64 (total store order); libbpf's acquire/release are plain moves there. But each position must
be read and written in one 8-byte access, which a memoryview of format "Q" does (one memcpy of 8
bytes: one move) and struct does not: struct.pack_into zero-fills the field, then writes it byte
by byte. The kernel reserves from other CPUs meanwhile; one that read the consumer position
between the two saw it at 0, took the ring for full and failed, and a reader thread preempted
right there (the agent runs niced) kept it 0 for a millisecond. That was the rare counted loss at
5,000 req/s (bench/README.md, "eBPF": about one event in 300,000, with the ring an eighth full).
"""
import mmap
import struct

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

PAGE = mmap.PAGESIZE
HEADER_SIZE = 8                 # struct bpf_ringbuf_hdr {u32 len; u32 pg_off;}
BUSY_BIT = 1 << 31              # reserved, not yet committed: stop here
DISCARD_BIT = 1 << 30           # discarded by the program: skip
_LENGTH = struct.Struct("<I")

# Events handled per doRead. Under a sustained flood the ring is never empty: without a bound one
# doRead would hold the reactor (and the API) for seconds. The fd stays readable (epoll is level
# triggered), so the reactor comes back after serving everything else.
MAX_EVENTS_PER_READ = 2048
# The CPU governor's budget is checked between slices of this many events, so a drain overshoots
# a spent budget by at most one slice (a few milliseconds), not by a whole doRead.
BUDGET_SLICE = 256


class MappedRing:
    """
    The memory of one kernel ring buffer of `size` data bytes: the consumer page and the producer
    page followed by the data (mapped once). Tests pass bytearrays laid out the same way.
    """

    def __init__(self, consumer, producer, size):
        self.size = size
        self._mask = size - 1
        self._consumer = consumer
        self._producer = producer
        # The positions as 8-byte words (see the module docstring: one access each, never torn).
        self._consumer_position = memoryview(consumer)[:8].cast("Q")
        self._producer_position = memoryview(producer)[:8].cast("Q")

    @classmethod
    def from_fd(cls, fd, size):
        """Map the ring buffer behind a BPF map fd as libbpf does, but its data only once."""
        consumer = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        producer = mmap.mmap(fd, PAGE + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE)
        return cls(consumer, producer, size)

    def pending(self):
        """Bytes the kernel has reserved or committed that the reader has not consumed yet."""
        return self._producer_position[0] - self._consumer_position[0]

    def drain(self, handler, budget, on_error):
        """
        Hand committed records to handler(bytes), at most budget of them; returns how many.
        A record whose handler raises is passed to on_error and skipped (never re-read).
        """
        consumer = self._consumer_position[0]
        producer = self._producer_position[0]
        data, mask, handled, length_at = self._producer, self._mask, 0, _LENGTH.unpack_from
        end_of_data = PAGE + self.size
        while consumer < producer and handled < budget:
            at = PAGE + (consumer & mask)                         # the record's header (never split)
            length = length_at(data, at)[0]
            if length & BUSY_BIT:
                break
            size = length & ~DISCARD_BIT
            if size == length:
                handled += 1
                start = PAGE + ((consumer + HEADER_SIZE) & mask)  # its data
                end = start + size
                try:
                    handler(data[start:end] if end <= end_of_data else
                            data[start:end_of_data] + data[PAGE:end - self.size])
                except Exception:
                    on_error()
            consumer += (size + HEADER_SIZE + 7) & ~7
        self._consumer_position[0] = consumer
        return handled

    def close(self):
        """Unmap (a no-op for test buffers)."""
        self._consumer_position.release()       # an mmap with views on it cannot be closed
        self._producer_position.release()
        for memory in (self._consumer, self._producer):
            if isinstance(memory, mmap.mmap):
                memory.close()


class RingBufferReader(FileDescriptor):
    """
    Reads ring buffer `name` of a BPF object and calls handler(raw_bytes) per event.

    @ivar events_received: events handed to the handler since start.
    @ivar handler_errors: events whose handler raised (each also counted in
        telegen_ebpf_events_dropped{reason="handler_error"}).
    @ivar pending_bytes: bytes waiting in the ring when the last drain began (the fill before
        reading: how close the kernel came to losing events), also the gauge
        telegen_ebpf_ringbuf_fill_ratio{buffer} as a share of the ring.
    @ivar max_pending_bytes: the highest pending_bytes since start.
    """

    def __init__(self, bpf, name, handler, metrics, reactor=None, drain_interval=0.1, ring=None, governor=None,
                 drain_before=()):
        FileDescriptor.__init__(self, reactor=reactor)
        self._drain_before = drain_before       # readers to catch up first (a list the owner may extend)
        self._governor = governor
        self.name = name
        self.events_received = 0
        self.handler_errors = 0
        self.pending_bytes = 0
        self.max_pending_bytes = 0
        self.error = None
        self._handler = handler
        self._metrics = metrics
        table = bpf[name.encode()]
        self._fd = table.map_fd
        self._ring = ring if ring is not None else MappedRing.from_fd(self._fd, table.max_entries)
        self._fill = metrics.ebpf_ringbuf_fill.labels(name)
        self._drain = LoopingCall(self.doRead)
        self._drain.clock = self.reactor
        self._drain_interval = drain_interval

    def fileno(self):
        """The ring buffer map fd the reactor polls."""
        return self._fd

    def _handler_failed(self):
        self.handler_errors += 1
        self._metrics.ebpf_events_dropped.labels(reason="handler_error").inc()
        if self.handler_errors == 1:
            log.failure("ring buffer {name}: event handler failed (further failures only counted)", name=self.name)

    def doRead(self):
        """
        Drain up to MAX_EVENTS_PER_READ events; count them in telegen_ebpf_ringbuf_events_total.
        When the CPU governor's budget for this window is spent, pause instead (resume()).
        """
        for reader in self._drain_before:
            reader.catch_up()
        self._note_pending()
        arrived = 0
        while arrived < MAX_EVENTS_PER_READ:
            if self._governor is not None and not self._governor.may_consume():
                self._governor.hold(self)
                break
            budget = min(BUDGET_SLICE, MAX_EVENTS_PER_READ - arrived)
            drained = self._ring.drain(self._handler, budget, self._handler_failed)
            arrived += drained
            if drained < budget:
                break
        if arrived:
            self.events_received += arrived
            self._metrics.ebpf_ringbuf_events.inc(arrived)

    def _note_pending(self):
        pending = self._ring.pending()
        self.pending_bytes = pending
        if pending > self.max_pending_bytes:
            self.max_pending_bytes = pending
        self._fill.set(pending / self._ring.size)

    def catch_up(self):
        """Drain now if reading (another reader whose events depend on these asks before its own drain)."""
        if self.connected:
            self.doRead()

    def resume(self):
        """Read again after a pause (a new budget window); the epoll registration finds waiting events."""
        if self.connected:
            self.startReading()

    def connectionLost(self, reason):
        """The reactor stopped watching (stop() or an error); the fd stays BCC's to close."""
        FileDescriptor.connectionLost(self, reason)
        if not reason.check(ConnectionDone, ConnectionLost):
            self.error = reason.getErrorMessage()
            log.error("ring buffer {name} reader stopped: {reason}", name=self.name, reason=self.error)

    def start(self):
        """Start watching the fd and the drain timer."""
        self.connected = True
        self.startReading()
        self._drain.start(self._drain_interval, now=False)

    def set_drain_interval(self, seconds):
        """A new drain interval (reload): it applies from the next drain on."""
        self._drain_interval = seconds
        self._drain.interval = seconds

    def stop(self):
        """Stop watching and unmap (the BPF object, which owns the fd, is cleaned up by the caller)."""
        if self._drain.running:
            self._drain.stop()
        if self.connected:
            self.stopReading()
            self.connected = False
            self.disconnected = True
            self._ring.close()
