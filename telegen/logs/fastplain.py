"""
The common case at wire speed: a plain text line (no envelope, no structure, no trace ids) goes
from the bytes read straight to its encoded LogRecord, without decoding it to text and encoding
it back, and without the Parsed record in between.

Why a second path: most lines in most files are exactly that, and per-line Python work is what
the tailer's CPU goes to. Whatever this path cannot settle on its own (a line that is not UTF-8,
looks like JSON, logfmt or a CRI line, or mentions a trace) it refuses with None and the general
path (parsers.py, records.encode) handles that line; both give the same record.
"""
import re

from telegen.logs import severity
from telegen.logs.records import OBSERVED_FIELD, body_head, severity_fields

_WORDS = severity.WORDS.encode()
_UPPER = re.compile(rb"\b(" + _WORDS + rb")\b")
_WINDOW = severity.WINDOW
_STRUCTURED = re.compile(rb"[{\[<]|[\w.@-]+=|\d{4}-\d\d-\d\dT\S+ std(?:out|err) [PF]")  # what auto would parse otherwise
_TRACE_HINTS = (b"race", b"RACE", b"00-")

_SEVERITY = {word.encode(): severity_fields(word, severity.NUMBERS[word.lower()])
             for word in ("TRACE", "DEBUG", "INFO", "NOTICE", "WARN", "WARNING", "ERR", "ERROR",
                          "CRIT", "CRITICAL", "FATAL", "ALERT", "EMERG", "PANIC")}


def encoder(auto):
    """
    encode(raw line bytes, encoded file attributes, observed ns) -> LogRecord bytes, or None for
    the general path. `auto`: lines that format "auto" would parse as structured are refused too.
    """
    upper = _UPPER.search
    structured = _STRUCTURED.match if auto else None
    hints = _TRACE_HINTS
    table = _SEVERITY

    def encode(raw, file_attrs, observed_ns):
        if not raw.isascii():
            return None  # UTF-8 to validate (or replace): the general path decodes it
        if structured is not None and structured(raw):
            return None
        for hint in hints:
            if hint in raw:
                return None
        m = upper(raw, 0, _WINDOW)
        if m is None and (b"[" in raw[:_WINDOW] or b"<" in raw[:_WINDOW]):
            return None  # a bracketed level in any case: the general path finds it
        level = table[m.group(1)] if m is not None else b""
        return level + body_head(len(raw)) + raw + file_attrs + OBSERVED_FIELD(observed_ns)

    return encode
