"""The decoder registry routes each event by the protocol id in its header and counts what nobody decodes."""
import struct

import pytest

from telegen.ebpf.l7 import PROTO_AT, DecoderRegistry
from telegen.l7.protocols import PROTO_HTTP1

HEADER = struct.Struct("<QIIII")      # struct telegen_event_header


def event(proto, payload=b""):
    return HEADER.pack(1, 10, 11, 2, proto) + payload


def test_events_go_to_their_protocols_decoder_and_unknown_ones_are_counted():
    seen, drops = [], []
    registry = DecoderRegistry(drops.append)
    registry.register(PROTO_HTTP1, seen.append)
    registry.handle_bytes(event(PROTO_HTTP1, b"http"))
    registry.handle_bytes(event(7, b"???"))
    assert seen == [event(PROTO_HTTP1, b"http")]
    assert drops == ["unknown_protocol"]
    assert PROTO_AT == 20


def test_one_decoder_per_protocol():
    registry = DecoderRegistry(lambda reason: None)
    registry.register(PROTO_HTTP1, print)
    with pytest.raises(ValueError, match="protocol 1 already has a decoder"):
        registry.register(PROTO_HTTP1, print)
