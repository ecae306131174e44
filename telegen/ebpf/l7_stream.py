# -*- test-case-name: tests.unit.test_ebpf_l7_stream -*-
"""
The stream decoder: the user-space half of the L7 capture's stream protocols (bpf/l7_stream.h),
one instance per protocol id in the DecoderRegistry.

The kernel sends every read and write of a classified connection as an EV_DATA event (direction,
connection, bytes moved, a bounded prefix of them) and its close as EV_CLOSE. This decoder keeps
one parser per connection (the protocol's `feed(from_client, data, ts_ns, gap)` class from
telegen.protocols.registry) and feeds it the events in the order the ring buffer delivers them,
which is the order each connection's syscalls returned. What the capture cut off (a read or
write longer than the event's prefix, sendfile) is passed as `gap`, so the parser knows bytes
are missing and resynchronizes instead of misreading, and so are the bytes of calls the kernel
captured nothing of (sendfile: it sends no event for them) and of events the ring
buffer lost (the next event's, or the close's, offsets are past where the last one ended): under a
load the agent cannot follow, a parser counts the exchanges it lost instead of missing them
silently. A close frees the parser; a connection
silent for longer than the idle limit (its close missed: the syscall capture's LRU map evicted
it) is forgotten by expire(). Every loss is counted by reason per protocol: the parsers'
(desync, gap, truncated, response_without_request, ...) and the decoder's own.

TLS: a connection's plaintext from the OpenSSL uprobes comes under the socket's own connection id
with FLAG_TLS. The first such event tells the parser (start_tls()): a PostgreSQL or MySQL parser
that saw the clear request for TLS then reads the start-up that follows from the plaintext. What
the socket carried between that request and the first plaintext (the handshake) the parser
ignores; a connection that never gets plaintext counts `encrypted` once, at its end (finish()).
"""
import struct

from telegen.ebpf.http_decoder import format_address

EV_CLOSE, EV_DATA = 3, 5
# struct l7_data_event without data[]: header {ts, pid, tid, kind, proto}, conn_id, conn_start_ts,
# enter_ts, ret, sent, received, two endpoints {addr[16], port, family, pad}, from_client, server,
# cap_len, flags, max_sid.
EVENT = struct.Struct("<QIIII" "QQQqQQ" "16sH6x" "16sH6x" "HHIII")
FLAG_TLS = 1                   # HTTP_FLAG_TLS: the bytes are TLS plaintext from the OpenSSL uprobes (bpf/tls.h)
MAX_CONNECTIONS = 65536        # parsers held at once; beyond, a new connection is counted and ignored
MAX_HANDOVERS = 4096           # connections handed over by the HTTP/1 decoder whose first event is still to come
MAX_LOST_CLOSES = 4096         # closes from the kernel's l7_lost_closes map waiting for the ring to pass them
LOSS_UPGRADE_UNFOLLOWED = "upgrade_not_followed"    # a 101 whose request the kernel did not pair with it
_IGNORED, _UNFOLLOWED = object(), object()           # hand-over marks: another protocol's upgrade; a lost one


class StreamConnection:
    """One connection's parser and what its spans need of the connection: the peer's address, and
    for a server-side connection (HTTP/2 servers; `server_side`) its own."""

    __slots__ = ("pid", "parser", "peer", "peer_port", "server_side", "local", "local_port", "last_seen", "tls",
                 "next")

    def __init__(self, pid, parser, peer, peer_port, server_side=False, local=None, local_port=None):
        self.pid = pid
        self.parser = parser
        self.peer = peer
        self.peer_port = peer_port or None
        self.server_side = server_side
        self.local = local
        self.local_port = local_port or None
        self.last_seen = 0
        self.tls = False               # its plaintext comes from the TLS uprobes (the parser was told)
        # Per direction (server to client, client to server): the stream offset the next event starts
        # at; None until the first event of a handed-over connection (whose HTTP/1 bytes the kernel counted).
        self.next = [0, 0]


