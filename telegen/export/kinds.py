"""
What differs between the four OTLP signals, in one table: request and response types, the
field names that nest resource -> scope -> records, the gRPC stub, the HTTP path, the
partial-success field, and how many "items" a record counts for.

Why one table: the queue, batcher and senders are the same code for every signal; only these
facts change. Items are spans, metric data points, log records and profiles, the units the OTLP
partial-success counts and our self-metrics use.
"""
from dataclasses import dataclass
from typing import Callable, Optional

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

_POINT_FIELDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def data_points(metric):
    """Data points in one Metric (the unit of metrics queues and counters)."""
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind in _POINT_FIELDS else 0


def _profiles_request(chunks, resources):
    """Profiles share one request-level dictionary: telegen.profiling.otlp assembles the request."""
    from telegen.profiling.otlp import encode_request
    return encode_request(chunks, resources)


def _profiles_in(record):
    """A profiles record is a whole window (telegen.profiling.otlp): it counts for its profiles."""
    from telegen.profiling.otlp import profile_count
    return profile_count(record)


def _method(module, service):
    return f"/{module.DESCRIPTOR.services_by_name[service].full_name}/Export"


@dataclass(frozen=True)
class SignalKind:
    """The per-signal facts the generic pipeline needs."""

    name: str
    request_cls: type
    response_cls: type
    resource_field: str      # ExportXRequest.<resource_field> -> ResourceX
    scope_field: str         # ResourceX.<scope_field> -> ScopeX
    records_field: str       # ScopeX.<records_field> -> records
    rejected_field: str      # partial_success.<rejected_field>
    grpc_method: str         # /<package>.<Service>/Export
    http_path: str
    weight: Optional[Callable] = None  # items one record counts for; None: one each
    encode: Optional[Callable] = None  # (chunks, resources) -> request bytes; None: telegen.export.wire's

    def items(self, records):
        """How many items `records` count for."""
        return len(records) if self.weight is None else sum(map(self.weight, records))


KINDS = {
    "traces": SignalKind("traces", trace_service_pb2.ExportTraceServiceRequest,
                         trace_service_pb2.ExportTraceServiceResponse, "resource_spans", "scope_spans",
                         "spans", "rejected_spans", _method(trace_service_pb2, "TraceService"), "/v1/traces"),
    "metrics": SignalKind("metrics", metrics_service_pb2.ExportMetricsServiceRequest,
                          metrics_service_pb2.ExportMetricsServiceResponse, "resource_metrics", "scope_metrics",
                          "metrics", "rejected_data_points", _method(metrics_service_pb2, "MetricsService"),
                          "/v1/metrics", data_points),
    "logs": SignalKind("logs", logs_service_pb2.ExportLogsServiceRequest,
                       logs_service_pb2.ExportLogsServiceResponse, "resource_logs", "scope_logs",
                       "log_records", "rejected_log_records", _method(logs_service_pb2, "LogsService"), "/v1/logs"),
    "profiles": SignalKind("profiles", profiles_service_pb2.ExportProfilesServiceRequest,
                           profiles_service_pb2.ExportProfilesServiceResponse, "resource_profiles",
                           "scope_profiles", "profiles", "rejected_profiles",
                           _method(profiles_service_pb2, "ProfilesService"), "/v1development/profiles",
                           _profiles_in, encode=_profiles_request),
}


def _check_wire_layout():
    """telegen/export/wire.py writes fields 1 and 2 at each level; fail loudly if a proto ever differs."""
    for kind in KINDS.values():
        outer = kind.request_cls.DESCRIPTOR.fields_by_name[kind.resource_field]
        middle = outer.message_type.fields_by_name[kind.scope_field]
        inner = middle.message_type
        numbers = (outer.number, outer.message_type.fields_by_name["resource"].number, middle.number,
                   inner.fields_by_name["scope"].number, inner.fields_by_name[kind.records_field].number)
        assert numbers == (1, 1, 2, 1, 2), (kind.name, numbers)


_check_wire_layout()
