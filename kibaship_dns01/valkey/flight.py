"""Single-flight: many callers, one operation in progress.

Used for slot-map refreshes (fifty requests that all see ``MOVED`` must cause
one ``CLUSTER SLOTS``, not fifty) and for connection attempts to a node.
Each caller gets its own Deferred, so a caller that gives up (its deadline
cancels it) does not cancel the shared operation for everybody else.
"""
from twisted.internet import defer
from twisted.python.failure import Failure


class SingleFlight:
    """Run ``operation()`` (returning a Deferred) at most once at a time."""

    def __init__(self, operation):
        self._operation = operation
        self._waiters = None
        self._current = None

    @property
    def running(self):
        return self._waiters is not None

    def __call__(self):
        """A Deferred with the result of the current (or a new) run."""
        d = defer.Deferred(self._forget)
        if self._waiters is not None:
            self._waiters.append(d)
            return d
        self._waiters = [d]
        # may finish synchronously, firing d before we return it
        self._current = defer.maybeDeferred(self._operation)
        self._current.addBoth(self._finished)
        return d

    def _forget(self, d):
        if self._waiters is not None and d in self._waiters:
            self._waiters.remove(d)

    def _finished(self, result):
        waiters, self._waiters, self._current = self._waiters, None, None
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        return None

    def cancel(self):
        """Cancel the run in progress (waiters see ``CancelledError``)."""
        if self._current is not None:
            self._current.cancel()
