"""
The HTTP/2 parser on conversations of the `h2` library's client and server (real HPACK encoder
output) and on hand-made frames: multiplexed streams, every split point, HPACK's dynamic table,
CONTINUATION, padding, trailers, RST_STREAM, GOAWAY, pushes, the h2c upgrade, and captures that
join mid-connection or lose bytes.
"""
import struct

import pytest

from hpack import Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from telegen.protocols import http2
from telegen.protocols.common import LOSS_DESYNC, LOSS_GAP, LOSS_NO_RESPONSE, LOSS_TRUNCATED
from telegen.protocols.http2 import (
    EXCHANGE_LOSSES, LOSS_GOAWAY, LOSS_HEADER_UNKNOWN, LOSS_STREAM_LOST, LOSS_NO_HEADERS, LOSS_NOT_HTTP2, LOSS_TOO_MANY, LOSS_UPGRADE_REFUSED, PREFACE,
    HpackError, HpackTable, Http2Parser, classify)
from tests.support.h2_peers import UPGRADE_RESPONSE, Conversation
from tests.support.protocol_chunks import assert_chunking_invariant, feed_all, mutated

GRPC = (("content-type", "application/grpc"), ("te", "trailers"))


def frame(ftype, flags, sid, payload):
    return struct.pack(">BHBBI", len(payload) >> 16, len(payload) & 0xffff, ftype, flags, sid) + payload


def summary(exchanges):
    return [(e.stream_id, e.method, e.path, e.status, e.request_body_size, e.response_body_size, e.start_ns, e.end_ns,
             e.reset, e.response.get(b"grpc-status"), e.unknown_fields) for e in exchanges]


def multiplexed():
    """Three GETs, a POST and a gRPC call in flight together, answered out of order."""
    c = Conversation()
    a = c.request("/a", headers=[("user-agent", "ua/1")])
    b = c.request("/b?q=1", headers=[("user-agent", "ua/1")])
    post = c.request("/upload", method="POST", body=b"x" * 1000, headers=[("user-agent", "ua/1")])
    call = c.request("/pkg.Svc/Get", method="POST", body=b"\0\0\0\0\x02hi", headers=GRPC)
    c.respond(b, 404, b"nope")
    c.respond(call, 200, b"\0\0\0\0\x01k", headers=[("content-type", "application/grpc")],
              trailers=[("grpc-status", "0")])
    c.respond(a, 200, b"a" * 20000)           # more than one DATA frame (16384 each)
    c.flush_client()                           # the client's WINDOW_UPDATEs
    c.respond(post, 201)
    c.request("/a", headers=[("user-agent", "ua/1")])    # the same fields again: dynamic table references
    c.respond(9, 200, b"again")
    return c.chunks


MULTIPLEXED = [
    (3, "GET", "/b?q=1", 404, None, 4, 5, 8, None, None, 0),
    (7, "POST", "/pkg.Svc/Get", 200, 7, 6, 7, 9, None, b"0", 0),
    (1, "GET", "/a", 200, None, 20000, 4, 10, None, None, 0),
    (5, "POST", "/upload", 201, 1000, None, 6, 11, None, None, 0),
    (9, "GET", "/a", 200, None, 5, 12, 13, None, None, 0),
]


def test_multiplexed_streams_are_paired_by_id():
    chunks = multiplexed()
    assert classify(chunks[0][1]) and not classify(b"GET / HTTP/1.1\r\n")
    parser = Http2Parser()
    exchanges = feed_all(parser, chunks)
    assert summary(exchanges) == MULTIPLEXED
    assert exchanges[0].request == {b":method": b"GET", b":path": b"/b?q=1", b":scheme": b"http",
                                    b":authority": b"example.test", b"user-agent": b"ua/1"}
    assert exchanges[1].is_grpc and not exchanges[0].is_grpc
    assert not parser.losses
    # The last request went out as dynamic table references: a few bytes for five fields.
    assert len(chunks[-2][1]) < 9 + 12


