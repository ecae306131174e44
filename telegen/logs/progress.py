"""
Progress of one log source (a file, the journal): records built but not yet taken by the export
pipeline, and the deliveries in flight, in source order.

Why in order: a source's checkpoint (a file offset, a journal cursor) may only move past a record
once it and every record before it were delivered; deliveries may settle out of order, so each
one's position waits in `inflight` until those before it settled too.
"""
from collections import deque


class Progress:
    """`committed` is the position every record before which was delivered (what is saved)."""

    def __init__(self, committed):
        self.committed = committed
        self.generation = 0  # bumped by a rewind: deliveries of an older generation are ignored
        self.records = deque()   # (encoded record, position after it[, resource]) not yet taken by the pipeline
        self.inflight = deque()  # [position, delivered] per submitted delivery
        self.resource = None
        self.order = None        # the source key its records are kept in order under (SignalExporter)

    def clear(self):
        """Forget held records and deliveries in flight (the source is read again from `committed`)."""
        self.generation += 1
        self.records = deque()
        self.inflight = deque()

    def leading(self):
        """(resource, n): the first n held records go out with `resource` (all of a file's records)."""
        return self.resource, len(self.records)

    def submitted(self, position):
        """A delivery of records up to `position` left for the pipeline; returns its token."""
        token = [position, False]
        self.inflight.append(token)
        return token

    def delivered(self, token):
        """Mark a delivery done; return True if `committed` moved."""
        token[1] = True
        moved = False
        while self.inflight and self.inflight[0][1]:
            self.committed = self.inflight.popleft()[0]
            moved = True
        return moved
