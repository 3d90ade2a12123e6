"""The resolver service: cache lookup, bounded fallback LISTs, cached chains."""
from twisted.application import service
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from kibaship_dns01 import metrics
from kibaship_dns01.flight import SharedCalls
from kibaship_dns01.interfaces import IProjectResolver, IReadiness
from kibaship_dns01.kube import errors
from kibaship_dns01.kube.informer import Informer
from kibaship_dns01.resolve.challenges import (
    CHALLENGES_PATH, KEY_INDEX, ChallengeQuery, _get, challengeKeys, trimChallenge)
from kibaship_dns01.resolve.errors import ChallengeGone, ResolutionError, TransientResolutionError
from kibaship_dns01.resolve.orders import OrderCache
from kibaship_dns01.resolve.ownerchain import ChainWalker

#: Upper bound on cached chains; entries normally leave on the Challenge's
#: DELETED event, the bound only protects against missed deletions.
MAX_CACHED_CHAINS = 20000


# --- the resolver service ------------------------------------------------------

def _trimmedItems(page):
    """A fallback LIST keeps only the trimmed Challenges of each page as it arrives."""
    return [trimChallenge(obj) for obj in page.get("items") or ()]


class KeyWaiters:
    """Lookups waiting for the watch to deliver a Challenge with their key.

    A Challenge the cache has not seen is nearly always one cert-manager
    created a moment ago, and the watch delivers it within milliseconds;
    waiting that long is far cheaper than LISTing every Challenge in the
    cluster (seconds of API server and reactor time in a large cluster).
    """

    def __init__(self, clock):
        self._clock = clock
        self._waiting = {}

    def wait(self, query, timeout):
        """:return: a Deferred firing the matching Challenge, or ``None`` after ``timeout``."""
        entry = {"query": query, "timer": None}
        d = defer.Deferred(lambda _: self._drop(entry))
        entry["d"] = d
        entry["timer"] = self._clock.callLater(timeout, self._expire, entry)
        self._waiting.setdefault(query.key, []).append(entry)
        return d

    def notify(self, obj):
        """The cache stored ``obj``: wake the lookups it answers."""
        for key in challengeKeys(obj):
            for entry in list(self._waiting.get(key, ())):
                if entry["query"].matches(obj):
                    self._drop(entry)
                    entry["d"].callback(obj)

    def cancelAll(self):
        """Give up every wait (the resolver is stopping): waiters see ``CancelledError``."""
        for entries in list(self._waiting.values()):
            for entry in list(entries):
                entry["d"].cancel()

    def _expire(self, entry):
        entry["timer"] = None
        self._drop(entry)
        entry["d"].callback(None)

    def _drop(self, entry):
        if entry["timer"] is not None and entry["timer"].active():
            entry["timer"].cancel()
        entry["timer"] = None
        entries = self._waiting.get(entry["query"].key, [])
        if entry in entries:
            entries.remove(entry)
            if not entries:
                del self._waiting[entry["query"].key]

    def __len__(self):
        return sum(len(entries) for entries in self._waiting.values())


