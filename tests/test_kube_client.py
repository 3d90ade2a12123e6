"""KubeClient against the stand-in API server over real TLS."""
import os

import attr
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from kibaship_dns01 import metrics
from kibaship_dns01.interfaces import IKubernetesClient
from kibaship_dns01.kube import errors
from kibaship_dns01.kube.client import MAX_LIST_RESTARTS, KubeClient
from kibaship_dns01.kube.config import FileToken
from kibaship_dns01.testing import pki
from kibaship_dns01.testing import kubeapi
from kibaship_dns01.testing.kubeapi import StandInAPIServer
from tests.support import tempDir

CHALLENGES = "/apis/acme.cert-manager.io/v1/challenges"


def challenge(name, ns="ns", **spec):
    return {"apiVersion": "acme.cert-manager.io/v1", "kind": "Challenge",
            "metadata": {"name": name, "namespace": ns}, "spec": dict({"key": "k-" + name}, **spec)}


class ClientTestsBase(TestCase):
    def setUp(self):
        self.server = StandInAPIServer(reactor=reactor)
        self.store = self.server.store
        self.addCleanup(self.server.stop)
        return self.server.start()

    def client(self, config=None, **kw):
        kw.setdefault("requestTimeout", 5.0)
        c = KubeClient(config or self.server.clientConfig(), reactor=reactor, **kw)
        self.addCleanup(c.close)
        return c

    async def failsWith(self, d, cls):
        try:
            await d
        except cls as e:
            return e
        self.fail("expected %s" % cls.__name__)


