"""The DNS harness (kibaship_dns01/testing/dnsservers.py) with the real software.

knot serves a user's zone, unbound resolves through stub zones, and the path
delegated renewals depend on works end to end: ``_acme-challenge.<domain>``
in the user's zone (knot) becomes a CNAME into a delegation zone, and
``dig`` through unbound returns the key the delegation zone serves. The
delegation zone here is a bare Twisted Names server in the test's reactor, a
stand-in for the daemon's responder: that is why every dig and control call
runs as a child process the reactor waits for.
"""
import os
import socket

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.names import authority, common, dns, server
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kibaship_dns01.testing import dnsservers
from kibaship_dns01.testing.dnsservers import (DigAnswer, DigFailed, DNSServerError,
                                               DNSToolMissing, KnotServer, UnboundResolver,
                                               dig)

USER_ZONE = "example.test"
DELEGATION_ZONE = "acme.test"
LABEL = "mfrggzdfmztwq2lknnwg23tpobyxe43u"
KEY = "Y2hhbGxlbmdlLWtleS1mb3ItdGVzdA"


class StandInZone(authority.FileAuthority):
    """The delegation zone, in memory: SOA and NS at the apex and TXT ``KEY`` at
    ``LABEL``; it remembers every name it was asked for."""

    def __init__(self, zone, texts):
        common.ResolverBase.__init__(self)
        self._cache = {}
        self.asked = []
        apex = zone.encode()
        self.soa = (apex, dns.Record_SOA(mname=b"ns1." + apex, rname=b"hostmaster." + apex,
                                         serial=1, refresh=3600, retry=600, expire=86400,
                                         minimum=1, ttl=1))
        self.records = {apex: [self.soa[1], dns.Record_NS(b"ns1." + apex, ttl=1)]}
        for label, text in texts.items():
            self.records[b"%s.%s" % (label.encode(), apex)] = [dns.Record_TXT(text.encode(),
                                                                              ttl=1)]

    def _lookup(self, name, cls, type, timeout=None):
        self.asked.append((name.lower().decode(), dns.QUERY_TYPES.get(type, type)))
        return super()._lookup(name, cls, type, timeout)


def serveStandIn(testCase, zone):
    """Serve ``zone`` on UDP and TCP of one free loopback port; :return: ``(host, port)``."""
    factory = server.DNSServerFactory(authorities=[zone])
    for _ in range(20):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except CannotListenError:
            udp.stopListening()
            continue
        testCase.addCleanup(udp.stopListening)
        testCase.addCleanup(tcp.stopListening)
        return ("127.0.0.1", port)
    testCase.fail("no port free for both UDP and TCP")


async def startKnot(testCase, records=()):
    knot = KnotServer(reactor, USER_ZONE, records)
    testCase.addCleanup(lambda: defer.ensureDeferred(knot.stop()))
    return await knot.start()


async def startUnbound(testCase, stubs):
    unbound = UnboundResolver(reactor, stubs)
    testCase.addCleanup(lambda: defer.ensureDeferred(unbound.stop()))
    return await unbound.start()


def assertGone(testCase, pid):
    """The process ``pid`` no longer exists (reaped, not just signalled)."""
    testCase.assertRaises(ProcessLookupError, os.kill, pid, 0)


