"""
The configuration schema: every key Telegen reads, its type, default and limits.

This tree is the single source of truth for validation, defaults, environment overrides
(TELEGEN_<SECTION>_<KEY>), redaction and the documented default file. A loaded config is a plain
nested dict with every key present: durations are float seconds, sizes are int bytes.
"""
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Field:
    """
    One leaf key.

    kind is one of: str, int, float, bool, duration (-> seconds), size (-> bytes), enum,
    list_str, list_int, list_ports (ints or "a-b" ranges -> list of (lo, hi)), map_str, listen
    (":19090" or "host:port"), endpoint (Twisted endpoint string), selectors (list of dicts).
    secret marks values /config and logs must redact.
    """

    kind: str
    default: Any = None
    doc: str = ""
    choices: tuple = ()
    min: Optional[float] = None
    max: Optional[float] = None
    secret: bool = False
    nullable: bool = False
    power_of_two: bool = False


@dataclass(frozen=True)
class Section:
    """A mapping of names to Fields or nested Sections."""

    fields: dict = field(default_factory=dict)
    doc: str = ""


def _signal(enabled=True):
    return Section({
        "enabled": Field("bool", enabled, "Export this signal."),
        "endpoint": Field("str", None, "Override otlp.endpoint for this signal.", nullable=True),
    })


def _queue(capacity, batch_size, max_bytes=64 * 1024 * 1024):
    return Section({
        "capacity": Field("int", capacity, "Items the queue holds before dropping (reason=queue_full).", min=1, max=10_000_000),
        "max_bytes": Field("size", max_bytes, "Encoded bytes the queue holds before dropping.", min=1024),
        "batch_size": Field("int", batch_size, "Items per export request.", min=1, max=100_000),
        "batch_timeout": Field("duration", 5.0, "Send a partial batch after this long.", min=0.001),
    })


