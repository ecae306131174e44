"""
The hand-written protobuf encoders against the protobuf runtime, on generated inputs.

SpanEncoder (telegen/signals/http.py) and encode_request (telegen/export/wire.py) write wire
bytes themselves because it is measured to be several times cheaper than building messages.
These tests describe the same spans and requests to the official opentelemetry-proto message
classes and check that what the encoders wrote parses (FromString) into exactly that message:
random unicode, empty values, ints across the int64 range, both span kinds and every status,
remote parents, many attributes, and records on both sides of every framing threshold.
"""
import dataclasses
import random

from google.protobuf.internal.encoder import TagBytes
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from telegen.l7.records import HttpExchange
from telegen.l7.http import parse_traceparent
from telegen.export.kinds import KINDS
from telegen.export.queue import BoundedQueue
from telegen.export.wire import ResourceCache, encode_request
from telegen.protowire import I32, I64, LEN, VARINT, tag
from telegen.signals.common import SCOPE, any_value, attributes, resource
from telegen.signals.http import SpanEncoder, _attribute, exchange_attributes, is_error

FAST = settings(max_examples=200, deadline=None)
INT64 = st.integers(-(2 ** 63), 2 ** 63 - 1)
UINT64 = st.integers(0, 2 ** 64 - 1)
TEXT = st.text(max_size=40)                       # any unicode (no lone surrogates), empty included
SCALAR = st.one_of(TEXT, st.booleans(), INT64, st.floats(allow_nan=False), st.binary(max_size=20))
ATTRS = st.dictionaries(TEXT, st.one_of(SCALAR, st.lists(SCALAR, max_size=4)), max_size=12)
FEW_ATTRS = st.dictionaries(TEXT, SCALAR, max_size=3)


@FAST
@given(st.integers(1, 2 ** 29 - 1), st.sampled_from((VARINT, I64, LEN, I32)))
def test_tags_are_the_runtimes(field_number, wire_type):
    assert tag(field_number, wire_type) == TagBytes(field_number, wire_type)


# -- SpanEncoder --------------------------------------------------------------------------------

@FAST
@given(TEXT, st.one_of(TEXT, st.booleans(), INT64))
def test_an_attribute_is_the_bytes_the_runtime_writes(key, value):
    """Any key and any str, bool or int64 value: the runtime's span, byte for byte but for an empty key."""
    expected = Span(attributes=attributes({key: value}))
    assert Span.FromString(_attribute(key, value)) == expected
    if key:                                    # proto3 leaves an empty string out; _attribute writes it
        assert _attribute(key, value) == expected.SerializeToString()


def _nonzero_id(size):
    return st.binary(min_size=size, max_size=size).filter(any)


@st.composite
def traceparents(draw):
    """A traceparent header value: a valid W3C one from generated ids, or any bytes at all."""
    if draw(st.booleans()):
        version = draw(st.sampled_from((b"00", b"01", b"fe")))
        trace_id, span_id, flags = draw(_nonzero_id(16)), draw(_nonzero_id(8)), draw(st.integers(0, 255))
        return b"-".join((version, trace_id.hex().encode(), span_id.hex().encode(), b"%02x" % flags))
    return draw(st.binary(max_size=60))


@st.composite
def exchanges(draw):
    """An HttpExchange as the decoder could report it, with every string and number left wide open."""
    headers = {}
    for name, values in ((b"host", st.binary(max_size=30)), (b"user-agent", st.binary(max_size=40)),
                         (b"traceparent", traceparents())):
        if draw(st.booleans()):
            headers[name] = draw(values)
    port = st.none() | st.integers(1, 65535)
    return HttpExchange(
        server_side=draw(st.booleans()), pid=draw(st.integers(1, 2 ** 22)),
        start_ns=draw(UINT64), end_ns=draw(UINT64),
        method=draw(st.sampled_from(("GET", "POST", "HEAD", "CONNECT")) | TEXT), target=draw(TEXT),
        version=draw(st.sampled_from(("1.0", "1.1")) | TEXT), headers=headers,
        request_body_size=draw(st.none() | INT64), status=draw(st.none() | st.integers(0, 999)),
        response_body_size=draw(st.none() | INT64),
        peer_address=draw(st.none() | TEXT), peer_port=draw(port),
        local_address=draw(st.none() | TEXT), local_port=draw(port),
    )


