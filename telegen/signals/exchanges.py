# -*- test-case-name: tests.unit.test_http_signals -*-
"""
What the spans and metrics of every L7 protocol's exchanges share (HTTP/1 in telegen.signals.http,
the databases in telegen.signals.db): spans written directly as OTLP protobuf wire bytes from a
per-shape template, and cumulative duration histograms per process and attribute set.
"""
import bisect
import random
import struct

from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality, Histogram, HistogramDataPoint, Metric,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status

from telegen.protowire import I32, I64, LEN, VARINT, length_delimited, tag, varint
from telegen.signals.common import attributes

OVERFLOW = (("otel.metric.overflow", True),)


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
    and the per-exchange budget is a few microseconds. A protocol's template() (fixed_span() of
    its name, kind, attributes and status) encodes once what repeats across the exchanges of one
    shape (the caller caches it); encode() adds what each span has of its own: ids, times and
    the peer port (a server's peer is the client's ephemeral port).
    """

    MAX_CACHED = 20000

    def __init__(self, rand=random.getrandbits):
        self._rand = rand
        self._peer_ports = {}

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


def fixed_span(name, server_side, attrs, error=False, message=""):
    """
    The bytes every span of one shape shares (SpanTemplate.fixed): name, kind SERVER or CLIENT,
    the attributes whose value is not None (network.peer.port is per span, added by encode()),
    and status ERROR with its message when `error`.
    """
    parts = [length_delimited(_SPAN_NAME, name.encode()), _SPAN_KIND_FIELD[server_side]]
    parts += [_attribute(k, v) for k, v in attrs.items() if v is not None and k != "network.peer.port"]
    if error:
        status = _STATUS_CODE + varint(Status.STATUS_CODE_ERROR)
        if message:
            status = length_delimited(_STATUS_MESSAGE, message.encode()) + status
        parts.append(length_delimited(_SPAN_STATUS, status))
    return b"".join(parts)


def _packed(*parts):
    """Tag and length bytes as the little-endian int a struct "B" or "H" writes back as those bytes."""
    return int.from_bytes(b"".join(parts), "little")


# The Span fields SpanEncoder writes, opentelemetry/proto/trace/v1/trace.proto, and their tags:
_SPAN_NAME = tag(5, LEN)                  # Span.name
_SPAN_KIND = tag(6, VARINT)               # Span.kind (enum SpanKind)
_SPAN_ATTRIBUTES = tag(9, LEN)            # Span.attributes (repeated KeyValue)
_SPAN_STATUS = tag(15, LEN)               # Span.status
_STATUS_CODE = tag(3, VARINT)             # Status.code (enum StatusCode)
_STATUS_MESSAGE = tag(2, LEN)             # Status.message
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
    __slots__ = ("bounds", "counts", "total", "n", "lo", "hi")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.n = 0
        self.lo = float("inf")
        self.hi = float("-inf")

    def add(self, seconds):
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.n += 1
        if seconds < self.lo:
            self.lo = seconds
        if seconds > self.hi:
            self.hi = seconds


class DurationHistograms:
    """
    Cumulative duration histograms per (pid, metric, attribute set), capped per metric: beyond
    max_series a metric's points go to one series marked otel.metric.overflow=true, counted in
    telegen_metric_attribute_overflow_total. Every protocol's exchanges record here.

    @param metrics_info: {metric name: (description, bucket bounds)}.
    @param max_series: series per metric name (all processes together) before overflow.
    """

    def __init__(self, metrics, metrics_info, max_series=2000):
        self._metrics = metrics
        self._max = max_series
        self._info = dict(metrics_info)
        self._series = {name: {} for name in self._info}
        self._units = {}
        self._start = {}

    def add_metric(self, name, description, bounds, unit="s"):
        """Declare one more metric (a protocol's sink registering its histogram); its recorders
        are given durations in `unit` (rpc.*.duration are in ms)."""
        self._info.setdefault(name, (description, bounds))
        self._units.setdefault(name, unit)
        self._series.setdefault(name, {})

    def series_recorder(self, name, pid, attrs, now_ns):
        """
        The function that adds a duration (seconds, not negative) to series (pid, attrs) of
        metric `name` (attrs: a hashable tuple of pairs): the series' own add, or for the
        overflow series one that also counts the point in telegen_metric_overflow_total. Callers
        may keep it until forget() of its pid.
        """
        key = (pid, attrs)
        table = self._series[name]
        series = table.get(key)
        overflow = series is None and len(table) >= self._max
        if overflow:
            key = (pid, OVERFLOW)
            series = table.get(key)
        if series is None:
            series = table[key] = _Series(self._info[name][1])
            self._start.setdefault((name, key), now_ns)
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
            description, bounds = self._info[name]
            per_pid = {}
            for (pid, attrs), s in table.items():
                point = HistogramDataPoint(
                    attributes=attributes(dict(attrs)),
                    start_time_unix_nano=self._start[(name, (pid, attrs))],
                    time_unix_nano=now_ns,
                    count=s.n, sum=s.total, bucket_counts=s.counts, explicit_bounds=bounds,
                    min=s.lo, max=s.hi,
                )
                per_pid.setdefault(pid, []).append(point)
            for pid, points in per_pid.items():
                out.setdefault(pid, []).append(Metric(
                    name=name, unit=self._units.get(name, "s"), description=description,
                    histogram=Histogram(
                        aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
                        data_points=points,
                    ),
                ))
        return out

    def forget(self, pid):
        """Drop the series of a process that exited (after their last export)."""
        for name, table in self._series.items():
            for key in [k for k in table if k[0] == pid]:
                del table[key]
                self._start.pop((name, key), None)
