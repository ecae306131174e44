"""
Bytes read from a file, cut into lines with the file offset each one ends at.

Why offsets: a file's checkpoint may only move to the end of a line whose record was delivered, so
every line carries the offset just past its newline. A line longer than max_line_size is cut at
that size: in "split" mode every piece becomes its own line, in "truncate" mode the first piece is
kept and the rest is skipped up to the next newline; both are counted by the caller.
"""
from itertools import accumulate, repeat
from operator import add

SPLIT = "split"
TRUNCATE = "truncate"


class LineCutter:
    """
    Turns appended bytes into (line bytes, end offset) pairs. `offset` is where the bytes not yet
    cut start in the file (what a checkpoint may safely point to once all lines before it were
    delivered); `pending` holds an unterminated tail.
    """

    def __init__(self, offset, max_line_size, long_lines=SPLIT):
        self.offset = offset
        self.pending = b""
        self.max_line_size = max_line_size
        self.long_lines = long_lines
        self.skipping = False  # truncate mode: inside the rest of an over-long line
        self.split = 0         # lines cut into pieces (split) or shortened (truncate)
        self.truncated = 0

    def feed(self, data):
        """Cut `data` (the bytes following what was fed before); return [(line, end_offset)]."""
        buf = self.pending + data if self.pending else data
        start_offset = self.offset
        if not self.skipping and b"\r" not in buf:
            # The usual bytes: split and offsets computed in C, one pass each.
            lines = buf.split(b"\n")
            tail = lines.pop()
            if len(tail) <= self.max_line_size and (not lines or max(map(len, lines)) <= self.max_line_size):
                ends = accumulate(map(add, map(len, lines), repeat(1)), initial=start_offset)
                next(ends)
                self.pending = tail
                self.offset = start_offset + len(buf) - len(tail)
                return list(zip(lines, ends))
        out = []
        pos = 0
        limit = self.max_line_size
        find = buf.find
        while True:
            nl = find(b"\n", pos)
            if nl < 0:
                break
            if self.skipping:
                self.skipping = False
            elif nl - pos > limit:
                self._cut(buf, pos, nl, start_offset, out)
            else:
                end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl  # CRLF: drop the \r
                out.append((buf[pos:end], start_offset + nl + 1))
            pos = nl + 1
        rest = len(buf) - pos
        if rest > limit:
            if self.skipping:
                pos = len(buf)
            else:
                pos = self._cut(buf, pos, len(buf), start_offset, out, open_end=True)
        self.pending = buf[pos:]
        self.offset = start_offset + pos
        return out

    def _cut(self, buf, pos, end, start_offset, out, open_end=False):
        """Emit an over-long line between pos and end; return where the uncut bytes start."""
        limit = self.max_line_size
        if self.long_lines == TRUNCATE:
            self.truncated += 1
            if open_end:
                self.skipping = True
                out.append((buf[pos:pos + limit], start_offset + end))
                return end
            out.append((buf[pos:pos + limit], start_offset + end + 1))
            return end + 1
        self.split += 1
        while end - pos > limit:
            out.append((buf[pos:pos + limit], start_offset + pos + limit))
            pos += limit
        if open_end:
            return pos
        out.append((buf[pos:end], start_offset + end + 1))
        return end + 1

    def flush(self):
        """Emit the unterminated tail as a line (the writer stopped without a newline)."""
        if not self.pending:
            return []
        line = self.pending
        self.offset += len(line)
        self.pending = b""
        if self.skipping:
            self.skipping = False
            return []
        return [(line, self.offset)]
