"""
One tailed file: its fingerprint, its open descriptor, the lines read but not yet handed to the
export pipeline, and the deliveries in flight that move its checkpoint.

Why a fingerprint (a digest of the first bytes) and not the path or the inode: after a rename the
same data lives under another path; after copytruncate the same path and inode hold new data, and
the copy (a new inode) holds the old; a re-created path is a new inode with new data. The first
bytes follow the data in all three cases. A file shorter than the fingerprint size is known by
what it has so far, and its fingerprint grows with it.
"""
import hashlib
import os

from telegen.logs.lines import LineCutter
from telegen.logs.progress import Progress


def digest(head):
    """The fingerprint digest of a file's first bytes."""
    return hashlib.blake2b(head, digest_size=16).hexdigest()


class TrackedFile(Progress):
    """
    State of one file. `committed` is the offset every line before which was delivered (what the
    checkpoint holds); reading resumes at `cutter.offset + len(cutter.pending)`.
    """

    def __init__(self, length, digest_hex, offset, path, max_line_size, long_lines, make_joiner, make_format):
        super().__init__(offset)
        self.length = length
        self.digest = digest_hex
        self.head = b""            # the first bytes as last seen (not saved: known once matched)
        self.path = path
        self.fd = None
        self.inode = None
        self.sequence = 0          # set by the tailer: files first known earlier are read first
        self.last_data = None      # reactor time the file last grew (None: not read yet)
        self.seen = False          # matched by the include globs in the current scan
        self.file_attrs = None     # encoded record attributes, set with `resource` when first matched
        self.resource = None       # the resource its records are submitted with (the tailer's _describe)
        self.writer = None         # the container that writes it (writers.Writer), when its path says
        self.discovered = False    # resource is discovery's for writer: final
        self.next_lookup = 0.0     # reactor time discovery may be asked about writer again
        self._max_line_size = max_line_size
        self._long_lines = long_lines
        self._make_joiner = make_joiner
        self._make_format = make_format
        self._reset(offset)

    def _reset(self, offset):
        self.cutter = LineCutter(offset, self._max_line_size, self._long_lines)
        self.joiner = self._make_joiner()
        self.format = self._make_format()

    @property
    def key(self):
        return self.length, self.digest

    @property
    def read_offset(self):
        return self.cutter.offset + len(self.cutter.pending)

    @property
    def idle(self):
        """Nothing read and undelivered: the entry can be forgotten once its file is gone."""
        return not (self.records or self.inflight or self.cutter.pending or self.joiner.holding or self.format.holding)

    def rewind(self):
        """Forget everything after the checkpoint and read from there again (a delivery was abandoned)."""
        self.clear()
        self._reset(self.committed)

    def restart_at_zero(self):
        """The file was truncated and rewritten under the same fingerprint: it is new data."""
        self.committed = 0
        self.rewind()

    def grow_fingerprint(self, head):
        if len(head) > self.length:
            self.length = len(head)
            self.digest = digest(head)

    def attach(self, fd, inode):
        """Read from `fd` (of `inode`) from now on, closing a previous descriptor of another file."""
        if self.fd is not None and self.fd != fd:
            os.close(self.fd)
        self.fd = fd
        self.inode = inode

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.inode = None


class Fingerprints:
    """Known files by (fingerprint length, digest): finds the file a head of bytes belongs to."""

    def __init__(self):
        self._by_key = {}

    def __iter__(self):
        return iter(list(self._by_key.values()))

    def __len__(self):
        return len(self._by_key)

    def add(self, tracked):
        self._by_key[tracked.key] = tracked

    def remove(self, tracked):
        if self._by_key.get(tracked.key) is tracked:
            del self._by_key[tracked.key]

    def rekey(self, tracked, head):
        """Grow a file's fingerprint to `head` (the file got longer than its old fingerprint)."""
        if len(head) > tracked.length:
            self.remove(tracked)
            tracked.grow_fingerprint(head)
            self.add(tracked)

    def covers(self, head, size, inode):
        """
        True if `head` (of a file of `size` bytes, another inode) is the start of a known file's
        first bytes and all of it was read there already: a copy taken before the last read
        (copytruncate racing the writer), nothing in it is new.
        """
        return any(t.head.startswith(head) and size <= t.read_offset and t.inode != inode
                   for t in self._by_key.values() if len(t.head) > len(head))

    def match(self, head):
        """The known file whose fingerprint is a prefix of `head` (the longest such), or None."""
        best = None
        for length in sorted({k[0] for k in self._by_key}, reverse=True):
            if length > len(head):
                continue
            found = self._by_key.get((length, digest(head[:length])))
            if found is not None:
                best = found
                break
        return best
