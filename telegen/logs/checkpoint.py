"""
The tailer's checkpoint file: for every known log file, its fingerprint and the offset up to which
its lines were delivered (exported, or counted dropped), and the journal's cursor, in
<data_dir>/logs/checkpoints.json.

Why atomic replace without fsync: the file is rewritten each time a delivery moves an offset, so
it must never be seen half-written (write a temporary file, then rename over). A crash of the
process keeps what was written (the page cache survives it); after an operating-system crash the
file may be older, which replays lines (duplicates) but never skips one, because offsets only grow.
"""
import json
import os

from twisted.logger import Logger

VERSION = 1

_log = Logger()


class CheckpointStore:
    """Loads and atomically saves [{fingerprint: (length, digest hex), offset, path}] and a journal cursor."""

    def __init__(self, directory):
        self.directory = directory
        self.path = os.path.join(directory, "checkpoints.json")
        self.writes = 0

    def exists(self):
        """True once a checkpoint was ever written here (the tailer has run before)."""
        return os.path.exists(self.path)

    def load(self):
        """
        (file entries, journal cursor or None); an unreadable file is reported and treated as
        empty (lines replay, none is skipped).
        """
        try:
            with open(self.path, encoding="utf-8") as f:
                document = json.load(f)
            if document.get("version") != VERSION:
                raise ValueError(f"unknown version {document.get('version')!r}")
            files = [(int(e["length"]), e["digest"], int(e["offset"]), e["path"]) for e in document["files"]]
            return files, document.get("journal")
        except FileNotFoundError:
            return [], None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            _log.warn("log checkpoint {path} unreadable ({error}): files are read again from their beginning",
                      path=self.path, error=e)
            return [], None

    def save(self, entries, journal_cursor=None):
        """Replace the file with `entries` [(length, digest, offset, path)] and the journal cursor."""
        document = {"version": VERSION, "journal": journal_cursor, "files": [
            {"length": length, "digest": digest, "offset": offset, "path": path}
            for length, digest, offset, path in entries]}
        os.makedirs(self.directory, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(document, f, separators=(",", ":"))
        os.replace(tmp, self.path)
        self.writes += 1
