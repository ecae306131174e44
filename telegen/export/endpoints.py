"""
Turning otlp.* config into a concrete target per signal: address, TLS or not, headers.

Rules (as the OTLP exporter specification and the Collector apply them): a per-signal endpoint
replaces otlp.endpoint; for HTTP a per-signal URL is used as is while the base endpoint gets
/v1/<signal> appended; an http:// scheme means plain text, https:// means TLS, no scheme
follows otlp.insecure. gRPC targets are host:port.
"""
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Target:
    """Where and how one signal is sent."""

    protocol: str    # grpc | http
    address: str     # grpc: host:port; http: full URL
    tls: bool
    label: str       # endpoint label in self-metrics and /status (no credentials)


def _strip_userinfo(netloc):
    return netloc.rsplit("@", 1)[-1]


def resolve(otlp, kind):
    """The Target of signal `kind` (a SignalKind) from the otlp config section, or None for the file sink."""
    override = otlp[kind.name]["endpoint"]
    raw = override or otlp["endpoint"]
    if not raw:
        return None
    return _target(otlp, raw, None if override else kind.http_path)


def main_target(otlp):
    """The Target of otlp.endpoint itself (what /status/export shows), or None for the file sink."""
    return _target(otlp, otlp["endpoint"], "") if otlp["endpoint"] else None


def _target(otlp, raw, http_suffix):
    """http_suffix: appended to the URL path (trailing slash removed); None keeps the path as is."""
    protocol = otlp["protocol"]
    has_scheme = "://" in raw
    parts = urlsplit(raw if has_scheme else "//" + raw)
    tls = parts.scheme == "https" if has_scheme else not otlp["insecure"]
    netloc = _strip_userinfo(parts.netloc)
    has_port = ":" in netloc.rsplit("]", 1)[-1]
    if protocol == "grpc":
        address = netloc if has_port else f"{netloc}:4317"
        return Target("grpc", address, tls, address)
    if not has_port:
        netloc = f"{netloc}:4318"
    path = parts.path if http_suffix is None else parts.path.rstrip("/") + http_suffix
    url = f"{'https' if tls else 'http'}://{netloc}{path}"
    return Target("http", url, tls, url)
