# -*- test-case-name: tests.unit.test_ebpf_l7 -*-
"""
The decoder registry: a capture ring buffer's handler that hands each event to the decoder of
its connection's L7 protocol, by the protocol id in its header (telegen/l7/protocols.py).

The kernel classifies a connection by its first bytes and stamps every event of it with the id;
one ring buffer and one set of hooks serve every protocol, and a new protocol is a decoder
registered here (docs/ebpf.md, "Adding a protocol"). An event of an id nobody registered is
counted, reason "unknown_protocol", never guessed at.
"""
import struct

# struct telegen_event_header {u64 ts_ns; u32 pid, tid, kind, proto}: where proto is.
PROTO_AT = struct.calcsize("<QIII")


class DecoderRegistry:
    """
    @param drop: called with a reason for every event no decoder takes.
    """

    def __init__(self, drop):
        self._drop = drop
        self._decoders = {}

    def register(self, proto, handle_bytes):
        """Send events of protocol `proto` to handle_bytes(raw); one decoder per id."""
        if proto in self._decoders:
            raise ValueError(f"protocol {proto} already has a decoder")
        self._decoders[proto] = handle_bytes

    def handle_bytes(self, raw):
        """The ring buffer handler: one event (its bytes) to its protocol's decoder."""
        decoder = self._decoders.get(raw[PROTO_AT])
        if decoder is None:
            self._drop("unknown_protocol")
            return
        decoder(raw)
