"""
One signal's path from queue to destination: batching, a small fixed number of requests in
flight, retries by the OTLP rules, and the counting of every item as exported or dropped.

Why per signal: each signal has its own queue, timer, in-flight slots and retry timers, so a
collector refusing metrics never delays traces, and nothing here ever blocks the reactor.
A batch holds its in-flight slot while it waits to be retried (as the Collector's queue
consumers do): with the destination down the queue fills and overflow is dropped as queue_full.
"""
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from telegen.export.delivery import Delivery
from telegen.export.queue import BoundedQueue, order_of
from telegen.export.retry import PERMANENT, RETRYABLE, SUCCESS, Outcome
from telegen.export.wire import ResourceCache, encode_request

MAX_IN_FLIGHT = 2
# Signals whose records of one source (Delivery.order: a log file's lineage, the journal) must
# arrive in the order they were submitted: a batch is not started while another batch holding
# records of one of its sources is out (sent, or waiting for a retry), so a source's records are
# never overtaken; batches of other sources go meanwhile, up to IN_FLIGHT requests.
ORDERED = {"logs"}
IN_FLIGHT = {"logs": 4}

_log = Logger()

# Drop reasons (telegen_queue_dropped_total{reason}); docs/export.md explains each.
QUEUE_FULL = "queue_full"
RETRY_EXHAUSTED = "retry_exhausted"
REJECTED = "rejected"
PARTIAL_REJECTED = "partial_rejected"
SHUTDOWN = "shutdown"


def resource_key(attrs):
    """A hashable identity for a resource attribute dict (values may be lists or dicts)."""
    key = tuple(sorted(attrs.items()))
    try:
        hash(key)
    except TypeError:                 # sorting by the unique keys works; hashing a list value does not
        return tuple(sorted((k, repr(v)) for k, v in attrs.items()))
    return key


class Batch:
    """An encoded export request being sent, with the items it holds and a Deferred fired when settled."""

    __slots__ = ("payload", "items", "deliveries", "first_attempt", "attempt", "retry_call", "settled", "done",
                 "orders")

    def __init__(self, payload, items, deliveries, now):
        self.payload = payload
        self.items = items
        self.deliveries = deliveries  # [(Delivery, items of it in this batch)]
        self.orders = ()  # the sources of its records (queue.order_of), for ORDERED signals
        self.first_attempt = now
        self.attempt = 0
        self.retry_call = None
        self.settled = False
        self.done = Deferred()


