"""
The ring buffer reader without a kernel: MappedRing over bytearrays laid out as the kernel lays
out a BPF ring buffer (consumer page; producer page, then the data, mapped once), written the way
the kernel's producer writes it. Then RingBufferReader on MemoryReactorClock: registration,
draining on doRead and on the drain timer, counting, failures contained, stop.
"""
import mmap
import os
import time

import pytest

from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from telegen.ebpf import ringbuf
from telegen.ebpf.ringbuf import BUSY_BIT, DISCARD_BIT, PAGE, MappedRing, RingBufferReader
from telegen.selfmetrics import SelfMetrics
from tests.support.ring import FakeBPF, KernelSide


def test_records_in_order_and_the_consumer_position_moves():
    kernel, seen = KernelSide(), []
    kernel.submit(b"first")
    kernel.submit(b"second-event")
    assert kernel.ring.drain(seen.append, 100, None) == 2
    assert seen == [b"first", b"second-event"]
    assert kernel.consumed == kernel.position


def test_another_cpu_never_sees_the_consumer_position_torn():
    """
    The kernel reads the consumer position on other CPUs while the reader stores it. Stored in
    pieces (struct.pack_into zero-fills the field first), it was seen as 0 and the kernel failed
    reserves with the ring nearly empty. A process watching the page must only ever see it grow.
    """
    if os.cpu_count() < 2:
        pytest.skip("needs a second CPU to watch the position from")
    kernel = KernelSide()
    kernel.consumer = mmap.mmap(-1, PAGE)                    # shared with the watching child
    kernel.ring = MappedRing(kernel.consumer, kernel.producer, kernel.size)
    shared = mmap.mmap(-1, PAGE)
    control = memoryview(shared)[:24].cast("Q")              # [done, positions seen going back, reads]
    child = os.fork()
    if child == 0:
        try:
            position, last, back, reads = memoryview(kernel.consumer)[:8].cast("Q"), 0, 0, 0
            while not control[0]:
                seen = position[0]
                back += seen < last
                last = seen
                reads += 1
            control[1], control[2] = back, reads
        finally:
            os._exit(0)
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        for _ in range(1000):
            kernel.submit(b"event")
            kernel.ring.drain(lambda raw: None, 1, None)
    control[0] = 1
    os.waitpid(child, 0)
    assert control[2] > 10_000                               # it did watch
    assert control[1] == 0


def test_a_record_wrapping_around_the_end_is_read_whole():
    """The data is mapped once: a record whose bytes pass the end is joined from its two parts."""
    kernel, seen, split = KernelSide(size=4096), [], 0
    for i in range(100):
        offset = kernel.position % kernel.size
        split += offset + 8 < kernel.size < offset + 8 + 100     # header before the end, data across it
        kernel.submit(bytes([i]) * 100)
        kernel.ring.drain(seen.append, 100, None)
    assert seen == [bytes([i]) * 100 for i in range(100)]
    assert split >= 2


def test_discarded_records_are_skipped_and_busy_stops():
    kernel, seen = KernelSide(), []
    kernel.submit(b"dropped", flags=DISCARD_BIT)
    kernel.submit(b"kept")
    busy_at = kernel.position
    kernel.submit(b"not-yet", flags=BUSY_BIT)
    assert kernel.ring.drain(seen.append, 100, None) == 1
    assert seen == [b"kept"]
    assert kernel.consumed == busy_at


def test_budget_bounds_one_drain():
    kernel, seen = KernelSide(), []
    for i in range(5):
        kernel.submit(bytes([i]))
    assert kernel.ring.drain(seen.append, 3, None) == 3
    assert kernel.ring.drain(seen.append, 3, None) == 2
    assert seen == [bytes([i]) for i in range(5)]


def make(handler):
    kernel, reactor, metrics = KernelSide(), MemoryReactorClock(), SelfMetrics()
    reader = RingBufferReader(FakeBPF(), "events", handler, metrics, reactor=reactor, drain_interval=0.1, ring=kernel.ring)
    return kernel, reactor, metrics, reader


