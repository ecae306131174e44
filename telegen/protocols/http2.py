# -*- test-case-name: tests.unit.test_protocols_http2 -*-
"""
HTTP/2 (RFC 9113) and gRPC over it, from the bytes of one connection: one exchange per stream,
the request (client HEADERS, CONTINUATION, DATA) paired with its response (server HEADERS, DATA,
trailers) by stream id, however the streams interleave.

A connection starts with the client preface (`PRI * HTTP/2.0...`, h2c "prior knowledge", the
kernel rule) or with an HTTP/1.1 request carrying `Upgrade: h2c`: then the server's
`101 Switching Protocols` turns it into HTTP/2 and stream 1 is the upgraded request, answered in
frames (RFC 7540 3.2). A server that answers the upgrade request otherwise (HTTP/1.1 200, or frames
from an h2-only port) refused it: the connection is not HTTP/2 and the parser stops (counted
`upgrade_refused`).

Frames are read with the shared framing loop (telegen.protocols.common.FramedParser): 9-byte
header, payload kept only for header blocks (HEADERS, CONTINUATION, PUSH_PROMISE), RST_STREAM,
GOAWAY and SETTINGS (SETTINGS_MAX_FRAME_SIZE bounds the other side's frames); DATA payloads are
counted by length (minus padding) and skipped unbuffered, as are PING, PRIORITY and WINDOW_UPDATE.

Header blocks are decoded with one HPACK (RFC 7541) dynamic table per direction, which this
module keeps itself (static table and Huffman code from the `hpack` package) so that it can say
which entries it does not know. A capture that saw the connection start knows the whole table.
One that joined mid-connection, or lost bytes (a gap, a desync, a block longer than the buffer
limit), does not: the table is restarted empty and *partial*. Entries inserted from then on are
exact (HPACK inserts at the front and evicts from the back, so the k newest entries of the real
table are the k entries seen last, whatever came before), references past them are unknown: the
field is left out of the exchange, never guessed, and the block is counted `header_unknown`. A
dynamic table size update to 0 empties the real table, after which it is fully known again.
Exchanges are emitted with what is known (a span without its unknown fields), not dropped.

Lost bytes (a read or write longer than the capture, events the ring buffer lost: the stream
decoder passes both as gaps) are accounted per exchange, not per gap, so that every stream is a
span or one count in EXCHANGE_LOSSES. A client numbers its streams 1, 3, 5, ... in the order it
opens them, so once the capture knows the numbering from the start (it saw the preface, or lost
only the connection's first bytes), a stream id skipped past bytes the client side lost is a
request lost (`stream_lost`), found when a later stream's request or response comes; bytes lost
from the server may have held the end of any open response, so those streams are counted
`request_without_response`; what is still open at the end is counted too (finish()).
"""
import re
import struct
from dataclasses import dataclass, field
from typing import Optional

from hpack.hpack import HeaderTable
from hpack.huffman_table import decode_huffman
from hpack.exceptions import HPACKDecodingError

from telegen.l7.http import is_interim, parse_requests, parse_responses
from telegen.protocols.common import (
    CLIENT, DEFAULT_LIMIT, LOSS_DESYNC, LOSS_NO_RESPONSE, LOSS_TRUNCATED, LOSS_UNMATCHED, SERVER, FramedParser)

SYSTEM = "http2"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_CLASSIFIED = 12             # bytes of it the kernel rule reads

# Loss reasons of this parser besides the shared ones (docs/protocols.md explains each).
LOSS_HEADER_UNKNOWN = "header_unknown"        # a header block referring to table entries the capture never saw
LOSS_HPACK = "hpack_error"                    # a header block that does not decode: the table is restarted
LOSS_NO_HEADERS = "stream_without_headers"    # frames of a stream whose HEADERS were not seen
LOSS_GOAWAY = "goaway"                        # streams the peer's GOAWAY says it never processed
LOSS_TOO_MANY = "too_many_streams"            # the oldest open stream dropped to bound memory
LOSS_UPGRADE_REFUSED = "upgrade_refused"      # an h2c upgrade the server answered other than with 101
LOSS_NOT_HTTP2 = "not_http2"                  # an HTTP/1.1 start without Upgrade: h2c
LOSS_STREAM_LOST = "stream_lost"              # a stream the client opened in bytes the capture lost
# The reasons counted once per exchange that made no span (the others count damage: a block whose
# fields are unknown, bytes that did not parse): spans + these == the streams the peers exchanged.
EXCHANGE_LOSSES = frozenset((LOSS_STREAM_LOST, LOSS_NO_RESPONSE, LOSS_UNMATCHED, LOSS_NO_HEADERS, LOSS_GOAWAY,
                             LOSS_TOO_MANY))

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
_FRAME = struct.Struct(">BHBBI")
_DEFAULT_MAX_FRAME = 16384
MAX_OPEN_STREAMS = 1024          # per connection; grpc and nginx allow 100-128 concurrent streams
_ORPHANS_KEPT = 1024             # stream ids remembered so an orphan stream is counted once

