"""
The decoder pairs kernel events into exchanges: keep-alive, pipelining, bodies written after the
head (sizes and end times from the kernel's totals), close, client side, and what it drops; the
kernel's paired EV_EXCHANGE events decode exactly as their request followed by their response.
"""
from telegen.ebpf.http_decoder import EV_CLOSE, EV_REQUEST, EV_RESPONSE, ROLE_CLIENT, HttpDecoder
from telegen.ebpf.http_probe import CAPTURE_BYTES
from telegen.l7.records import HttpExchange
from tests.support.http_events import OFFSET, REQ, RESP, event, exchange

class Recorder:
    def __init__(self, on_upgrade=None):
        self.exchanges = []
        self.drops = []
        self.decoder = HttpDecoder(lambda *parts: self.exchanges.append(HttpExchange.of(*parts)), self.drops.append,
                                   OFFSET, CAPTURE_BYTES, on_upgrade)

    def feed(self, *events):
        for e in events:
            self.decoder.handle_bytes(e)


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


def test_a_paired_exchange_event_is_one_request_and_its_response():
    """EV_EXCHANGE from a server and from a client: same exchanges as the two separate events give."""
    r = Recorder()
    r.feed(exchange(200, RESP, REQ, 100, rx=len(REQ)),
           exchange(300, RESP, REQ, 120, request_enter_ts=110, role=ROLE_CLIENT, tx=len(REQ), conn_ts=2))
    server, client = r.exchanges
    assert (server.server_side, server.start_ns, server.end_ns, server.target, server.status,
            server.response_body_size) == (True, 100 + OFFSET, 200 + OFFSET, "/a", 200, 5)
    assert (client.server_side, client.start_ns, client.end_ns) == (False, 110 + OFFSET, 300 + OFFSET)
    assert r.drops == []


def test_a_request_sent_alone_before_an_exchange_pairs_first():
    """Pipelining: the kernel sends the earlier request alone, then the later one with the first response."""
    r = Recorder()
    r.feed(event(EV_REQUEST, 100, REQ),
           exchange(300, RESP, REQ.replace(b"/a", b"/b"), 150, rx=2 * len(REQ)),
           event(EV_RESPONSE, 400, RESP.replace(b"200 OK", b"500 Oops"), rx=2 * len(REQ), tx=len(RESP)))
    assert [(e.target, e.status, e.start_ns - OFFSET, e.end_ns - OFFSET) for e in r.exchanges] == [
        ("/a", 200, 100, 300), ("/b", 500, 150, 400)]


def test_an_exchange_whose_request_does_not_parse_is_one_counted_drop():
    r = Recorder()
    r.feed(exchange(200, RESP, b"BREW /pot HTCPCP/1.0\r\n\r\n", 100))
    assert r.drops == ["unparsed_request"]
    assert r.exchanges == []


