# -*- test-case-name: tests.unit.test_protocols_postgres -*-
"""
PostgreSQL frontend/backend protocol v3, from the client's connection: one exchange per simple
Query, and one per Execute of the extended protocol (Parse/Bind/Describe/Execute/Sync).

The client's first message (no type byte) is a StartupMessage (database, user), an SSLRequest or
GSSENCRequest (answered by the server with one untyped byte: 'N' goes on in plaintext, 'S'/'G'
switch to encryption: the parser ignores the socket's bytes until the TLS plaintext comes,
start_tls(), which begins with the StartupMessage; none came by the end counts `encrypted`) or a
CancelRequest. Everything else is a typed message:
type byte, int32 length including itself, body. Named statements are remembered from their Parse
so a later Bind/Execute gets its SQL; portals from their Bind. The server's responses are taken in
order: each simple Query ends at ReadyForQuery ('Z'); each Execute ends at its CommandComplete,
EmptyQueryResponse or PortalSuspended, or at an ErrorResponse, after which the server skips to the
Sync (later Executes of that batch did not run and give no exchange). An error before any Execute
of a batch (a Parse that failed) gives one exchange with that Parse's SQL.
"""
import struct
from collections import deque

from telegen.protocols.common import (
    CLIENT, DEFAULT_LIMIT, LOSS_ENCRYPTED, LOSS_NO_RESPONSE, LOSS_UNMATCHED, DbExchange, FramedParser, cstring)

SYSTEM = "postgresql"
PROTOCOL_3 = 196608
SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102
_STARTUP_CODES = frozenset((PROTOCOL_3, SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST))
_MAX_STARTUP = 10000
_MAX_LENGTH = 1 << 30
_INT32 = struct.Struct(">i")
_HEAD = struct.Struct(">ci")

# Message types each side may send, the ones whose body the parser reads, and the ones it skips
# unseen (it needs only the type of the others: their 5-byte header).
_FRONTEND = frozenset(b"BCdcfDEHFPpQSX")
_BACKEND = frozenset(b"R K23CdcGHWDIEVvnNAtS1sZT")
_FRONTEND_READ = frozenset(b"BCEPQ")
_BACKEND_READ = frozenset(b"CEZ")
_FRONTEND_IGNORED = _FRONTEND - frozenset(b"BCDEPQS")
_BACKEND_IGNORED = _BACKEND - frozenset(b"CDEIZs")
_PORTAL_HEAD = 5 + 2 * 64     # a Bind's portal and statement names (NAMEDATALEN 64); parameters are skipped


def classify(client_bytes):
    """True when a client's first bytes are PostgreSQL's: the kernel rule (docs/protocols.md).

    Bytes 0-3: int32 big-endian length L with 8 <= L <= 10000; bytes 4-7: int32 code 196608
    (protocol 3.0 StartupMessage), 80877103 (SSLRequest), 80877104 (GSSENCRequest) or 80877102
    (CancelRequest, L == 16).
    """
    if len(client_bytes) < 8:
        return False
    length, code = struct.unpack_from(">ii", client_bytes)
    if code == CANCEL_REQUEST:
        return length == 16
    return code in _STARTUP_CODES and 8 <= length <= _MAX_STARTUP


class _Op:
    """One Execute (or failed Parse) waiting for its completion."""

    __slots__ = ("sql", "start", "rows", "truncated")

    def __init__(self, sql, start, truncated=False):
        self.sql, self.start, self.rows, self.truncated = sql, start, 0, truncated


class _Batch:
    """Client messages up to a Sync (extended), or one Query (simple): what one ReadyForQuery ends."""

    __slots__ = ("simple", "ops", "done", "closed", "parse_sql", "start", "error", "aborted")

    def __init__(self, simple, start, sql=None, truncated=False):
        self.simple, self.start = simple, start
        self.ops = [_Op(sql, start, truncated)] if simple else []
        self.done = 0          # ops completed (emitted)
        self.closed = simple   # a Sync (or the Query itself) was seen: a ReadyForQuery will end it
        self.parse_sql = None  # the batch's last Parse, for an error that comes before any Execute
        self.error = None
        self.aborted = False


