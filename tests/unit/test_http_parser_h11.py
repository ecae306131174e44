"""
The HTTP head parser (telegen/l7/http.py) against h11, on complete heads hypothesis writes.

h11 is a strict HTTP/1.1 parser that follows RFC 9112 closely. On every complete head h11
accepts, ours must report the same method, target and version, or status, reason and version,
the same values of the headers it keeps (Host, User-Agent, traceparent, Content-Length,
Transfer-Encoding; folded lines unfolded), the declared body length, and a head length that ends
where h11's body starts. The only thing ours checks in a head is its start line (a known method,
"HTTP/" and a status code): a status line h11 rejects, ours rejects too, and what ours rejects,
h11 rejects.

Ours is otherwise more forgiving than h11 (it reads truncated captures of other processes'
traffic; a span with an odd header beats no span), so it may read heads h11 rejects. Where h11
accepts and ours differs, on purpose:
- Methods other than the nine standard ones are not read as requests (the probe captures only
  those; a capture starting with another token is more likely not HTTP at all).
- Status codes 000 to 099 are read (h11 rejects them): RFC 9112 4 allows any 3DIGIT, and RFC 9110
  15 has a client handle an invalid code rather than drop the response.
- A Content-Length that is a list of one repeated value ("5, 5") is an unknown length for ours;
  h11 takes the value (RFC 9110 8.6 allows both: reject, or replace by the single value).
- A Content-Length above 2**63 - 1 is an unknown length for ours (it becomes an int64 span
  attribute); h11 accepts up to 20 digits. These tests keep lengths small.
- Bare LF line ends (RFC 9112 2.2: a recipient MAY recognize them): ours only ends a head at
  CRLF CRLF, as HTTP/1.1 senders write it, so these tests write CRLF.
- Repeated fields: ours keeps the last value (h11 keeps all; it rejects two Host fields or two
  different Content-Lengths, which these tests do not write).
"""
import h11
from hypothesis import example, given, settings
from hypothesis import strategies as st

from telegen.l7.http import parse_requests, parse_responses

FAST = settings(max_examples=200, deadline=None)
OURS = ("GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
WANTED = (b"host", b"user-agent", b"traceparent", b"content-length", b"transfer-encoding")

TOKEN = st.from_regex(rb"\A[-!#$%&'*+.^_`|~0-9a-zA-Z]+\Z")
TARGET = st.from_regex(rb"\A[\x21-\x7e]+\Z")
VERSION = st.from_regex(rb"\AHTTP/[0-9]\.[0-9]\Z") | st.just(b"HTTP/1.1")
# A field value: visible bytes and obs-text (any byte but NUL and whitespace) in words separated
# by spaces and tabs, maybe empty; then optional whitespace around it (OWS).
WORD = st.binary(min_size=1, max_size=12).map(lambda b: bytes(c for c in b if c not in b"\x00 \t\n\r\x0b\x0c") or b"x")
VALUE = st.lists(st.tuples(WORD, st.sampled_from((b" ", b"\t", b"  "))), max_size=4).map(
    lambda words: b"".join(w + sep for w, sep in words).rstrip(b" \t"))
OWS = st.sampled_from((b"", b" ", b"\t", b"  "))
RWS = st.sampled_from((b" ", b"\t", b"  "))
# The same with obs-fold (RFC 9112 5.2): lines that go on with the value start with whitespace.
FOLDED = st.tuples(VALUE, st.lists(st.tuples(RWS, VALUE.filter(bool)), min_size=1, max_size=3)).map(
    lambda v: v[0] + b"".join(b"\r\n" + ws + part for ws, part in v[1]))
FIELD_VALUE = VALUE | FOLDED
REASON = st.from_regex(rb"\A[ \t\x21-\x7e\x80-\xff]*\Z")


def _case(draw, name):
    """A header name as a sender may spell it (field names are case-insensitive)."""
    return bytes(c ^ 0x20 if chr(c).isalpha() and draw(st.booleans()) else c for c in name)


@st.composite
def header_fields(draw, body_length):
    """
    (name, value) pairs: any tokens, the wanted headers in any case, a Content-Length when
    body_length is set, or else maybe Transfer-Encoding: chunked.
    """
    fields = draw(st.lists(st.tuples(TOKEN, FIELD_VALUE), max_size=5))
    fields = [(n, v) for n, v in fields if n.lower() not in (b"content-length", b"transfer-encoding", b"host")]
    for name in (b"user-agent", b"traceparent"):
        if draw(st.booleans()):
            fields.insert(draw(st.integers(0, len(fields))), (_case(draw, name), draw(FIELD_VALUE)))
    if body_length is not None:
        digits = draw(st.sampled_from((b"%d", b"0%d", b"00%d"))) % body_length
        fields.insert(draw(st.integers(0, len(fields))), (_case(draw, b"content-length"), digits))
    elif draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (_case(draw, b"transfer-encoding"), _case(draw, b"chunked")))
    return fields


