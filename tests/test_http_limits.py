"""Slow and greedy clients (issue 12): read deadlines, the idle timeout, the connection cap.

In memory, on a fake clock: the real site and channel, raw bytes in, and the
clock moved by hand, so "a client that trickles one byte a second" is exact.
"""
import json

from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01 import metrics
from kibaship_dns01.api.channel import ABORT_TIMEOUT
from kibaship_dns01.api.connections import REFUSAL_LOG_INTERVAL, LimitedTLSFactory
from kibaship_dns01.api.discovery import APIIdentity
from kibaship_dns01.api.site import APIResource, APISite
from kibaship_dns01.testing.fakesolver import RecordingSolver
from kibaship_dns01.testing.inmemory import MemoryClient, parseResponse, postRequest
from tests.support import GROUP, SOLVER, SOLVER_PATH, LogCapture
from tests.test_api_contract import payload

BODY = json.dumps(payload()).encode()


def timeouts(phase):
    return metrics.REGISTRY.get_sample_value("kibaship_dns01_http_timeouts_total",
                                             {"phase": phase}) or 0.0


class ReadDeadlineTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.solver = RecordingSolver()
        resource = APIResource(APIIdentity(group=GROUP, solver=SOLVER), self.solver,
                               clock=self.clock)
        self.site = APISite(resource, headerTimeout=10, bodyTimeout=5, idleTimeout=90,
                            reactor=self.clock)
        self.client = MemoryClient(self.site)

    def assertTimedOut(self, phase, written, seconds):
        response = parseResponse(written)
        self.assertEqual(response.code, 408)
        self.assertEqual(json.loads(response.body)["message"],
                         f"the request {phase} did not arrive within {seconds}s")
        self.assertTrue(self.client.transport.disconnecting)

    def test_trickledHeadersDoNotExtendTheDeadline(self):
        """Slowloris: one byte a second resets an idle timer forever, not this one."""
        before = timeouts("header")
        request = postRequest(SOLVER_PATH, BODY)
        for i in range(9):
            self.client.send(request[i:i + 1])
            self.clock.advance(1)
        self.assertFalse(self.client.transport.disconnecting)
        self.client.send(request[9:10])
        self.clock.advance(1)
        self.assertTimedOut("header", self.client.transport.value(), 10)
        self.assertEqual(timeouts("header") - before, 1)
        self.assertEqual(self.solver.calls, [])

    def test_theHandshakeCountsTowardsTheFirstHead(self):
        """A connection that never sends a byte (nor finishes TLS) is closed too."""
        self.clock.advance(10)
        self.assertTimedOut("header", self.client.transport.value(), 10)

    def test_aSlowBodyIsCutOff(self):
        before = timeouts("body")
        request = postRequest(SOLVER_PATH, BODY)
        head = request.index(b"\r\n\r\n") + 4
        self.client.send(request[:head + 10])
        self.clock.advance(4.9)
        self.assertFalse(self.client.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTimedOut("body", self.client.transport.value(), 5)
        self.assertEqual(timeouts("body") - before, 1)
        self.assertEqual(self.solver.calls, [])

    def test_anOversizedChunkedBodySentSlowlyIsCutOffToo(self):
        head = (b"POST " + SOLVER_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.client.send(head)
        for _ in range(5):
            self.client.send(b"10000\r\n" + b"x" * 65536 + b"\r\n")
            self.clock.advance(1)
        self.assertTimedOut("body", self.client.transport.value(), 5)

    def oversizedHead(self, length):
        return (b"POST " + SOLVER_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length)

    def test_aBodyAnnouncedOverTheLimitIsRefusedAtOnce(self):
        """``Content-Length`` over ``--max-body-bytes``: 413 at once, not after the body
        timeout; what follows the head is read and dropped, never parsed as a request,
        and the connection closes once the body is over (issue 12)."""
        smuggled = postRequest(SOLVER_PATH, BODY)
        length = 2 * 1024 * 1024
        response = parseResponse(self.client.send(self.oversizedHead(length) + smuggled))
        self.assertEqual(response.code, 413)
        self.assertEqual(json.loads(response.body)["reason"], "RequestEntityTooLarge")
        self.assertEqual(response.headers[b"connection"], b"close")
        self.assertFalse(self.client.transport.disconnecting, "still reading the body")
        self.client.send(b"x" * (length - len(smuggled) - 1))
        self.assertFalse(self.client.transport.disconnecting)
        # the last body byte, and a client that did not wait for the close
        self.assertEqual(self.client.send(b"x" + smuggled), b"", "nothing after the 413")
        self.assertTrue(self.client.transport.disconnecting, "closed at the body's end")
        self.assertEqual(self.client.send(smuggled), b"")
        self.assertEqual(self.solver.calls, [], "the bytes after the head were not a request")

    def test_aRefusedBodyThatNeverEndsIsCutAtTheBodyDeadline(self):
        self.client.send(self.oversizedHead(10 ** 12))
        self.clock.advance(5)
        self.assertTrue(self.client.transport.disconnecting)
        self.assertEqual(self.client.transport.value(), b"", "no 408 after the 413")
        self.clock.advance(ABORT_TIMEOUT)
        self.assertTrue(self.client.transport.disconnected)

    def test_largeAndChunkedBodiesStayInMemory(self):
        """Twisted puts chunked bodies and bodies of 100,000 bytes or more in a temporary
        file; the Deployment's /tmp is a 16 MiB emptyDir (issue 12's slow-clients drill)."""
        import tempfile

        def noTemporaryFiles(*args, **kw):
            raise AssertionError("a request body was written to a temporary file")

        self.patch(tempfile, "TemporaryFile", noTemporaryFiles)
        big = json.loads(BODY)
        big["request"]["config"] = {"uiHints": {"note": "x" * 200000}}
        response = parseResponse(self.client.send(postRequest(SOLVER_PATH, json.dumps(
            big).encode())))
        self.assertEqual(response.code, 201, response.body)
        chunked = (b"POST " + SOLVER_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
        self.assertEqual(parseResponse(self.client.send(chunked)).code, 201)
        self.assertEqual(len(self.solver.calls), 2)

    def test_keptAliveConnectionsGetAFreshDeadlinePerRequest(self):
        for _ in range(3):
            response = parseResponse(self.client.send(postRequest(SOLVER_PATH, BODY)))
            self.assertEqual(response.code, 201)
            self.clock.advance(60)  # idle between requests: below the idle timeout
        self.assertFalse(self.client.transport.disconnecting)
        self.assertEqual(len(self.solver.calls), 3)

    def test_idleKeptAliveConnectionsAreClosed(self):
        before = timeouts("idle")
        self.client.send(postRequest(SOLVER_PATH, BODY))
        self.clock.advance(89)
        self.assertFalse(self.client.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.client.transport.disconnecting)
        self.assertEqual(timeouts("idle") - before, 1)

    def test_aClientThatNeverClosesIsAborted(self):
        self.clock.advance(10)
        self.assertTrue(self.client.transport.disconnecting)
        self.assertFalse(self.client.transport.disconnected)
        self.clock.advance(2)
        self.assertTrue(self.client.transport.disconnected, "aborted after ABORT_TIMEOUT")


class ConnectionCapTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.logs = LogCapture(self)
        self.factory = LimitedTLSFactory(CertificateOptions(), object(), maxConnections=2,
                                         clock=self.clock)

    def fill(self):
        for n in range(2):
            self.factory.registerProtocol(f"connection-{n}")

    def refusals(self):
        return self.logs.ofKind("connection_limit")

    def test_refusedAtTheCapWithOneLogLinePerInterval(self):
        before = metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_http_connections_refused_total")
        self.fill()
        self.assertEqual(metrics.REGISTRY.get_sample_value("kibaship_dns01_http_connections"), 2)
        for _ in range(50):
            self.assertIsNone(self.factory.buildProtocol(None))
        self.assertEqual(metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_http_connections_refused_total") - before, 50)
        self.assertEqual(len(self.refusals()), 1)
        self.assertEqual((self.refusals()[0]["open"], self.refusals()[0]["limit"]), (2, 2))
        self.clock.advance(REFUSAL_LOG_INTERVAL)
        self.factory.buildProtocol(None)
        self.assertEqual(len(self.refusals()), 2)
        self.assertEqual(self.refusals()[1]["refused"], 50, "49 kept quiet, then this one")

    def test_roomAgainOnceAConnectionCloses(self):
        self.fill()
        self.factory.unregisterProtocol("connection-0")
        self.assertEqual(metrics.REGISTRY.get_sample_value("kibaship_dns01_http_connections"), 1)
        self.assertEqual(len(self.factory.protocols), 1)
        self.assertEqual(self.refusals(), [])