def test_every_split_point_and_byte_by_byte_give_the_same_exchanges():
    assert_chunking_invariant(Http2Parser, multiplexed(), summary, MULTIPLEXED)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_chunking_gives_the_same_exchanges(data):
    """The conversation's bytes of each direction regrouped at random cut points."""
    chunks = multiplexed()
    out = []
    for from_client, payload, ts in chunks:
        cuts = sorted(data.draw(st.sets(st.integers(1, len(payload) - 1), max_size=4)) if len(payload) > 1 else [])
        for start, end in zip([0] + cuts, cuts + [len(payload)]):
            out.append((from_client, payload[start:end], ts))
    parser = Http2Parser()
    assert summary(feed_all(parser, out)) == MULTIPLEXED
    assert not parser.losses


def test_indexed_field_zero_is_an_hpack_error_not_a_dynamic_entry():
    """0x80 (index 0) is invalid (RFC 7541 6.1). The inline path for the first dynamic entries once
    took it for entry -62 (found by the damaged-captures test below): an IndexError, or with enough
    entries a wrong field."""
    table = http2.HpackTable(complete=True)
    for i in range(70):
        table.decode(bytes([0x40, 1]) + b"x" + bytes([1]) + str(i % 10).encode())
    with pytest.raises(http2.HpackError):
        table.decode(b"\x80")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_damaged_captures_never_raise_and_stay_bounded(data):
    parser = Http2Parser(limit=4096)
    for ex in feed_all(parser, mutated(multiplexed(), data.draw)):
        assert ex.stream_id > 0
    assert len(parser._streams) <= http2.MAX_OPEN_STREAMS


def grpc_calls(c, n):
    """n unary gRPC calls answered in turn; the last one fails with Trailers-Only NOT_FOUND."""
    for i in range(n - 1):
        sid = c.request("/pkg.Svc/Get", method="POST", body=b"\0\0\0\0\x01" + bytes([i]), headers=GRPC)
        c.respond(sid, 200, b"\0\0\0\0\x01k", headers=[("content-type", "application/grpc")],
                  trailers=[("grpc-status", "0")])
    sid = c.request("/pkg.Svc/Missing", method="POST", body=b"\0\0\0\0\0", headers=GRPC)
    c.respond(sid, 200, headers=[("content-type", "application/grpc"), ("grpc-status", "5"),
                                 ("grpc-message", "no%20such%20thing")])


def test_grpc_trailers_and_trailers_only():
    c = Conversation()
    grpc_calls(c, 3)
    parser = Http2Parser()
    exchanges = feed_all(parser, c.chunks)
    assert [(e.path, e.response.get(b"grpc-status"), e.response_body_size) for e in exchanges] == [
        ("/pkg.Svc/Get", b"0", 6), ("/pkg.Svc/Get", b"0", 6), ("/pkg.Svc/Missing", b"5", None)]
    assert exchanges[2].response[b"grpc-message"] == b"no%20such%20thing"
    assert not parser.losses


def test_capture_joining_mid_connection_does_not_invent_headers():
    """Joining after the first call: the fields the encoder indexed before the join are unknown
    (left out, counted), literals and static entries are exact, and new entries are learnt."""
    c = Conversation()
    grpc_calls(c, 2)
    joined = len(c.chunks)
    sid = c.request("/pkg.Svc/Other", method="POST", body=b"\0\0\0\0\0", headers=GRPC)   # a new :path literal
    c.respond(sid, 200, b"\0\0\0\0\0", headers=[("content-type", "application/grpc")], trailers=[("grpc-status", "0")])
    sid = c.request("/pkg.Svc/Other", method="POST", body=b"\0\0\0\0\0", headers=GRPC)   # now an index the capture saw
    c.respond(sid, 200, b"\0\0\0\0\0", headers=[("content-type", "application/grpc")], trailers=[("grpc-status", "0")])
    parser = Http2Parser()
    exchanges = feed_all(parser, c.chunks[joined:])
    whole = feed_all(Http2Parser(), c.chunks)[-2:]
    assert [e.stream_id for e in exchanges] == [5, 7]
    for ex, truth in zip(exchanges, whole):
        assert ex.unknown_fields > 0
        for name, value in ex.request.items():          # nothing known is wrong
            assert truth.request[name] == value
        for name, value in ex.response.items():
            assert truth.response[name] == value
        assert ex.status == 200                          # :status 200 is in the static table
    assert exchanges[0].path == exchanges[1].path == "/pkg.Svc/Other"
    assert exchanges[0].method == "POST"                 # static table
    assert parser.losses[LOSS_HEADER_UNKNOWN] > 0
    assert set(parser.losses) == {LOSS_HEADER_UNKNOWN}


