"""Unit tests for kibaship_dns01.resolve against the verified fake client.

Each test builds the objects cert-manager would create
(:mod:`kibaship_dns01.testing.certmanager`), resolves a request and checks
both the answer and how many API round trips it cost.
"""
from twisted.internet import defer
from twisted.internet.testing import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.support import LogCapture
from kibaship_dns01 import metrics
from kibaship_dns01.challenge import CLEANUP
from kibaship_dns01.interfaces import IKubernetesClient, IProjectResolver, IReadiness
from kibaship_dns01.project import PROJECT_LABEL, IssuerRef
from kibaship_dns01.resolve import (
    CHALLENGES_PATH, ChainWalker, ChallengeGone, ChallengeResolver, ResolutionError,
    TransientResolutionError, trimChallenge)
from kibaship_dns01.testing.certmanager import (
    CERTIFICATE_NAME_ANNOTATION, PROJECT_UUID, WORKSPACE_UUID, buildChain, kibashipLabels,
    requestFor)
from kibaship_dns01.resolve.orders import trimOrder
from kibaship_dns01.testing.fakekube import FakeKubernetesClient

GROUP, SOLVER = "dns.kibaship.com", "kibaship"
OTHER_PROJECT = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
DEFAULT_PROJECT = "5d4c3b2a-1908-4776-8554-433221100fff"


@implementer(IKubernetesClient)
class LaggingClient:
    """Wraps the fake so watch events wait for :meth:`flush`: a Challenge
    created "a moment ago" that the cache has not seen yet."""

    def __init__(self, inner):
        self.inner = inner
        self.held = []
        self.lagging = False

    def get(self, path, params=None):
        return self.inner.get(path, params)

    def list(self, path, params=None, pageItems=None):
        return self.inner.list(path, params, pageItems)

    def listPages(self, path, params, onPage):
        return self.inner.listPages(path, params, onPage)

    def post(self, path, body):
        return self.inner.post(path, body)

    def watch(self, path, resourceVersion, onEvent, params=None):
        def deliver(eventType, obj):
            if self.lagging:
                self.held.append((onEvent, eventType, obj))
            else:
                onEvent(eventType, obj)
        return self.inner.watch(path, resourceVersion, deliver, params)

    def flush(self, kind=None):
        """Deliver the held events (only those of objects of ``kind``, if given)."""
        held = [e for e in self.held if kind is None or e[2].get("kind") == kind]
        self.held = [e for e in self.held if e not in held]
        for onEvent, eventType, obj in held:
            onEvent(eventType, obj)


@implementer(IKubernetesClient)
class HangingClient(LaggingClient):
    """GET and LIST never answer (an API server that accepted the
    connection and went silent); cancelling is recorded."""

    def __init__(self, inner):
        super().__init__(inner)
        self.hang = False
        self.cancelled = []
        self.pending = []

    def _maybeHang(self, verb, path, call):
        if not self.hang:
            return call()
        d = defer.Deferred(lambda d: self.cancelled.append((verb, path)))
        self.pending.append((verb, path, call, d))
        return d

    def release(self):
        """Answer every pending call now (from the store as it is)."""
        pending, self.pending = self.pending, []
        for _, _, call, d in pending:
            if not d.called:
                call().chainDeferred(d)

    def get(self, path, params=None):
        return self._maybeHang("get", path, lambda: self.inner.get(path, params))

    def list(self, path, params=None, pageItems=None):
        return self._maybeHang("list", path, lambda: self.inner.list(path, params, pageItems))

    def listPages(self, path, params, onPage):
        return self._maybeHang("list", path, lambda: self.inner.listPages(path, params, onPage))


def failureCount(reason):
    return metrics.REGISTRY.get_sample_value(
        "kibaship_dns01_resolution_failures_total", {"reason": reason}) or 0.0


class ResolverCase(SynchronousTestCase):
    """A started resolver over a fake API; ``self.calls()`` counts round trips
    made after the cache synced."""

    def setUp(self):
        self.fake = FakeKubernetesClient()
        self.store = self.fake.store
        self.client = HangingClient(self.fake)
        self.clock = Clock()
        self.resolver = ChallengeResolver(self.client, self.clock, GROUP, SOLVER)

    def start(self, *chains):
        for chain in chains:
            chain.addTo(self.store)
        self.resolver.startService()
        self.addCleanup(self.resolver.stopService)
        self.successResultOf(self.resolver.informer.whenSynced())
        self.mark = len(self.fake.calls)

    def calls(self, verb=None):
        return [c for c in self.fake.calls[self.mark:]
                if verb is None or getattr(c, "verb", None) == verb]

    def settled(self, d):
        """Let a lookup waiting for the watch run out its grace period."""
        if not d.called:
            self.clock.advance(self.resolver.watchGrace)
        return d

    def resolve(self, request, default=None):
        return self.successResultOf(self.settled(self.resolver.resolve(request, default)))

    def fails(self, request, errorType=ResolutionError, default=None):
        d = self.settled(self.resolver.resolve(request, default))
        return self.failureResultOf(d, errorType).value


