# -*- test-case-name: tests.unit.test_protocols_mysql -*-
"""
MySQL/MariaDB client/server protocol, from the client's connection: one exchange per COM_QUERY and
per COM_STMT_EXECUTE (its SQL remembered from the COM_STMT_PREPARE whose answer gave the statement
id), and one for a COM_STMT_PREPARE that fails.

Packets are a 3-byte little-endian payload length, a sequence id, the payload; a payload of
0xffffff bytes continues in the next packet. The server speaks first (Initial Handshake, protocol
10, whose version string tells MariaDB from MySQL); the client's HandshakeResponse41 names the
database (CLIENT_CONNECT_WITH_DB), or is an SSLRequest (the rest is TLS: the parser ignores the
socket's bytes until the TLS plaintext comes, start_tls(), whose first packet is the
HandshakeResponse41, sequence id 2; none came by the end counts `encrypted`);
authentication ends at the server's OK or ERR. A command is a client packet with sequence id 0.
Responses are OK (0x00), ERR (0xff: code, SQLSTATE, message) or a result set: column count,
column definitions, an optional EOF, rows, and an EOF or OK terminator (0xfe, payload < 0xffffff);
the SERVER_MORE_RESULTS_EXISTS status flag chains another result. An EOF after column definitions
is recognised by its shape (0xfe, 5 bytes), so the parser needs no capability flags to know whether
CLIENT_DEPRECATE_EOF was negotiated. COM_INIT_DB's OK changes the namespace.
"""
import struct
from collections import deque

from telegen.protocols.common import (
    CLIENT, DEFAULT_LIMIT, LOSS_ENCRYPTED, LOSS_NO_RESPONSE, LOSS_UNMATCHED, DbExchange, FramedParser,
    cstring)

COM_QUIT, COM_INIT_DB, COM_QUERY = 0x01, 0x02, 0x03
COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE = 0x16, 0x17, 0x18, 0x19
_NO_RESPONSE = frozenset((COM_QUIT, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE))
_MAX_COMMAND = 0x1f
CLIENT_CONNECT_WITH_DB, CLIENT_SSL = 0x8, 0x800
CLIENT_SECURE_CONNECTION, CLIENT_PLUGIN_AUTH_LENENC = 0x8000, 0x200000
SERVER_MORE_RESULTS_EXISTS = 0x8
_CONTINUED = 0xffffff
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_PREPARE_OK = struct.Struct("<xIHH")

# Response states.
_FIRST, _COLUMNS, _COLUMNS_EOF, _ROWS, _PREPARE_DEFS = range(5)


def classify(server_bytes):
    """True when a server's first bytes are a MySQL/MariaDB Initial Handshake: the kernel rule.

    Bytes 0-2: payload length 30..1024 (little-endian); byte 3: sequence id 0; byte 4: protocol
    version 10; bytes 5..: the server version, an ASCII digit first.
    """
    if len(server_bytes) < 6:
        return False
    length = server_bytes[0] | server_bytes[1] << 8 | server_bytes[2] << 16
    return 30 <= length <= 1024 and server_bytes[3] == 0 and server_bytes[4] == 10 and 48 <= server_bytes[5] <= 57


def lenenc(buf, pos):
    """A length-encoded integer at pos and the position after it (None when cut short)."""
    first = buf[pos] if pos < len(buf) else None
    if first is None:
        return None, pos
    if first < 0xfb:
        return first, pos + 1
    width = {0xfc: 2, 0xfd: 3, 0xfe: 8}.get(first)
    if width is None or pos + 1 + width > len(buf):
        return None, pos + 1
    return int.from_bytes(buf[pos + 1:pos + 1 + width], "little"), pos + 1 + width


class _Command:
    __slots__ = ("code", "sql", "arg", "start", "rows", "state", "left", "truncated")

    def __init__(self, code, sql, arg, start, truncated=False):
        self.code, self.sql, self.arg, self.start, self.truncated = code, sql, arg, start, truncated
        self.rows = 0
        self.state = _FIRST
        self.left = []       # _COLUMNS: [columns left]; _PREPARE_DEFS: definitions left per block