def test_joining_with_streams_open_counts_them_once():
    c = Conversation()
    sid = c.request("/slow")
    c.server.send_headers(sid, [(":status", "200")])
    c.flush_server()
    joined = len(c.chunks)
    for _ in range(3):
        c.server.send_data(sid, b"tick")
        c.flush_server()
    parser = Http2Parser()
    assert feed_all(parser, c.chunks[joined:]) == []
    assert parser.losses == {LOSS_NO_HEADERS: 1}


def test_dynamic_table_size_update_to_zero_makes_the_table_known_again():
    table = HpackTable(complete=False)
    enc = Encoder()
    enc.encode([(":path", "/x"), ("x-a", "1")])            # entries this table never saw
    block = enc.encode([(":path", "/x"), ("x-a", "1")])
    assert table.decode(block) == ({}, 2)                  # both fields are references to entries not seen
    enc.header_table_size = 0
    enc.header_table_size = 4096
    block = enc.encode([(":path", "/x"), ("user-agent", "u")])
    assert table.decode(block) == ({b":path": b"/x", b"user-agent": b"u"}, 0)
    assert table.complete


def test_a_reference_past_a_complete_table_is_an_error():
    table = HpackTable(complete=True)
    try:
        table.decode(bytes([0x80 | 62]))
    except HpackError:
        pass
    else:
        raise AssertionError("decoded an index past the table")
    assert HpackTable(complete=False).decode(bytes([0x80 | 62, 0x82])) == ({b":method": b"GET"}, 1)


def hand_made(encoder=None):
    """A connection start and one stream of hand-made frames after it."""
    enc = encoder or Encoder()
    head = [(True, PREFACE + frame(http2.SETTINGS, 0, 0, b""), 1), (False, frame(http2.SETTINGS, 0, 0, b""), 2)]
    return enc, head


def test_continuation_padding_and_priority():
    enc, chunks = hand_made()
    block = enc.encode([(":method", "GET"), (":path", "/big"), (":scheme", "http"), ("x-big", "v" * 3000)])
    first, second = block[:1000], block[1000:]
    headers = frame(http2.HEADERS, http2.PADDED | http2.PRIORITY_FLAG | http2.END_STREAM, 1,
                    b"\x03" + b"\0\0\0\0\x10" + first + b"\0\0\0")
    chunks.append((True, headers + frame(http2.CONTINUATION, http2.END_HEADERS, 1, second), 3))
    server = Encoder()
    chunks.append((False, frame(http2.HEADERS, http2.END_HEADERS, 1, server.encode([(":status", "200")]))
                   + frame(http2.DATA, http2.PADDED | http2.END_STREAM, 1, b"\x05" + b"hello" + b"\0" * 5), 4))
    parser = Http2Parser()
    assert summary(feed_all(parser, chunks)) == [(1, "GET", "/big", 200, None, 5, 3, 4, None, None, 0)]
    assert not parser.losses


