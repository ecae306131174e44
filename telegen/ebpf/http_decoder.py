# -*- test-case-name: tests.unit.test_http_decoder -*-
"""
Turn the HTTP capture's kernel events (bpf/http_events.h, either capture mode) into exchanges:
one per request/response pair.

The kernel sends an event when a syscall starts a request or a response on an HTTP connection,
and when the connection closes; each event carries the connection's byte totals and last
read/write times *before* that syscall. Usually it holds a request until its response starts and
sends both as one EV_EXCHANGE (the response's event followed by the request's capture), which is
decoded exactly as the request followed by the response. This module keeps per-connection state: requests
waiting for their response (FIFO, so pipelining works), and the response being written. A
response is complete when its head and Content-Length fit in the write that started it;
otherwise (large, chunked or sendfile'd bodies) the next request or the close gives its real
size and end time from the totals. Interim 1xx responses (100 Continue ...) leave their request
waiting for its final response; a 101 Switching Protocols is final and ends HTTP on the
connection: what follows is another protocol, and the connection's later events are ignored.

Per-event cost matters (the Python consumer is the agent's budget): one struct unpack per
event, heads parsed once, addresses formatted once per connection. The common case, an
EV_EXCHANGE on a connection with nothing pending whose response fits its first write, takes a
short path: the request and response captures are parsed once per distinct pair of byte strings,
and the exchange goes out without any per-connection queueing. Exchanges leave as their parts
(connection, parsed request, status, body size, times), so the probe can key its own caches
on them; HttpExchange.of() (telegen.l7.records) makes the record for code that wants one.
"""
import itertools
import socket
import struct
from collections import deque

from telegen.l7.http import SWITCHING_PROTOCOLS, is_interim, parse_requests, parse_responses

EV_REQUEST, EV_RESPONSE, EV_CLOSE, EV_EXCHANGE = 1, 2, 3, 4
ROLE_SERVER, ROLE_CLIENT = 3, 4
FLAG_TLS = 1                 # HTTP_FLAG_TLS: the connection's bytes are TLS plaintext (bpf/tls.h)

# struct http_event without data[] (bpf/http_events.h): header {ts, pid, tid, kind, proto}, 6 u64 + s64,
# two endpoints {addr[16], port, family, pad}, {fd, role, cap_len, flags}; EVENT is the whole of it.
# Fields the decoder does not use are skipped ("x"): every event needs its times, totals and
# connection key (one unpack, _FIXED, which skips the addresses), the addresses only when a
# connection is first seen (two 16-byte strings fewer to build per event).
_TIMES = "QI4xI4x" "QQQQQQq"
_ENDPOINTS = struct.Struct("<16sH6x" "16sH6x")
_KEY = "IIII"
_ENDPOINTS_AT = struct.calcsize("<" + _TIMES)
_FIXED = struct.Struct("<" + _TIMES + "%dx" % _ENDPOINTS.size + _KEY)
EVENT = struct.Struct("<" + _TIMES + _ENDPOINTS.format.lstrip("<") + _KEY)
# What struct http_exchange_event adds after its response (a whole struct http_event with
# data[capture]): the request syscall's entry and exit times and its capture's length, then the capture.
EXCHANGE_TAIL = struct.Struct("<QQI4x")
_DATA_AT = EVENT.size
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_NO_BODY_STATUS = frozenset((204, 304))
PARSE_CACHE = 4096           # distinct request/response heads remembered (parsed heads are immutable)