def _runtime_span(ex, path, route, rand):
    """The Span SpanEncoder means to write, built by the protobuf runtime from its description."""
    attrs = exchange_attributes(ex, path, route)
    peer_port = attrs.pop("network.peer.port")        # written per span, after the shape's attributes
    error = is_error(ex.server_side, ex.status)
    if error and ex.status is not None:
        attrs["error.type"] = str(ex.status)
    attrs["network.peer.port"] = peer_port
    parent = parse_traceparent(ex.headers.get(b"traceparent"))
    if parent:
        trace_id, parent_id, w3c_flags = parent
        flags = w3c_flags | 0x300                      # is-remote known, and remote
    else:
        trace_id = rand(64).to_bytes(8, "little") + rand(64).to_bytes(8, "little")
        parent_id, flags = b"", 0x101                  # sampled, is-remote known: no parent
    method = attrs["http.request.method"]
    return Span(
        trace_id=trace_id, span_id=rand(64).to_bytes(8, "little"), parent_span_id=parent_id,
        name=f"{method} {route}" if route else method,
        kind=Span.SPAN_KIND_SERVER if ex.server_side else Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=ex.start_ns, end_time_unix_nano=max(ex.start_ns, ex.end_ns),
        attributes=attributes(attrs), flags=flags,
        status=Status(code=Status.STATUS_CODE_ERROR) if error else None,
    )


@FAST
@given(exchanges(), TEXT, st.none() | TEXT, st.integers(0, 2 ** 32))
def test_span_encoder_writes_the_span_the_runtime_builds(ex, path, route, seed):
    """Template plus encode parse into the very Span the runtime builds, ids and all (same random words)."""
    encoder = SpanEncoder(random.Random(seed).getrandbits)
    got = Span.FromString(encoder.encode(encoder.template(ex, path, route), ex.start_ns, ex.end_ns, ex.peer_port))
    assert got == _runtime_span(ex, path, route, random.Random(seed).getrandbits)


@FAST
@given(exchanges(), st.lists(st.none() | st.integers(1, 65535), max_size=5), st.integers(0, 2 ** 32))
def test_one_template_many_spans(ex, peer_ports, seed):
    """
    A server's template reused across its connections (whose peer ports differ, and are cached
    encoded): every span has its own ids and its own port.
    """
    ex = dataclasses.replace(ex, server_side=True)
    encoder, rand = SpanEncoder(random.Random(seed).getrandbits), random.Random(seed).getrandbits
    template = encoder.template(ex, "/", None)
    for port in peer_ports:
        got = Span.FromString(encoder.encode(template, ex.start_ns, ex.end_ns, port))
        assert got == _runtime_span(dataclasses.replace(ex, peer_port=port), "/", None, rand)


# -- encode_request -----------------------------------------------------------------------------

# Record sizes around every threshold of the framing: varint lengths of one, two and three bytes,
# and the end of the 4 KiB prefix table (wire.py frames records up to 4095 bytes from it).
THRESHOLDS = (0, 1, 127, 128, 129, 4094, 4095, 4096, 4097, 16383, 16384, 16385)


def _padded(record, size):
    """record grown (by a string field it has for nothing else here) to serialize to size bytes, or as near as a varint allows."""
    field = "trace_state" if isinstance(record, Span) else "event_name"
    for _ in range(3):
        missing = size - record.ByteSize()
        if missing <= 0:
            break
        setattr(record, field, getattr(record, field) + "x" * missing)
    return record