class PostgresParser(FramedParser):
    """One PostgreSQL connection's exchanges (see the module docstring)."""

    system = SYSTEM

    def __init__(self, limit=DEFAULT_LIMIT):
        super().__init__(limit)
        self.database = None
        self.user = None
        self._expect_startup = True   # the client's next message may be untyped (start-up)
        self._await_ssl_answer = False
        self._encrypted = False
        self._in_startup = False      # between a StartupMessage and the first ReadyForQuery
        self._statements = {}
        self._portals = {}
        self._pending = deque()

    # Framing.

    def _consume(self, d, data, ts):
        if self._encrypted:
            return
        if d != CLIENT and self._await_ssl_answer:
            self._await_ssl_answer = False
            if data[:1] != b"N":
                self._encrypted = True
                return
            data = data[1:]
            if not data:
                return
        super()._consume(d, data, ts)

    def start_tls(self):
        """The TLS plaintext begins: the start-up (a StartupMessage) comes again, in it."""
        self._encrypted = self._await_ssl_answer = False
        self._expect_startup = True
        self._reset(0)
        self._reset(1)

    def finish(self):
        if self._encrypted:
            self.losses[LOSS_ENCRYPTED] += 1

    def _head(self, d, buf, pos):
        if len(buf) - pos < 5:
            return None
        if d == CLIENT and self._expect_startup and buf[pos] == 0:    # untyped: a start-up packet
            if len(buf) - pos < 8:
                return None
            if not classify(buf[pos:pos + 8]):
                return False
            length = _INT32.unpack_from(buf, pos)[0]
            return length, length
        kind, length = _HEAD.unpack_from(buf, pos)
        kind = kind[0]
        if length < 4 or length > _MAX_LENGTH or kind not in (_FRONTEND if d == CLIENT else _BACKEND):
            return False
        total = length + 1
        if d == CLIENT:
            if kind == 66:  # 'B'
                return total, min(total, _PORTAL_HEAD)
            return total, total if kind in _FRONTEND_READ else 0 if kind in _FRONTEND_IGNORED else 5
        return total, total if kind in _BACKEND_READ else 0 if kind in _BACKEND_IGNORED else 5

    def _lost(self, d):
        self._reset(d)
        if self._pending:
            self.losses[LOSS_NO_RESPONSE] += len(self._pending)
            self._pending.clear()

    def _message(self, d, msg, total, ts):
        if d == CLIENT:
            expect_startup, self._expect_startup = self._expect_startup, False
            if expect_startup and classify(msg[:8]):
                self._startup(msg)
            else:
                self._frontend(msg, total, ts)
        else:
            self._backend(msg, ts)

    # Client side.

    def _startup(self, msg):
        code = _INT32.unpack_from(msg, 4)[0]
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            self._await_ssl_answer = True
            self._expect_startup = True      # the StartupMessage follows an 'N'
            return
        if code != PROTOCOL_3:
            return
        self._in_startup = True
        fields = msg[8:].split(b"\0")
        params = dict(zip(fields[0::2], fields[1::2]))
        self.user = params.get(b"user", b"").decode("utf-8", "replace") or None
        database = params.get(b"database", b"").decode("utf-8", "replace")
        self.database = database or self.user     # the server's default database is the user name

    def _frontend(self, msg, total, ts):
        kind = msg[0]
        if kind == 81:      # 'Q'
            self._close_open_batch()
            sql, _ = cstring(msg, 5)
            truncated = sql is None     # cut at the buffer limit: keep what there is
            if truncated:
                sql = msg[5:].decode("utf-8", "replace")
            self._pending.append(_Batch(True, ts, sql, truncated))
        elif kind == 80:    # 'P' Parse: statement name, query
            name, at = cstring(msg, 5)
            sql, _ = cstring(msg, at)
            if sql is None:
                sql = msg[at:].decode("utf-8", "replace")
            self._statements[name] = sql
            self._open_batch(ts).parse_sql = sql
        elif kind == 66:    # 'B' Bind: portal name, statement name
            portal, at = cstring(msg, 5)
            statement, _ = cstring(msg, at)
            self._portals[portal] = self._statements.get(statement)
            self._open_batch(ts)
        elif kind == 69:    # 'E' Execute: portal name
            portal, _ = cstring(msg, 5)
            self._open_batch(ts).ops.append(_Op(self._portals.get(portal), ts))
        elif kind == 83:    # 'S' Sync
            self._open_batch(ts).closed = True
        elif kind == 67:    # 'C' Close: 'S' statement or 'P' portal, name
            name, _ = cstring(msg, 6)
            (self._statements if msg[5:6] == b"S" else self._portals).pop(name, None)
            self._open_batch(ts)
        elif kind == 68:    # 'D' Describe
            self._open_batch(ts)

    def _open_batch(self, ts):
        if self._pending and not self._pending[-1].closed:
            return self._pending[-1]
        batch = _Batch(False, ts)
        self._pending.append(batch)
        return batch

    def _close_open_batch(self):
        if self._pending and not self._pending[-1].closed:
            self._pending[-1].closed = True

    # Server side.

    def _backend(self, msg, ts):
        kind = msg[0]
        if self._in_startup:
            if kind == 90:      # 'Z': authentication and start-up are over
                self._in_startup = False
            return
        if not self._pending:
            if kind == 90:
                self.losses[LOSS_UNMATCHED] += 1
            return
        batch = self._pending[0]
        if kind == 68:          # 'D' DataRow
            if batch.done < len(batch.ops):
                batch.ops[batch.done].rows += 1
        elif kind == 67:        # 'C' CommandComplete: "SELECT 3", "INSERT 0 1", "UPDATE 2", "BEGIN"
            if batch.done < len(batch.ops):
                tag = msg[5:-1].rsplit(b" ", 1)
                if len(tag) == 2 and tag[1].isdigit():
                    batch.ops[batch.done].rows = int(tag[1])
            if not batch.simple:
                self._complete(batch, ts)
        elif kind in b"Is":     # EmptyQueryResponse, PortalSuspended
            if not batch.simple:
                self._complete(batch, ts)
        elif kind == 69:        # 'E' ErrorResponse
            code, message = _error_fields(msg)
            if batch.simple:
                batch.error = (code, message)
            elif not batch.aborted:
                if batch.done == len(batch.ops):     # an error before any pending Execute: its Parse failed
                    batch.ops.append(_Op(batch.parse_sql, batch.start))
                self._complete(batch, ts, (code, message))
                batch.aborted = True
        elif kind == 90:        # 'Z' ReadyForQuery
            if batch.simple:
                op = batch.ops[0]
                self._emit_op(op, ts, batch.error, parameterized=False)
            if batch.closed:
                self._pending.popleft()

    def _complete(self, batch, ts, error=None):
        if batch.done < len(batch.ops):
            self._emit_op(batch.ops[batch.done], ts, error, parameterized=True)
            batch.done += 1
        else:
            self.losses[LOSS_UNMATCHED] += 1

    def _emit_op(self, op, ts, error, parameterized):
        code, message = error if error else (None, None)
        self._emit(DbExchange(
            SYSTEM, op.sql, self.database, op.start, ts, parameterized=parameterized,
            error_code=code, error_message=message, rows=None if error else op.rows, truncated=op.truncated))


def _error_fields(msg):
    """SQLSTATE ('C') and message ('M') of an ErrorResponse body."""
    code = message = None
    for field in msg[5:].split(b"\0"):
        if field[:1] == b"C":
            code = field[1:].decode("ascii", "replace")
        elif field[:1] == b"M":
            message = field[1:].decode("utf-8", "replace")
    return code, message
