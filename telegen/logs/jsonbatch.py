"""
JSON lines (agent.logs.format: json) to encoded LogRecords a batch at a time, column by column.

Why columns: an application writes the same keys in the same order on every line, so the work that
depends only on the keys (which field is the time, the level, the message; each attribute's key
bytes) is done once per run of lines with the same keys, and the per-line work left is one C
scanner call and, per field, one list comprehension step that mostly calls C (str.encode, len, a
table lookup, a concatenation). The records are then joined in C (map(b"".join, zip(*columns))).
Per line in Python, field by field (parsers.json_line then records.encode), a JSON line cost
about three times what the Collector's filelog receiver spends on it.

A run this path cannot settle exactly (a value of an unusual type in a role, a time it cannot
parse, a traceparent or trace_flags field, a line that is not one JSON object) goes through the
general path line by line; both give the same bytes (tests/unit/test_logs_jsonbatch.py).
"""
import re
import struct
from itertools import groupby, repeat
from operator import add, itemgetter

from telegen.logs import records, severity
from telegen.logs.parsers import _HEX16, _HEX32, _hex, _plan, _scan_json, json_line, parse_time
from telegen.protowire import varint

_TIME_FIELD = b"\x09"      # LogRecord 1 time_unix_nano, fixed64
_TRACE_ID = b"\x4a"        # LogRecord 9 trace_id
_SPAN_ID = b"\x52"         # LogRecord 10 span_id
_U64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack


def _string_attribute_heads(key):
    """Heads of attribute `key` with a string value of n UTF-8 bytes (records.encode_attributes' bytes)."""
    key_field = records._framed(records._KEY, key.encode("utf-8", "replace"))

    def make(n):
        string = records._STRING + varint(n)
        value = records._VALUE + varint(len(string) + n) + string
        return records._ATTRIBUTE + varint(len(key_field) + len(value) + n) + key_field + value

    return records.Heads(make)


def _int_attribute_heads(key):
    """Heads of attribute `key` with an int value whose varint is n bytes."""
    key_field = records._framed(records._KEY, key.encode("utf-8", "replace"))

    def make(n):
        value = records._VALUE + varint(1 + n) + bytes((records._INT,))
        return records._ATTRIBUTE + varint(len(key_field) + len(value) + n) + key_field + value

    return records.Heads(make)


_VARINT = [varint(n) for n in range(0x4000)]
_VARINT_CONTINUED = [bytes((n & 0x7F | 0x80, n >> 7 | 0x80)) for n in range(0x4000)]  # 14 low bits, more follow
_VARINT_HIGH = _VARINT  # bits 14..27


def _encode_strings(values, heads):
    """heads[len] + UTF-8 of every value; None if one cannot be encoded strictly (a lone surrogate)."""
    try:
        data = list(map(str.encode, values))
    except UnicodeEncodeError:
        return None
    return list(map(add, map(heads.__getitem__, map(len, data)), data))


def _varints(values):
    """The varint of every int (tables up to 2**28, the values counters and sizes have)."""
    if min(values) < 0:
        return list(map(varint, values))
    low, low_continued, high = _VARINT, _VARINT_CONTINUED, _VARINT_HIGH
    try:
        return [low[v] if v < 0x4000 else low_continued[v & 0x3FFF] + high[v >> 14] for v in values]
    except IndexError:  # 2**28 and beyond
        return list(map(varint, values))


def _kinds(values):
    return set(map(type, values))


# -- columns: each takes the run's field values (and its lines) and returns the encoded pieces, or
# None when the run must go the general way.

_NANO_STAMPS = re.compile(r"(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z\n)*", re.ASCII)
_STAMP_SECONDS = itemgetter(slice(0, 19))
_STAMP_FRACTION = itemgetter(slice(20, 29))


class _SecondsNs(dict):
    """Nanoseconds since the epoch of "YYYY-MM-DDTHH:MM:SS" (UTC), by that text (lines of a second share it)."""

    def __missing__(self, stamp):
        if len(self) >= 4096:
            self.clear()
        ns = self[stamp] = parse_time(stamp + "Z")
        return ns


_SECONDS_NS = _SecondsNs()


def _time_column(values):
    if _kinds(values) == {str} and _NANO_STAMPS.fullmatch("\n".join(values) + "\n"):
        # what Go, Docker and CRI write, 2026-12-07T10:00:00.123456789Z: computed in C, map by map
        seconds = list(map(_SECONDS_NS.__getitem__, map(_STAMP_SECONDS, values)))
        if all(seconds):  # 0: not a date (2026-13-45...), or the epoch's first second: parse_time decides
            stamps = list(map(add, seconds, map(int, map(_STAMP_FRACTION, values))))
            return list(map(_TIME_FIELD.__add__, map(_U64, stamps)))
    if _kinds(values) - {str, int, float}:
        return None
    stamps = list(map(parse_time, values))
    if not all(stamps):
        return None  # the general path keeps an unparsable time as an attribute
    return [_TIME_FIELD + _U64(ns) for ns in stamps]