def _head(start_line, fields, ows):
    return start_line + b"\r\n" + b"".join(n + b":" + ows + v + ows + b"\r\n" for n, v in fields) + b"\r\n"


@st.composite
def requests(draw):
    """(head, body) of a request h11 should accept (a Host field whenever the version is 1.1)."""
    method = draw(st.sampled_from(OURS).map(str.encode) | TOKEN)
    version = draw(VERSION)
    body_length = draw(st.none() | st.integers(0, 40))
    fields = draw(header_fields(body_length))
    if version == b"HTTP/1.1" or draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (_case(draw, b"host"), draw(FIELD_VALUE)))
    head = _head(b"%s %s %s" % (method, draw(TARGET), version), fields, draw(OWS))
    return head, b"b" * (body_length or 0)


def _h11_event(role, data, prepare=None):
    """The first event h11 reads from data, or the protocol error it raises."""
    conn = h11.Connection(role)
    if prepare:
        prepare(conn)
    conn.receive_data(data)
    try:
        return conn.next_event()
    except h11.RemoteProtocolError as error:
        return error


def _kept(headers):
    """The headers ours keeps, as h11 reports them (the last value of a repeated one)."""
    return {name: value for name, value in headers if name in WANTED}


def _ours(headers):
    """Our headers as h11 reports them: it lowercases Transfer-Encoding (ours only asks whether there is one)."""
    return {name: value.lower() if name == b"transfer-encoding" else value for name, value in headers.items()}


def _content_length(headers):
    kept = _kept(headers)
    value = kept.get(b"content-length")
    if value is None or b"transfer-encoding" in kept:
        return None
    return int(value)


@FAST
@given(requests())
@example((b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n host: evil\r\n\r\n", b""))
def test_requests_agree_with_h11(request):
    """Every valid head reads alike (the example: a folded line that looks like a Host field is not one)."""
    head, body = request
    event = _h11_event(h11.SERVER, head + body)
    assert isinstance(event, h11.Request)                       # the strategy writes valid heads only
    ours = parse_requests(head + body)
    if event.method.decode() not in OURS:
        assert ours == []                                       # deliberate: only the nine methods
        return
    [req] = ours
    assert (req.first.encode(), req.second.encode("latin-1"), req.version.encode()) == (
        event.method, event.target, event.http_version)
    assert _ours(req.headers) == _kept(event.headers)
    assert req.content_length == _content_length(event.headers)
    assert (req.offset, req.head_len) == (0, len(head))


# A status code as h11 and RFC 9112 4 want it (3DIGIT), or a token int() reads but they reject.
STATUS = st.integers(0, 999).map(b"%03d".__mod__) | st.from_regex(rb"\A[-+_ ]?[0-9][0-9_]{0,4}\Z")


@st.composite
def responses(draw):
    """(head, body) of a response to a GET, the status code maybe malformed."""
    body_length = draw(st.none() | st.integers(0, 40))
    fields = draw(header_fields(body_length))
    start_line = b"%s %s" % (draw(VERSION), draw(STATUS))
    reason = draw(st.none() | REASON)
    if reason is not None:
        start_line += b" " + reason
    return _head(start_line, fields, draw(OWS)), b"b" * (body_length or 0)


def _get(conn):
    """Send the request the response answers; it offers an upgrade, so that a 101 is no protocol error to h11."""
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "a"), ("Connection", "upgrade"), ("Upgrade", "x")]))
    conn.send(h11.EndOfMessage())


@FAST
@given(responses())
def test_responses_agree_with_h11(response):
    """Valid heads read alike; a status code h11 rejects, ours rejects too (but 000 to 099)."""
    head, body = response
    event = _h11_event(h11.CLIENT, head + body, _get)
    ours = parse_responses(head + body)
    if not isinstance(event, (h11.Response, h11.InformationalResponse)):
        assert isinstance(event, h11.RemoteProtocolError)
        if ours:
            assert 0 <= ours[0].first <= 99                      # deliberate: see the docstring
        return
    [resp] = ours
    assert (resp.first, resp.second.encode("latin-1"), resp.version.encode()) == (
        event.status_code, event.reason, event.http_version)
    assert _ours(resp.headers) == _kept(event.headers)
    assert resp.content_length == _content_length(event.headers)
    assert (resp.offset, resp.head_len) == (0, len(head))
