"""The HTTP head parser: pipelined and truncated captures, status lines, traceparent, Host."""
from telegen.l7.http import is_interim, parse_requests, parse_responses, parse_traceparent, split_host


def test_single_request_with_the_headers_spans_need():
    """Request line, version and only the headers spans use are kept; head length is exact."""
    data = (b"POST /orders?id=1 HTTP/1.1\r\nHost: shop:8080\r\nUser-Agent: curl/8\r\n"
            b"X-Other: x\r\nContent-Length: 5\r\n\r\nhello")
    [req] = parse_requests(data)
    assert (req.first, req.second, req.version) == ("POST", "/orders?id=1", "1.1")
    assert req.headers == {b"host": b"shop:8080", b"user-agent": b"curl/8", b"content-length": b"5"}
    assert req.head_len == len(data) - 5
    assert req.content_length == 5


def test_pipelined_requests_with_bodies_are_all_found():
    """Two requests in one read, the first with a body: both parsed, offsets right."""
    first = b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    second = b"GET /b HTTP/1.0\r\n\r\n"
    reqs = parse_requests(first + second)
    assert [(r.first, r.second, r.version, r.offset) for r in reqs] == [("PUT", "/a", "1.1", 0), ("GET", "/b", "1.0", len(first))]


def test_truncated_head_still_yields_the_request_line():
    """A capture cut inside the headers keeps the complete lines and has no head length."""
    [req] = parse_requests(b"GET /x HTTP/1.1\r\nUser-Agent: a\r\nHos")
    assert req.second == "/x" and req.head_len is None
    assert req.headers == {b"user-agent": b"a"}


def test_non_http_bytes_are_not_requests():
    assert parse_requests(b"\x16\x03\x01 binary") == []
    assert parse_responses(b"SSH-2.0-OpenSSH") == []


def test_responses_status_length_and_chunked():
    """Status code and reason; chunked bodies have no known length and stop the scan."""
    one = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"
    two = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    resps = parse_responses(one + two)
    assert [(r.first, r.second, r.content_length) for r in resps] == [(404, "Not Found", 2), (200, "OK", None)]
    assert resps[1].offset == len(one)


def test_traceparent_valid_and_invalid():
    tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    trace_id, span_id, flags = parse_traceparent(tp)
    assert trace_id.hex() == "0af7651916cd43dd8448eb211c80319c" and span_id.hex() == "b7ad6b7169203331" and flags == 1
    assert parse_traceparent(b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01") is None      # all-zero trace id
    assert parse_traceparent(b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") is None
    assert parse_traceparent(b"garbage") is None
    assert parse_traceparent(None) is None


def test_split_host_forms():
    assert split_host(b"example.com:8080", 80) == ("example.com", 8080)
    assert split_host(b"example.com", 80) == ("example.com", 80)
    assert split_host(b"[::1]:9000", 80) == ("::1", 9000)
    assert split_host(b"[::1]", 443) == ("::1", 443)


def test_folded_lines_continue_the_previous_value_and_never_start_a_field():
    """obs-fold (RFC 9112 5.2): joined by a space; a folded "host:" is part of X-A, not a Host field."""
    [req] = parse_requests(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n host: evil\r\nUser-Agent: x\r\n\t(y)\r\n\r\n")
    assert req.headers == {b"host": b"a", b"user-agent": b"x (y)"}
    [req] = parse_requests(b"GET / HTTP/1.1\r\n host: evil\r\nHost: a\r\n\r\n")     # before any field: skipped
    assert req.headers == {b"host": b"a"}


def test_a_status_code_is_three_digits():
    """status-code = 3DIGIT (RFC 9112 4): what int() reads besides ("+20", "-1", "2_00", "2000") is no response."""
    for code in (b"+20", b"-1", b"2_00", b"2000", b"20", b" 200"):
        assert parse_responses(b"HTTP/1.1 " + code + b" OK\r\n\r\n") == [], code
    assert parse_responses(b"HTTP/1.1 099 Odd\r\n\r\n")[0].first == 99


def test_a_content_length_beyond_int64_is_unknown():
    """A body size must fit the int64 span attribute it becomes: a larger numeral is no length."""
    for value in (b"9223372036854775808", b"99999999999999999999", b"9" * 400):
        [req] = parse_requests(b"POST / HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\n")
        assert req.content_length is None, value
    [req] = parse_requests(b"POST / HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n")
    assert req.content_length == 2 ** 63 - 1


def test_an_interim_response_and_its_final_one_in_one_write_are_both_found():
    """100 Continue has no body: the final response after it in the same capture is parsed too."""
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    assert [(r.first, r.offset) for r in parse_responses(data)] == [(100, 0), (201, 25)]


def test_nothing_after_a_101_is_parsed_as_http():
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
    assert [r.first for r in parse_responses(data)] == [101]


def test_interim_means_1xx_except_101():
    assert [s for s in (100, 101, 102, 103, 199, 200, 204) if is_interim(s)] == [100, 102, 103, 199]