# Payload bytes kept per frame type (header blocks: all of it); DATA keeps its pad length.
_KEEP = {HEADERS: -1, PUSH_PROMISE: -1, CONTINUATION: -1, SETTINGS: -1, RST_STREAM: 4, GOAWAY: 8}
_MAX_FRAME_SIZE = b"\0\x05"      # SETTINGS_MAX_FRAME_SIZE: bounds the frames the other side sends
# Frame shapes a resynchronization accepts: (stream 0 allowed, stream > 0 allowed, fixed length).
_SHAPES = {DATA: (False, True, None), HEADERS: (False, True, None), PRIORITY: (False, True, 5),
           RST_STREAM: (False, True, 4), SETTINGS: (True, False, None), PUSH_PROMISE: (False, True, None),
           PING: (True, False, 8), GOAWAY: (True, False, None), WINDOW_UPDATE: (True, True, 4),
           CONTINUATION: (False, True, None)}
_FLAGS = {DATA: 0x09, HEADERS: 0x2d, PRIORITY: 0, RST_STREAM: 0, SETTINGS: 0x01, PUSH_PROMISE: 0x0c,
          PING: 0x01, GOAWAY: 0, WINDOW_UPDATE: 0, CONTINUATION: 0x04}

# The fields exchanges keep: pseudo-headers and what spans use. Others are decoded only as far as
# the dynamic table needs them.
WANTED = frozenset((b":method", b":scheme", b":authority", b":path", b":status", b"host", b"user-agent",
                    b"traceparent", b"content-type", b"grpc-status", b"grpc-message"))

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LEN = len(_STATIC)
_ENTRY_OVERHEAD = 32                 # RFC 7541 4.1
_DEFAULT_TABLE = 4096                # SETTINGS_HEADER_TABLE_SIZE's initial value
_TABLE_CAP = 65536                   # table bytes kept at most per direction (more: the table goes partial)
_UNKNOWN = (None, None)
_UPGRADE_H2C = re.compile(rb"\r\nupgrade:[ \t]*h2c[ \t]*\r\n", re.IGNORECASE)
_REQUEST_LINE = re.compile(rb"[A-Z]{3,10} \S+ HTTP/1\.1\r\n")
_MAX_REQUEST_LINE = 8192

# Where each direction stands before its frames: the client's preface or upgrade request, the
# server's 101; then frames; IGNORED once the connection is known not to be HTTP/2.
_START, _H1, _PREFACE, _FRAMES, _IGNORED = range(5)


def classify(client_bytes):
    """True when a client's first bytes start the HTTP/2 connection preface: the kernel rule.

    The preface is `PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n` (24 bytes: h2c with prior knowledge, and
    every h2 connection once TLS is decrypted); the rule tests its first 12, `PRI * HTTP/2`, all the
    kernel's classifier reads (L7_HEAD). An h2c Upgrade starts as HTTP/1.1 (docs/protocols.md).
    """
    return client_bytes[:_CLASSIFIED] == PREFACE[:_CLASSIFIED]


def upgrade_request_gap(head):
    """For an HTTP/1.1 request capture (the start of a connection): the bytes of its body the capture
    does not hold (the parser skips them by length), or None when it is no h2c upgrade request
    whose head the capture holds whole."""
    end = head.find(b"\r\n\r\n")
    if end < 0 or not _UPGRADE_H2C.search(head, 0, end + 4):
        return None
    heads = parse_requests(head[:end + 4])
    if not heads:
        return None
    return max(0, end + 4 + (heads[0].content_length or 0) - len(head))


