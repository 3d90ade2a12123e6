"""Integration tests: the resolver over the real KubeClient and the TLS
stand-in API server (real reactor, real watch stream).

The unit tests (test_resolve.py) cover every branch against the fake
client; these check the same scenarios survive the wire: paths, List and
Status shapes, 403 bodies, watch delivery and a hanging server.
"""
import functools

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from kibaship_dns01.challenge import CLEANUP
from kibaship_dns01.kube.client import KubeClient
from kibaship_dns01.resolve import (
    CHALLENGES_PATH, ChallengeGone, ChallengeResolver, ResolutionError,
    TransientResolutionError)
from kibaship_dns01.testing.certmanager import (
    PROJECT_UUID, buildChain, kibashipLabels)
from kibaship_dns01.testing.kubeapi import StandInAPIServer

GROUP, SOLVER = "dns.kibaship.com", "kibaship"
DEFAULT_PROJECT = "5d4c3b2a-1908-4776-8554-433221100fff"
OTHER_PROJECT = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"


def async_test(fn):
    """Run an ``async def`` test method as a Deferred (trial and pytest)."""
    @functools.wraps(fn)
    def wrapper(self):
        return defer.ensureDeferred(fn(self))
    return wrapper


async def eventually(predicate, what, attempts=500, interval=0.01):
    """Poll ``predicate`` (bounded: ``attempts * interval`` seconds at most)."""
    for _ in range(attempts):
        if predicate():
            return
        await task.deferLater(reactor, interval, lambda: None)
    raise AssertionError("timed out waiting for " + what)


class StandInCase(TestCase):

    lookupTimeout = 10.0

    def setUp(self):
        self.server = StandInAPIServer(reactor=reactor)
        self.store = self.server.store
        self.server.start()
        self.addCleanup(self.server.stop)
        self.addCleanup(lambda: defer.ensureDeferred(eventually(
            lambda: self.server.connectionCount == 0, "the client's connections to close")))
        self.client = KubeClient(self.server.clientConfig(), reactor, requestTimeout=5.0)
        self.addCleanup(self.client.close)
        self.resolver = ChallengeResolver(self.client, reactor, GROUP, SOLVER,
                                          lookupTimeout=self.lookupTimeout)

    async def start(self, *chains):
        for chain in chains:
            chain.addTo(self.store)
        self.resolver.startService()
        self.addCleanup(self.resolver.stopService)
        await self.resolver.informer.whenSynced()
        await self.resolver.orders.informer.whenSynced()
        await eventually(lambda: self.store.watchCount == 2, "the Challenge and Order watches")
        self.mark = len(self.store.requests)

    def requests(self, verb=None):
        return [(v, p) for v, p, _ in self.store.requests[self.mark:]
                if verb is None or v == verb]

    async def fails(self, request, errorType=ResolutionError, default=None):
        try:
            await self.resolver.resolve(request, default)
        except errorType as e:
            return e
        self.fail("resolve did not fail with %s" % (errorType.__name__,))


