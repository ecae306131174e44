"""
Line formats, in two stages.

1. The container envelope (unwrap): Docker's json-file lines ({"log", "stream", "time"}) and CRI
   lines (containerd, cri-o: "<time> <stream> <P|F> <message>") carry the application's message
   with its stream and the runtime's timestamp. A message may come in pieces (CRI "P", a Docker
   "log" without its newline); the tailer joins pieces before stage 2.
2. The application line (parse): JSON, logfmt or plain text. Time, level, message and trace
   context are taken from common field names; other fields become attributes.

agent.logs.format picks a fixed pair, or "auto" decides per line by its shape (cheap checks on
its first characters) so one glob can cover container and plain files.
"""
import functools
import json
import json.scanner
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from telegen.logs import severity


@dataclass
class Envelope:
    """Stage 1: the message inside a line, its stream and the runtime's time (0: none)."""

    message: str
    stream: Optional[str] = None
    time_ns: int = 0
    partial: bool = False


@dataclass
class Parsed:
    """Stage 2: one log record's fields. time_ns 0: the line had no time."""

    body: object
    time_ns: int = 0
    severity_text: str = ""
    severity_number: int = 0
    stream: Optional[str] = None
    attributes: dict = field(default_factory=dict)
    trace_id: bytes = b""
    span_id: bytes = b""
    trace_flags: int = 0


# -- time ---------------------------------------------------------------------------------------

_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(?:[.,](\d{1,9}))?(Z|z|[+-]\d\d:?\d\d)?$")


def parse_time(value):
    """
    Nanoseconds since the epoch from an RFC 3339 / ISO 8601 string (nanosecond fraction kept; no
    zone means UTC) or a number of seconds, milliseconds, microseconds or nanoseconds; 0 if unknown.
    """
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        magnitude = abs(value)
        scale = 10**9 if magnitude < 1e11 else 10**6 if magnitude < 1e14 else 10**3 if magnitude < 1e17 else 1
        return value * scale if isinstance(value, int) else int(value * scale)
    if not isinstance(value, str):
        return 0
    if len(value) == 30 and value[19] == "." and value[29] == "Z" and value[10] == "T":
        # 2026-12-07T10:00:00.123456789Z, what Go, Docker and CRI write: no regex needed
        seconds = _seconds(value[:19], "Z")
        fraction = value[20:29]
        if seconds is not None and fraction.isdigit():
            return seconds * 1_000_000_000 + int(fraction)
    m = _RFC3339.match(value.strip())
    if m is None:
        return 0
    seconds = _seconds(m[1], m[3] or "Z")
    if seconds is None:
        return 0
    fraction = (m[2] or "").ljust(9, "0")
    return seconds * 1_000_000_000 + int(fraction)


@functools.lru_cache(maxsize=1024)
def _seconds(stamp, zone):
    """Epoch seconds of "YYYY-MM-DDTHH:MM:SS" in `zone` (lines of one second share it: cached)."""
    try:
        return int(datetime.fromisoformat(stamp.replace(" ", "T") + ("+00:00" if zone in "Zz" else zone)).timestamp())
    except ValueError:
        return None


# -- trace context ------------------------------------------------------------------------------

_TRACEPARENT = re.compile(r"\b[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\b")
_TRACE_IN_TEXT = re.compile(r"(?i)\btrace[_.-]?id[\"']?\s*[=:]\s*[\"']?([0-9a-f]{32})\b")
_SPAN_IN_TEXT = re.compile(r"(?i)\bspan[_.-]?id[\"']?\s*[=:]\s*[\"']?([0-9a-f]{16})\b")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}$")
_HEX16 = re.compile(r"[0-9a-fA-F]{16}$")


def _hex(value, pattern):
    if isinstance(value, str) and pattern.match(value) and value.strip("0"):
        return bytes.fromhex(value)
    return b""


def _trace_from_text(parsed, text):
    """trace_id/span_id or a W3C traceparent written anywhere in a free-form line."""
    if "race" not in text and "00-" not in text and "RACE" not in text:
        return
    m = _TRACEPARENT.search(text)
    if m is not None:
        parsed.trace_id, parsed.span_id = bytes.fromhex(m[1]), bytes.fromhex(m[2])
        parsed.trace_flags = int(m[3], 16) & 0xFF
        return
    m = _TRACE_IN_TEXT.search(text)
    if m is not None:
        parsed.trace_id = _hex(m[1], _HEX32)
        m = _SPAN_IN_TEXT.search(text)
        if m is not None:
            parsed.span_id = _hex(m[1], _HEX16)


