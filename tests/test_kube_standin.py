"""The stand-in API server speaks the real API's shapes (checked against
recorded responses in tests/fixtures/kube) and runs as a local process."""
import json
import os
import sys

import yaml
from treq.client import HTTPClient
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from kibaship_dns01.kube.client import KubeClient
from kibaship_dns01.kube.config import loadKubeConfig
from kibaship_dns01.kube.tls import APIServerTLSPolicy
from kibaship_dns01.testing.certmanager import buildChain
from kibaship_dns01.testing.kubeapi import StandInAPIServer
from tests.support import tempDir

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "kube")
CHALLENGES = "/apis/acme.cert-manager.io/v1/challenges"


def challenge(name, ns="ns"):
    return {"apiVersion": "acme.cert-manager.io/v1", "kind": "Challenge",
            "metadata": {"name": name, "namespace": ns}, "spec": {"key": "key-" + name}}


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        if name.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


class ShapeMixin:
    def assertSameShape(self, actual, expected, path="$", optional=()):
        """Same keys (except ``optional`` paths), same JSON types, recursively."""
        self.assertEqual(type(actual).__name__ if actual is not None else "null",
                         type(expected).__name__ if expected is not None else "null", path)
        if isinstance(expected, dict):
            missing = {k for k in expected if k not in actual and "%s.%s" % (path, k) not in optional}
            extra = {k for k in actual if k not in expected and "%s.%s" % (path, k) not in optional}
            self.assertEqual((missing, extra), (set(), set()), path)
            for key in set(actual) & set(expected):
                self.assertSameShape(actual[key], expected[key], "%s.%s" % (path, key), optional)
        elif isinstance(expected, list) and expected and actual:
            for item in actual:
                self.assertSameShape(item, expected[0], path + "[]", optional)


class StandInCase(TestCase):
    """A started stand-in and raw HTTPS requests to it."""

    def setUp(self):
        self.server = StandInAPIServer(reactor=reactor)
        self.store = self.server.store
        self.addCleanup(self.server.stop)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, contextFactory=APIServerTLSPolicy(self.server.clientConfig()),
                                     pool=pool))
        return self.server.start()

    @defer.inlineCallbacks
    def request(self, method, path, body=None, token=None, params=None):
        """Raw HTTPS: :return: (code, headers, decoded JSON or lines)."""
        kw = {"json": body} if body is not None else {}
        response = yield self.http.request(method, self.server.url + path, params=params,
                                           headers={"Authorization": ["Bearer " + (token or self.server.token)]},
                                           **kw)
        raw = yield response.content()
        text = raw.decode()
        parsed = [json.loads(l) for l in text.splitlines() if l.strip()] if (
            params and params.get("watch")) else json.loads(text)
        return response.code, response.headers, parsed


