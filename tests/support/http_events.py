"""
The HTTP probe's kernel events as bytes, laid out as bpf/http.c (and bpf/http_sock.c) write them,
for the decoder and probe tests and the consumer benchmark; stream_event() for the stream
protocols' events (bpf/l7_stream.h).
"""
from telegen.ebpf import l7_stream
from telegen.ebpf.http_decoder import EV_EXCHANGE, EVENT, EXCHANGE_TAIL, ROLE_SERVER
from telegen.ebpf.http_probe import CAPTURE_BYTES
from telegen.l7.protocols import PROTO_REDIS

LOOPBACK = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
OFFSET = 1_000_000


def event(kind, ts, data=b"", *, role=ROLE_SERVER, ret=None, enter_ts=None, rx=0, tx=0, last_rx=0, last_tx=0,
          pid=10, fd=5, conn_ts=1, flags=0):
    """The bytes of one struct http_event as bpf/http.c lays it out."""
    ret = len(data) if ret is None else ret
    return EVENT.pack(ts, pid, kind, enter_ts or ts, conn_ts, rx, tx, last_rx, last_tx, ret,
                      LOOPBACK, 50000, LOOPBACK, 8080, fd, role, len(data), flags) + data


def exchange(ts, response, request, request_ts, *, request_enter_ts=None, **fields):
    """The bytes of one struct http_exchange_event: the response's event (data[] padded to the
    capture size), then the held request's entry/exit times, capture length and capture."""
    head = event(EV_EXCHANGE, ts, response, **fields).ljust(EVENT.size + CAPTURE_BYTES, b"\0")
    return head + EXCHANGE_TAIL.pack(request_enter_ts or request_ts, request_ts, len(request)) + request


REQ = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def stream_event(ts, data=b"", *, from_client=True, ret=None, enter_ts=None, kind=l7_stream.EV_DATA, conn=7, pid=10,
                 proto=PROTO_REDIS, peer_port=6379, server=False, flags=0, sent=0, received=0, max_sid=0):
    """The bytes of one struct l7_data_event (data[] holds only the captured bytes, as the kernel sends it);
    `sent` and `received`: the stream offsets before it (0 always: the decoder takes it that no event was lost)."""
    ret = len(data) if ret is None else ret
    return l7_stream.EVENT.pack(ts, pid, pid, kind, proto, conn, 1, enter_ts or ts, ret, sent, received, LOOPBACK, peer_port,
                                LOOPBACK, 50000, int(from_client), int(server), len(data), flags, max_sid) + data