class KnotTests(TestCase):
    """knot serves the user's zone, takes changes, and stops without leaving anything."""

    timeout = 60

    async def test_servesTheZone(self):
        knot = await startKnot(self, [("www", "A", "192.0.2.1")])
        answer = await dig(reactor, knot.address, "www.example.test", "A", ("+norec",))
        self.assertEqual((answer.status, answer.values("A")), ("NOERROR", ["192.0.2.1"]))
        self.assertIn("aa", answer.flags)
        missing = await dig(reactor, knot.address, "nope.example.test", "A", ("+norec",))
        self.assertEqual(missing.status, "NXDOMAIN")
        self.assertEqual([r.rdtype for r in missing.authority], ["SOA"])
        overTCP = await dig(reactor, knot.address, "www.example.test", "A", ("+tcp",))
        self.assertEqual(overTCP.values("A"), ["192.0.2.1"])

    async def test_setRecordServedWithAHigherSerial(self):
        knot = await startKnot(self, [("www", "A", "192.0.2.1")])
        await knot.setRecord("_acme-challenge", "CNAME", "%s.%s." % (LABEL, DELEGATION_ZONE))
        answer = await dig(reactor, knot.address, "_acme-challenge.example.test", "CNAME")
        self.assertEqual(answer.values("CNAME"), ["%s.%s." % (LABEL, DELEGATION_ZONE)])
        await knot.setRecord("www", "A", "192.0.2.7", "192.0.2.8")
        answer = await dig(reactor, knot.address, "www.example.test", "A")
        self.assertEqual(sorted(answer.values("A")), ["192.0.2.7", "192.0.2.8"])
        soa = await dig(reactor, knot.address, USER_ZONE, "SOA")
        self.assertEqual(soa.values("SOA")[0].split()[2], "3")
        await knot.removeRecord("_acme-challenge", "CNAME")
        gone = await dig(reactor, knot.address, "_acme-challenge.example.test", "CNAME")
        self.assertEqual((gone.status, gone.answer), ("NXDOMAIN", ()))

    async def test_stopEndsTheProcessAndRemovesItsFiles(self):
        knot = await startKnot(self)
        pid, directory = knot.process.pid, knot.directory
        self.assertTrue(os.path.isfile(os.path.join(directory, "knotd.conf")))
        await knot.stop()
        assertGone(self, pid)
        self.assertFalse(os.path.exists(directory))
        await knot.stop()  # idempotent

    async def test_badRecordRefusedWithKnotsMessage(self):
        knot = KnotServer(reactor, USER_ZONE, [("www", "A", "not-an-address")])
        self.addCleanup(lambda: defer.ensureDeferred(knot.stop()))
        e = await self.assertFailure(defer.ensureDeferred(knot.start()), DNSServerError)
        self.assertIn("zone-check example.test. exited with 1", str(e))
        self.assertIn("line 6", str(e), "knot says where")
        self.assertIsNone(knot.process, "knotd was never started")
        self.assertIsNone(knot.directory)

    async def test_badChangeLeavesTheZoneAsItWas(self):
        knot = await startKnot(self, [("www", "A", "192.0.2.1")])
        e = await self.assertFailure(defer.ensureDeferred(
            knot.setRecord("www", "A", "192.0.2.300")), DNSServerError)
        self.assertIn("zone-check", str(e))
        self.assertEqual(knot.serial, 1)
        await knot.setRecord("mail", "A", "192.0.2.25")
        answer = await dig(reactor, knot.address, "www.example.test", "A")
        self.assertEqual(answer.values("A"), ["192.0.2.1"])
        soa = await dig(reactor, knot.address, USER_ZONE, "SOA")
        self.assertEqual(soa.values("SOA")[0].split()[2], "2")

    async def test_serverThatNeverAnswersTimesOutWithItsLog(self):
        knot = KnotServer(reactor, USER_ZONE, startTimeout=1)
        self.addCleanup(lambda: defer.ensureDeferred(knot.stop()))
        # knot is asked for a zone it does not serve, so it never "answers"
        self.patch(knot, "zone", "other.test.")
        self.patch(knot, "_publish", lambda records, serial: defer.succeed(None))
        e = await self.assertFailure(defer.ensureDeferred(knot.start()), DNSServerError)
        self.assertIn("did not answer within 1s; its log:", str(e))
        self.assertIn("Knot DNS", str(e))
        assertGone(self, knot.process.pid)
        self.assertIsNone(knot.directory)