def test_a_header_block_past_the_limit_is_truncated_and_the_table_restarted():
    enc, chunks = hand_made()
    chunks.append((True, frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1,
                               enc.encode([(":method", "GET"), (":path", "/p"), ("x-big", "v" * 5000)])), 3))
    chunks.append((False, frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1,
                                Encoder().encode([(":status", "204")])), 4))
    parser = Http2Parser(limit=2048)
    [ex] = feed_all(parser, chunks)
    assert (ex.method, ex.status, ex.unknown_fields) == (None, 204, 1)
    assert parser.losses == {LOSS_TRUNCATED: 1}
    assert not parser._tables[0].complete


def test_rst_stream_and_goaway():
    c = Conversation()
    cancelled = c.request("/stream", flush=True)
    c.client.reset_stream(cancelled, 8)          # CANCEL
    c.flush_client()
    kept = c.request("/kept")
    dropped = c.request("/late")
    # A graceful shutdown: GOAWAY(last stream id = kept, NO_ERROR), then the answer to kept.
    c.raw(False, frame(http2.GOAWAY, 0, 0, struct.pack(">II", kept, 0)))
    c.respond(kept, 200, b"ok")
    parser = Http2Parser()
    exchanges = feed_all(parser, c.chunks)
    assert [(e.path, e.reset, e.status) for e in exchanges] == [("/stream", 8, None), ("/kept", None, 200)]
    assert dropped == 5 and parser.losses == {LOSS_GOAWAY: 1}


def test_server_push_is_an_exchange_of_its_own():
    c = Conversation()
    sid = c.request("/index.html")
    c.server.push_stream(sid, 2, [(":method", "GET"), (":path", "/style.css"), (":scheme", "http"),
                                  (":authority", "example.test")])
    c.respond(sid, 200, b"<html>")
    c.respond(2, 200, b"body{}")
    parser = Http2Parser()
    assert [(e.stream_id, e.path, e.response_body_size) for e in feed_all(parser, c.chunks)] == [
        (1, "/index.html", 6), (2, "/style.css", 6)]
    assert not parser.losses


def upgrade_conversation():
    c = Conversation(start=False)
    settings_header = c.client.initiate_upgrade_connection()
    c.raw(True, b"GET /up HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/8\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: " + settings_header + b"\r\n\r\n")
    c.server.initiate_upgrade_connection(settings_header)
    c.raw(False, UPGRADE_RESPONSE)
    c.respond(1, 200, b"upgraded")
    c.flush_client()                              # the client's preface, after the 101
    c.respond(c.request("/next"), 200, b"next")
    return c.chunks


def test_h2c_upgrade_makes_stream_1_the_upgraded_request():
    chunks = upgrade_conversation()
    expected = [(1, "GET", "/up", 200, None, 8, 1, 3, None, None, 0), (3, "GET", "/next", 200, None, 4, 5, 6, None, None, 0)]
    parser = Http2Parser()
    exchanges = feed_all(parser, chunks)
    assert summary(exchanges) == expected
    assert exchanges[0].upgraded and exchanges[0].request[b":authority"] == b"example.test"
    assert exchanges[0].request[b"user-agent"] == b"curl/8"
    assert not parser.losses
    assert_chunking_invariant(Http2Parser, chunks, summary, expected)


