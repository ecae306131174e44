"""
The `logs` child: tails the files matched by agent.logs.include (minus exclude) into OTLP logs,
with no line lost or sent twice across rotation, restarts and collector outages.

How, in one poll (every agent.logs.poll_interval, at once again while files have more to read, and
on Linux soon after inotify reports a write, a new file or a move in a watched directory):
1. Records the pipeline could not take last time are offered first; while the logs queue is full
   nothing is read (back-pressure: lines wait in their files, not in memory).
2. The globs are expanded; each file's first bytes are matched to a known fingerprint
   (files.py), so a renamed file continues where it was, a copytruncated path starts over and
   its copy continues, and a re-created path is a new file. A file that left the globs (renamed
   out, deleted) is read to its end through the descriptor still open.
3. New bytes are cut into lines, parsed, joined (CRI partials, multiline) and built into records,
   submitted with submit_tracked. Each file's checkpoint moves only when a delivery settles
   (exported, or dropped for a reason the pipeline counted); a delivery abandoned at shutdown
   rewinds the file to its checkpoint instead, so its lines are read again.

Files are read with pread on the reactor thread: local files, bounded bytes per poll.

A container runtime's file (writers.py) is submitted with its container's resource once the
process table knows the container (the resource that container's spans carry), before that with
what its path names; a file keeps the resource discovery gave it. Journal entries get theirs per
entry (journal.EntryResources) and are submitted in runs of one resource.
"""
import fnmatch
import glob
import os
import stat
import time
from itertools import islice
from operator import itemgetter, methodcaller

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorFDSet
from twisted.python.filepath import FilePath
from twisted.logger import Logger
from zope.interface import implementer

from telegen.contracts import IChild
from telegen.discovery.procfs import UNKNOWN_SERVICE
from telegen.export.pipeline import writable
from telegen.logs import fastplain, jsonbatch, records, writers
from telegen.logs.checkpoint import CheckpointStore
from telegen.logs.files import Fingerprints, TrackedFile, digest
from telegen.logs.journal import EntryResources, JournalSource, open_reader
from telegen.logs.multiline import Multiline
from telegen.logs.parsers import Format
from telegen.signals.common import host_resource_attributes
from telegen.timebox import within

try:
    from twisted.internet import inotify
except ImportError:  # not Linux: polling alone
    inotify = None  # type: ignore[assignment]

READ_BYTES = 1 << 20  # per file per poll: one busy file cannot starve the others
JOURNAL_ENTRIES = 5000  # journal entries per poll, for the same reason
SHUTDOWN = "shutdown"
# inotify: what wakes the tailer in a watched directory, and the least time between two polls it
# wakes (a file written line by line would otherwise make a poll of every line).
WAKE_EVENTS = 0
if inotify is not None:
    WAKE_EVENTS = inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_ONLYDIR
WAKE_GAP = 0.1

_log = Logger()


_STARTS_AS_OBJECT = methodcaller("startswith", b"{")


def _json_application_lines(raws):
    """
    True if format "auto" would parse every line as an application's JSON object: each starts
    with "{" and none may be a Docker json-file envelope (those name "log"; they take the general
    path, which unwraps them).
    """
    return all(map(_STARTS_AS_OBJECT, raws)) and b'"log"' not in b"\n".join(raws)


def order_key(path, writer):
    """
    The source a file's records are kept in order under while several logs requests are out: its
    container (kubelet's links of all containers share one directory), else its directory. A
    file and its rotated names and successors (renamed, copied or re-created in place, also those
    found after a restart) share it, so a successor's lines never overtake its predecessor's.
    """
    if writer is not None and writer.container_id:
        return ("container", writer.container_id)
    return ("directory", os.path.dirname(path))


class _NoJoin:
    """The joiner when agent.logs.multiline_start is unset: every line is a record."""

    holding = False

    @staticmethod
    def feed(lines):
        return lines

    @staticmethod
    def flush():
        return []


def checkpoint_dir(config):
    return os.path.join(config["telegen"]["data_dir"], "logs")


