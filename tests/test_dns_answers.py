"""The DNS responder's answers (issue 21): every rcode path over the fake store."""
from twisted.internet import defer
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kibaship_dns01 import metrics
from kibaship_dns01.dns import wire
from kibaship_dns01.dns.zone import Zone
from kibaship_dns01.interfaces import IDelegationStore
from kibaship_dns01.testing.dnsmessages import optRecord, queryBytes, readAnswer
from kibaship_dns01.testing.fakedelegation import FakeDelegationStore
from tests.dnssupport import (DELEGATED, KEY, KEY2, LABEL, OTHER_LABEL, ZONE, ZONE_NAME,
                              ResponderFixture, manyKeys)
from tests.support import LogCapture


def _soa(answer):
    [record] = answer.authority
    return record


class ApexTests(ResponderFixture, SynchronousTestCase):
    def setUp(self):
        self.setUpResponder()

    def test_soa(self):
        answer = self.ask(ZONE_NAME, dns.SOA)
        self.assertEqual(answer.rcode, dns.OK)
        self.assertTrue(answer.message.auth)
        self.assertFalse(answer.message.recAv)
        [record] = answer.answers
        soa = record.payload
        self.assertEqual((record.type, record.ttl), (dns.SOA, 3600))
        self.assertEqual((soa.mname.name, soa.rname.name), (b"ns1.acme.example.com",
                                                            b"hostmaster.acme.example.com"))
        self.assertEqual((soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum),
                         (1, 3600, 600, 604800, 10))
        self.assertEqual(self.lookups(), [], "the apex is never looked up in the store")

    def test_ns(self):
        answer = self.ask(ZONE_NAME, dns.NS)
        self.assertEqual([(rr.payload.name.name, rr.ttl) for rr in answer.answers],
                         [(b"ns1.acme.example.com", 3600), (b"ns2.example.net", 3600),
                          (b"ns3.dns.acme.example.com", 3600)])
        self.assertEqual(answer.message.additional, [], "minimal responses: no glue added")

    def test_otherTypesAtTheApexAreNoData(self):
        for qtype in (dns.A, dns.AAAA, dns.TXT, dns.MX, dns.CNAME):
            answer = self.ask(ZONE_NAME, qtype)
            self.assertEqual((answer.rcode, answer.answers), (dns.OK, []), qtype)
            self.assertEqual((_soa(answer).type, _soa(answer).ttl), (dns.SOA, 10),
                             "RFC 2308: min(SOA TTL, minimum)")
            self.assertTrue(answer.message.auth)

    def test_inZoneNameserverAddresses(self):
        a = self.ask("ns1." + ZONE_NAME, dns.A)
        aaaa = self.ask("ns1." + ZONE_NAME, dns.AAAA)
        self.assertEqual([rr.payload.dottedQuad() for rr in a.answers], ["192.0.2.53"])
        self.assertEqual([(rr.type, rr.ttl) for rr in aaaa.answers], [(dns.AAAA, 3600)])
        nodata = self.ask("ns3.dns." + ZONE_NAME, dns.AAAA)
        self.assertEqual((nodata.rcode, nodata.answers, _soa(nodata).ttl), (dns.OK, [], 10))

    def test_theNameAboveADeepNameserverExistsWithoutData(self):
        answer = self.ask("dns." + ZONE_NAME, dns.A)
        self.assertEqual((answer.rcode, answer.answers), (dns.OK, []), "an empty non-terminal")
        self.assertEqual(self.ask("x.dns." + ZONE_NAME, dns.A).rcode, dns.ENAME)