class HpackError(Exception):
    """A header block that does not decode against the table: the table is not the peer's."""


class HpackTable:
    """One direction's HPACK decoding state (RFC 7541), as far as the capture knows it.

    `entries` is the dynamic table newest first, of (name, value) pairs; a None name or value was
    not seen (its entry was inserted by a field whose name the table did not know). `complete`
    says the table is all there is: a reference past it is an error, where in a partial table it
    is an unknown field.
    """

    __slots__ = ("entries", "size", "max_size", "complete", "_memo")

    def __init__(self, complete):
        self.entries = []
        self.size = 0
        # A partial table evicts only past the cap: keeping entries the peer evicted is harmless,
        # evicting ones it still refers to would make them unknown.
        self.max_size = _DEFAULT_TABLE if complete else _TABLE_CAP
        self.complete = complete
        self._memo = {}               # block -> decode() result for the table as it is now

    def decode(self, block):
        """(wanted fields as {name: value}, number of fields that could not be known).

        Peers send the same blocks over and over (a client's requests for one path, a server's
        responses within a second), so results are remembered: a block that refers to no dynamic
        entry is a function of its bytes (any table, any connection: _STATIC_BLOCKS, its insertions
        replayed), one that refers to some but inserts none is one of this table's state
        (`_memo`, emptied whenever the table changes). Size updates are never remembered.
        """
        hit = _STATIC_BLOCKS.get(block) or self._memo.get(block)
        if hit is not None:
            fields, unknown, inserted = hit
            for name, value in inserted:
                self._insert(name, value)
            return dict(fields), unknown
        out = {}
        unknown = 0
        inserted = []
        dynamic = resized = False
        pos, n = 0, len(block)
        while pos < n:
            b = block[pos]
            if b & 0x80:                                    # indexed field
                if 0x80 < b <= _STATIC_LEN | 0x80:          # the common cases inline: a static entry,
                    name, value = _STATIC[b - 0x81]
                    pos += 1
                elif 0xbe <= b < 0xff and b - 0xbe < len(self.entries):   # or one of the first 65 dynamic ones
                    name, value = self.entries[b - 0xbe]
                    pos += 1
                    dynamic = True
                else:
                    index, pos = _integer(block, pos, 0x7f)
                    name, value = self._entry(index)
                    dynamic = dynamic or index > _STATIC_LEN
            elif b & 0x40:                                  # literal, inserted in the table
                index, pos = _integer(block, pos, 0x3f)
                name, pos = self._name(block, pos, index)
                value, pos = _string(block, pos)
                dynamic = dynamic or index > _STATIC_LEN
                self._insert(name, value)
                inserted.append((name, value))
            elif b & 0x20:                                  # dynamic table size update
                size, pos = _integer(block, pos, 0x1f)
                self._resize(size)
                resized = True
                continue
            else:                                           # literal, not (or never) indexed
                index, pos = _integer(block, pos, 0x0f)
                name, pos = self._name(block, pos, index)
                value, pos = _string(block, pos, name in WANTED)
                dynamic = dynamic or index > _STATIC_LEN
            if name is None:
                unknown += 1
            elif name in WANTED:
                out[name] = value
        if not resized and len(block) <= _REMEMBERED_BLOCK and (not dynamic or not inserted):
            memo = self._memo if dynamic else _STATIC_BLOCKS
            if len(memo) >= _REMEMBERED_BLOCKS:
                memo.clear()
            memo[block] = (out, unknown, inserted)
            out = dict(out)
        return out, unknown

    def _entry(self, index):
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        i = index - _STATIC_LEN - 1
        if 0 <= i < len(self.entries):
            return self.entries[i]
        if self.complete or index == 0:
            raise HpackError(f"index {index} past the table")
        return _UNKNOWN

    def _name(self, block, pos, index):
        if index:
            return self._entry(index)[0], pos
        return _string(block, pos)

    def _insert(self, name, value):
        # An entry whose name is unknown counts only what is known of its size: evicting later
        # than the peer is harmless (the peer never refers to what it evicted), earlier is not.
        if self._memo:
            self._memo.clear()
        self.entries.insert(0, (name, value))
        self.size += _ENTRY_OVERHEAD + len(name or b"") + len(value)
        self._evict()

    def _resize(self, size):
        if self._memo:
            self._memo.clear()
        if size > _TABLE_CAP:
            self.complete = False       # entries past the cap are forgotten: references to them are unknown
            size = _TABLE_CAP
        elif size == 0:
            self.complete = True        # the peer's table is empty too: everything after is known
        self.max_size = size
        self._evict()

    def _evict(self):
        entries = self.entries
        while self.size > self.max_size and entries:
            name, value = entries.pop()
            self.size -= _ENTRY_OVERHEAD + len(name or b"") + len(value or b"")