class RequestTests(ClientTestsBase):
    def test_verified(self):
        self.assertTrue(verifyObject(IKubernetesClient, self.client()))

    @defer.inlineCallbacks
    def test_get(self):
        self.store.add(challenge("a"))
        obj = yield self.client().get(CHALLENGES.replace("/challenges", "/namespaces/ns/challenges/a"))
        self.assertEqual((obj["kind"], obj["spec"]["key"]), ("Challenge", "k-a"))

    @defer.inlineCallbacks
    def test_listMergesPages(self):
        for i in range(7):
            self.store.add(challenge("c%d" % i, ns="n%d" % (i % 3)))
        rv = str(self.store.resourceVersion)
        result = yield self.client(pageSize=3).list(CHALLENGES)
        self.assertEqual(result["kind"], "ChallengeList")
        self.assertEqual(len(result["items"]), 7)
        self.assertEqual(len({i["metadata"]["name"] for i in result["items"]}), 7)
        self.assertEqual(result["metadata"], {"resourceVersion": rv})
        lists = [r for r in self.store.requests if r[0] == "list"]
        self.assertEqual([p.get("limit") for _, _, p in lists], ["3", "3", "3"])
        self.assertEqual(sum(1 for _, _, p in lists if "continue" in p), 2)

    @defer.inlineCallbacks
    def test_listPagesHandsOverItemsDecodedAsTheyAreRead(self):
        """``listPages`` gives each page with its items decoded one by one; an item
        the server garbled fails where it stands, as a KubeError naming the request,
        after the good ones before it."""
        for i in range(4):
            self.store.add(challenge("c%d" % i))
        real = kubeapi._dumps
        self.patch(kubeapi, "_dumps", lambda obj: real(obj).replace(b'"k-c2"', b'k-c2'))
        got = []

        def onPage(page, first):
            self.assertNotIsInstance(page["items"], list)
            for item in page["items"]:
                got.append(item["metadata"]["name"])
        error = yield defer.ensureDeferred(self.failsWith(
            self.client(pageSize=3).listPages(CHALLENGES, {}, onPage), errors.KubeError))
        self.assertEqual(got, ["c0", "c1"])
        self.assertIn("GET %s: the API server answered invalid JSON" % CHALLENGES, str(error))

    @defer.inlineCallbacks
    def test_pageItemsKeepsWhatEachPageGives(self):
        """``pageItems`` sees each page as it arrives, before the next is asked for."""
        for i in range(5):
            self.store.add(challenge("c%d" % i))
        seen = []

        def keep(page):
            seen.append((len(page["items"]), sum(1 for r in self.store.requests if r[0] == "list")))
            return [item["spec"]["key"] for item in page["items"]]
        result = yield self.client(pageSize=2).list(CHALLENGES, pageItems=keep)
        self.assertEqual(seen, [(2, 1), (2, 2), (1, 3)])
        self.assertEqual(result["items"], ["k-c%d" % i for i in range(5)])

    @defer.inlineCallbacks
    def test_expiredContinueRestartsThePagedList(self):
        """A continue token the server compacted away (410) starts the LIST again
        from its first page, still paged: never one unpaged LIST of everything."""
        for i in range(4):
            self.store.add(challenge("c%d" % i))
        real = self.store.listPath
        state = {"expired": False, "late": 0}

        def listPath(path, params=None, **kw):
            if params and params.get("continue") and not state["expired"]:
                state["expired"] = True
                state["late"] += 1
                self.store.add(challenge("late%d" % state["late"]))
                self.store.compact()
            return real(path, params, **kw)
        self.patch(self.store, "listPath", listPath)
        mark = len(self.store.requests)
        result = yield self.client(pageSize=2).list(CHALLENGES)
        self.assertEqual(sorted(i["metadata"]["name"] for i in result["items"]),
                         ["c0", "c1", "c2", "c3", "late1"])
        self.assertEqual(result["metadata"], {"resourceVersion": str(self.store.resourceVersion)})
        asked = [p for verb, _, p in self.store.requests[mark:] if verb == "list"]
        self.assertEqual([p.get("limit") for p in asked], ["2"] * len(asked))
        self.assertEqual([("continue" in p) for p in asked], [False, True, False, True, True])
        state["expired"] = False
        result = yield self.client(pageSize=2).list(CHALLENGES, pageItems=lambda page: [
            item["metadata"]["name"] for item in page["items"]])
        self.assertEqual(sorted(result["items"]), ["c0", "c1", "c2", "c3", "late1", "late2"])

    @defer.inlineCallbacks
    def test_aListThatKeepsExpiringGivesUp(self):
        """The restarts are bounded: a continue token that always expires is a Gone."""
        for i in range(4):
            self.store.add(challenge("c%d" % i))
        self.store.injectError(410, verb="list", times=None)
        real = self.store._checkInjected

        def onlyContinuePages(verb, path):
            if self.store.requests[-1][2].get("continue"):
                real(verb, path)
        self.patch(self.store, "_checkInjected", onlyContinuePages)
        mark = len(self.store.requests)
        error = yield defer.ensureDeferred(self.failsWith(self.client(pageSize=2).list(CHALLENGES),
                                                          errors.Gone))
        self.assertEqual(error.code, 410)
        firsts = [p for verb, _, p in self.store.requests[mark:] if verb == "list"
                  and "continue" not in p]
        self.assertEqual(len(firsts), MAX_LIST_RESTARTS + 1)

    @defer.inlineCallbacks
    def test_postSubjectAccessReview(self):
        self.server.setSubjectAccessReviewHandler(lambda spec: {"allowed": True, "reason": "ok"})
        spec = {"user": "u", "nonResourceAttributes": {"path": "/x", "verb": "get"}}
        out = yield self.client().post("/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                       {"apiVersion": "authorization.k8s.io/v1",
                                        "kind": "SubjectAccessReview", "spec": spec})
        self.assertEqual(out["status"], {"allowed": True, "reason": "ok"})
        self.assertEqual(self.server.subjectAccessReviews, [spec])

    @defer.inlineCallbacks
    def test_connectionsArePooled(self):
        self.store.add(challenge("a"))
        c = self.client()
        for _ in range(3):
            yield c.get("/apis/acme.cert-manager.io/v1/namespaces/ns/challenges/a")
        self.assertEqual(self.server.connectionsMade, 1)

    @defer.inlineCallbacks
    def test_burstReusesABoundedSetOfConnections(self):
        """Twisted's pool opens a connection whenever none is idle: a burst of
        GETs queues for ``maxConcurrentRequests`` connections instead, and
        the next burst finds them all still open."""
        self.store.add(challenge("a"))
        c = self.client(maxConcurrentRequests=4)
        path = "/apis/acme.cert-manager.io/v1/namespaces/ns/challenges/a"
        for burst in range(2):
            results = yield defer.gatherResults([c.get(path) for _ in range(30)])
            self.assertEqual(len(results), 30)
            self.assertEqual(self.server.connectionsMade, 4)
        self.assertEqual(self.server.connectionCount, 4)

    @defer.inlineCallbacks
    def test_queuedRequestBoundedAndSlotKept(self):
        """A request waiting for a slot times out within its own bound, and a
        cancelled wait neither takes nor frees a slot."""
        self.store.add(challenge("a"))
        c = self.client(maxConcurrentRequests=1, requestTimeout=0.5)
        path = "/apis/acme.cert-manager.io/v1/namespaces/ns/challenges/a"
        self.server.hang = True
        first, queued, cancelled = c.get(path), c.get(path), c.get(path)
        cancelled.cancel()
        yield self.failsWith(cancelled, defer.CancelledError)
        yield self.failsWith(first, errors.APITimeout)
        e = yield self.failsWith(queued, errors.APITimeout)
        self.assertIn("GET " + path, e.message)
        self.assertEqual(len(self.server.hungRequests), 2)
        self.server.hang = False
        obj = yield c.get(path)
        self.assertEqual(obj["metadata"]["name"], "a")

    @defer.inlineCallbacks
    def test_countsRequests(self):
        before = metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_kube_api_requests_total", {"verb": "get", "code": "404"}) or 0
        yield self.failsWith(self.client().get("/api/v1/namespaces/x/configmaps/y"), errors.NotFound)
        after = metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_kube_api_requests_total", {"verb": "get", "code": "404"})
        self.assertEqual(after, before + 1)

    @defer.inlineCallbacks
    def test_bodyLimit(self):
        self.store.add({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "big", "namespace": "x"}, "data": {"a": "x" * 5000}})
        e = yield self.failsWith(self.client(maxBodyBytes=1000).get("/api/v1/namespaces/x/configmaps/big"),
                                 errors.KubeError)
        self.assertIn("larger than 1000 bytes", e.message)


