"""Work per watched object: latest wins, bounded concurrency, bounded retries.

A watch may deliver many changes of one Challenge while the previous one is
still being published, and a relist delivers every object at once.  So the
followers do not act in the watch callback: they :meth:`KeyedJobs.submit`
the newest state of an object, and this queue runs ``work(key, item)``

* at most once at a time per key, in submission order (a newer item
  waits for the running one, then replaces any older waiting item);
* for at most ``limit`` keys at once (a relist of thousands of objects
  does not open thousands of API and Valkey requests);
* again after a backoff when ``work`` fails with a transient error, at most
  ``maxAttempts`` times (a newer item for the key starts afresh).
"""
import collections

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from kibaship_dns01.kube.informer import Backoff

log = Logger()


class KeyedJobs:
    """See the module docstring.

    :param work: ``work(key, item)`` returning a Deferred (or a value).
    :param isTransient: ``fn(failure) -> bool``: retry this failure later.
    """

    def __init__(self, clock, work, name, limit=8, maxAttempts=5, isTransient=None,
                 backoff=None):
        self._clock = clock
        self._work = work
        self.name = name
        self._limit = limit
        self._maxAttempts = maxAttempts
        self._isTransient = isTransient or (lambda failure: False)
        self._backoff = backoff or Backoff(base=2.0, cap=120.0)
        self._waiting = collections.OrderedDict()   # key -> (item, attempt)
        self._running = {}                          # key -> Deferred
        self._retries = {}                          # key -> IDelayedCall
        self._stopped = False

    def submit(self, key, item):
        """Run ``work(key, item)`` soon (after the key's running item, if any)."""
        if self._stopped:
            return
        retry = self._retries.pop(key, None)
        if retry is not None and retry.active():
            retry.cancel()
        self._waiting[key] = (item, 1)
        self._waiting.move_to_end(key)
        self._pump()

    def pending(self, key):
        """Whether ``key`` has an item running, waiting or scheduled for retry."""
        return key in self._running or key in self._waiting or key in self._retries

    def __len__(self):
        return len(set(self._running) | set(self._waiting) | set(self._retries))

    def stop(self):
        """Forget waiting items, cancel retries and running work."""
        self._stopped = True
        self._waiting.clear()
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        for d in list(self._running.values()):
            d.cancel()

    def _pump(self):
        for key in [k for k in self._waiting if k not in self._running]:
            if len(self._running) >= self._limit:
                return
            item, attempt = self._waiting.pop(key)
            self._start(key, item, attempt)

    def _start(self, key, item, attempt):
        d = defer.maybeDeferred(self._work, key, item)
        self._running[key] = d
        d.addBoth(self._finished, key, item, attempt)

    def _finished(self, result, key, item, attempt):
        self._running.pop(key, None)
        if isinstance(result, Failure):
            self._failed(result, key, item, attempt)
        if not self._stopped:
            self._pump()

    def _failed(self, failure, key, item, attempt):
        if self._stopped or failure.check(defer.CancelledError):
            return
        if key in self._waiting:
            return  # a newer item supersedes this one
        transient = self._isTransient(failure)
        if transient and attempt < self._maxAttempts:
            delay = self._backoff.delay(attempt)
            log.info("{name}: {key} failed ({error}); retrying in {delay:.0f}s (attempt {n} of"
                     " {max})", name=self.name, key=key, error=failure.getErrorMessage(),
                     delay=delay, n=attempt + 1, max=self._maxAttempts)
            self._retries[key] = self._clock.callLater(delay, self._retry, key, item, attempt + 1)
            return
        if transient:
            log.warn("{name}: giving up on {key} after {n} attempts: {error}", name=self.name,
                     key=key, n=attempt, error=failure.getErrorMessage())
        else:
            log.failure("{name}: {key} failed", failure, name=self.name, key=key)

    def _retry(self, key, item, attempt):
        self._retries.pop(key, None)
        if key not in self._waiting:
            self._waiting[key] = (item, attempt)
        self._pump()
