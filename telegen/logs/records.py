"""
OTLP LogRecords (serialized) from parsed lines, and the per-file attributes.

Why per file: log.file.path/log.file.name are the same for every line of a file, so they are
encoded once when the file is first seen (the file's resource is writers.py's and the tailer's).
"""
import json
import os
import struct

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from telegen.protowire import varint


def file_attributes(path):
    """The encoded attributes (LogRecord field 6) every line of `path` carries."""
    return encode_attributes({"log.file.path": path, "log.file.name": os.path.basename(path)})


# LogRecord, KeyValue and AnyValue field tags (field number << 3 | wire type); checked below.
_TIME = 0x09           # 1 time_unix_nano, fixed64
_SEVERITY = 0x10       # 2 severity_number, varint
_SEVERITY_TEXT = b"\x1a"  # 3 severity_text
_BODY = b"\x2a"        # 5 body (AnyValue)
_ATTRIBUTE = b"\x32"   # 6 attributes (KeyValue)
_FLAGS = 0x45          # 8 flags, fixed32
_TRACE_ID = b"\x4a"    # 9 trace_id
_SPAN_ID = b"\x52"     # 10 span_id
_OBSERVED = 0x59       # 11 observed_time_unix_nano, fixed64
_KEY, _VALUE = b"\x0a", b"\x12"
_STRING, _BOOL, _INT, _DOUBLE = b"\x0a", 0x10, 0x18, 0x21

_FIXED64 = struct.Struct("<BQ").pack
_FIXED32 = struct.Struct("<BI").pack
_DOUBLE_VALUE = struct.Struct("<Bd").pack


# varint(n) for the lengths most fields have: a list index instead of a call per field.
_LENGTH = [varint(n) for n in range(16384)]


def _framed(tag, data):
    n = len(data)
    return tag + (_LENGTH[n] if n < 16384 else varint(n)) + data


def _any(value):
    """An AnyValue's bytes for a scalar (str, bool, int, float); lists and objects as JSON text."""
    kind = type(value)
    if kind is str:
        return _framed(_STRING, value.encode("utf-8", "replace"))
    if kind is bool:
        return bytes((_BOOL, int(value)))
    if kind is int:
        return bytes((_INT,)) + varint(value)
    if kind is float:
        return _DOUBLE_VALUE(_DOUBLE, value)
    if kind is list or kind is dict:
        value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return _framed(_STRING, str(value).encode("utf-8", "replace"))


_KEYS: dict = {}   # encoded key field by attribute name (structured lines repeat the same few names)
_PAIRS: dict = {}  # encoded attribute by (name, type, value) for short values (status=200, path=/x repeat)
_CACHE_LIMIT = 8192
_SHORT = (str, int, bool)


def encode_attributes(mapping):
    """Encoded attributes (repeated field 6) from a dict of values, None values skipped."""
    out = []
    for key, value in mapping.items():
        kind = type(value)
        cacheable = kind in _SHORT and (kind is not str or len(value) <= 64)
        if cacheable:
            encoded = _PAIRS.get((key, kind, value))
            if encoded is not None:
                out.append(encoded)
                continue
        elif value is None:
            continue
        head = _KEYS.get(key)
        if head is None:
            if len(_KEYS) >= _CACHE_LIMIT:
                _KEYS.clear()
            head = _KEYS[key] = _framed(_KEY, key.encode("utf-8", "replace"))
        encoded = _framed(_ATTRIBUTE, head + _framed(_VALUE, _any(value)))
        if cacheable:
            if len(_PAIRS) >= _CACHE_LIMIT:
                _PAIRS.clear()
            _PAIRS[(key, kind, value)] = encoded
        out.append(encoded)
    return b"".join(out)


_STREAMS = {name: encode_attributes({"log.iostream": name}) for name in ("stdout", "stderr")}


def OBSERVED_FIELD(observed_ns):  # noqa: N802 (a field, like the other tags)
    """The observed_time_unix_nano field."""
    return _FIXED64(_OBSERVED, observed_ns)


def body_head(n):
    """The body field's head for a string body of n UTF-8 bytes (the bytes follow)."""
    inner = _LENGTH[n] if n < 16384 else varint(n)
    outer = 1 + len(inner) + n
    return _BODY + (_LENGTH[outer] if outer < 16384 else varint(outer)) + _STRING + inner


class Heads(dict):
    """Field heads by payload length, made on first use: heads[n] + payload is the field."""

    def __init__(self, make, keep=4096):
        super().__init__()
        self._make = make
        self._keep = keep

    def __missing__(self, n):
        head = self._make(n)
        if n < self._keep:  # longer values are rare: do not keep one head per length
            self[n] = head
        return head


BODY_HEADS = Heads(body_head)  # string bodies' heads, by length in bytes, for the batch encoders


def severity_fields(text, number):
    """severity_number and severity_text fields."""
    out = bytes((_SEVERITY, number)) if number else b""
    return out + (_framed(_SEVERITY_TEXT, text.encode("utf-8", "replace")) if text else b"")


def encode(parsed, file_attrs, observed_ns):
    """
    The serialized LogRecord of a Parsed line (the export queue takes records as bytes), written
    field by field: building a LogRecord message per line cost most of the tailer's CPU.
    observed_time is always set, time only when the line had one.
    """
    parts = []
    if parsed.time_ns:
        parts.append(_FIXED64(_TIME, parsed.time_ns))
    if parsed.severity_number or parsed.severity_text:
        parts.append(severity_fields(parsed.severity_text, parsed.severity_number))
    if type(parsed.body) is str:
        data = parsed.body.encode("utf-8", "replace")
        parts += (body_head(len(data)), data)
    else:
        parts.append(_framed(_BODY, _any(parsed.body)))
    parts.append(file_attrs)
    if parsed.stream:
        parts.append(_STREAMS.get(parsed.stream) or encode_attributes({"log.iostream": parsed.stream}))
    if parsed.attributes:
        parts.append(encode_attributes(parsed.attributes))
    if parsed.trace_flags:
        parts.append(_FIXED32(_FLAGS, parsed.trace_flags))
    if parsed.trace_id:
        parts.append(_framed(_TRACE_ID, parsed.trace_id))
    if parsed.span_id:
        parts.append(_framed(_SPAN_ID, parsed.span_id))
    parts.append(OBSERVED_FIELD(observed_ns))
    return b"".join(parts)


def _check_tags():
    """Fail loudly at import if the proto ever numbers these fields differently."""
    fields = LogRecord.DESCRIPTOR.fields_by_name
    expected = {"time_unix_nano": (1, _TIME), "severity_number": (2, _SEVERITY), "severity_text": (3, _SEVERITY_TEXT[0]),
                "body": (5, _BODY[0]), "attributes": (6, _ATTRIBUTE[0]), "flags": (8, _FLAGS),
                "trace_id": (9, _TRACE_ID[0]), "span_id": (10, _SPAN_ID[0]), "observed_time_unix_nano": (11, _OBSERVED)}
    for name, (number, tag) in expected.items():
        assert fields[name].number == number and tag >> 3 == number, name


_check_tags()
