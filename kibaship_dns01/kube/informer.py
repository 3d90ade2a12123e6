"""A watch-backed cache of one Kubernetes collection (an "informer").

Why: the solver must find a Challenge by ``spec.key`` on every request, and
the auth layer must follow the authentication ConfigMap as its CA rotates.
Polling or LISTing per request would load the API server and add latency, so
this keeps a local copy current: LIST, then WATCH from the list's
resourceVersion, apply each event, and relist when the server says the
version is too old (410).  Memory is proportional to the objects kept, and a
``trim`` function drops the fields nobody reads.

A large collection syncs without stalling the reactor: LIST pages are asked
for one at a time and applied in slices of at most :data:`TURN_BUDGET` seconds
per reactor turn, the next page only once the last is applied, so neither a
whole list's JSON nor a whole list's objects are ever held at once.  Where the
API server streams lists (WatchList: ``sendInitialEvents=true``, on by default
since Kubernetes 1.34) an informer built with ``watchList=True`` asks for that
instead: one WATCH whose initial ``ADDED`` events are the list, ended by the
``k8s.io/initial-events-end`` bookmark, then live events on the same stream.
A server that refuses it (400/422: the feature gate is off) or never sends the
bookmark gets paged LISTs from then on.

It is a background :class:`~twisted.application.service.Service`: it retries
forever while running, every attempt bounded in time (by the client and by
its own deadline, in case a client never answers), with exponential backoff
and jitter between failed attempts, capped at :data:`MAX_RETRY_DELAY` and
never sooner than a 429's ``Retry-After`` (``details.retryAfterSeconds``).
"""
import random
import sys

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from kibaship_dns01 import metrics
from kibaship_dns01.interfaces import IReadiness
from kibaship_dns01.kube.errors import Gone

