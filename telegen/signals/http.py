# -*- test-case-name: tests.unit.test_http_signals -*-
"""
HttpExchange records -> OTLP spans and RED metrics, per the stable HTTP semantic conventions.

Spans: kind SERVER or CLIENT, name "METHOD" or "METHOD route" (routes only from configured
patterns, so raw paths never explode span names), status ERROR for 5xx (servers) and 4xx/5xx
(clients), a W3C traceparent on the request makes the span join that trace.

Metrics: http.server.request.duration and http.client.request.duration histograms (seconds,
the conventions' default buckets, cumulative), aggregated in memory per process and attribute
set, with a cap on series per metric: beyond it points go to one series marked
otel.metric.overflow=true and are counted in telegen_metric_attribute_overflow_total.
"""
import bisect
import random
import re
import struct

from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality, Histogram, HistogramDataPoint, Metric,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status

from telegen.l7.http import parse_traceparent, split_host
from telegen.protowire import I32, I64, LEN, VARINT, length_delimited, tag, varint
from telegen.signals.common import attributes

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SERVER_METRIC = "http.server.request.duration"
CLIENT_METRIC = "http.client.request.duration"
KNOWN_METHODS = frozenset(("GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))
OVERFLOW = (("otel.metric.overflow", True),)


class RouteMatcher:
    """Configured route patterns (/users/{id}, /static/*) matched against url.path."""

    def __init__(self, patterns):
        self._compiled = [(p, re.compile(self._regex(p))) for p in patterns]

    @staticmethod
    def _regex(pattern):
        out = []
        for part in re.split(r"(\{[^/}]*\}|\*)", pattern):
            if part == "*":
                out.append(".*")
            elif part.startswith("{") and part.endswith("}"):
                out.append("[^/]+")
            else:
                out.append(re.escape(part))
        return "^" + "".join(out) + "/?$"

    def match(self, path):
        """The first pattern matching path, or None."""
        for pattern, regex in self._compiled:
            if regex.match(path):
                return pattern
        return None


def _str(value):
    return value.decode("latin-1") if value is not None else None


def exchange_attributes(ex, path, route):
    """The span attributes of an exchange (dict, None values are skipped by attributes())."""
    method = ex.method if ex.method in KNOWN_METHODS else "_OTHER"
    host_header = ex.headers.get(b"host")
    if ex.server_side:
        default_port = ex.local_port
        server_address, server_port = split_host(host_header, default_port) if host_header else (ex.local_address, default_port)
    else:
        server_address, server_port = split_host(host_header, ex.peer_port) if host_header else (ex.peer_address, ex.peer_port)
        server_port = ex.peer_port or server_port
    return {
        "http.request.method": method,
        "http.request.method_original": ex.method if method == "_OTHER" else None,
        "url.path": path,
        "url.scheme": "https" if ex.tls else "http",
        "http.route": route,
        "http.response.status_code": ex.status,
        "server.address": server_address,
        "server.port": server_port,
        "client.address": ex.peer_address if ex.server_side else None,
        "network.peer.address": ex.peer_address,
        "network.peer.port": ex.peer_port,
        "network.protocol.version": ex.version,
        "user_agent.original": _str(ex.headers.get(b"user-agent")),
        "http.request.body.size": ex.request_body_size,
        "http.response.body.size": ex.response_body_size,
    }


def url_path(target):
    """The path part of a request target (origin form or absolute form)."""
    if target.startswith("/") and "?" not in target and "#" not in target:
        return target
    if target.startswith("http://") or target.startswith("https://"):
        slash = target.find("/", target.find("//") + 2)
        target = target[slash:] if slash >= 0 else "/"
    cut = len(target)
    for sep in ("?", "#"):
        i = target.find(sep)
        if 0 <= i < cut:
            cut = i
    return target[:cut] or "/"


def is_error(server_side, status):
    """Span status ERROR per the conventions: 5xx for servers, 4xx and 5xx for clients, or no response."""
    if status is None:
        return True
    return status >= 500 or (not server_side and status >= 400)


class SpanTemplate:
    """What spans of one exchange shape share: the encoded name, kind, attributes and status, and the remote parent."""

    __slots__ = ("fixed", "parent")

    def __init__(self, fixed, parent):
        self.fixed = fixed
        self.parent = parent        # (trace_id, parent span_id, W3C flags) from traceparent, or None


class SpanEncoder:
    """
    Writes spans as protobuf wire bytes, which the export queue takes as they are: joining byte
    strings is several times cheaper than building a Span and a KeyValue per attribute in Python,
    and the per-exchange budget is a few microseconds. template() encodes once what repeats
    across the exchanges of one shape (the caller caches it); encode() adds what each span has
    of its own: ids, times and the peer port (a server's peer is the client's ephemeral port).
    """

    MAX_CACHED = 20000

    def __init__(self, rand=random.getrandbits):
        self._rand = rand
        self._peer_ports = {}

    @staticmethod
    def template(ex, path, route):
        """The SpanTemplate of an HttpExchange's shape (everything but ids, times and peer port)."""
        attrs = exchange_attributes(ex, path, route)
        name = f"{attrs['http.request.method']} {route}" if route else attrs["http.request.method"]
        parts = [length_delimited(_SPAN_NAME, name.encode()), _SPAN_KIND_FIELD[ex.server_side]]
        parts += [_attribute(k, v) for k, v in attrs.items() if v is not None and k != "network.peer.port"]
        if is_error(ex.server_side, ex.status):
            if ex.status is not None:
                parts.append(_attribute("error.type", str(ex.status)))
            parts.append(_STATUS_ERROR)
        traceparent = ex.headers.get(b"traceparent")
        return SpanTemplate(b"".join(parts), parse_traceparent(traceparent) if traceparent else None)

    def encode(self, template, start_ns, end_ns, peer_port):
        """One serialized Span: the template plus fresh ids (or the remote parent's trace), times and peer port."""
        rand = self._rand
        if end_ns < start_ns:
            end_ns = start_ns
        if template.parent:
            trace_id, parent_id, flags = template.parent
            head = _CHILD_HEAD.pack(_TRACE_ID_HEAD, trace_id, _SPAN_ID_HEAD, rand(64), _PARENT_SPAN_ID_HEAD, parent_id,
                                    _START_TIME, start_ns, _END_TIME, end_ns)
            tail = _SPAN_FLAGS + _U32(flags | _REMOTE_PARENT)
        else:
            # A new trace: trace id (two random words) and span id (one) packed with the times in one call.
            head = _ROOT_HEAD.pack(_TRACE_ID_HEAD, rand(64), rand(64), _SPAN_ID_HEAD, rand(64), _START_TIME, start_ns, _END_TIME, end_ns)
            tail = _ROOT_FLAGS
        port = b""
        if peer_port is not None:
            port = self._peer_ports.get(peer_port)
            if port is None:
                if len(self._peer_ports) >= self.MAX_CACHED:
                    self._peer_ports.clear()
                port = self._peer_ports[peer_port] = _attribute("network.peer.port", peer_port)
        return b"".join((head, template.fixed, port, tail))


def build_span(ex, path, route, rand=random.getrandbits):
    """One OTLP Span for an HttpExchange (a one-off SpanEncoder; probes keep theirs)."""
    encoder = SpanEncoder(rand)
    return Span.FromString(encoder.encode(encoder.template(ex, path, route), ex.start_ns, ex.end_ns, ex.peer_port))


def _packed(*parts):
    """Tag and length bytes as the little-endian int a struct "B" or "H" writes back as those bytes."""
    return int.from_bytes(b"".join(parts), "little")


# The Span fields SpanEncoder writes, opentelemetry/proto/trace/v1/trace.proto, and their tags:
_SPAN_NAME = tag(5, LEN)                  # Span.name
_SPAN_KIND = tag(6, VARINT)               # Span.kind (enum SpanKind)
_SPAN_ATTRIBUTES = tag(9, LEN)            # Span.attributes (repeated KeyValue)
_SPAN_STATUS = tag(15, LEN)               # Span.status
_STATUS_CODE = tag(3, VARINT)             # Status.code (enum StatusCode)
_SPAN_FLAGS = tag(16, I32)                # Span.flags (fixed32)
# opentelemetry/proto/common/v1/common.proto:
_KEY_VALUE_KEY = tag(1, LEN)              # KeyValue.key
_KEY_VALUE_VALUE = tag(2, LEN)            # KeyValue.value (AnyValue)
_ANY_STRING = tag(1, LEN)                 # AnyValue.string_value
_ANY_BOOL = tag(2, VARINT)                # AnyValue.bool_value
_ANY_INT = tag(3, VARINT)                 # AnyValue.int_value (int64)

# The ids and times that open every span, packed in one struct call: each field's tag, and its
# length where it is length-delimited (both one byte, packed together as one little-endian short),
# then the value: trace_id (16 bytes: random words or the remote parent's), span_id (8),
# parent_span_id (8, remote parent only), start_time_unix_nano and end_time_unix_nano (fixed64).
_TRACE_ID_HEAD = _packed(tag(1, LEN), varint(16))       # Span.trace_id, 16 bytes
_SPAN_ID_HEAD = _packed(tag(2, LEN), varint(8))         # Span.span_id, 8 bytes
_PARENT_SPAN_ID_HEAD = _packed(tag(4, LEN), varint(8))  # Span.parent_span_id, 8 bytes
_START_TIME = _packed(tag(7, I64))                      # Span.start_time_unix_nano (fixed64)
_END_TIME = _packed(tag(8, I64))                        # Span.end_time_unix_nano (fixed64)
_ROOT_HEAD = struct.Struct("<HQQ" "HQ" "BQ" "BQ")
_CHILD_HEAD = struct.Struct("<H16s" "HQ" "H8s" "BQ" "BQ")
_U32 = struct.Struct("<I").pack
# Span.flags: the W3C trace flags in the low byte, and whether the parent is remote.
_SAMPLED = 0x01
_REMOTE_PARENT = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_ROOT_FLAGS = _SPAN_FLAGS + _U32(_SAMPLED | SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)   # no parent at all
_SPAN_KIND_FIELD = {True: _SPAN_KIND + varint(Span.SPAN_KIND_SERVER), False: _SPAN_KIND + varint(Span.SPAN_KIND_CLIENT)}
_STATUS_ERROR = length_delimited(_SPAN_STATUS, _STATUS_CODE + varint(Status.STATUS_CODE_ERROR))


def _attribute(key, value):
    """
    A Span.attributes entry, KeyValue{key, value: AnyValue}, of a str, a bool or an int (int64):
    the bytes Span(attributes=attributes({key: value})) serializes to (an empty key, which proto3
    leaves out, is written: it parses the same).
    """
    if isinstance(value, bool):
        any_value = _ANY_BOOL + (b"\x01" if value else b"\x00")
    elif isinstance(value, int):
        any_value = _ANY_INT + varint(value)
    else:
        any_value = length_delimited(_ANY_STRING, value.encode())
    return length_delimited(_SPAN_ATTRIBUTES, length_delimited(_KEY_VALUE_KEY, key.encode()) + length_delimited(_KEY_VALUE_VALUE, any_value))


class _Series:
    __slots__ = ("counts", "total", "n", "lo", "hi")

    def __init__(self):
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0
        self.lo = float("inf")
        self.hi = float("-inf")

    def add(self, seconds):
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1
        if seconds < self.lo:
            self.lo = seconds
        if seconds > self.hi:
            self.hi = seconds


class RedMetrics:
    """
    Cumulative duration histograms per (pid, metric, attribute set), capped per metric.

    @param max_series: series per metric name (all processes together) before overflow.
    """

    def __init__(self, metrics, max_series=2000):
        self._metrics = metrics
        self._max = max_series
        self._series = {SERVER_METRIC: {}, CLIENT_METRIC: {}}
        self._start = {}

    @staticmethod
    def _attributes(ex, route):
        """The metric attributes of an exchange, as a hashable tuple of pairs."""
        attrs = [("http.request.method", ex.method if ex.method in KNOWN_METHODS else "_OTHER"),
                 ("url.scheme", "https" if ex.tls else "http")]
        if ex.status is not None:
            attrs.append(("http.response.status_code", ex.status))
        else:
            attrs.append(("error.type", "no_response"))
        if route:
            attrs.append(("http.route", route))
        if not ex.server_side:
            attrs.append(("server.address", ex.peer_address))
            attrs.append(("server.port", ex.peer_port))
        if ex.version:
            attrs.append(("network.protocol.version", ex.version))
        return tuple(attrs)

    def record(self, ex, route, now_ns):
        """Add one exchange's duration."""
        self.recorder(ex, route, now_ns)(max(ex.end_ns - ex.start_ns, 0) / 1e9)

    def recorder(self, ex, route, now_ns):
        """
        The function that adds a duration (seconds, not negative) to the series exchanges of this
        shape belong to: the series' own add, or for the overflow series one that also counts the
        point in telegen_metric_overflow_total. Callers may keep it until forget() of its pid.
        """
        name = SERVER_METRIC if ex.server_side else CLIENT_METRIC
        key = (ex.pid, self._attributes(ex, route))
        table = self._series[name]
        series = table.get(key)
        overflow = series is None and len(table) >= self._max
        if overflow:
            key = (ex.pid, OVERFLOW)
            series = table.get(key)
        if series is None:
            series = table[key] = _Series()
            self._start.setdefault(key, now_ns)
        if not overflow:
            return series.add
        overflowed = self._metrics.metric_overflow.labels(metric=name)

        def add_overflow(seconds):
            overflowed.inc()
            series.add(seconds)
        return add_overflow

    def collect(self, now_ns):
        """{pid: [Metric]}: every series so far, cumulative since its first point."""
        out = {}
        for name, table in self._series.items():
            per_pid = {}
            for (pid, attrs), s in table.items():
                point = HistogramDataPoint(
                    attributes=attributes(dict(attrs)),
                    start_time_unix_nano=self._start[(pid, attrs)],
                    time_unix_nano=now_ns,
                    count=s.n, sum=s.total, bucket_counts=s.counts, explicit_bounds=DURATION_BUCKETS,
                    min=s.lo, max=s.hi,
                )
                per_pid.setdefault(pid, []).append(point)
            for pid, points in per_pid.items():
                out.setdefault(pid, []).append(Metric(
                    name=name, unit="s",
                    description="Duration of HTTP %s requests." % ("server" if name == SERVER_METRIC else "client"),
                    histogram=Histogram(
                        aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
                        data_points=points,
                    ),
                ))
        return out

    def forget(self, pid):
        """Drop the series of a process that exited (after their last export)."""
        for table in self._series.values():
            for key in [k for k in table if k[0] == pid]:
                del table[key]
                self._start.pop(key, None)