class ShapeTests(ShapeMixin, StandInCase):
    @defer.inlineCallbacks
    def test_coreListShape(self):
        for i in range(3):
            self.store.add({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "c%d" % i, "namespace": "test"}, "data": {"k": "v"}})
        code, headers, body = yield self.request("GET", "/api/v1/namespaces/test/configmaps",
                                                 params={"limit": "1"})
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        expected = fixture("podlist-chunk.json")
        self.assertEqual(body["kind"], "ConfigMapList")
        self.assertSameShape(body, expected, optional={"$.items[].spec", "$.items[].status",
                                                       "$.items[].data", "$.items[].metadata.generation"})

    @defer.inlineCallbacks
    def test_customResourceListShape(self):
        chain = buildChain(dnsNames=("shop.example.com", "*.shop.example.com", "a.example.com"))
        chain.addTo(self.store)
        for i in range(2):
            buildChain(certificateName="ad-x%d" % i).addTo(self.store)
        code, _, body = yield self.request("GET", CHALLENGES, params={"limit": "1"})
        self.assertEqual(code, 200)
        self.assertSameShape(body, fixture("challengelist.json"),
                             optional={"$.items[].status.reason", "$.items[].metadata.creationTimestamp"})
        self.assertEqual(body["metadata"]["remainingItemCount"], 4)

    @defer.inlineCallbacks
    def test_lastPageHasNoContinue(self):
        code, _, body = yield self.request("GET", CHALLENGES)
        self.assertEqual(set(body["metadata"]), {"resourceVersion"})
        self.assertEqual(body["items"], [])

    @defer.inlineCallbacks
    def test_notFoundStatus(self):
        code, _, body = yield self.request("GET", "/apis/acme.cert-manager.io/v1/namespaces/x/challenges/missing")
        self.assertEqual((code, body), (404, fixture("status-notfound.json")))
        code, _, body = yield self.request("GET", "/api/v1/namespaces/x/configmaps/grafana")
        expected = fixture("status-notfound-core.json")
        self.assertSameShape(body, expected)
        self.assertEqual(body["message"], 'configmaps "grafana" not found')

    @defer.inlineCallbacks
    def test_forbiddenStatus(self):
        self.server.setAuthorizer(lambda *a: False)
        code, _, body = yield self.request("GET", CHALLENGES)
        self.assertEqual((code, body), (403, fixture("status-forbidden.json")))

    @defer.inlineCallbacks
    def test_unauthorizedStatus(self):
        code, _, body = yield self.request("GET", CHALLENGES, token="nope")
        self.assertEqual((code, body), (401, fixture("status-unauthorized.json")))

    @defer.inlineCallbacks
    def test_expiredContinueStatus(self):
        for i in range(3):
            buildChain(certificateName="ad-%d" % i).addTo(self.store)
        _, _, first = yield self.request("GET", CHALLENGES, params={"limit": "1"})
        buildChain(certificateName="ad-late").addTo(self.store)
        self.store.compact()
        code, _, body = yield self.request("GET", CHALLENGES, params={"limit": "1",
                                                                      "continue": first["metadata"]["continue"]})
        self.assertEqual((code, body), (410, fixture("status-expired-continue.json")))

    @defer.inlineCallbacks
    def test_watchStreamShape(self):
        """Events, a bookmark and a 410 ERROR, framed and typed like the recorded stream."""
        recorded = fixture("watch-events.jsonl")
        pod = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-1", "namespace": "test"}}
        added = self.store.add(pod)
        self.store.update(added)
        rv = int(added["metadata"]["resourceVersion"]) - 1
        self.server.defaultWatchTimeout = 0.5
        code, headers, lines = yield self.request(
            "GET", "/api/v1/namespaces/test/configmaps",
            params={"watch": "1", "resourceVersion": str(rv), "allowWatchBookmarks": "true"})
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        self.assertIsNone(headers.getRawHeaders("content-length"))  # streamed (chunked)
        self.assertEqual([l["type"] for l in lines], ["ADDED", "MODIFIED"])
        for line, expected in zip(lines, recorded):
            self.assertSameShape(line, expected, optional={"$.object.spec", "$.object.status",
                                                           "$.object.metadata.generation"})
        self.store.compact()
        self.store.add(dict(pod, metadata={"name": "web-2", "namespace": "test"}))
        code, _, lines = yield self.request("GET", "/api/v1/namespaces/test/configmaps",
                                            params={"watch": "1", "resourceVersion": str(rv)})
        self.assertEqual(code, 200)
        (error,) = lines
        self.assertSameShape(error, recorded[3])
        self.assertRegex(error["object"]["message"], r"^too old resource version: \d+ \(\d+\)$")

    @defer.inlineCallbacks
    def test_bookmarkShape(self):
        self.server.defaultWatchTimeout = 0.3
        d = self.request("GET", CHALLENGES, params={"watch": "1", "resourceVersion": str(self.store.resourceVersion),
                                                    "allowWatchBookmarks": "true"})
        for _ in range(500):
            if self.store.watchCount:
                break
            yield deferLater(0.01)
        self.store.bookmark()
        _, _, lines = yield d
        (bookmark,) = lines
        self.assertSameShape(bookmark, fixture("watch-events.jsonl")[2])
        self.assertEqual(bookmark["object"]["kind"], "Challenge")

    @defer.inlineCallbacks
    def test_watchListStreamsInitialEventsThenTheBookmark(self):
        """Many objects as ADDED lines, the ``initial-events-end`` bookmark, then the
        change made while they streamed: in that order, each once."""
        for i in range(300):
            self.store.add(challenge("c%03d" % i))
        self.server.defaultWatchTimeout = 1.0
        d = self.request("GET", CHALLENGES, params={
            "watch": "1", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
            "allowWatchBookmarks": "true"})
        for _ in range(500):
            if self.store.watchCount:
                break
            yield deferLater(0.01)
        self.store.delete(challenge("c000"))
        code, _, lines = yield d
        self.assertEqual(code, 200)
        kinds = [l["type"] for l in lines]
        self.assertEqual(kinds, ["ADDED"] * 300 + ["BOOKMARK", "DELETED"])
        self.assertEqual([l["object"]["metadata"]["name"] for l in lines[:300]],
                         ["c%03d" % i for i in range(300)])
        self.assertEqual(lines[300]["object"]["metadata"]["annotations"],
                         {"k8s.io/initial-events-end": "true"})

    @defer.inlineCallbacks
    def test_watchListRefusedWithTheGateOff(self):
        self.store.watchList = "off"
        code, _, lines = yield self.request("GET", CHALLENGES, params={
            "watch": "1", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"})
        self.assertEqual(code, 422)
        (status,) = lines
        self.assertEqual((status["kind"], status["reason"]), ("Status", "Invalid"))

    @defer.inlineCallbacks
    def test_reviewShapes(self):
        sar = fixture("subjectaccessreview-response.json")
        self.server.setSubjectAccessReviewHandler(lambda spec: sar["status"])
        code, _, body = yield self.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                           {"apiVersion": "authorization.k8s.io/v1",
                                            "kind": "SubjectAccessReview", "spec": sar["spec"]})
        self.assertEqual((code, body), (201, sar))
        tr = fixture("tokenreview-response.json")
        self.server.setTokenReviewHandler(lambda token: tr["status"])
        code, _, body = yield self.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                                           {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                            "spec": {"token": "<token>"}})
        self.assertEqual((code, body), (201, tr))
        self.assertEqual(self.server.tokenReviews, ["<token>"])


