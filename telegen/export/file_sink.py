"""
The embedded default destination when otlp.endpoint is unset: OTLP/JSON lines, one export
request per line (the Collector file exporter's format), in <data_dir>/otlp/<signal>.jsonl.

Rotation by size keeps disk use bounded: when a write would pass otlp.file.max_bytes the file
becomes <signal>.jsonl.1, older ones shift up, and at most otlp.file.max_files rotated files stay.
Writes are appends to a local file, so they run on the reactor thread. The JSON conversion of
the signals in IN_WORKER (a window of profiles is megabytes) runs in a worker process
(telegen.export.json_worker), started at the first such request; the others are small batches
converted on the reactor.
"""
import os

from twisted.internet.defer import maybeDeferred, succeed
from zope.interface import implementer

from telegen.contracts import ISender
from telegen.export import json_worker, otlpjson
from telegen.export.endpoints import Target
from telegen.export.retry import PERMANENT, RETRYABLE, SUCCESS, Outcome
from telegen.workerproc import WorkerCrashed

IN_WORKER = frozenset(("profiles",))


def sink_dir(config):
    """The folder the file sink writes into."""
    return os.path.join(config["telegen"]["data_dir"], "otlp")


@implementer(ISender)
class FileSink:
    """Appends one signal's export requests as OTLP/JSON lines, rotating by size."""

    def __init__(self, directory, kind, file_config, reactor=None, start_worker=json_worker.start):
        self.kind = kind
        self._reactor = reactor
        self._start_worker = start_worker if kind.name in IN_WORKER else None
        self._worker = None
        self.directory = directory
        self.path = os.path.join(directory, f"{kind.name}.jsonl")
        self.target = Target("file", self.path, False, "file://" + directory)
        self._max_bytes = file_config["max_bytes"]
        self._max_files = file_config["max_files"]

    def send(self, payload):
        """Write the encoded request `payload` as one OTLP/JSON line; fires with an Outcome."""
        if self._start_worker is None:
            return succeed(self._write((otlpjson.encode(self.kind.request_cls.FromString(payload)) + "\n").encode("utf-8")))
        if self._worker is None:
            if self._reactor is None:
                from twisted.internet import reactor
                self._reactor = reactor
            self._worker = self._start_worker(self._reactor, f"{self.kind.name} file sink")
        d = maybeDeferred(self._worker.call, "otlp_json", self.kind.name, payload)
        return d.addCallbacks(self._write, self._not_converted)

    def _not_converted(self, failure):
        """The conversion worker died or failed: the request stays in the queue for a retry (a bug fails again)."""
        failure.trap(WorkerCrashed)
        return Outcome(RETRYABLE, "worker_crashed", False, failure.getErrorMessage(), "worker_crashed")

    def _write(self, line):
        try:
            os.makedirs(self.directory, exist_ok=True)
            try:
                size = os.path.getsize(self.path)
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self._max_bytes:
                self._rotate()
            with open(self.path, "ab") as f:
                f.write(line)
        except OSError as e:
            return Outcome(PERMANENT, "write_error", False, e.strerror or "write failed", "file_write")
        return Outcome(SUCCESS, "written", True)

    def _rotate(self):
        oldest = f"{self.path}.{self._max_files}"
        if os.path.exists(oldest):
            os.remove(oldest)
        for n in range(self._max_files - 1, 0, -1):
            src = f"{self.path}.{n}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")

    def close(self):
        """No file is held open between writes; the conversion worker, if any, is stopped."""
        return self._worker.stop() if self._worker is not None else None
