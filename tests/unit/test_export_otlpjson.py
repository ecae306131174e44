"""
OTLP/JSON lines (telegen.export.otlpjson): the direct encoder against json_format, the proto3
JSON mapping it replaced (plus hex ids), on randomly filled requests of every signal, and the
assumptions it rests on about the OTLP protos.
"""
import base64
import json
import random

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from telegen.export import otlpjson
from telegen.export.kinds import KINDS

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def reference(message):
    """What the file sink wrote before: MessageToDict with integer enums, ids turned into hex."""
    def hexify(node):
        if isinstance(node, dict):
            for key, value in node.items():
                node[key] = base64.b64decode(value).hex() if key in _ID_KEYS and isinstance(value, str) else hexify(value)
        elif isinstance(node, list):
            node[:] = [hexify(item) for item in node]
        return node
    return json.dumps(hexify(json_format.MessageToDict(message, use_integers_for_enums=True)), separators=(",", ":"))


_SCALARS = {
    FieldDescriptor.TYPE_STRING: lambda r: r.choice(["", "a", "é\"\\\n\u2028", "x" * r.randint(0, 40)]),
    FieldDescriptor.TYPE_BOOL: lambda r: r.random() < 0.5,
    FieldDescriptor.TYPE_DOUBLE: lambda r: r.choice([0.0, -1.5, 1e300, 3.0, r.random(), float("nan"), float("inf"),
                                                     float("-inf"), 2.0 ** 53 + 1]),
    FieldDescriptor.TYPE_BYTES: lambda r: r.randbytes(r.choice([0, 8, 16, 5])),
}


def fill(message, r, depth=0):
    """Set a random subset of the fields of `message`, recursively (bounded), with edge values."""
    for field in message.DESCRIPTOR.fields:
        if r.random() < 0.4:
            continue
        count = r.randint(0, 3) if field.label == FieldDescriptor.LABEL_REPEATED else 1
        for _ in range(count):
            if field.message_type is not None:
                if depth >= 4:
                    break
                sub = (getattr(message, field.name).add() if field.label == FieldDescriptor.LABEL_REPEATED
                       else getattr(message, field.name))
                sub.SetInParent()
                fill(sub, r, depth + 1)
                continue
            if field.enum_type is not None:
                value = r.choice([v.number for v in field.enum_type.values] + [0, 77])
            elif field.type in _SCALARS:
                value = _SCALARS[field.type](r)
            else:                       # the integer types, at their edges
                bits = 64 if field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64) else 32
                signed = field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_INT32)
                low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
                value = r.choice([0, 1, low, high, r.randint(low, high)])
            if field.label == FieldDescriptor.LABEL_REPEATED:
                getattr(message, field.name).append(value)
            elif field.containing_oneof is None or r.random() < 0.5:
                setattr(message, field.name, value)
    return message


@pytest.mark.parametrize("signal", sorted(KINDS))
def test_the_direct_encoding_is_json_formats_text_with_hex_ids(signal):
    cls = KINDS[signal].request_cls
    for seed in range(150):
        message = fill(cls(), random.Random(f"{signal}-{seed}"))
        line = otlpjson.encode(message)
        assert line == reference(message), seed
        assert otlpjson.decode(line, cls).SerializeToString() == message.SerializeToString() or "NaN" in line


def test_the_otlp_protos_have_nothing_the_direct_encoding_does_not_handle():
    """No maps, no well-known types (google.protobuf.*), no 32-bit floats: json_format special-cases
    those and encode() does not."""
    seen, todo = set(), [KINDS[s].request_cls.DESCRIPTOR for s in KINDS]
    while todo:
        descriptor = todo.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        assert not descriptor.full_name.startswith("google.protobuf.")
        assert not descriptor.GetOptions().map_entry, descriptor.full_name
        for field in descriptor.fields:
            assert field.type != FieldDescriptor.TYPE_FLOAT, field.full_name
            if field.message_type is not None:
                todo.append(field.message_type)
    assert "opentelemetry.proto.trace.v1.Span" in seen