class FaultTests(StandInCase):
    """The switches the fault drill (``bench/drills/apifaults.py``) turns: an
    error until cleared, 429 with Retry-After, answers held back, a restart on
    the same port with the same store."""

    @defer.inlineCallbacks
    def test_injectedErrorUntilCleared(self):
        self.store.injectError(500, times=None)
        for _ in range(3):
            code, _, body = yield self.request("GET", CHALLENGES)
            self.assertEqual((code, body["reason"]), (500, "InternalError"))
        code, _, _ = yield self.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                        {"spec": {"user": "u", "nonResourceAttributes": {}}})
        self.assertEqual(code, 500)
        self.store.clearInjectedErrors()
        code, _, _ = yield self.request("GET", CHALLENGES)
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_tooManyRequestsCarriesRetryAfter(self):
        self.store.injectError(429, retryAfter=3)
        code, headers, body = yield self.request("GET", CHALLENGES)
        self.assertEqual((code, headers.getRawHeaders("retry-after")), (429, ["3"]))
        self.assertEqual((body["reason"], body["details"]), ("TooManyRequests",
                                                             {"retryAfterSeconds": 3}))
        code, headers, _ = yield self.request("GET", CHALLENGES)
        self.assertEqual((code, headers.getRawHeaders("retry-after")), (200, None))

    @defer.inlineCallbacks
    def test_latencyHoldsAnswersBack(self):
        """An answer given while slow comes after one asked later, once fast again."""
        order = []
        self.server.latency = 2.0
        slow = self.request("GET", CHALLENGES).addCallback(lambda r: order.append("slow") or r)
        yield deferLater(0.1)
        self.server.latency = 0.0
        code, _, _ = yield self.request("GET", "/version")
        order.append("fast")
        code, _, body = yield slow
        self.assertEqual((order, code, body["kind"]), (["fast", "slow"], 200, "ChallengeList"))

    @defer.inlineCallbacks
    def test_restartOnTheSamePortWithTheSameStore(self):
        """Down: connections cut and refused; up: same port, same objects, and a
        watch from the last version seen replays what changed meanwhile."""
        self.server.defaultWatchTimeout = 0.5
        before = self.store.resourceVersion
        port = self.server.port
        yield self.server.stop()
        chain = buildChain().addTo(self.store)
        yield self.assertFailure(self.request("GET", CHALLENGES), Exception)
        yield self.server.start()
        self.assertEqual(self.server.port, port)
        code, _, lines = yield self.request("GET", CHALLENGES, params={
            "watch": "1", "resourceVersion": str(before)})
        self.assertEqual([(l["type"], l["object"]["kind"]) for l in lines][-1],
                         ("ADDED", "Challenge"))
        self.assertEqual(lines[-1]["object"]["metadata"]["name"],
                         chain.challenges[0]["metadata"]["name"])


