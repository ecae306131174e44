"""HTTP spans and RED metrics built from exchanges, per the stable HTTP semantic conventions."""
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from telegen.l7.records import HttpExchange
from telegen.selfmetrics import SelfMetrics
from telegen.signals.http import (
    CLIENT_METRIC, DURATION_BUCKETS, SERVER_METRIC, RedMetrics, RouteMatcher, SpanEncoder, build_span, url_path,
)
from tests.support.otlp_receiver import attrs_dict


def exchange(server_side=True, method="GET", target="/users/42?x=1", status=200, headers=None, start=1_000, end=51_000_000, pid=7):
    return HttpExchange(
        server_side=server_side, pid=pid, start_ns=start, end_ns=end, method=method, target=target, version="1.1",
        headers=headers if headers is not None else {b"host": b"api.local:8080", b"user-agent": b"curl/8"},
        request_body_size=None, status=status, response_body_size=12, peer_address="10.0.0.9", peer_port=40000,
        local_address="10.0.0.1", local_port=8080,
    )


def test_server_span_attributes_name_and_times():
    ex = exchange()
    routes = RouteMatcher(["/orders/*", "/users/{id}"])
    path = url_path(ex.target)
    span = build_span(ex, path, routes.match(path))
    attrs = attrs_dict(span.attributes)
    assert span.kind == Span.SPAN_KIND_SERVER and span.name == "GET /users/{id}"
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (1_000, 51_000_000)
    assert attrs == {
        "http.request.method": "GET", "url.path": "/users/42", "url.scheme": "http", "http.route": "/users/{id}",
        "http.response.status_code": 200, "server.address": "api.local", "server.port": 8080,
        "client.address": "10.0.0.9", "network.peer.address": "10.0.0.9", "network.peer.port": 40000,
        "network.protocol.version": "1.1", "user_agent.original": "curl/8", "http.response.body.size": 12,
    }
    assert span.status.code == Status.STATUS_CODE_UNSET
    assert len(span.trace_id) == 16 and len(span.span_id) == 8 and span.parent_span_id == b""


def test_without_route_the_name_is_the_method_only_and_unknown_methods_are_other():
    span = build_span(exchange(method="PURGE"), "/a/b", None)
    attrs = attrs_dict(span.attributes)
    assert span.name == "_OTHER"
    assert attrs["http.request.method"] == "_OTHER" and attrs["http.request.method_original"] == "PURGE"
    assert "http.route" not in attrs


def test_error_status_per_side():
    """5xx is an error for both sides; 4xx only for clients; error.type carries the code."""
    assert build_span(exchange(status=404), "/", None).status.code == Status.STATUS_CODE_UNSET
    client_404 = build_span(exchange(server_side=False, status=404), "/", None)
    assert client_404.status.code == Status.STATUS_CODE_ERROR
    assert attrs_dict(client_404.attributes)["error.type"] == "404"
    assert build_span(exchange(status=503), "/", None).status.code == Status.STATUS_CODE_ERROR


def test_client_span_server_is_the_peer():
    span = build_span(exchange(server_side=False, headers={}), "/", None)
    attrs = attrs_dict(span.attributes)
    assert span.kind == Span.SPAN_KIND_CLIENT
    assert (attrs["server.address"], attrs["server.port"]) == ("10.0.0.9", 40000)
    assert "client.address" not in attrs


def test_spans_without_traceparent_start_their_own_traces_with_fresh_ids():
    encoder = SpanEncoder()
    template = encoder.template(exchange(), "/", None)
    spans = [Span.FromString(encoder.encode(template, 1_000 + i, 2_000 + i, 40000)) for i in range(500)]
    assert len({s.trace_id for s in spans}) == len({s.span_id for s in spans}) == 500
    assert all(len(s.trace_id) == 16 and len(s.span_id) == 8 and s.parent_span_id == b"" for s in spans)
    assert all(s.trace_id != bytes(16) and s.span_id != bytes(8) for s in spans)
    assert {s.flags for s in spans} == {0x101}          # sampled; "is remote" known: no remote parent
    assert [(s.start_time_unix_nano, s.end_time_unix_nano) for s in spans[:2]] == [(1_000, 2_000), (1_001, 2_001)]


def test_an_end_before_the_start_is_clamped_to_the_start():
    encoder = SpanEncoder()
    span = Span.FromString(encoder.encode(encoder.template(exchange(), "/", None), 5_000, 4_000, None))
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (5_000, 5_000)


def test_traceparent_joins_the_trace():
    tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    span = build_span(exchange(headers={b"traceparent": tp}), "/", None)
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
    assert span.span_id.hex() != "b7ad6b7169203331"
    assert span.flags & 0xff == 1 and span.flags & 0x300 == 0x300


def test_url_path_strips_query_fragment_and_absolute_form():
    assert url_path("/a/b?c=d#e") == "/a/b"
    assert url_path("http://example.com/x?y") == "/x"
    assert url_path("http://example.com") == "/"


def test_red_histograms_buckets_and_attributes():
    red = RedMetrics(SelfMetrics())
    red.record(exchange(end=1_000 + 30_000_000), "/users/{id}", 0)      # 30 ms
    red.record(exchange(end=1_000 + 2_000_000_000), "/users/{id}", 0)   # 2 s
    red.record(exchange(server_side=False, status=500), None, 0)
    out = red.collect(now_ns=99)
    [server, client] = out[7]
    assert (server.name, server.unit, client.name) == (SERVER_METRIC, "s", CLIENT_METRIC)
    [point] = server.histogram.data_points
    assert point.count == 2 and abs(point.sum - 2.03) < 1e-9
    assert list(point.explicit_bounds) == list(DURATION_BUCKETS)
    assert point.bucket_counts[DURATION_BUCKETS.index(0.05)] == 1 and point.bucket_counts[DURATION_BUCKETS.index(2.5)] == 1
    assert attrs_dict(point.attributes) == {"http.request.method": "GET", "url.scheme": "http", "http.response.status_code": 200,
                                            "http.route": "/users/{id}", "network.protocol.version": "1.1"}
    assert server.histogram.aggregation_temporality == 2      # cumulative
    assert attrs_dict(client.histogram.data_points[0].attributes)["server.port"] == 40000


def test_cardinality_cap_folds_into_the_overflow_series_and_counts():
    metrics = SelfMetrics()
    red = RedMetrics(metrics, max_series=2)
    for status in (200, 201, 202, 203):
        red.record(exchange(status=status), None, 0)
    [server] = red.collect(0)[7]
    series = {tuple(sorted(attrs_dict(p.attributes).items())): p.count for p in server.histogram.data_points}
    assert len(series) == 3
    assert series[(("otel.metric.overflow", True),)] == 2
    assert metrics.registry.get_sample_value("telegen_metric_attribute_overflow_total", {"metric": SERVER_METRIC}) == 2
