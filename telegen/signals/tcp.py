"""
TCP connection records -> OTLP: cumulative metrics per process and CLIENT spans for failed connects.

Metrics are aggregated in memory per (process, attribute set) with CUMULATIVE temporality, like
the HTTP RED metrics, so Prometheus-style backends take them as they are. Memory stays bounded
two ways: a series not updated for `idle_flushes` flushes is dropped after its last export (peers
and processes come and go; a later point starts a new series with a new start time), and a new
attribute set beyond `max_series` live sets per metric is folded into one series carrying
`otel.metric.overflow=true` and counted in telegen_metric_attribute_overflow{metric}.
Names, attributes and units: docs/tcp.md.
"""
import os
import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import NamedTuple, Optional

from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from opentelemetry.proto.trace.v1 import trace_pb2 as t

from telegen.signals.common import attributes

OPENED, ACCEPTED, CLOSED, FAILED, RETRANSMIT = "opened", "accepted", "closed", "failed", "retransmit"
OUTGOING, INCOMING = "outgoing", "incoming"

CONNECT_SPAN_NAME = "tcp connect"
DIRECTION = "telegen.tcp.direction"
OVERFLOW = (("otel.metric.overflow", True),)   # the series key of folded points

# Handshakes: the HTTP conventions' duration buckets. Connections: up to an hour.
CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
CONNECTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True)
class MetricSpec:
    """One metric's identity: name, unit, description, and histogram bounds (None: a counter)."""

    name: str
    unit: str
    description: str
    buckets: Optional[tuple] = None


OPENED_METRIC = MetricSpec("telegen.tcp.connections.opened", "{connection}", "Outgoing TCP connections established.")
ACCEPTED_METRIC = MetricSpec("telegen.tcp.connections.accepted", "{connection}", "Incoming TCP connections established.")
CLOSED_METRIC = MetricSpec("telegen.tcp.connections.closed", "{connection}", "Established TCP connections closed.")
FAILED_METRIC = MetricSpec("telegen.tcp.connections.failed", "{connection}", "Outgoing TCP connects that never got established.")
RETRANSMITS_METRIC = MetricSpec("telegen.tcp.retransmits", "{segment}", "TCP segments retransmitted.")
CONNECT_DURATION = MetricSpec("telegen.tcp.connect.duration", "s", "Outgoing handshake time, SYN sent to established or failed.", CONNECT_BUCKETS)
CONNECTION_DURATION = MetricSpec("telegen.tcp.connection.duration", "s", "Lifetime of closed connections, established to closed.", CONNECTION_BUCKETS)


class TcpConnection(NamedTuple):
    """
    One decoded TCP event. Times are CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns); pid 0 means
    the owning process is not known; local_* is this host's side, peer_* the other end.
    (A NamedTuple: it is built once per kernel event, and tuples are the cheapest records.)
    """

    kind: str
    pid: int
    direction: str          # outgoing, incoming, or "" (retransmit on a connection seen before start)
    network_type: str       # ipv4 or ipv6
    local_address: str
    local_port: int
    peer_address: str
    peer_port: int
    start_ns: int
    established_ns: int
    end_ns: int
    error_type: str = ""    # FAILED only: connection_refused or connect_failed

    @property
    def server(self):
        """(address, port) of the listening side."""
        if self.direction == INCOMING:
            return self.local_address, self.local_port
        return self.peer_address, self.peer_port


def series_key(conn):
    """
    The attribute identity of a connection's data points as a plain tuple (cheap per event;
    metric_attributes() expands it at flush): never the client's ephemeral port.
    """
    if conn.direction == INCOMING:
        return conn.direction, conn.network_type, conn.peer_address, conn.local_address, conn.local_port, conn.error_type
    return conn.direction, conn.network_type, conn.peer_address, conn.peer_address, conn.peer_port, conn.error_type


def metric_attributes(key):
    """The data point attributes of a series_key() (or of the overflow series)."""
    if key == OVERFLOW:
        return dict(OVERFLOW)
    direction, network_type, peer, server_address, server_port, error_type = key
    attrs = {
        DIRECTION: direction or None,
        "network.type": network_type,
        "network.peer.address": peer,
        "server.address": server_address,
        "server.port": server_port,
        "client.address": peer if direction == INCOMING else None,
        "error.type": error_type or None,
    }
    return {k: v for k, v in attrs.items() if v is not None}