def deferLater(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class _Collect(protocol.ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.firstLine = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data
        if b"\n" in self.out and not self.firstLine.called:
            self.firstLine.callback(json.loads(self.out.split(b"\n", 1)[0]))

    def processEnded(self, reason):
        if not self.firstLine.called:
            self.firstLine.errback(reason)
        self.ended.callback(None)


class ProcessTests(TestCase):
    """``python -m kibaship_dns01.testing.kubeapi`` for the local end-to-end run."""

    @defer.inlineCallbacks
    def test_runsAsAProcess(self):
        work = tempDir(self)
        os.makedirs(os.path.join(work, "fixtures"))
        chain = buildChain()
        with open(os.path.join(work, "fixtures", "chain.yaml"), "w") as f:
            yaml.safe_dump_all(chain.objects(), f)
        kubeconfig = os.path.join(work, "kubeconfig")
        proc = _Collect()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root)
        transport = reactor.spawnProcess(
            proc, sys.executable,
            [sys.executable, "-m", "kibaship_dns01.testing.kubeapi", "--kubeconfig-out", kubeconfig,
             "--fixtures", os.path.join(work, "fixtures"), "--review-token", "tok=alice:dev,ops"],
            env=env, path=root)

        def kill():
            if transport.pid is not None:
                transport.signalProcess("TERM")
            return proc.ended
        self.addCleanup(kill)
        info = yield proc.firstLine
        self.assertEqual(info["objects"], 4)
        self.assertEqual(info["kubeconfig"], kubeconfig)
        self.assertEqual(oct(os.stat(kubeconfig).st_mode & 0o777), "0o600")
        client = KubeClient(loadKubeConfig(kubeconfig, clock=reactor), reactor=reactor, requestTimeout=10)
        self.addCleanup(client.close)
        challenges = yield client.list(CHALLENGES)
        self.assertEqual([c["spec"]["key"] for c in challenges["items"]],
                         [chain.challenges[0]["spec"]["key"]])
        review = yield client.post("/apis/authentication.k8s.io/v1/tokenreviews", {"spec": {"token": "tok"}})
        self.assertEqual(review["status"], {"authenticated": True,
                                            "user": {"username": "alice", "groups": ["dev", "ops"]}})
        sar = yield client.post("/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                {"spec": {"user": "alice", "nonResourceAttributes": {"path": "/", "verb": "get"}}})
        self.assertTrue(sar["status"]["allowed"])
