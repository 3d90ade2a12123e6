"""From a cert-manager challenge request to its Kibaship project (SPEC §6).

cert-manager's request names no Challenge (SPEC §2), only ``dnsName``, ``key``
and ``resourceNamespace``.  So the resolver

1. keeps a cluster-wide, watch-backed cache of Challenges indexed by
   ``spec.key`` and picks the one whose key, ``dnsName`` and webhook
   group/solver match (preferring ``resourceNamespace``, which is the
   Challenge's namespace for an ``Issuer`` but cert-manager's own namespace for
   a ``ClusterIssuer``);
2. on a cache miss (a Challenge created a moment ago, or a cache still
   syncing) LISTs ``resourceNamespace``, gives a live watch ``watchGrace``
   seconds to deliver the Challenge, then LISTs every namespace, once
   (concurrent misses share these LISTs);
3. walks the controller ``ownerReferences`` Challenge -> Order ->
   CertificateRequest -> Certificate, stopping at the first object that
   carries a valid project label (cert-manager copies the Certificate's
   labels to the CertificateRequest and the Order, so one GET usually does);
4. caches the walked chain by Challenge UID until the Informer reports the
   Challenge deleted, so CleanUp (which runs while cert-manager's finalizer
   keeps the Challenge alive) and retried Presents cost no API call.

The whole lookup is bounded by ``lookupTimeout``: cert-manager gives up on a
request after 60 s and retries it anyway.
"""
import collections

import attr
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kibaship_dns01 import metrics
from kibaship_dns01.flight import SharedCalls
from kibaship_dns01.interfaces import IProjectResolver, IReadiness
from kibaship_dns01.kube import errors
from kibaship_dns01.kube.informer import Informer
from kibaship_dns01.project import (
    PROJECT_LABEL, InvalidProjectLabel, IssuerRef, ProjectLabels, hasProjectLabel, isProjectUUID,
    parseProjectLabels, withLabels)

ACME_GROUP = "acme.cert-manager.io"
CERTMANAGER_GROUP = "cert-manager.io"
CHALLENGES_PATH = "/apis/acme.cert-manager.io/v1/challenges"
CERTIFICATE_NAME_ANNOTATION = "cert-manager.io/certificate-name"
KEY_INDEX = "key"
_log = Logger()

#: Upper bound on cached chains; entries normally leave on the Challenge's
#: DELETED event, the bound only protects against missed deletions.
MAX_CACHED_CHAINS = 20000

_MISSING_LABEL_HINT = "the Kibaship operator sets it on ApplicationDomain certificates"
_DEFAULT_HINT = ("for a platform certificate without Kibaship labels set defaultProjectUUID in the"
                 " issuer's webhook config")


