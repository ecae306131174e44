"""The protocol registry picks the protocol a connection speaks from its first bytes, and no other."""
import struct

from telegen.protocols.registry import PROTOCOLS, identify


def test_identify_by_first_bytes():
    startup = struct.pack(">ii", 8, 80877103)
    handshake = struct.pack("<I", 40)[:3] + b"\0\x0a8.0.36\0" + b"\0" * 32
    resp = b"*1\r\n$4\r\nPING\r\n"
    assert identify(client_first=startup).name == "postgresql"
    assert identify(server_first=handshake).name == "mysql"
    assert identify(client_first=resp).name == "redis"
    assert identify(client_first=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04").name == "http2"
    assert identify(client_first=b"GET / HTTP/1.1\r\n", server_first=b"HTTP/1.1 200 OK\r\n") is None
    assert identify(client_first=handshake) is None     # a server's handshake is no client's rule
    assert [p.name for p in PROTOCOLS] == ["postgresql", "mysql", "redis", "http2"]


def test_each_protocol_makes_fresh_parsers():
    for protocol in PROTOCOLS:
        a, b = protocol.parser(), protocol.parser()
        assert a is not b and a.feed(True, b"", 0) == [] and not a.losses