# -- structured fields --------------------------------------------------------------------------

# Field names by role; the first name of a role found in a line is used, the others stay attributes.
_ROLES = {}
for _role, _names in (
        ("time", ("time", "timestamp", "ts", "@timestamp", "datetime", "date", "t")),
        ("level", ("level", "severity", "lvl", "loglevel", "log.level", "levelname", "severity_text", "@level", "l")),
        ("message", ("message", "msg", "log", "@message", "text", "body")),
        ("trace", ("trace_id", "traceId", "traceid", "trace.id", "dd.trace_id", "logging.googleapis.com/trace")),
        ("span", ("span_id", "spanId", "spanid", "span.id", "dd.span_id", "logging.googleapis.com/spanId")),
        ("flags", ("trace_flags", "traceFlags", "flags")),
        ("traceparent", ("traceparent",))):
    for _rank, _name in enumerate(_names):
        _ROLES[_name] = (_role, _rank)


_PLANS: dict = {}  # ((role, key) pairs) by a line's key tuple: one application writes the same keys


def _plan(keys):
    """The best-ranked key of each role among `keys`, as ((role, key), ...)."""
    found = {}
    for key in keys:
        role = _ROLES.get(key)
        if role is not None and (role[0] not in found or role[1] < found[role[0]][0]):
            found[role[0]] = (role[1], key)
    return tuple((role, key) for role, (_, key) in found.items())


def _roles(fields):
    """{role: value} of the best-ranked field of each role, those fields removed from `fields`."""
    keys = tuple(fields)
    plan = _PLANS.get(keys)
    if plan is None:
        if len(_PLANS) >= 1024:
            _PLANS.clear()
        plan = _PLANS[keys] = _plan(keys)
    pop = fields.pop
    return {role: pop(key) for role, key in plan}


def _attribute_value(value):
    if isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _from_fields(fields, line):
    """A Parsed from a flat mapping of a structured line (JSON object or logfmt pairs)."""
    roles = _roles(fields)
    message, when, level = roles.get("message"), roles.get("time"), roles.get("level")
    parsed = Parsed(line if message is None else (message if isinstance(message, str) else _attribute_value(message)))
    parsed.time_ns = parse_time(when) if when is not None else 0
    if when is not None and not parsed.time_ns:
        fields["time"] = when  # kept, not lost, when it is not a time we understand
    if level is not None:
        parsed.severity_text = str(level)
        parsed.severity_number = severity.number(level)
    traceparent = roles.get("traceparent")
    m = _TRACEPARENT.match(traceparent) if isinstance(traceparent, str) else None
    if m is not None:
        parsed.trace_id, parsed.span_id, parsed.trace_flags = bytes.fromhex(m[1]), bytes.fromhex(m[2]), int(m[3], 16)
    else:
        trace, span, flags = roles.get("trace"), roles.get("span"), roles.get("flags")
        parsed.trace_id = _hex(trace, _HEX32) if trace is not None else b""
        parsed.span_id = _hex(span, _HEX16) if span is not None else b""
        if isinstance(flags, int) and parsed.trace_id:
            parsed.trace_flags = flags & 0xFF
    parsed.attributes = fields  # what is left; records.py writes lists and objects as JSON text
    return parsed


# -- application line parsers -------------------------------------------------------------------

def plain(text):
    """A free-form line: the whole line is the body; a level word and trace ids are found in it."""
    word, number = severity.detect(text)
    parsed = Parsed(text, severity_text=word, severity_number=number)
    _trace_from_text(parsed, text)
    return parsed


_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # the C scanner, without json.loads' wrappers


def json_line(text):
    """A JSON object per line; not an object: plain text."""
    try:
        fields, end = _scan_json(text, 0)
    except (ValueError, StopIteration):
        return plain(text)
    if type(fields) is not dict or (end != len(text) and text[end:].strip()):
        return plain(text)
    return _from_fields(fields, text)


_LOGFMT_PAIR = re.compile(r'([^\s="]+)=(?:"((?:[^"\\]|\\.)*)"|(\S*))')
_LOGFMT_START = re.compile(r"[\w.@-]+=")