def test_an_exchange_finishes_the_response_before_it_from_its_totals():
    """A large response in progress ends at the last write before the next exchange's response."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    r = Recorder()
    r.feed(exchange(200, head, REQ, 100, rx=len(REQ)))
    assert r.exchanges == []
    r.feed(exchange(900, RESP, REQ, 800, rx=2 * len(REQ), tx=len(head) + 1000, last_tx=350))
    first, second = r.exchanges
    assert (first.end_ns, first.response_body_size) == (350 + OFFSET, 1000)
    assert (second.start_ns, second.end_ns) == (800 + OFFSET, 900 + OFFSET)


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
POST = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 3000\r\nExpect: 100-continue\r\n\r\n"


def test_a_100_continue_leaves_the_request_waiting_for_its_final_response():
    """Server side, as the kernel pairs it: the held request leaves with the 100; the 201 ends the exchange."""
    r = Recorder()
    r.feed(exchange(200, CONTINUE, POST, 100, rx=len(POST)),
           event(EV_RESPONSE, 500, CREATED, rx=len(POST) + 3000, tx=len(CONTINUE)))
    [ex] = r.exchanges
    assert (ex.method, ex.status, ex.start_ns, ex.end_ns, ex.response_body_size, ex.request_body_size) == (
        "POST", 201, 100 + OFFSET, 500 + OFFSET, 2, 3000)
    assert r.drops == []


def test_a_client_sees_100_continue_then_the_final_status():
    r = Recorder()
    r.feed(event(EV_REQUEST, 120, POST, role=ROLE_CLIENT, enter_ts=110),
           event(EV_RESPONSE, 300, CONTINUE, role=ROLE_CLIENT, tx=len(POST)),
           event(EV_RESPONSE, 700, CREATED, role=ROLE_CLIENT, tx=len(POST) + 3000, rx=len(CONTINUE)))
    [ex] = r.exchanges
    assert (ex.server_side, ex.status, ex.start_ns, ex.end_ns) == (False, 201, 110 + OFFSET, 700 + OFFSET)
    assert r.drops == []


def test_interim_and_final_response_in_one_write_make_one_exchange():
    r = Recorder()
    r.feed(exchange(200, CONTINUE + b"HTTP/1.1 103 Early Hints\r\n\r\n" + CREATED, POST, 100, rx=len(POST)))
    assert [(e.status, e.end_ns - OFFSET, e.response_body_size) for e in r.exchanges] == [(201, 200, 2)]


def test_101_ends_http_on_the_connection():
    """The upgrade exchange is reported with status 101; later bytes that look like HTTP are not parsed."""
    upgrade = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"
    switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    r = Recorder()
    r.feed(exchange(200, switching, upgrade, 100, rx=len(upgrade)),
           event(EV_REQUEST, 300, REQ, rx=len(upgrade)),
           event(EV_RESPONSE, 400, RESP, rx=len(upgrade) + len(REQ), tx=len(switching)),
           event(EV_REQUEST, 300, upgrade, conn_ts=2),
           event(EV_RESPONSE, 350, switching, rx=len(upgrade), conn_ts=2),
           event(EV_RESPONSE, 400, RESP, rx=len(upgrade), tx=len(switching), conn_ts=2),
           event(EV_CLOSE, 500, conn_ts=2))
    assert [(e.target, e.status, e.response_body_size) for e in r.exchanges] == [("/ws", 101, 0), ("/ws", 101, 0)]
    assert r.drops == []
    assert len(r.decoder) == 1


def test_tls_connections_are_told_apart_and_marked_https():
    """HTTP_FLAG_TLS on a connection's events: its exchanges say tls (url.scheme https), a plain one's do not."""
    from telegen.ebpf.http_decoder import FLAG_TLS
    from telegen.signals.http import exchange_attributes

    r = Recorder()
    r.feed(event(EV_REQUEST, 100, REQ, flags=FLAG_TLS, conn_ts=7), event(EV_RESPONSE, 200, RESP, rx=len(REQ), flags=FLAG_TLS, conn_ts=7),
           event(EV_REQUEST, 300, REQ, conn_ts=8), event(EV_RESPONSE, 400, RESP, rx=len(REQ), conn_ts=8))
    tls, plain = r.exchanges
    assert (tls.tls, plain.tls) == (True, False)
    assert exchange_attributes(tls, "/a", None)["url.scheme"] == "https"
    assert exchange_attributes(plain, "/a", None)["url.scheme"] == "http"


def test_a_101_is_offered_to_on_upgrade_which_can_take_the_exchange():
    """on_upgrade gets the connection, its (fd, start), the paired captures and times (None for the
    request when the kernel did not pair them); True (an h2c hand-over) means no HTTP/1 exchange."""
    upgrade = b"GET /up HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n"
    switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n" + b"\0\0\0\x04\0\0\0\0\0"
    offered = []

    def on_upgrade(conn, key, request, request_ns, response, gap, response_ns):
        offered.append((conn.server_side, key, request, request_ns - OFFSET, response, gap, response_ns - OFFSET))
        return key[1] == 1
    r = Recorder(on_upgrade)
    r.feed(exchange(200, switching, upgrade, 100, rx=len(upgrade), ret=len(switching) + 50),
           event(EV_REQUEST, 300, upgrade, conn_ts=2),
           event(EV_RESPONSE, 350, switching, rx=len(upgrade), conn_ts=2))
    assert offered == [(True, (5, 1), upgrade, 100, switching, 50, 200), (True, (5, 2), None, 300, b"", 0, 350)]
    assert [(e.target, e.status) for e in r.exchanges] == [("/up", 101)]     # only the one not taken