class UnboundTests(TestCase):
    """unbound resolves through its stub zones, and forgets on flush."""

    timeout = 60

    async def test_resolvesTheUserZoneThroughKnot(self):
        knot = await startKnot(self, [("www", "A", "192.0.2.1")])
        unbound = await startUnbound(self, {USER_ZONE: knot.address})
        answer = await dig(reactor, unbound.address, "www.example.test", "A")
        self.assertEqual((answer.status, answer.values("A")), ("NOERROR", ["192.0.2.1"]))
        self.assertIn("ra", answer.flags)
        self.assertNotIn("aa", answer.flags, "a recursive answer, not knot's own")
        await knot.setRecord("www", "A", "192.0.2.2")
        cached = await dig(reactor, unbound.address, "www.example.test", "A")
        self.assertEqual(cached.values("A"), ["192.0.2.1"], "unbound answers from its cache")
        await unbound.flush()
        fresh = await dig(reactor, unbound.address, "www.example.test", "A")
        self.assertEqual(fresh.values("A"), ["192.0.2.2"])

    async def test_badStubRefusedWithUnboundsMessage(self):
        unbound = UnboundResolver(reactor, {USER_ZONE: ("not-an-address", 53)})
        self.addCleanup(lambda: defer.ensureDeferred(unbound.stop()))
        e = await self.assertFailure(defer.ensureDeferred(unbound.start()), DNSServerError)
        self.assertIn("unbound-checkconf", str(e))
        self.assertIn("cannot parse stub example.test.", str(e))
        self.assertIsNone(unbound.process, "unbound was never started")
        self.assertIsNone(unbound.directory)

    async def test_stopEndsTheProcess(self):
        unbound = await startUnbound(self, {})
        pid, directory = unbound.process.pid, unbound.directory
        await unbound.stop()
        assertGone(self, pid)
        self.assertFalse(os.path.exists(directory))


class CNAMEPathTests(TestCase):
    """The path of cert-manager's self-check and the CA: a recursive resolver
    follows the user's CNAME into the delegation zone and finds the key."""

    timeout = 90

    async def test_keyReachableOnlyOnceTheCNAMEIsThere(self):
        standIn = StandInZone(DELEGATION_ZONE, {LABEL: KEY})
        delegation = serveStandIn(self, standIn)
        knot = await startKnot(self, [("www", "A", "192.0.2.1")])
        unbound = await startUnbound(self, {USER_ZONE: knot.address,
                                            DELEGATION_ZONE: delegation})
        challenge = "_acme-challenge.%s" % (USER_ZONE,)

        before = await dig(reactor, unbound.address, challenge, "TXT")
        self.assertEqual((before.status, before.values("TXT")), ("NXDOMAIN", []))
        direct = await dig(reactor, delegation, "%s.%s" % (LABEL, DELEGATION_ZONE), "TXT")
        self.assertEqual(direct.values("TXT"), [KEY], "the stand-in serves the key")

        await knot.setRecord("_acme-challenge", "CNAME", "%s.%s." % (LABEL, DELEGATION_ZONE))
        await unbound.flush()
        after = await dig(reactor, unbound.address, challenge, "TXT")
        self.assertEqual(after.status, "NOERROR")
        self.assertEqual(after.values("CNAME"), ["%s.%s." % (LABEL, DELEGATION_ZONE)])
        self.assertEqual(after.values("TXT"), [KEY])
        self.assertIn(("%s.%s" % (LABEL, DELEGATION_ZONE), "TXT"), standIn.asked,
                      "unbound asked the delegation zone's server")

    async def test_wrongTargetFindsNoKey(self):
        delegation = serveStandIn(self, StandInZone(DELEGATION_ZONE, {LABEL: KEY}))
        knot = await startKnot(self, [("_acme-challenge", "CNAME",
                                       "b" * 32 + "." + DELEGATION_ZONE + ".")])
        unbound = await startUnbound(self, {USER_ZONE: knot.address,
                                            DELEGATION_ZONE: delegation})
        answer = await dig(reactor, unbound.address, "_acme-challenge.example.test", "TXT")
        self.assertEqual((answer.status, answer.values("TXT")), ("NXDOMAIN", []))
        self.assertEqual(len(answer.values("CNAME")), 1)


class DigTests(TestCase):
    """dig's output read back; no answer at all is an error, not an empty answer."""

    timeout = 30

    async def test_noServerIsDigFailed(self):
        port = dnsservers.freeDNSPort()  # nothing listens there
        e = await self.assertFailure(defer.ensureDeferred(
            dig(reactor, ("127.0.0.1", port), "example.test")), DigFailed)
        self.assertIn("dig @127.0.0.1 -p %d example.test A" % (port,), str(e))

    async def test_hungToolKilled(self):
        sleep = dnsservers.findTool("sleep")
        e = await self.assertFailure(defer.ensureDeferred(
            dnsservers.runTool(reactor, [sleep, "30"], timeout=0.3)), DNSServerError)
        self.assertIn("did not finish within 0.3s and was killed", str(e))

    async def test_runToolReportsExitCodeAndOutput(self):
        sh = dnsservers.findTool("sh")
        result = await dnsservers.runTool(reactor, [sh, "-c", "echo out; echo err >&2; exit 3"])
        self.assertEqual((result.code, result.stdout), (3, "out\n"))
        self.assertIn("err", result.output)
        e = await self.assertFailure(defer.ensureDeferred(
            dnsservers.checkedTool(reactor, [sh, "-c", "echo nope >&2; exit 3"])), DNSServerError)
        self.assertIn("exited with 3", str(e))
        self.assertIn("nope", str(e))


