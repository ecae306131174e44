"""
A BPF ring buffer without a kernel: KernelSide writes records into bytearrays laid out as the
kernel lays out a ring buffer (consumer page; producer page, then the data, which the reader maps once), and a
BCC object stand-in whose one table is that ring. Used by the reader, governor and service tests.
"""
import struct

from telegen.ebpf.ringbuf import HEADER_SIZE, PAGE, MappedRing


class KernelSide:
    """Writes records as the kernel does: header {len | flags, pg_off}, data, 8-byte aligned."""

    def __init__(self, size=4096):
        self.size = size
        self.consumer = bytearray(PAGE)
        self.producer = bytearray(PAGE + size)
        self.position = 0
        self.ring = MappedRing(self.consumer, self.producer, size)

    def _write(self, offset, data):
        """Write into the data area at ring offset; what passes the end goes on at its start."""
        head = data[:self.size - offset]
        self.producer[PAGE + offset:PAGE + offset + len(head)] = head
        tail = data[len(head):]
        self.producer[PAGE:PAGE + len(tail)] = tail

    def submit(self, payload, flags=0):
        offset = self.position % self.size
        self._write(offset, struct.pack("<II", len(payload) | flags, 0) + payload)
        self.position += (len(payload) + HEADER_SIZE + 7) & ~7
        struct.pack_into("<Q", self.producer, 0, self.position)

    @property
    def consumed(self):
        return struct.unpack_from("<Q", self.consumer, 0)[0]


class FakeTable:
    map_fd = 42
    max_entries = 4096


class FakeBPF:
    def __getitem__(self, name):
        assert name == b"events"
        return FakeTable()