class InterfaceTests(ResolverCase):

    def test_verifiesInterfaces(self):
        verifyObject(IProjectResolver, self.resolver)
        verifyObject(IReadiness, self.resolver)
        verifyObject(IKubernetesClient, self.client)
        verifyObject(IKubernetesClient, LaggingClient(self.fake))

    def test_readyOnceSynced(self):
        self.assertFalse(self.resolver.isReady())
        self.start()
        self.assertTrue(self.resolver.isReady())
        self.assertEqual(self.resolver.name, "challenge-cache")

    def test_notReadyUntilOrdersSynced(self):
        """Both caches count: until the Order cache syncs every first Present GETs."""
        self.fake.injectError(503, verb="list", path="/apis/acme.cert-manager.io/v1/orders")
        self.start()
        ready = self.resolver.whenReady()
        self.assertTrue(self.resolver.informer.hasSynced)
        self.assertFalse(self.resolver.isReady())
        self.assertNoResult(ready)
        self.clock.advance(60)  # the Order cache's retry (backoff) succeeds
        self.assertTrue(self.resolver.isReady())
        self.assertIsNone(self.successResultOf(ready))


class FindChallengeTests(ResolverCase):

    def test_issuerNamespaceMatch(self):
        """Issuer: resourceNamespace is the Challenge's namespace."""
        issuer = {"name": "le", "kind": "Issuer", "group": "cert-manager.io"}
        chain = buildChain(namespace="shop", certificateName="web", issuerRef=issuer)
        self.start(chain)
        ctx = self.resolve(chain.request(resourceNamespace="shop"))
        challenge = chain.challenges[0]
        self.assertEqual(
            (ctx.projectUUID, ctx.workspaceUUID, ctx.certificateNamespace, ctx.certificateName,
             ctx.challengeNamespace, ctx.challengeName, ctx.challengeUID, ctx.orderName,
             ctx.issuerRef, ctx.wildcard, ctx.slug, ctx.displayName),
            (PROJECT_UUID, WORKSPACE_UUID, "shop", "web", "shop", challenge["metadata"]["name"],
             challenge["metadata"]["uid"], chain.order["metadata"]["name"],
             IssuerRef("le", "Issuer", "cert-manager.io"), False, "shop", "Shop"))
        self.assertEqual(len(self.calls("list")), 0)

    def test_clusterIssuerOtherNamespace(self):
        """ClusterIssuer: resourceNamespace is cert-manager's, not the Challenge's."""
        chain = buildChain()
        self.start(chain)
        ctx = self.resolve(chain.request(resourceNamespace="cert-manager"))
        self.assertEqual((ctx.certificateNamespace, ctx.certificateName, ctx.issuerRef.kind),
                         ("certificates", "ad-shop-example-com", "ClusterIssuer"))
        self.assertEqual(len(self.calls("list")), 0)

    def test_prefersResourceNamespace(self):
        """Two Challenges with one key (a reused ACME authorization): the one in
        resourceNamespace wins; elsewhere a stable choice, with a warning."""
        a = buildChain(namespace="aaa", keySeed="same")
        b = buildChain(namespace="bbb", keySeed="same",
                       labels=kibashipLabels(projectUUID=OTHER_PROJECT))
        self.start(a, b)
        self.assertEqual(a.challenges[0]["spec"]["key"], b.challenges[0]["spec"]["key"])
        self.assertEqual(self.resolve(b.request(resourceNamespace="bbb")).projectUUID,
                         OTHER_PROJECT)
        self.assertEqual(self.resolve(a.request(resourceNamespace="aaa")).projectUUID,
                         PROJECT_UUID)
        logs = LogCapture(self)
        ctx = self.resolve(b.request(resourceNamespace="cert-manager"))
        self.assertEqual(ctx.challengeNamespace, "aaa")
        self.assertEqual(len(logs.warnings()), 1)
        self.assertIn("Challenge bbb/", logs.warnings()[0]["names"])

    def test_issuerChallengeOnlyInItsNamespace(self):
        """Same key in two namespaces, both from namespaced Issuers: the cached
        one elsewhere is not it, the fallback LIST of resourceNamespace is."""
        issuer = {"name": "le", "kind": "Issuer", "group": "cert-manager.io"}
        a = buildChain(namespace="aaa", keySeed="same", issuerRef=issuer)
        b = buildChain(namespace="bbb", keySeed="same", issuerRef=issuer,
                       labels=kibashipLabels(projectUUID=OTHER_PROJECT))
        self.start(a)
        self.client.lagging = True
        b.addTo(self.store)
        ctx = self.resolve(b.request(resourceNamespace="bbb"))
        self.assertEqual((ctx.challengeNamespace, ctx.projectUUID), ("bbb", OTHER_PROJECT))
        self.assertEqual([c.verb for c in self.calls()], ["list", "get"])
        self.fails(a.request(resourceNamespace="cert-manager"), ChallengeGone)

    def test_apexAndWildcardShareFQDN(self):
        chain = buildChain(dnsNames=("example.com", "*.example.com"))
        self.start(chain)
        apex, wild = chain.challenge("example.com"), chain.challenge("example.com", True)
        self.assertNotEqual(apex["spec"]["key"], wild["spec"]["key"])
        apexReq, wildReq = chain.request(apex), chain.request(wild)
        self.assertEqual(apexReq.resolvedFQDN, wildReq.resolvedFQDN)
        a, w = self.resolve(apexReq), self.resolve(wildReq)
        self.assertEqual((a.challengeName, a.wildcard), (apex["metadata"]["name"], False))
        self.assertEqual((w.challengeName, w.wildcard), (wild["metadata"]["name"], True))

    def test_dnsNameMustMatch(self):
        chain = buildChain()
        self.start(chain)
        request = chain.request()
        wrong = requestFor(dict(chain.challenges[0], spec=dict(
            chain.challenges[0]["spec"], dnsName="other.example.com")))
        self.assertEqual(wrong.key, request.key)
        self.fails(wrong, ChallengeGone)
        self.assertEqual(self.resolve(request.__class__(**dict(
            request.raw, dnsName="SHOP.example.com."))).challengeName,
            chain.challenges[0]["metadata"]["name"])

    def test_otherWebhookIgnored(self):
        others = [buildChain(namespace="a", groupName="acme.other.io"),
                  buildChain(namespace="b", solverName="cloudflare")]
        self.start(*others)
        for chain in others:
            error = self.fails(chain.request(), ChallengeGone)
            self.assertEqual(error.reason, "challenge_not_found")

    def test_notFoundAnywhere(self):
        chain = buildChain()
        self.start()
        before = failureCount("challenge_not_found")
        error = self.fails(chain.request(resourceNamespace="cert-manager"), ChallengeGone)
        self.assertTrue(error.gone)
        self.assertIn("no Challenge with key %s for dnsName shop.example.com"
                      % chain.challenges[0]["spec"]["key"], error.message)
        self.assertIn("exists yet in any namespace", error.message)
        self.assertEqual([(c.verb, c.path) for c in self.calls()], [
            ("list", "/apis/acme.cert-manager.io/v1/namespaces/cert-manager/challenges"),
            ("list", CHALLENGES_PATH)])
        self.assertEqual(failureCount("challenge_not_found"), before + 1)

    def test_createdAfterSyncIssuer(self):
        """The cache has not seen the Challenge yet: one LIST of resourceNamespace."""
        self.start()
        self.client.lagging = True
        chain = buildChain(namespace="shop").addTo(self.store)
        ctx = self.resolve(chain.request())
        self.assertEqual(ctx.projectUUID, PROJECT_UUID)
        self.assertEqual([(c.verb, c.path) for c in self.calls()], [
            ("list", "/apis/acme.cert-manager.io/v1/namespaces/shop/challenges"),
            ("get", "/apis/acme.cert-manager.io/v1/namespaces/shop/orders/"
             + chain.order["metadata"]["name"])])

    def test_watchDeliversDuringGrace(self):
        """ClusterIssuer miss: the watch delivering the Challenge within the
        grace period spares the cluster-wide LIST."""
        self.start()
        self.client.lagging = True
        chain = buildChain().addTo(self.store)
        d = self.resolver.resolve(chain.request(resourceNamespace="cert-manager"))
        self.assertNoResult(d)
        self.clock.advance(self.resolver.watchGrace / 2)
        self.client.flush()
        self.assertEqual(self.successResultOf(d).challengeNamespace, "certificates")
        # the Order's event came before the Challenge's: no GET either
        self.assertEqual([c.verb for c in self.calls()], ["list"])
        self.assertEqual(len(self.resolver._keyWaiters), 0)

    def test_stopAbandonsPendingLookups(self):
        """Stopping the resolver cancels lookups waiting in their grace period or on
        a fallback LIST, leaving no timers behind."""
        self.start()
        self.client.lagging = True
        waiting = self.resolver.resolve(buildChain().addTo(self.store).request(
            resourceNamespace="cert-manager"))
        self.client.hang = True
        listing = self.resolver.resolve(buildChain(certificateName="other").addTo(
            self.store).request(resourceNamespace="cert-manager"))
        self.assertNoResult(waiting)
        self.assertNoResult(listing)
        self.successResultOf(defer.maybeDeferred(self.resolver.stopService))
        self.failureResultOf(waiting)
        self.failureResultOf(listing)
        self.assertEqual((len(self.resolver._keyWaiters), len(self.resolver._lists)), (0, 0))
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_deliveredDuringNamespaceList(self):
        """The watch event arrives while the namespace LIST is in flight."""
        self.start()
        self.client.lagging = True
        chain = buildChain().addTo(self.store)
        self.client.hang = True
        d = self.resolver.resolve(chain.request(resourceNamespace="cert-manager"))
        self.client.flush()
        self.client.hang = False
        self.client.release()
        self.assertEqual(self.successResultOf(d).challengeNamespace, "certificates")
        self.assertEqual([c.verb for c in self.calls()], ["list"])

    def test_graceIgnoresOtherChallenges(self):
        self.start()
        self.client.lagging = True
        chain = buildChain().addTo(self.store)
        self.client.held = []   # its event is late beyond the grace period
        self.client.lagging = False
        d = self.resolver.resolve(chain.request(resourceNamespace="cert-manager"))
        buildChain(namespace="unrelated").addTo(self.store)
        self.assertEqual(len(self.resolver.informer), 1)
        self.assertNoResult(d)
        self.clock.advance(self.resolver.watchGrace)
        self.assertEqual(self.successResultOf(d).challengeNamespace, "certificates")
        self.assertEqual([c.verb for c in self.calls()], ["list", "list", "get"])

    def test_noGraceBeforeSync(self):
        """A cache that has not synced delivers nothing worth waiting for."""
        chain = buildChain().addTo(self.store)
        self.mark = 0
        d = self.resolver.resolve(chain.request(resourceNamespace="cert-manager"))
        self.assertEqual(self.successResultOf(d).challengeNamespace, "certificates")

    def test_createdAfterSyncClusterIssuer(self):
        self.start()
        self.client.lagging = True
        chain = buildChain().addTo(self.store)
        ctx = self.resolve(chain.request(resourceNamespace="cert-manager"))
        self.assertEqual(ctx.challengeNamespace, "certificates")
        self.assertEqual([c.verb for c in self.calls()], ["list", "list", "get"])
        self.assertEqual(self.calls()[1].path, CHALLENGES_PATH)

    def test_fallbackBeforeSync(self):
        """Requests arriving while the cache is still loading use the fallback."""
        chain = buildChain().addTo(self.store)
        self.mark = 0
        ctx = self.resolve(chain.request())
        self.assertEqual(ctx.projectUUID, PROJECT_UUID)
        self.assertEqual([c.verb for c in self.calls()], ["list", "get"])

    def test_trimChallenge(self):
        config = {"valkey": {"addr": "x:6379"}, "uiHints": {"a": "b" * 1000}}
        chain = buildChain(config=config)
        challenge = chain.challenges[0]
        challenge["metadata"]["managedFields"] = [
            {"manager": "cert-manager-challenges", "operation": "Update",
             "time": "2024-05-01T10:00:00Z", "fieldsV1": {"f:spec": {}}},
            {"manager": "cert-manager-challenges", "operation": "Update", "subresource": "status",
             "time": "2024-05-01T10:00:05Z", "fieldsV1": {"f:status": {}}}]
        challenge["status"]["reason"] = "Waiting for DNS-01 challenge propagation"
        trimmed = trimChallenge(challenge)
        self.assertEqual(set(trimmed), {"metadata", "spec", "status"})
        self.assertEqual(trimmed["spec"]["solver"], {"dns01": {"webhook": {
            "groupName": GROUP, "solverName": SOLVER, "config": config}}})
        self.assertEqual(set(trimmed["spec"]), {"key", "dnsName", "wildcard", "issuerRef",
                                                "solver"})
        self.assertEqual(trimmed["status"], {
            "state": "pending", "reason": "Waiting for DNS-01 challenge propagation",
            "processing": True, "presented": False, "writtenAt": "2024-05-01T10:00:05Z"})
        owner = challenge["metadata"]["ownerReferences"][0]
        self.assertEqual(trimmed["metadata"]["ownerReferences"], [
            {key: owner[key] for key in ("apiVersion", "kind", "name", "uid", "controller")}])
        self.assertEqual(trimmed["spec"]["issuerRef"], challenge["spec"]["issuerRef"])
        # Challenges of one issuer share one copy of its config
        other = trimChallenge(buildChain(namespace="x", config=dict(config)).challenges[0])
        self.assertIs(other["spec"]["issuerRef"], trimmed["spec"]["issuerRef"])
        self.assertIs(other["spec"]["solver"], trimmed["spec"]["solver"])
        self.assertNotIn("finalizers", trimmed["metadata"])
        self.assertNotIn("managedFields", trimmed["metadata"])
        # a Challenge of another kind of solver keeps neither status nor config
        http = dict(challenge, spec=dict(challenge["spec"], solver={"http01": {"ingress": {}}}))
        self.assertEqual(set(trimChallenge(http)), {"metadata", "spec"})


