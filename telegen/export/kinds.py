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

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2, profiles_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

_POINT_FIELDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def data_points(metric):
    """Data points in one Metric (the unit of metrics queues and counters)."""
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind in _POINT_FIELDS else 0


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
    stub_cls: type
    http_path: str
    weight: Optional[Callable] = None  # items one record counts for; None: one each

    def items(self, records):
        """How many items `records` count for."""
        return len(records) if self.weight is None else sum(map(self.weight, records))


KINDS = {
    "traces": SignalKind("traces", trace_service_pb2.ExportTraceServiceRequest,
                         trace_service_pb2.ExportTraceServiceResponse, "resource_spans", "scope_spans",
                         "spans", "rejected_spans", trace_service_pb2_grpc.TraceServiceStub, "/v1/traces"),
    "metrics": SignalKind("metrics", metrics_service_pb2.ExportMetricsServiceRequest,
                          metrics_service_pb2.ExportMetricsServiceResponse, "resource_metrics", "scope_metrics",
                          "metrics", "rejected_data_points", metrics_service_pb2_grpc.MetricsServiceStub,
                          "/v1/metrics", data_points),
    "logs": SignalKind("logs", logs_service_pb2.ExportLogsServiceRequest,
                       logs_service_pb2.ExportLogsServiceResponse, "resource_logs", "scope_logs",
                       "log_records", "rejected_log_records", logs_service_pb2_grpc.LogsServiceStub, "/v1/logs"),
    "profiles": SignalKind("profiles", profiles_service_pb2.ExportProfilesServiceRequest,
                           profiles_service_pb2.ExportProfilesServiceResponse, "resource_profiles",
                           "scope_profiles", "profiles", "rejected_profiles",
                           profiles_service_pb2_grpc.ProfilesServiceStub, "/v1development/profiles"),
}
