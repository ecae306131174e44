# -*- test-case-name: tests.unit.test_protocols_http2_semconv -*-
"""
An Http2Exchange as the semantic conventions describe it: an HTTP span (the stable HTTP
conventions, the same attributes as HTTP/1.x spans with network.protocol.version `2`) or, when
the request's content-type is application/grpc, an RPC span (the gRPC conventions, v1.37 and
before: the ones that define rpc.server.duration and rpc.client.duration).

HTTP attributes come from telegen.signals.http.exchange_attributes, the function HTTP/1.x spans
use, so the two cannot drift; url.scheme is the request's :scheme. Span status ERROR for 5xx on
servers, 4xx and 5xx on clients, and for streams without a response (reset: error.type is the
RST_STREAM error name). Metric: http.server.request.duration / http.client.request.duration, s.

gRPC: span name `package.Service/Method` (the :path without its slash), rpc.system `grpc`,
rpc.service, rpc.method, rpc.grpc.status_code. The status code is the trailers' grpc-status (or
the Trailers-Only response's); failing that, what gRPC itself reports for the way the stream
ended (PROTOCOL-HTTP2.md): a RST_STREAM's error code mapped (CANCEL -> CANCELLED ...), or a
non-200 :status mapped (404 -> UNIMPLEMENTED ...); none when the capture could not read it.
Span status ERROR on servers for UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
UNAVAILABLE, DATA_LOSS, on clients for every code but OK; the description is the grpc-message.
Metric: rpc.server.duration / rpc.client.duration in ms.
"""
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

from telegen.l7.records import HttpExchange
from telegen.protocols.http2 import Http2Exchange
from telegen.protocols.semconv import DbSpan
from telegen.signals.http import exchange_attributes, is_error, url_path

SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3          # OTLP Span.SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2                  # OTLP Status.StatusCode
HTTP_SERVER_METRIC, HTTP_CLIENT_METRIC = "http.server.request.duration", "http.client.request.duration"
RPC_SERVER_METRIC, RPC_CLIENT_METRIC = "rpc.server.duration", "rpc.client.duration"
# The RPC duration histograms' boundaries the conventions advise (ms).
RPC_DURATION_BUCKETS_MS = (0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000)

# gRPC status codes whose server span is an error (the conventions' list); clients: all but OK.
GRPC_OK = 0
GRPC_SERVER_ERRORS = frozenset((2, 4, 12, 13, 14, 15))   # UNKNOWN DEADLINE_EXCEEDED UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS
_INTERNAL, _UNKNOWN, _UNAVAILABLE = 13, 2, 14
# RST_STREAM error codes (RFC 9113 7) by name, and the gRPC status a client reports for each.
H2_ERRORS = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
             "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
             "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")
_RST_TO_GRPC = {7: _UNAVAILABLE, 8: 1, 11: 8, 12: 7}    # REFUSED_STREAM CANCEL ENHANCE_YOUR_CALM INADEQUATE_SECURITY; else INTERNAL
_HTTP_TO_GRPC = {400: _INTERNAL, 401: 16, 403: 7, 404: 12, 429: _UNAVAILABLE, 502: _UNAVAILABLE,
                 503: _UNAVAILABLE, 504: _UNAVAILABLE}   # else UNKNOWN
_HTTP_METRIC_KEYS = ("http.request.method", "url.scheme", "http.response.status_code", "error.type", "http.route",
                     "network.protocol.version")
_RPC_METRIC_KEYS = ("rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code")
_SERVER_KEYS = ("server.address", "server.port")


@dataclass(frozen=True, slots=True)
class Http2Span(DbSpan):
    """A span as the database protocols give it, and where its duration goes: `metric` (a
    histogram in `metric_unit`) with `metric_attributes`, which differ between HTTP and gRPC."""

    metric: str
    metric_unit: str
    metric_attributes: dict


def span_of(ex, server_address=None, server_port=None, server_side=False, client_address=None, client_port=None,
            route=None):
    """The span of one exchange; the addresses come from the connection, server_side says which end
    the observed process is, route is the configured route pattern matching the path (if any)."""
    req, resp = ex.request, ex.response
    key = (server_side, server_address, server_port, client_address, client_port, route, ex.status, ex.reset,
           tuple(req.get(name) for name in _REQUEST_KEY), tuple(resp.get(name) for name in _RESPONSE_KEY))
    name, kind, attrs, status, message, metric, unit, metric_attrs = _shape(key)
    attrs = dict(attrs)
    if metric is HTTP_SERVER_METRIC or metric is HTTP_CLIENT_METRIC:
        if ex.request_body_size is not None:
            attrs["http.request.body.size"] = ex.request_body_size
        if ex.response_body_size is not None:
            attrs["http.response.body.size"] = ex.response_body_size
    return Http2Span(name, kind, attrs, status, message, ex.start_ns, ex.end_ns, metric, unit, dict(metric_attrs))