def test_refused_upgrade_and_plain_http1_are_not_http2():
    parser = Http2Parser()
    assert feed_all(parser, [(True, b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n", 1),
                             (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 2),
                             (True, b"GET /again HTTP/1.1\r\n\r\n", 3)]) == []
    assert parser.losses == {LOSS_UPGRADE_REFUSED: 1}
    parser = Http2Parser()
    assert feed_all(parser, [(True, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1)]) == []
    assert parser.losses == {LOSS_NOT_HTTP2: 1}


def test_gap_inside_data_costs_nothing_else_and_elsewhere_resynchronizes():
    c = Conversation()
    sid = c.request("/big")
    c.respond(sid, 200, b"z" * 10000)
    c.respond(c.request("/next"), 200, b"n")
    chunks = list(c.chunks)
    # The big response: headers and the DATA frame's header captured, 9000 payload bytes not.
    i = next(k for k, (fc, data, _) in enumerate(chunks) if not fc and len(data) > 10000)
    fc, data, ts = chunks[i]
    parser = Http2Parser()
    feed_all(parser, chunks[:i])
    out = parser.feed(False, data[:len(data) - 9000], ts, gap=9000)
    out += feed_all(parser, chunks[i + 1:])
    assert [(e.path, e.response_body_size) for e in out] == [("/big", 10000), ("/next", 1)]
    assert parser.losses == {}             # a gap that takes only DATA payload costs nothing
    # A gap that takes frame headers: the open stream is dropped, the next chunks resynchronize.
    parser = Http2Parser()
    feed_all(parser, chunks[:i])
    assert parser.feed(False, data[:5], ts, gap=len(data) - 5) == []
    out = feed_all(parser, chunks[i + 1:])
    assert [(e.path, e.status) for e in out] == [("/next", 200)]
    assert parser.losses == {LOSS_GAP: 1, LOSS_NO_RESPONSE: 1}


def test_bytes_that_are_no_frame_desynchronize_until_a_chunk_starts_with_one():
    enc, chunks = hand_made()
    chunks.append((True, b"\xff" * 30, 3))
    chunks.append((True, frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1,
                               enc.encode([(":method", "GET"), (":path", "/p")])), 4))
    chunks.append((False, frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1, Encoder().encode([(":status", "200")])), 5))
    parser = Http2Parser()
    assert [(e.path, e.status) for e in feed_all(parser, chunks)] == [("/p", 200)]
    assert parser.losses == {LOSS_DESYNC: 1}


def test_open_streams_are_bounded():
    enc, chunks = hand_made()
    for i in range(http2.MAX_OPEN_STREAMS + 5):
        chunks.append((True, frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 2 * i + 1,
                                   enc.encode([(":method", "GET"), (":path", "/p")])), 3))
    parser = Http2Parser()
    assert feed_all(parser, chunks) == []
    assert len(parser._streams) == http2.MAX_OPEN_STREAMS and parser.losses == {LOSS_TOO_MANY: 5}


def test_server_settings_before_the_client_preface():
    """grpcio's server sends its SETTINGS on accept, before the client's preface arrives."""
    c = Conversation(start=False)
    c.server.initiate_connection()
    early = c.server.data_to_send()
    c.raw(False, early)                        # on the wire first; the client reads it after its preface
    c.client.initiate_connection()
    c.flush_client()
    c.client.receive_data(early)
    c.flush_client()
    c.flush_server()
    c.respond(c.request("/a"), 200, b"a", headers=[("x-indexed", "1")])
    c.respond(c.request("/b"), 200, b"b", headers=[("x-indexed", "1")])
    parser = Http2Parser()
    assert [(e.path, e.status, e.unknown_fields) for e in feed_all(parser, c.chunks)] == [("/a", 200, 0), ("/b", 200, 0)]
    assert not parser.losses
    # Joined mid-connection at a server SETTINGS: the client's frames say it was no preface.
    parser = Http2Parser()
    parser.feed(False, frame(http2.SETTINGS, 0, 0, b""), 0)
    parser.feed(True, frame(http2.PING, 0, 0, b"\0" * 8), 0)
    assert not parser._tables[1].complete and not parser.losses


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=64)), max_size=30))
def test_random_frames_after_a_preface_never_raise(stream):
    """Random bytes read as frames (the connection started): only exchanges or counted losses."""
    parser = Http2Parser(limit=256)
    parser.feed(True, PREFACE, 0)
    parser.feed(False, frame(http2.SETTINGS, 0, 0, b""), 0)
    for i, (from_client, data) in enumerate(stream):
        for ex in parser.feed(from_client, data, i, gap=i % 3):
            assert ex.start_ns <= ex.end_ns
    assert len(parser._streams) <= http2.MAX_OPEN_STREAMS


