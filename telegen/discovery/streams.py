"""
What the Docker and Kubernetes providers share: a streamed body of JSON lines (Docker's /events,
a Kubernetes watch) and the doubling delay between reconnects.
"""
import json

from twisted.internet import defer
from twisted.internet.protocol import Protocol


class HTTPStatusError(RuntimeError):
    """An API answered with a status other than 200; code is that status."""

    def __init__(self, code, body):
        super().__init__(f"HTTP {code}: {body.strip()[:200]}")
        self.code = code


def json_body(response):
    """A treq response's JSON body (a Deferred), or a failure with HTTPStatusError when not 200."""
    if response.code != 200:
        return response.text().addCallback(lambda body: defer.fail(HTTPStatusError(response.code, body)))
    return response.json()


class JsonLines(Protocol):
    """A response body of one JSON object per line, handed to on_object as each line completes."""

    def __init__(self, on_object, on_bad, finished):
        """on_bad(line) gets a line that is not JSON; finished fires with the reason the body ended."""
        self._buffer = b""
        self._on_object = on_object
        self._on_bad = on_bad
        self.finished = finished

    def dataReceived(self, data):
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                self._on_bad(line)
                continue
            self._on_object(obj)

    def connectionLost(self, reason):
        self.finished.callback(reason.getErrorMessage())

    def abort(self):
        """Stop reading: the connection is dropped."""
        if self.transport is not None:
            self.transport.stopProducing()


class Backoff:
    """A reconnect delay that doubles from initial up to maximum, back to initial on success."""

    def __init__(self, initial=0.5, maximum=30.0):
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self):
        """The delay to wait now; the following one is twice as long."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay

    def reset(self):
        self.delay = self.initial
