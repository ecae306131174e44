"""
OTLP LogRecords from parsed lines, and the per-file attributes and resource.

Why per file: log.file.path/log.file.name are the same for every line of a file, and a file under
/var/log/containers names its pod, namespace and container, which belong in the resource (the
same pod's spans carry them there too), so both are computed once when the file is first seen.
"""
import os
import re

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from telegen.signals.common import any_value, attributes

# /var/log/containers/<pod>_<namespace>_<container>-<64 hex container id>.log (kubelet's links)
_K8S_NAME = re.compile(r"^(?P<pod>[^_]+)_(?P<ns>[^_]+)_(?P<container>.+)-(?P<id>[0-9a-f]{64})\.log$")


def kubernetes_attributes(path):
    """Resource attributes named by a kubelet container log file name, or {}."""
    m = _K8S_NAME.match(os.path.basename(path))
    if m is None:
        return {}
    return {"k8s.pod.name": m["pod"], "k8s.namespace.name": m["ns"], "k8s.container.name": m["container"],
            "container.id": m["id"]}


def file_attributes(path):
    """The record attributes every line of `path` carries, in dict form for the LogRecord constructor."""
    return attributes({"log.file.path": path, "log.file.name": os.path.basename(path)})


def build(parsed, file_attrs, observed_ns):
    """A LogRecord from a Parsed line; observed_time is always set, time only when the line had one."""
    attrs = list(file_attrs)
    if parsed.stream:
        attrs.append({"key": "log.iostream", "value": {"string_value": parsed.stream}})
    if parsed.attributes:
        attrs += attributes(parsed.attributes)
    return LogRecord(
        time_unix_nano=parsed.time_ns,
        observed_time_unix_nano=observed_ns,
        severity_number=parsed.severity_number,
        severity_text=parsed.severity_text,
        body=any_value(parsed.body) if not isinstance(parsed.body, str) else {"string_value": parsed.body},
        attributes=attrs,
        trace_id=parsed.trace_id,
        span_id=parsed.span_id,
        flags=parsed.trace_flags,
    )
