"""
HttpSender against an in-memory twisted.web resource through treq's StubTreq: request format
(path, content type, gzip, headers), and how answers become Outcomes (partial success, retryable
and permanent codes, Retry-After, oversized bodies).
"""
import gzip

from opentelemetry.proto.trace.v1.trace_pb2 import Span
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from telegen.config import defaults
from telegen.export import http_sender
from telegen.export.endpoints import resolve
from telegen.export.http_sender import HttpSender
from telegen.export.kinds import KINDS
from telegen.export.retry import PERMANENT, RETRYABLE, SUCCESS


class Collector(Resource):
    isLeaf = True

    def __init__(self, code=200, body=b"", headers=None):
        super().__init__()
        self.code, self.body, self.headers = code, body, headers or {}
        self.seen = []

    def render_POST(self, request):  # noqa: N802 (twisted.web hook)
        self.seen.append((request.path, {k.decode().lower(): v[0].decode()
                                         for k, v in request.requestHeaders.getAllRawHeaders()},
                          request.content.read()))
        request.setResponseCode(self.code)
        for k, v in self.headers.items():
            request.setHeader(k, v)
        return self.body


def sender_for(resource, **otlp_overrides):
    otlp = defaults()["otlp"]
    otlp.update(endpoint="http://collector:4318", protocol="http", headers={"Authorization": "Bearer s3cret"},
                **otlp_overrides)
    kind = KINDS["traces"]
    return HttpSender(resolve(otlp, kind), kind, otlp, Clock(), client=StubTreq(resource))


def request_of(n):
    request = KINDS["traces"].request_cls()
    request.resource_spans.add().scope_spans.add().spans.extend(Span(name=f"s{i}") for i in range(n))
    return request


def outcome_of(sender, request):
    out = []
    sender.send(request.SerializeToString()).addCallback(out.append)
    sender._client.flush()
    return out[0]


def test_posts_gzipped_protobuf_with_headers_to_v1_traces():
    collector = Collector()
    sender = sender_for(collector)
    request = request_of(3)
    outcome = outcome_of(sender, request)
    assert (outcome.kind, outcome.status, outcome.reached, outcome.rejected) == (SUCCESS, "200", True, 0)
    path, headers, body = collector.seen[0]
    assert path == b"/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["content-encoding"] == "gzip"
    assert headers["authorization"] == "Bearer s3cret"
    assert KINDS["traces"].request_cls.FromString(gzip.decompress(body)) == request


def test_no_compression_sends_plain_body():
    collector = Collector()
    outcome_of(sender_for(collector, compression="none"), request_of(1))
    _, headers, body = collector.seen[0]
    assert "content-encoding" not in headers
    assert KINDS["traces"].request_cls.FromString(body) == request_of(1)


def test_partial_success_is_read_from_the_body():
    response = KINDS["traces"].response_cls()
    response.partial_success.rejected_spans = 2
    response.partial_success.error_message = "too old"
    outcome = outcome_of(sender_for(Collector(body=response.SerializeToString())), request_of(3))
    assert (outcome.kind, outcome.rejected, outcome.message) == (SUCCESS, 2, "too old")


def test_retryable_status_with_retry_after():
    outcome = outcome_of(sender_for(Collector(code=503, headers={"Retry-After": "4"})), request_of(1))
    assert (outcome.kind, outcome.status, outcome.retry_after, outcome.error) == (RETRYABLE, "503", 4.0, "HTTP 503")


def test_permanent_status_and_no_secret_in_error():
    outcome = outcome_of(sender_for(Collector(code=401)), request_of(1))
    assert outcome.kind == PERMANENT
    assert "s3cret" not in repr(outcome)


def test_oversized_answer_body_is_not_buffered(monkeypatch):
    monkeypatch.setattr(http_sender, "MAX_RESPONSE_BYTES", 10)
    outcome = outcome_of(sender_for(Collector(body=b"x" * 100)), request_of(1))
    assert outcome.kind == SUCCESS and outcome.rejected == 0
