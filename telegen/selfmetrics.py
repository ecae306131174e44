"""
The agent's own Prometheus metrics (the telegen_* families of DESIGN.md).

One SelfMetrics object per agent owns a private CollectorRegistry, so tests can build as many
agents as they like and /metrics shows only these families plus the process collector, which is
registered under the "telegen" namespace (telegen_process_resident_memory_bytes ...).
"""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

SIGNALS = ("traces", "metrics", "logs", "profiles")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class SelfMetrics:
    """Holds every telegen_* family; subsystems increment them, /metrics renders them."""

    def __init__(self, registry=None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(namespace="telegen", registry=r)

        # Collection and export, per signal.
        self.spans_collected = Counter("telegen_spans_collected", "Spans built from observations", registry=r)
        self.spans_exported = Counter("telegen_spans_exported", "Spans accepted by the exporter's destination", registry=r)
        self.spans_dropped = Counter("telegen_spans_dropped", "Spans dropped, by reason", ["reason"], registry=r)
        self.metrics_collected = Counter("telegen_metrics_collected", "Metric data points collected", registry=r)
        self.metrics_exported = Counter("telegen_metrics_exported", "Metric data points exported", registry=r)
        self.logs_collected = Counter("telegen_logs_collected", "Log records collected", registry=r)
        self.logs_exported = Counter("telegen_logs_exported", "Log records exported", registry=r)
        self.profiles_collected = Counter("telegen_profiles_collected", "Profiles collected", registry=r)

        # Export pipeline.
        self.export_requests = Counter("telegen_export_requests", "Export requests by outcome", ["endpoint", "status"], registry=r)
        self.export_errors = Counter("telegen_export_errors", "Export errors by type", ["endpoint", "error_type"], registry=r)
        self.export_latency = Histogram("telegen_export_latency_seconds", "Export request latency", ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.export_batch_size = Histogram("telegen_export_batch_size", "Items per export request", ["signal_type"], buckets=_BATCH_BUCKETS, registry=r)
        self.export_queue_size = Gauge("telegen_export_queue_size", "Items waiting in the export queue", ["signal_type"], registry=r)
        self.queue_dropped = Counter("telegen_queue_dropped", "Items dropped from export, by reason", ["signal_type", "reason"], registry=r)
        self.export_retries = Counter("telegen_export_retries", "Export attempts that were retried", ["endpoint"], registry=r)

        # eBPF.
        self.ebpf_programs_loaded = Gauge("telegen_ebpf_programs_loaded", "BPF programs attached", ["program_type"], registry=r)
        self.ebpf_maps_created = Gauge("telegen_ebpf_maps_created", "BPF maps created", ["map_type"], registry=r)
        self.ebpf_map_entries = Gauge("telegen_ebpf_map_entries", "Live entries per BPF map", ["map_name"], registry=r)
        self.ebpf_map_entries_counted = Gauge("telegen_ebpf_map_entries_counted_timestamp_seconds", "When telegen_ebpf_map_entries was last counted (Unix time)", registry=r)
        self.ebpf_ringbuf_events = Counter("telegen_ebpf_ringbuf_events", "Ring buffer events received", registry=r)
        self.ebpf_ringbuf_fill = Gauge("telegen_ebpf_ringbuf_fill_ratio", "Share of each ring buffer waiting to be read when its last drain began (the kernel loses events at 1)", ["buffer"], registry=r)
        self.ebpf_ringbuf_lost = Counter("telegen_ebpf_ringbuf_lost", "Ring buffer events lost (reserve failed in the kernel)", registry=r)
        self.ebpf_events_dropped = Counter("telegen_ebpf_events_dropped", "Kernel events dropped in user space, by reason", ["reason"], registry=r)
        self.ebpf_decoder_losses = Counter("telegen_ebpf_decoder_losses", "What an L7 decoder could not make an exchange of, by protocol and reason", ["protocol", "reason"], registry=r)
        self.ebpf_cpu_budget = Gauge("telegen_ebpf_cpu_budget_cores", "CPU the event consumer may use now (agent.ebpf.min_cpu..max_cpu; lower while CPUs are contended)", registry=r)
        self.ebpf_consumer_held = Counter("telegen_ebpf_consumer_held", "Times a ring buffer reader paused for the rest of a window because the CPU budget was spent", registry=r)
        self.metric_overflow = Counter("telegen_metric_attribute_overflow", "Data points folded into the overflow series (cardinality cap)", ["metric"], registry=r)

        # Discovery.
        self.k8s_pods_discovered = Gauge("telegen_k8s_pods_discovered", "Kubernetes pods known", registry=r)
        self.k8s_services_discovered = Gauge("telegen_k8s_services_discovered", "Kubernetes services known", registry=r)
        self.processes_tracked = Gauge("telegen_processes_tracked", "Processes in the process table", registry=r)
        self.discovery_objects = Gauge("telegen_discovery_objects", "Objects a discovery provider knows now", ["provider", "kind"], registry=r)
        self.discovery_events = Counter("telegen_discovery_events", "Watch events a discovery provider applied, by action", ["provider", "action"], registry=r)
        self.discovery_errors = Counter("telegen_discovery_errors", "Discovery failures (failed requests, lost streams, unreadable events), by reason", ["provider", "reason"], registry=r)
        self.discovery_watch_restarts = Counter("telegen_discovery_watch_restarts", "Times a discovery provider reconnected its watch", ["provider"], registry=r)

        # Log collection (telegen/logs): what the tailer read; records are telegen_logs_collected.
        self.logs_lines_read = Counter("telegen_logs_lines_read", "Lines read from log files", registry=r)
        self.logs_bytes_read = Counter("telegen_logs_bytes_read", "Bytes read from log files", registry=r)
        self.logs_files_watched = Gauge("telegen_logs_files_watched", "Log files matched by agent.logs.include", registry=r)
        self.logs_files_open = Gauge("telegen_logs_files_open", "Log files held open", registry=r)
        self.logs_long_lines = Counter("telegen_logs_long_lines", "Lines longer than agent.logs.max_line_size, by action (split, truncated)", ["action"], registry=r)
        self.logs_invalid_utf8 = Counter("telegen_logs_invalid_utf8_lines", "Lines whose invalid UTF-8 was replaced", registry=r)
        self.logs_file_errors = Counter("telegen_logs_file_errors", "Log files that could not be opened or read", registry=r)
        self.logs_backpressure = Counter("telegen_logs_backpressure_pauses", "Polls that read nothing because the logs queue was full", registry=r)
        self.logs_dropped = Counter("telegen_logs_dropped", "Log records the export pipeline dropped, by reason (their lines are not read again)", ["reason"], registry=r)
        # CPU profiler.
        self.profiler_samples = Counter("telegen_profiler_samples", "CPU samples drained from the kernel", registry=r)
        self.profiler_profiles = Counter("telegen_profiler_profiles", "Profiles built (one per process and window)", registry=r)
        self.profiler_dropped = Counter("telegen_profiler_dropped", "CPU samples or stacks lost, by reason", ["reason"], registry=r)
        self.profiler_worker_restarts = Counter("telegen_profiler_worker_restarts", "Profiler worker processes restarted after dying or hanging", registry=r)
        self.profiler_symbol_evictions = Counter("telegen_profiler_symbol_cache_evictions", "Resolved frames dropped from the symbol cache (agent.profiling.symbol_cache_entries)", registry=r)

        # The API itself.
        self.api_requests = Counter("telegen_api_requests", "API requests by route and status code", ["route", "code"], registry=r)

        for signal in SIGNALS:
            self.export_queue_size.labels(signal_type=signal).set(0)

    def render(self):
        """The Prometheus text exposition of every family."""
        return generate_latest(self.registry)