class ResolutionError(Exception):
    """The project of a challenge could not be determined.

    :ivar message: operator-facing text: which object, what is wrong, what to fix.
    :ivar reason: short machine label, the ``reason`` of
        ``kibaship_dns01_resolution_failures_total``.
    :ivar gone: ``True`` when the objects needed are already deleted; a
        CleanUp may then finish without a project (see :class:`ChallengeGone`).
    :ivar transient: ``True`` when retrying later may succeed (API trouble).
    :ivar challenge: the matched Challenge as ``(namespace, name, uid)``, or ``None``.
    """

    gone = False
    transient = False

    def __init__(self, message, reason, challenge=None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.challenge = challenge

    def __str__(self):
        return self.message


class ChallengeGone(ResolutionError):
    """The Challenge or an object of its owner chain no longer exists.

    For Present this is a failure like any other (cert-manager retries); for
    CleanUp there is nothing left to resolve, and failing would only keep the
    Challenge's finalizer in place forever.
    """

    gone = True


class TransientResolutionError(ResolutionError):
    """The API server failed or was too slow; a retry may succeed."""

    transient = True


# --- Challenge objects ---------------------------------------------------------

def _get(obj, *path):
    """``obj[path[0]][path[1]]...`` or ``None``: cert-manager omits empty fields."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


#: Canonical copies of small values most Challenges share (namespace, issuerRef,
#: webhook group/solver, owner apiVersion/kind), bounded so odd input cannot grow it.
_SHARED = {}
_SHARED_MAX = 4096


def _shared(key, make=None):
    """One shared instance per ``key`` (``make()`` builds it); never mutate the result."""
    value = _SHARED.get(key)
    if value is None:
        value = make() if make is not None else key
        if len(_SHARED) < _SHARED_MAX:
            _SHARED[key] = value
    return value


def _sharedStr(value):
    return _shared(("s", value), lambda: value) if isinstance(value, str) else value


def _trimOwner(ref):
    return {"apiVersion": _sharedStr(ref.get("apiVersion")), "kind": _sharedStr(ref.get("kind")),
            "name": ref.get("name"), "uid": ref.get("uid"), "controller": True}


def _strItems(value):
    """A dict's string items as a hashable key (other values are dropped)."""
    return tuple(sorted((k, v) for k, v in (value or {}).items()
                        if isinstance(k, str) and isinstance(v, str)))


def trimChallenge(obj):
    """Keep only the fields the resolver reads, sharing what Challenges share.

    A Challenge carries the issuer's whole webhook ``config`` and a status;
    the trimmed form keeps the identity, the controller ownerReference, and
    the ``spec`` fields matched on (about 1.3 KiB each in CPython, see
    ``bench/bench_resolve.py``).
    """
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    trimmed = {key: meta[key] for key in ("name", "uid", "resourceVersion", "deletionTimestamp")
               if key in meta}
    if "namespace" in meta:
        trimmed["namespace"] = _sharedStr(meta["namespace"])
    owners = [_trimOwner(ref) for ref in meta.get("ownerReferences") or ()
              if isinstance(ref, dict) and ref.get("controller")]
    if owners:
        trimmed["ownerReferences"] = owners
    trimmedSpec = {key: spec[key] for key in ("key", "dnsName", "wildcard") if key in spec}
    if isinstance(spec.get("issuerRef"), dict):
        items = _strItems(spec["issuerRef"])
        trimmedSpec["issuerRef"] = _shared(("issuerRef",) + items, lambda: dict(items))
    webhook = _strItems({key: value for key, value in (
        _get(spec, "solver", "dns01", "webhook") or {}).items()
        if key in ("groupName", "solverName")})
    if webhook:
        trimmedSpec["solver"] = _shared(("solver",) + webhook,
                                        lambda: {"dns01": {"webhook": dict(webhook)}})
    return {"metadata": trimmed, "spec": trimmedSpec}


def challengeKeys(obj):
    """The ``key`` index function: a Challenge is found by its ``spec.key``."""
    key = _get(obj, "spec", "key")
    return [key] if isinstance(key, str) and key else []


def normalizeDNSName(name):
    """cert-manager sends ``dnsName`` as stored; compare case- and dot-insensitively."""
    return (name or "").rstrip(".").lower()


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ChallengeQuery:
    """What identifies one Challenge in a request (SPEC §2: dnsName + key)."""

    key: str
    dnsName: str
    resourceNamespace: str
    groupName: str
    solverName: str

    def matches(self, obj):
        """Key, dnsName and webhook match, and the namespace is possible.

        A namespaced ``Issuer``'s requests always carry the Challenge's own
        namespace as ``resourceNamespace``, so an Issuer Challenge elsewhere
        cannot be the one asked about (only ClusterIssuer Challenges can).
        """
        spec = obj.get("spec") or {}
        webhook = _get(spec, "solver", "dns01", "webhook") or {}
        issuerKind = _get(spec, "issuerRef", "kind") or "Issuer"
        return (spec.get("key") == self.key
                and normalizeDNSName(spec.get("dnsName")) == normalizeDNSName(self.dnsName)
                and webhook.get("groupName") == self.groupName
                and webhook.get("solverName") == self.solverName
                and (issuerKind != "Issuer"
                     or _get(obj, "metadata", "namespace") == self.resourceNamespace))

    def pick(self, candidates):
        """The best matching Challenge among ``candidates``, or ``None``.

        Let's Encrypt reuses a pending authorization for the same account and
        name, so two Orders (say, two namespaces behind one ClusterIssuer) can
        hold Challenges with the same key.  Prefer ``resourceNamespace``, then
        Challenges not being deleted, then a stable order, and say so in the log.
        """
        matching = [obj for obj in candidates if self.matches(obj)]
        if not matching:
            return None
        matching.sort(key=lambda obj: (
            _get(obj, "metadata", "namespace") != self.resourceNamespace,
            _get(obj, "metadata", "deletionTimestamp") is not None,
            _get(obj, "metadata", "namespace") or "", _get(obj, "metadata", "name") or ""))
        if len(matching) > 1:
            _log.warn("{count} Challenges have key and dnsName {dnsName}: {names}; using {chosen}",
                      count=len(matching), dnsName=self.dnsName,
                      names=", ".join(describe("Challenge", obj) for obj in matching),
                      chosen=describe("Challenge", matching[0]))
        return matching[0]


def describe(kind, obj):
    """``Kind namespace/name`` as an operator would type it into kubectl."""
    return "%s %s/%s" % (kind, _get(obj, "metadata", "namespace"), _get(obj, "metadata", "name"))


def _challengeRef(obj):
    meta = obj.get("metadata") or {}
    return (meta.get("namespace"), meta.get("name"), meta.get("uid"))


# --- the owner chain -----------------------------------------------------------

@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Kind:
    """One cert-manager kind of the chain and where its objects live."""

    kind: str
    group: str
    plural: str

    def path(self, namespace, name):
        return "/apis/%s/v1/namespaces/%s/%s/%s" % (self.group, namespace, self.plural, name)


ORDER = _Kind("Order", ACME_GROUP, "orders")
CERTIFICATE_REQUEST = _Kind("CertificateRequest", CERTMANAGER_GROUP, "certificaterequests")
CERTIFICATE = _Kind("Certificate", CERTMANAGER_GROUP, "certificates")


def controllerRef(obj, kind):
    """The controller ``ownerReference`` of ``obj`` if it points at a ``kind``."""
    for ref in _get(obj, "metadata", "ownerReferences") or ():
        if not isinstance(ref, dict) or not ref.get("controller"):
            continue
        group = (ref.get("apiVersion") or "").split("/")[0]
        if ref.get("kind") == kind.kind and group == kind.group and ref.get("name"):
            return ref
    return None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Hop:
    """The next object to fetch: its kind, name and (when known) expected UID."""

    kind: _Kind
    name: str
    uid: object = None


def nextHop(kind, obj):
    """Where the walk goes after ``obj`` (of ``kind``), or ``None`` at the end.

    The controller ownerReference is the truth; ``cert-manager.io/certificate-name``
    (on CertificateRequests, and on Orders which copy the request's annotations)
    is the fallback that skips straight to the Certificate.
    """
    owner = {ORDER: CERTIFICATE_REQUEST, CERTIFICATE_REQUEST: CERTIFICATE}.get(kind)
    if owner is None:
        return None
    ref = controllerRef(obj, owner)
    if ref is not None:
        return _Hop(owner, ref["name"], ref.get("uid"))
    name = _get(obj, "metadata", "annotations", CERTIFICATE_NAME_ANNOTATION)
    if isinstance(name, str) and name:
        return _Hop(CERTIFICATE, name)
    return None


def certificateNameOf(kind, obj):
    """The Certificate name ``obj`` knows without another GET, or ``None``.

    Orders carry ``cert-manager.io/certificate-name`` because cert-manager
    copies the CertificateRequest's annotations onto them.
    """
    if kind is CERTIFICATE:
        return _get(obj, "metadata", "name")
    ref = controllerRef(obj, CERTIFICATE)
    if ref is not None:
        return ref["name"]
    name = _get(obj, "metadata", "annotations", CERTIFICATE_NAME_ANNOTATION)
    return name if isinstance(name, str) and name else None


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class Chain:
    """What a walk found, before the issuer's default project is applied.

    Cached by Challenge UID only when it has a project label: a missing
    label may be fixed by the operator while cert-manager retries.
    """

    challengeNamespace: str
    challengeName: str
    challengeUID: str
    orderName: object
    certificateName: object
    issuerRef: IssuerRef
    wildcard: bool
    #: the object whose labels count, e.g. ``Certificate certificates/ad-x``
    labelsFrom: str
    #: its validated labels
    project: ProjectLabels

    @property
    def certificateNamespace(self):
        """cert-manager keeps the whole chain in the Challenge's namespace."""
        return self.challengeNamespace if self.certificateName is not None else None

    @property
    def challengeRef(self):
        return (self.challengeNamespace, self.challengeName, self.challengeUID)

    def context(self, defaultProjectUUID=None):
        """The :class:`~kibaship_dns01.project.ProjectContext` of this chain.

        :raises ResolutionError: no project label and no (valid) default.
        """
        if self.project.projectUUID is None and defaultProjectUUID is not None \
                and not isProjectUUID(defaultProjectUUID):
            raise ResolutionError(
                "%s has no label %s and the issuer's defaultProjectUUID %r is not a lower-case"
                " UUID; fix defaultProjectUUID in the issuer's webhook config"
                % (self.labelsFrom, PROJECT_LABEL, defaultProjectUUID),
                "default_invalid", self.challengeRef)
        try:
            return withLabels(
                self.project, defaultProjectUUID,
                challengeNamespace=self.challengeNamespace, challengeName=self.challengeName,
                challengeUID=self.challengeUID, orderName=self.orderName,
                certificateNamespace=self.certificateNamespace,
                certificateName=self.certificateName, issuerRef=self.issuerRef,
                wildcard=self.wildcard)
        except ValueError:
            raise ResolutionError(
                "%s has no label %s; %s (%s)"
                % (self.labelsFrom, PROJECT_LABEL, _MISSING_LABEL_HINT, _DEFAULT_HINT),
                "label_missing", self.challengeRef) from None


class ChainWalker:
    """Walks Challenge -> Order -> CertificateRequest -> Certificate.

    Stateless apart from the client: :class:`ChallengeResolver` owns caching
    and the overall deadline.
    """

    def __init__(self, client):
        self._client = client

    async def walk(self, challenge):
        """:return: the :class:`Chain` of ``challenge`` (a Challenge object)."""
        orderRef = controllerRef(challenge, ORDER)
        if orderRef is None:
            raise self._broken(challenge, describe("Challenge", challenge),
                               "controller ownerReference to an Order")
        kind, child = ORDER, describe("Challenge", challenge)
        obj = await self._fetch(challenge, child, _Hop(ORDER, orderRef["name"], orderRef.get("uid")))
        orderName, certificateName = obj["metadata"]["name"], None
        while True:
            certificateName = certificateNameOf(kind, obj) or certificateName
            labelled = hasProjectLabel(_get(obj, "metadata", "labels"))
            hop = nextHop(kind, obj)
            if hop is None or (labelled and certificateName is not None):
                break
            child = describe(kind.kind, obj)
            obj, kind = await self._fetch(challenge, child, hop), hop.kind
        if hop is None and kind is ORDER and not labelled:
            raise self._broken(challenge, describe("Order", obj),
                               "controller ownerReference to a CertificateRequest and no %s"
                               " annotation" % (CERTIFICATE_NAME_ANNOTATION,))
        return self._chain(challenge, orderName, certificateName, kind, obj)

    @staticmethod
    def _chain(challenge, orderName, certificateName, kind, obj):
        """The :class:`Chain` ending at ``obj``, whose labels are validated here.

        :raises ResolutionError: the project label is invalid (a
            ``defaultProjectUUID`` never hides an invalid label).
        """
        meta, spec = challenge["metadata"], challenge.get("spec") or {}
        labelsFrom = describe(kind.kind, obj)
        try:
            project = parseProjectLabels(_get(obj, "metadata", "labels"),
                                         _get(obj, "metadata", "annotations"), labelsFrom)
        except InvalidProjectLabel as e:
            raise ResolutionError(
                "%s has label %s=%r, which is not a lower-case UUID; fix the label (%s)"
                % (labelsFrom, PROJECT_LABEL, e.value, _MISSING_LABEL_HINT),
                "label_invalid", _challengeRef(challenge)) from None
        return Chain(
            challengeNamespace=meta["namespace"], challengeName=meta["name"],
            challengeUID=meta.get("uid") or "", orderName=orderName,
            certificateName=certificateName, issuerRef=IssuerRef.fromSpec(spec.get("issuerRef")),
            wildcard=bool(spec.get("wildcard")), labelsFrom=labelsFrom, project=project)

    async def _fetch(self, challenge, child, hop):
        """GET the next object; a deleted or replaced owner means the chain is gone."""
        namespace = challenge["metadata"]["namespace"]
        what = "%s %s/%s" % (hop.kind.kind, namespace, hop.name)
        ref = _challengeRef(challenge)
        try:
            obj = await self._client.get(hop.kind.path(namespace, hop.name))
        except errors.NotFound:
            raise ChallengeGone("%s (owner of %s) no longer exists" % (what, child),
                                "gone", ref)
        except errors.Forbidden as e:
            raise ResolutionError(
                "cannot read %s (owner of %s): %s; the daemon's ClusterRole needs get on %s.%s"
                % (what, child, e.message, hop.kind.plural, hop.kind.group), "forbidden", ref)
        except errors.KubeError as e:
            raise TransientResolutionError(
                "reading %s (owner of %s) failed: %s" % (what, child, e.message), "api_error", ref)
        if hop.uid and _get(obj, "metadata", "uid") != hop.uid:
            raise ChallengeGone("%s (owner of %s) was deleted and re-created; the owner this %s"
                                " belonged to no longer exists" % (what, child, child.split()[0]),
                                "gone", ref)
        return obj

    @staticmethod
    def _broken(challenge, what, missing):
        return ResolutionError(
            "%s has no %s, so its Certificate cannot be found; cert-manager sets it on the objects"
            " it creates: was this object created or edited by hand?" % (what, missing),
            "owner_missing", _challengeRef(challenge))


# --- the resolver service ------------------------------------------------------

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

    Owns the cluster-wide Challenge :class:`~kibaship_dns01.kube.informer.Informer`;
    ready once that cache has synced.
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
        self._walker = ChainWalker(client)
        self._chains = collections.OrderedDict()
        self._lists = SharedCalls()
        self._keyWaiters = KeyWaiters(clock)
        self.watchGrace = watchGrace
        self.informer = Informer(client, CHALLENGES_PATH, clock, "challenges",
                                 trim=trimChallenge, indexers={KEY_INDEX: challengeKeys})
        self.informer.addListener(self._onChallengeEvent)

    # service / readiness

    def startService(self):
        super().startService()
        self.informer.startService()

    def stopService(self):
        super().stopService()
        return self.informer.stopService()

    def isReady(self):
        return bool(self.informer.hasSynced)

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
        if not uid:
            return
        self._chains[uid] = chain
        self._chains.move_to_end(uid)
        while len(self._chains) > self._maxChains:
            self._chains.popitem(last=False)
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
        d = defer.ensureDeferred(self._resolve(query, defaultProjectUUID))
        d.addTimeout(self.lookupTimeout, self._clock,
                     onTimeoutCancel=lambda result, timeout: self._timedOut(result, query))
        d.addErrback(self._countFailure)
        return d

    async def _resolve(self, query, defaultProjectUUID):
        challenge = await self.findChallenge(query)
        uid = _get(challenge, "metadata", "uid")
        chain = self._chains.get(uid)
        if chain is None:
            chain = await self._walker.walk(challenge)
            if chain.project.projectUUID is not None:
                self._remember(uid, chain)
        return chain.context(defaultProjectUUID)

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
            return await self._lists.call(path, lambda: self._client.list(path).addCallback(
                lambda result: [trimChallenge(obj) for obj in result.get("items") or ()]))
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