class _Series:
    """
    The live series of one metric: {(pid, series key): point}, a point being
    [count, sum, bucket counts or None, start time, flush generation of the last update].
    """

    def __init__(self, spec):
        self.spec = spec
        self.points = {}

    def add(self, key, value, cap, overflow, start_ns, generation):
        point = self.points.get(key)
        if point is None:
            if len(self.points) >= cap:
                key = (key[0], OVERFLOW)
                overflow.labels(metric=self.spec.name).inc()
                point = self.points.get(key)
            if point is None:
                buckets = [0] * (len(self.spec.buckets) + 1) if self.spec.buckets else None
                point = self.points[key] = [0, 0.0, buckets, start_ns, generation]
        point[0] += 1
        point[4] = generation
        if point[2] is not None:
            point[1] += value
            point[2][bisect_left(self.spec.buckets, value)] += 1

    def to_protos(self, end_ns):
        """{pid: Metric}: every live series, cumulative since its start."""
        out = {}
        for (pid, key), (count, total, buckets, start_ns, _) in self.points.items():
            metric = out.get(pid)
            if metric is None:
                metric = out[pid] = m.Metric(name=self.spec.name, unit=self.spec.unit, description=self.spec.description)
                if buckets is not None:
                    metric.histogram.aggregation_temporality = m.AGGREGATION_TEMPORALITY_CUMULATIVE
                else:
                    metric.sum.aggregation_temporality = m.AGGREGATION_TEMPORALITY_CUMULATIVE
                    metric.sum.is_monotonic = True
            common = {"attributes": attributes(metric_attributes(key)), "start_time_unix_nano": start_ns, "time_unix_nano": end_ns}
            if buckets is not None:
                metric.histogram.data_points.add(count=count, sum=total, bucket_counts=buckets,
                                                 explicit_bounds=self.spec.buckets, **common)
            else:
                metric.sum.data_points.add(as_int=count, **common)
        return out

    def evict(self, oldest_generation):
        """Drop series whose last update is older than oldest_generation."""
        self.points = {k: p for k, p in self.points.items() if p[4] >= oldest_generation}


class TcpTelemetry:
    """
    Turns TcpConnection records into metrics (aggregated until flush()) and failed-connect spans
    (submitted at once). pipeline is the ExportPipeline; processes gives resources by pid.
    """

    def __init__(self, pipeline, processes, metrics, max_series=1000, idle_flushes=20,
                 wall_clock=time.time_ns, monotonic_clock=time.monotonic_ns):
        self.pipeline = pipeline
        self.processes = processes
        self.metrics = metrics
        self.max_series = max_series
        self.idle_flushes = idle_flushes
        self._generation = 0
        self._wall = wall_clock
        self._series = {spec.name: _Series(spec) for spec in (
            OPENED_METRIC, ACCEPTED_METRIC, CLOSED_METRIC, FAILED_METRIC, RETRANSMITS_METRIC,
            CONNECT_DURATION, CONNECTION_DURATION)}
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC: this offset turns kernel times into Unix times.
        self._mono_to_wall = wall_clock() - monotonic_clock()
        self._last_flush = wall_clock()      # start time of series born in this interval

    def _add(self, spec, key, value=1.0):
        self._series[spec.name].add(key, value, self.max_series, self.metrics.metric_overflow,
                                    self._last_flush, self._generation)

    def record(self, conn):
        """Account one connection event."""
        key = (conn.pid, series_key(conn))
        kind = conn.kind
        if kind == OPENED:
            self._add(OPENED_METRIC, key)
            self._add(CONNECT_DURATION, key, (conn.established_ns - conn.start_ns) / 1e9)
        elif kind == ACCEPTED:
            self._add(ACCEPTED_METRIC, key)
        elif kind == CLOSED:
            self._add(CLOSED_METRIC, key)
            self._add(CONNECTION_DURATION, key, (conn.end_ns - conn.established_ns) / 1e9)
        elif kind == FAILED:
            self._add(FAILED_METRIC, key)
            self._add(CONNECT_DURATION, key, (conn.end_ns - conn.start_ns) / 1e9)
            self._submit_failed_span(conn)
        elif kind == RETRANSMIT:
            self._add(RETRANSMITS_METRIC, key)

    def _submit_failed_span(self, conn):
        span = t.Span(
            trace_id=os.urandom(16),
            span_id=os.urandom(8),
            name=CONNECT_SPAN_NAME,
            kind=t.Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=conn.start_ns + self._mono_to_wall,
            end_time_unix_nano=conn.end_ns + self._mono_to_wall,
            attributes=attributes({
                "server.address": conn.peer_address,
                "server.port": conn.peer_port,
                "network.peer.address": conn.peer_address,
                "network.peer.port": conn.peer_port,
                "network.transport": "tcp",
                "network.type": conn.network_type,
                "error.type": conn.error_type,
            }),
            status=t.Status(code=t.Status.STATUS_CODE_ERROR, message=conn.error_type.replace("_", " ")),
        )
        self.metrics.spans_collected.inc()
        self.pipeline.submit("traces", self.processes.resource_attributes(conn.pid), [span])

    def flush(self):
        """Submit every live series, one submit per process; then drop series idle for idle_flushes flushes."""
        now = self._wall()
        by_pid = {}
        for series in self._series.values():
            for pid, metric in series.to_protos(now).items():
                by_pid.setdefault(pid, []).append(metric)
            series.evict(self._generation - self.idle_flushes + 1)
        self._generation += 1
        self._last_flush = now
        points = 0
        for pid, metrics in by_pid.items():
            self.pipeline.submit("metrics", self.processes.resource_attributes(pid), metrics)
            points += sum(len(x.sum.data_points) + len(x.histogram.data_points) for x in metrics)
        self.metrics.metrics_collected.inc(points)
        return points
