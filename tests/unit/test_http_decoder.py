"""
The decoder pairs kernel events into exchanges: keep-alive, pipelining, bodies written after the
head (sizes and end times from the kernel's totals), close, client side, and what it drops.
"""
from telegen.ebpf.http_decoder import EV_CLOSE, EV_REQUEST, EV_RESPONSE, EVENT, ROLE_CLIENT, ROLE_SERVER, HttpDecoder

LOOPBACK = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
OFFSET = 1_000_000


def event(kind, ts, data=b"", *, role=ROLE_SERVER, ret=None, enter_ts=None, rx=0, tx=0, last_rx=0, last_tx=0,
          pid=10, fd=5, conn_ts=1):
    """The bytes of one struct http_event as bpf/http.c lays it out."""
    ret = len(data) if ret is None else ret
    return EVENT.pack(ts, pid, kind, enter_ts or ts, conn_ts, rx, tx, last_rx, last_tx, ret,
                      LOOPBACK, 50000, LOOPBACK, 8080, fd, role, len(data)) + data


class Recorder:
    def __init__(self):
        self.exchanges = []
        self.drops = []
        self.decoder = HttpDecoder(self.exchanges.append, self.drops.append, OFFSET)

    def feed(self, *events):
        for e in events:
            self.decoder.handle_bytes(e)


REQ = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_keep_alive_exchanges_complete_when_the_response_fits_one_write():
    """Each response whose head and body are in one write completes at once, with real times."""
    r = Recorder()
    r.feed(event(EV_REQUEST, 100, REQ), event(EV_RESPONSE, 200, RESP, rx=len(REQ)))
    assert len(r.exchanges) == 1
    r.feed(event(EV_REQUEST, 300, REQ, rx=len(REQ), tx=len(RESP)),
           event(EV_RESPONSE, 450, RESP.replace(b"200 OK", b"404 Not Found"), rx=2 * len(REQ), tx=len(RESP)))
    first, second = r.exchanges
    assert (first.start_ns, first.end_ns, first.status, first.response_body_size) == (100 + OFFSET, 200 + OFFSET, 200, 5)
    assert (second.start_ns, second.end_ns, second.status) == (300 + OFFSET, 450 + OFFSET, 404)
    assert first.server_side and first.peer_address == "127.0.0.1" and first.peer_port == 50000 and first.local_port == 8080
    assert r.drops == []


def test_body_written_after_the_head_is_sized_and_timed_by_the_next_event():
    """Head alone in the first write: the next request's totals give the body size and last write time."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    r = Recorder()
    r.feed(event(EV_REQUEST, 100, REQ), event(EV_RESPONSE, 200, head, rx=len(REQ)))
    assert r.exchanges == []
    r.feed(event(EV_REQUEST, 900, REQ, rx=len(REQ), tx=len(head) + 1000, last_tx=350))
    [ex] = r.exchanges
    assert (ex.end_ns, ex.response_body_size) == (350 + OFFSET, 1000)


def test_close_finishes_a_sendfile_response_and_counts_unanswered_requests():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n"
    r = Recorder()
    r.feed(event(EV_REQUEST, 100, REQ), event(EV_RESPONSE, 200, head, rx=len(REQ)),
           event(EV_CLOSE, 900, tx=len(head) + 1048576, last_tx=800, rx=len(REQ)))
    [ex] = r.exchanges
    assert (ex.end_ns, ex.response_body_size) == (800 + OFFSET, 1048576)
    r.feed(event(EV_REQUEST, 100, REQ, conn_ts=2), event(EV_CLOSE, 200, conn_ts=2, rx=len(REQ)))
    assert r.drops == ["no_response"]
    assert len(r.decoder) == 0


def test_pipelined_requests_pair_with_responses_in_order():
    """Two requests in one read, two responses in one write: two exchanges, FIFO order."""
    r = Recorder()
    r.feed(event(EV_REQUEST, 100, REQ + REQ.replace(b"/a", b"/b")),
           event(EV_RESPONSE, 200, RESP + RESP.replace(b"200 OK", b"500 Oops"), rx=2 * len(REQ)))
    assert [(e.target, e.status) for e in r.exchanges] == [("/a", 200), ("/b", 500)]


def test_client_side_starts_at_the_write_and_ends_at_the_read():
    """A client exchange: request written (start = syscall entry), response read (end = its return)."""
    r = Recorder()
    r.feed(event(EV_REQUEST, 120, REQ, role=ROLE_CLIENT, enter_ts=110),
           event(EV_RESPONSE, 300, RESP, role=ROLE_CLIENT, tx=len(REQ)))
    [ex] = r.exchanges
    assert not ex.server_side
    assert (ex.start_ns, ex.end_ns, ex.status) == (110 + OFFSET, 300 + OFFSET, 200)


def test_head_request_and_204_have_no_body():
    r = Recorder()
    r.feed(event(EV_REQUEST, 100, b"HEAD / HTTP/1.1\r\n\r\n"),
           event(EV_RESPONSE, 200, b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"))
    assert [(e.method, e.response_body_size) for e in r.exchanges] == [("HEAD", 0)]


def test_unmatched_and_unparsable_events_are_counted():
    r = Recorder()
    r.feed(event(EV_RESPONSE, 200, RESP))
    r.feed(event(EV_REQUEST, 300, b"BREW /pot HTCPCP/1.0\r\n\r\n", conn_ts=3))
    assert r.drops == ["response_without_request", "unparsed_request"]
    assert r.exchanges == []


def test_expire_finishes_idle_responses_and_forgets_idle_connections():
    """An idle keep-alive connection whose body went out later ends at the head's write."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    r = Recorder()
    r.feed(event(EV_REQUEST, 100, REQ), event(EV_RESPONSE, 200, head, rx=len(REQ)))
    r.decoder.expire(now_mono=150, idle_ns=100)
    assert r.exchanges == []
    r.decoder.expire(now_mono=400, idle_ns=100)
    [ex] = r.exchanges
    assert ex.end_ns == 200 + OFFSET and ex.response_body_size is None
    assert len(r.decoder) == 0
