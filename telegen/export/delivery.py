"""
Delivery: what became of records submitted together, for a producer that must know (the log
tailer advances a file's checkpoint only once the lines it read were exported or counted dropped).

Why a separate object travelling with the queued chunks: records of one submit may be split over
several batches, retried, partially rejected or abandoned at shutdown; each of those paths settles
its share here, and `done` fires once, when every record is accounted for.
"""
from twisted.internet.defer import Deferred


class Delivery:
    """
    Settlement of `items` records: `exported` counts those the destination accepted, `dropped`
    maps a drop reason (telegen_queue_dropped_total's reasons) to a count. `done` fires with this
    object once exported + dropped == items.
    """

    __slots__ = ("items", "exported", "dropped", "done", "order")

    def __init__(self, items, order=None):
        """order: the source whose records must arrive in order (SignalExporter keeps them so), or None."""
        self.items = items
        self.exported = 0
        self.dropped = {}
        self.done = Deferred()
        self.order = order

    @property
    def settled(self):
        return self.exported + sum(self.dropped.values()) >= self.items

    def settle(self, items, reason=None):
        """`items` of these records were exported (reason None) or dropped for `reason`."""
        if not items or self.settled:
            return
        if reason is None:
            self.exported += items
        else:
            self.dropped[reason] = self.dropped.get(reason, 0) + items
        if self.settled:
            self.done.callback(self)


def settled_delivery(items, reason):
    """A Delivery already settled as dropped for `reason` (e.g. the signal is disabled)."""
    delivery = Delivery(items)
    delivery.settle(items, reason)
    return delivery