@st.composite
def spans(draw):
    status = Status(code=draw(st.sampled_from(Status.StatusCode.values())), message=draw(TEXT))
    return Span(
        trace_id=draw(st.binary(min_size=16, max_size=16)), span_id=draw(st.binary(min_size=8, max_size=8)),
        parent_span_id=draw(st.sampled_from((b"", b"\x01" * 8))), name=draw(TEXT),
        kind=draw(st.sampled_from(Span.SpanKind.values())), start_time_unix_nano=draw(UINT64),
        end_time_unix_nano=draw(UINT64), attributes=attributes(draw(ATTRS)), flags=draw(st.integers(0, 2 ** 32 - 1)),
        events=[Span.Event(name=name, time_unix_nano=t, attributes=attributes(a))
                for name, t, a in draw(st.lists(st.tuples(TEXT, UINT64, FEW_ATTRS), max_size=3))],
        links=[Span.Link(trace_id=bytes(16), span_id=s, attributes=attributes(a))
               for s, a in draw(st.lists(st.tuples(st.binary(min_size=8, max_size=8), FEW_ATTRS), max_size=2))],
        status=status, dropped_attributes_count=draw(st.integers(0, 2 ** 32 - 1)),
    )


@st.composite
def log_records(draw):
    return LogRecord(time_unix_nano=draw(UINT64), severity_number=draw(st.integers(0, 24)),
                     severity_text=draw(TEXT), body=any_value(draw(SCALAR)),
                     attributes=attributes(draw(FEW_ATTRS)), trace_id=draw(st.sampled_from((b"", b"\x02" * 16))))


@st.composite
def records(draw, signal):
    """One record of a signal, maybe grown to a threshold size, and whether it is offered serialized (as the HTTP probe does)."""
    record = draw(spans() if signal == "traces" else log_records())
    size = draw(st.none() | st.sampled_from(THRESHOLDS))
    return (_padded(record, size) if size else record), draw(st.booleans())


@st.composite
def batches(draw, signal):
    """(resources, offers): up to three resources and the records offered for each, in queue order."""
    resources = draw(st.lists(FEW_ATTRS, min_size=1, max_size=3))
    offer = st.tuples(st.integers(0, len(resources) - 1), st.lists(records(signal), min_size=1, max_size=3))
    return resources, draw(st.lists(offer, min_size=1, max_size=4))


@FAST
@given(st.sampled_from(("traces", "logs")), st.data(), st.integers(1, 30), st.integers(1, 3))
def test_encode_request_writes_the_request_the_runtime_builds(signal, data, take, cache_limit):
    """
    Records queued for several resources, some as messages and some as bytes, then take() (which
    may split a chunk): the encoded request parses into the request built message by message, one
    Resource* per resource in first-seen order, its records in queue order, under the telegen scope.
    """
    resources, offers = data.draw(batches(signal))
    kind = KINDS[signal]
    queue = BoundedQueue(capacity=1000, max_bytes=1 << 30)
    for index, items in offers:
        offered = [record.SerializeToString() if as_bytes else record for record, as_bytes in items]
        assert queue.offer(("r", index), resources[index], offered, None) == (len(items), len(items))
    taken = [(index, record) for index, items in offers for record, _ in items][:take]
    expected = kind.request_cls()
    scopes = {}
    for index, record in taken:
        if index not in scopes:
            top = getattr(expected, kind.resource_field).add(resource=resource(resources[index]))
            scopes[index] = getattr(getattr(top, kind.scope_field).add(scope=SCOPE), kind.records_field)
        scopes[index].append(record)
    resources_cache = ResourceCache(cache_limit)          # small: cleared while it encodes
    assert kind.request_cls.FromString(encode_request(queue.take(take), resources_cache)) == expected


def test_a_resource_beyond_two_mebibytes_has_a_four_byte_length():
    """The request-level lengths past 2**21 bytes (a four-byte varint) frame as the runtime does."""
    record = _padded(Span(name="big"), 2 ** 21 + 10)
    queue = BoundedQueue(capacity=10, max_bytes=1 << 30)
    queue.offer(("r",), {"service.name": "big"}, [record, record.SerializeToString()], None)
    expected = KINDS["traces"].request_cls()
    expected.resource_spans.add(resource=resource({"service.name": "big"})).scope_spans.add(scope=SCOPE).spans.extend([record] * 2)
    assert KINDS["traces"].request_cls.FromString(encode_request(queue.take(2), ResourceCache())) == expected
