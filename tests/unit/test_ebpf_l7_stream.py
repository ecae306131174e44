"""
StreamDecoder on events laid out as bpf/l7_stream.h sends them: one parser per connection fed in
order, times from the right edge of each syscall, a cut capture passed on as a gap (counted, the
parser resynchronizes), a close frees the connection, idle connections expire, losses by reason.
"""
import struct
from functools import partial

from telegen.ebpf.http_decoder import Connection
from telegen.ebpf.l7_stream import EV_CLOSE, EVENT, FLAG_TLS, StreamDecoder
from telegen.l7.protocols import PROTO_HTTP2, PROTO_POSTGRESQL, PROTO_REDIS
from telegen.protocols.registry import PROTOCOLS
from tests.support.h2_peers import UPGRADE_RESPONSE, Conversation
from tests.support.http_events import stream_event as event

REDIS = next(p for p in PROTOCOLS if p.proto == PROTO_REDIS)
POSTGRESQL = next(p for p in PROTOCOLS if p.proto == PROTO_POSTGRESQL)
HTTP2 = next(p for p in PROTOCOLS if p.proto == PROTO_HTTP2)
OFFSET = 1_000


def decoder(protocol=REDIS):
    exchanges, losses = [], []
    d = StreamDecoder(protocol, lambda conn, ex: exchanges.append((conn, ex)), lambda r, n: losses.append((r, n)), OFFSET)
    return d, exchanges, losses


def test_the_event_layout_is_the_kernels():
    """struct l7_data_event: header 24, six u64, two 24-byte endpoints, two u16, three u32, then data[]."""
    assert EVENT.size == 24 + 48 + 48 + 16


