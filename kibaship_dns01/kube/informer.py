"""A watch-backed cache of one Kubernetes collection (an "informer").

Why: the solver must find a Challenge by ``spec.key`` on every request, and
the auth layer must follow the authentication ConfigMap as its CA rotates.
Polling or LISTing per request would load the API server and add latency, so
this keeps a local copy current: LIST, then WATCH from the list's
resourceVersion, apply each event, and relist when the server says the
version is too old (410).  Memory is proportional to the objects kept, and a
``trim`` function drops the fields nobody reads.

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
    :param clock: ``IReactorTime`` for backoff timers.
    :param name: cache name for metrics, logs and readiness.
    :param trim: ``fn(obj) -> obj`` applied to every object before it is stored;
        ``None`` leaves the object out, as if deleted (a cache of the objects in
        some state only: one that leaves it is dropped with a ``DELETED``).
        Objects are keyed by the whole object's namespace and name, so the
        trimmed form may be anything ``version`` can read.
    :param version: ``fn(trimmed) -> resourceVersion`` (default: its
        ``metadata.resourceVersion``); a relist skips objects whose version
        did not change.
    :param indexers: ``{"indexName": fn(obj) -> list[str]}``.
    :param params: extra query parameters for LIST and WATCH (selectors).
    """

    log = Logger()

    def __init__(self, client, path, clock, name, trim=None, indexers=None, params=None,
                 backoff=None, healthyWatchSeconds=10.0, rng=None, listTimeout=300.0,
                 watchGrace=60.0, version=None):
        self.client, self.path, self.clock, self.name = client, path, clock, name
        self._trim = trim or (lambda obj: obj)
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
        #: when the cache last heard from the API server (``clock`` time); read at scrape
        #: time, so a watch event costs an attribute store, not a locked ``Gauge.set``
        self.lastHeard = 0.0
        metrics.CACHE_LAST_SYNC.labels(cache=name).set_function(lambda: self.lastHeard)
        self._listeners = []
        self._waiters = []
        self._rv = None
        self._failures = 0
        self._inflight = None
        self._timer = None
        self._watchState = None
        self.hasSynced = False
        self.relists = 0

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
        return [self._objects[k] for k in sorted(index.keys(value), key=str)]

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
        d = self._track(self.client.list(self.path, dict(self._params),
                                         pageItems=self._trimPage))
        d.addTimeout(self._listTimeout, self.clock)
        d.addCallbacks(self._listed, self._failed, errbackArgs=("LIST",))

    def _listed(self, result):
        if not self.running:
            return
        self.relists += 1
        metrics.CACHE_LISTS.labels(cache=self.name).inc()
        self._heard()
        self._replace(result)
        self._rv = (result.get("metadata") or {}).get("resourceVersion") or self._rv
        self._markSynced()
        self._watch()

    def _watch(self):
        self._timer = None
        if not self.running:
            return
        state = self._watchState = {"started": self.clock.seconds(), "events": 0, "gone": False}
        seconds = int(MIN_WATCH_SECONDS * (1 + self._rng.random()))
        params = dict(self._params, timeoutSeconds=str(seconds))
        d = self._track(self.client.watch(self.path, self._rv,
                                          lambda t, o: self._onEvent(state, t, o), params))
        d.addTimeout(seconds + self._watchGrace, self.clock)
        d.addCallbacks(self._watchEnded, self._failed, callbackArgs=(state,),
                       errbackArgs=("WATCH", state))

    def _wasHealthy(self, state):
        return state is not None and (
            state["events"] > 0 or self.clock.seconds() - state["started"] >= self._healthy)

    def _watchEnded(self, _, state):
        if not self.running or state is not self._watchState:
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
            if not (state and state["gone"]):
                return None
            return self._watchEnded(None, state)
        if self._wasHealthy(state):
            self._failures = 0
        gone = failure.check(Gone) is not None
        nextStep = self._relist if (what == "LIST" or gone) else self._watch
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
        rv = _rvOf(obj)
        if kind == "ERROR":
            self._onError(state, obj)
            return
        state["events"] += 1
        self._heard()
        if rv:
            self._rv = rv
        if kind in ("ADDED", "MODIFIED"):
            self._upsert(obj)
        elif kind == "DELETED":
            self._delete(obj)

    def _onError(self, state, status):
        """A 410 means relist once the stream ends; cancel it so that happens now."""
        if status.get("code") == 410:
            state["gone"] = True
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

    def _upsert(self, obj):
        key, trimmed = _key(obj), self._trim(obj)
        if trimmed is None:  # left out of the cache (now)
            self._drop(key, None)
            return
        kind = "MODIFIED" if key in self._objects else "ADDED"
        self._store(key, trimmed)
        self._changed(kind, trimmed)

    def _delete(self, obj):
        self._drop(_key(obj), self._trim(obj) if obj.get("metadata") else None)

    def _drop(self, key, last):
        """Forget ``key``; listeners see its ``last`` (trimmed) state, else the cached one."""
        old = self._objects.pop(key, None)
        self._unindex(key)
        if old is not None:
            self._changed("DELETED", last if last is not None else old)

    def _trimPage(self, page):
        """One LIST page's items as ``(key, trimmed)``, trimmed as the page
        arrives (see :meth:`~kibaship_dns01.interfaces.IKubernetesClient.list`);
        items of typed lists (``ConfigMapList``) get the kind and apiVersion
        they lack."""
        kind = (page.get("kind") or "")[:-4] if str(page.get("kind", "")).endswith(
            "List") else None
        apiVersion = page.get("apiVersion")
        trimmed = []
        for item in page.get("items") or ():
            if kind:
                item.setdefault("kind", kind)
            if apiVersion:
                item.setdefault("apiVersion", apiVersion)
            kept = self._trim(item)
            if kept is not None:
                trimmed.append((_key(item), kept))
        return trimmed

    def _replace(self, listResult):
        """Swap in a fresh LIST (its items ``(key, trimmed)`` pairs, see
        :meth:`_trimPage`), emitting the difference as events."""
        fresh = dict(listResult.get("items") or ())
        old = self._objects
        for key in [k for k in old if k not in fresh]:
            gone = self._objects.pop(key)
            self._unindex(key)
            self._changed("DELETED", gone, count=False)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is not None and self._version(before) == self._version(obj):
                continue
            self._store(key, obj)
            self._changed("ADDED" if before is None else "MODIFIED", obj, count=False)
        self._size.set(len(self._objects))

    def _heard(self):
        """The cache is current as of now (``kibaship_dns01_cache_last_sync_timestamp_seconds``:
        the alert on an API server that cannot be read compares it with the time)."""
        self.lastHeard = self.clock.seconds()

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

    def _markSynced(self):
        self._size.set(len(self._objects))
        if self.hasSynced:
            return
        self.hasSynced = True
        self.log.info("cache {name}: synced {n} objects", name=self.name, n=len(self._objects))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
