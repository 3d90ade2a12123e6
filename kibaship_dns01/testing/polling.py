"""Waiting for a condition from a running reactor, bounded in time."""
from twisted.internet import defer, task


class PollTimeout(AssertionError):
    """The condition did not hold in time (a test failure, not an error)."""


def pollUntil(reactor, predicate, timeout, interval=0.05, what="condition"):
    """Poll a short, non-blocking-ish ``predicate`` every ``interval`` seconds.

    :return: Deferred firing ``None`` once it holds, or failing with
        :class:`PollTimeout` naming ``what`` after ``timeout`` seconds.
    """
    async def loop():
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                raise PollTimeout("timed out after %ss waiting for %s" % (timeout, what))
            await task.deferLater(reactor, interval, lambda: None)
    return defer.ensureDeferred(loop())
