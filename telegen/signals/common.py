"""
OTLP building blocks shared by every signal: attribute lists, resources, scopes, host identity.
"""
import os
import platform
import socket
import uuid

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from telegen import __version__

SCOPE = InstrumentationScope(name="telegen", version=__version__)

# One id per agent process, as the resource conventions ask for service.instance.id.
_AGENT_INSTANCE_ID = str(uuid.uuid4())


def any_value(value):
    """
    A Python scalar (or list of scalars) as an AnyValue in dict form. Message constructors take
    the dict form directly and build it several times faster than nested AnyValue objects.
    """
    if isinstance(value, bool):
        return {"bool_value": value}
    if isinstance(value, int):
        return {"int_value": value}
    if isinstance(value, float):
        return {"double_value": value}
    if isinstance(value, (list, tuple)):
        return {"array_value": {"values": [any_value(v) for v in value]}}
    if isinstance(value, bytes):
        return {"bytes_value": value}
    return {"string_value": str(value)}


def attributes(mapping):
    """
    KeyValue entries (dict form) from a dict, skipping None values, in the dict's order. Pass the
    result to a constructor (`Span(attributes=...)`, `data_points.add(attributes=...)`).
    """
    return [{"key": k, "value": any_value(v)} for k, v in mapping.items() if v is not None]


def resource(mapping):
    """An OTLP Resource from a dict of attributes."""
    return Resource(attributes=attributes(mapping))


def goarch():
    """The machine architecture in the Go/OTel spelling (amd64, arm64 ...)."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}.get(machine, machine)


def host_identity():
    """Host facts used by /status and by resources: name, os, arch, kernel."""
    uname = os.uname()
    return {
        "name": socket.gethostname(),
        "os": uname.sysname.lower(),
        "arch": goarch(),
        "kernel": uname.release,
    }


def parse_resource_attributes(text):
    """Parse OTEL_RESOURCE_ATTRIBUTES ("k=v,k2=v2", values percent-decoded) into a dict."""
    from urllib.parse import unquote

    out = {}
    for part in (text or "").split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            if key.strip():
                out[key.strip()] = unquote(value.strip())
    return out


def host_resource_attributes(config):
    """
    The resource of the agent's own signals (host metrics): host.*, os.*, service.* from config,
    plus telegen.resource_attributes (where the loader folds OTEL_RESOURCE_ATTRIBUTES in).
    """
    host = host_identity()
    tconf = config["telegen"]
    attrs = {
        "service.name": tconf["service_name"],
        "service.version": __version__,
        "service.instance.id": tconf.get("instance_id") or _AGENT_INSTANCE_ID,
        "host.name": host["name"],
        "host.arch": host["arch"],
        "os.type": host["os"],
        "os.description": f"{os.uname().sysname} {host['kernel']}",
    }
    attrs.update(tconf.get("resource_attributes") or {})
    return attrs
