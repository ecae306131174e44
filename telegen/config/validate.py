"""
Validation of a parsed tree against the schema: kinds, limits, unknown keys, nulls, cross-field
rules, and the normalizations senders rely on (OTLP endpoint form, instance id).

Problems are raised as kinds.Invalid whose `at` is the full key path; the loader turns that into
a ConfigError with the source, the line or the environment variable that gave the value.
"""
import re
import socket

from telegen.config.kinds import Invalid, closest, parse_value
from telegen.config.schema import SCHEMA, Section

_ORIGIN = re.compile(r"(?:https?)://(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
_URL_SCHEME = re.compile(r"(https?)://", re.IGNORECASE)


def _leaf(field, value, path):
    try:
        return parse_value(value, field)
    except Invalid as err:
        if field.secret:
            # Never echo a secret: not the value, nor a hint derived from it.
            raise Invalid("invalid value", at=path) from None
        raise Invalid(err.problem, err.hint, path + err.at) from None


def build(section, data, path=()):
    """The full config dict of one section: given values parsed, the rest from defaults."""
    if data is None:
        data = {}  # `otlp:` with everything below commented out
    if not isinstance(data, dict):
        raise Invalid("expected a mapping", at=path)
    for key in data:
        if not isinstance(key, str):
            raise Invalid(f"keys must be strings, got {key!r}", at=path)
        if key not in section.fields:
            raise Invalid("unknown key", hint=closest(key, section.fields), at=path + (key,))
    out = {}
    for name, spec in section.fields.items():
        if isinstance(spec, Section):
            out[name] = build(spec, data.get(name), path + (name,))
        else:
            out[name] = _leaf(spec, data.get(name, spec.default), path + (name,))
    return out


def _split_url(endpoint):
    """(scheme or None, rest) of an endpoint given as a URL or as host:port."""
    match = _URL_SCHEME.match(endpoint)
    if not match:
        return None, endpoint
    return match.group(1).lower(), endpoint[match.end():]


def normalize_endpoint(endpoint, protocol, insecure, path):
    """
    The endpoint in the form its sender takes, and the plain-text flag its scheme implies (or None).

    gRPC takes `host:port`: an http(s) scheme is stripped (http:// means insecure, https:// TLS).
    OTLP/HTTP takes a URL: without a scheme, http:// or https:// is prepended by `insecure`.
    """
    scheme, rest = _split_url(endpoint)
    if protocol == "http":
        if scheme is None:
            return ("http://" if insecure else "https://") + endpoint, None
        if not rest:
            raise Invalid("URL without a host", at=path)
        return endpoint, scheme == "http"
    if scheme is None:
        return endpoint, None
    rest = rest.rstrip("/")
    if not rest or "/" in rest:
        raise Invalid("a gRPC endpoint is host:port (a URL may not carry a path)", at=path)
    return rest, scheme == "http"


def _normalize_otlp(otlp):
    if otlp["endpoint"] is not None:
        otlp["endpoint"], plain = normalize_endpoint(otlp["endpoint"], otlp["protocol"], otlp["insecure"], ("otlp", "endpoint"))
        if plain is not None:
            otlp["insecure"] = plain
    for signal in ("traces", "metrics", "logs", "profiles"):
        if otlp[signal]["endpoint"] is not None:
            otlp[signal]["endpoint"], _ = normalize_endpoint(
                otlp[signal]["endpoint"], otlp["protocol"], otlp["insecure"], ("otlp", signal, "endpoint"))


def _check_cross_fields(config):
    api = config["self_telemetry"]
    if api["auth"]["enabled"] and not api["auth"]["bearer_token"]:
        raise Invalid("required when self_telemetry.auth.enabled is true", at=("self_telemetry", "auth", "bearer_token"))
    for index, origin in enumerate(api["cors"]["allowed_origins"]):
        if not _ORIGIN.fullmatch(origin):
            raise Invalid(f"invalid origin {origin!r} (use scheme://host[:port], e.g. 'http://localhost:3000')",
                          at=("self_telemetry", "cors", "allowed_origins", index))
    backoff = config["backoff"]
    if backoff["initial"] > backoff["max"]:
        raise Invalid(f"must be <= backoff.max ({backoff['max']:g}s), got {backoff['initial']:g}s", at=("backoff", "initial"))
    ebpf = config["agent"]["ebpf"]
    if ebpf["min_cpu"] > ebpf["max_cpu"]:
        raise Invalid(f"must be <= agent.ebpf.max_cpu ({ebpf['max_cpu']:g}), got {ebpf['min_cpu']:g}", at=("agent", "ebpf", "min_cpu"))
    pattern = config["agent"]["logs"]["multiline_start"]
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as err:
            raise Invalid(f"not a regular expression: {err}", at=("agent", "logs", "multiline_start")) from None


def validate(tree):
    """A parsed (expanded, overridden) tree -> the full validated config; raises Invalid."""
    config = build(SCHEMA, tree)
    _check_cross_fields(config)
    _normalize_otlp(config["otlp"])
    if config["telegen"]["instance_id"] is None:
        config["telegen"]["instance_id"] = socket.gethostname()
    return config