def _integer(block, pos, mask):
    """An HPACK integer (RFC 7541 5.1) whose prefix is `mask` at pos; (value, next position)."""
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block) or shift > 28:
            raise HpackError("integer past the block")
        b = block[pos]
        pos += 1
        value += (b & 0x7f) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _string(block, pos, decode=True):
    """An HPACK string literal (RFC 7541 5.2); (bytes, or None when not decoded; next position)."""
    if pos >= len(block):
        raise HpackError("string past the block")
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 0x7f)
    end = pos + length
    if end > len(block):
        raise HpackError("string past the block")
    if not decode:
        return None, end
    raw = block[pos:end]
    if not huffman:
        return raw, end
    text = _huffman_cache.get(raw)
    if text is None:
        try:
            text = decode_huffman(raw)
        except HPACKDecodingError as e:
            raise HpackError(str(e)) from None
        if len(raw) <= _CACHED_STRING:
            if len(_huffman_cache) >= _CACHED_STRINGS:
                _huffman_cache.clear()
            _huffman_cache[raw] = text
    return text, end


# decode()'s remembered blocks: up to 1024 bytes, 4096 of them (per table, and shared for blocks
# that refer to no dynamic entry).
_REMEMBERED_BLOCK, _REMEMBERED_BLOCKS = 1024, 4096
_STATIC_BLOCKS: dict = {}

# Huffman-decoded strings by their code: peers repeat names and values (a server's `date` changes
# once a second, user agents and paths repeat across connections), and decoding is the costliest
# part of HPACK in Python. Bounded: 4096 strings of up to 256 bytes.
_CACHED_STRING, _CACHED_STRINGS = 256, 4096
_huffman_cache: dict = {}


@dataclass(slots=True)
class Http2Exchange:
    """One stream: its request and response, times in ns as given to feed().

    `request` and `response` hold the kept fields (WANTED, bytes to bytes) of the request's header
    block and of the response's final header block and trailers; a field the HPACK table could not
    give is absent and counted in `unknown_fields`. Body sizes are DATA payload bytes without
    padding, None when no DATA frame came. `reset` is the RST_STREAM error code of a reset stream.
    `upgraded` marks stream 1 of an h2c upgrade, whose request was HTTP/1.1.
    """

    stream_id: int
    start_ns: int
    end_ns: int = 0
    request: dict = field(default_factory=dict)
    response: dict = field(default_factory=dict)
    status: Optional[int] = None
    request_body_size: Optional[int] = None
    response_body_size: Optional[int] = None
    reset: Optional[int] = None
    unknown_fields: int = 0
    upgraded: bool = False
    final: bool = False             # parsing state: the final (non-1xx) response headers came
    request_done: bool = False      # parsing state: the request's body size is final (END_STREAM, or lost)

    def text(self, name):
        value = self.request.get(name)
        return value.decode("latin-1") if value is not None else None

    @property
    def method(self):
        return self.text(b":method")

    @property
    def path(self):
        return self.text(b":path")

    @property
    def is_grpc(self):
        """Whether the exchange is a gRPC call: its content-type is application/grpc[+codec], or
        (a capture that could not read the content-type) the response has grpc-status or
        grpc-message, fields only gRPC sends."""
        ctype = self.request.get(b"content-type") or self.response.get(b"content-type")
        if ctype is None:
            return b"grpc-status" in self.response or b"grpc-message" in self.response
        return ctype == b"application/grpc" or ctype.startswith((b"application/grpc+", b"application/grpc;"))


