"""
Line formats: each parser turns one line of text into a Parsed (body, time, severity, stream,
attributes, trace context). agent.logs.format picks one, or "auto" tries the structured ones by
the line's first character and falls back to plain text.

Why one small record type: the tailer joins CRI partial lines and multiline groups on it, and
records.py builds the OTLP LogRecord from it, whatever the format was.
"""
from dataclasses import dataclass, field
from typing import Optional

from telegen.logs import severity


@dataclass
class Parsed:
    """One parsed line. time_ns 0: the line had no time. partial: a CRI 'P' line (more follows)."""

    body: object
    time_ns: int = 0
    severity_text: str = ""
    severity_number: int = 0
    stream: Optional[str] = None
    attributes: dict = field(default_factory=dict)
    trace_id: bytes = b""
    span_id: bytes = b""
    trace_flags: int = 0
    partial: bool = False


def plain(text):
    """A free-form line: the whole line is the body; a level word sets the severity."""
    word, number = severity.detect(text)
    return Parsed(text, severity_text=word, severity_number=number)


PARSERS = {"plain": plain}


def parser(fmt):
    """The parse function of an agent.logs.format value."""
    return PARSERS[fmt]