class StreamDecoder:
    """
    @param protocol: the telegen.protocols.registry Protocol (name, new_parser).
    @param on_exchange: called as on_exchange(connection, exchange) for every exchange a parser completes.
    @param loss: called as loss(reason, n) for what could not become an exchange.
    @param mono_to_epoch: ns to add to bpf_ktime_get_ns() values.
    """

    def __init__(self, protocol, on_exchange, loss, mono_to_epoch):
        self.protocol = protocol
        self._on_exchange = on_exchange
        self._loss = loss
        self._offset = mono_to_epoch
        self._conns = {}
        self._handovers = {}        # (connection start, low 32 bits of its id) -> StreamConnection, _IGNORED or _UNFOLLOWED
        self._lost_closes = []      # close() arguments of closes the ring had no room for, until it passed them
        self._newest = 0            # the time of the last event read, and how many came since the last expire()
        self._read = 0
        self.enabled = True

    def __len__(self):
        return len(self._conns)

    def hand_over(self, fd, conn_ts, conn, chunks, counted=False):
        """
        An HTTP/1 connection that switched to this protocol (an h2c upgrade answered 101): its
        parser starts from the HTTP/1 decoder's captures, `chunks` as (from_client, bytes, ns since
        the epoch, gap), and takes the kernel's events of the connection from the next one on.
        `conn` is the HTTP/1 decoder's Connection (pid, side, addresses); None: the upgrade is not
        followed, its events are dropped until the close (counted `upgrade_not_followed` when
        `counted`: an upgrade that may have been h2c). Events name the connection by its id, the
        HTTP/1 decoder by (fd, start), where fd is the id's low 32 bits in both capture modes.
        """
        if len(self._handovers) >= MAX_HANDOVERS:
            self._handovers.clear()
        if conn is None:
            self._handovers[(conn_ts, fd)] = _UNFOLLOWED if counted else _IGNORED
            return
        stream = StreamConnection(conn.pid, self.protocol.new_parser(), conn.peer, conn.peer_port, conn.server_side,
                                  conn.local if conn.server_side else None, conn.local_port)
        stream.next = [None, None]
        for from_client, data, at, gap in chunks:
            for exchange in stream.parser.feed(from_client, data, at, gap):
                self._on_exchange(stream, exchange)
        self._handovers[(conn_ts, fd)] = stream

    def handle_bytes(self, raw):
        """The registry's handler for this protocol: one event (its bytes)."""
        (ts, pid, _tid, kind, _proto, conn_id, conn_ts, enter_ts, ret, sent, received, peer, peer_port, local,
         local_port, from_client, server, cap_len, flags, max_sid) = EVENT.unpack_from(raw)
        key = (conn_id, conn_ts)
        self._newest = ts
        self._read += 1
        if kind == EV_CLOSE:
            self.close(conn_id, conn_ts, ts, sent, received, server, max_sid)
            return
        conn = self._conns.get(key)
        # The traced process sends the client's bytes when it is the client.
        to_server, to_client = (received, sent) if server else (sent, received)
        if not self.enabled:
            self._loss("protocol_disabled", 1)
            return
        if conn is None and self._handovers:
            handed = self._handovers.pop((conn_ts, conn_id & 0xffffffff), None)
            if handed is _UNFOLLOWED:
                self._loss(LOSS_UPGRADE_UNFOLLOWED, 1)
            if handed is _UNFOLLOWED or handed is _IGNORED:
                conn = self._conns[key] = StreamConnection(pid, None, None, None)
            elif handed is not None:
                conn = self._conns[key] = handed
        if conn is None:
            if len(self._conns) >= MAX_CONNECTIONS:
                self._loss("too_many_connections", 1)
                return
            conn = self._conns[key] = StreamConnection(pid, self.protocol.new_parser(), format_address(peer), peer_port,
                                                       bool(server), format_address(local) if server else None,
                                                       local_port)
        conn.last_seen = ts
        if conn.parser is None:
            return                  # an upgrade not followed: its events until the close
        if flags & FLAG_TLS and not conn.tls:
            conn.tls = True
            conn.parser.start_tls()
        data = raw[EVENT.size:EVENT.size + cap_len]
        # A client's request starts when its write began (syscall capture); everything else when the call returned.
        at = (enter_ts if from_client else ts) + self._offset
        self._missed(conn, from_client, to_server if from_client else to_client, at)
        conn.next[from_client] += ret
        for exchange in conn.parser.feed(bool(from_client), data, at, ret - cap_len):
            self._on_exchange(conn, exchange)
        if conn.parser.losses:
            self._drain(conn)

    def close(self, conn_id, conn_ts, ts, sent, received, server, max_sid):
        """A connection's close (its event, or one the ring buffer had no room for, from the kernel's
        l7_lost_closes map): the bytes each way the ring lost before it are gaps, the streams the
        client opened up to max_sid (HTTP/2) are told to the parser, which counts what it never saw."""
        conn = self._conns.pop((conn_id, conn_ts), None)
        if conn is None:
            return
        if conn.parser is not None:
            at = ts + self._offset
            to_server, to_client = (received, sent) if server else (sent, received)
            self._missed(conn, False, to_client, at)
            self._missed(conn, True, to_server, at)
            if max_sid:
                conn.parser.opened(max_sid)
        self._end(conn)

    def lost_close(self, conn_id, conn_ts, ts, sent, received, server, max_sid):
        """A close the ring buffer had no room for (from the kernel's l7_lost_closes map). The
        connection's earlier events may still be in the ring: it is closed by expire() once an
        event from after it was read, or the ring was idle for a whole expiry period."""
        if len(self._lost_closes) < MAX_LOST_CLOSES:
            self._lost_closes.append((conn_id, conn_ts, ts, sent, received, server, max_sid))
        else:
            self._loss("lost_close_dropped", 1)

    def _missed(self, conn, from_client, offset, at):
        """Bytes of one direction the ring buffer lost before `offset` (where an event starts, or the
        close's total): fed to the parser as a gap, which counts what they cost."""
        expected = conn.next[from_client]
        if expected is None or offset >= expected:
            conn.next[from_client] = offset
        if expected is not None and offset > expected:
            for exchange in conn.parser.feed(bool(from_client), b"", at, offset - expected):
                self._on_exchange(conn, exchange)

    def _end(self, conn):
        """A connection is forgotten: its parser's last word (finish()) and its losses counted."""
        if conn.parser is not None:          # None: an upgrade not followed
            conn.parser.finish()
        self._drain(conn)

    def _drain(self, conn):
        """Move a parser's loss counts to the protocol's counters."""
        if conn.parser is None:
            return
        losses = conn.parser.losses
        for reason, n in losses.items():
            self._loss(reason, n)
        losses.clear()

    def expire(self, now_mono, idle_ns):
        """Forget connections silent for idle_ns (their close was not seen); close those whose
        close the ring buffer lost, once the ring has passed them."""
        idle, self._read = not self._read, 0
        waiting, self._lost_closes = self._lost_closes, []
        for args in waiting:
            if idle or args[2] <= self._newest:
                self.close(*args)
            else:
                self._lost_closes.append(args)
        for key, conn in list(self._conns.items()):
            if now_mono - conn.last_seen >= idle_ns:
                self._end(conn)
                del self._conns[key]

    def clear(self):
        """Forget every connection (the protocol was switched off)."""
        for conn in self._conns.values():
            self._end(conn)
        self._conns.clear()