class _Block:
    """A header block whose CONTINUATION frames are still coming."""

    __slots__ = ("stream_id", "end_stream", "promised", "parts", "size", "cut")

    def __init__(self, stream_id, end_stream, promised):
        self.stream_id, self.end_stream, self.promised = stream_id, end_stream, promised
        self.parts = []
        self.size = 0
        self.cut = False


class Http2Parser(FramedParser):
    """One HTTP/2 connection's exchanges (see the module docstring).

    Streams are open from their request HEADERS (or PUSH_PROMISE) until the server ends its
    response (END_STREAM) or either side resets them; at most MAX_OPEN_STREAMS at a time.
    """

    system = SYSTEM
    counts_gaps = False      # the exchanges a gap costs are counted instead (the module docstring)

    def __init__(self, limit=DEFAULT_LIMIT):
        super().__init__(limit)
        self._state = [_START, _START]
        self._synced = [False, False]                    # frame boundaries trusted
        self._tables = [HpackTable(False), HpackTable(False)]
        self._block = [None, None]
        self._streams = {}
        self._first_id = [None, None]                    # lowest and highest stream id each side
        self._last_id = [0, 0]                           # opened that the capture saw
        self._orphans = set()
        self._max_frame = [_DEFAULT_MAX_FRAME, _DEFAULT_MAX_FRAME]   # what each side may send
        self._from_start = False                         # the client's first bytes were seen
        self._numbered = False                           # every client stream id from 1 on is accounted for
        self._lossy = [False, False]                     # each direction lost bytes at least once

    def _consume(self, d, data, ts):
        if self._state[d] != _IGNORED:
            super()._consume(d, data, ts)

    # Framing: what a message is in each state.

    def _head(self, d, buf, pos):
        state = self._state[d]
        if state != _FRAMES:
            head = self._start_head(d, buf, pos, state)
            if head is not True:
                return head
        if len(buf) - pos < 9:
            return None
        hi, lo, ftype, flags, _ = _FRAME.unpack_from(buf, pos)
        length = hi << 16 | lo
        if not self._synced[d]:
            if not _plausible(buf, pos):
                return False
            self._synced[d] = True
        elif length > self._max_frame[d]:
            return False
        if self._block[d] is not None and ftype != CONTINUATION:
            return False
        keep = _KEEP.get(ftype)
        if keep is None:
            if ftype != DATA:
                return 9 + length, 0
            return 9 + length, 10 if flags & PADDED else 9
        return 9 + length, 9 + (length if keep < 0 else min(keep, length))

    def _start_head(self, d, buf, pos, state):
        """The first messages of a direction; True when frames begin at pos."""
        if d == CLIENT:
            if state == _START or state == _PREFACE:
                have = buf[pos:pos + 24]
                if have == PREFACE:
                    return 24, 24
                if len(have) < 24 and PREFACE.startswith(have):
                    return None
                if state == _START:
                    line = _request_line(buf, pos)
                    if line is None:
                        return None
                    if line:
                        return self._h1_head(buf, pos, request=True)
            self._start_frames(CLIENT)
            # A server SETTINGS seen before was not its preface then, just a settings change.
            self._tables[SERVER].complete = False
            return True
        if state == _H1:
            if buf[pos:pos + 7] == b"HTTP/1."[:len(buf) - pos]:
                return self._h1_head(buf, pos, request=False)
            self._refused()                     # not even HTTP/1.1: an h2-only port (nginx) ends it
            return len(buf) - pos, 0
        # The server's first frame is its SETTINGS (its preface) when the capture saw the start.
        # Servers may send it before the client's preface arrives (grpcio does): until the
        # client's first bytes tell, a SETTINGS first is taken for the start.
        if len(buf) - pos < 9:
            return None
        settings_first = buf[pos + 3] == SETTINGS and not buf[pos + 4] & ACK
        self._start_frames(d, settings_first and (self._from_start or self._state[CLIENT] == _START))
        return True

    def _h1_head(self, buf, pos, request):
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return None
        head_len = end + 4 - pos
        if not request:
            return head_len, head_len
        heads = parse_requests(buf[pos:end + 4])
        body = (heads[0].content_length or 0) if heads else 0
        return head_len + body, head_len

    def _start_frames(self, d, at_start=False):
        """Frames from here; `at_start` when the direction is known from its first byte."""
        self._state[d] = _FRAMES
        self._synced[d] = at_start
        self._tables[d] = HpackTable(at_start)

    # Messages.

    def _message(self, d, msg, total, ts):
        state = self._state[d]
        if state == _FRAMES:
            self._frame(d, msg, total, ts)
        elif d == CLIENT and msg == PREFACE:
            if state == _START:
                self._from_start = self._numbered = True
                self._first_id = [1, 2]
            self._start_frames(CLIENT, True)
        elif d == CLIENT:
            self._upgrade_request(msg, total, ts)
        else:
            self._upgrade_response(msg, ts)

    def _upgrade_request(self, head, total, ts):
        if not _UPGRADE_H2C.search(head):
            self.losses[LOSS_NOT_HTTP2] += 1
            self._state = [_IGNORED, _IGNORED]
            return
        req = parse_requests(head)[0]
        ex = Http2Exchange(1, ts, upgraded=True, request_done=True)
        ex.request = {b":method": req.first.encode("ascii"), b":path": req.second.encode("latin-1"),
                      b":scheme": b"http"}
        for name in (b"host", b"user-agent", b"traceparent"):
            if name in req.headers:
                ex.request[b":authority" if name == b"host" else name] = req.headers[name]
        if total > len(head):
            ex.request_body_size = total - len(head)
        self._streams[1] = ex
        self._first_id = [1, 2]
        self._last_id[CLIENT] = 1
        self._from_start = self._numbered = True
        self._state = [_PREFACE, _H1]

    def _upgrade_response(self, head, ts):
        responses = parse_responses(head)
        status = responses[0].first if responses else None
        if status is not None and is_interim(status):
            return
        if status != 101:
            self._refused()
            return
        self._state[SERVER] = _START

    def _refused(self):
        self.losses[LOSS_UPGRADE_REFUSED] += 1
        self._streams.clear()
        self._state = [_IGNORED, _IGNORED]

    def _frame(self, d, msg, total, ts):
        _, _, ftype, flags, sid = _FRAME.unpack_from(msg)
        sid &= 0x7fffffff
        length = total - 9
        if ftype == DATA:
            size = length - (msg[9] + 1 if flags & PADDED and len(msg) > 9 else 0)
            self._data(d, sid, size, flags & END_STREAM, ts)
        elif ftype == HEADERS or ftype == PUSH_PROMISE:
            start = 9
            end = total
            if flags & PADDED:
                end -= msg[9] if len(msg) > 9 else total
                start += 1
            promised = None
            if ftype == HEADERS and flags & PRIORITY_FLAG:
                start += 5
            elif ftype == PUSH_PROMISE:
                promised = int.from_bytes(msg[start:start + 4], "big") & 0x7fffffff
                start += 4
            if end < start:                 # padding or fields longer than the frame
                self._lose_framing(d)
                return
            end_stream = ftype == HEADERS and flags & END_STREAM
            if flags & END_HEADERS and len(msg) >= end and end - start <= self.limit:    # a whole block in one frame
                self._headers(d, sid, promised, end_stream, self._decode(d, msg[start:end]), ts)
                return
            self._fragment(d, _Block(sid, end_stream, promised), msg, start, end, flags, ts)
        elif ftype == CONTINUATION:
            if self._block[d] is None:
                # The HEADERS this continues were missed (a capture that joined between them): the
                # entries the block inserted are unknown, so the table is restarted.
                self._tables[d] = HpackTable(False)
                self._orphan(sid, LOSS_NO_HEADERS)
                return
            self._fragment(d, self._block[d], msg, 9, total, flags, ts)
        elif ftype == RST_STREAM:
            ex = self._streams.pop(sid, None)
            if ex is None:
                self._orphan(sid, LOSS_NO_HEADERS)
                return
            ex.reset = int.from_bytes(msg[9:13], "big")
            self._finish(ex, ts)
        elif ftype == SETTINGS:
            for at in range(9, len(msg) - 5, 6):
                if msg[at:at + 2] == _MAX_FRAME_SIZE:
                    self._max_frame[1 - d] = int.from_bytes(msg[at + 2:at + 6], "big")
        elif ftype == GOAWAY:
            self._goaway(d, int.from_bytes(msg[9:13], "big") & 0x7fffffff)

    def _fragment(self, d, block, msg, start, end, flags, ts):
        """Add one frame's part of a header block; decode the block at END_HEADERS."""
        if block.stream_id != int.from_bytes(msg[5:9], "big") & 0x7fffffff:
            self._lose_framing(d)
            return
        if len(msg) < end or block.size + end - start > self.limit:
            if not block.cut:
                self.losses[LOSS_TRUNCATED] += 1
            block.cut = True
            block.parts = []
        else:
            block.parts.append(msg[start:end])
            block.size += end - start
        if not flags & END_HEADERS:
            self._block[d] = block
            return
        self._block[d] = None
        decoded = self._decode(d, None if block.cut else b"".join(block.parts))
        self._headers(d, block.stream_id, block.promised, block.end_stream, decoded, ts)

    def _headers(self, d, sid, promised, end_stream, decoded, ts):
        """A decoded header block: a request, a push's request, a response, or trailers."""
        fields, unknown = decoded
        if promised is not None:
            self._open(promised, fields, unknown, ts, SERVER).request_done = True
        elif d == CLIENT:
            self._request_headers(sid, fields, unknown, end_stream, ts)
        else:
            self._response_headers(sid, fields, unknown, end_stream, ts)

    def _decode(self, d, block):
        """The block's wanted fields and unknown count; a block that cannot be decoded (None: cut at
        the buffer limit, or not HPACK against this table) leaves the table partial and every field unknown."""
        table = self._tables[d]
        if block is not None:
            try:
                fields, unknown = table.decode(block)
            except HpackError:
                self.losses[LOSS_HPACK] += 1
            else:
                if unknown:
                    self.losses[LOSS_HEADER_UNKNOWN] += 1
                return fields, unknown
        self._tables[d] = HpackTable(False)
        return {}, 1

    def _request_headers(self, sid, fields, unknown, end_stream, ts):
        ex = self._streams.get(sid)
        if ex is not None:                  # request trailers
            ex.request_done = ex.request_done or bool(end_stream)
        elif sid > self._last_id[CLIENT] and sid & 1:
            self._open(sid, fields, unknown, ts, CLIENT).request_done = bool(end_stream)

    def _open(self, sid, fields, unknown, ts, side):
        if side == CLIENT and self._numbered and self._lossy[CLIENT]:
            self._stream_lost(sid, 0)
        if len(self._streams) >= MAX_OPEN_STREAMS:
            self._streams.pop(next(iter(self._streams)))
            self.losses[LOSS_TOO_MANY] += 1
        if self._first_id[side] is None:
            self._first_id[side] = sid
        self._last_id[side] = max(self._last_id[side], sid)
        ex = self._streams[sid] = Http2Exchange(sid, ts, request=fields, unknown_fields=unknown)
        return ex

    def _response_headers(self, sid, fields, unknown, end_stream, ts):
        ex = self._streams.get(sid)
        if ex is None:
            self._orphan(sid, LOSS_UNMATCHED)
            return
        ex.unknown_fields += unknown
        if not ex.final:
            status = fields.get(b":status")
            if status is not None and status.isdigit():
                ex.status = int(status)
                if is_interim(ex.status):
                    return
            ex.final = True
        ex.response.update(fields)
        if end_stream:
            del self._streams[sid]
            self._finish(ex, ts)

    def _data(self, d, sid, size, end_stream, ts):
        ex = self._streams.get(sid)
        if ex is None:
            self._orphan(sid, LOSS_NO_HEADERS)
            return
        if d == CLIENT:
            if not ex.request_done:
                ex.request_body_size = (ex.request_body_size or 0) + size
                ex.request_done = bool(end_stream)
            return
        ex.response_body_size = (ex.response_body_size or 0) + size
        if end_stream:
            del self._streams[sid]
            self._finish(ex, ts)

    def _orphan(self, sid, reason):
        """A frame of a stream not open: closed already (silent), or opened before the capture
        (or its HEADERS were lost): counted once per stream."""
        side = CLIENT if sid & 1 else SERVER
        if side == CLIENT and self._numbered and sid > self._last_id[CLIENT]:
            self.opened(sid)
            return
        first = self._first_id[side]
        if sid == 0 or sid in self._orphans or (first is not None and first <= sid <= self._last_id[side]):
            return
        self._forget([sid])
        self.losses[reason] += 1

    def _stream_lost(self, sid, this):
        """Client stream ids below sid and past the last one seen: requests lost in bytes the
        capture did not carry (`this`: 1 when sid itself is one, a stream seen only by its response)."""
        lost = (sid - 1) // 2 - (self._last_id[CLIENT] + 1) // 2 + this
        if lost > 0:
            self.losses[LOSS_STREAM_LOST] += lost

    def _forget(self, sids):
        """Remember streams whose later frames are not to be counted again (a bounded set)."""
        if len(self._orphans) + len(sids) > _ORPHANS_KEPT:
            self._orphans.clear()
        self._orphans.update(sids)

    def _goaway(self, d, last_id):
        """Streams the sender of GOAWAY never processed (ids past last_id, opened by the other side)."""
        opener = SERVER if d == CLIENT else CLIENT
        for sid in [s for s in self._streams if s > last_id and (s & 1) == (opener == CLIENT)]:
            del self._streams[sid]
            self.losses[LOSS_GOAWAY] += 1

    def _finish(self, ex, ts):
        ex.end_ns = ts
        self._emit(ex)

    def opened(self, last_stream):
        if self._numbered and last_stream > self._last_id[CLIENT]:
            self._stream_lost(last_stream, 1)
            self._last_id[CLIENT] = last_stream

    def finish(self):
        """Streams still open when the connection ends never got their response."""
        if self._streams:
            self.losses[LOSS_NO_RESPONSE] += len(self._streams)
            self._streams.clear()

    # Losses.

    def _gap(self, d, nbytes):
        if d == CLIENT and self._state[CLIENT] == _START and not self._buf[CLIENT]:
            # The connection's first bytes were lost (the kernel classified it by its preface, so
            # this is its start): its streams are still numbered from 1.
            self._numbered = True
            self._first_id = [1, 2]
        super()._gap(d, nbytes)

    def _lose_framing(self, d):
        self.losses[LOSS_DESYNC] += 1
        self._lost(d)

    def _lost(self, d):
        """The direction's frame boundaries and HPACK table can no longer be trusted. Bytes lost
        from the client cost the open requests their body sizes (unknown from here: None), and
        their responses still come; bytes lost from the server may have held the end of any open
        response, so those streams are dropped."""
        self._reset(d)
        self._lossy[d] = True
        if self._state[d] != _IGNORED:
            self._state[d] = _FRAMES
        self._synced[d] = False
        self._tables[d] = HpackTable(False)
        self._block[d] = None
        if d == CLIENT:
            for ex in self._streams.values():
                if not ex.request_done:
                    ex.request_body_size = None
                    ex.request_done = True
        elif self._streams:
            self.losses[LOSS_NO_RESPONSE] += len(self._streams)
            self._forget(list(self._streams))
            self._streams.clear()


