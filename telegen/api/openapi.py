"""
The OpenAPI 3.1 document of the API, with a response schema for every route.

Schemas are JSON Schema 2020-12 (what OpenAPI 3.1 uses), so tests validate real answers with them.
"""
from telegen import __version__
from telegen.discovery.cloud import CloudProvider
from telegen.discovery.docker import DockerProvider
from telegen.discovery.kubernetes import KubernetesProvider

NULLABLE_STR = {"type": ["string", "null"]}
TIME = {"type": ["string", "null"], "format": "date-time"}
COUNT = {"type": "integer", "minimum": 0}


def _obj(properties, required=None, extra=False):
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": extra,
    }


def _queue():
    return _obj({"size": COUNT, "capacity": COUNT, "exported": COUNT, "dropped": COUNT}, extra=True)


ERROR = _obj({
    "error": {"type": "string"},
    "message": {"type": "string"},
    "details": {"type": "object"},
})

SCHEMAS = {
    "Error": ERROR,
    "Health": _obj({"status": {"enum": ["ok"]}}),
    "Ready": _obj({
        "status": {"enum": ["ready", "not_ready"]},
        "checks": _obj({"ebpf": {"type": "string"}, "otlp": {"type": "string"}, "discovery": {"type": "string"}}),
        "error": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    }, required=["status", "checks"]),
    "Status": _obj({
        "version": {"type": "string"},
        "commit": {"type": "string"},
        "built": {"type": "string"},
        "uptime": {"type": "string", "pattern": r"^(\d+h)?(\d+m)?\d+s$"},
        "mode": {"type": "string"},
        "host": _obj({"name": {"type": "string"}, "os": {"type": "string"}, "arch": {"type": "string"}, "kernel": {"type": "string"}}),
        "ebpf": _obj({"enabled": {"type": "boolean"}, "programs_loaded": COUNT, "maps_created": COUNT, "ringbuf_size": COUNT}),
        "profiling": _obj({"enabled": {"type": "boolean"}, "sample_rate": COUNT, "profiles_collected": COUNT}),
        "export": _obj({
            "endpoint": NULLABLE_STR, "connected": {"type": "boolean"}, "last_export": TIME,
            "spans_exported": COUNT, "metrics_exported": COUNT,
        }),
        "discovery": _obj({
            "kubernetes": {"type": "boolean"}, "docker": {"type": "boolean"},
            "pods_discovered": COUNT, "containers_discovered": COUNT,
        }),
    }),
    "EbpfStatus": _obj({
        "enabled": {"type": "boolean"},
        "programs": {"type": "array", "items": _obj({
            "name": {"type": "string"}, "type": {"type": "string"}, "attached": {"type": "boolean"},
            "id": {"type": ["integer", "null"]},
        }, required=["name", "type", "attached", "id"], extra=True)},
        "maps": {"type": "array", "items": _obj({
            "name": {"type": "string"}, "type": {"type": "string"}, "entries": {"type": ["integer", "null"]},
            "max_entries": COUNT,
        }, required=["name", "type", "entries", "max_entries"], extra=True)},
        "ringbuf": _obj({"size": COUNT, "events_received": COUNT, "events_lost": COUNT},
                        required=["size", "events_received", "events_lost"], extra=True),
        "capture": {"oneOf": [{"type": "null"}, _obj({"mode": {"enum": ["socket", "syscalls", None]}, "reason": {"type": "string"}})]},
        "protocols": {"type": "array", "description": "L7 protocols of the network capture (agent.ebpf.protocols); empty when it does not run",
                      "items": _obj({
                          "name": {"type": "string"}, "enabled": {"type": "boolean"}, "exchanges": COUNT,
                          "open_connections": COUNT, "losses": {"type": "object", "additionalProperties": COUNT},
                      }, required=["name", "enabled", "exchanges", "open_connections", "losses"])},
    }, required=["enabled", "programs", "maps", "ringbuf"], extra=True),
    "ExportStatus": _obj({
        "endpoint": NULLABLE_STR,
        "protocol": {"type": "string"},
        "tls": {"type": "boolean"},
        "compression": {"type": "string"},
        "connected": {"type": "boolean"},
        "last_export": TIME,
        "last_error": NULLABLE_STR,
        "queues": _obj({name: _queue() for name in ("traces", "metrics", "logs")},
                       required=["traces", "metrics", "logs"], extra=True),
    }, extra=True),
    "DiscoveryStatus": _obj({
        "kubernetes": KubernetesProvider.STATUS_SCHEMA,
        "docker": DockerProvider.STATUS_SCHEMA,
        "cloud": CloudProvider.STATUS_SCHEMA,
        "discovered_services": {"type": "array", "items": _obj({
            "name": {"type": "string"}, "namespace": NULLABLE_STR, "instances": COUNT,
            "ports": {"type": "array", "items": {"type": "integer"}},
        }, required=["name", "namespace", "instances", "ports"], extra=True)},
    }),
    "Config": {"type": "object", "required": ["telegen", "otlp", "agent", "self_telemetry"]},
    "ReloadResult": _obj({
        "status": {"enum": ["ok"]}, "message": {"type": "string"},
        "reloaded": {"type": "array", "items": {"type": "string"},
                     "description": "every child now running on the new configuration"},
        "rebuilt": {"type": "array", "items": {"type": "string"},
                    "description": "children stopped and built anew (a socket or a BPF program changed)"},
        "reconfigured": {"type": "array", "items": {"type": "string"},
                         "description": "children that applied their new configuration in place"},
    }),
    "FlushResult": _obj({
        "status": {"enum": ["ok"]},
        "flushed": {"type": "object", "additionalProperties": COUNT},
    }),
    "OpenApi": {"type": "object", "required": ["openapi", "paths"]},
}


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description, schema):
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*codes):
    meaning = {
        400: "Invalid request or configuration", 401: "Missing or invalid bearer token",
        403: "Forbidden (admin from a non-loopback client while auth is off, or a CORS origin not allowed)",
        404: "Not found", 405: "Method not allowed (see Allow)", 413: "Request body too large",
        429: "Rate limited (Retry-After: 1)", 500: "Internal error", 501: "Not available in Python",
        503: "Unavailable",
    }
    return {str(c): _json(meaning[c], "Error") for c in codes}


