"""
The HTTP/2 parser on the real bytes of real peers on loopback, through the recording TCP relay:
nginx-light over h2c with prior knowledge (curl --http2-prior-knowledge, h2load with multiplexed
streams), the h2c Upgrade (curl --http2 against an `h2` server; nginx refusing it), and a grpcio
server and client (unary, server streaming, an error status, an unknown method, a capture that
starts mid-connection).
"""
import subprocess
from collections import Counter

import grpc
import pytest

from telegen.protocols.http2 import LOSS_HEADER_UNKNOWN, LOSS_UPGRADE_REFUSED, Http2Parser, classify
from telegen.protocols.http2_semconv import RPC_CLIENT_METRIC, STATUS_ERROR, STATUS_UNSET, span_of
from tests.support.h2_peers import H2Server, grpc_server
from tests.support.http_apps import nginx_fixture
from tests.support.protocol_chunks import feed_all
from tests.support.tcp_relay import TcpRelay

pytestmark = pytest.mark.integration


h2c_port = nginx_fixture(http2=True)
http1_port = nginx_fixture(http2=False)


def curl(*args):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", *args],
                         capture_output=True, text=True, timeout=30)
    return out.stdout


def exchanges_of(relay, conn):
    parser = Http2Parser()
    exchanges = feed_all(parser, relay.chunks(conn))
    return exchanges, parser.losses


def test_curl_prior_knowledge_against_nginx(h2c_port):
    relay = TcpRelay(h2c_port).start()
    url = f"http://127.0.0.1:{relay.port}"
    # curl 7.88 fails a second transfer on a reused prior-knowledge connection: one per connection.
    assert curl("--http2-prior-knowledge", url + "/ok") == "200 2"
    assert curl("--http2-prior-knowledge", url + "/missing") == "404 2"
    assert curl("--http2-prior-knowledge", url + "/index.html?v=1") == "200 2"
    relay.close()
    assert relay.connections() == 3 and classify(relay.chunks(0)[0].data)
    spans = []
    for conn in range(3):
        exchanges, losses = exchanges_of(relay, conn)
        assert not losses
        spans += [span_of(e, "127.0.0.1", relay.port) for e in exchanges]
    assert [(s.name, s.attributes["url.path"], s.attributes["http.response.status_code"],
             s.attributes.get("http.request.body.size"), s.attributes.get("http.response.body.size"), s.status)
            for s in spans] == [
        ("GET", "/ok", 200, None, 6, STATUS_UNSET),
        ("GET", "/missing", 404, None, 153, STATUS_ERROR),
        ("GET", "/index.html", 200, None, 19, STATUS_UNSET),
    ]
    assert spans[0].attributes == {
        "http.request.method": "GET", "url.path": "/ok", "url.scheme": "http", "http.response.status_code": 200,
        "server.address": "127.0.0.1", "server.port": relay.port, "network.peer.address": "127.0.0.1",
        "network.peer.port": relay.port, "network.protocol.version": "2", "user_agent.original": "curl/7.88.1",
        "http.response.body.size": 6}


def test_curl_prior_knowledge_post():
    """A request body (nginx's `return` answers before reading it and resets the stream, which
    curl 7.88 sometimes reports as a failure: the h2 server reads it and answers its size)."""
    server = H2Server().start()
    relay = TcpRelay(server.port).start()
    assert curl("--http2-prior-knowledge", "-d", "x" * 3000, f"http://127.0.0.1:{relay.port}/form") == "200 2"
    relay.close()
    server.close()
    [ex], losses = exchanges_of(relay, 0)
    assert not losses
    assert (ex.method, ex.path, ex.status, ex.request_body_size, ex.response_body_size) == ("POST", "/form", 200, 3000, 4)


def test_h2load_multiplexed_streams(h2c_port):
    """200 requests on 2 connections, 10 streams in flight on each: every one paired, none lost."""
    relay = TcpRelay(h2c_port).start()
    out = subprocess.run(["h2load", "-n", "200", "-c", "2", "-m", "10", f"http://127.0.0.1:{relay.port}/ok"],
                         capture_output=True, text=True, timeout=60)
    relay.close()
    assert "200 succeeded" in out.stdout, out.stdout
    total = Counter()
    for conn in range(relay.connections()):
        exchanges, losses = exchanges_of(relay, conn)
        assert not losses
        total.update((e.method, e.path, e.status, e.response_body_size) for e in exchanges)
        assert sorted(e.stream_id for e in exchanges) == list(range(1, 2 * len(exchanges), 2))
    assert total == {("GET", "/ok", 200, 6): 200}


def test_h2c_upgrade_with_curl():
    server = H2Server().start()
    relay = TcpRelay(server.port).start()
    url = f"http://127.0.0.1:{relay.port}"
    assert curl("--http2", url + "/up") == "200 2"
    relay.close()
    server.close()
    [ex], losses = exchanges_of(relay, 0)
    assert not losses
    assert (ex.stream_id, ex.upgraded, ex.method, ex.path, ex.status, ex.response_body_size) == (1, True, "GET", "/up", 200, 14)
    span = span_of(ex, "127.0.0.1", relay.port)
    assert span.name == "GET" and span.attributes["network.protocol.version"] == "2"
    assert span.attributes["user_agent.original"] == "curl/7.88.1"


