"""The pieces ``bench/present.py`` stands on behave as it assumes (no timings here).

- ``bench/loadgen.py`` run as its own process counts answers by what they
  say, for ``Content-Length`` and chunked framing, closed and open loop, and
  sends the requests it is given byte for byte;
- the environment's kube-aggregator request carries the identity headers and
  cert-manager's body the daemon expects;
- the stand-in API server holds watch events back until released, in order;
- :class:`~kibaship_dns01.testing.daemon.ChildOutput` hands out a child's first line;
- the py-spy summary counts self and total samples per function.
"""
import json
import os
import sys

import attr
from twisted.internet import defer, reactor, ssl, utils
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from bench import loadgen, pyspy
from kibaship_dns01.challenge import CLEANUP
from kibaship_dns01.kube.client import KubeClient
from kibaship_dns01.pem import certificateOptions
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.certmanager import buildChain, numberedChains, projectUUIDs
from kibaship_dns01.testing.daemon import ChildOutput
from kibaship_dns01.testing.environment import (
    CERT_MANAGER_USER, FRONT_PROXY_CN, LocalEnvironment)
from kibaship_dns01.testing.kubeapi import StandInAPIServer
from kibaship_dns01.testing.polling import pollUntil
from tests.support import tempDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADGEN = os.path.join(ROOT, "bench", "loadgen.py")
GOOD = b'{"response":{"uid":"","success":true}}'
BAD = b'{"response":{"uid":"","success":false,"status":{"message":"nope"}}}'


