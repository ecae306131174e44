"""
RingBufferReader as a reactor reader, with MemoryReactorClock and a fake BCC layer: registration,
draining on doRead and on the drain timer, counting, handler failures contained, errors reported, stop.
"""
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from telegen.ebpf.ringbuf import RingBufferReader
from telegen.selfmetrics import SelfMetrics


class FakeTable:
    map_fd = 42

    def __init__(self):
        self.callback = None

    def open_ring_buffer(self, callback):
        self.callback = callback


class FakeBPF:
    """BCC's BPF object as the reader uses it: tables by name and ring_buffer_consume()."""

    def __init__(self):
        self.tables = {b"events": FakeTable()}
        self.pending = []
        self.returns = []

    def __getitem__(self, name):
        return self.tables[name]

    def ring_buffer_consume(self):
        """Like libbpf: hand events over until the ring is empty or a callback returns < 0."""
        while self.pending:
            ptr, size = self.pending.pop(0)
            self.returns.append(self.tables[b"events"].callback(None, ptr, size))
            if self.returns[-1] < 0:
                return


def make(handler):
    reactor, bpf, metrics = MemoryReactorClock(), FakeBPF(), SelfMetrics()
    reader = RingBufferReader(bpf, "events", handler, metrics, reactor=reactor, drain_interval=0.1)
    return reactor, bpf, metrics, reader


def test_start_registers_the_map_fd_with_the_reactor():
    reactor, _, _, reader = make(lambda p, s: None)
    assert reader.fileno() == 42
    reader.start()
    assert reader in reactor.readers
    reader.stop()
    assert reader not in reactor.readers


def test_do_read_drains_every_event_to_the_handler_and_counts():
    seen = []
    _, bpf, metrics, reader = make(lambda p, s: seen.append((p, s)))
    bpf.pending = [(1000, 16), (2000, 32)]
    reader.doRead()
    assert seen == [(1000, 16), (2000, 32)]
    assert reader.events_received == 2
    assert metrics.ebpf_ringbuf_events._value.get() == 2
    assert bpf.returns == [0, 0]


def test_a_raising_handler_is_contained_counted_and_returns_zero():
    """BCC's ctypes callback must never see an exception: it is counted and the drain goes on."""
    def handler(ptr, size):
        if ptr == 1:
            raise ValueError("bad event")

    _, bpf, metrics, reader = make(handler)
    bpf.pending = [(1, 8), (2, 8)]
    reader.doRead()
    assert bpf.returns == [0, 0]
    assert reader.handler_errors == 1 and reader.events_received == 2
    assert metrics.ebpf_events_dropped.labels(reason="handler_error")._value.get() == 1


def test_connection_lost_with_an_error_is_reported_but_shutdown_is_not():
    _, _, _, reader = make(lambda p, s: None)
    reader.start()
    reader.connectionLost(Failure(ConnectionLost()))
    assert reader.error is None
    _, _, _, broken = make(lambda p, s: None)
    broken.start()
    broken.connectionLost(Failure(OSError("consume failed")))
    assert broken.error == "consume failed"


def test_one_do_read_handles_a_bounded_number_of_events(monkeypatch):
    """A flood cannot hold the reactor: a doRead stops after its budget, the next one goes on."""
    from telegen.ebpf import ringbuf
    monkeypatch.setattr(ringbuf, "MAX_EVENTS_PER_READ", 3)
    seen = []
    _, bpf, _, reader = make(lambda p, s: seen.append(p))
    bpf.pending = [(i, 8) for i in range(5)]
    reader.doRead()
    assert seen == [0, 1, 2] and bpf.returns[-1] == -1
    reader.doRead()
    assert seen == [0, 1, 2, 3, 4] and reader.events_received == 5


def test_the_drain_timer_reads_events_nobody_woke_us_for():
    """With batched wakeups the fd may stay quiet: the timer drains every drain_interval, and stops with the reader."""
    seen = []
    reactor, bpf, _, reader = make(lambda p, s: seen.append(p))
    reader.start()
    bpf.pending = [(7, 8)]
    reactor.advance(0.05)
    assert seen == []
    reactor.advance(0.05)
    assert seen == [7]
    reader.stop()
    bpf.pending = [(8, 8)]
    reactor.advance(1.0)
    assert seen == [7] and not reactor.getDelayedCalls()
