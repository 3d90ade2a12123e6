"""CNAMEChecker against a real DNS server on loopback (Twisted Names as the recursive
resolver): chains, NXDOMAIN, NODATA, SERVFAIL, silence; and the verified fake."""
import socket

from twisted.internet import defer, reactor
from twisted.names import common, dns, error, server
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from kibaship_dns01.delegation.check import CNAMEChecker, resolversFromResolvConf
from kibaship_dns01.interfaces import ICNAMEChecker
from kibaship_dns01.testing.fakecname import FakeCNAMEChecker

TARGET = "eknd7jawcbok2v5d6sq2vubqqugqxbpi.acme.kibaship.test"


class Records(common.ResolverBase):
    """What the stand-in resolver knows: CNAMEs, names that exist without one, and
    names it answers SERVFAIL for."""

    def __init__(self, cnames=(), existing=(), failing=()):
        super().__init__()
        self.cnames = dict(cnames)
        self.existing = set(existing)
        self.failing = set(failing)

    def _lookup(self, name, cls, type, timeout):
        name = name.decode().lower()
        if name in self.failing:
            # anything but a DomainError is SERVFAIL to Twisted's server
            return defer.fail(RuntimeError("upstream unreachable"))
        if name in self.cnames:
            rr = dns.RRHeader(name, dns.CNAME, payload=dns.Record_CNAME(self.cnames[name]))
            return defer.succeed(([rr], [], []))
        if name in self.existing:
            return defer.succeed(([], [], []))
        return defer.fail(error.DomainError(name))


class CheckerTests(TestCase):
    def serve(self, **records):
        factory = server.DNSServerFactory(clients=[Records(**records)])
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return CNAMEChecker([("127.0.0.1", port.getHost().port)], reactor)

    def test_providesInterface(self):
        self.assertTrue(verifyObject(ICNAMEChecker, CNAMEChecker([("127.0.0.1", 53)], reactor)))
        self.assertTrue(verifyObject(ICNAMEChecker, FakeCNAMEChecker()))

    @defer.inlineCallbacks
    def test_cnameToTheTarget(self):
        checker = self.serve(cnames={"_acme-challenge.example.test": TARGET})
        self.assertIs((yield checker.check("_acme-challenge.example.test", TARGET)), True)
        # names compare without case and trailing dot, as DNS does
        self.assertIs((yield checker.check("_ACME-challenge.Example.test.", TARGET.upper())),
                      True)

    @defer.inlineCallbacks
    def test_chainIsFollowed(self):
        checker = self.serve(cnames={"_acme-challenge.example.test": "acme.example.test",
                                     "acme.example.test": TARGET})
        self.assertIs((yield checker.check("_acme-challenge.example.test", TARGET)), True)

    @defer.inlineCallbacks
    def test_cnameElsewhereIsFalse(self):
        checker = self.serve(cnames={"_acme-challenge.example.test": "other.acme.kibaship.test"})
        self.assertIs((yield checker.check("_acme-challenge.example.test", TARGET)), False)

    @defer.inlineCallbacks
    def test_loopEndsFalse(self):
        checker = self.serve(cnames={"a.example.test": "b.example.test",
                                     "b.example.test": "a.example.test"})
        self.assertIs((yield checker.check("a.example.test", TARGET)), False)

    @defer.inlineCallbacks
    def test_nxdomainAndNodataAreFalse(self):
        checker = self.serve(existing={"_acme-challenge.txt.example.test"})
        self.assertIs((yield checker.check("_acme-challenge.none.example.test", TARGET)), False)
        self.assertIs((yield checker.check("_acme-challenge.txt.example.test", TARGET)), False)

    @defer.inlineCallbacks
    def test_servfailIsUnknown(self):
        checker = self.serve(failing={"_acme-challenge.example.test"})
        self.assertIsNone((yield checker.check("_acme-challenge.example.test", TARGET)))
        self.flushLoggedErrors(RuntimeError)  # the stand-in resolver's server logs its failure

    @defer.inlineCallbacks
    def test_silentResolverIsUnknownWithinTheBudget(self):
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        self.addCleanup(silent.close)
        checker = CNAMEChecker([silent.getsockname()], reactor, budget=0.3)
        started = reactor.seconds()
        self.assertIsNone((yield checker.check("_acme-challenge.example.test", TARGET)))
        self.assertLess(reactor.seconds() - started, 1.0)


class ResolvConfTests(SynchronousTestCase):
    def test_nameserverLines(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("search svc.cluster.local\nnameserver 10.96.0.10\n# nameserver 1.1.1.1\n"
                    "nameserver fe80::1%eth0\noptions ndots:5\n")
        self.assertEqual(resolversFromResolvConf(path), [("10.96.0.10", 53), ("fe80::1", 53)])

    def test_missingFile(self):
        self.assertEqual(resolversFromResolvConf(self.mktemp()), [])


class FakeTests(SynchronousTestCase):
    def test_answersAsProgrammed(self):
        fake = FakeCNAMEChecker()
        fake.delegate("_acme-challenge.a.test", TARGET)
        fake.unknown.add("_acme-challenge.c.test")
        results = [self.successResultOf(fake.check(n, TARGET)) for n in (
            "_acme-challenge.a.test", "_acme-challenge.b.test", "_acme-challenge.c.test")]
        self.assertEqual(results, [True, False, None])
        self.assertEqual(len(fake.calls), 3)