SCHEMA = Section({
    "telegen": Section({
        "mode": Field("enum", "agent", "Run mode.", choices=("agent",)),
        "service_name": Field("str", "telegen", "service.name of the agent's own telemetry."),
        "instance_id": Field("str", None, "service.instance.id; defaults to the host name.", nullable=True),
        "log_level": Field("enum", "info", "Log verbosity.", choices=("debug", "info", "warn", "error")),
        "log_format": Field("enum", "json", "Log line format.", choices=("json", "text")),
        "shutdown_timeout": Field("duration", 10.0, "Graceful stop budget, flush included.", min=0.1, max=600),
        "nice": Field("int", 10, "CPU niceness of the agent: under CPU saturation the observed applications win and the agent sheds (counted) events.", min=-20, max=19),
        "data_dir": Field("str", "/var/lib/telegen", "State: file sink output, manhole host key."),
        "resource_attributes": Field("map_str", {}, "Extra resource attributes of the agent's own telemetry (also from OTEL_RESOURCE_ATTRIBUTES)."),
    }),
    "otlp": Section({
        "endpoint": Field("str", None, "Collector address (host:port or URL). Unset: write OTLP JSON lines under telegen.data_dir.", nullable=True),
        "protocol": Field("enum", "grpc", "OTLP transport.", choices=("grpc", "http")),
        "compression": Field("enum", "gzip", "Request compression.", choices=("gzip", "none")),
        "timeout": Field("duration", 10.0, "Per-request timeout.", min=0.001, max=600),
        "insecure": Field("bool", False, "Plain text (no TLS)."),
        "headers": Field("map_str", {}, "Extra request headers / gRPC metadata. Values are secret.", secret=True),
        "tls": Section({
            "ca_file": Field("str", None, "CA bundle to verify the collector.", nullable=True),
            "cert_file": Field("str", None, "Client certificate (mTLS).", nullable=True),
            "key_file": Field("str", None, "Client key (mTLS).", nullable=True, secret=True),
            "insecure_skip_verify": Field("bool", False, "Do not verify the server certificate."),
        }),
        "traces": _signal(),
        "metrics": _signal(),
        "logs": _signal(),
        "profiles": _signal(),
        "file": Section({
            "max_bytes": Field("size", 100 * 1024 * 1024, "Rotate a sink file at this size.", min=1024),
            "max_files": Field("int", 5, "Rotated files kept per signal.", min=1, max=1000),
        }),
    }),
    "agent": Section({
        "ebpf": Section({
            "enabled": Field("bool", True, "Load the eBPF programs."),
            "ringbuf_size": Field("size", 16 * 1024 * 1024, "HTTP ring buffer bytes (power of two, >= 4096); the TCP and process buffers use at most 1 MiB.", min=4096, max=1 << 30, power_of_two=True),
            "min_cpu": Field("float", 0.03, "Cores the event consumer keeps while the host's CPUs are contended; the kernel drops (and counts) what it cannot take.", min=0.01, max=64.0),
            "max_cpu": Field("float", 1.0, "Cores the event consumer may use while CPUs are not contended.", min=0.01, max=64.0),
            "drain_interval": Field("duration", 1.0, "Drain ring buffers this often (the kernel wakes the reader sooner only when a ring buffer is an eighth full); bounds how long an event waits.", min=0.001, max=10),
            "capture": Field("enum", "auto", "HTTP capture: socket (socket-level tp_btf tracepoints), syscalls (syscall tracepoints), auto (socket when it loads, else syscalls).", choices=("auto", "socket", "syscalls")),
            "tls": Field("bool", True, "TLS plaintext: uprobes on OpenSSL's SSL_read/SSL_write (and _ex) in every libssl.so processes map, and on crypto/tls.(*Conn).Read/Write in Go executables (agent.ebpf.tls_go); HTTPS exchanges become HTTP spans with url.scheme https, PostgreSQL, MySQL and Redis over TLS their database spans."),
            "tls_go": Field("bool", False, "With agent.ebpf.tls, also Go programs' crypto/tls (uprobes on each entry and RET of (*Conn).Read/Write/handshakeContext, 26 per Go executable). Off by default for its cost: each hit costs the Go program about 20 us of CPU on a VM (+200-300 us per HTTPS request), and each uprobe takes the kernel ~0.1 s to remove when the agent stops (a host running dockerd, containerd and docker: ~8 s)."),
            "network": Section({
                "enabled": Field("bool", True, "Network capture (HTTP and TCP)."),
                "http": Field("bool", True, "HTTP/1.x spans and RED metrics."),
                "tcp": Field("bool", True, "TCP connection telemetry."),
                "include_ports": Field("list_ports", [], "Only these ports (empty: all)."),
                "exclude_ports": Field("list_ports", [], "Never these ports (nor the agent's own API port, always excluded)."),
                "exclude_paths": Field("list_str", [], "Drop exchanges whose path matches one of these globs."),
                "routes": Field("list_str", [], "Route patterns like /users/{id}; a match sets http.route."),
            }),
            "protocols": Section({
                "http": Field("bool", True, "HTTP/1.x exchanges (with agent.ebpf.network.http)."),
                "postgresql": Field("bool", True, "PostgreSQL client operations."),
                "mysql": Field("bool", True, "MySQL/MariaDB client operations."),
                "redis": Field("bool", True, "Redis client commands."),
                "http2": Field("bool", True, "HTTP/2 (h2c) server and client exchanges, gRPC calls included."),
            }, doc="L7 protocols the network capture classifies connections as; live on reload (connections already classified keep their protocol in the kernel, their events are ignored)."),
            "db": Section({
                "query_text": Field("bool", True, "db.query.text on database spans (literals replaced by ?); off: no statement text and no error message."),
            }),
        }),
        "profiling": Section({
            "enabled": Field("bool", False, "CPU profiling."),
            "sample_rate": Field("int", 99, "Samples per second per CPU.", min=1, max=1000),
            "upload_interval": Field("duration", 60.0, "Profile upload period.", min=1),
            "map_entries": Field("int", 16384, "Entries of each in-kernel counts map and stack map (two of each).", min=256, max=1 << 20),
            "include_self": Field("bool", False, "Profile the agent's own process too."),
            "off_cpu": Field("bool", False, "Also record time blocked (sched_switch) per stack: costs on every context switch."),
            "pprof_files": Field("bool", True, "Write a pprof file per service and window under <telegen.data_dir>/profiles/."),
            "pprof_max_age": Field("duration", 86400.0, "Delete pprof files older than this.", min=1),
            "pprof_max_bytes": Field("size", 256 * 1024 * 1024, "Delete the oldest pprof files beyond this total.", min=1024),
            "symbol_cache_entries": Field("int", 200_000, "Resolved frames cached across processes and the kernel (about 150 bytes each).", min=1000, max=1 << 24),
        }),
        "discovery": Section({
            "poll_interval": Field("duration", 5.0, "/proc rescan period.", min=0.1),
            "instrument": Field("selectors", [], "Only processes matching one of these selectors (empty: all)."),
            "exclude_instrument": Field("selectors", [], "Never processes matching one of these selectors."),
            "kubernetes": Section({
                "enabled": Field("bool", True, "Kubernetes metadata: k8s.* attributes (used in a cluster or with a kubeconfig)."),
                "kubeconfig": Field("str", "", "A kubeconfig path (token or client-certificate users); empty: the pod's service account (in-cluster)."),
                "node_name": Field("str", "", "This node's name (pods of this node only); empty: $NODE_NAME or $K8S_NODE_NAME."),
                "cluster_name": Field("str", "", "k8s.cluster.name (empty: not set)."),
            }),
            "docker": Section({
                "enabled": Field("bool", True, "Docker metadata: container.* attributes (used when the socket exists)."),
                "socket": Field("str", "/var/run/docker.sock", "Docker API socket."),
                "labels": Field("list_str", [], "Container label keys copied to container.label.<key>."),
            }),
        }),
        "host_metrics": Section({
            "enabled": Field("bool", True, "system.* metrics from /proc."),
            "interval": Field("duration", 15.0, "Collection period.", min=0.1),
        }),
        "logs": Section({
            "enabled": Field("bool", False, "Tail log files into OTLP logs."),
            "include": Field("list_str", [], "Globs of files to tail (** spans directories)."),
            "exclude": Field("list_str", [], "Globs of files never tailed (wins over include)."),
            "poll_interval": Field("duration", 0.25, "Expand the globs and read new lines this often (at once again while a file has more).", min=0.01, max=60),
            "inotify": Field("bool", True, "Also read at once when a watched directory reports a write, a new file or a move (Linux inotify); polling stays the fallback."),
            "start_at": Field("enum", "end", "Where files found at the very first run start (no checkpoint yet); files seen later start at their beginning.", choices=("end", "beginning")),
            "fingerprint_size": Field("size", 1000, "Leading bytes that identify a file across renames, copytruncate and re-creation.", min=16, max=65536),
            "max_line_size": Field("size", 1024 * 1024, "Longer lines are split or truncated (see long_lines), and counted.", min=16, max=64 * 1024 * 1024),
            "long_lines": Field("enum", "split", "What happens to a line longer than max_line_size.", choices=("split", "truncate")),
            "max_open_files": Field("int", 256, "Files held open at once; the least recently written are closed and reopened by path.", min=1, max=100_000),
            "flush_timeout": Field("duration", 0.5, "A last line without newline, or an open multiline record, is sent after this long without new data.", min=0.01, max=600),
            "multiline_start": Field("str", None, "Regular expression matching the first line of a record; other lines join the record before them (stack traces).", nullable=True),
            "journal": Section({
                "enabled": Field("bool", False, "Read the systemd journal (needs python3-systemd)."),
                "directory": Field("str", None, "Read the journal files in this directory instead of the system journal.", nullable=True),
                "units": Field("list_str", [], "Only entries of these systemd units (empty: all)."),
            }),
            "format": Field("enum", "auto", "How lines are parsed: auto (by each line's shape), docker, cri (container envelopes, then auto), json, logfmt or plain.", choices=("auto", "docker", "cri", "json", "logfmt", "plain")),
        }),
    }),
    "queues": Section({
        "traces": _queue(10000, 512),
        "metrics": _queue(5000, 1000),
        "logs": _queue(10000, 1000),
        "profiles": _queue(1000, 100),
    }),
    "backoff": Section({
        "initial": Field("duration", 5.0, "First retry delay.", min=0.001),
        "max": Field("duration", 30.0, "Largest retry delay.", min=0.001),
        "multiplier": Field("float", 1.5, "Delay growth per attempt.", min=1.0, max=10.0),
        "jitter": Field("float", 0.5, "Randomization factor (0..1).", min=0.0, max=1.0),
        "max_elapsed": Field("duration", 300.0, "Give up on a batch after this long (reason=retry_exhausted).", min=0.001),
    }),
    "self_telemetry": Section({
        "listen": Field("listen", ":19090", "API address, \":port\" or \"host:port\"."),
        "max_body_bytes": Field("size", 65536, "Largest request body accepted (413 beyond).", min=0),
        "auth": Section({
            "enabled": Field("bool", False, "Require a bearer token."),
            "bearer_token": Field("str", None, "The token (use ${VAR}).", nullable=True, secret=True),
            "exempt_probes": Field("bool", True, "Let /healthz and /ready through without a token."),
        }),
        "rate_limit": Section({
            "enabled": Field("bool", False, "Token-bucket rate limit."),
            "requests_per_second": Field("float", 100.0, "Sustained rate.", min=0.001),
            "burst": Field("int", None, "Bucket size (default: requests_per_second).", nullable=True, min=1),
        }),
        "cors": Section({
            "enabled": Field("bool", False, "Answer CORS for listed origins."),
            "allowed_origins": Field("list_str", [], "Origins allowed (exact match)."),
        }),
        "debug": Section({"enabled": Field("bool", False, "Serve /debug/pprof and /debug/vars.")}),
    }),
    "manhole": Section({
        "enabled": Field("bool", False, "SSH Python prompt into the live agent."),
        "listen": Field("endpoint", "tcp:2222:interface=127.0.0.1", "Twisted endpoint string."),
        "allow_non_loopback": Field("bool", False, "Permit a non-loopback bind (logs a warning)."),
        "authorized_keys": Field("str", "/etc/telegen/manhole_authorized_keys", "Public keys allowed in."),
        "host_key": Field("str", None, "Host private key; default: generated under data_dir.", nullable=True, secret=True),
    }),
    "cloud": Section({
        name: Section({
            "enabled": Field("bool", False, f"{name} instance metadata."),
            "timeout": Field("duration", 0.2, "Metadata request timeout.", min=0.001),
            "endpoint": Field("str", endpoint, "The metadata service's base URL."),
        })
        for name, endpoint in (("aws", "http://169.254.169.254"), ("gcp", "http://metadata.google.internal"),
                               ("azure", "http://169.254.169.254"))
    }),
})


def leaves(section=SCHEMA, prefix=()):
    """Every leaf as (path tuple, Field), in schema order: what env overrides, docs and redaction walk."""
    for name, spec in section.fields.items():
        if isinstance(spec, Section):
            yield from leaves(spec, prefix + (name,))
        else:
            yield prefix + (name,), spec
