"""
Multiline joining by a start pattern (agent.logs.multiline_start): a line matching the pattern
begins a record, the lines after it that do not match are appended to it (a stack trace).

Why the end offset travels with the group: the record is only complete when the next start line
(or the flush timeout) closes it, and the checkpoint may only move past its last line then.
"""
import re


class Multiline:
    """Groups (text, end_offset) lines into records; a group never grows past max_size characters."""

    def __init__(self, pattern, max_size):
        self._start = re.compile(pattern)
        self._max_size = max_size
        self._lines = []
        self._size = 0
        self._end = 0

    @property
    def holding(self):
        return bool(self._lines)

    def feed(self, lines):
        """Feed [(text, end_offset)]; return the records [(text, end_offset)] completed by them."""
        out = []
        match = self._start.match
        for text, end in lines:
            if self._lines and (match(text) or self._size + len(text) > self._max_size):
                out.append(self._close())
            self._lines.append(text)
            self._size += len(text) + 1
            self._end = end
        return out

    def flush(self):
        """Close the open group (nothing more came within the flush timeout)."""
        return [self._close()] if self._lines else []

    def _close(self):
        record = ("\n".join(self._lines), self._end)
        self._lines = []
        self._size = 0
        return record