def test_start_registers_the_map_fd_with_the_reactor():
    _, reactor, _, reader = make(lambda raw: None)
    assert reader.fileno() == 42
    reader.start()
    assert reader in reactor.readers
    reader.stop()
    assert reader not in reactor.readers


def test_do_read_drains_and_counts():
    seen = []
    kernel, _, metrics, reader = make(seen.append)
    kernel.submit(b"a" * 16)
    kernel.submit(b"b" * 32)
    reader.doRead()
    assert seen == [b"a" * 16, b"b" * 32]
    assert reader.events_received == 2
    assert metrics.registry.get_sample_value("telegen_ebpf_ringbuf_events_total") == 2


def test_each_drain_notes_how_full_the_ring_was_and_the_highest_fill_is_kept():
    """What an SRE watches to see how close the kernel came to losing events, before it loses any."""
    kernel, _, metrics, reader = make(lambda raw: None)
    for _ in range(3):
        kernel.submit(b"x" * 504)                    # 512 bytes with its header
    reader.doRead()
    assert reader.pending_bytes == reader.max_pending_bytes == 3 * 512
    assert metrics.registry.get_sample_value("telegen_ebpf_ringbuf_fill_ratio", {"buffer": "events"}) == 3 * 512 / 4096
    kernel.submit(b"x" * 504)
    reader.doRead()
    assert (reader.pending_bytes, reader.max_pending_bytes) == (512, 3 * 512)
    reader.doRead()
    assert reader.pending_bytes == 0
    assert metrics.registry.get_sample_value("telegen_ebpf_ringbuf_fill_ratio", {"buffer": "events"}) == 0


def test_a_raising_handler_is_contained_counted_and_the_drain_goes_on():
    def handler(raw):
        if raw == b"bad":
            raise ValueError("bad event")
        seen.append(raw)

    seen = []
    kernel, _, metrics, reader = make(handler)
    kernel.submit(b"bad")
    kernel.submit(b"good")
    reader.doRead()
    assert seen == [b"good"]
    assert reader.handler_errors == 1 and reader.events_received == 2
    assert metrics.registry.get_sample_value("telegen_ebpf_events_dropped_total", {"reason": "handler_error"}) == 1
    assert kernel.consumed == kernel.position


def test_one_do_read_handles_a_bounded_number_of_events(monkeypatch):
    """A flood cannot hold the reactor: a doRead stops after its budget, the next one goes on."""
    monkeypatch.setattr(ringbuf, "MAX_EVENTS_PER_READ", 3)
    seen = []
    kernel, _, _, reader = make(seen.append)
    for i in range(5):
        kernel.submit(bytes([i]))
    reader.doRead()
    assert len(seen) == 3
    reader.doRead()
    assert len(seen) == 5 and reader.events_received == 5


def test_the_drain_timer_reads_events_nobody_woke_us_for():
    """With batched wakeups the fd may stay quiet: the timer drains every drain_interval, and stops with the reader."""
    seen = []
    kernel, reactor, _, reader = make(seen.append)
    reader.start()
    kernel.submit(b"x")
    reactor.advance(0.05)
    assert seen == []
    reactor.advance(0.05)
    assert seen == [b"x"]
    reader.stop()
    kernel.submit(b"y")
    reactor.advance(1.0)
    assert seen == [b"x"] and not reactor.getDelayedCalls()


def test_connection_lost_with_an_error_is_reported_but_shutdown_is_not():
    _, _, _, reader = make(lambda raw: None)
    reader.start()
    reader.connectionLost(Failure(ConnectionLost()))
    assert reader.error is None
    _, _, _, broken = make(lambda raw: None)
    broken.start()
    broken.connectionLost(Failure(OSError("epoll failed")))
    assert broken.error == "epoll failed"