def format_address(raw):
    """Dotted IPv4 for IPv4-mapped addresses, compressed IPv6 otherwise, None when unknown."""
    if not any(raw):
        return None
    if raw[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


class _Exchange:
    """A request seen, its response maybe started; becomes an HttpExchange when complete."""

    __slots__ = ("req", "start_ns", "status", "resp_head_len", "resp_start_total", "resp_ts")

    def __init__(self, req, start_ns):
        self.req = req
        self.start_ns = start_ns
        self.status = None
        self.resp_head_len = None
        self.resp_start_total = 0
        self.resp_ts = 0


class Connection:
    """
    Per (pid, fd, connection start) state. `endpoint` is a small int naming what every exchange
    on it shares in its telemetry (process, side, addresses, the server's port): connections
    with the same get the same number (HttpDecoder assigns them), a cheap cache key. A server's
    peer port, the client's ephemeral one, is per connection and not part of it.
    """

    __slots__ = ("server_side", "pid", "peer", "peer_port", "local", "local_port", "endpoint",
                 "waiting", "responding", "last_seen", "upgraded", "tls")

    def __init__(self, server_side, pid, peer, peer_port, local, local_port, tls=False):
        self.server_side = server_side
        self.tls = tls                   # HTTP over TLS (plaintext from the OpenSSL uprobes): url.scheme https
        self.pid = pid
        self.peer = peer
        self.peer_port = peer_port or None
        self.local = local
        self.local_port = local_port or None
        self.endpoint = None
        self.waiting = deque()
        self.responding = None
        self.last_seen = 0
        self.upgraded = False            # a 101 answered: no HTTP on it any more


class _Pair:
    """One request head and the one response head that answered it, as one EV_EXCHANGE captured them."""

    __slots__ = ("request", "status", "body", "complete_len")

    def __init__(self, request, response):
        self.request = request
        self.status = response.first
        self.body = _body_size(request, response)
        self.complete_len = _complete_len(response, self.body)


def _body_size(request, response):
    """The response body size its head declares (0 when it cannot have one), None when unknown."""
    if response.first in _NO_BODY_STATUS or response.first < 200 or request.first == "HEAD":
        return 0
    return response.content_length


def _complete_len(response, body):
    """Bytes the response's first write must hold for the whole response to be in it; None when unknown."""
    if response.head_len is None or body is None:
        return None
    return response.offset + response.head_len + body


class HttpDecoder:
    """
    The ring buffer handler of the HTTP probe.

    @param on_exchange: called with each complete exchange as on_exchange(connection, request
        Head, status or None, response body size or None, start_ns, end_ns) (on the reactor thread).
    @param drop: called with a reason for every event or exchange that cannot become a span.
    @param mono_to_epoch: ns to add to bpf_ktime_get_ns() values (computed once at start).
    @param capture: HTTP_CAPTURE, the size of an event's data[] (where an exchange's request part starts).
    @param on_upgrade: called when a 101 answers a request, as on_upgrade(connection, (fd, connection
        start), request capture or None, request start, response capture, bytes of the response's
        write not captured, response ns): True when the connection was handed to another decoder
        (an h2c upgrade: the request's exchange is the HTTP/2 stream 1's, so no HTTP/1 exchange
        is reported). The kernel sends what follows a 101 as the upgraded protocol's events.
        `request capture` is None when the kernel did not pair the two (the request's bytes are gone).
    """

    def __init__(self, on_exchange, drop, mono_to_epoch, capture, on_upgrade=None):
        self._on_exchange = on_exchange
        self._on_upgrade = on_upgrade
        self._drop = drop
        self._offset = mono_to_epoch
        self._tail = EVENT.size + capture
        self._request_at = self._tail + EXCHANGE_TAIL.size
        self._conns = {}
        self._parsed = {}
        self._pairs = {}
        self._endpoints = {}
        self._endpoint_ids = itertools.count()

    def _parse(self, parse, data):
        """
        parse(data), memoized on the exact bytes: load generators, health checks and most API
        clients send identical heads, and hashing the bytes is far cheaper than parsing them.
        """
        key = (parse, data)
        heads = self._parsed.get(key)
        if heads is None:
            if len(self._parsed) >= PARSE_CACHE:
                self._parsed.clear()
            heads = self._parsed[key] = parse(data)
        return heads

    def _pair(self, request_data, response_data):
        """The _Pair of two captures (memoized like _parse), or None when they hold anything but one message each."""
        key = (request_data, response_data)
        pair = self._pairs.get(key, False)
        if pair is False:
            if len(self._pairs) >= PARSE_CACHE:
                self._pairs.clear()
            requests = self._parse(parse_requests, request_data)
            responses = self._parse(parse_responses, response_data)
            simple = len(requests) == 1 and len(responses) == 1 and not is_interim(responses[0].first)
            pair = self._pairs[key] = _Pair(requests[0], responses[0]) if simple else None
        return pair

    def _connection(self, server_side, tls, pid, peer, peer_port, local, local_port):
        """A new Connection, numbered by its endpoint (ids are never reused, even after the bounded map is cleared)."""
        conn = Connection(server_side, pid, format_address(peer), peer_port, format_address(local), local_port, tls)
        shared = (pid, server_side, tls, conn.peer, conn.local, conn.local_port if server_side else conn.peer_port)
        endpoint = self._endpoints.get(shared)
        if endpoint is None:
            if len(self._endpoints) >= PARSE_CACHE:
                self._endpoints.clear()
            endpoint = self._endpoints[shared] = next(self._endpoint_ids)
        conn.endpoint = endpoint
        return conn

    def __len__(self):
        return len(self._conns)

    def handle_bytes(self, raw):
        """The ring buffer handler: decode one event (its bytes)."""
        ts, pid, kind, enter_ts, conn_ts, rx, tx, last_rx, last_tx, ret, fd, role, cap_len, flags = _FIXED.unpack_from(raw)
        key = (pid, fd, conn_ts)
        conn = self._conns.get(key)
        if conn is None:
            if kind == EV_CLOSE:
                return
            conn = self._conns[key] = self._connection(role == ROLE_SERVER, bool(flags & FLAG_TLS), pid,
                                                       *_ENDPOINTS.unpack_from(raw, _ENDPOINTS_AT))
        conn.last_seen = ts
        server = conn.server_side
        if conn.responding is not None:
            # Its end and size come from the bytes flowing towards the client and when they last moved.
            self._finish_responding(conn, tx if server else rx, last_tx if server else last_rx)
        if kind == EV_CLOSE:
            for _ in conn.waiting:
                self._drop("no_response")
            del self._conns[key]
            return
        if conn.upgraded:
            return
        data = raw[_DATA_AT:_DATA_AT + cap_len]
        if kind == EV_REQUEST:
            self._requests(conn, data, ts, enter_ts)
            return
        if kind == EV_EXCHANGE:
            request_enter, request_ts, request_len = EXCHANGE_TAIL.unpack_from(raw, self._tail)
            start = self._request_at
            request_data = raw[start:start + request_len]
            if not conn.waiting:                     # (and nothing is responding: finished above)
                pair = self._pairs.get((request_data, data), False)      # _pair(), its cache hit inlined
                if pair is False:
                    pair = self._pair(request_data, data)
                if pair is not None and pair.complete_len is not None and pair.complete_len <= ret:
                    begin = request_ts if server else request_enter
                    conn.upgraded = pair.status == SWITCHING_PROTOCOLS
                    if conn.upgraded and self._on_upgrade is not None and self._on_upgrade(
                            conn, (fd, conn_ts), request_data, begin + self._offset, data, ret - cap_len,
                            ts + self._offset):
                        return
                    self._on_exchange(conn, pair.request, pair.status, pair.body,
                                      begin + self._offset, ts + self._offset)
                    return
            if not self._requests(conn, request_data, request_ts, request_enter):
                return
        self._responses(conn, (fd, conn_ts), self._parse(parse_responses, data), ret, tx if server else rx, ts)

    def _requests(self, conn, data, exit_ts, enter_ts):
        """Queue the requests a capture starts with; False (counted) when there is none."""
        requests = self._parse(parse_requests, data)
        if not requests:
            self._drop("unparsed_request")
            return False
        # A server sees the request when its read returns; a client starts when it writes.
        start = (exit_ts if conn.server_side else enter_ts) + self._offset
        for req in requests:
            conn.waiting.append(_Exchange(req, start))
        return True

    def _responses(self, conn, key, responses, ret, out_total, ts):
        if not responses:
            self._drop("unparsed_response")
            return
        for resp in responses:
            if not conn.waiting:
                self._drop("response_without_request")
                return
            if is_interim(resp.first):
                continue                         # the request still waits for its final response
            ex = conn.waiting.popleft()
            ex.status = resp.first
            if resp.first == SWITCHING_PROTOCOLS:
                conn.upgraded = True
                if self._on_upgrade is not None:
                    self._on_upgrade(conn, key, None, ex.start_ns, b"", 0, ts + self._offset)
                self._emit(conn, ex, ts, 0)
                return
            ex.resp_head_len = resp.head_len
            ex.resp_start_total = out_total + resp.offset
            ex.resp_ts = ts
            body = _body_size(ex.req, resp)
            complete_len = _complete_len(resp, body)
            if complete_len is not None and complete_len <= ret:
                self._emit(conn, ex, ts, body)
            else:
                conn.responding = ex

    def _finish_responding(self, conn, out_total, out_last):
        """The response in progress (conn.responding) ended before this event: its size and end come from the totals."""
        ex = conn.responding
        conn.responding = None
        sent = out_total - ex.resp_start_total
        body = sent - ex.resp_head_len if ex.resp_head_len is not None else None
        self._emit(conn, ex, max(out_last, ex.resp_ts), body)

    def _emit(self, conn, ex, end_mono, body):
        self._on_exchange(conn, ex.req, ex.status, body, ex.start_ns, end_mono + self._offset)

    def expire(self, now_mono, idle_ns):
        """
        Finish what idle connections hold (a keep-alive connection whose response body went out
        in later writes, then nothing: its end is the response head's write) and forget
        connections idle longer than idle_ns (their close was not seen).
        """
        for key, conn in list(self._conns.items()):
            if now_mono - conn.last_seen < idle_ns:
                continue
            ex = conn.responding
            if ex is not None:
                conn.responding = None
                self._emit(conn, ex, ex.resp_ts, None)
            if not conn.waiting:
                del self._conns[key]
            elif now_mono - conn.last_seen >= 4 * idle_ns:
                for _ in conn.waiting:
                    self._drop("no_response")
                del self._conns[key]
