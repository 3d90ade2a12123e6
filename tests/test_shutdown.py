"""Graceful shutdown (issue 12): not ready at once, stop accepting, answer what is in flight."""
import json
import signal

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kibaship_dns01.api.discovery import APIIdentity
from kibaship_dns01.api.lifecycle import CANCEL_SETTLE, Lifecycle
from kibaship_dns01.api.site import APIResource, APISite
from kibaship_dns01.interfaces import ISolver
from kibaship_dns01.testing.daemon import DaemonProcess
from kibaship_dns01.testing.environment import LocalEnvironment
from kibaship_dns01.testing.fakesolver import RecordingSolver
from kibaship_dns01.testing.httpclient import request
from kibaship_dns01.testing.inmemory import MemoryClient, parseResponse, postRequest
from kibaship_dns01.testing.polling import pollUntil
from kibaship_dns01.testing.ports import freePort
from kibaship_dns01.testing.valkeycluster import ValkeyCluster
from tests.support import GROUP, SOLVER, SOLVER_PATH, startTLSSite, tempDir
from tests.test_api_contract import payload

BODY = json.dumps(payload()).encode()


@implementer(ISolver)
class NeverAnswers:
    """A solver whose every call stays pending (a Deferred of its own each time)."""

    def present(self, request):
        return defer.Deferred()

    cleanUp = present


class DrainTests(SynchronousTestCase):
    """The lifecycle on a fake clock, driven through the real site in memory."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.pending = defer.Deferred()
        self.solver = RecordingSolver(self.pending)
        self.lifecycle = Lifecycle(self.clock)
        self.resource = APIResource(APIIdentity(group=GROUP, solver=SOLVER), self.solver,
                                    clock=self.clock, lifecycle=self.lifecycle)
        self.site = APISite(self.resource, reactor=self.clock)

    def get(self, path):
        client = MemoryClient(self.site)
        raw = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        return parseResponse(client.send(raw))

    def test_fakeIsVerified(self):
        verifyObject(ISolver, NeverAnswers())

    def test_readyzFailsOnceStopping(self):
        self.assertEqual(self.get(b"/readyz").code, 200)
        self.lifecycle.stopping = True
        response = self.get(b"/readyz?verbose")
        self.assertEqual(response.code, 500)
        self.assertIn(b"[-]shutdown failed", response.body)

    def test_inFlightPresentFinishesWithinTheGracePeriod(self):
        client = MemoryClient(self.site)
        client.send(postRequest(SOLVER_PATH, BODY))
        self.assertEqual(self.lifecycle.inFlight, 1)
        self.lifecycle.stopping = True
        drained = defer.ensureDeferred(self.lifecycle.drain(self.clock, 10))
        self.clock.advance(3)
        self.pending.callback(None)
        response = parseResponse(client.transport.value())
        self.assertEqual(json.loads(response.body)["response"], {"uid": "", "success": True})
        self.assertEqual(self.successResultOf(drained), 0)

    def test_unfinishedPresentIsAnsweredWhenTheGraceRunsOut(self):
        client = MemoryClient(self.site)
        client.send(postRequest(SOLVER_PATH, BODY))
        self.lifecycle.stopping = True
        drained = defer.ensureDeferred(self.lifecycle.drain(self.clock, 10))
        self.clock.advance(10)
        response = parseResponse(client.transport.value())
        answer = json.loads(response.body)["response"]
        self.assertFalse(answer["success"])
        self.assertIn("kibaship-dns01 is shutting down", answer["status"]["message"])
        self.assertIn("cert-manager will retry", answer["status"]["message"])
        self.assertEqual(self.successResultOf(drained), 0)

    def test_drainGivesUpOnRequestsThatCannotBeAnswered(self):
        """A request stuck before the solver (say, authorization) is not waited on forever."""
        stuck = defer.Deferred()
        self.resource.authorizer = type("Hung", (), {"authorize": lambda self, a: stuck})()
        client = MemoryClient(self.site)
        client.send(postRequest(SOLVER_PATH, BODY))
        drained = defer.ensureDeferred(self.lifecycle.drain(self.clock, 10))
        self.clock.advance(10)
        self.assertNoResult(drained)
        self.clock.advance(CANCEL_SETTLE)
        self.assertEqual(self.successResultOf(drained), 1)

    def test_solverDeadlinesShareOneTimer(self):
        self.resource.solver = NeverAnswers()
        clients = [MemoryClient(self.site) for _ in range(20)]
        for client in clients:
            client.send(postRequest(SOLVER_PATH, BODY))
        self.assertEqual(self.lifecycle.inFlight, 20)
        timers = [c.func.__name__ for c in self.clock.getDelayedCalls()]
        self.assertEqual(timers.count("_expire"), 1, timers)
        self.assertEqual(set(timers), {"_expire", "_readTimedOut"},
                         "and each connection's one read timer, idle while handling")
        self.clock.advance(50)
        for client in clients:
            answer = json.loads(parseResponse(client.transport.value()).body)["response"]
            self.assertIn("did not finish within 50s", answer["status"]["message"])
        self.assertEqual(self.lifecycle.inFlight, 0)
        self.assertNotIn("_expire", [c.func.__name__ for c in self.clock.getDelayedCalls()],
                         "nothing in flight: no deadline timer left behind")

    def test_responsesWhileStoppingCloseTheConnection(self):
        self.solver.outcome = None
        self.lifecycle.stopping = True
        client = MemoryClient(self.site)
        response = parseResponse(client.send(postRequest(SOLVER_PATH, BODY)))
        self.assertEqual(response.code, 201)
        self.assertEqual(response.headers[b"connection"], b"close")
        self.assertTrue(client.transport.disconnecting)


class ListenerShutdownTests(TestCase):
    """The TLS listener's stop: accepting ends at once, the request in flight is answered."""

    async def _go(self):
        pending = defer.Deferred()
        site = await startTLSSite(self, RecordingSolver(pending), shutdownGracePeriod=30)
        inFlight = defer.ensureDeferred(request(
            reactor, "POST", site.url(SOLVER_PATH), caPEM=site.ca.certPEM,
            headers={"Content-Type": ["application/json"]}, body=BODY))
        lifecycle = site.service.site.resource.lifecycle
        await pollUntil(reactor, lambda: lifecycle.inFlight == 1, 10, what="the request")
        health = site.url("/healthz")
        stopped = site.service.stopService()
        await pollUntil(reactor, lambda: site.service.port is None, 10, what="the listener")
        with self.assertRaises(ConnectionRefusedError):
            await request(reactor, "GET", health, caPEM=site.ca.certPEM)
        self.assertFalse(stopped.called, "still draining the request in flight")
        pending.callback(None)
        response = await inFlight
        self.assertEqual(json.loads(response.body)["response"]["success"], True)
        await stopped

    def test_stopDrainsTheRequestInFlight(self):
        return defer.ensureDeferred(self._go())


