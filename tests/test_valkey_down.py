"""Valkey fully down: appends fail within the configured bound with a clear
error - measured on a Clock for a black-holed cluster, and for real against
ports where nothing listens."""
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kibaship_dns01 import metrics
from kibaship_dns01.testing.ports import refusingPort
from kibaship_dns01.valkey import ValkeyPublisher, ValkeyTarget, ValkeyUnavailable


class BlackHoleTests(SynchronousTestCase):
    """Connections that never complete (a dead pod IP, a dropping firewall)."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.publisher = ValkeyPublisher(self.reactor)
        self.publisher.startService()
        self.target = ValkeyTarget(seeds=("10.255.0.1:6379", "10.255.0.2:6379"),
                                   connectTimeout=1.0, operationTimeout=3.0)

    def test_failsAtTheBound(self):
        before = metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_valkey_errors_total", {"kind": "unavailable"}) or 0
        d = self.publisher.append(self.target, "p", {"a": "1"}, "k")
        self.reactor.pump([0.01] * 299)
        self.assertNoResult(d)
        self.assertGreater(len(self.reactor.tcpClients), 2, "it kept trying meanwhile")
        self.reactor.advance(0.02)
        err = self.failureResultOf(d, ValkeyUnavailable).value
        self.assertIn("could not reach Valkey cluster at 10.255.0.1:6379,10.255.0.2:6379 "
                      "within 3s", str(err))
        self.assertIn("could not connect to Valkey node 10.255.0.1:6379 within 1s", str(err))
        self.assertEqual(metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_valkey_errors_total", {"kind": "unavailable"}) - before, 1)

    def test_checkFailsAtTheBoundToo(self):
        d = self.publisher.check(self.target)
        self.reactor.advance(2.9)
        self.assertNoResult(d)
        self.reactor.pump([0.05] * 4)
        self.failureResultOf(d, ValkeyUnavailable)

    def test_stopLeavesNothingScheduled(self):
        d = self.publisher.append(self.target, "p", {"a": "1"}, "k")
        self.reactor.advance(0.5)
        self.successResultOf(self.publisher.stopService())
        self.failureResultOf(d, ValkeyUnavailable)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class RefusedTests(TestCase):
    """Real sockets: every seed refuses the connection."""

    def test_refused(self):
        publisher = ValkeyPublisher(reactor)
        publisher.startService()
        self.addCleanup(publisher.stopService)
        (port1, held1), (port2, held2) = refusingPort(), refusingPort()
        self.addCleanup(held1.close)
        self.addCleanup(held2.close)
        seeds = ("127.0.0.1:%d" % port1, "127.0.0.1:%d" % port2)
        target = ValkeyTarget(seeds=seeds, operationTimeout=0.5)
        d = self.assertFailure(publisher.append(target, "p", {"a": "1"}, "k"), ValkeyUnavailable)

        def check(err):
            self.assertIn("could not reach Valkey cluster at %s within 0.5s" % (
                ",".join(seeds),), str(err))
            self.assertIn("refused", str(err).lower())
        return d.addCallback(check)