@implementer(IProjectResolver, IReadiness)
class ChallengeResolver(service.Service):
    """Resolves challenge requests to :class:`~kibaship_dns01.project.ProjectContext`.

    Owns the cluster-wide Challenge :class:`~kibaship_dns01.kube.informer.Informer`
    and the cache of Kibaship Orders (:mod:`~kibaship_dns01.resolve.orders`);
    ready once both have synced.
    """

    name = "challenge-cache"

    def __init__(self, client, clock, groupName, solverName, lookupTimeout=10.0,
                 watchGrace=1.0, maxCachedChains=MAX_CACHED_CHAINS):
        self._client = client
        self._clock = clock
        self.groupName = groupName
        self.solverName = solverName
        self.lookupTimeout = lookupTimeout
        self._maxChains = maxCachedChains
        self.orders = OrderCache(client, clock)
        self._walker = ChainWalker(client, self.orders)
        self._chains = {}  # uid -> Chain, least recently used first (insertion order)
        self._lists = SharedCalls()
        self._walks = SharedCalls()
        self._keyWaiters = KeyWaiters(clock)
        self.watchGrace = watchGrace
        self.informer = Informer(client, CHALLENGES_PATH, clock, "challenges",
                                 trim=trimChallenge, indexers={KEY_INDEX: challengeKeys})
        self.informer.addListener(self._onChallengeEvent)

    # service / readiness

    def startService(self):
        super().startService()
        self.informer.startService()
        self.orders.informer.startService()

    def stopService(self):
        """Stop the caches and abandon pending lookups (their timers and fallback LISTs)."""
        super().stopService()
        self._keyWaiters.cancelAll()
        self._lists.cancelAll()
        self._walks.cancelAll()
        return defer.gatherResults([self.informer.stopService(),
                                    self.orders.informer.stopService()]).addCallback(
            lambda _: None)

    def isReady(self):
        """Both caches synced: before that every first Present would GET its Order."""
        return bool(self.informer.hasSynced and self.orders.informer.hasSynced)

    def whenReady(self):
        """A new Deferred firing ``None`` once :meth:`isReady` (never fails)."""
        return defer.gatherResults([self.informer.whenSynced(),
                                    self.orders.informer.whenSynced()]).addCallback(
            lambda _: None)

    # cache of walked chains

    @property
    def cachedChains(self):
        """How many resolved owner chains are cached (one per live Challenge)."""
        return len(self._chains)

    def _onChallengeEvent(self, eventType, obj):
        """A deleted Challenge never comes back under the same UID: forget its
        chain.  A new one may be what a lookup is waiting for."""
        if eventType == "DELETED":
            self._chains.pop(_get(obj, "metadata", "uid"), None)
            self._countChains()
        else:
            self._keyWaiters.notify(obj)

    def _remember(self, uid, chain):
        """Cache ``chain``, dropping the least recently walked beyond the bound
        (a plain dict in insertion order: an ``OrderedDict`` node per chain
        would cost more than the rest of what a chain keeps of its own)."""
        if not uid:
            return
        self._chains.pop(uid, None)
        self._chains[uid] = chain
        while len(self._chains) > self._maxChains:
            del self._chains[next(iter(self._chains))]
        self._countChains()

    def _countChains(self):
        metrics.CACHE_OBJECTS.labels(cache="challenge_chains").set(len(self._chains))

    # resolution

    def resolve(self, request, defaultProjectUUID=None):
        """See :class:`~kibaship_dns01.interfaces.IProjectResolver`.

        Fails with :class:`ResolutionError` (``ChallengeGone`` when the objects
        are already deleted, ``TransientResolutionError`` on API trouble or
        when ``lookupTimeout`` passes).
        """
        query = ChallengeQuery(key=request.key, dnsName=request.dnsName,
                               resourceNamespace=request.resourceNamespace,
                               groupName=self.groupName, solverName=self.solverName)
        cached = self._cached(query)
        chain = self._chains.get(_get(cached, "metadata", "uid")) if cached is not None else None
        if chain is not None:
            # the usual case (cert-manager's retries, every CleanUp): nothing to wait for
            return defer.maybeDeferred(chain.context, defaultProjectUUID).addErrback(
                self._countFailure)
        d = defer.ensureDeferred(self._resolve(query, defaultProjectUUID))
        d.addTimeout(self.lookupTimeout, self._clock,
                     onTimeoutCancel=lambda result, timeout: self._timedOut(result, query))
        d.addErrback(self._countFailure)
        return d

    async def _resolve(self, query, defaultProjectUUID):
        challenge = await self.findChallenge(query)
        chain = await self._chainOf(challenge)
        return chain.context(defaultProjectUUID)

    def chainOf(self, challenge):
        """The owner :class:`~kibaship_dns01.resolve.ownerchain.Chain` of a
        (cached) Challenge object, from the chain cache or walked once.

        For the progress events, which follow Challenges this replica may
        never have been asked about: concurrent callers share one walk, and
        a walked chain with a project label is cached exactly as for
        :meth:`resolve`.  Bounded by ``lookupTimeout``.

        :return: Deferred firing the chain, or failing with ``ResolutionError``.
        """
        d = defer.ensureDeferred(self._chainOf(challenge))
        d.addTimeout(self.lookupTimeout, self._clock, onTimeoutCancel=lambda result, timeout: (
            self._walkTimedOut(result, challenge)))
        return d

    async def _chainOf(self, challenge):
        uid = _get(challenge, "metadata", "uid")
        chain = self._chains.get(uid)
        if chain is None:
            chain = await self._walks.call(uid, lambda: defer.ensureDeferred(
                self._walker.walk(challenge)))
            if chain.project.projectUUID is not None:
                self._remember(uid, chain)
        return chain

    def _walkTimedOut(self, result, challenge):
        if not isinstance(result, Failure):
            return result
        raise TransientResolutionError(
            "walking the owner chain of Challenge %s/%s took longer than %gs; the Kubernetes API"
            " server is slow or unreachable" % (_get(challenge, "metadata", "namespace"),
                                                 _get(challenge, "metadata", "name"),
                                                 self.lookupTimeout), "timeout")

    async def findChallenge(self, query):
        """The Challenge matching ``query``.

        From the cache; else LIST ``resourceNamespace`` (cheap, and where an
        Issuer's Challenge lives); else, if the cache is live, give the watch
        ``watchGrace`` seconds to deliver it; else LIST all namespaces, once.

        :raises ChallengeGone: no such Challenge in any namespace.
        """
        found = self._cached(query)
        if found is None:
            found = query.pick(await self._listChallenges(query.resourceNamespace))
        if found is None:
            # the watch may have delivered it while that LIST was in flight
            found = self._cached(query)
        if found is None and self.informer.hasSynced and self.watchGrace > 0:
            found = await self._keyWaiters.wait(query, self.watchGrace)
        if found is None:
            found = query.pick(await self._listChallenges(None))
        if found is not None:
            return found
        raise ChallengeGone(
            "no Challenge with key %s for dnsName %s and webhook %s/%s exists yet in any namespace;"
            " it may not be created yet (cert-manager retries) or belong to another solver"
            % (query.key, query.dnsName, query.groupName, query.solverName),
            "challenge_not_found")

    def _cached(self, query):
        return query.pick(self.informer.byIndex(KEY_INDEX, query.key))

    async def _listChallenges(self, namespace):
        """LIST Challenges directly (cache miss); ``namespace=None`` means all namespaces.

        Concurrent misses share one LIST per path: a burst of new Challenges
        the watch has not delivered yet costs one cluster-wide LIST, not one
        per request.
        """
        path = (CHALLENGES_PATH if not namespace else
                "/apis/acme.cert-manager.io/v1/namespaces/%s/challenges" % (namespace,))
        where = "in namespace %s" % (namespace,) if namespace else "in all namespaces"
        try:
            return await self._lists.call(path, lambda: self._client.list(
                path, pageItems=_trimmedItems).addCallback(lambda result: result["items"]))
        except errors.Forbidden as e:
            raise ResolutionError(
                "cannot list Challenges %s: %s; the daemon's ClusterRole needs list on"
                " challenges.acme.cert-manager.io" % (where, e.message), "forbidden")
        except errors.KubeError as e:
            raise TransientResolutionError(
                "listing Challenges %s failed: %s" % (where, e.message), "api_error")

    def _timedOut(self, result, query):
        """The deadline passed and the lookup was cancelled.

        Whatever the cancelled call turned into (the client may map the
        cancellation to its own error), the cause is the deadline.
        """
        if not isinstance(result, Failure):
            return result
        raise TransientResolutionError(
            "finding the Challenge for %s (key %s) took longer than %gs; the Kubernetes API server"
            " is slow or unreachable (cert-manager will retry)"
            % (query.dnsName, query.key, self.lookupTimeout), "timeout")

    @staticmethod
    def _countFailure(failure):
        if failure.check(ResolutionError):
            metrics.RESOLUTION_FAILURES.labels(reason=failure.value.reason).inc()
        return failure
