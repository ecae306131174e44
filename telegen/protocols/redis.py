# -*- test-case-name: tests.unit.test_protocols_redis -*-
"""
Redis RESP2 and RESP3, from the client's connection: one exchange per command, paired with the
replies in order, so a pipeline (N commands, then N replies) gives N exchanges.

Values are read as a stream of lines (a type byte, text, CRLF) and bulk payloads (a length line,
that many bytes, CRLF), with a stack of element counts for aggregates, so nothing bigger than a
line is ever buffered: bulk payloads are skipped, except the client's arguments, kept up to the
buffer limit. A command is an array of bulk strings or an inline line (`PING`). Reply types:
`+ - : $ * _ # , ( ! = % ~ | >`; `-` and `!` are errors (their first word, `ERR`, `WRONGTYPE`,
is the status code). RESP3 push messages (`>`) and attributes (`|`) answer no command and are not
paired, except the pushes by which RESP3 confirms a (P|S)(UN)SUBSCRIBE; nor are RESP2 pub/sub
messages (arrays starting with message/pmessage/smessage) once a SUBSCRIBE has been seen. A
(P|S)SUBSCRIBE/UNSUBSCRIBE of k channels is answered k times.
"""
from collections import deque

from telegen.protocols.common import (
    CLIENT, DEFAULT_LIMIT, LOSS_DESYNC, LOSS_NO_RESPONSE, LOSS_TRUNCATED, LOSS_UNMATCHED,
    ConnectionParser, DbExchange)

SYSTEM = "redis"
_AGGREGATES = {42: 1, 126: 1, 62: 1, 37: 2, 124: 2}     # * ~ > (one element each), % | (key and value)
_BULKS = frozenset(b"$=!")
_SIMPLE = frozenset(b"+-:_#,(")
_REPLY_TYPES = _SIMPLE | _BULKS | frozenset(_AGGREGATES)
_PUSH_KINDS = frozenset((b"message", b"pmessage", b"smessage"))
_SUBSCRIBES = frozenset((b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE",
                         b"SUNSUBSCRIBE"))
_MAX_ARGS = 64          # arguments kept per command (the rest are counted, not kept)


def classify(client_bytes):
    """True when a client's first bytes are a RESP command: the kernel rule.

    `*`, 1 to 6 ASCII digits, CRLF, `$`, an ASCII digit: an array of bulk strings. Inline
    commands are not classified (plain text would match too much).
    """
    if client_bytes[:1] != b"*":
        return False
    eol = client_bytes.find(b"\r\n", 1, 9)
    return (eol > 1 and client_bytes[1:eol].isdigit() and client_bytes[eol + 2:eol + 3] == b"$"
            and client_bytes[eol + 3:eol + 4].isdigit())


class _Direction:
    """Where one direction's value stream stands."""

    __slots__ = ("buf", "stack", "bulk_left", "keep", "parts", "top", "first", "error", "start", "synced", "cut")

    def __init__(self):
        self.buf = b""
        self.stack = []          # elements left in each open aggregate
        self.bulk_left = 0       # payload + CRLF bytes of the current bulk string still to come
        self.keep = False        # whether the current bulk string's bytes are kept
        self.parts = []          # kept bytes of the current bulk string
        self.top = None          # type byte of the top-level value being read
        self.first = []          # client: the command's arguments; server: a reply array's first element
        self.error = None
        self.start = 0
        self.synced = False
        self.cut = False         # an argument was too long to keep


class _Command:
    __slots__ = ("args", "start", "replies", "cut")

    def __init__(self, args, start, replies, cut):
        self.args, self.start, self.replies, self.cut = args, start, replies, cut


