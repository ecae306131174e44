"""
Waiting for a condition from a test that runs on the reactor thread (pytest-twisted).

Why not otlp_receiver.wait_for: that sleeps, which would freeze the reactor the agent needs to
make progress. This polls with reactor.callLater and fires a Deferred instead.
"""
from twisted.internet import task


def until(predicate, timeout=10.0, interval=0.01, message="condition", reactor=None):
    """Deferred firing with predicate()'s truthy value; fails with AssertionError at the deadline."""
    if reactor is None:
        from twisted.internet import reactor
    deadline = reactor.seconds() + timeout

    async def poll():
        while True:
            value = predicate()
            if value:
                return value
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}")
            await task.deferLater(reactor, interval, lambda: None)

    from twisted.internet.defer import Deferred
    return Deferred.fromCoroutine(poll())