# What a span's shape depends on besides the connection: the exchanges of one client repeat
# shapes, so each is worked out once (traceparent and body sizes vary per exchange, and are not
# part of it).
_REQUEST_KEY = (b":method", b":path", b":scheme", b":authority", b"host", b"user-agent", b"content-type")
_RESPONSE_KEY = (b"content-type", b"grpc-status", b"grpc-message")


@lru_cache(maxsize=4096)
def _shape(key):
    """(name, kind, attributes, status, status message, metric, unit, metric attributes) of a shape."""
    server_side, server_address, server_port, client_address, client_port, route, status, reset, req, resp = key
    ex = Http2Exchange(0, 0, 0, request={k: v for k, v in zip(_REQUEST_KEY, req) if v is not None},
                       response={k: v for k, v in zip(_RESPONSE_KEY, resp) if v is not None}, status=status, reset=reset)
    peer_address, peer_port = (client_address, client_port) if server_side else (server_address, server_port)
    method = ex.method
    headers = {}
    for name, header in ((b":authority", b"host"), (b"host", b"host"), (b"user-agent", b"user-agent")):
        if name in ex.request and header not in headers:
            headers[header] = ex.request[name]
    record = HttpExchange(server_side, 0, 0, 0, method or "_OTHER", ex.path or "", "2", headers, None, status, None,
                          peer_address, peer_port, server_address if server_side else None,
                          server_port if server_side else None)
    attrs = exchange_attributes(record, url_path(ex.path) if ex.path else None, route)
    if method is None:
        attrs["http.request.method_original"] = None      # not read (HPACK), not an unusual method
    scheme = ex.text(b":scheme")
    if scheme:
        attrs["url.scheme"] = scheme
    attrs = {k: v for k, v in attrs.items() if v is not None}
    kind = SPAN_KIND_SERVER if server_side else SPAN_KIND_CLIENT
    if ex.is_grpc:
        return _grpc_shape(ex, attrs, server_side, kind)
    if is_error(server_side, status):
        if status is not None:
            attrs["error.type"] = str(status)
        elif reset is not None:
            attrs["error.type"] = _h2_error(reset)
        span_status = STATUS_ERROR
    else:
        span_status = STATUS_UNSET
    verb = attrs["http.request.method"] if method is not None else "HTTP"
    keys = _HTTP_METRIC_KEYS if server_side else _HTTP_METRIC_KEYS + _SERVER_KEYS
    return (f"{verb} {route}" if route else verb, kind, attrs, span_status, "",
            HTTP_SERVER_METRIC if server_side else HTTP_CLIENT_METRIC, "s", {k: attrs[k] for k in keys if k in attrs})


def _grpc_shape(ex, http, server_side, kind):
    attrs = {"rpc.system": "grpc"}
    path = ex.path
    service = method = None
    if path and path.startswith("/") and path.count("/") == 2:
        service, _, method = path[1:].partition("/")
        attrs["rpc.service"] = service
        attrs["rpc.method"] = method
    code = grpc_status(ex)
    if code is not None:
        attrs["rpc.grpc.status_code"] = code
    for key in _SERVER_KEYS + ("network.peer.address", "network.peer.port"):
        if key in http:
            attrs[key] = http[key]
    failed = code is not None and (code in GRPC_SERVER_ERRORS if server_side else code != GRPC_OK)
    message = ex.response.get(b"grpc-message")
    keys = _RPC_METRIC_KEYS if server_side else _RPC_METRIC_KEYS + _SERVER_KEYS
    return (f"{service}/{method}" if service else "grpc", kind, attrs, STATUS_ERROR if failed else STATUS_UNSET,
            unquote(message.decode("latin-1")) if failed and message else "",
            RPC_SERVER_METRIC if server_side else RPC_CLIENT_METRIC, "ms", {k: attrs[k] for k in keys if k in attrs})


def grpc_status(ex):
    """The call's gRPC status code (see the module docstring), or None."""
    value = ex.response.get(b"grpc-status")
    if value is not None:
        return int(value) if value.isdigit() else _UNKNOWN
    if ex.reset is not None:
        return _RST_TO_GRPC.get(ex.reset, _INTERNAL)
    if ex.status is not None and ex.status != 200:
        return _HTTP_TO_GRPC.get(ex.status, _UNKNOWN)
    return None


def _h2_error(code):
    return H2_ERRORS[code] if code < len(H2_ERRORS) else str(code)


def metric_value(span):
    """The span's duration in its metric's unit."""
    ns = max(span.end_ns - span.start_ns, 0)
    return ns / 1e6 if span.metric_unit == "ms" else ns / 1e9
