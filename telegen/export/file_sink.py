"""
The embedded default destination when otlp.endpoint is unset: OTLP/JSON lines, one export
request per line (the Collector file exporter's format), in <data_dir>/otlp/<signal>.jsonl.

Rotation by size keeps disk use bounded: when a write would pass otlp.file.max_bytes the file
becomes <signal>.jsonl.1, older ones shift up, and at most otlp.file.max_files rotated files stay.
Writes are small appends to a local file, so they run on the reactor thread.
"""
import os

from twisted.internet.defer import succeed
from zope.interface import implementer

from telegen.contracts import ISender
from telegen.export import otlpjson
from telegen.export.endpoints import Target
from telegen.export.retry import PERMANENT, SUCCESS, Outcome


def sink_dir(config):
    """The folder the file sink writes into."""
    return os.path.join(config["telegen"]["data_dir"], "otlp")


@implementer(ISender)
class FileSink:
    """Appends one signal's export requests as OTLP/JSON lines, rotating by size."""

    def __init__(self, directory, kind, file_config):
        self.kind = kind
        self.directory = directory
        self.path = os.path.join(directory, f"{kind.name}.jsonl")
        self.target = Target("file", self.path, False, "file://" + directory)
        self._max_bytes = file_config["max_bytes"]
        self._max_files = file_config["max_files"]

    def send(self, payload):
        """Write the encoded request `payload` as one OTLP/JSON line; fires with an Outcome."""
        line = (otlpjson.encode(self.kind.request_cls.FromString(payload)) + "\n").encode("utf-8")
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
            return succeed(Outcome(PERMANENT, "write_error", False, e.strerror or "write failed", "file_write"))
        return succeed(Outcome(SUCCESS, "written", True))

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
        """Nothing is held open between writes."""
        return None