MIN_WATCH_SECONDS = 300
#: the longest wait between failed attempts.  client-go waits up to 30 s, but a
#: cache that is down is stale: ``bench/drills/apifaults.py`` saw deleted
#: Challenges served, and every new one LISTed cluster-wide, for up to 30 s after
#: an API server came back; a few requests per 5 s from one daemon cost nothing.
MAX_RETRY_DELAY = 5.0
#: CPU seconds of applying listed objects per reactor turn; the rest waits for
#: the next turn, so requests are served in between (a relist of 100,000
#: Certificates applied in one go held the reactor for hundreds of ms)
TURN_BUDGET = 0.005
#: the bookmark annotation that ends a WatchList's initial events
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
WATCH_LIST_PARAMS = {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"}


def _key(obj):
    """``(namespace, name)``; the namespace interned, since every key holds one
    and a cache has many objects per namespace."""
    md = obj.get("metadata") or {}
    namespace = md.get("namespace")
    return sys.intern(namespace) if type(namespace) is str else namespace, md.get("name")


def retryAfter(error):
    """The ``Retry-After`` a failed call's Status carries (seconds), or 0."""
    details = (getattr(error, "status", None) or {}).get("details") or {}
    value = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    return value if isinstance(value, (int, float)) and value > 0 else 0


def _rvOf(obj):
    return (obj.get("metadata") or {}).get("resourceVersion")


def _endsInitialEvents(obj):
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations.get(INITIAL_EVENTS_END) == "true"


class _Pass:
    """One LIST or WatchList pass: the keys it delivered (so what it did not
    deliver can be dropped at its end) and whether it ended."""

    def __init__(self):
        self.seen = set()
        self.done = False


def inTurns(clock, items, fn, budget=TURN_BUDGET):
    """Call ``fn(item)`` for each item, handing the reactor back (``callLater(0)``)
    whenever a turn has used ``budget`` seconds of ``clock`` time.

    A test's :class:`~twisted.internet.task.Clock` stands still, so there it
    all happens at once.  :return: Deferred firing once every item is done
    (failing with what ``fn`` raised); cancelling it stops the walk.
    """
    it = iter(items)
    timer = []
    d = defer.Deferred(lambda _: timer and timer[0].active() and timer[0].cancel())

    def turn():
        timer.clear()
        start = clock.seconds()
        try:
            for n, item in enumerate(it, 1):
                fn(item)
                if n % 16 == 0 and clock.seconds() - start >= budget:
                    timer.append(clock.callLater(0, turn))
                    return
        except Exception:
            d.errback()
            return
        d.callback(None)
    turn()
    return d


class Backoff:
    """Exponential backoff with equal jitter: delay n is in [d/2, d], d = min(cap, base*2**(n-1))."""

    def __init__(self, base=0.5, cap=30.0, rng=None):
        self.base, self.cap = base, cap
        self._rng = rng or random.Random()

    def delay(self, failures):
        d = min(self.cap, self.base * (2 ** max(0, min(failures - 1, 30))))
        return d / 2 + self._rng.random() * d / 2


class _Index:
    """value -> keys for one indexer, plus key -> values to undo on change.

    Most values (a Challenge's ``spec.key``) map to one object, so a value
    holds its key directly and only becomes a set when shared: a set per
    object would cost more than the trimmed object's strings.
    """

    def __init__(self, fn):
        self.fn = fn
        self.byValue = {}
        self.byKey = {}

    def add(self, key, obj):
        values = tuple(self.fn(obj) or ())
        self.byKey[key] = values
        for v in values:
            held = self.byValue.get(v)
            if held is None:
                self.byValue[v] = key
            elif isinstance(held, set):
                held.add(key)
            elif held != key:
                self.byValue[v] = {held, key}

    def remove(self, key):
        for v in self.byKey.pop(key, ()):
            held = self.byValue.get(v)
            if isinstance(held, set):
                held.discard(key)
                if len(held) == 1:
                    self.byValue[v] = held.pop()
            elif held == key:
                del self.byValue[v]

    def keys(self, value):
        held = self.byValue.get(value)
        if held is None:
            return ()
        return held if isinstance(held, set) else (held,)


@implementer(IReadiness)
class Informer(service.Service):
    """A LIST+WATCH cache of the collection at ``path``.

    :param client: an :class:`~kibaship_dns01.interfaces.IKubernetesClient`.
    :param path: collection path, e.g. ``/apis/acme.cert-manager.io/v1/challenges``
        (cluster-wide) or ``/api/v1/namespaces/kube-system/configmaps``.
    :param clock: ``IReactorTime`` for backoff timers and for handing the
        reactor back while a large LIST is applied (see :func:`inTurns`).
    :param name: cache name for metrics, logs and readiness.
    :param trim: ``fn(obj) -> stored`` applied to every object before it is
        stored; ``None`` leaves the object out, as if deleted (a cache of the
        objects in some state only: one that leaves it is dropped with a
        ``DELETED``).  Objects are keyed by the whole object's namespace and
        name, so the stored form may be anything ``version`` can read.
    :param view: ``fn(obj) -> what listeners see`` of an added, modified or
        deleted object (default: the stored form).  A cache whose stored form
        is a compact record gives listeners the event's object, trimmed, this
        way; an object a relist found gone reaches them as its stored form.
    :param version: ``fn(stored) -> resourceVersion`` (default: its
        ``metadata.resourceVersion``); a relist skips objects whose version
        did not change.
    :param indexers: ``{"indexName": fn(stored) -> list[str]}``.
    :param params: extra query parameters for LIST and WATCH (selectors).
    :param watchList: sync with a WatchList stream first (see the module
        docstring), paged LISTs where the server does not serve it.
    """

    log = Logger()

    def __init__(self, client, path, clock, name, trim=None, indexers=None, params=None,
                 backoff=None, healthyWatchSeconds=10.0, rng=None, listTimeout=300.0,
                 watchGrace=60.0, version=None, view=None, watchList=False):
        self.client, self.path, self.clock, self.name = client, path, clock, name
        self._trim = trim or (lambda obj: obj)
        self._view = view
        self._version = version or _rvOf
        self._indexes = {n: _Index(fn) for n, fn in (indexers or {}).items()}
        self._params = dict(params or {})
        self._rng = rng or random.Random()
        self._backoff = backoff or Backoff(cap=MAX_RETRY_DELAY, rng=self._rng)
        self._healthy = healthyWatchSeconds
        self._listTimeout = listTimeout
        self._watchGrace = watchGrace
        self._objects = {}
        self._size = metrics.CACHE_OBJECTS.labels(cache=name)
        self._listeners = []
        self._waiters = []
        self._rv = None
        self._failures = 0
        self._inflight = None
        self._timer = None
        self._watchState = None
        self._pass = None
        #: whether the next sync tries a WatchList (False once the server refused one)
        self.watchList = watchList
        self.hasSynced = False
        self.relists = 0
        #: when the cache last heard from the API server (``clock`` time); read at scrape
        #: time, so a watch event costs an attribute store, not a locked ``Gauge.set``
        self.lastHeard = 0.0
        metrics.CACHE_LAST_SYNC.labels(cache=name).set_function(lambda: self.lastHeard)

    # --- reading -------------------------------------------------------------

    def get(self, namespace, name):
        """The cached object or ``None``."""
        return self._objects.get((namespace, name))

    def byIndex(self, indexName, value):
        """Objects whose indexer ``indexName`` produced ``value``."""
        try:
            index = self._indexes[indexName]
        except KeyError:
            raise KeyError("cache %r has no index %r (indexes: %s)"
                           % (self.name, indexName, ", ".join(sorted(self._indexes)) or "none"))
        keys = index.keys(value)
        if len(keys) == 1:
            return [self._objects[k] for k in keys]
        return [self._objects[k] for k in sorted(keys, key=str)]

    def list(self):
        return list(self._objects.values())

    def __len__(self):
        return len(self._objects)

    @property
    def resourceVersion(self):
        """The last resourceVersion seen (list, event or bookmark)."""
        return self._rv

    def addListener(self, fn):
        """Call ``fn(eventType, obj)`` after every change of the cache."""
        self._listeners.append(fn)

    def whenSynced(self):
        """A new Deferred firing ``None`` once the first LIST is stored."""
        if self.hasSynced:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def isReady(self):
        return self.hasSynced

    # --- lifecycle -----------------------------------------------------------

    def startService(self):
        super().startService()
        self._heard()  # the staleness alert counts from the start until the first LIST
        self._relist()

    def stopService(self):
        """Cancel the running request and any pending retry. :return: Deferred."""
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._pass = None
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.cancel()
        return defer.succeed(None)

    # --- the list/watch loop -----------------------------------------------

    def _track(self, d):
        self._inflight = d
        return d

    def _relist(self):
        self._timer = None
        if not self.running:
            return
        if self.watchList:
            self._watch(initial=True)
            return
        sync = self._pass = _Pass()
        d = self._track(self.client.listPages(self.path, dict(self._params),
                                              lambda page, first: self._onPage(sync, page, first)))
        d.addTimeout(self._listTimeout, self.clock)
        d.addCallbacks(self._listed, self._failed, callbackArgs=(sync,), errbackArgs=("LIST",))

    def _onPage(self, sync, page, first):
        """Apply one LIST page in reactor-sized slices (see :func:`inTurns`)."""
        if sync is not self._pass:
            raise defer.CancelledError()
        if first:
            sync.seen.clear()  # a restarted LIST: forget what the abandoned pass gave
        kind = page.get("kind") or ""
        kind = kind[:-4] if isinstance(kind, str) and kind.endswith("List") else None
        apiVersion = page.get("apiVersion")
        items = page.get("items") or ()
        page.clear()  # what is kept of the page is what its items leave in the cache

        def apply(item):
            if kind:  # items of typed lists (ConfigMapList) lack kind and apiVersion
                item.setdefault("kind", kind)
            if apiVersion:
                item.setdefault("apiVersion", apiVersion)
            self._listedItem(sync, item)
        return inTurns(self.clock, items, apply)

    def _listedItem(self, sync, obj):
        key = _key(obj)
        sync.seen.add(key)
        self._apply(key, obj, listed=True)

    def _listed(self, metadata, sync):
        if not self.running or sync is not self._pass:
            return
        self._endPass(sync, (metadata or {}).get("resourceVersion"))
        self._watch()

    def _endPass(self, sync, rv):
        """A LIST or the WatchList's initial events are all in: drop what they
        did not deliver, and the cache is synced at ``rv``."""
        sync.done = True
        self.relists += 1
        metrics.CACHE_LISTS.labels(cache=self.name).inc()
        self._heard()
        for key in [k for k in self._objects if k not in sync.seen]:
            self._drop(key, None, count=False)
        sync.seen = set()
        self._rv = rv or self._rv
        self._markSynced()

    def _watch(self, initial=False):
        """WATCH from the last version; ``initial``: a WatchList, whose initial
        events are the list (this informer's pass)."""
        self._timer = None
        if not self.running:
            return
        sync = self._pass = _Pass() if initial else None
        state = self._watchState = {"started": self.clock.seconds(), "events": 0, "gone": False,
                                    "pass": sync, "refused": False}
        seconds = int(MIN_WATCH_SECONDS * (1 + self._rng.random()))
        params = dict(self._params, timeoutSeconds=str(seconds))
        if initial:
            params.update(WATCH_LIST_PARAMS)
            state["deadline"] = self.clock.callLater(self._listTimeout, self._noInitialEnd, state)
        d = self._track(self.client.watch(self.path, self._rv,
                                          lambda t, o: self._onEvent(state, t, o), params))
        d.addTimeout(seconds + self._watchGrace, self.clock)
        d.addBoth(self._stopDeadline, state)
        d.addCallbacks(self._watchEnded, self._failed, callbackArgs=(state,),
                       errbackArgs=("WATCH", state))

    @staticmethod
    def _stopDeadline(result, state):
        deadline = state.get("deadline")
        if deadline is not None and deadline.active():
            deadline.cancel()
        return result

    def _initialPending(self, state):
        return state is not None and state["pass"] is not None and not state["pass"].done

    def _noInitialEnd(self, state):
        """A WatchList with no ``initial-events-end`` bookmark in time: a server
        that ignores ``sendInitialEvents`` (older than Kubernetes 1.27)."""
        state["refused"] = True
        if state is self._watchState and self._inflight is not None:
            self._inflight.cancel()

    def _refused(self, why):
        """The server does not serve WatchList: paged LISTs from now on."""
        self.watchList = False
        self.log.info("cache {name}: the API server does not stream lists ({why}); listing in"
                      " pages instead", name=self.name, why=why)
        self._relist()

    def _wasHealthy(self, state):
        return state is not None and (
            state["events"] > 0 or self.clock.seconds() - state["started"] >= self._healthy)

    def _watchEnded(self, _, state):
        if not self.running or state is not self._watchState:
            return
        if self._initialPending(state):
            self._refused("the WatchList ended without its %s bookmark" % INITIAL_EVENTS_END)
            return
        healthy = self._wasHealthy(state)
        if healthy:
            self._failures = 0
            if not state["gone"]:
                self._heard()
        nextStep = self._relist if state["gone"] else self._watch
        if healthy:
            nextStep()
        else:
            self._retryLater(nextStep, "the watch ended at once" if not state["gone"]
                             else "the watch's resourceVersion expired", verb="watch")

    def _failed(self, failure, what, state=None):
        if not self.running or state is not self._watchState and what == "WATCH":
            return None
        if failure.check(defer.CancelledError):
            if state and state["refused"]:
                self._refused("no %s bookmark within %gs" % (INITIAL_EVENTS_END,
                                                             self._listTimeout))
                return None
            if not (state and state["gone"]):
                return None
            return self._watchEnded(None, state)
        if self._initialPending(state) and getattr(failure.value, "code", None) in (400, 422):
            self._refused(failure.getErrorMessage())
            return None
        if self._wasHealthy(state) and not self._initialPending(state):
            self._failures = 0
        gone = failure.check(Gone) is not None
        if gone and self._initialPending(state):
            self._rv = None  # a WatchList "not older than" a compacted version: from now
        nextStep = self._relist if (what == "LIST" or gone or self._initialPending(state)) \
            else self._watch
        self._retryLater(nextStep, "%s failed: %s" % (what, failure.getErrorMessage()),
                         retryAfter(failure.value), verb=what.lower())
        return None

    def _retryLater(self, step, why, atLeast=0, verb="list"):
        self._failures += 1
        metrics.CACHE_FAILURES.labels(cache=self.name, verb=verb).inc()
        delay = max(atLeast, self._backoff.delay(self._failures))
        self.log.warn("cache {name}: {why}; retrying in {delay:.1f}s (attempt {n})",
                      name=self.name, why=why, delay=delay, n=self._failures)
        self._timer = self.clock.callLater(delay, step)

    # --- applying changes ----------------------------------------------------

    def _onEvent(self, state, kind, obj):
        if not self.running or state is not self._watchState:
            return
        if kind == "ERROR":
            self._onError(state, obj)
            return
        sync = state["pass"]
        if sync is not None and not sync.done:
            self._onInitialEvent(state, sync, kind, obj)
            return
        state["events"] += 1
        self._heard()
        rv = _rvOf(obj)
        if rv:
            self._rv = rv
        if kind in ("ADDED", "MODIFIED"):
            self._apply(_key(obj), obj)
        elif kind == "DELETED":
            self._delete(obj)

    def _onInitialEvent(self, state, sync, kind, obj):
        """A WatchList's initial events: the list, until the bookmark ends it."""
        if kind == "BOOKMARK":
            if _endsInitialEvents(obj):
                state["events"] += 1
                self._stopDeadline(None, state)
                self._endPass(sync, _rvOf(obj))
            return
        if kind == "DELETED":
            sync.seen.discard(_key(obj))
            self._delete(obj)
            return
        self._listedItem(sync, obj)

    def _onError(self, state, status):
        """A 410 means relist once the stream ends; cancel it so that happens now."""
        if status.get("code") == 410:
            state["gone"] = True
            if self._initialPending(state):
                self._rv = None
            self.log.info("cache {name}: resourceVersion {rv} expired; relisting",
                          name=self.name, rv=self._rv)
            if self._inflight is not None:
                self._inflight.cancel()
        else:
            self.log.warn("cache {name}: watch error: {msg}", name=self.name,
                          msg=status.get("message"))

    def _store(self, key, obj):
        self._unindex(key)
        self._objects[key] = obj
        for index in self._indexes.values():
            index.add(key, obj)

    def _unindex(self, key):
        for index in self._indexes.values():
            index.remove(key)

    def _apply(self, key, obj, listed=False):
        """Store an added or modified object (``listed``: from a LIST or initial
        events, skipped when its version is the one cached; the size gauge is
        set once at the pass's end)."""
        stored = self._trim(obj)
        if stored is None:  # left out of the cache (now)
            self._drop(key, None, count=not listed)
            return
        before = self._objects.get(key)
        if listed and before is not None and self._version(before) == self._version(stored):
            return
        self._store(key, stored)
        self._changed("ADDED" if before is None else "MODIFIED",
                      stored if self._view is None else self._view(obj), count=not listed)

    def _delete(self, obj):
        last = (self._view or self._trim)(obj) if obj.get("metadata") else None
        self._drop(_key(obj), last)

    def _drop(self, key, last, count=True):
        """Forget ``key``; listeners see its ``last`` state, else the cached one."""
        old = self._objects.pop(key, None)
        self._unindex(key)
        if old is not None:
            self._changed("DELETED", last if last is not None else old, count=count)

    def _changed(self, kind, obj, count=True):
        """Tell the listeners; ``count=False`` within a relist, which sets the
        size gauge once at its end."""
        if count:
            self._size.set(len(self._objects))
        for fn in list(self._listeners):
            try:
                fn(kind, obj)
            except Exception:
                self.log.failure("cache {name}: listener failed on {kind}", name=self.name,
                                 kind=kind)

    def _heard(self):
        """The cache is current as of now (``kibaship_dns01_cache_last_sync_timestamp_seconds``:
        the alert on an API server that cannot be read compares it with the time)."""
        self.lastHeard = self.clock.seconds()

    def _markSynced(self):
        self._size.set(len(self._objects))
        if self.hasSynced:
            return
        self.hasSynced = True
        self.log.info("cache {name}: synced {n} objects", name=self.name, n=len(self._objects))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