class SIGTERMTests(TestCase):
    """The real daemon: SIGTERM while a Present waits on a paused Valkey."""

    timeout = 120

    async def _go(self):
        cluster = ValkeyCluster(password="shutdown-test").start()
        self.addCleanup(cluster.stop)
        cwd = tempDir(self, "kibaship-sigterm-")
        env = LocalEnvironment(reactor, cwd, cluster)
        await env.start()
        self.addCleanup(lambda: defer.ensureDeferred(env.stop()))
        port, metricsPort = freePort(), freePort()
        daemon = DaemonProcess(reactor, env.daemonArgs(port, metricsPort, extra=(
            "--shutdown-grace-period", "2s")), cwd=cwd)
        daemon.start()
        self.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
        base = f"https://localhost:{port}"
        await daemon.waitReady(base, env.servingCA.certPEM)
        for node in cluster.primaries():
            cluster.cli(node, "CLIENT", "PAUSE", "20000", "WRITE")
        self.addCleanup(lambda: [cluster.cli(n, "CLIENT", "UNPAUSE") for n in cluster.primaries()])
        present = defer.ensureDeferred(env.post(base))
        await self.untilInFlight(metricsPort, 1)
        daemon.transport.signalProcess(signal.SIGTERM)
        response = await present
        answer = response.json()["response"]
        self.assertFalse(answer["success"])
        self.assertIn("kibaship-dns01 is shutting down", answer["status"]["message"])
        self.assertEqual(await daemon.proto.ended, 0)
        self.assertNotIn(b"Traceback", daemon.output)
        self.assertIn(b"listener drained", daemon.output)

    async def untilInFlight(self, metricsPort, count):
        async def inFlight():
            body = (await request(reactor, "GET", f"http://127.0.0.1:{metricsPort}/metrics")).body
            line = [l for l in body.splitlines() if l.startswith(b"kibaship_dns01_http_requests_in_flight ")]
            return float(line[0].split()[1]) >= count
        for _ in range(200):
            if await inFlight():
                return
            await deferLater(reactor, 0.05, lambda: None)
        self.fail("the Present never reached the daemon")

    def test_inFlightPresentAnsweredAndCleanExit(self):
        return defer.ensureDeferred(self._go())