def logfmt(text):
    """key=value pairs (values may be "quoted \\"like\\" this"); a line without any: plain text."""
    fields = {}
    for m in _LOGFMT_PAIR.finditer(text):
        value = m[3] if m[2] is None else m[2].replace('\\"', '"').replace("\\\\", "\\")
        fields[m[1]] = value
    if not fields:
        return plain(text)
    return _from_fields(fields, text)


def auto(text):
    """JSON if it looks like an object, logfmt if it starts with key=, else plain text."""
    if text.startswith("{"):
        return json_line(text)
    if _LOGFMT_START.match(text):
        return logfmt(text)
    return plain(text)


PARSERS = {"plain": plain, "json": json_line, "logfmt": logfmt, "auto": auto}


# -- container envelopes ------------------------------------------------------------------------

def bare(text):
    """No envelope: the line is the message."""
    return Envelope(text)


def docker(text):
    """Docker json-file: {"log": "...\\n", "stream": "stdout", "time": "..."}; without its newline, a piece."""
    try:
        fields = json.loads(text)
        message = fields["log"]
    except (ValueError, KeyError, TypeError):
        return Envelope(text)
    if not isinstance(message, str):
        return Envelope(text)
    partial = not message.endswith("\n")
    return Envelope(message[:-1] if not partial else message, fields.get("stream"),
                    parse_time(fields.get("time", "")), partial)


_CRI = re.compile(r"(\S+) (stdout|stderr) ([PF])(?:[:\w]*)? ?(.*)$", re.DOTALL)


def cri(text):
    """CRI: "<RFC 3339 time> <stdout|stderr> <P|F> <message>"; P: a piece, the message goes on."""
    m = _CRI.match(text)
    if m is None:
        return Envelope(text)
    return Envelope(m[4], m[2], parse_time(m[1]), m[3] == "P")


_CRI_START = re.compile(r"\d{4}-\d\d-\d\dT\S+ std(?:out|err) [PF]")


def any_envelope(text):
    """Docker if it is a JSON object with "log", CRI if it starts like one, else none."""
    if text.startswith('{"log"') or (text.startswith("{") and '"log"' in text and '"stream"' in text):
        return docker(text)
    if text[:1].isdigit() and _CRI_START.match(text):
        return cri(text)
    return Envelope(text)


# agent.logs.format -> (envelope, application parser)
FORMATS = {
    "auto": (any_envelope, auto),
    "docker": (docker, auto),
    "cri": (cri, auto),
    "json": (bare, json_line),
    "logfmt": (bare, logfmt),
    "plain": (bare, plain),
}


def join(pieces):
    """One Envelope from a message's pieces (the last one closes it); time and stream of the first."""
    first = pieces[0]
    return Envelope("".join(p.message for p in pieces), first.stream, first.time_ns, False)


class Format:
    """Turns text lines of one file into Parsed records, joining partial messages in between."""

    def __init__(self, fmt, max_size):
        self._unwrap, self._parse = FORMATS[fmt]
        self._max_size = max_size
        self._pieces = []
        self._size = 0
        self._end = 0

    @property
    def holding(self):
        return bool(self._pieces)

    def feed(self, lines):
        """[(text, end_offset)] -> the completed [(Parsed, end_offset)]."""
        if self._unwrap is bare:  # no envelope, no pieces: straight to the line parser
            parse = self._parse
            return [(parse(text), end) for text, end in lines]
        out = []
        for text, end in lines:
            envelope = self._unwrap(text)
            if envelope.partial:
                self._pieces.append(envelope)
                self._size += len(envelope.message)
                self._end = end
                if self._size > self._max_size:  # a message never closed: bounded like a long line
                    out += self.flush()
                continue
            if self._pieces:
                self._pieces.append(envelope)
                envelope = join(self._pieces)
                self._pieces, self._size = [], 0
            out.append((self._record(envelope), end))
        return out

    def flush(self):
        """Emit a message whose last piece never came (within the flush timeout)."""
        if not self._pieces:
            return []
        envelope = join(self._pieces)
        self._pieces, self._size = [], 0
        return [(self._record(envelope), self._end)]

    def _record(self, envelope):
        parsed = self._parse(envelope.message)
        parsed.stream = envelope.stream
        if not parsed.time_ns:
            parsed.time_ns = envelope.time_ns
        return parsed
