"""Waiting for a Deferred at most so long: shutdown and flush give up on slow work, never hang."""
from twisted.internet.defer import Deferred


def within(d, reactor, timeout, on_timeout=None):
    """
    A Deferred firing with d's result (a Failure included), or with None once `timeout` seconds
    passed, calling on_timeout() then. d is not cancelled: it keeps running and settles its own
    accounting (a cancelled flush would lose the reason a batch failed).
    """
    out = Deferred()

    def give_up():
        if on_timeout is not None:
            on_timeout()
        out.callback(None)

    timer = reactor.callLater(timeout, give_up)

    def fire(result):
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(result)
        return None

    d.addBoth(fire)
    return out
