"""
The systemd journal as a log source (agent.logs.journal), read with Debian's python3-systemd from
a persisted cursor.

Why a cursor and not a time: the journal names every entry by a cursor string, and seeking to it
resumes at exactly the next entry after the last delivered one, across restarts and journal file
rotation. If that entry was vacuumed meanwhile, reading resumes at the oldest entry after it.
Entries become records with MESSAGE as the body, the time of __REALTIME_TIMESTAMP, severity from
PRIORITY, and the unit, identifier and PID as attributes; trace ids written in the message are
found like in a plain line.

Resources (EntryResources): an entry a container wrote (Docker's and Podman's journald log
drivers set CONTAINER_ID, CONTAINER_ID_FULL, CONTAINER_NAME) carries its container's resource as
its log file would (writers.py); an entry of a process discovery knows (_PID, still running, started
before the entry in this boot) carries that process's resource, the one its spans carry; any
other entry the host's.
"""
import datetime
import os
import uuid

from telegen.discovery import procfs
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


def _boot_id(path="/proc/sys/kernel/random/boot_id"):
    try:
        with open(path) as f:
            return uuid.UUID(f.read().strip())
    except (OSError, ValueError):
        return None


class EntryResources:
    """
    The resource of a journal entry: its container's (asked of discovery at most once an interval
    per container until it knows it, what the entry names before that), its process's, or the
    host's `resource`. The tailer submits runs of entries with equal resources together.
    """

    MAX_CONTAINERS = 1024

    def __init__(self, processes, resource, container_base, interval, clock, proc_root="/proc"):
        self._processes = processes
        self._resource = resource
        self._container_base = container_base
        self._interval = interval
        self._clock = clock
        self._proc_root = proc_root
        self._boot = _boot_id(os.path.join(proc_root, "sys/kernel/random/boot_id"))
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._containers = {}  # container id -> [resource, discovered, next lookup, what the entry names]
        self._started = {}     # pid -> start time in seconds after boot (None: gone), for one read

    def new_read(self):
        self._started.clear()  # a pid is reused over time

    def __call__(self, entry):
        container = entry.get("CONTAINER_ID_FULL") or entry.get("CONTAINER_ID")
        if container:
            return self._container(str(container), entry)
        pid = entry.get("_PID")
        if self._processes is not None and isinstance(pid, int) and pid > 0:
            return self._process(pid, entry)
        return self._resource

    def _container(self, container_id, entry):
        known = self._containers.get(container_id)
        if known is None:
            if len(self._containers) >= self.MAX_CONTAINERS:
                self._containers.clear()
            named = {"container.id": container_id, "container.name": entry.get("CONTAINER_NAME"),
                     "container.image.name": entry.get("IMAGE_NAME")}
            named = {k: str(v) for k, v in named.items() if v}
            known = self._containers[container_id] = [dict(self._container_base, **named), False, 0.0, named]
        resource, discovered, next_lookup, named = known
        now = self._clock()
        if not discovered and self._processes is not None and now >= next_lookup:
            known[2] = now + self._interval
            found = self._processes.container_resource(container_id)
            if found is not None:
                known[0], known[1] = dict(named, **found), True
        return known[0]

    def _process(self, pid, entry):
        """The process's resource if the pid still names the process that wrote the entry, else the host's."""
        monotonic = entry.get("__MONOTONIC_TIMESTAMP")
        if self._boot is None or not hasattr(monotonic, "bootid") or monotonic.bootid != self._boot:
            return self._resource  # another boot's entry (or no time to compare): the pid names nothing now
        if pid in self._started:
            started = self._started[pid]
        else:
            ticks = procfs.start_time(pid, self._proc_root)
            started = self._started[pid] = ticks / self._ticks if ticks is not None else None
        if started is None or started > monotonic.timestamp.total_seconds():
            return self._resource  # gone, or a later process reusing the pid
        return self._processes.resource_attributes(pid)


class JournalSource(Progress):
    """Reads new journal entries after `committed` (a cursor); rewinds to it when told."""

    def __init__(self, reader, units, start_at_end, cursor, resource, resource_of=None):
        """resource_of(entry): the entry's resource (EntryResources); the host's `resource` without it."""
        super().__init__(cursor)
        self.resource = resource
        self._resource_of = resource_of
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
        resource_of = self._resource_of
        if resource_of is not None:
            resource_of.new_read()
        while count < limit:
            entry = self._reader.get_next()
            if not entry:
                break
            record, bad = entry_record(entry, observed_ns)
            append((record, entry["__CURSOR"], resource_of(entry) if resource_of is not None else self.resource))
            count += 1
            invalid += bad
        return count, invalid

    def leading(self):
        """The resource of the first held entries and how many of them in a row share it."""
        resource = self.records[0][2]
        count = 0
        for item in self.records:
            if item[2] is not resource and item[2] != resource:
                break
            count += 1
        return resource, count

    def close(self):
        self._reader.close()