def test_bytes_lost_from_the_client_cost_the_request_body_size_only():
    """An upload whose second DATA frame the capture cut (4 KiB prefixes): still answered."""
    c = Conversation()
    sid = c.client.get_next_available_stream_id()
    c.client.send_headers(sid, [(":method", "POST"), (":path", "/upload"), (":scheme", "http"), (":authority", "a")])
    c.client.send_data(sid, b"u" * 16000)
    c.client.send_data(sid, b"u" * 16000, end_stream=True)
    upload = c.flush_client()
    c.respond(sid, 201, b"done")
    c.respond(c.request("/after"), 200, b"a")
    chunks = c.chunks
    i = next(k for k, (fc, data, _) in enumerate(chunks) if data is upload)
    parser = Http2Parser()
    out = feed_all(parser, chunks[:i])
    out += parser.feed(True, upload[:4096], chunks[i][2], gap=len(upload) - 4096)
    out += feed_all(parser, chunks[i + 1:])
    assert [(e.path, e.status, e.request_body_size, e.response_body_size) for e in out] == [
        ("/upload", 201, None, 4), ("/after", 200, None, 1)]
    assert parser.losses == {LOSS_GAP: 1}


@pytest.mark.parametrize("lose_start", [False, True])
def test_every_stream_is_an_exchange_or_one_counted_loss_whatever_bytes_are_lost(lose_start):
    """Chunks lost as the ring buffer loses events (each passed as a gap of its length): a request
    alone (its response counts it), a whole exchange in the middle (the next stream id counts it),
    a response alone, the last two exchanges (the close's highest stream id counts them), and
    optionally the connection's first bytes: spans + exchange losses == streams, each counted once."""
    c = Conversation()
    plan = {}                                  # request number -> which of its chunks are lost
    for i in range(1, 9):
        before = len(c.chunks)
        c.respond(c.request(f"/{i}"), 200, b"x")
        plan[i] = list(range(before, len(c.chunks)))
    lost = set(plan[2][:1]) | set(plan[4]) | set(plan[6][1:]) | set(plan[7]) | set(plan[8])
    if lose_start:
        lost.add(0)
    parser = Http2Parser()
    out = []
    for k, (from_client, data, ts) in enumerate(c.chunks):
        out += parser.feed(from_client, b"", ts, len(data)) if k in lost else parser.feed(from_client, data, ts)
    parser.opened(15)
    parser.finish()
    counted = sum(n for reason, n in parser.losses.items() if reason in EXCHANGE_LOSSES)
    assert len(out) + counted == 8, (out, parser.losses)
    assert parser.losses[LOSS_STREAM_LOST] == 4 and parser.losses[LOSS_NO_RESPONSE] == 1
    assert [e.path for e in out] == ["/1", "/3", "/5"]     # /2's response and /6's request came alone


def test_remembered_blocks_decode_as_the_table_stands():
    """decode() remembers blocks: one of static references and insertions gives the same fields
    and leaves the same table on any table (its insertions replayed); one that refers to a
    dynamic entry is remembered for this table's state only, which every insertion changes."""
    insert_path = bytes([0x44, 2]) + b"/a"            # :path /a, literal with incremental indexing (static name 4)
    first, second = HpackTable(complete=True), HpackTable(complete=True)
    assert first.decode(insert_path) == second.decode(insert_path) == ({b":path": b"/a"}, 0)
    assert first.entries == second.entries == [(b":path", b"/a")] and first.size == second.size
    newest = bytes([0xbe])                            # indexed, dynamic entry 62: the newest
    assert first.decode(newest) == ({b":path": b"/a"}, 0)
    first.decode(bytes([0x44, 2]) + b"/b")
    assert first.decode(newest) == ({b":path": b"/b"}, 0)
    fields, _ = first.decode(newest)
    fields[b":path"] = b"changed"                     # callers get their own dict
    assert first.decode(newest) == ({b":path": b"/b"}, 0)
