"""HTTP/2 exchanges as HTTP spans (the HTTP/1.x attributes, version 2) and gRPC exchanges as RPC spans."""
import pytest

from telegen.l7.records import HttpExchange
from telegen.protocols.http2 import Http2Exchange
from telegen.protocols.http2_semconv import (
    HTTP_CLIENT_METRIC, HTTP_SERVER_METRIC, RPC_CLIENT_METRIC, RPC_SERVER_METRIC, SPAN_KIND_CLIENT, SPAN_KIND_SERVER,
    STATUS_ERROR, STATUS_UNSET, grpc_status, metric_value, span_of)
from telegen.signals.http import exchange_attributes


def http_exchange(status=200, path=b"/users/42?x=1", reset=None, method=b"GET"):
    request = {b":scheme": b"http", b":authority": b"api.local:8080", b"user-agent": b"curl/8"}
    if method is not None:
        request[b":method"] = method
    if path is not None:
        request[b":path"] = path
    return Http2Exchange(3, 1_000, 51_000_000, request=request, response={b":status": str(status).encode()} if status else {},
                         status=status, response_body_size=12, reset=reset)


def test_http_span_has_the_http1_attributes_with_version_2():
    ex = http_exchange()
    span = span_of(ex, "10.0.0.1", 8080, server_side=True, client_address="10.0.0.9", client_port=40000,
                   route="/users/{id}")
    h1 = HttpExchange(True, 7, 1_000, 51_000_000, "GET", "/users/42?x=1", "2",
                      {b"host": b"api.local:8080", b"user-agent": b"curl/8"}, None, 200, 12,
                      "10.0.0.9", 40000, "10.0.0.1", 8080)
    same = {k: v for k, v in exchange_attributes(h1, "/users/42", "/users/{id}").items() if v is not None}
    assert span.attributes == same and span.attributes["network.protocol.version"] == "2"
    assert (span.name, span.kind, span.status, span.start_ns, span.end_ns) == ("GET /users/{id}", SPAN_KIND_SERVER,
                                                                                STATUS_UNSET, 1_000, 51_000_000)
    assert span.metric == HTTP_SERVER_METRIC and span.metric_unit == "s"
    assert span.metric_attributes == {"http.request.method": "GET", "url.scheme": "http", "http.response.status_code": 200,
                                      "http.route": "/users/{id}", "network.protocol.version": "2"}
    assert metric_value(span) == pytest.approx(0.050999)


def test_http_error_status_per_side_and_reset_streams():
    assert span_of(http_exchange(404), "s", 80, server_side=True).status == STATUS_UNSET
    client = span_of(http_exchange(404), "10.0.0.1", 80)
    assert (client.kind, client.status, client.attributes["error.type"]) == (SPAN_KIND_CLIENT, STATUS_ERROR, "404")
    assert client.metric == HTTP_CLIENT_METRIC
    assert client.metric_attributes["server.address"] == "api.local" and client.metric_attributes["server.port"] == 80
    reset = span_of(http_exchange(None, reset=8), "10.0.0.1", 80, server_side=True)
    assert (reset.status, reset.attributes["error.type"]) == (STATUS_ERROR, "CANCEL")
    assert "http.response.status_code" not in reset.attributes


def test_fields_the_capture_could_not_read_are_left_out():
    span = span_of(http_exchange(path=None, method=None), "10.0.0.1", 80, server_side=True)
    assert span.name == "HTTP"
    assert "url.path" not in span.attributes and "http.request.method_original" not in span.attributes


def grpc_exchange(path=b"/helloworld.Greeter/SayHello", trailers=None, status=200, reset=None, headers_status=None):
    response = {b"content-type": b"application/grpc"}
    if headers_status is not None:
        response[b"grpc-status"] = headers_status
    response.update(trailers or {})
    return Http2Exchange(1, 0, 2_500_000, request={b":method": b"POST", b":path": path, b":scheme": b"http",
                                                   b":authority": b"localhost:50051", b"content-type": b"application/grpc"},
                         response=response, status=status, request_body_size=12, response_body_size=20, reset=reset)


def test_grpc_span_is_named_by_the_full_method():
    span = span_of(grpc_exchange(trailers={b"grpc-status": b"0"}), "127.0.0.1", 50051, server_side=True,
                   client_address="127.0.0.1", client_port=41000)
    assert span.name == "helloworld.Greeter/SayHello" and span.kind == SPAN_KIND_SERVER
    assert span.attributes == {"rpc.system": "grpc", "rpc.service": "helloworld.Greeter", "rpc.method": "SayHello",
                               "rpc.grpc.status_code": 0, "server.address": "localhost", "server.port": 50051,
                               "network.peer.address": "127.0.0.1", "network.peer.port": 41000}
    assert span.status == STATUS_UNSET and span.metric == RPC_SERVER_METRIC and span.metric_unit == "ms"
    assert span.metric_attributes == {"rpc.system": "grpc", "rpc.service": "helloworld.Greeter", "rpc.method": "SayHello",
                                      "rpc.grpc.status_code": 0}
    assert metric_value(span) == 2.5


@pytest.mark.parametrize("code", range(17))
def test_grpc_span_status_per_side(code):
    ex = grpc_exchange(trailers={b"grpc-status": str(code).encode(), b"grpc-message": b"it%20failed"})
    server = span_of(ex, "127.0.0.1", 50051, server_side=True)
    client = span_of(ex, "127.0.0.1", 50051)
    assert (server.status == STATUS_ERROR) == (code in (2, 4, 12, 13, 14, 15))
    assert (client.status == STATUS_ERROR) == (code != 0)
    assert client.status_message == ("it failed" if code else "")
    assert client.metric == RPC_CLIENT_METRIC and client.metric_attributes["server.port"] == 50051


def test_grpc_status_from_trailers_only_reset_and_http_status():
    assert grpc_status(grpc_exchange(headers_status=b"12")) == 12
    assert grpc_status(grpc_exchange(status=None, reset=8)) == 1           # CANCEL -> CANCELLED
    assert grpc_status(grpc_exchange(status=None, reset=2)) == 13          # INTERNAL_ERROR -> INTERNAL
    assert grpc_status(grpc_exchange(status=503)) == 14                    # UNAVAILABLE
    assert grpc_status(grpc_exchange()) is None                            # trailers not read
    span = span_of(grpc_exchange(path=None), "127.0.0.1", 50051)
    assert span.name == "grpc" and "rpc.method" not in span.attributes and span.status == STATUS_UNSET
