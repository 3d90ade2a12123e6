"""What both review callers need: an expiring LRU map, single-flight, a deadline.

``k8s.io/apiserver`` caches TokenReview and SubjectAccessReview answers for a
few seconds and collapses concurrent identical reviews into one API call, so a
burst of identical requests (cert-manager retrying, the aggregator probing)
costs the API server one review, not one per request.  Both live here so the
authenticator and the authorizer share one implementation.
"""
import collections

from twisted.internet import defer
from twisted.python.failure import Failure

_MISSING = object()


class ExpiringCache:
    """A bounded map whose entries expire at the injected clock's time.

    Bounded (least recently used goes first) because keys are built from
    caller-controlled data: an unbounded map would be a memory leak an
    anonymous caller could drive.

    :param clock: ``IReactorTime``; only ``seconds()`` is used.
    """

    MISSING = _MISSING

    def __init__(self, clock, maxEntries=8192):
        self._clock = clock
        self._max = maxEntries
        self._entries = collections.OrderedDict()

    def get(self, key):
        """The live value for ``key``, or :attr:`MISSING`."""
        entry = self._entries.get(key)
        if entry is None:
            return _MISSING
        expiresAt, value = entry
        if self._clock.seconds() >= expiresAt:
            del self._entries[key]
            return _MISSING
        self._entries.move_to_end(key)
        return value

    def set(self, key, value, ttl):
        """Remember ``value`` for ``ttl`` seconds (nothing when ``ttl <= 0``)."""
        if ttl <= 0:
            return
        self._entries[key] = (self._clock.seconds() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self):
        self._entries.clear()

    def __len__(self):
        return len(self._entries)


def withDeadline(d, timeout, clock):
    """Fail ``d`` with :class:`defer.TimeoutError` if it has not fired in ``timeout`` s.

    Unlike the bare ``addTimeout``, the timeout is reported as such even when
    the cancelled operation fails with its own error (the Kubernetes client
    turns a cancelled request into "cannot reach the API server").
    """
    def timedOut(result, seconds):
        return Failure(defer.TimeoutError("no answer within %gs" % (seconds,)))

    return d.addTimeout(timeout, clock, onTimeoutCancel=timedOut)