class ResolveOverTheWireTests(StandInCase):

    @async_test
    async def test_issuerNamespaceMatch(self):
        issuer = {"name": "le", "kind": "Issuer", "group": "cert-manager.io"}
        chain = buildChain(namespace="shop", certificateName="web", issuerRef=issuer)
        await self.start(chain)
        ctx = await self.resolver.resolve(chain.request(resourceNamespace="shop"))
        self.assertEqual((ctx.projectUUID, ctx.certificateNamespace, ctx.certificateName,
                          ctx.issuerRef.kind, ctx.challengeName),
                         (PROJECT_UUID, "shop", "web", "Issuer",
                          chain.challenges[0]["metadata"]["name"]))
        self.assertEqual(self.requests(), [], "the labelled Order comes from the Order cache")

    @async_test
    async def test_clusterIssuerOtherNamespace(self):
        chain = buildChain()
        await self.start(chain)
        ctx = await self.resolver.resolve(chain.request(resourceNamespace="cert-manager"))
        self.assertEqual((ctx.challengeNamespace, ctx.issuerRef.name),
                         ("certificates", "certmanager-acme-issuer"))
        self.assertEqual(self.requests("list"), [])

    @async_test
    async def test_apexAndWildcard(self):
        chain = buildChain(dnsNames=("example.com", "*.example.com"))
        await self.start(chain)
        apex = await self.resolver.resolve(chain.request(chain.challenge("example.com")))
        wild = await self.resolver.resolve(chain.request(chain.challenge("example.com", True)))
        self.assertEqual((apex.wildcard, wild.wildcard), (False, True))
        self.assertNotEqual(apex.challengeName, wild.challengeName)
        self.assertEqual(apex.certificateName, wild.certificateName)

    @async_test
    async def test_createdAfterSyncIssuer(self):
        """Resolved in the same reactor turn as the create: the watch event
        cannot have arrived, so the LIST of resourceNamespace finds it."""
        await self.start()
        chain = buildChain(namespace="shop").addTo(self.store)
        ctx = await self.resolver.resolve(chain.request())
        self.assertEqual(ctx.projectUUID, PROJECT_UUID)
        self.assertEqual(self.requests("list"), [
            ("list", "/apis/acme.cert-manager.io/v1/namespaces/shop/challenges")])

    @async_test
    async def test_createdAfterSyncClusterIssuer(self):
        """ClusterIssuer: the namespace LIST misses, the watch then delivers
        the Challenge within the grace period: no cluster-wide LIST."""
        await self.start()
        chain = buildChain().addTo(self.store)
        ctx = await self.resolver.resolve(chain.request(resourceNamespace="cert-manager"))
        self.assertEqual(ctx.challengeNamespace, "certificates")
        self.assertEqual(self.requests("list"), [
            ("list", "/apis/acme.cert-manager.io/v1/namespaces/cert-manager/challenges")])

    @async_test
    async def test_watchDownFallsBackToClusterList(self):
        """No watch event within the grace period: one cluster-wide LIST."""
        await self.start()
        await self.resolver.informer.stopService()
        chain = buildChain().addTo(self.store)
        ctx = await self.resolver.resolve(chain.request(resourceNamespace="cert-manager"))
        self.assertEqual(ctx.challengeNamespace, "certificates")
        self.assertEqual(self.requests("list"), [
            ("list", "/apis/acme.cert-manager.io/v1/namespaces/cert-manager/challenges"),
            ("list", CHALLENGES_PATH)])

    @async_test
    async def test_labelsOnOrderNoRoundTrip(self):
        """The Order cache's watch is restricted to labelled Orders on the server."""
        chain = buildChain()
        await self.start(chain, buildChain(namespace="plain", labels={}))
        self.assertEqual([o.namespace for o in self.resolver.orders.informer.list()],
                         ["certificates"])
        self.assertEqual({p.get("labelSelector") for v, path, p in self.store.requests
                          if "/orders" in path}, {"platform.kibaship.com/project-uuid"})
        await self.resolver.resolve(chain.request())
        await self.resolver.resolve(chain.request(action=CLEANUP))
        self.assertEqual(self.requests(), [])

    @async_test
    async def test_orderNotDeliveredYetIsFetched(self):
        """A Challenge whose Order the watch has not delivered: one GET, as before."""
        await self.start()
        self.server.holdWatchEvents()
        chain = buildChain(namespace="shop").addTo(self.store)
        ctx = await self.resolver.resolve(chain.request())
        self.server.releaseWatchEvents()
        self.assertEqual(ctx.projectUUID, PROJECT_UUID)
        self.assertEqual([p.split("/")[-2] for _, p in self.requests("get")], ["orders"])

    @async_test
    async def test_labelsOnlyOnCertificate(self):
        chain = buildChain(copyLabels=False)
        await self.start(chain)
        ctx = await self.resolver.resolve(chain.request())
        self.assertEqual((ctx.projectUUID, ctx.slug), (PROJECT_UUID, "shop"))
        self.assertEqual([p.split("/")[-2] for _, p in self.requests("get")],
                         ["orders", "certificaterequests", "certificates"])

    @async_test
    async def test_brokenOwnerReferences(self):
        chain = buildChain()
        chain.challenges[0]["metadata"]["ownerReferences"][0]["kind"] = "Certificate"
        await self.start(chain)
        error = await self.fails(chain.request())
        self.assertEqual(error.reason, "owner_missing")

    @async_test
    async def test_requestWithoutCertificateOwner(self):
        chain = buildChain(copyLabels=False)
        del chain.certificateRequest["metadata"]["ownerReferences"]
        await self.start(chain)
        ctx = await self.resolver.resolve(chain.request())
        self.assertEqual(ctx.certificateName, "ad-shop-example-com")

    @async_test
    async def test_missingAndInvalidLabels(self):
        missing = buildChain(namespace="a", labels={})
        invalid = buildChain(namespace="b", labels=kibashipLabels(projectUUID="Not-A-UUID"))
        await self.start(missing, invalid)
        error = await self.fails(missing.request())
        self.assertTrue(error.message.startswith(
            "Certificate a/ad-shop-example-com has no label platform.kibaship.com/project-uuid;"
            " the Kibaship operator sets it on ApplicationDomain certificates"))
        error = await self.fails(invalid.request(), default=DEFAULT_PROJECT)
        self.assertEqual(error.reason, "label_invalid")
        ctx = await self.resolver.resolve(missing.request(), DEFAULT_PROJECT)
        self.assertEqual((ctx.projectUUID, ctx.projectFromDefault), (DEFAULT_PROJECT, True))

    @async_test
    async def test_forbiddenOwner(self):
        chain = buildChain(copyLabels=False)
        await self.start(chain)
        self.server.setAuthorizer(lambda user, verb, resource, ns, name:
                                  resource.plural != "certificates")
        error = await self.fails(chain.request())
        self.assertEqual(error.reason, "forbidden")
        self.assertIn('cannot get resource "certificates" in API group "cert-manager.io"',
                      error.message)


