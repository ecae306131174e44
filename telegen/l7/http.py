# -*- test-case-name: tests.unit.test_http_parser -*-
"""
Parse the HTTP/1.x heads the kernel captured: request lines, status lines and the few headers
spans need (Host, User-Agent, traceparent, Content-Length, Transfer-Encoding).

Captures are truncated (agent.ebpf capture size) and may hold several pipelined messages, so
parsing is forgiving: a head cut short still yields its request or status line, and parsing
stops at the first thing that is not a message start.
"""
from dataclasses import dataclass
from typing import Optional

_METHODS = frozenset((b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE"))
_WANTED = frozenset((b"host", b"user-agent", b"traceparent", b"content-length", b"transfer-encoding"))
_END = b"\r\n\r\n"
_MAX_LENGTH = 2 ** 63 - 1        # the largest body size an OTLP int64 attribute holds
_FOLD = (b" ", b"\t")

SWITCHING_PROTOCOLS = 101


def is_interim(status):
    """
    A 1xx response other than 101 (100 Continue, 103 Early Hints ...): it precedes the final
    response to the same request and has no body (RFC 9110, 15.2). 101 is final: it ends HTTP
    on the connection.
    """
    return 100 <= status < 200 and status != SWITCHING_PROTOCOLS


@dataclass(slots=True, eq=False)
class Head:
    """
    One parsed message head. Compared and hashed by identity: the decoder memoizes heads on
    their bytes, so one head object stands for one distinct head and keys caches cheaply.

    head_len is None when the capture ended inside the head. For requests `first` is the
    method and `second` the target; for responses `first` is the status code (int) and
    `second` the reason phrase.
    """

    first: object
    second: str
    version: str
    headers: dict
    head_len: Optional[int]
    offset: int
    content_length: Optional[int] = None     # declared body size; None when absent, invalid or chunked

    def __post_init__(self):
        value = self.headers.get(b"content-length")
        if value is not None and not self.headers.get(b"transfer-encoding") and value.isdigit() and len(value) < 20:
            length = int(value)
            self.content_length = length if length <= _MAX_LENGTH else None


def _headers(lines):
    out = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if sep:
            key = name.strip().lower()
            if key in _WANTED:
                out[key] = value.strip()
    return out


def _unfold(lines):
    """
    Field lines with obs-fold (RFC 9112 5.2) undone: a line that starts with whitespace goes on
    with the previous field's value, joined by a space, and never starts a field of its own; one
    before the first field is dropped (2.2).
    """
    out = []
    for line in lines:
        if line[:1] not in _FOLD:
            out.append(line)
        elif out:
            out[-1] += b" " + line.lstrip(b" \t")
    return out


def _split(data, pos):
    """(start line parts, headers, head_len or None) of the message starting at pos."""
    end = data.find(_END, pos)
    head = data[pos:end] if end >= 0 else data[pos:]
    lines = head.split(b"\r\n")
    if end < 0 and len(lines) > 1:
        lines.pop()          # the last line was cut by the capture
    fields = lines[1:]
    if fields and min(fields)[:1] <= b" ":
        # Some line starts with whitespace (or less: a field name starts above SP): one cheap
        # test in C, as folded lines are rare.
        fields = _unfold(fields)
    return lines[0].split(b" ", 2), _headers(fields), (end + 4 - pos) if end >= 0 else None


def _version(token):
    return token[5:].decode("ascii", "replace") if token.startswith(b"HTTP/") else "1.1"


def parse_requests(data):
    """Every request head found at the start of data (several when pipelined)."""
    out = []
    pos = 0
    while pos < len(data):
        parts, headers, head_len = _split(data, pos)
        if parts[0] not in _METHODS or len(parts) < 2:
            break
        target = parts[1].decode("latin-1")
        version = _version(parts[2]) if len(parts) > 2 else "1.1"
        req = Head(parts[0].decode("ascii"), target, version, headers, head_len, pos)
        out.append(req)
        if head_len is None:
            break
        pos += head_len + (req.content_length or 0)
    return out


def parse_responses(data):
    """
    Every response head found at the start of data (several when pipelined responses share a
    write, or an interim 1xx and its final response do). Nothing after a 101 is HTTP.
    """
    out = []
    pos = 0
    while pos < len(data):
        parts, headers, head_len = _split(data, pos)
        if not parts[0].startswith(b"HTTP/") or len(parts) < 2:
            break
        if len(parts[1]) != 3 or not parts[1].isdigit():     # status-code = 3DIGIT (RFC 9112 4)
            break
        status = int(parts[1])
        reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        resp = Head(status, reason, _version(parts[0]), headers, head_len, pos)
        out.append(resp)
        length = 0 if is_interim(status) else resp.content_length
        if head_len is None or length is None or status == SWITCHING_PROTOCOLS:
            break
        pos += head_len + length
    return out


def parse_traceparent(value):
    """(trace_id bytes, parent span_id bytes, flags) from a W3C traceparent, or None if invalid."""
    if not value:
        return None
    parts = value.split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == b"ff" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id = bytes.fromhex(parts[1].decode("ascii"))
        span_id = bytes.fromhex(parts[2].decode("ascii"))
        flags = int(parts[3][:2], 16)
    except ValueError:
        return None
    if not any(trace_id) or not any(span_id):
        return None
    return trace_id, span_id, flags


def split_host(value, default_port):
    """(host, port) from a Host header value ("example.com:8080", "[::1]:80", "example.com")."""
    text = value.decode("latin-1").strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            host, port = text, ""
    return host, int(port) if port.isdigit() else default_port