class DelegationLabelTests(ResponderFixture, SynchronousTestCase):
    def setUp(self):
        self.setUpResponder()

    def test_keysAreServedAsTXT(self):
        self.serve(KEY, KEY2)
        answer = self.ask(DELEGATED, dns.TXT)
        self.assertEqual(answer.rcode, dns.OK)
        self.assertTrue(answer.message.auth)
        self.assertEqual(answer.strings(), [KEY.encode(), KEY2.encode()])
        self.assertEqual({len(rr.payload.data) for rr in answer.answers}, {1},
                         "one string per key")
        self.assertEqual({rr.ttl for rr in answer.answers}, {10})
        self.assertEqual(self.lookups(), [LABEL])

    def test_aKeyGivenTwiceIsOneRecord(self):
        self.store.keys = lambda label: defer.succeed([KEY, KEY, KEY2])
        self.assertEqual(self.ask(DELEGATED).strings(), [KEY.encode(), KEY2.encode()])

    def test_aLabelWithoutKeysIsNXDOMAIN(self):
        self.serve(KEY, label=OTHER_LABEL)
        answer = self.ask(DELEGATED, dns.TXT)
        self.assertEqual((answer.rcode, answer.answers), (dns.ENAME, []))
        self.assertTrue(answer.message.auth)
        soa = _soa(answer)
        self.assertEqual((soa.type, soa.ttl, soa.name.name), (dns.SOA, 10, ZONE_NAME.encode()))

    def test_expiredKeysAreGone(self):
        self.serve(KEY, ttl=30)
        self.clock.advance(31)
        self.assertEqual(self.ask(DELEGATED).rcode, dns.ENAME)

    def test_otherTypesAtALabelWithKeysAreNoData(self):
        self.serve(KEY)
        for qtype in (dns.A, dns.AAAA, dns.CNAME, dns.SOA):
            answer = self.ask(DELEGATED, qtype)
            self.assertEqual((answer.rcode, answer.answers, _soa(answer).ttl),
                             (dns.OK, [], 10), qtype)

    def test_namesOfAnotherShapeAreNXDOMAINWithoutAskingTheStore(self):
        self.serve(KEY)
        for name in ("www." + ZONE_NAME, LABEL[:-1] + "." + ZONE_NAME,
                     LABEL + "x." + ZONE_NAME, LABEL.replace("a", "1", 1) + "." + ZONE_NAME,
                     "x." + DELEGATED, "_acme-challenge." + DELEGATED):
            answer = self.ask(name, dns.TXT)
            self.assertEqual((answer.rcode, answer.answers), (dns.ENAME, []), name)
            self.assertEqual(_soa(answer).type, dns.SOA)
        self.assertEqual(self.lookups(), [])

    def test_theQuestionsSpellingIsEchoedAndOwnsTheAnswers(self):
        """0x20: a resolver randomizes the letter case and checks it comes back."""
        self.serve(KEY)
        spelled = "".join(c.upper() if i % 2 else c for i, c in enumerate(DELEGATED))
        answer = self.ask(spelled, dns.TXT)
        self.assertEqual(answer.message.queries[0].name.name, spelled.encode())
        self.assertEqual([rr.name.name for rr in answer.answers], [spelled.encode()])
        apex = self.ask("aCmE.ExAmPlE.cOm", dns.NS)
        self.assertEqual({rr.name.name for rr in apex.answers}, {b"aCmE.ExAmPlE.cOm"})
        missing = self.ask("NoPe." + ZONE_NAME.upper(), dns.TXT)
        self.assertEqual(missing.message.queries[0].name.name, b"NoPe.ACME.EXAMPLE.COM")
        self.assertEqual(_soa(missing).name.name, b"ACME.EXAMPLE.COM",
                         "the SOA's owner: the apex as the question spells it")

    def test_anyIsOneSynthesizedHINFO(self):
        """RFC 8482: never the records themselves."""
        self.serve(*manyKeys(5))
        label = self.ask(DELEGATED, dns.ALL_RECORDS)
        apex = self.ask(ZONE_NAME, dns.ALL_RECORDS)
        for answer, ttl in ((label, 10), (apex, 3600)):
            [record] = answer.answers
            self.assertEqual((record.type, record.ttl), (dns.HINFO, ttl))
            self.assertEqual((record.payload.cpu, record.payload.os), (b"RFC8482", b""))
        self.assertEqual(self.ask("x." + ZONE_NAME, dns.ALL_RECORDS).rcode, dns.ENAME)
        self.assertEqual(self.ask("dns." + ZONE_NAME, dns.ALL_RECORDS).answers, [])


