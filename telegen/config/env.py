"""
Environment overrides: the standard OTEL_* variables, then TELEGEN_<SECTION>_<KEY>.

Both are written into the parsed file tree as raw values before validation, so an override goes
through exactly the same parsing and checks as a file value. Precedence, highest first:
TELEGEN_* > OTEL_* > file > defaults (TELEGEN_* are applied last).

Every schema leaf has a TELEGEN_ name: its dotted path upper-cased with dots and dashes turned into
underscores (otlp.tls.ca_file -> TELEGEN_OTLP_TLS_CA_FILE). Keys of the `telegen` section also answer
to the short form the original Telegen documented (TELEGEN_LOG_LEVEL for telegen.log_level); when a
short name is also some key's full name, the full path wins, and when both spellings are set the
full one is applied last. TELEGEN_* names that match no key are ignored (other tools share the prefix).
"""
from urllib.parse import urlsplit

from telegen.config.schema import leaves
from telegen.signals.common import parse_resource_attributes

PREFIX = "TELEGEN_"
_SHORT_SECTION = "telegen"
_OTLP_SIGNALS = ("traces", "metrics", "logs")
_OTEL_PROTOCOLS = {"grpc": "grpc", "http/protobuf": "http"}


def env_name(path):
    """The TELEGEN_ variable of a key path."""
    return PREFIX + "_".join(path).upper().replace("-", "_")


def _build_names():
    """(full names, short names) -> path; a collision between two full names is a schema bug."""
    full = {}
    for path, _field in leaves():
        name = env_name(path)
        if name in full:
            raise AssertionError(f"{name} names both {full[name]} and {path}")
        full[name] = path
    short = {env_name(path[1:]): path for path in full.values() if path[0] == _SHORT_SECTION}
    return full, {name: path for name, path in short.items() if name not in full}


FULL_NAMES, SHORT_NAMES = _build_names()


def set_in(tree, path, value):
    """
    Put value at path in a parsed tree, creating missing (or empty, null) sections.

    A section the file gave as a non-mapping is left alone: validation reports that file error.
    """
    node = tree
    for name in path[:-1]:
        child = node.get(name)
        if child is None:
            child = node[name] = {}
        if not isinstance(child, dict):
            return
        node = child
    node[path[-1]] = value


def _apply(tree, origins, path, value, var):
    set_in(tree, path, value)
    origins[path] = var


def _endpoint_is_http(endpoint):
    """True for an http(s) URL on port 4318: the OTLP/HTTP port, so the protocol is http."""
    try:
        parts = urlsplit(endpoint)
        return parts.scheme in ("http", "https") and parts.port == 4318
    except ValueError:
        return False


def apply_otel(tree, environ, origins):
    """Fold the standard OpenTelemetry exporter and resource variables into the tree."""
    protocol = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
    if protocol:
        # An unsupported value goes through as is, so the enum check names it with its variable.
        _apply(tree, origins, ("otlp", "protocol"), _OTEL_PROTOCOLS.get(protocol, protocol), "OTEL_EXPORTER_OTLP_PROTOCOL")
    endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if endpoint:
        _apply(tree, origins, ("otlp", "endpoint"), endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT")
        if not protocol and _endpoint_is_http(endpoint):
            _apply(tree, origins, ("otlp", "protocol"), "http", "OTEL_EXPORTER_OTLP_ENDPOINT")
    for signal in _OTLP_SIGNALS:
        var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        if environ.get(var, "").strip():
            _apply(tree, origins, ("otlp", signal, "endpoint"), environ[var].strip(), var)
    if "OTEL_EXPORTER_OTLP_HEADERS" in environ:
        _apply(tree, origins, ("otlp", "headers"), environ["OTEL_EXPORTER_OTLP_HEADERS"], "OTEL_EXPORTER_OTLP_HEADERS")
    attributes = parse_resource_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    # service.name is carried by telegen.service_name; OTEL_SERVICE_NAME wins over it (OTel SDK rule).
    service_name = attributes.pop("service.name", None)
    if service_name:
        _apply(tree, origins, ("telegen", "service_name"), service_name, "OTEL_RESOURCE_ATTRIBUTES")
    if attributes:
        _apply(tree, origins, ("telegen", "resource_attributes"), attributes, "OTEL_RESOURCE_ATTRIBUTES")
    if environ.get("OTEL_SERVICE_NAME", "").strip():
        _apply(tree, origins, ("telegen", "service_name"), environ["OTEL_SERVICE_NAME"].strip(), "OTEL_SERVICE_NAME")


def apply_telegen(tree, environ, origins):
    """Apply TELEGEN_<SECTION>_<KEY> variables (short forms first, so full names win)."""
    for names in (SHORT_NAMES, FULL_NAMES):
        for name, path in names.items():
            if name in environ:
                _apply(tree, origins, path, environ[name], name)


def apply_environment(tree, environ):
    """Apply OTEL_* then TELEGEN_* to tree in place; return {path: variable} for what they set."""
    origins = {}
    apply_otel(tree, environ, origins)
    apply_telegen(tree, environ, origins)
    return origins