class CleanUpOverTheWireTests(StandInCase):

    @async_test
    async def test_ownersDeletedAfterPresent(self):
        chain = buildChain()
        await self.start(chain)
        present = await self.resolver.resolve(chain.request())
        for obj in (chain.order, chain.certificateRequest, chain.certificate):
            self.store.delete(obj)
        self.assertEqual(await self.resolver.resolve(chain.request(action=CLEANUP)), present)

    @async_test
    async def test_orderGoneBeforeFirstLookup(self):
        chain = buildChain()
        await self.start(chain)
        self.store.delete(chain.order)
        await eventually(lambda: len(self.resolver.orders.informer) == 0,
                         "the Order's DELETED event")
        error = await self.fails(chain.request(action=CLEANUP), ChallengeGone)
        self.assertTrue(error.gone)
        self.assertEqual(error.challenge[1], chain.challenges[0]["metadata"]["name"])

    @async_test
    async def test_challengeDeletedDropsChain(self):
        chain = buildChain()
        await self.start(chain)
        await self.resolver.resolve(chain.request())
        self.assertEqual(self.resolver.cachedChains, 1)
        self.store.delete(chain.challenges[0])
        await eventually(lambda: self.resolver.cachedChains == 0, "the DELETED event")
        error = await self.fails(chain.request(action=CLEANUP), ChallengeGone)
        self.assertEqual(error.reason, "challenge_not_found")


class HangingServerTests(StandInCase):

    lookupTimeout = 2.0  # room for the GET to reach the server on a loaded machine

    @async_test
    async def test_lookupBounded(self):
        chain = buildChain(copyLabels=False)  # not in the Order cache: the walk GETs it
        await self.start(chain)
        self.server.hang = True
        error = await self.fails(chain.request(), TransientResolutionError)
        self.assertEqual(error.reason, "timeout")
        self.assertEqual([r.path.decode().split("/")[-2] for r in self.server.hungRequests],
                         ["orders"])
        self.server.hang = False
        other = buildChain(namespace="x", labels=kibashipLabels(projectUUID=OTHER_PROJECT))
        other.addTo(self.store)
        await eventually(lambda: len(self.resolver.informer) == 2, "the watch")
        self.assertEqual((await self.resolver.resolve(other.request())).projectUUID,
                         OTHER_PROJECT)
