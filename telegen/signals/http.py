# -*- test-case-name: tests.unit.test_http_signals -*-
"""
HttpExchange records -> OTLP spans and RED metrics, per the stable HTTP semantic conventions.

Spans: kind SERVER or CLIENT, name "METHOD" or "METHOD route" (routes only from configured
patterns, so raw paths never explode span names), status ERROR for 5xx (servers) and 4xx/5xx
(clients), a W3C traceparent on the request makes the span join that trace.

Metrics: http.server.request.duration and http.client.request.duration histograms (seconds,
the conventions' default buckets, cumulative), aggregated in memory per process and attribute
set, with a cap on series per metric: beyond it points go to one series marked
otel.metric.overflow=true and are counted in telegen_metric_attribute_overflow_total.
"""
import random
import re

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from telegen.l7.http import parse_traceparent, split_host
from telegen.signals import exchanges
from telegen.signals.exchanges import (  # noqa: F401 (_attribute: the differential tests check it here)
    OVERFLOW, DurationHistograms, SpanTemplate, _attribute, fixed_span)

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SERVER_METRIC = "http.server.request.duration"
CLIENT_METRIC = "http.client.request.duration"
KNOWN_METHODS = frozenset(("GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))


class RouteMatcher:
    """Configured route patterns (/users/{id}, /static/*) matched against url.path."""

    def __init__(self, patterns):
        self._compiled = [(p, re.compile(self._regex(p))) for p in patterns]

    @staticmethod
    def _regex(pattern):
        out = []
        for part in re.split(r"(\{[^/}]*\}|\*)", pattern):
            if part == "*":
                out.append(".*")
            elif part.startswith("{") and part.endswith("}"):
                out.append("[^/]+")
            else:
                out.append(re.escape(part))
        return "^" + "".join(out) + "/?$"

    def match(self, path):
        """The first pattern matching path, or None."""
        for pattern, regex in self._compiled:
            if regex.match(path):
                return pattern
        return None


def _str(value):
    return value.decode("latin-1") if value is not None else None


def exchange_attributes(ex, path, route):
    """The span attributes of an exchange (dict, None values are skipped by attributes())."""
    method = ex.method if ex.method in KNOWN_METHODS else "_OTHER"
    host_header = ex.headers.get(b"host")
    if ex.server_side:
        default_port = ex.local_port
        server_address, server_port = split_host(host_header, default_port) if host_header else (ex.local_address, default_port)
    else:
        server_address, server_port = split_host(host_header, ex.peer_port) if host_header else (ex.peer_address, ex.peer_port)
        server_port = ex.peer_port or server_port
    return {
        "http.request.method": method,
        "http.request.method_original": ex.method if method == "_OTHER" else None,
        "url.path": path,
        "url.scheme": "https" if ex.tls else "http",
        "http.route": route,
        "http.response.status_code": ex.status,
        "server.address": server_address,
        "server.port": server_port,
        "client.address": ex.peer_address if ex.server_side else None,
        "network.peer.address": ex.peer_address,
        "network.peer.port": ex.peer_port,
        "network.protocol.version": ex.version,
        "user_agent.original": _str(ex.headers.get(b"user-agent")),
        "http.request.body.size": ex.request_body_size,
        "http.response.body.size": ex.response_body_size,
    }


def url_path(target):
    """The path part of a request target (origin form or absolute form)."""
    if target.startswith("/") and "?" not in target and "#" not in target:
        return target
    if target.startswith("http://") or target.startswith("https://"):
        slash = target.find("/", target.find("//") + 2)
        target = target[slash:] if slash >= 0 else "/"
    cut = len(target)
    for sep in ("?", "#"):
        i = target.find(sep)
        if 0 <= i < cut:
            cut = i
    return target[:cut] or "/"


def is_error(server_side, status):
    """Span status ERROR per the conventions: 5xx for servers, 4xx and 5xx for clients, or no response."""
    if status is None:
        return True
    return status >= 500 or (not server_side and status >= 400)


class SpanEncoder(exchanges.SpanEncoder):
    """The span encoder with the HTTP exchange's template()."""

    @staticmethod
    def template(ex, path, route):
        """The SpanTemplate of an HttpExchange's shape (everything but ids, times and peer port)."""
        attrs = exchange_attributes(ex, path, route)
        name = f"{attrs['http.request.method']} {route}" if route else attrs["http.request.method"]
        error = is_error(ex.server_side, ex.status)
        if error and ex.status is not None:
            attrs["error.type"] = str(ex.status)
        traceparent = ex.headers.get(b"traceparent")
        return SpanTemplate(fixed_span(name, ex.server_side, attrs, error),
                            parse_traceparent(traceparent) if traceparent else None)


def build_span(ex, path, route, rand=random.getrandbits):
    """One OTLP Span for an HttpExchange (a one-off SpanEncoder; probes keep theirs)."""
    encoder = SpanEncoder(rand)
    return Span.FromString(encoder.encode(encoder.template(ex, path, route), ex.start_ns, ex.end_ns, ex.peer_port))


class RedMetrics(DurationHistograms):
    """
    The HTTP duration histograms (server and client) per (pid, attribute set), capped per metric.

    @param max_series: series per metric name (all processes together) before overflow.
    """

    def __init__(self, metrics, max_series=2000):
        super().__init__(metrics, {SERVER_METRIC: ("Duration of HTTP server requests.", DURATION_BUCKETS),
                                   CLIENT_METRIC: ("Duration of HTTP client requests.", DURATION_BUCKETS)},
                         max_series)

    @staticmethod
    def _attributes(ex, route):
        """The metric attributes of an exchange, as a hashable tuple of pairs."""
        attrs = [("http.request.method", ex.method if ex.method in KNOWN_METHODS else "_OTHER"),
                 ("url.scheme", "https" if ex.tls else "http")]
        if ex.status is not None:
            attrs.append(("http.response.status_code", ex.status))
        else:
            attrs.append(("error.type", "no_response"))
        if route:
            attrs.append(("http.route", route))
        if not ex.server_side:
            attrs.append(("server.address", ex.peer_address))
            attrs.append(("server.port", ex.peer_port))
        if ex.version:
            attrs.append(("network.protocol.version", ex.version))
        return tuple(attrs)

    def record(self, ex, route, now_ns):
        """Add one exchange's duration."""
        self.recorder(ex, route, now_ns)(max(ex.end_ns - ex.start_ns, 0) / 1e9)

    def recorder(self, ex, route, now_ns):
        """The function that adds a duration to the series of exchanges shaped like `ex` (see series_recorder)."""
        return self.series_recorder(SERVER_METRIC if ex.server_side else CLIENT_METRIC, ex.pid,
                                    self._attributes(ex, route), now_ns)