class ErrorMappingTests(ClientTestsBase):
    @defer.inlineCallbacks
    def test_notFound(self):
        e = yield self.failsWith(self.client().get("/apis/cert-manager.io/v1/namespaces/certificates/certificates/ad-x"),
                                 errors.NotFound)
        self.assertIn('certificates.cert-manager.io "ad-x" not found', e.message)
        self.assertIn("GET /apis/cert-manager.io/v1/namespaces/certificates/certificates/ad-x", e.message)
        self.assertEqual(e.status["details"]["name"], "ad-x")

    @defer.inlineCallbacks
    def test_unauthorized(self):
        e = yield self.failsWith(self.client(self.server.clientConfig(token="wrong")).list(CHALLENGES),
                                 errors.Unauthorized)
        self.assertEqual(e.code, 401)

    @defer.inlineCallbacks
    def test_forbiddenWithRealWording(self):
        self.server.setAuthorizer(lambda user, verb, res, ns, name: verb != "list")
        e = yield self.failsWith(self.client().list(CHALLENGES), errors.Forbidden)
        self.assertIn('challenges.acme.cert-manager.io is forbidden: User '
                      '"system:serviceaccount:kibaship-dns01:kibaship-dns01" cannot list resource '
                      '"challenges" in API group "acme.cert-manager.io" at the cluster scope', e.message)

    @defer.inlineCallbacks
    def test_conflict(self):
        self.store.add({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "x"}})
        e = yield self.failsWith(self.client().post("/api/v1/namespaces/x/secrets", {"metadata": {"name": "s"}}),
                                 errors.Conflict)
        self.assertEqual(e.reason, "AlreadyExists")

    @defer.inlineCallbacks
    def test_injectedCodes(self):
        cases = [(410, errors.Gone), (500, errors.Unavailable), (503, errors.Unavailable),
                 (429, errors.Unavailable), (504, errors.APITimeout)]
        c = self.client()
        for code, cls in cases:
            self.store.injectError(code, verb="get")
            e = yield self.failsWith(c.get("/api/v1/namespaces/x/configmaps/y"), cls)
            self.assertEqual(e.code, code)

    @defer.inlineCallbacks
    def test_invalidIsGenericKubeError(self):
        e = yield self.failsWith(self.client().post("/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                                    {"spec": {}}), errors.KubeError)
        self.assertEqual((type(e), e.code, e.reason), (errors.KubeError, 422, "Invalid"))


class TransportTests(ClientTestsBase):
    @defer.inlineCallbacks
    def test_timeoutAgainstHungServer(self):
        self.server.hang = True
        e = yield self.failsWith(self.client(requestTimeout=2.0).get("/api/v1/namespaces/x/configmaps/y"),
                                 errors.APITimeout)
        self.assertIn("GET /api/v1/namespaces/x/configmaps/y", e.message)
        self.assertEqual(len(self.server.hungRequests), 1)

    @defer.inlineCallbacks
    def test_watchHeadersTimeout(self):
        self.server.hang = True
        yield self.failsWith(self.client(requestTimeout=0.3).watch(CHALLENGES, "1", lambda t, o: None),
                             errors.APITimeout)

    @defer.inlineCallbacks
    def test_connectionRefused(self):
        config = self.server.clientConfig()
        yield self.server.stop()
        e = yield self.failsWith(self.client(config).get("/api/v1/namespaces/x/configmaps/y"),
                                 errors.Unavailable)
        self.assertIn("cannot reach the API server", e.message)

    @defer.inlineCallbacks
    def test_caMismatchRefused(self):
        other = pki.makeCA("someone-else")
        config = attr.evolve(self.server.clientConfig(), caPEM=other.certPEM)
        e = yield self.failsWith(self.client(config).get("/api/v1/namespaces/x/configmaps/y"),
                                 errors.Unavailable)
        self.assertIn("TLS handshake failed", e.message)
        self.assertEqual(self.server.requestCount, 0)

    @defer.inlineCallbacks
    def test_caBundleWithRotatedCA(self):
        config = attr.evolve(self.server.clientConfig(),
                             caPEM=pki.makeCA("old").certPEM + self.server.caPEM)
        self.store.add(challenge("a"))
        obj = yield self.client(config).get("/apis/acme.cert-manager.io/v1/namespaces/ns/challenges/a")
        self.assertEqual(obj["metadata"]["name"], "a")

    @defer.inlineCallbacks
    def test_serverNameOverride(self):
        good = attr.evolve(self.server.clientConfig(), tlsServerName="localhost")
        yield self.client(good).list(CHALLENGES)
        bad = attr.evolve(self.server.clientConfig(), tlsServerName="kubernetes.default.svc")
        yield self.failsWith(self.client(bad).list(CHALLENGES), errors.Unavailable)

    @defer.inlineCallbacks
    def test_insecureSkipsVerification(self):
        config = attr.evolve(self.server.clientConfig(), caPEM=None, insecure=True)
        result = yield self.client(config).list(CHALLENGES)
        self.assertEqual(result["items"], [])

    @defer.inlineCallbacks
    def test_clientCertificateAuth(self):
        cert = self.server.issueClientCertificate("admin", ["system:masters"])
        users = []
        self.server.setAuthorizer(lambda user, *a: users.append(user) or True)
        yield self.client(self.server.clientConfig(clientCert=cert)).list(CHALLENGES)
        self.assertEqual(users, ["admin"])

    @defer.inlineCallbacks
    def test_rotatedTokenPickedUp(self):
        """After rotation a 401 makes the client re-read the token file and retry once."""
        path = os.path.join(tempDir(self), "token")
        with open(path, "w") as f:
            f.write(self.server.token)
        tokens = FileToken(path, reactor, period=3600)
        c = self.client(attr.evolve(self.server.clientConfig(), tokenProvider=tokens))
        yield c.list(CHALLENGES)
        fresh = self.server.rotateToken()
        with open(path, "w") as f:
            f.write(fresh)
        yield c.list(CHALLENGES)
        self.assertEqual(tokens.token(), fresh)
        self.server.rotateToken()
        yield self.failsWith(c.list(CHALLENGES), errors.Unauthorized)


class WatchTests(ClientTestsBase):
    @defer.inlineCallbacks
    def test_eventsBookmarksAndServerTimeout(self):
        self.store.add(challenge("a"))
        rv = str(self.store.resourceVersion)
        seen = []
        arrived = defer.Deferred()

        def onEvent(kind, obj):
            seen.append((kind, obj["metadata"].get("name"), obj["metadata"]["resourceVersion"]))
            if kind == "BOOKMARK":
                arrived.callback(None)
        d = self.client().watch(CHALLENGES, rv, onEvent, {"timeoutSeconds": "1"})
        yield self.waitForWatch()
        self.store.add(challenge("b"))
        self.store.put(challenge("b", extra=1))
        self.store.delete(challenge("a"))
        self.store.bookmark()
        yield arrived
        result = yield d
        self.assertIsNone(result)
        self.assertEqual([(k, n) for k, n, _ in seen],
                         [("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "a"), ("BOOKMARK", None)])
        self.assertEqual(seen[-1][2], str(self.store.resourceVersion))
        watchParams = [p for v, _, p in self.store.requests if v == "watch"][0]
        self.assertEqual((watchParams["watch"], watchParams["allowWatchBookmarks"],
                          watchParams["resourceVersion"]), ("1", "true", rv))

    def waitForWatch(self):
        """Poll (on the reactor) until the stand-in has registered the watch."""
        d = defer.Deferred()

        def check():
            if self.store.watchCount:
                d.callback(None)
            else:
                reactor.callLater(0.01, check)
        check()
        return d

    @defer.inlineCallbacks
    def test_tooOldVersionArrivesAsErrorEvent(self):
        self.store.add(challenge("a"))
        self.store.compact()
        seen = []
        yield self.client().watch(CHALLENGES, "1", lambda k, o: seen.append((k, o)))
        (kind, status), = seen
        self.assertEqual((kind, status["kind"], status["code"], status["reason"]),
                         ("ERROR", "Status", 410, "Expired"))

    @defer.inlineCallbacks
    def test_connectionLostIsUnavailable(self):
        d = self.client().watch(CHALLENGES, str(self.store.resourceVersion), lambda k, o: None)
        yield self.waitForWatch()
        yield self.server.down()
        yield self.failsWith(d, errors.Unavailable)

    @defer.inlineCallbacks
    def test_oversizedEventAborts(self):
        d = self.client(maxEventBytes=2000).watch(CHALLENGES, str(self.store.resourceVersion),
                                                  lambda k, o: None)
        yield self.waitForWatch()
        self.store.add(challenge("big", blob="x" * 10000))
        e = yield self.failsWith(d, errors.KubeError)
        self.assertIn("larger than 2000 bytes", e.message)

    @defer.inlineCallbacks
    def test_consumerExceptionFailsWatch(self):
        def boom(kind, obj):
            raise ZeroDivisionError()
        d = self.client().watch(CHALLENGES, str(self.store.resourceVersion), boom)
        yield self.waitForWatch()
        self.store.add(challenge("a"))
        yield self.failsWith(d, ZeroDivisionError)

    @defer.inlineCallbacks
    def test_cancelStopsTheStream(self):
        d = self.client().watch(CHALLENGES, str(self.store.resourceVersion), lambda k, o: None)
        yield self.waitForWatch()
        d.cancel()
        yield self.failsWith(d, defer.CancelledError)

    @defer.inlineCallbacks
    def test_watchRequestErrorsAreMapped(self):
        yield self.failsWith(self.client().watch("/apis/nope/v1/things", "1", lambda k, o: None),
                             errors.NotFound)
        yield self.failsWith(self.client().watch(CHALLENGES, "1", lambda k, o: None,
                                                 {"fieldSelector": "spec.key=x"}), errors.KubeError)