_LEVELS: dict = {}  # encoded severity fields by level string


def _level_column(values):
    if _kinds(values) != {str}:
        return None
    levels = _LEVELS
    try:
        return [levels[v] for v in values]
    except KeyError:
        pass
    if len(levels) > 1024:
        levels.clear()
    for v in values:
        if v not in levels:
            levels[v] = records.severity_fields(v, severity.number(v))
    return [levels[v] for v in values]


def _body_column(values):
    if _kinds(values) != {str}:
        return None
    return _encode_strings(values, records.BODY_HEADS)


def _id_column(tag, pattern, values):
    ids = [_hex(v, pattern) for v in values]
    return [records._framed(tag, b) if b else b"" for b in ids]


class _Attribute:
    """One attribute key's column encoder."""

    def __init__(self, key):
        self.key = key
        self._strings = _string_attribute_heads(key)
        self._ints = _int_attribute_heads(key)
        self._double_head = records.encode_attributes({key: 0.0})[:-8]

    def column(self, values):
        kinds = _kinds(values)
        if kinds == {str}:
            encoded = _encode_strings(values, self._strings)
            if encoded is not None:
                return encoded
        elif kinds == {int}:
            data = _varints(values)
            return list(map(add, map(self._ints.__getitem__, map(len, data)), data))
        elif kinds == {float}:
            head = self._double_head
            return [head + _DOUBLE(v) for v in values]
        key = self.key
        return [records.encode_attributes({key: v}) for v in values]  # mixed, null, bool, list, object


class _Plan:
    """What to do with the lines of one key tuple: which key holds each role, the attribute keys."""

    def __init__(self, keys):
        roles = dict(_plan(keys))
        self.general = "traceparent" in roles or "flags" in roles
        self.time = roles.get("time")
        self.level = roles.get("level")
        self.message = roles.get("message")
        self.trace = roles.get("trace")
        self.span = roles.get("span")
        taken = set(roles.values())
        self.attributes = [_Attribute(k) for k in keys if k not in taken]

    def columns(self, rows, texts):
        """The encoded pieces of every line, column by column (before the file attributes and after)."""
        before, after = [], []
        if self.time is not None:
            before.append(_time_column(list(map(itemgetter(self.time), rows))))
        if self.level is not None:
            before.append(_level_column(list(map(itemgetter(self.level), rows))))
        if self.message is not None:
            before.append(_body_column(list(map(itemgetter(self.message), rows))))
        else:
            before.append(_encode_strings(texts, records.BODY_HEADS))
        for attribute in self.attributes:
            after.append(attribute.column(list(map(itemgetter(attribute.key), rows))))
        if self.trace is not None:
            after.append(_id_column(_TRACE_ID, _HEX32, list(map(itemgetter(self.trace), rows))))
        if self.span is not None:
            after.append(_id_column(_SPAN_ID, _HEX16, list(map(itemgetter(self.span), rows))))
        if any(c is None for c in before) or any(c is None for c in after):
            return None
        return before, after


_PLANS: dict = {}


def _plan_of(keys):
    plan = _PLANS.get(keys)
    if plan is None:
        if len(_PLANS) >= 256:
            _PLANS.clear()
        plan = _PLANS[keys] = _Plan(keys)
    return plan


def _scan(texts):
    """The dict of every line, or None for a line that is not exactly one JSON object."""
    try:
        scanned = [_scan_json(t, 0) for t in texts]
    except (ValueError, StopIteration):
        scanned = None
    else:
        rows = list(map(itemgetter(0), scanned))
        if _kinds(rows) == {dict} and list(map(itemgetter(1), scanned)) == list(map(len, texts)):
            return rows
    rows = []
    for t in texts:
        try:
            fields, end = _scan_json(t, 0)
        except (ValueError, StopIteration):
            fields = None
        rows.append(fields if type(fields) is dict and end == len(t) else None)
    return rows


def encode(texts, file_attrs, observed_ns):
    """The encoded LogRecords of JSON lines `texts` (str), in order."""
    rows = _scan(texts)
    observed = records.OBSERVED_FIELD(observed_ns)
    shapes = [tuple(r) if r is not None else None for r in rows]
    if shapes and shapes.count(shapes[0]) == len(shapes):
        runs = [(shapes[0], len(shapes))]  # the usual case: one application, one key tuple
    else:
        runs = [(keys, sum(1 for _ in run)) for keys, run in groupby(shapes)]
    out = []
    start = 0
    for keys, size in runs:
        end = start + size
        columns = None
        if keys is not None:
            plan = _plan_of(keys)
            if not plan.general:
                columns = plan.columns(rows[start:end], texts[start:end])
        if columns is None:
            out += [records.encode(json_line(t), file_attrs, observed_ns) for t in texts[start:end]]
        else:
            before, after = columns
            out += map(b"".join, zip(*before, repeat(file_attrs, size), *after, repeat(observed, size)))
        start = end
    return out
