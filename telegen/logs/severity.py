"""
Severity per the OpenTelemetry log data model: a level word (as applications, syslog and Go, Java
and Python loggers spell it) to severity_number, and detection of the level in a plain text line.

Why uppercase-only in plain text: "no error found" is an INFO line; a level in a free-form line
is written as a word of its own in capitals (2024-01-01 12:00:00 ERROR ...) or bracketed in any
case ([error], <warn>). Structured lines (JSON, logfmt) name it in a field and any case is taken.
"""
import re

TRACE, DEBUG, INFO, INFO2, WARN, ERROR, FATAL, FATAL2, FATAL3 = 1, 5, 9, 10, 13, 17, 21, 22, 23

NUMBERS = {
    "trace": TRACE, "finest": TRACE, "finer": TRACE,
    "debug": DEBUG, "dbg": DEBUG, "fine": DEBUG, "verbose": DEBUG,
    "info": INFO, "information": INFO, "informational": INFO, "inf": INFO,
    "notice": INFO2,
    "warn": WARN, "warning": WARN, "wrn": WARN,
    "error": ERROR, "err": ERROR, "eror": ERROR, "severe": ERROR,
    "crit": FATAL, "critical": FATAL, "fatal": FATAL, "ftl": FATAL,
    "alert": FATAL2,
    "emerg": FATAL3, "emergency": FATAL3, "panic": FATAL3,
}

# Syslog / journald PRIORITY 0..7.
PRIORITY = {0: ("EMERG", FATAL3), 1: ("ALERT", FATAL2), 2: ("CRIT", FATAL), 3: ("ERR", ERROR),
            4: ("WARNING", WARN), 5: ("NOTICE", INFO2), 6: ("INFO", INFO), 7: ("DEBUG", DEBUG)}

WORDS = "TRACE|DEBUG|INFO|NOTICE|WARN(?:ING)?|ERR(?:OR)?|CRIT(?:ICAL)?|FATAL|ALERT|EMERG|PANIC"
_UPPER = re.compile(rf"\b({WORDS})\b")
_BRACKETED = re.compile(rf"[\[<]((?i:{WORDS}))[\]>]")
WINDOW = 120  # the level sits near the start of a line; do not scan long bodies


def number(text):
    """severity_number of a level word (any case), or 0 (unspecified)."""
    if isinstance(text, int):
        return text if 1 <= text <= 24 else 0
    return NUMBERS.get(str(text).strip().lower(), 0)


def detect(line):
    """(severity_text, severity_number) of a plain line's level word, or ("", 0)."""
    m = _UPPER.search(line, 0, WINDOW)
    if m is None:
        head = line[:WINDOW]
        if "[" not in head and "<" not in head:
            return "", 0
        m = _BRACKETED.search(head)
        if m is None:
            return "", 0
    word = m.group(1)
    return word, NUMBERS[word.lower()]