def test_commands_and_replies_make_exchanges_with_syscall_times():
    d, exchanges, losses = decoder()
    d.handle_bytes(event(200, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", enter_ts=150))
    d.handle_bytes(event(300, b"$1\r\nv\r\n", from_client=False))
    [(conn, ex)] = exchanges
    assert (ex.command, ex.query, ex.namespace) == ("GET", "GET k", "0")
    assert (ex.start_ns, ex.end_ns) == (150 + OFFSET, 300 + OFFSET)     # the write's entry, the read's return
    assert (conn.pid, conn.peer, conn.peer_port) == (10, "127.0.0.1", 6379)
    assert len(d) == 1 and not losses
    d.handle_bytes(event(400, kind=EV_CLOSE))
    assert len(d) == 0


def test_a_cut_capture_is_a_gap_and_the_parser_resyncs():
    """A reply longer than the capture: the rest is a gap, counted; the next command pairs exactly."""
    d, exchanges, losses = decoder()
    d.handle_bytes(event(1, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"))
    d.handle_bytes(event(2, b"$10000\r\n" + b"x" * 100, from_client=False, ret=10010))
    d.handle_bytes(event(3, b"*2\r\n$3\r\nGET\r\n$1\r\nj\r\n"))
    d.handle_bytes(event(4, b"$1\r\nv\r\n", from_client=False))
    assert ("gap", 1) in losses
    assert [ex.query for _, ex in exchanges][-1] == "GET j"


def test_connections_are_separate_and_idle_ones_expire():
    d, exchanges, _ = decoder()
    d.handle_bytes(event(1, b"*1\r\n$4\r\nPING\r\n", conn=1))
    d.handle_bytes(event(2, b"*1\r\n$4\r\nPING\r\n", conn=2))
    d.handle_bytes(event(3, b"+PONG\r\n", from_client=False, conn=2))
    assert [ex.command for _, ex in exchanges] == ["PING"] and len(d) == 2
    d.expire(now_mono=10, idle_ns=8)
    assert len(d) == 1
    d.expire(now_mono=100, idle_ns=8)
    assert len(d) == 0


def test_a_disabled_protocol_drops_counted_and_holds_nothing():
    d, exchanges, losses = decoder()
    d.handle_bytes(event(1, b"*1\r\n$4\r\nPING\r\n"))
    d.clear()
    d.enabled = False
    d.handle_bytes(event(2, b"+PONG\r\n", from_client=False))
    assert not exchanges and len(d) == 0 and losses == [("protocol_disabled", 1)]


def pg(kind, body=b""):
    return kind + struct.pack(">i", len(body) + 4) + body


def test_postgresql_over_tls_is_one_connection_its_plaintext_parsed_after_the_clear_sslrequest():
    """
    The SSLRequest and 'S' in clear, the handshake's ciphertext, then FLAG_TLS plaintext under the
    same connection: the StartupMessage is read from the plaintext, the query pairs, nothing lost.
    """
    d, exchanges, losses = decoder(POSTGRESQL)
    ev = partial(event, proto=PROTO_POSTGRESQL, peer_port=5432)
    startup = struct.pack(">i", 196608) + b"user\0app\0database\0shop\0\0"
    d.handle_bytes(ev(1, struct.pack(">ii", 8, 80877103)))
    d.handle_bytes(ev(2, b"S", from_client=False))
    d.handle_bytes(ev(3, b"\x16\x03\x01\x02\x00" + bytes(200)))
    d.handle_bytes(ev(4, b"\x16\x03\x03\x00\x7a" + bytes(300), from_client=False))
    d.handle_bytes(ev(5, struct.pack(">i", len(startup) + 4) + startup, flags=FLAG_TLS))
    d.handle_bytes(ev(6, pg(b"R", bytes(4)) + pg(b"Z", b"I"), from_client=False, flags=FLAG_TLS))
    d.handle_bytes(ev(7, pg(b"Q", b"SELECT 1\0"), flags=FLAG_TLS))
    d.handle_bytes(ev(8, pg(b"C", b"SELECT 1\0") + pg(b"Z", b"I"), from_client=False, flags=FLAG_TLS))
    d.handle_bytes(ev(9, kind=EV_CLOSE))
    assert [(ex.query, ex.namespace, ex.start_ns) for _, ex in exchanges] == [("SELECT 1", "shop", 7 + OFFSET)]
    assert not losses and len(d) == 0


def test_a_tls_connection_never_decrypted_counts_encrypted_once_at_its_close():
    d, exchanges, losses = decoder(POSTGRESQL)
    ev = partial(event, proto=PROTO_POSTGRESQL, peer_port=5432)
    d.handle_bytes(ev(1, struct.pack(">ii", 8, 80877103)))
    d.handle_bytes(ev(2, b"S", from_client=False))
    d.handle_bytes(ev(3, b"\x17\x03\x03\x00\x20" + bytes(32)))
    assert not losses
    d.handle_bytes(ev(4, kind=EV_CLOSE))
    assert not exchanges and losses == [("encrypted", 1)]


def h2_decoder():
    exchanges, losses = [], []
    d = StreamDecoder(HTTP2, lambda conn, ex: exchanges.append((conn, ex)), lambda r, n: losses.append((r, n)), OFFSET)
    return d, exchanges, losses


def test_an_h2c_upgrade_handed_over_starts_the_parser_and_takes_the_connections_events():
    """The HTTP/1 decoder's captures of the upgrade request and its 101 start the parser; the kernel's
    events of the connection (the socket cookie, whose low 32 bits the HTTP/1 events carry) go to it."""
    talk = Conversation(start=False)
    talk.raw(True, b"GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                   b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
    talk.raw(False, UPGRADE_RESPONSE)
    talk.server.initiate_upgrade_connection(b"AAMAAABkAAQAoAAAAAIAAAAA")
    talk.client.initiate_upgrade_connection()
    talk.flush_client()                                       # the preface, after the 101
    talk.respond(1, 200, b"up")
    (_, request, _), (_, response, _), *frames = talk.chunks
    d, exchanges, losses = h2_decoder()
    cookie = (7 << 32) | 42
    http1 = Connection(True, 10, "127.0.0.1", 50000, "127.0.0.1", 8080)
    d.hand_over(42, 1, http1, ((True, request, 100, 0), (False, response, 200, 0)))
    for i, (from_client, data, _) in enumerate(frames):
        d.handle_bytes(event(300 + i, data, from_client=from_client, conn=cookie, proto=PROTO_HTTP2, server=True))
    [(conn, ex)] = exchanges
    assert (ex.stream_id, ex.upgraded, ex.path, ex.status, ex.start_ns) == (1, True, "/up", 200, 100)
    assert conn.server_side and (conn.local, conn.local_port, conn.peer_port) == ("127.0.0.1", 8080, 50000)
    assert not losses and len(d) == 1


def test_other_upgrades_are_ignored_and_unpaired_ones_counted_until_their_close():
    d, exchanges, losses = h2_decoder()
    d.hand_over(1, 1, None, ())                                # a WebSocket: quiet
    d.hand_over(2, 1, None, (), counted=True)                  # a 101 whose request was not paired
    for conn in (1, 2):
        d.handle_bytes(event(5, b"\x81\x05hello", conn=conn, proto=PROTO_HTTP2))
        d.handle_bytes(event(6, b"\x81\x05again", conn=conn, proto=PROTO_HTTP2))
        d.handle_bytes(event(7, kind=EV_CLOSE, conn=conn, proto=PROTO_HTTP2))
    assert not exchanges and losses == [("upgrade_not_followed", 1)] and len(d) == 0


def test_events_the_ring_buffer_lost_are_found_by_their_offsets_and_accounted_at_the_close():
    """An HTTP/2 client connection whose events 3 and 4 of 6 exchanges' (a whole exchange: request
    and response) and the last exchange's were lost: the next event's offsets show the first loss
    (a gap; the next stream id counts the request), the close's totals and highest stream id the
    last. The server's gap is seen only at its next event, after /c's request: /c, open then, may
    have ended in it and is counted too. 1 span + 3 counted losses, as many as the client's streams."""
    c = Conversation()
    for path in ("/a", "/b", "/c", "/d"):
        c.respond(c.request(path), 200, b"ok")
    d, exchanges, losses = decoder(HTTP2)
    sent = received = 0
    lost = {len(c.chunks) - 6, len(c.chunks) - 5, len(c.chunks) - 2, len(c.chunks) - 1}  # /b's and /d's
    for k, (from_client, data, ts) in enumerate(c.chunks):
        if k not in lost:
            d.handle_bytes(event(ts, data, from_client=from_client, proto=PROTO_HTTP2, sent=sent, received=received))
        sent, received = (sent + len(data), received) if from_client else (sent, received + len(data))
    d.handle_bytes(event(99, kind=EV_CLOSE, proto=PROTO_HTTP2, sent=sent, received=received, max_sid=7))
    assert [ex.path for _, ex in exchanges] == ["/a"]
    assert sum(n for r, n in losses if r == "stream_lost") == 2
    assert sum(n for r, n in losses if r == "request_without_response") == 1
    assert len(d) == 0


def test_a_close_the_ring_lost_waits_until_the_ring_has_passed_it():
    """A close from the kernel's l7_lost_closes map may overtake the connection's events still in
    the ring: it is applied once an event from after it was read, or after an idle expiry period,
    never before the events it follows (which would start the connection over as a new one)."""
    c = Conversation()
    c.respond(c.request("/a"), 200, b"ok")
    d, exchanges, losses = decoder(HTTP2)
    d.handle_bytes(event(1, c.chunks[0][1], proto=PROTO_HTTP2))
    d.lost_close(7, 1, 50, sum(len(b) for fc, b, _ in c.chunks if fc), sum(len(b) for fc, b, _ in c.chunks if not fc),
                 False, 1)
    d.expire(60, 10**12)
    assert len(d) == 1                                   # an event was read since the last expiry, none after the close
    sent, received = len(c.chunks[0][1]), 0
    for from_client, data, _ in c.chunks[1:]:
        d.handle_bytes(event(10, data, from_client=from_client, proto=PROTO_HTTP2, sent=sent, received=received))
        sent, received = (sent + len(data), received) if from_client else (sent, received + len(data))
    d.expire(70, 10**12)
    assert len(d) == 1
    d.expire(80, 10**12)                                 # nothing read for a whole period: the ring passed it
    assert len(d) == 0 and [ex.path for _, ex in exchanges] == ["/a"] and not losses