@implementer(IChild)
class LogTailer(service.Service):
    """Polls the configured globs, reads new lines, exports them, checkpoints delivered offsets."""

    def __init__(self, config, exporter, metrics, reactor=None, wall_clock=time.time, journal_reader=open_reader,
                 processes=None):
        """processes: the process table (IProcessResources), asked for the resource of the container writing a file."""
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.exporter = exporter
        self._processes = processes
        self.metrics = metrics
        logs = config["agent"]["logs"]
        self._include = list(logs["include"])
        self._exclude = list(logs["exclude"])
        self._interval = logs["poll_interval"]
        self._use_inotify = logs["inotify"]
        self._notifier = None
        self._watched = set()       # directories inotify watches
        self._last_poll = 0.0
        self._start_at_end = logs["start_at"] == "end"
        self._fingerprint_size = logs["fingerprint_size"]
        self._max_line_size = logs["max_line_size"]
        self._long_lines = logs["long_lines"]
        self._max_open = logs["max_open_files"]
        self._flush_timeout = logs["flush_timeout"]
        self._multiline = logs["multiline_start"]
        self._journal_config = logs["journal"]
        self._journal = None
        self._format = logs["format"]
        # plain lines skip decoding and the Parsed record when nothing joins lines (fastplain.py)
        self._fast = (fastplain.encoder(self._format == "auto")
                      if self._format in ("plain", "auto") and not self._multiline else None)
        # JSON lines are encoded a read at a time, column by column (jsonbatch.py); with format
        # auto too when every line of a read is an application's JSON object
        self._json_batch = self._format == "json" and not self._multiline
        self._wall_clock = wall_clock
        self._journal_reader = journal_reader
        self._resource = host_resource_attributes(config)
        # a container's file before discovery knows it: the host, not the agent's service (nor an invented one)
        self._container_base = {k: v for k, v in self._resource.items() if not k.startswith("service.")}
        self._container_base["service.name"] = UNKNOWN_SERVICE
        self._shutdown_timeout = config["telegen"]["shutdown_timeout"]
        self._store = CheckpointStore(checkpoint_dir(config))
        self._files = Fingerprints()
        self._sequence = 0  # TrackedFile.sequence: the order files became known (checkpoint order at start)
        self._first_run = True
        self._first_poll = True
        self._call = None
        self._save_call = None
        self._waiting = set()  # Deferreds of deliveries not settled yet
        self._stopped = True
        self._finished = False
        self._journal_error = None
        self.polls = 0
        self.backpressure = 0
        self.last_error = None

    # -- lifecycle ---------------------------------------------------------------------------

    def startService(self):  # noqa: N802 (Twisted hook)
        super().startService()
        self._stopped = False
        self._first_run = not self._store.exists()
        files, cursor = self._store.load()
        for length, digest_hex, offset, path in files:
            self._files.add(self._new_file(length, digest_hex, offset, path))
        if self._journal_config["enabled"]:
            self._open_journal(cursor)
        self._notifier = self._start_notifier()
        self._call = self.reactor.callLater(0, self._poll)

    def _start_notifier(self):
        """
        An inotify instance on the real reactor (Linux), or None: not asked for, not Linux, a
        reactor without file descriptors (tests' Clock), or no inotify instance left to the user.
        """
        if not self._use_inotify or inotify is None or not IReactorFDSet.providedBy(self.reactor):
            return None
        try:
            notifier = inotify.INotify(self.reactor)
        except inotify.INotifyError as exc:
            _log.warn("inotify unavailable ({error}): log files are polled only", error=exc)
            return None
        notifier.startReading()
        return notifier

    def _open_journal(self, cursor):
        journal = self._journal_config
        try:
            reader = self._journal_reader(journal["directory"])
            resources = EntryResources(self._processes, self._resource, self._container_base, self._interval,
                                       self.reactor.seconds)
            self._journal = JournalSource(reader, journal["units"], self._start_at_end, cursor, self._resource, resources)
            self._journal.order = ("journal",)
        except (ImportError, OSError, ValueError) as exc:
            self._journal_error = f"{type(exc).__name__}: {exc}"
            self.last_error = f"journal: {self._journal_error}"
            _log.error("the systemd journal cannot be read: {error}", error=self._journal_error)

    def stopService(self):  # noqa: N802 (Twisted hook)
        """
        Stop reading; wait (up to telegen.shutdown_timeout, the pipeline's own budget) for the
        deliveries in flight so their offsets are saved, then close every file.
        """
        super().stopService()
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier, self._watched = None, set()
        d = within(defer.DeferredList(list(self._waiting)), self.reactor, self._shutdown_timeout)
        return d.addCallback(lambda _: self._closed())

    def _closed(self):
        if self._save_call is not None and self._save_call.active():
            self._save_call.cancel()
        self._save()
        self._finished = True  # a later settlement must not write over a successor's checkpoint
        for tracked in self._files:
            tracked.close()
        if self._journal is not None:
            self._journal.close()

    # -- IChild --------------------------------------------------------------------------------

    def status(self):
        return {
            "enabled": True,
            "files_watched": sum(1 for t in self._files if t.seen),
            "files_open": sum(1 for t in self._files if t.fd is not None),
            "polls": self.polls,
            "inotify_directories": len(self._watched) if self._notifier is not None else None,
            "backpressure_pauses": self.backpressure,
            "checkpoint": self._store.path,
            "journal": {"enabled": self._journal_config["enabled"],
                        "cursor": self._journal.committed if self._journal is not None else None},
            "last_error": self.last_error,
        }

    def ready_check(self):
        if self._journal_error:
            return f"failed: journal: {self._journal_error}"
        if not writable(self._store.directory):
            return f"failed: checkpoint directory {self._store.directory} not writable"
        return "ok"

    def reconfigure(self, config):
        """Globs, formats and limits are read at construction: a change rebuilds the tailer (it resumes from its checkpoint)."""
        return False

    # -- polling -------------------------------------------------------------------------------

    def _poll(self):
        self._call = None
        self._last_poll = self.reactor.seconds()
        if self._notifier is not None and not self._notifier.connected:
            # Twisted's INotify closes itself when a watched directory is removed: a new one
            self._notifier, self._watched = self._start_notifier(), set()
        more = False
        try:
            if self._offer_held():
                more = self._scan_and_read()
            else:
                self.backpressure += 1
                self.metrics.logs_backpressure.inc()
        except Exception as exc:  # a bug must not stop log collection for good
            self.last_error = f"{type(exc).__name__}: {exc}"
            _log.failure("log poll failed")
        self.polls += 1
        if self._first_poll:
            self._first_poll = False
            self._schedule_save()
        if not self._stopped:
            self._call = self.reactor.callLater(0 if more else self._interval, self._poll)
            if self._notifier is not None:
                self._notifier.startReading()

    # -- inotify -------------------------------------------------------------------------------

    def _woken(self, _watch, _path, _mask):
        """
        A watched directory changed: poll now (or WAKE_GAP after the last poll). The inotify
        descriptor is not read again until that poll ran; the kernel merges what happens meanwhile.
        """
        if self._notifier is None or self._call is None:
            return
        self._notifier.stopReading()
        now = self.reactor.seconds()
        delay = max(0.0, self._last_poll + WAKE_GAP - now)
        if self._call.getTime() > now + delay:
            self._call.reset(delay)

    def _watch(self, paths):
        """
        Watch the directories the globs start from and those of the files found, so a write, a
        new file or a rename there wakes the tailer; directories no longer needed are let go.
        """
        wanted = {os.path.dirname(p) for p in paths}
        for pattern in self._include:
            static = pattern
            while glob.has_magic(static):
                static = os.path.dirname(static)
            wanted.add(static if static != pattern else os.path.dirname(pattern))
        notifier = self._notifier
        for directory in self._watched - wanted:
            self._watched.discard(directory)
            try:
                notifier.ignore(FilePath(directory))
            except KeyError:
                pass  # the directory went away: inotify dropped its watch itself
        for directory in wanted - self._watched:
            try:
                notifier.watch(FilePath(directory), WAKE_EVENTS, callbacks=[self._woken])
            except inotify.INotifyError:
                continue  # missing (yet), or out of watches: polling covers it
            self._watched.add(directory)

    def _paths(self):
        found = set()
        for pattern in self._include:
            found.update(glob.glob(pattern, recursive=True))
        return sorted(p for p in found if not any(fnmatch.fnmatch(p, ex) for ex in self._exclude))

    def _scan_and_read(self):
        """Match every path to a known file (or a new one), then read each; True if a file has more."""
        for tracked in self._files:
            tracked.seen = False
        by_inode = {t.inode: t for t in self._files if t.fd is not None}
        order = []
        paths = self._paths()
        if self._notifier is not None:
            self._watch(paths)
        for path in paths:
            tracked = self._match(path, by_inode)
            if tracked is not None:
                order.append(tracked)
        order += [t for t in self._files if not t.seen and t.fd is not None]  # left the globs: drain
        # Oldest first: a rotated file's last lines go out before its successor's first ones.
        order.sort(key=lambda t: t.sequence)
        more = False
        for tracked in order:
            state = self._read(tracked)
            if state is None:
                return False  # the logs queue is full: stop reading until it drains
            more |= state
        if self._journal is not None:
            state = self._read_journal()
            if state is None:
                return False
            more |= state
        self._forget_gone()
        self._limit_open()
        self.metrics.logs_files_watched.set(sum(1 for t in self._files if t.seen))
        return more

    def _match(self, path, by_inode):
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        inode = (st.st_dev, st.st_ino)
        holder = by_inode.get(inode)
        if holder is not None and holder.inode != inode:
            holder = None  # its descriptor moved to another file earlier in this scan
        fd = holder.fd if holder is not None else None
        try:
            if fd is None:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            head = os.pread(fd, self._fingerprint_size, 0)
        except OSError as exc:
            self._file_error(path, exc)
            if fd is not None and holder is None:
                os.close(fd)
            return None
        tracked = self._files.match(head) if head else None
        if not head or (tracked is not None and tracked.seen) or (
                tracked is None and self._files.covers(head, os.fstat(fd).st_size, inode)):
            # empty, a copy of a file already matched in this scan (copytruncate in progress), or
            # a copy holding only lines already read
            if holder is None:
                os.close(fd)
            return None
        if tracked is None:
            offset = st.st_size if (self._first_run and self._first_poll and self._start_at_end) else 0
            tracked = self._new_file(len(head), digest(head), offset, path)
            self._files.add(tracked)
        else:
            self._files.rekey(tracked, head)
        tracked.head = head
        if holder is not None and holder is not tracked:
            holder.fd, holder.inode = None, None  # the descriptor follows the data, not the entry
        # Shorter than what was read of it: truncated in place and rewritten with the same first
        # bytes (a copy that is shorter was made before the last read: nothing in it is new).
        truncated = tracked.inode == inode and os.fstat(fd).st_size < tracked.read_offset
        tracked.attach(fd, inode)
        if tracked.path != path or tracked.file_attrs is None:
            tracked.path = path
            self._describe(tracked)
        tracked.seen = True
        if truncated:
            tracked.restart_at_zero()
        return tracked

    def _new_file(self, length, digest_hex, offset, path):
        make_joiner = (lambda: Multiline(self._multiline, self._max_line_size)) if self._multiline else _NoJoin
        tracked = TrackedFile(length, digest_hex, offset, path, self._max_line_size, self._long_lines, make_joiner,
                              lambda: Format(self._format, self._max_line_size))
        self._sequence += 1
        tracked.sequence = self._sequence
        return tracked

    def _describe(self, tracked):
        tracked.file_attrs = records.file_attributes(tracked.path)
        writer = writers.writer_of(tracked.path)
        if tracked.order is None:
            tracked.order = order_key(tracked.path, writer)
        if tracked.resource is None or writer != tracked.writer:  # a rotated name of the same writer keeps its resource
            tracked.writer, tracked.discovered, tracked.next_lookup = writer, False, 0.0
            tracked.resource = dict(self._container_base, **writer.named) if writer is not None else self._resource

    def _discover(self, tracked):
        """
        Ask discovery (at most once a poll_interval) for the resource of the container writing the
        file, until it knows it: records submitted from then on carry that container's resource,
        the one its spans carry, and keep it (a container forgotten later does not change it back).
        """
        if tracked.discovered or tracked.writer is None or self._processes is None:
            return
        now = self.reactor.seconds()
        if now < tracked.next_lookup:
            return
        tracked.next_lookup = now + self._interval
        writer = tracked.writer
        found = self._processes.container_resource(writer.container_id, writer.pod_uid, writer.container_name)
        if found is not None:
            tracked.resource = dict(writer.named, **found)
            tracked.discovered = True

    def _read(self, tracked):
        """Read, build and submit what is new in one file: True more to read, False done, None queue full."""
        self._discover(tracked)
        if tracked.records and not self._submit(tracked):
            return None
        now = self.reactor.seconds()
        data = b""
        if tracked.fd is not None:
            try:
                data = os.pread(tracked.fd, READ_BYTES, tracked.read_offset)
            except OSError as exc:
                self._file_error(tracked.path, exc)
        if data:
            tracked.last_data = now
            self.metrics.logs_bytes_read.inc(len(data))
            split, truncated = tracked.cutter.split, tracked.cutter.truncated
            lines = tracked.cutter.feed(data)
            self._count_long(tracked, split, truncated)
            self._convert(tracked, lines)
        elif tracked.last_data is None or now - tracked.last_data >= self._flush_timeout:
            tail = tracked.cutter.flush()
            self.metrics.logs_lines_read.inc(len(tail))
            self._build(tracked, tracked.format.feed(tracked.joiner.feed(self._decode(tail)) + tracked.joiner.flush())
                        + tracked.format.flush())
            if not tracked.seen and tracked.fd is not None and tracked.idle:
                tracked.close()  # gone from the globs and read to its end
        if tracked.records and not self._submit(tracked):
            return None
        return len(data) == READ_BYTES

    def _read_journal(self):
        """Like _read for the journal: True more to read, False done, None queue full."""
        journal = self._journal
        if journal.records and not self._submit(journal):
            return None
        count, invalid = journal.read(JOURNAL_ENTRIES, int(self._wall_clock() * 1e9))
        if count:
            self.metrics.logs_lines_read.inc(count)
        if invalid:
            self.metrics.logs_invalid_utf8.inc(invalid)
        if journal.records and not self._submit(journal):
            return None
        return count == JOURNAL_ENTRIES

    def _count_long(self, tracked, split, truncated):
        if tracked.cutter.split > split:
            self.metrics.logs_long_lines.labels(action="split").inc(tracked.cutter.split - split)
        if tracked.cutter.truncated > truncated:
            self.metrics.logs_long_lines.labels(action="truncated").inc(tracked.cutter.truncated - truncated)

    def _convert(self, tracked, lines):
        """Cut lines to records: plain ones on the fast path, the others through the parsers."""
        if not lines:
            return
        self.metrics.logs_lines_read.inc(len(lines))
        fast = self._fast
        if fast is None and not self._json_batch:
            self._build(tracked, tracked.format.feed(tracked.joiner.feed(self._decode(lines))))
            return
        raws = list(map(itemgetter(0), lines))
        if self._json_batch or (self._format == "auto" and not tracked.format.holding and _json_application_lines(raws)):
            self._convert_json(tracked, lines)
            return
        encoded = fast(raws, tracked.file_attrs, int(self._wall_clock() * 1e9))
        if None not in encoded and not tracked.format.holding:
            tracked.records.extend(zip(encoded, map(itemgetter(1), lines)))
            return
        append = tracked.records.append
        for record, (raw, end) in zip(encoded, lines):
            if record is not None and not tracked.format.holding:
                append((record, end))
            else:  # refused, or after a piece of a container message that the format joins
                self._build(tracked, tracked.format.feed(self._decode([(raw, end)])))

    def _convert_json(self, tracked, lines):
        """JSON lines, a read at a time (jsonbatch.py)."""
        try:
            texts = list(map(bytes.decode, map(itemgetter(0), lines)))
        except UnicodeDecodeError:
            texts = list(map(itemgetter(0), self._decode(lines)))
        encoded = jsonbatch.encode(texts, tracked.file_attrs, int(self._wall_clock() * 1e9))
        tracked.records.extend(zip(encoded, map(itemgetter(1), lines)))

    def _decode(self, lines):
        if all(raw.isascii() for raw, _ in lines):
            return [(raw.decode("ascii"), end) for raw, end in lines]
        out = []
        for raw, end in lines:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", "replace")
                self.metrics.logs_invalid_utf8.inc()
            out.append((text, end))
        return out

    def _build(self, tracked, parsed):
        if not parsed:
            return
        observed = int(self._wall_clock() * 1e9)
        attrs = tracked.file_attrs
        append = tracked.records.append
        for fields, end in parsed:
            append((records.encode(fields, attrs, observed), end))

    def _submit(self, tracked):
        """
        Offer a source's (a file's, the journal's) built records, a run of records with one
        resource at a time; True if all were taken.
        """
        records = tracked.records
        while records:
            resource, count = tracked.leading()
            batch = list(map(itemgetter(0), records if count == len(records) else islice(records, count)))
            taken, delivery = self.exporter.submit_tracked("logs", resource, batch, tracked.order)
            if not taken:
                break
            end = records[taken - 1][1]
            if taken == len(records):
                records.clear()
            else:
                for _ in range(taken):
                    records.popleft()
            token = tracked.submitted(end)
            self._waiting.add(delivery.done)
            delivery.done.addCallback(self._delivered, tracked, tracked.generation, token)
            if taken < count:
                break
        return not records

    def _offer_held(self):
        """Offer records held back by a full queue, oldest files first; True if none is left."""
        return all(self._submit(t) for t in self._files if t.records)

    # -- deliveries and checkpoints --------------------------------------------------------------

    def _delivered(self, delivery, tracked, generation, token):
        self._waiting.discard(delivery.done)
        if generation != tracked.generation:
            return
        if delivery.dropped.get(SHUTDOWN):
            # the pipeline went away with these records unsent: read them again (never skip them)
            tracked.rewind()
            return
        for reason, count in delivery.dropped.items():
            self.metrics.logs_dropped.labels(reason=reason).inc(count)
        if tracked.delivered(token):
            self._schedule_save()

    def _schedule_save(self):
        if self._save_call is None and not self._finished:
            self._save_call = self.reactor.callLater(0, self._save)

    def _save(self):
        self._save_call = None
        try:
            ordered = sorted(self._files, key=lambda t: t.sequence)
            cursor = self._journal.committed if self._journal is not None else None
            self._store.save([(t.length, t.digest, t.committed, t.path) for t in ordered], cursor)
        except OSError as exc:
            self.last_error = f"checkpoint not saved: {exc.strerror or exc}"
            _log.error("log checkpoint not saved: {error}", error=exc)

    def _forget_gone(self):
        gone = [t for t in self._files if not t.seen and t.fd is None and t.idle]
        for tracked in gone:
            self._files.remove(tracked)
        if gone:
            self._schedule_save()

    def _limit_open(self):
        open_files = [t for t in self._files if t.fd is not None and t.seen]
        if len(open_files) > self._max_open:
            open_files.sort(key=lambda t: t.last_data or 0)
            for tracked in open_files[:len(open_files) - self._max_open]:
                tracked.close()
        self.metrics.logs_files_open.set(sum(1 for t in self._files if t.fd is not None))

    def _file_error(self, path, exc):
        self.last_error = f"{path}: {exc.strerror or exc}"
        self.metrics.logs_file_errors.inc()
