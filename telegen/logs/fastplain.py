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
from itertools import repeat
from operator import add, getitem, sub

from telegen.logs import severity
from telegen.logs.records import BODY_HEADS, OBSERVED_FIELD, severity_fields

_WORDS = severity.WORDS.encode()
# Without a leading \b the search skips ahead by the words' first letters (about twice as fast); a
# match right after a word character is not a level word, and such a line takes the general path.
_UPPER = re.compile(rb"(" + _WORDS + rb")\b")
_WORD_CHARACTERS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_WINDOW = severity.WINDOW
_START = re.Match.start
_STRUCTURED = re.compile(rb"[{\[<]|[\w.@-]+=|\d{4}-\d\d-\d\dT\S+ std(?:out|err) [PF]")  # what auto would parse otherwise
_TRACE_HINTS = (b"race", b"RACE", b"00-")

_SEVERITY = {word.encode(): severity_fields(word, severity.NUMBERS[word.lower()])
             for word in ("TRACE", "DEBUG", "INFO", "NOTICE", "WARN", "WARNING", "ERR", "ERROR",
                          "CRIT", "CRITICAL", "FATAL", "ALERT", "EMERG", "PANIC")}


def encoder(auto):
    """
    encode([raw line bytes], encoded file attributes, observed ns) -> [LogRecord bytes, or None for
    a line the general path must take]. `auto`: lines that format "auto" would parse as structured
    are refused too.

    A batch at a time: the checks every line needs are C calls mapped over the batch, and the
    rarer ones (trace hints, brackets) are first made on the whole batch at once.
    """
    upper = _UPPER.search
    structured = _STRUCTURED.match if auto else None
    table = _SEVERITY
    heads = BODY_HEADS

    def encode(raws, file_attrs, observed_ns):
        n = len(raws)
        tail = file_attrs + OBSERVED_FIELD(observed_ns)
        matches = list(map(upper, raws, repeat(0, n), repeat(_WINDOW, n)))
        out = list(map(add, map(add, [table[m[1]] if m is not None else b"" for m in matches],
                                     map(heads.__getitem__, map(len, raws))),
                       map(add, raws, repeat(tail, n))))
        refused = [] if all(map(bytes.isascii, raws)) else [i for i, raw in enumerate(raws) if not raw.isascii()]
        if structured is not None and any(map(structured, raws)):
            refused += [i for i, raw in enumerate(raws) if structured(raw)]
        joined = b"\n".join(raws)
        if any(hint in joined for hint in _TRACE_HINTS):
            refused += [i for i, raw in enumerate(raws) if any(hint in raw for hint in _TRACE_HINTS)]
        # the byte before each match (a line's last byte for a match at 0: refused, and the general
        # path decides), in C; only when one is a word character is each line looked at
        if None not in matches:
            before = map(getitem, raws, map(sub, map(_START, matches), repeat(1, n)))
        else:
            before = [raw[m.start() - 1] if m is not None else 32 for raw, m in zip(raws, matches)]
        if not _WORD_CHARACTERS.isdisjoint(before):
            refused += [i for i, (raw, m) in enumerate(zip(raws, matches))
                        if m is not None and m.start() and raw[m.start() - 1] in _WORD_CHARACTERS]
        if None in matches:
            # a bracketed level in any case: the general path finds it
            refused += [i for i, m in enumerate(matches) if m is None and (b"[" in raws[i][:_WINDOW] or b"<" in raws[i][:_WINDOW])]
        for i in refused:
            out[i] = None
        return out

    return encode