class RefusedTests(ResponderFixture, SynchronousTestCase):
    def setUp(self):
        self.setUpResponder()

    def assertRefused(self, answer, why):
        self.assertEqual((answer.rcode, answer.answers, answer.authority), (dns.EREFUSED, [], []),
                         why)
        self.assertFalse(answer.message.auth, why)
        self.assertFalse(answer.message.recAv, why)

    def test_namesOutsideTheZone(self):
        for name in ("example.com", "com", "", "xacme.example.com", "www.example.org",
                     LABEL + ".example.com"):
            self.assertRefused(self.ask(name, dns.A, recDes=1), name)
        self.assertEqual(self.lookups(), [])

    def test_classesOtherThanIN(self):
        self.assertRefused(self.ask("version.bind", dns.TXT, cls=dns.CH), "CHAOS version.bind")
        self.assertRefused(self.ask(ZONE_NAME, dns.SOA, cls=dns.CH), "CHAOS at the apex")
        self.assertRefused(self.ask(ZONE_NAME, dns.SOA, cls=dns.ANY), "class ANY")

    def test_zoneTransfers(self):
        for qtype in (dns.AXFR, dns.IXFR):
            self.assertRefused(self.ask(ZONE_NAME, qtype), qtype)

    def test_recursionDesiredIsCopiedButNeverAvailable(self):
        answer = self.ask(ZONE_NAME, dns.SOA, recDes=1)
        self.assertEqual((answer.message.recDes, answer.message.recAv), (1, 0))
        self.assertEqual(answer.message.id, 0x1234)


class HeaderTests(ResponderFixture, SynchronousTestCase):
    def setUp(self):
        self.setUpResponder()

    def test_opcodesOtherThanQueryAreNotImplemented(self):
        for opcode in (dns.OP_INVERSE, dns.OP_STATUS, dns.OP_NOTIFY, dns.OP_UPDATE, 15):
            answer = self.ask(ZONE_NAME, dns.SOA, opCode=opcode)
            self.assertEqual((answer.rcode, answer.message.opCode, answer.answers),
                             (dns.ENOTIMP, opcode, []), opcode)

    def test_notExactlyOneQuestionIsFormErr(self):
        for questions in ([], [(ZONE_NAME, dns.SOA, dns.IN)] * 2):
            answer = self.ask(None, questions=questions)
            self.assertEqual((answer.rcode, answer.message.queries), (dns.EFORMAT, []))

    def test_twoOPTRecordsAreFormErr(self):
        data = queryBytes(ZONE_NAME, dns.SOA, edns=optRecord())
        data = data[:11] + b"\x02" + data[12:] + data[-11:]  # ARCOUNT 2, the OPT again
        self.assertEqual(readAnswer(wire.encodeAnswer(self.answerTo(data).message)[0]).rcode,
                         dns.EFORMAT)

    def test_anAnswerIsNotAQuery(self):
        data = bytearray(queryBytes(ZONE_NAME, dns.SOA))
        data[2] |= 0x80
        self.assertIsNone(wire.parseQuery(bytes(data)))


class EDNSTests(ResponderFixture, SynchronousTestCase):
    def setUp(self):
        self.setUpResponder()

    def test_noOPTNoOPTAnd512Octets(self):
        answer = self.answerTo(queryBytes(ZONE_NAME, dns.SOA))
        self.assertEqual((answer.message.additional, answer.udpLimit), ([], 512))

    def test_theOPTIsEchoedWithOurPayloadSize(self):
        for asked, limit in ((4096, 1232), (1232, 1232), (1000, 1000), (512, 512), (100, 512),
                             (0, 512), (65535, 1232)):
            answer = self.answerTo(queryBytes(ZONE_NAME, dns.SOA, edns=optRecord(asked)))
            self.assertEqual(answer.udpLimit, limit, asked)
            read = readAnswer(wire.encodeAnswer(answer.message)[0])
            self.assertEqual((read.payload, read.version, read.rcode), (1232, 0, dns.OK))

    def test_theOPTComesBackOnEveryRcode(self):
        for name, qtype, cls, rcode in ((ZONE_NAME, dns.SOA, dns.IN, dns.OK),
                                        ("nope." + ZONE_NAME, dns.A, dns.IN, dns.ENAME),
                                        ("example.com", dns.A, dns.IN, dns.EREFUSED),
                                        ("version.bind", dns.TXT, dns.CH, dns.EREFUSED)):
            answer = self.ask(name, qtype, cls=cls, edns=optRecord(4096))
            self.assertEqual((answer.rcode, answer.payload), (rcode, 1232), name)

    def test_versionAboveZeroIsBADVERS(self):
        answer = self.ask(ZONE_NAME, dns.SOA, edns=optRecord(version=1))
        self.assertEqual((answer.rcode, answer.version, answer.answers), (dns.EBADVERSION, 0, []))
        self.assertEqual(answer.message.rCode, 0, "BADVERS: header 0, upper bits 1 in the OPT")
        self.assertEqual(answer.message.queries[0].name.name, ZONE_NAME.encode())


