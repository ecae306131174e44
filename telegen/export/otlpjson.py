# -*- test-case-name: tests.unit.test_export_otlpjson -*-
"""
The OTLP/JSON encoding (opentelemetry-proto docs/specification.md, "JSON Protobuf Encoding").

OTLP/JSON is the proto3 JSON mapping (lowerCamelCase names, 64-bit integers as decimal strings,
bytes as base64, fields left at their default omitted) except that trace and span ids are hex
strings and enums are integers.

encode() writes the text straight from the message's set fields (ListFields, in field-number
order, as json_format does), with one converter per field descriptor worked out once, and
remembers the text of each attribute (KeyValue) it has seen. json_format's
MessageToDict plus a pass turning ids into hex cost about 70 us per span, most of the agent's CPU
when the file sink (the embedded default destination) takes 1,000 exchanges a second; OTLP has no
maps, well-known types or 32-bit floats, which is all json_format spends its per-field checks on
(a test checks the protos still have none, and that both encodings give the same text).
decode() keeps json_format: it reads files back in tests and tools, not on the hot path.
"""
import base64
import json
import math

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

_ID_FIELDS = frozenset(("trace_id", "span_id", "parent_span_id"))
_ID_KEYS = frozenset(("traceId", "spanId", "parentSpanId"))
_INT64 = frozenset((FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64))
_converters: dict = {}
_string = json.encoder.encode_basestring_ascii      # what json.dumps writes a str as (ensure_ascii)
_KEY_VALUE = "opentelemetry.proto.common.v1.KeyValue"
_MAX_KEY_VALUES = 20000


def encode(message):
    """One export request as an OTLP/JSON line (no trailing newline)."""
    return _message(message)


def _message(message):
    parts = []
    for field, value in message.ListFields():
        entry = _converters.get(field)
        if entry is None:
            entry = _converters[field] = (_string(field.json_name) + ":", _converter(field))
        key, convert = entry
        parts.append(key + convert(value))
    return "{" + ",".join(parts) + "}"


def _converter(field):
    """How a field's value becomes JSON text, repeated fields element by element."""
    if field.message_type is not None:
        one = _key_value if field.message_type.full_name == _KEY_VALUE else _message
    elif field.type == FieldDescriptor.TYPE_BYTES:
        one = _hex if field.name in _ID_FIELDS else _base64
    elif field.type in _INT64:
        one = _quoted_int
    elif field.type == FieldDescriptor.TYPE_DOUBLE:
        one = _double
    elif field.type == FieldDescriptor.TYPE_STRING:
        one = _string
    elif field.type == FieldDescriptor.TYPE_BOOL:
        one = _bool
    else:
        one = int.__repr__              # 32-bit integers, enums (as integers)
    if field.label != FieldDescriptor.LABEL_REPEATED:
        return one
    return lambda values: "[" + ",".join(map(one, values)) + "]"


_key_values: dict[bytes, str] = {}


def _key_value(kv):
    """
    An attribute's text, remembered by its serialized bytes: a host's spans repeat the same
    attributes (method, route, addresses), so most are a dictionary lookup. Bounded, cleared when full.
    """
    wire = kv.SerializeToString()
    text = _key_values.get(wire)
    if text is None:
        if len(_key_values) >= _MAX_KEY_VALUES:
            _key_values.clear()
        text = _key_values[wire] = _message(kv)
    return text


def _hex(value):
    return '"' + value.hex() + '"'


def _base64(value):
    return '"' + base64.b64encode(value).decode("ascii") + '"'


def _quoted_int(value):
    return '"' + int.__repr__(value) + '"'


def _bool(value):
    return "true" if value else "false"


def _double(value):
    """Doubles as the proto3 JSON mapping writes them: numbers, or the strings NaN and +-Infinity."""
    if math.isfinite(value):
        return float.__repr__(value)
    if math.isnan(value):
        return '"NaN"'
    return '"Infinity"' if value > 0 else '"-Infinity"'


def _walk(node, convert):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = convert(value)
            else:
                _walk(value, convert)
    elif isinstance(node, list):
        for item in node:
            _walk(item, convert)
    return node


def _hex_to_b64(value):
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def decode(line, message_cls):
    """Parse an OTLP/JSON line back into `message_cls` (the inverse of encode)."""
    as_dict = _walk(json.loads(line), _hex_to_b64)
    return json_format.ParseDict(as_dict, message_cls(), ignore_unknown_fields=True)