def _request_line(buf, pos):
    """Whether an HTTP/1.1 request line starts at pos; None while its line end has not come."""
    if not 65 <= buf[pos] <= 90:            # 'A'-'Z': not a method
        return False
    eol = buf.find(b"\r\n", pos, pos + _MAX_REQUEST_LINE)
    if eol < 0:
        return None if len(buf) - pos < _MAX_REQUEST_LINE else False
    return _REQUEST_LINE.match(buf, pos, eol + 2) is not None


def _plausible(buf, pos):
    """Whether the frame header at pos (and the next one, when buf holds it) could start a frame:
    how a capture that joined mid-connection or lost bytes finds frame boundaries again."""
    for _ in range(2):
        if len(buf) - pos < 9:
            return True
        hi, lo, ftype, flags, sid = _FRAME.unpack_from(buf, pos)
        length = hi << 16 | lo
        shape = _SHAPES.get(ftype)
        if shape is None or sid >> 31 or length > _DEFAULT_MAX_FRAME or flags & ~_FLAGS[ftype]:
            return False
        zero_ok, nonzero_ok, fixed = shape
        if not (zero_ok if sid == 0 else nonzero_ok) or (fixed is not None and length != fixed):
            return False
        if ftype == SETTINGS and length % 6:
            return False
        pos += 9 + length
    return True