class TruncationTests(ResponderFixture, SynchronousTestCase):
    def setUp(self):
        self.setUpResponder()
        self.serve(*manyKeys(12))  # ~ 12 * 56 octets: over 512, under 1232

    def test_tooLargeForUDPWithoutEDNSIsTruncated(self):
        answer = self.ask(DELEGATED, udp=True)
        self.assertTrue(answer.message.trunc)
        self.assertEqual((answer.answers, answer.authority), ([], []))
        self.assertLessEqual(answer.size, 512)
        self.assertEqual(answer.message.queries[0].name.name, DELEGATED.encode())

    def test_largerEDNSSizeTakesItWhole(self):
        answer = self.ask(DELEGATED, udp=True, edns=optRecord(1232))
        self.assertFalse(answer.message.trunc)
        self.assertEqual(len(answer.strings()), 12)
        self.assertGreater(answer.size, 512)

    def test_overTCPItIsWhole(self):
        self.serve(*manyKeys(40))  # over 1232 too
        answer = self.ask(DELEGATED, edns=optRecord(4096))
        self.assertFalse(answer.message.trunc)
        self.assertEqual(len(answer.strings()), 40)
        self.assertGreater(answer.size, 1232)
        self.assertTrue(self.ask(DELEGATED, udp=True, edns=optRecord(4096)).message.trunc)


class StoreFailureTests(ResponderFixture, SynchronousTestCase):
    def setUp(self):
        self.setUpResponder()
        self.logs = LogCapture(self)

    def failures(self, reason):
        return metrics.REGISTRY.get_sample_value("kibaship_dns01_dns_store_failures_total",
                                                 {"reason": reason}) or 0

    def assertServfail(self, answer):
        self.assertEqual((answer.rcode, answer.answers, answer.authority),
                         (dns.ESERVER, [], []))
        self.assertFalse(answer.message.auth)

    def test_aFailingStoreIsSERVFAILNeverNXDOMAIN(self):
        before = self.failures("error")
        self.store.failWith(ConnectionRefusedError("valkey down"))
        self.assertServfail(self.ask(DELEGATED))
        self.assertEqual(self.failures("error") - before, 1)
        [line] = self.logs.ofKind("dns_store_failure")
        self.assertIn("valkey down", line["reason"])

    def test_aStoreRaisingIsSERVFAIL(self):
        def broken(label):
            raise RuntimeError("bug")
        self.store.keys = broken
        self.assertServfail(self.ask(DELEGATED))

    def test_aSilentStoreIsSERVFAILAfterTheTimeout(self):
        before = self.failures("timeout")
        self.store.hang()
        d = self.responder.respond(wire.parseQuery(queryBytes(DELEGATED)))
        self.assertNoResult(d)
        self.assertEqual(self.responder.lookups, 1)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        answer = readAnswer(wire.encodeAnswer(self.successResultOf(d).message)[0])
        self.assertServfail(answer)
        self.assertEqual(self.failures("timeout") - before, 1)
        self.assertEqual(self.responder.lookups, 0)
        self.assertTrue(self.store.hung[0].called, "the lookup was cancelled")

    def test_tooManyLookupsInFlightAreSERVFAILWithoutAsking(self):
        self.setUpResponder(maxLookups=2)
        self.store.hang()
        waiting = [self.responder.respond(wire.parseQuery(queryBytes(DELEGATED)))
                   for _ in range(2)]
        before = self.failures("overload")
        self.assertServfail(self.ask(DELEGATED))
        self.assertEqual((len(self.lookups()), self.failures("overload") - before), (2, 1))
        self.store.hung[0].callback([KEY])
        self.assertEqual(self.successResultOf(waiting[0]).rcode, dns.OK)
        self.store.recover()
        self.serve(KEY)
        self.assertEqual(self.ask(DELEGATED).rcode, dns.OK, "room again")

    def test_aStoreAnsweringNonsenseIsSERVFAIL(self):
        self.store.keys = lambda label: defer.succeed(None)
        self.assertServfail(self.ask(DELEGATED))

    def test_failuresAreLoggedAtMostOncePerInterval(self):
        self.store.failWith(ConnectionRefusedError("valkey down"))
        for _ in range(20):
            self.ask(DELEGATED)
        self.clock.advance(10)
        self.ask(DELEGATED)
        lines = self.logs.ofKind("dns_store_failure")
        self.assertEqual([line["count"] for line in lines], [1, 20])

    def test_namesNotNeedingTheStoreAreAnsweredWhileItIsDown(self):
        self.store.failWith(ConnectionRefusedError("valkey down"))
        self.assertEqual(self.ask(ZONE_NAME, dns.SOA).rcode, dns.OK)
        self.assertEqual(self.ask("www." + ZONE_NAME).rcode, dns.ENAME)


