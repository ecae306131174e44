"""
The systemd journal as a log source (agent.logs.journal), read with Debian's python3-systemd from
a persisted cursor.

Why a cursor and not a time: the journal names every entry by a cursor string, and seeking to it
resumes at exactly the next entry after the last delivered one, across restarts and journal file
rotation. If that entry was vacuumed meanwhile, reading resumes at the oldest entry after it.
Entries become records with MESSAGE as the body, the time of __REALTIME_TIMESTAMP, severity from
PRIORITY, and the unit, identifier and PID as attributes; trace ids written in the message are
found like in a plain line.
"""
import datetime

from telegen.logs import records, severity
from telegen.logs.parsers import plain
from telegen.logs.progress import Progress

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)

# journal field -> record attribute
ATTRIBUTES = (("_SYSTEMD_UNIT", "systemd.unit"), ("SYSLOG_IDENTIFIER", "syslog.identifier"),
              ("_PID", "process.pid"), ("_COMM", "process.executable.name"), ("_HOSTNAME", "host.name"))


def open_reader(directory):
    """A systemd.journal.Reader of `directory`'s journal files, or of the system journal (None)."""
    from systemd import journal

    return journal.Reader(path=directory) if directory else journal.Reader()


def entry_record(entry, observed_ns):
    """(encoded LogRecord, invalid_utf8) of one journal entry."""
    message = entry.get("MESSAGE", "")
    invalid = False
    if isinstance(message, bytes):
        message, invalid = message.decode("utf-8", "replace"), True
    elif not isinstance(message, str):
        message = str(message)
    parsed = plain(message)
    priority = entry.get("PRIORITY")
    if isinstance(priority, int) and priority in severity.PRIORITY:
        parsed.severity_text, parsed.severity_number = severity.PRIORITY[priority]
    stamp = entry.get("__REALTIME_TIMESTAMP")
    if isinstance(stamp, datetime.datetime):
        parsed.time_ns = (stamp - _EPOCH) // _MICROSECOND * 1000
    attrs = {name: entry[field] for field, name in ATTRIBUTES if field in entry}
    return records.encode(parsed, records.encode_attributes(attrs), observed_ns), invalid


class JournalSource(Progress):
    """Reads new journal entries after `committed` (a cursor); rewinds to it when told."""

    def __init__(self, reader, units, start_at_end, cursor, resource):
        super().__init__(cursor)
        self.resource = resource
        self.path = "journal"
        self._reader = reader
        for unit in units:
            self._reader.add_match(_SYSTEMD_UNIT=unit)
        self._reader.fileno()  # sets up inotify, so process() notices new and rotated journal files
        self._start_at_end = start_at_end
        self._position()
        self._start_at_end = False  # a later rewind with nothing delivered yet goes back to the head

    def _position(self):
        """Put the reader just after `committed`, or at the start the config asks for."""
        reader = self._reader
        if self.committed is None:
            if self._start_at_end:
                reader.seek_tail()
                last = reader.get_previous()
                self.committed = last.get("__CURSOR") if last else None
            else:
                reader.seek_head()
            return
        reader.seek_cursor(self.committed)
        entry = reader.get_next()
        if entry and entry.get("__CURSOR") != self.committed:
            reader.get_previous()  # the delivered entry is gone: the one found is new, read it next

    def rewind(self):
        self.clear()
        self._position()

    def read(self, limit, observed_ns):
        """Build up to `limit` new entries into `records`; return (entries read, invalid UTF-8 messages)."""
        self._reader.process()
        count = invalid = 0
        append = self.records.append
        while count < limit:
            entry = self._reader.get_next()
            if not entry:
                break
            record, bad = entry_record(entry, observed_ns)
            append((record, entry["__CURSOR"]))
            count += 1
            invalid += bad
        return count, invalid

    def close(self):
        self._reader.close()