class OwnerChainTests(ResolverCase):

    def orderPath(self, chain):
        return "/apis/acme.cert-manager.io/v1/namespaces/%s/orders/%s" % (
            chain.order["metadata"]["namespace"], chain.order["metadata"]["name"])

    def test_labelsOnOrderStopEarly(self):
        """The labelled Order comes from the Order cache: no round trip at all."""
        chain = buildChain()
        self.start(chain)
        ctx = self.resolve(chain.request())
        self.assertEqual((ctx.certificateName, ctx.orderName, ctx.certificateRevision,
                          ctx.displayName), ("ad-shop-example-com",
                                             chain.order["metadata"]["name"], "1", "Shop"))
        self.assertEqual(self.calls(), [])

    def test_orderNotYetDeliveredIsFetched(self):
        chain = buildChain()
        self.start()
        self.client.lagging = True
        chain.addTo(self.store)
        self.client.flush("Challenge")  # its Order's event is still on the way
        self.resolve(chain.request())
        self.assertEqual([(c.verb, c.path) for c in self.calls("get")],
                         [("get", self.orderPath(chain))])

    def test_unlabelledOrderIsFetched(self):
        """Orders without the project label are not cached (label selector on the server)."""
        chain = buildChain(labels={})
        self.start(chain)
        self.assertEqual(len(self.resolver.orders.informer), 0)
        self.assertEqual({c.params.get("labelSelector") for c in self.fake.calls
                          if "/orders" in c.path}, {PROJECT_LABEL})
        ctx = self.resolve(chain.request(), default=DEFAULT_PROJECT)
        self.assertEqual(ctx.projectUUID, DEFAULT_PROJECT)
        self.assertEqual([c.path.split("/")[-2] for c in self.calls("get")],
                         ["orders", "certificaterequests", "certificates"])

    def test_finishedOrdersAreNotCached(self):
        """Only Orders being issued are cached; a CleanUp for a finished one GETs it."""
        done = buildChain(namespace="done")
        done.order["status"]["state"] = "valid"
        pending = buildChain(namespace="pending")
        self.start(done, pending)
        self.assertEqual([o.namespace for o in self.resolver.orders.informer.list()], ["pending"])
        self.store.updateStatus("acme.cert-manager.io/v1", "Order", "pending",
                                pending.order["metadata"]["name"], {"state": "valid"})
        self.assertEqual(len(self.resolver.orders.informer), 0)
        self.assertEqual(self.resolve(done.request(action=CLEANUP)).projectUUID, PROJECT_UUID)
        self.assertEqual([c.path for c in self.calls("get")], [self.orderPath(done)])

    def test_trimOrderKeepsWhatTheWalkReads(self):
        chain = buildChain()
        meta = chain.order["metadata"]
        meta["labels"]["app.kubernetes.io/name"] = "shop"
        meta["managedFields"] = [{"manager": "cert-manager"}]
        meta["resourceVersion"] = "42"
        trimmed = trimOrder(chain.order).asObject()
        self.assertEqual(set(trimmed), {"metadata"})
        self.assertEqual({k: v for k, v in trimmed["metadata"].items()
                          if k not in ("labels", "annotations")},
                         {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion")})
        self.assertEqual(trimmed["metadata"]["labels"], kibashipLabels())
        self.assertEqual(trimmed["metadata"]["annotations"], {
            CERTIFICATE_NAME_ANNOTATION: "ad-shop-example-com",
            "cert-manager.io/certificate-revision": "1", "platform.kibaship.com/name": "Shop"})
        meta["labels"][PROJECT_LABEL] = "broken"  # the walk goes on to the request
        self.assertEqual(trimOrder(chain.order).asObject()["metadata"]["ownerReferences"], [{
            "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
            "name": chain.certificateRequest["metadata"]["name"],
            "uid": chain.certificateRequest["metadata"]["uid"], "controller": True}])
        chain.order["status"]["state"] = "errored"
        self.assertIsNone(trimOrder(chain.order))

    def test_cachedOrderWithOtherUIDIsFetched(self):
        """The cache holds an Order of that name but not the Challenge's: the GET
        decides (here the API has the Challenge's Order: the cache was stale)."""
        old = buildChain()
        self.start(old)
        self.client.lagging = True
        old.removeFrom(self.store)
        chain = buildChain().addTo(self.store)  # same names, new UIDs
        self.client.flush("Challenge")  # the Order cache still holds the old Order
        self.assertEqual(self.resolver.orders.lookup(
            "certificates", old.order["metadata"]["name"], old.order["metadata"]["uid"])["metadata"]
            ["uid"], old.order["metadata"]["uid"])
        self.assertEqual(self.resolve(chain.request()).projectUUID, PROJECT_UUID)
        self.assertEqual([c.path for c in self.calls("get")], [self.orderPath(chain)])

    def test_cachedAndFetchedOrdersWalkAlike(self):
        """The trimmed Order leads to the same context as the whole one."""
        shapes = {"labelled": buildChain(namespace="a"),
                  "invalid on Order": buildChain(namespace="b"),
                  "annotation only": buildChain(namespace="c")}
        for obj in (shapes["invalid on Order"].order, shapes["invalid on Order"].certificateRequest):
            obj["metadata"]["labels"][PROJECT_LABEL] = "broken"
        del shapes["annotation only"].order["metadata"]["ownerReferences"]
        self.start(*shapes.values())
        self.assertEqual(len(self.resolver.orders.informer), 3)
        cached = {name: self.resolve(chain.request()) for name, chain in shapes.items()}
        walker = ChainWalker(self.fake)
        for name, chain in shapes.items():
            fetched = self.successResultOf(defer.ensureDeferred(walker.walk(
                self.store.getObject("acme.cert-manager.io/v1", "Challenge", *(
                    chain.challenges[0]["metadata"][k] for k in ("namespace", "name"))))))
            self.assertEqual(cached[name], fetched.context(), name)

    def test_labelsOnlyOnCertificate(self):
        chain = buildChain(copyLabels=False)
        self.start(chain)
        ctx = self.resolve(chain.request())
        self.assertEqual((ctx.projectUUID, ctx.slug), (PROJECT_UUID, "shop"))
        self.assertEqual([c.path.split("/")[-2] for c in self.calls("get")],
                         ["orders", "certificaterequests", "certificates"])

    def test_cacheHitCostsNothing(self):
        chain = buildChain()
        self.start(chain)
        first = self.resolve(chain.request())
        mark = len(self.fake.calls)
        self.assertEqual(self.resolve(chain.request(action=CLEANUP)), first)
        self.assertEqual(len(self.fake.calls), mark)
        self.assertEqual(self.resolver.cachedChains, 1)

    def test_chainForgottenWhenChallengeDeleted(self):
        chain = buildChain()
        self.start(chain)
        self.resolve(chain.request())
        self.assertEqual(self.resolver.cachedChains, 1)
        self.store.delete(chain.challenges[0])
        self.assertEqual(self.resolver.cachedChains, 0)
        self.assertEqual(metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_cache_objects", {"cache": "challenge_chains"}), 0)
        self.fails(chain.request(), ChallengeGone)

    def test_cachedChainsShareWhatTheyCan(self):
        """A cached chain keeps its own only what differs per Challenge: the
        issuer is one shared object, names are the cached objects' strings."""
        a, b = buildChain(namespace="a"), buildChain(namespace="b")
        self.start(a, b)
        self.resolve(a.request())
        self.resolve(b.request())
        chainA, chainB = (self.resolver._chains[c.challenges[0]["metadata"]["uid"]] for c in (a, b))
        self.assertIs(chainA.issuerRef, chainB.issuerRef)
        cachedOrder = self.resolver.orders.informer.get("a", a.order["metadata"]["name"])
        self.assertIs(chainA.labelsName, cachedOrder.name)
        self.assertEqual(chainA.labelsFrom, "Order a/%s" % a.order["metadata"]["name"])

    def test_chainCacheBounded(self):
        self.resolver = ChallengeResolver(self.client, self.clock, GROUP, SOLVER,
                                          maxCachedChains=2)
        chains = [buildChain(namespace="ns%d" % i) for i in range(3)]
        self.start(*chains)
        for chain in chains:
            self.resolve(chain.request())
        self.assertEqual(self.resolver.cachedChains, 2)

    def test_noOwnerReference(self):
        chain = buildChain()
        del chain.challenges[0]["metadata"]["ownerReferences"]
        self.start(chain)
        before = failureCount("owner_missing")
        error = self.fails(chain.request())
        self.assertFalse(error.gone)
        self.assertEqual(error.reason, "owner_missing")
        self.assertIn("Challenge certificates/%s has no controller ownerReference to an Order"
                      % chain.challenges[0]["metadata"]["name"], error.message)
        self.assertEqual(failureCount("owner_missing"), before + 1)
        self.assertEqual(self.calls(), [])

    def test_nonControllerOwnerIgnored(self):
        chain = buildChain()
        chain.challenges[0]["metadata"]["ownerReferences"][0]["controller"] = False
        self.start(chain)
        self.assertEqual(self.fails(chain.request()).reason, "owner_missing")

    def test_orderWithoutOwnerOrAnnotation(self):
        chain = buildChain(copyLabels=False)
        del chain.order["metadata"]["ownerReferences"]
        del chain.order["metadata"]["annotations"]
        self.start(chain)
        error = self.fails(chain.request())
        self.assertEqual(error.reason, "owner_missing")
        self.assertIn("Order certificates/%s has no controller ownerReference to a "
                      "CertificateRequest and no %s annotation"
                      % (chain.order["metadata"]["name"], CERTIFICATE_NAME_ANNOTATION),
                      error.message)

    def test_orderAnnotationFallback(self):
        chain = buildChain(copyLabels=False)
        del chain.order["metadata"]["ownerReferences"]
        self.start(chain)
        ctx = self.resolve(chain.request())
        self.assertEqual(ctx.certificateName, "ad-shop-example-com")
        self.assertEqual([c.path.split("/")[-2] for c in self.calls("get")],
                         ["orders", "certificates"])

    def test_requestWithoutCertificateOwner(self):
        """A CertificateRequest with no Certificate ownerReference: the
        ``cert-manager.io/certificate-name`` annotation leads on."""
        chain = buildChain(copyLabels=False)
        del chain.certificateRequest["metadata"]["ownerReferences"]
        self.start(chain)
        ctx = self.resolve(chain.request())
        self.assertEqual((ctx.projectUUID, ctx.certificateName),
                         (PROJECT_UUID, "ad-shop-example-com"))
        self.assertEqual(self.calls("get")[-1].path,
                         "/apis/cert-manager.io/v1/namespaces/certificates/certificates/"
                         "ad-shop-example-com")

    def test_handMadeRequest(self):
        """No Certificate at all: the CertificateRequest's labels count."""
        chain = buildChain(withCertificate=False)
        self.start(chain)
        ctx = self.resolve(chain.request())
        self.assertEqual((ctx.projectUUID, ctx.certificateName, ctx.certificateNamespace),
                         (PROJECT_UUID, None, None))
        chain2 = buildChain(withCertificate=False, labels={}, namespace="other")
        chain2.addTo(self.store)
        error = self.fails(chain2.request())
        self.assertIn("CertificateRequest other/ad-shop-example-com-1 has no label", error.message)


class LabelTests(ResolverCase):

    def test_missingProjectLabel(self):
        chain = buildChain(labels={}, displayName=None)
        self.start(chain)
        before = failureCount("label_missing")
        error = self.fails(chain.request())
        self.assertEqual(error.reason, "label_missing")
        self.assertFalse(error.gone)
        self.assertTrue(error.message.startswith(
            "Certificate certificates/ad-shop-example-com has no label "
            "platform.kibaship.com/project-uuid; the Kibaship operator sets it on "
            "ApplicationDomain certificates"), error.message)
        self.assertIn("defaultProjectUUID", error.message)
        self.assertEqual(failureCount("label_missing"), before + 1)

    def test_invalidProjectLabel(self):
        chain = buildChain(labels=kibashipLabels(projectUUID=PROJECT_UUID.upper()))
        self.start(chain)
        for default in (None, DEFAULT_PROJECT):
            error = self.fails(chain.request(), default=default)
            self.assertEqual(error.reason, "label_invalid")
            self.assertIn("Certificate certificates/ad-shop-example-com has label %s=%r"
                          % (PROJECT_LABEL, PROJECT_UUID.upper()), error.message)

    def test_invalidOnOrderFixedOnCertificate(self):
        """Stale copies on the Order do not win over a corrected Certificate."""
        chain = buildChain()
        chain.order["metadata"]["labels"][PROJECT_LABEL] = "broken"
        chain.certificateRequest["metadata"]["labels"][PROJECT_LABEL] = "broken"
        self.start(chain)
        self.assertEqual(self.resolve(chain.request()).projectUUID, PROJECT_UUID)

    def test_defaultProjectUUID(self):
        chain = buildChain(labels={})
        self.start(chain)
        ctx = self.resolve(chain.request(), default=DEFAULT_PROJECT)
        self.assertEqual((ctx.projectUUID, ctx.projectFromDefault), (DEFAULT_PROJECT, True))

    def test_invalidDefaultProjectUUID(self):
        chain = buildChain(labels={})
        self.start(chain)
        error = self.fails(chain.request(), default="Not-A-UUID")
        self.assertEqual(error.reason, "default_invalid")
        self.assertIn("defaultProjectUUID 'Not-A-UUID' is not a lower-case UUID", error.message)

    def test_malformedOptionalLabelWarnsOnce(self):
        """A bad slug is dropped with one warning, not one per retry."""
        chain = buildChain(labels=kibashipLabels(slug="Bad_Slug"))
        self.start(chain)
        logs = LogCapture(self)
        for _ in range(3):
            ctx = self.resolve(chain.request())
        self.assertEqual((ctx.projectUUID, ctx.slug), (PROJECT_UUID, None))
        self.assertEqual([e["value"] for e in logs.warnings()], ["Bad_Slug"])
        self.assertTrue(logs.warnings()[0]["where"].startswith("Order certificates/"))

    def test_labelAddedLaterIsPickedUp(self):
        """Unlabelled chains are not cached: fixing the Certificate helps the
        next retry."""
        chain = buildChain(labels={})
        self.start(chain)
        self.fails(chain.request())
        chain.certificate["metadata"]["labels"] = kibashipLabels()
        self.store.put(chain.certificate)
        self.assertEqual(self.resolve(chain.request()).projectUUID, PROJECT_UUID)
        self.assertEqual(self.resolve(chain.request(), default=DEFAULT_PROJECT).projectUUID,
                         PROJECT_UUID)


class GoneTests(ResolverCase):

    def test_orderDeleted(self):
        chain = buildChain()
        self.start(chain)
        self.store.delete(chain.order)
        error = self.fails(chain.request(action=CLEANUP), ChallengeGone)
        self.assertTrue(error.gone)
        self.assertEqual(error.reason, "gone")
        meta = chain.challenges[0]["metadata"]
        self.assertEqual(error.challenge, (meta["namespace"], meta["name"], meta["uid"]))
        self.assertIn("Order certificates/%s (owner of Challenge" % chain.order["metadata"]["name"],
                      error.message)

    def test_certificateDeletedMidChain(self):
        chain = buildChain(copyLabels=False)
        self.start(chain)
        self.store.delete(chain.certificate)
        error = self.fails(chain.request(action=CLEANUP), ChallengeGone)
        self.assertIn("Certificate certificates/ad-shop-example-com (owner of CertificateRequest",
                      error.message)

    def test_ownerRecreatedWithNewUID(self):
        chain = buildChain()
        self.start(chain)
        self.store.delete(chain.order)
        fresh = dict(chain.order, metadata=dict(chain.order["metadata"], uid="new-uid"))
        self.store.add(fresh)
        error = self.fails(chain.request(action=CLEANUP), ChallengeGone)
        self.assertIn("deleted and re-created", error.message)

    def test_cleanupAfterPresentUsesCache(self):
        """cert-manager deletes Orders and requests while the Challenge's
        finalizer holds; CleanUp still resolves from the cached chain."""
        chain = buildChain()
        self.start(chain)
        present = self.resolve(chain.request())
        for obj in (chain.order, chain.certificateRequest, chain.certificate):
            self.store.delete(obj)
        self.assertEqual(self.resolve(chain.request(action=CLEANUP)), present)

    def test_challengeGoneForCleanup(self):
        chain = buildChain()
        self.start(chain)
        self.store.delete(chain.challenges[0])
        error = self.fails(chain.request(action=CLEANUP), ChallengeGone)
        self.assertEqual(error.reason, "challenge_not_found")


class APIFailureTests(ResolverCase):

    def test_forbidden(self):
        chain = buildChain(copyLabels=False)  # not in the Order cache: the walk GETs it
        self.start(chain)
        self.fake.injectError(403, verb="get", path="/apis/acme.cert-manager.io/v1/namespaces/")
        error = self.fails(chain.request())
        self.assertEqual(error.reason, "forbidden")
        self.assertFalse(error.transient)
        self.assertIn("cannot read Order certificates/", error.message)
        self.assertIn("ClusterRole needs get on orders.acme.cert-manager.io", error.message)

    def test_forbiddenList(self):
        chain = buildChain()
        self.start()
        self.fake.injectError(403, verb="list")
        error = self.fails(chain.request())
        self.assertEqual(error.reason, "forbidden")
        self.assertIn("ClusterRole needs list on challenges.acme.cert-manager.io", error.message)

    def test_unavailableIsTransient(self):
        chain = buildChain(copyLabels=False)
        self.start(chain)
        self.fake.injectError(503, verb="get")
        error = self.fails(chain.request(), TransientResolutionError)
        self.assertEqual(error.reason, "api_error")
        self.assertTrue(error.transient)
        self.assertEqual(self.resolve(chain.request()).projectUUID, PROJECT_UUID)

    def test_fallbackListFails(self):
        chain = buildChain()
        self.start()
        self.fake.injectError(500, verb="list")
        error = self.fails(chain.request(), TransientResolutionError)
        self.assertIn("listing Challenges in namespace certificates failed", error.message)

    def test_hangingGetBoundedInTime(self):
        chain = buildChain(copyLabels=False)
        self.start(chain)
        self.client.hang = True
        before = failureCount("timeout")
        timers = set(self.clock.getDelayedCalls())
        d = self.resolver.resolve(chain.request())
        self.assertNoResult(d)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, TransientResolutionError).value
        self.assertEqual(error.reason, "timeout")
        self.assertIn("took longer than 10s", error.message)
        self.assertEqual([verb for verb, _ in self.client.cancelled], ["get"])
        self.assertEqual(failureCount("timeout"), before + 1)
        self.assertEqual(set(self.clock.getDelayedCalls()), timers)

    def test_hangingFallbackBoundedInTime(self):
        self.resolver = ChallengeResolver(self.client, self.clock, GROUP, SOLVER,
                                          lookupTimeout=3.0)
        self.start()
        self.client.hang = True
        d = self.resolver.resolve(buildChain().request())
        self.clock.advance(3)
        self.failureResultOf(d, TransientResolutionError)
        self.assertEqual([verb for verb, _ in self.client.cancelled], ["list"])

    def test_concurrentMissesShareOneList(self):
        """A burst of Challenges the watch has not delivered: one LIST per path."""
        self.start()
        self.client.lagging = True
        a, b = buildChain(namespace="x"), buildChain(namespace="y")
        a.addTo(self.store)
        b.addTo(self.store)
        self.client.hang = True
        da = self.resolver.resolve(a.request(resourceNamespace="cert-manager"))
        db = self.resolver.resolve(b.request(resourceNamespace="cert-manager"))
        for expected in (["list"], ["list"], ["get", "get"]):
            self.assertEqual([verb for verb, _, _, _ in self.client.pending], expected)
            self.client.release()
            self.clock.advance(self.resolver.watchGrace)
        self.assertEqual(self.successResultOf(da).challengeNamespace, "x")
        self.assertEqual(self.successResultOf(db).challengeNamespace, "y")
        self.assertEqual([c.path for c in self.calls("list")], [
            "/apis/acme.cert-manager.io/v1/namespaces/cert-manager/challenges", CHALLENGES_PATH])

    def test_oneDeadlineDoesNotCancelOthersList(self):
        self.start()
        self.client.lagging = True
        chain = buildChain().addTo(self.store)
        self.client.hang = True
        first = self.resolver.resolve(chain.request())
        self.clock.advance(5)
        second = self.resolver.resolve(chain.request())
        self.clock.advance(5)
        self.failureResultOf(first, TransientResolutionError)
        self.assertEqual(self.client.cancelled, [])
        self.client.hang = False
        self.client.release()
        self.assertEqual(self.successResultOf(second).projectUUID, PROJECT_UUID)

    def test_sharedListCancelledWhenNobodyWaits(self):
        self.start()
        self.client.hang = True
        first = self.resolver.resolve(buildChain().request())
        second = self.resolver.resolve(buildChain().request())
        self.clock.advance(10)
        self.failureResultOf(first, TransientResolutionError)
        self.failureResultOf(second, TransientResolutionError)
        self.assertEqual(self.client.cancelled, [
            ("list", "/apis/acme.cert-manager.io/v1/namespaces/certificates/challenges")])
        self.assertEqual(len(self.resolver._lists), 0)

    def test_deadlineDuringGrace(self):
        self.resolver = ChallengeResolver(self.client, self.clock, GROUP, SOLVER,
                                          lookupTimeout=0.5, watchGrace=1.0)
        self.start()
        timers = set(self.clock.getDelayedCalls())
        d = self.resolver.resolve(buildChain().request(resourceNamespace="cert-manager"))
        self.clock.advance(0.5)
        self.assertEqual(self.failureResultOf(d, TransientResolutionError).value.reason,
                         "timeout")
        self.assertEqual(len(self.resolver._keyWaiters), 0)
        self.assertEqual(set(self.clock.getDelayedCalls()), timers)

    def test_noTimerLeftOnSuccess(self):
        chain = buildChain()
        self.start(chain)
        timers = set(self.clock.getDelayedCalls())
        self.resolve(chain.request())
        self.assertEqual(set(self.clock.getDelayedCalls()), timers)