class ZoneTests(SynchronousTestCase):
    def test_defaults(self):
        zone = Zone(name="Acme.Example.COM.", nameservers=["NS1.acme.example.com."])
        self.assertEqual((zone.name, zone.nameservers, zone.mname, zone.rname),
                         ("acme.example.com", ("ns1.acme.example.com",), "ns1.acme.example.com",
                          "hostmaster.acme.example.com"))
        self.assertEqual((zone.ttl, zone.txtTTL, zone.minimum, zone.negativeTTL),
                         (3600, 10, 10, 10))

    def test_badValuesSayWhatToFix(self):
        cases = [
            (dict(name="bad..zone", nameservers=["ns1.x"]), "empty label"),
            (dict(name=ZONE_NAME, nameservers=[]), "at least one nameserver"),
            (dict(name=ZONE_NAME, nameservers=["ns 1.x"]), "nameserver 'ns 1.x'"),
            (dict(name=ZONE_NAME, nameservers=["ns1.example.net"],
                  addresses={"ns1.example.net": ["192.0.2.1"]}), "outside the zone"),
            (dict(name=ZONE_NAME, nameservers=["ns1." + ZONE_NAME],
                  addresses={"ns9." + ZONE_NAME: ["192.0.2.1"]}), "not one of the nameservers"),
            (dict(name=ZONE_NAME, nameservers=["ns1." + ZONE_NAME],
                  addresses={"ns1." + ZONE_NAME: ["300.1.1.1"]}), "not an IPv4 or IPv6"),
            (dict(name=ZONE_NAME, nameservers=["ns1.x"], txtTTL=-1), "txtTTL"),
            (dict(name=ZONE_NAME, nameservers=["ns1.x"], minimum=2 ** 31), "minimum"),
            (dict(name=ZONE_NAME, nameservers=["ns1.x"], ttl="10"), "ttl"),
        ]
        for kwargs, expected in cases:
            error = self.assertRaises(ValueError, Zone, **kwargs)
            self.assertIn(expected, str(error), kwargs)

    def test_relative(self):
        self.assertEqual([ZONE.relative(n) for n in (ZONE_NAME, "a.b." + ZONE_NAME, "example.com",
                                                     "x" + ZONE_NAME)], ["", "a.b", None, None])


class FakeStoreTests(SynchronousTestCase):
    def setUp(self):
        from twisted.internet.task import Clock
        self.clock = Clock()
        self.store = FakeDelegationStore(self.clock)

    def test_implementsTheInterface(self):
        self.assertTrue(verifyObject(IDelegationStore, self.store))

    def test_addWithdrawExpire(self):
        self.successResultOf(self.store.add(LABEL, KEY, 60))
        self.successResultOf(self.store.add(LABEL, KEY2, 10))
        self.assertEqual(self.successResultOf(self.store.keys(LABEL)), [KEY, KEY2])
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(self.store.keys(LABEL)), [KEY])
        self.successResultOf(self.store.withdraw(LABEL, KEY))
        self.successResultOf(self.store.withdraw(LABEL, KEY))
        self.assertEqual(self.successResultOf(self.store.keys(LABEL)), [])

    def test_addingAgainRenews(self):
        self.store.add(LABEL, KEY, 10)
        self.clock.advance(5)
        self.store.add(LABEL, KEY, 10)
        self.clock.advance(9)
        self.assertEqual(self.successResultOf(self.store.keys(LABEL)), [KEY])

    def test_programmedFailures(self):
        self.store.failWith(ConnectionRefusedError("down"))
        self.failureResultOf(self.store.keys(LABEL), ConnectionRefusedError)
        self.store.hang()
        self.assertNoResult(self.store.keys(LABEL))
        self.store.recover()
        self.assertEqual(self.successResultOf(self.store.keys(LABEL)), [])

    def test_aLabelOfAnotherShapeIsRefused(self):
        error = self.assertRaises(ValueError, self.store.add, "www", KEY, 10)
        self.assertIn("not a delegation label", str(error))