class MySQLParser(FramedParser):
    """One MySQL/MariaDB connection's exchanges (see the module docstring)."""

    def __init__(self, limit=DEFAULT_LIMIT):
        super().__init__(limit)
        self.system = "mysql"
        self.database = None
        self.user = None
        self._phase = "handshake"     # "handshake" (until the client's response), "auth", "command", "tls"
        self._response_seq = 1        # the HandshakeResponse41's sequence id (2 after an SSLRequest)
        self._seen_server = False
        self._continued = [False, False]
        self._maybe_eof = False       # a 0xfe EOF may follow (prepare definitions) and answers nothing
        self._statements = {}
        self._pending = deque()

    def _consume(self, d, data, ts):
        if self._phase == "tls":
            return
        if d != CLIENT and not self._buf[d] and not self._skip[d]:
            # Server packets are only read as the answer to a command seen, from the start of a
            # chunk (the server writes after reading the command): the rest cannot be framed safely.
            if self._phase == "handshake" and not self._seen_server and len(data) >= 6 and not classify(data):
                self._seen_server = True
                self._phase = "command"      # joined mid-connection
            if self._phase == "command" and not self._pending and not self._maybe_eof:
                self.losses[LOSS_UNMATCHED] += 1
                return
        super()._consume(d, data, ts)

    def start_tls(self):
        """The TLS plaintext begins: the HandshakeResponse41 follows the SSLRequest (sequence id 2)."""
        if self._phase == "tls":
            self._phase = "handshake"
            self._response_seq = 2
        self._reset(0)
        self._reset(1)

    def finish(self):
        if self._phase == "tls":
            self.losses[LOSS_ENCRYPTED] += 1

    def _head(self, d, buf, pos):
        if len(buf) - pos < 4:
            return None
        length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
        total = length + 4
        if d == CLIENT and self._phase == "command" and not self._continued[d]:
            # A command: sequence id 0 and a command byte (MySQL has none above 0x1f).
            if buf[pos + 3] != 0 or (len(buf) - pos > 4 and buf[pos + 4] > _MAX_COMMAND):
                return False
        # Rows and definitions are only looked at for their first bytes (an OK needs at most 21).
        return total, total if length < 64 or d == CLIENT or not self._in_rows() else 32

    def _in_rows(self):
        return bool(self._pending) and self._pending[0].state != _FIRST

    def _lost(self, d):
        self._reset(d)
        self._continued[d] = False
        if self._pending:
            self.losses[LOSS_NO_RESPONSE] += len(self._pending)
            self._pending.clear()

    def _message(self, d, msg, total, ts):
        continued, self._continued[d] = self._continued[d], total - 4 == _CONTINUED
        if continued:
            return                   # the tail of a packet longer than 16 MiB
        payload = msg[4:]
        if d == CLIENT:
            self._client(msg[3], payload, total - 4, ts)
        else:
            self._server(msg[3], payload, total - 4, ts)

    # Client side.

    def _client(self, seq, payload, length, ts):
        if self._phase == "handshake" and seq == self._response_seq and self._seen_server:
            self._handshake_response(payload)
            return
        if self._phase == "auth" or not payload:
            return
        if self._phase == "handshake":
            if seq != 0:
                return
            self._phase = "command"   # joined mid-connection
        code = payload[0]
        if code in _NO_RESPONSE:
            if code == COM_STMT_CLOSE and len(payload) >= 5:
                self._statements.pop(_U32.unpack_from(payload, 1)[0], None)
            return
        sql = arg = None
        if code in (COM_QUERY, COM_STMT_PREPARE):
            sql = payload[1:].decode("utf-8", "replace")
        elif code == COM_STMT_EXECUTE and len(payload) >= 5:
            arg = _U32.unpack_from(payload, 1)[0]
            sql = self._statements.get(arg)
        elif code == COM_INIT_DB:
            arg = payload[1:].decode("utf-8", "replace")
        self._pending.append(_Command(code, sql, arg, ts, truncated=len(payload) < length))

    def _handshake_response(self, payload):
        if len(payload) < 32:
            return
        caps = _U32.unpack_from(payload, 0)[0]
        if caps & CLIENT_SSL and len(payload) == 32:
            self._phase = "tls"
            return
        self._phase = "auth"
        user, pos = cstring(payload, 32)
        self.user = user
        if caps & CLIENT_PLUGIN_AUTH_LENENC:
            size, pos = lenenc(payload, pos)
            pos += size or 0
        elif caps & CLIENT_SECURE_CONNECTION:
            pos += 1 + (payload[pos] if pos < len(payload) else 0)
        else:
            _, pos = cstring(payload, pos)
        if caps & CLIENT_CONNECT_WITH_DB:
            database, _ = cstring(payload, pos)
            self.database = database or None

    # Server side.

    def _server(self, seq, payload, length, ts):
        if not payload:
            return
        first = payload[0]
        if not self._seen_server:
            self._seen_server = True
            if seq == 0 and first == 10 and self._phase == "handshake":
                version, _ = cstring(payload, 1)
                if version and "mariadb" in version.lower():
                    self.system = "mariadb"
                return
            if self._phase == "handshake":
                self._phase = "command"     # joined mid-connection
        if self._phase == "auth":
            if first in (0x00, 0xff):
                self._phase = "command"
            return
        if self._phase != "command":
            return
        if self._maybe_eof:
            self._maybe_eof = False
            if first == 0xfe and length == 5:
                return
        if not self._pending:
            self.losses[LOSS_UNMATCHED] += 1
            return
        cmd = self._pending[0]
        state = cmd.state
        if state == _FIRST:
            if first == 0xff:
                self._finish(cmd, ts, payload)
            elif first == 0x00 and cmd.code == COM_STMT_PREPARE and length >= 12:
                stmt_id, columns, params = _PREPARE_OK.unpack_from(payload)
                self._statements[stmt_id] = cmd.sql
                cmd.left = [n for n in (params, columns) if n]
                cmd.state = _PREPARE_DEFS
                if not cmd.left:
                    self._pending.popleft()
            elif first == 0x00 or first == 0xfe or cmd.code not in (COM_QUERY, COM_STMT_EXECUTE):
                self._ok(cmd, payload, ts)
            elif first == 0xfb:      # LOCAL INFILE request: the client sends a file, then an OK ends it
                pass
            else:
                columns, _ = lenenc(payload, 0)
                cmd.left = [columns or 0]
                cmd.state = _COLUMNS
        elif state == _COLUMNS:
            cmd.left[0] -= 1
            if cmd.left[0] <= 0:
                cmd.state = _COLUMNS_EOF
        elif state == _COLUMNS_EOF and first == 0xfe and length == 5:
            cmd.state = _ROWS        # the classic EOF between definitions and rows
        elif state in (_COLUMNS_EOF, _ROWS):
            cmd.state = _ROWS
            if first == 0xff:
                self._finish(cmd, ts, payload)
            elif first == 0xfe and length < _CONTINUED:
                self._ok(cmd, payload, ts)
            else:
                cmd.rows += 1
        elif state == _PREPARE_DEFS:
            cmd.left[0] -= 1
            if cmd.left[0] == 0:
                cmd.left.pop(0)
                self._maybe_eof = True
                if not cmd.left:
                    self._pending.popleft()

    def _ok(self, cmd, payload, ts):
        """An OK or EOF ends the command's current result; more may follow."""
        if payload[0] == 0xfe and len(payload) == 5:
            status = _U16.unpack_from(payload, 3)[0]
        else:
            affected, pos = lenenc(payload, 1)
            _, pos = lenenc(payload, pos)
            status = _U16.unpack_from(payload, pos)[0] if pos + 2 <= len(payload) else 0
            if payload[0] == 0x00 and affected:
                cmd.rows += affected
        if status & SERVER_MORE_RESULTS_EXISTS:
            cmd.state = _FIRST
            return
        if cmd.code == COM_INIT_DB and payload[0] == 0x00:
            self.database = cmd.arg
        self._finish(cmd, ts)

    def _finish(self, cmd, ts, error=None):
        self._pending.popleft()
        if cmd.code not in (COM_QUERY, COM_STMT_EXECUTE) and not (error and cmd.code == COM_STMT_PREPARE):
            return
        code = message = None
        if error is not None:
            code = str(_U16.unpack_from(error, 1)[0]) if len(error) >= 3 else None
            message = error[9:] if error[3:4] == b"#" else error[3:]
            message = message.decode("utf-8", "replace")
        self._emit(DbExchange(
            self.system, cmd.sql, self.database, cmd.start, ts, parameterized=cmd.code != COM_QUERY,
            error_code=code, error_message=message, rows=None if error else cmd.rows, truncated=cmd.truncated))
