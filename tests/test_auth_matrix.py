"""The issue's matrix over real TLS: the daemon's site, the real authenticator and
authorizer, the real Kubernetes client, and the stand-in API server.

Every row asserts the HTTP status the caller sees and, where an identity
reaches the authorizer, the SubjectAccessReview the stand-in received (the
observable proof of who the daemon thought was calling).  The auth components
run on a fake clock (certificate validity is judged at its time, caches
expire when the test says); the network runs on the real reactor.
"""
import datetime
import time

from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.internet.testing import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from kibaship_dns01.testing.polling import pollUntil
from kibaship_dns01.auth.authconfig import makeAuthenticationConfigMap, tlsClientCAListener
from kibaship_dns01.auth.factory import buildAuth
from kibaship_dns01.auth.peer import PeerCertificates
from kibaship_dns01.auth.x509verify import verifyClientChain
from kibaship_dns01.kube.client import KubeClient
from kibaship_dns01.testing import httpclient, pki
from kibaship_dns01.testing.fakesolver import RecordingSolver
from kibaship_dns01.testing.kubeapi import StandInAPIServer
from tests.support import GROUP, SOLVER, SOLVER_PATH, startTLSSite

NOW = datetime.datetime.now(datetime.timezone.utc)
TOKEN = "cert-manager-token"
CERT_MANAGER = "system:serviceaccount:cert-manager:cert-manager"


def waitFor(predicate, what, timeout=10.0):
    return pollUntil(reactor, predicate, timeout, interval=0.02, what=what)


@implementer(IHandshakeListener)
class _CANames(Protocol):
    """Reads the CA names the server put in its CertificateRequest, then hangs up."""

    def __init__(self):
        self.names = []
        self.lost = defer.Deferred()

    def handshakeCompleted(self):
        names = self.transport.getHandle().get_client_ca_list(as_cryptography=True)
        self.names = [n.rfc4514_string() for n in names]
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.lost.callback(None)