class RedisParser(ConnectionParser):
    """One Redis connection's exchanges (see the module docstring).

    `database` is the index selected on the connection; None until a SELECT is seen unless the
    framework saw the connection open (`at_connect`, when it is 0).
    """

    system = SYSTEM

    def __init__(self, limit=DEFAULT_LIMIT, at_connect=False):
        super().__init__(limit)
        self.database = "0" if at_connect else None
        self._dir = (_Direction(), _Direction())
        self._pending = deque()
        self._subscribed = False

    def _consume(self, d, data, ts):
        st = self._dir[d]
        if not st.synced and not st.buf and not st.bulk_left and not st.stack:
            if not self._starts_value(d, data):
                self.losses[LOSS_DESYNC] += 1
                return
            st.synced = True
        if st.buf:
            data = st.buf + data
            st.buf = b""
        pos, n = 0, len(data)
        while pos < n:
            if st.bulk_left:
                take = min(st.bulk_left, n - pos)
                if st.keep:
                    st.parts.append(data[pos:pos + take])
                pos += take
                st.bulk_left -= take
                if not st.bulk_left:
                    value = b"".join(st.parts)[:-2] if st.keep else None
                    st.parts = []
                    self._element(d, st, value, ts)
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > self.limit:
                    self._lose(d, LOSS_DESYNC)
                    return
                st.buf = data[pos:]
                return
            if not self._line(d, st, data[pos:eol], ts):
                self._lose(d, LOSS_DESYNC)
                return
            pos = eol + 2

    def _gap(self, d, nbytes):
        st = self._dir[d]
        if st.bulk_left > nbytes + 2 and not st.buf:
            st.bulk_left -= nbytes      # inside a payload: the value is only shorter
            if st.keep:
                self.losses[LOSS_TRUNCATED] += 1
                st.keep = False
                st.parts = []
            return
        self._lose(d, None)

    @staticmethod
    def _starts_value(d, data):
        if d == CLIENT:
            return data[:1] == b"*" or data[:1].isalpha()
        return data[0] in _REPLY_TYPES

    def _lose(self, d, reason):
        if reason:
            self.losses[reason] += 1
        self._dir[d].__init__()
        if self._pending:
            self.losses[LOSS_NO_RESPONSE] += len(self._pending)
            self._pending.clear()

    def _line(self, d, st, line, ts):
        """One CRLF-terminated line; False when it is not RESP."""
        kind = line[:1]
        if not st.stack and st.top is None:
            st.start = ts
            st.first = []
            st.error = None
            st.cut = False
            if d == CLIENT and kind != b"*":
                st.first = line.split()[:_MAX_ARGS]         # an inline command
                if not st.first:
                    return True
                self._value(d, st, ts)
                return True
            st.top = kind
        t = line[0] if line else -1
        if t in _BULKS:
            size = _int(line)
            if size is None:
                return False
            if size < 0:
                self._element(d, st, None, ts)
                return True
            st.bulk_left = size + 2
            # Kept: a command's arguments, a reply array's first element (a pub/sub message's
            # kind), a top-level bulk error; every other payload is skipped unread.
            if d == CLIENT:
                st.keep = len(st.stack) == 1 and len(st.first) < _MAX_ARGS and size <= self.limit
            else:
                st.keep = (len(st.stack) == 1 and not st.first and size <= 16) or (t == 33 and not st.stack)
            if d == CLIENT and len(st.first) < _MAX_ARGS and size > self.limit:
                self.losses[LOSS_TRUNCATED] += 1
                st.cut = True
            return True
        if t in _AGGREGATES:
            count = _int(line)
            if count is None:
                return False
            if count <= 0:
                self._element(d, st, None, ts)
            else:
                st.stack.append(count * _AGGREGATES[t])
            return True
        if t in _SIMPLE:
            if t == 45 and not st.stack:        # '-' error reply
                st.error = line[1:]
            self._element(d, st, line[1:], ts)
            return True
        return False

    def _element(self, d, st, value, ts):
        """A complete element: a bulk or simple value, or an aggregate whose elements all came."""
        if st.stack:
            if len(st.stack) == 1 and value is not None and (d == CLIENT or not st.first):
                st.first.append(value)
            st.stack[-1] -= 1
            while st.stack and st.stack[-1] == 0:
                st.stack.pop()
                if st.stack:
                    st.stack[-1] -= 1
            if st.stack:
                return
        elif st.top == b"!" and value is not None:
            st.error = value
        self._value(d, st, ts)

    def _value(self, d, st, ts):
        """A complete top-level value: a command, or a reply."""
        top, st.top = st.top, None
        if d == CLIENT:
            self._command(st.first, st.start, st.cut)
            return
        if top == b"|" or (self._subscribed and top == b"*" and st.first and st.first[0].lower() in _PUSH_KINDS):
            return
        if top == b">" and not self._confirms_subscription(st.first):
            return
        if not self._pending:
            self.losses[LOSS_UNMATCHED] += 1
            return
        cmd = self._pending[0]
        cmd.replies -= 1
        if cmd.replies > 0:
            return
        self._pending.popleft()
        self._reply(cmd, st.error, ts)

    def _confirms_subscription(self, push):
        """RESP3 answers (P|S)(UN)SUBSCRIBE with pushes (`>3 subscribe ch 1`): those are replies."""
        return bool(push and self._pending and push[0].upper() in _SUBSCRIBES
                    and self._pending[0].args[:1] and self._pending[0].args[0].upper() in _SUBSCRIBES)

    def _command(self, args, start, cut):
        name = args[0].upper() if args else b""
        replies = 1
        if name in _SUBSCRIBES:
            self._subscribed = True
            replies = max(1, len(args) - 1)
        self._pending.append(_Command(args, start, replies, cut))

    def _reply(self, cmd, error, ts):
        args = cmd.args
        name = args[0].decode("utf-8", "replace").upper() if args else None
        if name == "SELECT" and error is None and len(args) == 2:
            self.database = args[1].decode("ascii", "replace")
        code = message = None
        if error is not None:
            message = error.decode("utf-8", "replace")
            code = message.split(" ", 1)[0]
        query = " ".join(a.decode("utf-8", "replace") for a in args) if args else None
        self._emit(DbExchange(SYSTEM, query, self.database, cmd.start, ts, command=name,
                              error_code=code, error_message=message, truncated=cmd.cut))


def _int(line):
    try:
        return int(line[1:])
    except ValueError:
        return None