@pytest.mark.parametrize("port, answer", [("http1_port", "200 1.1"), ("h2c_port", "000 0")])
def test_upgrade_refused_by_nginx(port, answer, request):
    """nginx answers an Upgrade: h2c in HTTP/1.1 (its h2c port: not in HTTP/1.1 at all)."""
    relay = TcpRelay(request.getfixturevalue(port)).start()
    assert curl("--http2", f"http://127.0.0.1:{relay.port}/ok") == answer
    relay.close()
    assert exchanges_of(relay, 0) == ([], {LOSS_UPGRADE_REFUSED: 1})


@pytest.fixture(scope="module")
def grpc_session():
    server, port = grpc_server()
    relay = TcpRelay(port).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{relay.port}")
    try:
        assert channel.unary_unary("/demo.Echo/Unary")(b"hi") == b"hi"
        assert list(channel.unary_stream("/demo.Echo/Stream")(b"s")) == [b"s\0", b"s\1", b"s\2"]
        codes = []
        for method in ("/demo.Echo/Fail", "/demo.Echo/Nope"):
            with pytest.raises(grpc.RpcError) as failure:
                channel.unary_unary(method)(b"x")
            codes.append(failure.value.code())
        assert codes == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED]
        assert channel.unary_unary("/demo.Echo/Unary")(b"again") == b"again"
    finally:
        channel.close()
        relay.close()
        server.stop(None)
    return relay


GRPC_CALLS = [
    # name, status code, request bytes (5-byte prefix + message), response bytes
    ("demo.Echo/Unary", 0, 7, 7),
    ("demo.Echo/Stream", 0, 6, 21),
    ("demo.Echo/Fail", 5, 6, None),
    ("demo.Echo/Nope", 12, 6, None),        # UNIMPLEMENTED: a Trailers-Only response
    ("demo.Echo/Unary", 0, 10, 10),
]


def test_grpc_calls(grpc_session):
    relay = grpc_session
    assert relay.connections() == 1
    exchanges, losses = exchanges_of(relay, 0)
    assert not losses
    server_spans = [span_of(e, "127.0.0.1", 50051, server_side=True, client_address="127.0.0.1", client_port=4000)
                    for e in exchanges]
    client_spans = [span_of(e, "127.0.0.1", relay.port) for e in exchanges]
    assert [(s.name, s.attributes["rpc.grpc.status_code"], e.request_body_size, e.response_body_size)
            for s, e in zip(client_spans, exchanges)] == GRPC_CALLS
    assert [s.status for s in client_spans] == [STATUS_UNSET, STATUS_UNSET, STATUS_ERROR, STATUS_ERROR, STATUS_UNSET]
    # On the server NOT_FOUND is the caller's problem; UNIMPLEMENTED is the server's.
    assert [s.status for s in server_spans] == [STATUS_UNSET, STATUS_UNSET, STATUS_UNSET, STATUS_ERROR, STATUS_UNSET]
    assert client_spans[2].status_message == "no such item"
    assert client_spans[0].attributes == {
        "rpc.system": "grpc", "rpc.service": "demo.Echo", "rpc.method": "Unary", "rpc.grpc.status_code": 0,
        "server.address": "127.0.0.1", "server.port": relay.port, "network.peer.address": "127.0.0.1",
        "network.peer.port": relay.port}
    assert client_spans[0].metric == RPC_CLIENT_METRIC and client_spans[0].metric_unit == "ms"


def test_grpc_capture_starting_mid_connection(grpc_session):
    """Joining after the first call: grpcio's encoder indexed the fields it repeats, so later
    calls lose those (counted), never get wrong ones, and the known fields are exact."""
    relay = grpc_session
    chunks = relay.chunks(0)
    whole = feed_all(Http2Parser(), chunks)
    at = next(i for i, c in enumerate(chunks) if c.from_client and b"Stream" in c.data)
    parser = Http2Parser()
    exchanges = feed_all(parser, chunks[at:])
    assert [e.stream_id for e in exchanges] == [e.stream_id for e in whole[1:]]
    for ex, truth in zip(exchanges, whole[1:]):
        assert all(truth.request[k] == v for k, v in ex.request.items())
        assert all(truth.response[k] == v for k, v in ex.response.items())
        assert (ex.status, ex.request_body_size, ex.response_body_size) == (truth.status, truth.request_body_size,
                                                                            truth.response_body_size)
    assert set(parser.losses) == {LOSS_HEADER_UNKNOWN}
    # content-type was indexed before the join: gRPC is told by grpc-status/grpc-message. The new
    # :paths went out as literals, the last call's (a repeat) as an index; OK (0) was indexed too.
    spans = [span_of(e, "127.0.0.1", relay.port) for e in exchanges]
    assert [(s.name, s.attributes.get("rpc.grpc.status_code"), s.status) for s in spans] == [
        ("demo.Echo/Stream", None, STATUS_UNSET), ("demo.Echo/Fail", 5, STATUS_ERROR),
        ("demo.Echo/Nope", 12, STATUS_ERROR), ("grpc", None, STATUS_UNSET)]