class MatrixTests(TestCase):
    async def setUpAsync(self):
        self.frontProxyCA = pki.makeCA("front-proxy-ca")
        self.clientCA = pki.makeCA("kubernetes-client-ca")
        self.api = StandInAPIServer(reactor=reactor)
        await self.api.start()
        self.addCleanup(self.api.stop)
        self.addCleanup(self.apiConnectionsClosed)
        self.api.store.put(self.configMap(self.frontProxyCA))
        self.allowed = {CERT_MANAGER, "jane", "system:anonymous"}
        self.api.setSubjectAccessReviewHandler(
            lambda spec: {"allowed": spec.get("user") in self.allowed})
        self.api.setTokenReviewHandler(self.reviewToken)
        # the reviews are bounded by the authorizer's own (fake-clock) timeout; the client's
        # real-time bound only has to stay out of its way on a loaded machine
        self.kube = KubeClient(self.api.clientConfig(), reactor, requestTimeout=60)
        self.addCleanup(self.kube.close)
        self.clock = Clock()
        self.clock.advance(time.time())
        self.verifications = []

        def counting(chain, roots, now):
            self.verifications.append(now)
            return verifyClientChain(chain, roots, now)
        self.auth = buildAuth(self.kube, self.clock, peers=PeerCertificates(verify=counting))
        self.auth.watcher.startService()
        self.addCleanup(self.auth.watcher.stopService)
        await self.auth.watcher.whenLoaded()
        self.site = await startTLSSite(self, RecordingSolver(), self.auth.authenticator,
                                       self.auth.authorizer, readiness=[self.auth.watcher])
        self.auth.watcher.addListener(tlsClientCAListener(self.site.tls.setClientCAs))

    def setUp(self):
        return defer.ensureDeferred(self.setUpAsync())

    def apiConnectionsClosed(self):
        """The client side has closed; let the stand-in see it before it stops."""
        return (waitFor(lambda: self.api.connectionCount == 0,
                                            "the stand-in API server's connections to close"))

    async def apiDown(self):
        await self.auth.watcher.stopService()
        await self.kube.close()
        await self.apiConnectionsClosed()
        await self.api.stop()

    def configMap(self, requestHeaderCA):
        return makeAuthenticationConfigMap(requestHeaderCAPEM=requestHeaderCA.certPEM,
                                           clientCAPEM=self.clientCA.certPEM)

    @staticmethod
    def reviewToken(token):
        if token == TOKEN:
            return {"authenticated": True,
                    "user": {"username": CERT_MANAGER, "groups": ["system:serviceaccounts"]}}
        return {"authenticated": False, "error": "invalid bearer token"}

    async def call(self, path, method="GET", clientPair=None, headers=None):
        return await httpclient.request(reactor, method, self.site.url(path),
                                        caPEM=self.site.ca.certPEM, clientPair=clientPair,
                                        headers=headers)

    def lastReview(self):
        return self.api.subjectAccessReviews[-1]

    def proxyPair(self, cn="front-proxy-client", ca=None):
        return pki.clientPair(ca or self.frontProxyCA, cn)

    def assertStatus(self, response, code, reason, fragment=""):
        self.assertEqual(response.code, code, response.body)
        body = response.json()
        self.assertEqual((body["kind"], body["code"], body["reason"]), ("Status", code, reason))
        self.assertIn(fragment, body["message"])
        return body["message"]

    # --- the matrix ----------------------------------------------------------

    async def test_anonymousDecidedBySAR(self):
        response = await self.call("/apis")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.lastReview(), {
            "user": "system:anonymous", "groups": ["system:unauthenticated"],
            "nonResourceAttributes": {"path": "/apis", "verb": "get"}})
        self.allowed.discard("system:anonymous")
        response = await self.call("/version")
        self.assertEqual(self.assertStatus(response, 403, "Forbidden"),
                         'forbidden: User "system:anonymous" cannot get path "/version"')

    async def test_frontProxyHeadersTrusted(self):
        response = await self.call("/apis", clientPair=self.proxyPair(), headers={
            "X-Remote-User": ["jane"], "X-Remote-Group": ["devs", "ops"],
            "X-Remote-Extra-Acme.com%2Fproject": ["p-1"]})
        self.assertEqual(response.code, 200)
        review = self.lastReview()
        self.assertEqual(review["user"], "jane")
        self.assertEqual(review["groups"], ["devs", "ops", "system:authenticated"])
        self.assertEqual(review["extra"], {"acme.com/project": ["p-1"]})

    async def test_frontProxyCNNotAllowed(self):
        before = len(self.api.subjectAccessReviews)
        response = await self.call("/apis", clientPair=self.proxyPair("intruder"),
                                   headers={"X-Remote-User": ["jane"]})
        self.assertStatus(response, 401, "Unauthorized",
                          "x509: subject with cn=intruder is not in the allowed list")
        self.assertEqual(len(self.api.subjectAccessReviews), before)

    async def test_unknownCA(self):
        stranger = pki.makeCA("stranger")
        response = await self.call("/apis", clientPair=pki.clientPair(stranger, "mallory"))
        self.assertStatus(response, 401, "Unauthorized", "signed by unknown authority")

    async def test_expiredClientCertificate(self):
        expired = pki.clientPair(self.clientCA, "old", notBefore=NOW - datetime.timedelta(days=9),
                                 notAfter=NOW - datetime.timedelta(days=1))
        response = await self.call("/apis", clientPair=expired)
        self.assertStatus(response, 401, "Unauthorized", "has expired")

    async def test_validClientCertificate(self):
        response = await self.call("/apis", clientPair=pki.clientPair(self.clientCA, "jane",
                                                                      orgs=("devs",)))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.lastReview()["groups"], ["devs", "system:authenticated"])

    async def test_forgedHeaderWithoutCertificateIgnored(self):
        self.allowed.discard("system:anonymous")
        response = await self.call("/apis", headers={"X-Remote-User": ["jane"],
                                                     "X-Remote-Group": ["system:masters"]})
        self.assertStatus(response, 403, "Forbidden", 'User "system:anonymous"')
        self.assertEqual(self.lastReview()["user"], "system:anonymous")

    async def test_validBearerToken(self):
        response = await self.call("/apis", headers={"Authorization": ["Bearer " + TOKEN]})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.lastReview()["user"], CERT_MANAGER)
        self.assertEqual(self.api.tokenReviews, [TOKEN])

    async def test_invalidBearerToken(self):
        response = await self.call("/apis", headers={"Authorization": ["Bearer forged"]})
        self.assertStatus(response, 401, "Unauthorized", "invalid bearer token")

    async def test_sarDenyExactMessage(self):
        self.allowed.discard(CERT_MANAGER)
        response = await self.call(SOLVER_PATH, method="POST",
                                   headers={"Authorization": ["Bearer " + TOKEN],
                                            "Content-Type": ["application/json"]})
        message = self.assertStatus(response, 403, "Forbidden")
        self.assertEqual(message, (
            'kibaship.dns.kibaship.com is forbidden: User "%s" cannot create resource "kibaship" '
            'in API group "dns.kibaship.com" at the cluster scope' % CERT_MANAGER))
        self.assertEqual(self.lastReview()["resourceAttributes"], {
            "verb": "create", "group": GROUP, "version": "v1alpha1", "resource": SOLVER})

    async def test_sarUnreachableDenied(self):
        await self.apiDown()
        response = await self.call("/apis", clientPair=self.proxyPair(),
                                   headers={"X-Remote-User": ["jane"]})
        self.assertStatus(response, 503, "InternalError", "authorization could not be checked")

    async def test_sarTimeoutDenied(self):
        self.api.hang = True
        pending = defer.ensureDeferred(self.call("/apis", clientPair=self.proxyPair(),
                                                 headers={"X-Remote-User": ["jane"]}))
        await waitFor(lambda: self.api.hungRequests, "the review to reach the stand-in")
        self.clock.advance(10)
        response = await pending
        self.assertStatus(response, 503, "InternalError", "did not answer within 10s")

    async def test_mastersWithoutSAR(self):
        before = len(self.api.subjectAccessReviews)
        response = await self.call("/apis", clientPair=self.proxyPair(), headers={
            "X-Remote-User": ["system:kube-aggregator"], "X-Remote-Group": ["system:masters"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.api.subjectAccessReviews), before)

    async def test_healthWithoutCredentials(self):
        self.allowed.clear()
        for path in ("/healthz", "/livez", "/readyz"):
            response = await self.call(path)
            self.assertEqual(response.code, 200, (path, response.body))
        self.assertEqual(self.api.subjectAccessReviews, [])

    # --- rotation, TLS CA names, cache --------------------------------------

    async def test_requestHeaderCARotation(self):
        newCA = pki.makeCA("front-proxy-ca-2")
        headers = {"X-Remote-User": ["jane"]}
        self.assertEqual((await self.call("/apis", clientPair=self.proxyPair(),
                                          headers=headers)).code, 200)
        self.api.store.put(self.configMap(newCA))
        await waitFor(lambda: self.auth.watcher.current.requestHeaderCAs == (newCA.cert,),
                      "the watcher to load the rotated CA")
        old = await self.call("/apis", clientPair=self.proxyPair(), headers=headers)
        self.assertStatus(old, 401, "Unauthorized", "unknown authority")
        new = await self.call("/apis", clientPair=self.proxyPair(ca=newCA), headers=headers)
        self.assertEqual(new.code, 200)

    async def test_frontProxyCertificateVerifiedOncePerConnection(self):
        """kube-apiserver judges a client certificate per TLS connection; so do we, but
        a CA rotated in the ConfigMap still applies to the next request on it."""
        session = httpclient.Session(reactor, self.site.ca.certPEM, self.proxyPair())
        self.addCleanup(session.close)
        headers = {"X-Remote-User": ["jane"]}
        for _ in range(3):
            response = await session.request("GET", self.site.url("/apis"), headers=headers)
            self.assertEqual(response.code, 200)
        self.assertEqual(len(self.verifications), 1)
        self.api.store.put(self.configMap(pki.makeCA("front-proxy-ca-2")))
        await waitFor(lambda: self.auth.watcher.current.requestHeaderCAs[0].subject
                      .rfc4514_string() == "CN=front-proxy-ca-2", "the rotated CA")
        response = await session.request("GET", self.site.url("/apis"), headers=headers)
        self.assertStatus(response, 401, "Unauthorized", "unknown authority")

    async def test_expiryEndsAnOpenConnectionsIdentity(self):
        pair = pki.clientPair(self.frontProxyCA, "front-proxy-client",
                              notBefore=NOW - datetime.timedelta(days=1),
                              notAfter=NOW + datetime.timedelta(hours=1))
        session = httpclient.Session(reactor, self.site.ca.certPEM, pair)
        self.addCleanup(session.close)
        headers = {"X-Remote-User": ["jane"]}
        first = await session.request("GET", self.site.url("/apis"), headers=headers)
        self.assertEqual(first.code, 200)
        self.assertEqual(len(self.verifications), 1)
        self.clock.advance(2 * 3600)
        second = await session.request("GET", self.site.url("/apis"), headers=headers)
        self.assertStatus(second, 401, "Unauthorized", "has expired")
        # judged again on the same connection: as a front-proxy and as a client certificate
        self.assertEqual(len(self.verifications), 3)

    async def test_handshakeNamesBothCAs(self):
        newCA = pki.makeCA("front-proxy-ca-2")
        self.assertEqual(await self.caNames(),
                         ["CN=front-proxy-ca", "CN=kubernetes-client-ca"])
        self.api.store.put(self.configMap(newCA))
        await waitFor(lambda: self.auth.watcher.current.requestHeaderCAs == (newCA.cert,),
                      "the watcher to load the rotated CA")
        self.assertEqual(await self.caNames(),
                         ["CN=front-proxy-ca-2", "CN=kubernetes-client-ca"])

    async def caNames(self):
        options = httpclient.clientTLSOptions("localhost", self.site.ca.certPEM)
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.site.port, options)
        proto = _CANames()
        await connectProtocol(endpoint, proto)
        await proto.lost
        return proto.names

    async def test_decisionCachedForTTL(self):
        headers = {"Authorization": ["Bearer " + TOKEN]}
        sars = lambda: len(self.api.subjectAccessReviews)
        await self.call("/apis", headers=headers)
        self.assertEqual(sars(), 1)
        await self.call("/apis", headers=headers)
        self.assertEqual(sars(), 1)
        self.clock.advance(10)
        await self.call("/apis", headers=headers)
        self.assertEqual(sars(), 2)
        self.assertEqual(self.api.tokenReviews, [TOKEN, TOKEN])

    async def test_concurrentIdenticalRequestsOneSAR(self):
        headers = {"X-Remote-User": ["jane"]}
        pair = self.proxyPair()
        responses = await defer.gatherResults([
            defer.ensureDeferred(self.call("/apis", clientPair=pair, headers=headers))
            for _ in range(20)])
        self.assertEqual({r.code for r in responses}, {200})
        self.assertEqual(self.reviewsFor("jane"), 1)

    def reviewsFor(self, user):
        return sum(1 for spec in self.api.subjectAccessReviews if spec.get("user") == user)
