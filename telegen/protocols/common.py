"""
What every database protocol parser shares: the exchange record, loss counting, and the framing
loop of a length-prefixed protocol (PostgreSQL, MySQL).

A parser is fed each direction's bytes in the order the connection carried them, in chunks that
may split a message anywhere. It never invents: a message whose start it did not see is dropped
and counted, a response with no request is counted and not paired. After a framing error or a gap
it resynchronizes at the start of a later chunk (kernel captures start at syscall boundaries, which
is where clients and servers start messages). Buffers are bounded: a message longer than the limit
keeps only its head (what the parser needs: statement text, error fields) and the rest is skipped
without being held in memory.
"""
from collections import Counter
from dataclasses import dataclass
from typing import Optional

CLIENT, SERVER = 0, 1
DEFAULT_LIMIT = 65536    # bytes of one message a parser keeps; longer ones are truncated (counted)

# Loss reasons (docs/protocols.md explains each).
LOSS_DESYNC = "desync"                        # bytes that did not parse as a message start
LOSS_UNMATCHED = "response_without_request"   # a response whose request was not seen
LOSS_NO_RESPONSE = "request_without_response"  # requests dropped when the response stream broke
LOSS_TRUNCATED = "truncated"                  # a message kept only up to the buffer limit
LOSS_GAP = "gap"                              # bytes the capture reported but did not carry
LOSS_ENCRYPTED = "encrypted"                  # switched to TLS and no plaintext came (counted at its end)


@dataclass(slots=True)
class DbExchange:
    """One database operation and its outcome, times in ns as given to feed().

    `query` is the statement text as the client sent it (SQL, or the Redis command line), not yet
    sanitized; `parameterized` says the text came with bound parameters (PostgreSQL extended
    protocol, MySQL prepared statements), which the conventions ask to keep unsanitized.
    `command` names a protocol command when there is no statement text to take one from (Redis).
    """

    system: str
    query: Optional[str]
    namespace: Optional[str]
    start_ns: int
    end_ns: int
    command: Optional[str] = None
    parameterized: bool = False
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    rows: Optional[int] = None
    truncated: bool = False

    @property
    def failed(self):
        return self.error_code is not None or self.error_message is not None


class ConnectionParser:
    """Base of the per-connection parsers: direction buffers, losses, emitted exchanges.

    feed() returns the exchanges the new bytes completed. `losses` counts by reason; the framework
    adds them to its per-protocol loss counters.
    """

    system = ""
    # Every gap counts `gap` once. False: only one that cost more than a payload being skipped
    # (FramedParser; HTTP/2, where a read holds frames of many streams, counts what it cost per exchange).
    counts_gaps = True

    def __init__(self, limit=DEFAULT_LIMIT):
        self.limit = limit
        self.losses = Counter()
        self._out = []

    def feed(self, from_client, data, ts_ns, gap=0):
        """Parse `data` from one direction, seen at ts_ns; `gap` bytes followed it but were not captured."""
        d = CLIENT if from_client else SERVER
        if data:
            self._consume(d, data, ts_ns)
        if gap:
            if self.counts_gaps:
                self.losses[LOSS_GAP] += 1
            self._gap(d, gap)
        out, self._out = self._out, []
        return out

    def start_tls(self):
        """The bytes from now on are the connection's TLS plaintext (the OpenSSL uprobes).

        A protocol that asks for TLS in clear (PostgreSQL, MySQL) reads its start-up again from
        them; the others (Redis over TLS, whose plaintext is all the parser ever sees) go on.
        """

    def opened(self, last_stream):
        """The kernel saw the client open streams up to id `last_stream` (HTTP/2; at the close):
        a parser with stream ids counts those it never saw."""

    def finish(self):
        """The connection ended (closed, or forgotten idle): count what it left unread."""

    def _emit(self, exchange):
        self._out.append(exchange)

    def _consume(self, d, data, ts_ns):
        raise NotImplementedError

    def _gap(self, d, nbytes):
        raise NotImplementedError


class FramedParser(ConnectionParser):
    """A protocol whose messages start with a header giving their length.

    Subclasses give _head(d, buf, pos) -> None (header incomplete), False (not a message start) or
    (total length, bytes worth keeping); and _message(d, msg, total, ts) for each message, where
    msg holds at most the bytes worth keeping (a message with none worth keeping is skipped
    without a call). _lost(d) tells the subclass its pairing state for a
    direction can no longer be trusted.
    """

    def __init__(self, limit=DEFAULT_LIMIT):
        super().__init__(limit)
        self._buf = [b"", b""]
        self._skip = [0, 0]

    def _consume(self, d, data, ts):
        skip = self._skip[d]
        if skip:
            if skip >= len(data):
                self._skip[d] = skip - len(data)
                return
            data = data[skip:]
            self._skip[d] = 0
        elif self._buf[d]:
            data = self._buf[d] + data
        self._buf[d] = b""
        pos, n = 0, len(data)
        while pos < n:
            head = self._head(d, data, pos)
            if head is None:
                break
            if head is False:
                self.losses[LOSS_DESYNC] += 1
                self._lost(d)
                return
            total, keep = head
            end = pos + total
            if end <= n:
                if keep:
                    self._message(d, data[pos:pos + keep] if keep < total else data[pos:end], total, ts)
                pos = end
                continue
            avail = n - pos
            if keep <= avail or avail >= self.limit:
                if keep > avail:
                    self.losses[LOSS_TRUNCATED] += 1
                if keep:
                    self._message(d, data[pos:pos + min(keep, avail, self.limit)], total, ts)
                self._skip[d] = end - n
                return
            break
        if n - pos > self.limit:   # a header that never completes: not this protocol's framing
            self.losses[LOSS_DESYNC] += 1
            self._lost(d)
            return
        self._buf[d] = data[pos:]

    def _gap(self, d, nbytes):
        """Bytes that went by uncaptured: inside the message being skipped they cost nothing."""
        if self._skip[d] >= nbytes and not self._buf[d]:
            self._skip[d] -= nbytes
            return
        if not self.counts_gaps:
            self.losses[LOSS_GAP] += 1
        self._lost(d)

    def _reset(self, d):
        self._buf[d] = b""
        self._skip[d] = 0

    def _head(self, d, buf, pos):
        raise NotImplementedError

    def _message(self, d, msg, total, ts):
        raise NotImplementedError

    def _lost(self, d):
        raise NotImplementedError


def cstring(buf, pos):
    """The NUL-terminated string at pos and the position after its NUL, or (None, len) if unterminated."""
    end = buf.find(b"\0", pos)
    if end < 0:
        return None, len(buf)
    return buf[pos:end].decode("utf-8", "replace"), end + 1
