"""Single-flight: concurrent callers with the same key share one call.

Used wherever many requests would otherwise repeat the same work at once:
identical SubjectAccessReviews and TokenReviews, LISTs on a Challenge cache
miss, slot-map refreshes after a burst of ``MOVED`` replies, connects to a
Valkey node.  Each caller gets its own Deferred, so a caller that gives up
(its deadline cancels it) does not cancel the call for the others.
"""
from twisted.internet import defer
from twisted.python.failure import Failure


class SharedCalls:
    """Run at most one ``fn()`` per key at a time; callers share its result.

    :param cancelWhenAbandoned: cancel the shared call once every caller has
        given up (a LIST nobody waits for is wasted work); ``False`` lets it
        finish, e.g. so a review's answer still reaches the cache.
    """

    def __init__(self, cancelWhenAbandoned=True):
        self._cancelWhenAbandoned = cancelWhenAbandoned
        self._inflight = {}

    def call(self, key, fn):
        """:return: a Deferred with the result of ``fn()``, shared per ``key``."""
        entry = self._inflight.get(key)
        mine = defer.Deferred(lambda d: self._giveUp(key, d))
        if entry is not None:
            entry["waiters"].append(mine)
            return mine
        entry = self._inflight[key] = {"waiters": [mine], "call": None}
        call = defer.maybeDeferred(fn)  # may finish synchronously, firing ``mine``
        if self._inflight.get(key) is entry:
            entry["call"] = call
        call.addBoth(self._fanOut, key, entry)
        return mine

    def inFlight(self, key):
        return key in self._inflight

    def cancel(self, key):
        """Cancel ``key``'s call; its waiters see ``CancelledError``."""
        entry = self._inflight.get(key)
        if entry is not None and entry["call"] is not None:
            entry["call"].cancel()

    def cancelAll(self):
        """Cancel every call in flight (a service stopping)."""
        for key in list(self._inflight):
            self.cancel(key)

    def _giveUp(self, key, waiter):
        entry = self._inflight.get(key)
        if entry is None or waiter not in entry["waiters"]:
            return
        entry["waiters"].remove(waiter)
        if not entry["waiters"] and self._cancelWhenAbandoned:
            del self._inflight[key]
            if entry["call"] is not None:
                entry["call"].cancel()

    def _fanOut(self, result, key, entry):
        if self._inflight.get(key) is entry:
            del self._inflight[key]
        waiters, entry["waiters"] = entry["waiters"], []
        for d in waiters:
            if d.called:
                continue
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        return None

    def __len__(self):
        return len(self._inflight)


class SingleFlight:
    """One un-keyed operation at most once at a time (``SharedCalls`` with one key)."""

    def __init__(self, operation):
        self._operation = operation
        self._calls = SharedCalls(cancelWhenAbandoned=False)

    @property
    def running(self):
        return self._calls.inFlight(None)

    def __call__(self):
        """A Deferred with the result of the current (or a new) run."""
        return self._calls.call(None, self._operation)

    def cancel(self):
        """Cancel the run in progress (waiters see ``CancelledError``)."""
        self._calls.cancel(None)
