"""
A bounded per-signal queue of (resource, encoded records) chunks, measured in items and bytes.

Why chunks: submit() hands over a list of records of one resource; keeping the list whole makes
enqueueing O(1) per call and lets the batcher merge records of one resource into one
ResourceSpans/ResourceMetrics. Records are serialized once, here: the encoded size is what the
byte bound counts, and batches are assembled from these bytes (telegen/export/wire.py). A record
may also arrive already serialized, as `bytes` (the HTTP probe writes its spans that way).
A chunk is split only when it straddles a batch boundary.
Overflow never blocks and never grows past the bounds: the caller is told how many records fit.
"""
from collections import deque

_BYTES = {bytes}


class Chunk:
    """Encoded records of one resource, with their item weights and total size."""

    __slots__ = ("resource_key", "resource_attrs", "records", "weights", "items", "nbytes", "delivery")

    def __init__(self, resource_key, resource_attrs, records, weights, nbytes, delivery=None):
        self.resource_key = resource_key
        self.resource_attrs = resource_attrs
        self.records = records
        self.weights = weights  # None when every record weighs 1
        self.items = len(records) if weights is None else sum(weights)
        self.nbytes = nbytes
        self.delivery = delivery  # the Delivery told when these records settle, or None


def order_of(chunk):
    """The source a chunk's records come from (Delivery.order); None: submitted without one (one source too)."""
    return chunk.delivery.order if chunk.delivery is not None else None


class BoundedQueue:
    """FIFO of Chunks with capacity in items and bytes; take() pops up to n items."""

    def __init__(self, capacity, max_bytes):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.items = 0
        self.nbytes = 0
        self._chunks = deque()
        self._by_order = {}  # items queued per order key (order_of), so ready() costs O(blocked keys)

    def __len__(self):
        return self.items

    def offer(self, resource_key, resource_attrs, records, weight, delivery=None):
        """
        Enqueue as many leading records as fit both bounds; return (accepted_records, accepted_items).
        `weight` maps a record to its item count (data points for metrics); None: one each.
        `delivery` (a telegen.export.delivery.Delivery) travels with the accepted records.
        """
        room_items = self.capacity - self.items
        room_bytes = self.max_bytes - self.nbytes
        if weight is None and type(records) is list and len(records) <= room_items and set(map(type, records)) == _BYTES:
            # Already serialized (the HTTP probe's spans, ten thousand a second under load): sized
            # and checked in bulk, in C, instead of record by record below.
            nbytes = sum(map(len, records))
            if nbytes <= room_bytes:
                self._append(Chunk(resource_key, resource_attrs, list(records), None, nbytes, delivery))
                return len(records), len(records)
        encoded, items, nbytes, weights = [], 0, 0, (None if weight is None else [])
        for record in records:
            w = 1 if weight is None else weight(record)
            data = record if type(record) is bytes else record.SerializeToString()
            if items + w > room_items or nbytes + len(data) > room_bytes:
                break
            encoded.append(data)
            items += w
            nbytes += len(data)
            if weights is not None:
                weights.append(w)
        taken = len(encoded)
        if taken:
            self._append(Chunk(resource_key, resource_attrs, encoded, weights, nbytes, delivery))
        return taken, items

    def _append(self, chunk):
        self._chunks.append(chunk)
        self.items += chunk.items
        self.nbytes += chunk.nbytes
        key = order_of(chunk)
        self._by_order[key] = self._by_order.get(key, 0) + chunk.items

    def _taken(self, chunk):
        """Account for a chunk (or a split head) leaving the queue."""
        self.items -= chunk.items
        self.nbytes -= chunk.nbytes
        key = order_of(chunk)
        left = self._by_order[key] - chunk.items
        if left:
            self._by_order[key] = left
        else:
            del self._by_order[key]

    def ready(self, blocked):
        """Items not held back by `blocked` (order keys of batches still out); all when it is empty."""
        if not blocked:
            return self.items
        by_order = self._by_order
        return self.items - sum(by_order.get(key, 0) for key in blocked)

    def take(self, max_items, blocked=None):
        """
        Pop chunks holding up to max_items items (at least one record if any is queued), skipping
        the chunks of order keys in `blocked`: those stay, in their order, for a later batch.
        """
        if blocked:
            return self._take_unblocked(max_items, blocked)
        out, items = [], 0
        while self._chunks and items < max_items:
            chunk = self._chunks[0]
            if items + chunk.items <= max_items:
                self._chunks.popleft()
            else:
                chunk = self._split(chunk, max_items - items, first=not out)
                if chunk is None:
                    break
            out.append(chunk)
            items += chunk.items
            self._taken(chunk)
        return out

    def _take_unblocked(self, max_items, blocked):
        held = self._chunks
        self._chunks = deque()
        out, items = [], 0
        while held:
            chunk = held.popleft()
            if items >= max_items or order_of(chunk) in blocked:
                self._chunks.append(chunk)
                continue
            if items + chunk.items > max_items:
                self._chunks.appendleft(chunk)  # _split works on the head
                head = self._split(chunk, max_items - items, first=not out)
                rest = self._chunks.popleft()
                if head is None:
                    self._chunks.append(rest)
                    continue
                self._chunks.append(rest)
                chunk = head
            out.append(chunk)
            items += chunk.items
            self._taken(chunk)
        return out

    def _split(self, chunk, room, first):
        """Detach the head of `chunk` worth at most `room` items (one record anyway if `first`)."""
        if chunk.weights is None:
            n = room
        else:
            n, total = 0, 0
            while n < len(chunk.weights) and total + chunk.weights[n] <= room:
                total += chunk.weights[n]
                n += 1
        if n == 0:
            if not first:
                return None
            n = 1
        head_records = chunk.records[:n]
        head_bytes = sum(map(len, head_records))
        head = Chunk(chunk.resource_key, chunk.resource_attrs, head_records,
                     None if chunk.weights is None else chunk.weights[:n], head_bytes, chunk.delivery)
        rest = Chunk(chunk.resource_key, chunk.resource_attrs, chunk.records[n:],
                     None if chunk.weights is None else chunk.weights[n:], chunk.nbytes - head_bytes, chunk.delivery)
        self._chunks[0] = rest
        return head