#: dig 9.18's output for an answer through a CNAME (trimmed of nothing that matters)
CNAME_OUTPUT = """
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> @127.0.0.1 -p 5353 _acme-challenge.example.test TXT
; (1 server found)
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4242
;; flags: qr rd ra; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 1

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; QUESTION SECTION:
;_acme-challenge.example.test.\tIN\tTXT

;; ANSWER SECTION:
_acme-challenge.example.test. 60 IN\tCNAME\tabc.acme.test.
abc.acme.test.\t\t1\tIN\tTXT\t"first" "sec\\"ond"
abc.acme.test.\t\t1\tIN\tTXT\t"other"

;; Query time: 3 msec
;; SERVER: 127.0.0.1#5353(127.0.0.1) (UDP)
"""

NXDOMAIN_OUTPUT = """
;; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 7
;; flags: qr aa; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 0

;; AUTHORITY SECTION:
acme.test.\t\t1\tIN\tSOA\tns1.acme.test. hostmaster.acme.test. 1 3600 600 86400 1
"""


class DigParseTests(SynchronousTestCase):

    def test_answerThroughCNAME(self):
        answer = DigAnswer.parse(CNAME_OUTPUT)
        self.assertEqual(answer.status, "NOERROR")
        self.assertEqual(answer.flags, {"qr", "rd", "ra"})
        self.assertEqual([r.rdtype for r in answer.answer], ["CNAME", "TXT", "TXT"])
        self.assertEqual(answer.answer[0].ttl, 60)
        self.assertEqual(answer.answer[1].strings, ["first", 'sec"ond'])
        self.assertEqual(answer.values("TXT"), ['firstsec"ond', "other"])
        self.assertEqual(answer.values("cname"), ["abc.acme.test."])
        self.assertEqual((answer.authority, answer.additional), ((), ()))

    def test_negativeAnswer(self):
        answer = DigAnswer.parse(NXDOMAIN_OUTPUT)
        self.assertEqual((answer.status, answer.answer, answer.values("TXT")),
                         ("NXDOMAIN", (), []))
        self.assertEqual(answer.authority[0].data.split()[2], "1")
        self.assertIn("aa", answer.flags)

    def test_noResponse(self):
        e = self.assertRaises(DigFailed, DigAnswer.parse,
                              ";; communications error to 127.0.0.1#9: timed out\n")
        self.assertIn("timed out", str(e))


class ToolTests(SynchronousTestCase):
    """A missing program is named with the package that provides it."""

    def test_missingProgramNamed(self):
        for name, package in [("knotd", "knot"), ("unbound", "unbound"),
                              ("dig", "bind9-dnsutils")]:
            e = self.assertRaises(DNSToolMissing, dnsservers.findTool, name, path="/nonexistent",
                                  sbin=())
            self.assertIn(name + " not found", str(e))
            self.assertIn("install the Debian package " + package, str(e))

    def test_sbinSearched(self):
        """knotd and unbound live in /usr/sbin, which a plain user's PATH lacks."""
        self.assertEqual(dnsservers.findTool("knotd", path="/nonexistent"), "/usr/sbin/knotd")

    def test_startRefusedWithoutTheProgram(self):
        self.patch(dnsservers, "SBIN", ())
        self.patch(os, "environ", dict(os.environ, PATH="/nonexistent"))
        for server in (KnotServer(reactor, USER_ZONE), UnboundResolver(reactor, {})):
            d = defer.ensureDeferred(server.start())
            self.assertIsInstance(self.failureResultOf(d, DNSToolMissing).value, DNSToolMissing)
            self.assertIsNone(server.directory, "nothing was created")

    def test_freeDNSPortBindsBoth(self):
        port = dnsservers.freeDNSPort()
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))

