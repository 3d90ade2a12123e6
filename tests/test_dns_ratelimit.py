"""Response rate limiting per source network, and its slip answers (issue 21)."""
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.dns import wire
from kibaship_dns01.dns.ratelimit import ANSWER, DROP, SLIP, ResponseRateLimiter, networkOf
from kibaship_dns01.testing.dnsmessages import optRecord, queryBytes, readAnswer
from tests.dnssupport import DELEGATED, ZONE_NAME


class NetworkTests(SynchronousTestCase):
    def test_ipv4Slash24(self):
        self.assertEqual(networkOf("192.0.2.1"), networkOf("192.0.2.254"))
        self.assertNotEqual(networkOf("192.0.2.1"), networkOf("192.0.3.1"))

    def test_ipv6Slash56(self):
        self.assertEqual(networkOf("2001:db8:0:1200::1"), networkOf("2001:db8:0:12ff:ffff::9"))
        self.assertNotEqual(networkOf("2001:db8:0:1200::1"), networkOf("2001:db8:0:1300::1"))
        self.assertEqual(networkOf("fe80::1%eth0"), networkOf("fe80::2"))

    def test_ipv4MappedIntoIPv6IsIPv4(self):
        """A dual-stack socket reports IPv4 peers as ``::ffff:a.b.c.d``."""
        self.assertEqual(networkOf("::ffff:192.0.2.7"), networkOf("192.0.2.8"))


class LimiterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()

    def limiter(self, **options):
        return ResponseRateLimiter(self.clock, **dict(dict(rate=10, burst=5), **options))

    def test_aBurstIsAnsweredThenEverySecondQuerySlips(self):
        limiter = self.limiter()
        decisions = [limiter.decide("192.0.2.1") for _ in range(11)]
        self.assertEqual(decisions, [ANSWER] * 5 + [DROP, SLIP] * 3)

    def test_slipZeroDropsAllAndSlipOneSlipsAll(self):
        never, always = self.limiter(slip=0), self.limiter(slip=1)
        self.assertEqual({never.decide("192.0.2.1") for _ in range(20)}, {ANSWER, DROP})
        self.assertEqual({always.decide("192.0.2.1") for _ in range(20)}, {ANSWER, SLIP})

    def test_oneNetworkLimitedAnotherAnswered(self):
        limiter = self.limiter()
        for _ in range(50):
            limiter.decide("192.0.2.%d" % (_ % 250))  # one /24, many hosts
        self.assertNotEqual(limiter.decide("192.0.2.99"), ANSWER)
        self.assertEqual([limiter.decide("198.51.100.1") for _ in range(5)], [ANSWER] * 5)
        self.assertEqual(limiter.decide("2001:db8::1"), ANSWER)

    def test_theBucketRefillsWithTheClock(self):
        limiter = self.limiter()
        for _ in range(20):
            limiter.decide("192.0.2.1")
        self.clock.advance(0.1)  # 10/s: one token
        self.assertEqual(limiter.decide("192.0.2.1"), ANSWER)
        self.assertNotEqual(limiter.decide("192.0.2.1"), ANSWER)
        self.clock.advance(60)
        self.assertEqual([limiter.decide("192.0.2.1") for _ in range(6)],
                         [ANSWER] * 5 + [DROP], "refilled to the burst, not beyond")

    def test_theTableIsBounded(self):
        """A forged-source flood over many networks cannot grow the table."""
        limiter = self.limiter(maxNetworks=1000)
        for i in range(20000):
            limiter.decide("10.%d.%d.1" % (i // 256, i % 256))
        self.assertEqual(len(limiter), 1000)

    def test_aBusyNetworkStaysLimitedWhileOthersComeAndGo(self):
        limiter = self.limiter(maxNetworks=100)
        for i in range(5000):
            limiter.decide("192.0.2.1")
            limiter.decide("10.0.%d.1" % (i % 250))
        self.assertNotEqual(limiter.decide("192.0.2.1"), ANSWER, "seen most recently: kept")

    def test_badSettingsAreRefused(self):
        for options, name in ((dict(rate=-1), "rate"), (dict(burst=0), "burst"),
                              (dict(slip=-1), "slip"), (dict(maxNetworks=0), "maxNetworks")):
            error = self.assertRaises(ValueError, self.limiter, **options)
            self.assertIn(name, str(error))


class SlipAnswerTests(SynchronousTestCase):
    def test_theSlipIsTheQuestionTruncated(self):
        for query in (queryBytes(DELEGATED, recDes=1), queryBytes(ZONE_NAME, dns.SOA,
                                                                  edns=optRecord(4096))):
            slip = wire.slipAnswer(query)
            self.assertLessEqual(len(slip), len(query))
            answer = readAnswer(slip)
            message = answer.message
            self.assertEqual((message.id, message.answer, message.trunc, message.rCode),
                             (0x1234, 1, 1, dns.OK))
            self.assertEqual(message.recDes, readAnswer(query).message.recDes)
            self.assertEqual((message.answers, message.authority, message.additional),
                             ([], [], []))
            self.assertEqual(slip[12:], query[12:12 + len(slip) - 12], "the question as sent")

    def test_nothingToSlipFor(self):
        answerBit = bytearray(queryBytes(ZONE_NAME))
        answerBit[2] |= 0x80
        twoQuestions = queryBytes(None, questions=[(ZONE_NAME, dns.A, dns.IN)] * 2)
        for data in (b"", b"\x12" * 11, bytes(answerBit), twoQuestions,
                     queryBytes(ZONE_NAME)[:20], b"\x12\x34\x00\x00\x00\x01" + bytes(6) +
                     b"\xc0\x0c\x00\x01\x00\x01"):
            self.assertIsNone(wire.slipAnswer(data), data)