class SignalExporter:
    """Queue, batcher and retrying sender of one signal."""

    def __init__(self, kind, queue_config, sender, backoff, counters, reactor, on_attempt,
                 max_in_flight=MAX_IN_FLIGHT, ordered=False):
        self.kind = kind
        self.sender = sender
        self.queue = BoundedQueue(queue_config["capacity"], queue_config["max_bytes"])
        self.exported = 0
        self.dropped = 0
        self.set_limits(queue_config)
        self._backoff = backoff
        self._counters = counters
        self._reactor = reactor
        self._on_attempt = on_attempt
        self._max_in_flight = max_in_flight
        self._ordered = ordered
        self._in_flight = set()
        self._timer = None
        self._overdue = False
        self._endpoint = sender.target.label
        self._closed = False
        self._stopping = False
        self._resources = ResourceCache()

    def set_limits(self, queue_config):
        """
        Capacity, byte bound, batch size and timeout (also on reload, in place). A queue holding
        more than a lowered capacity keeps it: only new records see the new bound.
        """
        self.queue.capacity = queue_config["capacity"]
        self.queue.max_bytes = queue_config["max_bytes"]
        self._batch_size = queue_config["batch_size"]
        self._batch_timeout = queue_config["batch_timeout"]

    # -- intake ------------------------------------------------------------------------------

    def submit(self, resource_attrs, records):
        """Queue what fits, count the rest as queue_full; return the number of records accepted."""
        total = self.kind.items(records)
        self._counters.collected(total)
        if self._closed:
            self._drop(total, SHUTDOWN)
            return 0
        taken, items = self.queue.offer(resource_key(resource_attrs), resource_attrs, records, self.kind.weight)
        if items < total:
            self._drop(total - items, QUEUE_FULL)
        self._pump()
        return taken

    def submit_tracked(self, resource_attrs, records, order=None):
        """
        Queue the leading records that fit, and never drop the rest: return (accepted, Delivery
        of the accepted ones or None). The caller keeps what was not accepted (back-pressure).
        `order`: the source these records come from, kept in order (ORDERED signals).
        """
        if self._closed:
            return 0, None
        delivery = Delivery(0, order)
        taken, items = self.queue.offer(resource_key(resource_attrs), resource_attrs, records, self.kind.weight, delivery)
        if not taken:
            return 0, None
        delivery.items = items
        self._counters.collected(items)
        self._pump()
        return taken, delivery

    # -- batching ----------------------------------------------------------------------------

    def _pump(self):
        """Start batches while slots are free: full ones always, partial ones once the timer fired."""
        if self._closed:
            return
        while len(self._in_flight) < self._max_in_flight and self.queue.items:
            blocked = set().union(*(b.orders for b in self._in_flight)) if self._ordered else None
            ready = self.queue.ready(blocked)
            if not ready or (ready < self._batch_size and not self._overdue):
                break
            self._start(self.queue.take(self._batch_size, blocked))
        if not self.queue.items:
            self._overdue = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif self._timer is None and not self._overdue:
            self._timer = self._reactor.callLater(self._batch_timeout, self._timer_fired)
        self._counters.queue_size(self.queue.items)

    def _timer_fired(self):
        self._timer = None
        self._overdue = True
        self._pump()

    def _start(self, chunks):
        items = sum(c.items for c in chunks)
        deliveries = [(c.delivery, c.items) for c in chunks if c.delivery is not None]
        batch = Batch((self.kind.encode or encode_request)(chunks, self._resources), items, deliveries,
                      self._reactor.seconds())
        if self._ordered:
            batch.orders = {order_of(c) for c in chunks}
        self._counters.batch_size(items)
        self._in_flight.add(batch)
        self._attempt(batch)
        return batch

    # -- sending and retrying ----------------------------------------------------------------

    def _attempt(self, batch):
        batch.retry_call = None
        started = self._reactor.seconds()
        d = self.sender.send(batch.payload)
        d.addErrback(self._sender_failed)
        d.addCallback(self._answered, batch, started)

    @staticmethod
    def _sender_failed(failure):
        """A sender bug must not strand a batch: treat it as a retryable local error."""
        return Outcome(RETRYABLE, "error", False, type(failure.value).__name__, "internal")

    def _answered(self, outcome, batch, started):
        if batch.settled:  # abandoned at shutdown while this attempt was out
            return
        now = self._reactor.seconds()
        self._counters.request(self._endpoint, outcome, now - started)
        self._on_attempt(outcome, now)
        if outcome.kind == SUCCESS:
            self.exported += batch.items - outcome.rejected
            self._counters.exported(batch.items - outcome.rejected)
            if outcome.rejected or outcome.message:
                _log.warn("{signal} export partially rejected: {rejected} items, server says: {message}",
                          signal=self.kind.name, rejected=outcome.rejected, message=outcome.message[:200])
            if outcome.rejected:
                self._drop(outcome.rejected, PARTIAL_REJECTED)
            return self._settle(batch, rejected=outcome.rejected)
        self._counters.error(self._endpoint, outcome.error_type or "unknown")
        if outcome.kind == RETRYABLE and self._stopping:
            reason = SHUTDOWN
        elif outcome.kind == RETRYABLE:
            delay = self._backoff.delay(batch.attempt, outcome.retry_after)
            if not self._backoff.gives_up(now - batch.first_attempt, delay):
                batch.attempt += 1
                self._counters.retry(self._endpoint)
                batch.retry_call = self._reactor.callLater(delay, self._attempt, batch)
                return None
            reason = RETRY_EXHAUSTED
        else:
            assert outcome.kind == PERMANENT
            _log.warn("{signal} export rejected ({status}): {error}; {items} items dropped",
                      signal=self.kind.name, status=outcome.status, error=outcome.error, items=batch.items)
            reason = REJECTED
        self._drop(batch.items, reason)
        return self._settle(batch, reason)

    def _settle(self, batch, reason=None, rejected=0):
        """
        The batch is done: exported, or dropped for `reason`; with `rejected` items of an accepted
        batch refused by the server (partial success: which ones is not said, so they are
        attributed to the batch's first deliveries).
        """
        batch.settled = True
        self._in_flight.discard(batch)
        for delivery, items in batch.deliveries:
            refused = min(rejected, items)
            rejected -= refused
            delivery.settle(refused, PARTIAL_REJECTED)
            delivery.settle(items - refused, reason)
        batch.done.callback(batch.items)
        self._pump()

    def _drop(self, items, reason):
        self.dropped += items
        self._counters.dropped(items, reason)

    # -- flush and shutdown ------------------------------------------------------------------

    def flush(self):
        """Send everything queued now, past the in-flight cap; return (items, Deferred settled)."""
        batches = []
        while self.queue.items:
            batches.append(self._start(self.queue.take(self._batch_size)))
        self._pump()
        items = sum(b.items for b in batches)
        return items, DeferredList([b.done for b in batches])

    def stop(self):
        """
        Shutdown begins: flush the queue, try every batch waiting for a retry once more right now,
        and from here on a retryable failure drops the batch (shutdown) instead of waiting.
        """
        self._stopping = True
        self.flush()
        for batch in list(self._in_flight):
            if batch.retry_call is not None and batch.retry_call.active():
                batch.retry_call.cancel()
                self._attempt(batch)
        return self.pending()

    def pending(self):
        """Deferreds of every batch not settled yet."""
        return [b.done for b in self._in_flight]

    def abandon(self):
        """At the shutdown deadline: count whatever is still queued or unsettled as dropped (shutdown)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for batch in list(self._in_flight):
            if batch.retry_call is not None and batch.retry_call.active():
                batch.retry_call.cancel()
            self._drop(batch.items, SHUTDOWN)
            self._settle(batch, SHUTDOWN)
        leftover = self.queue.take(self.queue.items)
        if leftover:
            self._drop(sum(c.items for c in leftover), SHUTDOWN)
        for chunk in leftover:
            if chunk.delivery is not None:
                chunk.delivery.settle(chunk.items, SHUTDOWN)
        self._counters.queue_size(0)