COMMON_ERRORS = (401, 404, 405, 429, 500)


def _get(summary, ok, *, auth=True, extra=()):
    operation = {"summary": summary, "responses": {"200": ok, **_errors(*COMMON_ERRORS, *extra)}}
    if not auth:
        operation["security"] = [{}, {"bearerAuth": []}]
    return {"get": operation}


def _paths():
    text_metrics = {"description": "Prometheus text format", "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}}
    ready_503 = _json("Not ready (the readiness document plus the error fields)", "Ready")
    paths = {
        "/healthz": _get("Liveness probe", _json("Healthy", "Health"), auth=False, extra=(503,)),
        "/ready": _get("Readiness probe", _json("Ready", "Ready"), auth=False),
        "/metrics": _get("Prometheus self-metrics", text_metrics),
        "/status": _get("Agent status", _json("Status", "Status")),
        "/status/ebpf": _get("eBPF programs, maps and ring buffer", _json("eBPF status", "EbpfStatus")),
        "/status/export": _get("Export pipeline status", _json("Export status", "ExportStatus")),
        "/status/discovery": _get("Discovery status", _json("Discovery status", "DiscoveryStatus")),
        "/config": _get("Running configuration, secrets redacted", _json("Configuration", "Config")),
        "/openapi.json": _get("This document", _json("OpenAPI 3.1 document", "OpenApi")),
        "/admin/reload": {"post": {
            "summary": "Re-read the configuration file and apply it (same as SIGHUP)",
            "responses": {"200": _json("Reloaded", "ReloadResult"), **_errors(*COMMON_ERRORS, 400, 403, 413)},
        }},
        "/admin/flush": {"post": {
            "summary": "Send everything queued now",
            "responses": {"200": _json("Flushed", "FlushResult"), **_errors(*COMMON_ERRORS, 403, 413)},
        }},
        "/debug/{profile}": {"get": {
            "summary": "Debug endpoints (pprof formats, /debug/vars); only with self_telemetry.debug.enabled",
            "parameters": [
                {"name": "profile", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "pprof/, pprof/profile, pprof/heap, pprof/goroutine, pprof/threadcreate, pprof/block, pprof/mutex, pprof/trace, vars"},
                {"name": "seconds", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
                 "description": "CPU profile duration (pprof/profile)"},
                {"name": "debug", "in": "query", "required": False, "schema": {"type": "integer", "enum": [0, 1, 2]},
                 "description": "Text output for pprof/goroutine"},
            ],
            "responses": {
                "200": {"description": "Gzipped profile.proto, text, or JSON (vars)",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                    "text/plain": {"schema": {"type": "string"}},
                                    "application/json": {"schema": {"type": "object"}}}},
                **_errors(*COMMON_ERRORS, 400, 501, 503),
            },
        }},
    }
    paths["/ready"]["get"]["responses"]["503"] = ready_503
    versioned = {f"/api/v1{path}": item for path, item in paths.items()}
    return {**paths, **versioned}


def openapi_document():
    """The whole document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Telegen self-telemetry API",
            "version": __version__,
            "description": "Health, readiness, metrics, status, configuration and admin endpoints of the Telegen agent. "
                           "Every path is also served under /api/v1. Every non-2xx answer is the Error document.",
        },
        "servers": [{"url": "http://localhost:19090"}],
        "security": [{"bearerAuth": []}, {}],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "Needed when self_telemetry.auth.enabled; probes exempt by default"}},
        },
    }