class _Tiny(Resource):
    """``/length`` answers with Content-Length, ``/chunked`` streams, ``/fail`` says
    ``success:false``; every request is recorded."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def render_POST(self, request):
        body = request.content.read()
        self.seen.append((request.path, request.requestHeaders, body))
        request.setResponseCode(201)
        if request.path == b"/flaky":  # each body fails twice, then succeeds
            tries = sum(1 for path, _, b in self.seen if path == b"/flaky" and b == body)
            return BAD if tries <= 2 else GOOD
        if request.path == b"/chunked":
            request.write(GOOD[:10])
            request.write(GOOD[10:])
            request.finish()
            return NOT_DONE_YET
        return BAD if request.path == b"/fail" else GOOD


def _post(path, body=b'{"a":1}'):
    return (b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body))


@attr.s
class _NoCluster:
    """What :class:`LocalEnvironment` reads of a Valkey cluster to build issuer config."""

    seeds = attr.ib(default=["127.0.0.1:7000"])
    password = attr.ib(default="secret")


class LoadGeneratorTests(TestCase):
    def setUp(self):
        self.dir = tempDir(self)
        ca = pki.makeCA("tiny-ca")
        serving = pki.serverPair(ca)
        self.caFile = os.path.join(self.dir, "ca.crt")
        with open(self.caFile, "wb") as f:
            f.write(ca.certPEM)
        clientCA = pki.makeCA("client-ca")
        pki.clientPair(clientCA, FRONT_PROXY_CN).writeTo(os.path.join(self.dir, "c.crt"),
                                                         os.path.join(self.dir, "c.key"))
        self.resource = _Tiny()
        site = Site(self.resource)
        site.noisy = False
        options = ssl.CertificateOptions(
            **certificateOptions(serving.certPEM, serving.keyPEM), verify=True, requireCertificate=True,
            caCerts=[ssl.Certificate.loadPEM(clientCA.certPEM).original])
        self.port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def drive(self, requests, **spec):
        path = os.path.join(self.dir, "requests.bin")
        loadgen.writeRequests(path, requests)
        spec = dict({"host": "127.0.0.1", "port": self.port.getHost().port,
                     "serverName": "localhost", "caFile": self.caFile,
                     "certFile": os.path.join(self.dir, "c.crt"),
                     "keyFile": os.path.join(self.dir, "c.key"), "requestsFile": path,
                     "expectBody": '"success":true', "timeout": 20, "deadline": 60}, **spec)
        with open(os.path.join(self.dir, "spec.json"), "w") as f:
            json.dump(spec, f)
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, [LOADGEN, os.path.join(self.dir, "spec.json")], env=dict(os.environ))
        self.assertEqual(code, 0, err.decode())
        return json.loads(out.splitlines()[-1])

    @defer.inlineCallbacks
    def test_closedLoopSendsEachRequestAsGivenAndCountsGoodAnswers(self):
        requests = [_post(b"/length", b'{"n":%d}' % i) for i in range(3)]
        result = yield self.drive(requests, count=12, connections=3)
        self.assertEqual((result["sent"], result["ok"], result["bad"], result["errors"]),
                         (12, 12, 0, 0))
        self.assertEqual(sorted(body for _, _, body in self.resource.seen),
                         sorted([b'{"n":%d}' % i for i in range(3)] * 4))
        self.assertLessEqual(result["p50_ms"], result["p99_ms"])
        self.assertLessEqual(result["p99_ms"], result["max_ms"])
        self.assertIsNone(result["sample"])

    @defer.inlineCallbacks
    def test_chunkedAnswersAreParsed(self):
        result = yield self.drive([_post(b"/chunked")], count=10, connections=2)
        self.assertEqual((result["ok"], result["bad"], result["errors"]), (10, 0, 0))

    @defer.inlineCallbacks
    def test_answersWithoutTheExpectedBodyAreBad(self):
        result = yield self.drive([_post(b"/fail")], count=5, connections=1)
        self.assertEqual((result["ok"], result["bad"]), (0, 5))
        self.assertIn('"success":false', result["sample"])
        self.assertTrue(result["sample"].startswith("HTTP 201"))

    @defer.inlineCallbacks
    def test_openLoopSendsTheWholeCount(self):
        result = yield self.drive([_post(b"/length")], count=10, connections=2, rate=100)
        self.assertEqual((result["sent"], result["ok"], result["offered"]), (10, 10, 100))

    @defer.inlineCallbacks
    def test_refusedClientCertificateIsAnErrorNotAnAnswer(self):
        """The server requires a client certificate and none is sent: every
        request is a connection error and nothing reaches the site."""
        result = yield self.drive([_post(b"/length")], count=3, connections=1, certFile=None)
        self.assertEqual((result["ok"], result["bad"], result["errors"]), (0, 0, 3))
        self.assertIn("connection error", result["sample"])
        self.assertEqual(self.resource.seen, [])


    @defer.inlineCallbacks
    def test_retryModeSendsFailuresAgainUntilEachSucceeds(self):
        """cert-manager's behaviour: a Present answered success:false is sent
        again after a backoff, until it succeeds; each attempt is on the timeline."""
        timeline = os.path.join(self.dir, "timeline.jsonl")
        requests = [_post(b"/flaky", b'{"n":%d}' % i) for i in range(3)]
        result = yield self.drive(requests, count=3, connections=2, timeline=timeline,
                                  retry={"base": 0.01, "max": 0.02})
        self.assertEqual((result["succeeded"], result["gave_up"], result["ok"], result["bad"]),
                         (3, 0, 3, 6))
        attempts = loadgen.readTimeline(timeline)
        self.assertEqual(sorted(a.index for a in attempts), [0, 0, 0, 1, 1, 1, 2, 2, 2])
        for index in range(3):
            mine = [a for a in attempts if a.index == index]
            self.assertEqual([(a.ok, a.code, a.why) for a in mine],
                             [(False, 201, "nope"), (False, 201, "nope"), (True, 201, None)])
            self.assertTrue(all(a.since == a.sent <= a.done for a in mine))
            self.assertTrue(mine[0].done < mine[1].sent < mine[2].sent, "in order, one at a time")

    @defer.inlineCallbacks
    def test_retryModeGivesUpAtTheDeadline(self):
        result = yield self.drive([_post(b"/fail")], count=1, connections=1, deadline=0.5,
                                  retry={"base": 0.05, "max": 0.1})
        self.assertEqual((result["succeeded"], result["gave_up"]), (0, 1))
        self.assertGreater(result["bad"], 1)

    @defer.inlineCallbacks
    def test_openLoopTimelineCountsFromTheDueTime(self):
        timeline = os.path.join(self.dir, "timeline.jsonl")
        yield self.drive([_post(b"/length")], count=5, connections=1, rate=50,
                         timeline=timeline)
        attempts = loadgen.readTimeline(timeline)
        self.assertEqual([a.index for a in attempts], [0, 1, 2, 3, 4])
        self.assertTrue(all(a.ok and a.since <= a.sent <= a.done for a in attempts))


class ParseResponseTests(TestCase):
    def test_needsTheWholeBody(self):
        head = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\n"
        self.assertIsNone(loadgen.parseResponse(bytearray(head + b"abc")))
        self.assertEqual(loadgen.parseResponse(bytearray(head + b"abcdeHTTP")),
                         (201, b"abcde", len(head) + 5))

    def test_chunkedUntilTheLastChunk(self):
        head = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n"
        partial = head + b"3\r\nabc\r\n2\r\nde\r\n"
        self.assertIsNone(loadgen.parseResponse(bytearray(partial)))
        self.assertEqual(loadgen.parseResponse(bytearray(partial + b"0\r\n\r\n")),
                         (403, b"abcde", len(partial) + 5))

    def test_unframedResponseIsAnError(self):
        with self.assertRaises(loadgen.ResponseError):
            loadgen.parseResponse(bytearray(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nbody"))

    def test_requestsFileRoundTrip(self):
        path = os.path.join(tempDir(self), "r.bin")
        loadgen.writeRequests(path, [b"one", b"", b"three" * 1000])
        self.assertEqual(loadgen.readRequests(path), [b"one", b"", b"three" * 1000])


class AggregatorRequestTests(TestCase):
    def test_identityHeadersAndBodyAsForwarded(self):
        env = LocalEnvironment(reactor, tempDir(self), _NoCluster())
        raw = env.aggregatorRequest("localhost:8443", CLEANUP)
        head, body = raw.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.assertEqual(lines[0], "POST /apis/dns.kibaship.com/v1alpha1/kibaship HTTP/1.1")
        headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
        self.assertIn(("X-Remote-User", CERT_MANAGER_USER), headers)
        self.assertEqual([v for k, v in headers if k == "X-Remote-Group"],
                         ["system:serviceaccounts", "system:serviceaccounts:cert-manager",
                          "system:authenticated"])
        self.assertIn(("X-Remote-Extra-authentication.kubernetes.io%2Fpod-name",
                       "cert-manager-6d8f7c9b5-x2x7q"), headers)
        self.assertIn(("Content-Length", str(len(body))), headers)
        payload = json.loads(body)
        self.assertEqual(payload["kind"], "ChallengePayload")
        self.assertEqual(payload["request"]["action"], CLEANUP)
        self.assertEqual(payload["request"]["key"], env.chain.challenges[0]["spec"]["key"])
        self.assertEqual(payload["request"]["config"], env.issuerConfig())

    def test_numberedChainsAreDistinctAndSpreadOverProjects(self):
        projects = projectUUIDs(3)
        chains = numberedChains("b", 10, 6, projects=projects)
        keys = {c.challenges[0]["spec"]["key"] for c in chains}
        self.assertEqual(len(keys), 6)
        labels = [c.certificate["metadata"]["labels"]["platform.kibaship.com/project-uuid"]
                  for c in chains]
        self.assertEqual(labels, [projects[n % 3] for n in range(10, 16)])
        self.assertEqual(len(set(projects)), 3)


class HeldWatchTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = StandInAPIServer(reactor=reactor)
        self.addCleanup(self.server.stop)
        yield self.server.start()
        self.client = KubeClient(self.server.clientConfig(), reactor)  # knows the port now
        self.addCleanup(self.client.close)

    @defer.inlineCallbacks
    def test_eventsWaitForReleaseAndKeepTheirOrder(self):
        seen = []
        path = "/apis/acme.cert-manager.io/v1/challenges"
        watching = self.client.watch(path, str(self.server.store.resourceVersion),
                                     lambda kind, obj: seen.append((kind, obj["metadata"]["name"])))
        watching.addErrback(lambda failure: None)  # ended by the client's close at cleanup
        yield pollUntil(reactor, lambda: self.server.store.watchCount == 1, 10, what="the watch")
        first, second, third = (buildChain(certificateName="c%d" % i).challenges[0]
                                for i in range(3))
        self.server.holdWatchEvents()
        self.server.store.add(first)
        self.server.store.add(second)
        # a later request's answer arrives while the events stay held
        listed = yield self.client.list(path)
        self.assertEqual(len(listed["items"]), 2)
        self.assertEqual((seen, len(self.server.heldWatchEvents)), ([], 2))
        self.assertEqual(self.server.releaseWatchEvents(), 2)
        self.server.store.add(third)
        names = [c["metadata"]["name"] for c in (first, second, third)]
        yield pollUntil(reactor, lambda: len(seen) == 3, 10, what="three events")
        self.assertEqual(seen, [("ADDED", name) for name in names])


class ChildOutputTests(TestCase):
    def spawn(self, code):
        proto = ChildOutput()
        reactor.spawnProcess(proto, sys.executable, [sys.executable, "-c", code],
                             env=dict(os.environ))
        return proto

    @defer.inlineCallbacks
    def test_firstLine(self):
        proto = self.spawn("print('hello'); print('more')")
        self.assertEqual((yield proto.firstLine()), b"hello")
        self.assertEqual((yield proto.ended), 0)
        self.assertEqual((yield proto.firstLine()), b"hello")

    @defer.inlineCallbacks
    def test_exitWithoutALineFailsWithTheOutput(self):
        proto = self.spawn("import sys; sys.stderr.write('boom'); sys.exit(3)")
        waiting = proto.firstLine()
        self.assertEqual((yield proto.ended), 3)
        failure = yield self.assertFailure(waiting, RuntimeError)
        self.assertIn("boom", str(failure))


class ProfileSummaryTests(TestCase):
    def test_selfAndTotalPerFunction(self):
        path = os.path.join(tempDir(self), "raw")
        with open(path, "w") as f:
            f.write("main (/venv/lib/python3.11/site-packages/twisted/app.py:1);"
                    "handle (/src/kibaship_dns01/api/site.py:9);dumps (/usr/lib/python3.11/json/x.py:3) 6\n"
                    "main (/venv/lib/python3.11/site-packages/twisted/app.py:1);"
                    "handle (/src/kibaship_dns01/api/site.py:9) 3\n"
                    "main (/venv/lib/python3.11/site-packages/twisted/app.py:1) 1\n")
        samples, selfTop, totalTop = pyspy.summarise(path)
        self.assertEqual(samples, 10)
        self.assertEqual(selfTop, [("dumps (json/x.py:3)", 6), ("handle (kibaship_dns01/api/site.py:9)", 3),
                                   ("main (twisted/app.py:1)", 1)])
        self.assertEqual(dict(totalTop), {"main (twisted/app.py:1)": 10,
                                          "handle (kibaship_dns01/api/site.py:9)": 9,
                                          "dumps (json/x.py:3)": 6})
        text = pyspy.formatSummary(path)
        self.assertIn("kibaship_dns01 by total time:\n   90.0%  handle", text)
