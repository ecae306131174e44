"""
The OTLP/JSON encoding (opentelemetry-proto docs/specification.md, "JSON Protobuf Encoding").

Why not plain json_format: OTLP/JSON differs from the proto3 JSON mapping in that trace and span
ids are hex strings (not base64) and enums are integers. Everything else (lowerCamelCase names,
int64 as decimal strings, default values omitted) is the proto3 mapping, so we post-process it.
"""
import base64
import json

from google.protobuf import json_format

_ID_KEYS = frozenset(("traceId", "spanId", "parentSpanId"))


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


def _b64_to_hex(value):
    return base64.b64decode(value).hex()


def _hex_to_b64(value):
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def encode(message):
    """One export request as an OTLP/JSON line (no trailing newline)."""
    as_dict = json_format.MessageToDict(message, use_integers_for_enums=True)
    return json.dumps(_walk(as_dict, _b64_to_hex), separators=(",", ":"))


def decode(line, message_cls):
    """Parse an OTLP/JSON line back into `message_cls` (the inverse of encode)."""
    as_dict = _walk(json.loads(line), _hex_to_b64)
    return json_format.ParseDict(as_dict, message_cls(), ignore_unknown_fields=True)
