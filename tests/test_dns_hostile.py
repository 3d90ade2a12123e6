"""Hostile packets through the DNS responder (issue 21), UDP and TCP.

The real parser, responder and transports over the fake store, in memory, so
hypothesis can try hundreds of packets a second.  Properties: nothing raises
and nothing is logged as an error; every answer parses and carries its
query's id; and no answer is larger than 3 times its query except a TXT
answer at a label with keys (the one answer that is worth its size); a rate
limiter's slip is never larger than its query.

The zone is the shape a platform runs (two in-zone nameservers): an NS
answer's size depends on the names the operator configures.
"""
from hypothesis import HealthCheck, given, settings
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.dns.answers import Responder
from kibaship_dns01.dns.ratelimit import ResponseRateLimiter
from kibaship_dns01.dns.tcp import DNSStreamFactory
from kibaship_dns01.dns.udp import DNSDatagramProtocol
from kibaship_dns01.dns.zone import Zone
from kibaship_dns01.testing.dnsmessages import framed, readAnswer
from kibaship_dns01.testing.fakedelegation import FakeDelegationStore
from kibaship_dns01.testing.hostiledns import AMPLIFICATION, amplifies, packetCases, packets
from tests.dnssupport import KEY, KEY2, LABEL, OTHER_LABEL, ZONE_NAME, FakeUDPTransport
from tests.support import LogCapture

ZONE = Zone(name=ZONE_NAME, nameservers=("ns1." + ZONE_NAME, "ns2." + ZONE_NAME),
            addresses={"ns1." + ZONE_NAME: ["192.0.2.53", "2001:db8::53"],
                       "ns2." + ZONE_NAME: ["198.51.100.53"]})
CASES = packetCases(ZONE_NAME, (LABEL, OTHER_LABEL))
KEYED = "%s.%s" % (LABEL, ZONE_NAME)
HOSTILE = settings(max_examples=400, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class HostilePacketTests(SynchronousTestCase):
    def setUp(self):
        self.logs = LogCapture(self)
        self.clock = MemoryReactorClock()
        store = FakeDelegationStore(self.clock)
        store.add(LABEL, KEY, 10 ** 6)
        store.add(LABEL, KEY2, 10 ** 6)
        self.responder = Responder(ZONE, store, self.clock)

    def errorsLogged(self):
        return [e for e in self.logs.events if e.get("log_failure") is not None
                or e.get("log_level") is not None and e["log_level"].name in ("error", "critical")]

    def assertSafeAnswer(self, query, data, case):
        answer = readAnswer(data)  # parses, or the test fails
        self.assertEqual(answer.message.id, int.from_bytes(query[:2], "big"), case)
        self.assertEqual(answer.message.answer, 1, case)
        self.assertFalse(amplifies(query, data, answer, [KEYED]),
                         "%s: %r -> %r (over %d times the query)" % (
                             case, query, data, AMPLIFICATION))

    def udp(self, limiter=None):
        protocol = DNSDatagramProtocol(self.responder, self.clock, limiter)
        transport = FakeUDPTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    @HOSTILE
    @given(CASES)
    def test_udp(self, case):
        name, query = case
        protocol, transport = self.udp()
        protocol.datagramReceived(query, ("192.0.2.1", 53))
        self.assertLessEqual(len(transport.written), 1)
        for data, _ in transport.written:
            self.assertSafeAnswer(query, data, name)
        self.assertEqual(self.errorsLogged(), [])

    @HOSTILE
    @given(CASES)
    def test_tcp(self, case):
        name, query = case
        factory = DNSStreamFactory(self.responder, self.clock)
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 53))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(framed(query))
        out = transport.value()
        if out:
            self.assertEqual(int.from_bytes(out[:2], "big"), len(out) - 2, name)
            self.assertSafeAnswer(query, out[2:], name)
        protocol.connectionLost(None)
        self.assertEqual(self.errorsLogged(), [])

    @HOSTILE
    @given(packets(ZONE_NAME, (LABEL,)))
    def test_aTCPStreamOfGarbage(self, data):
        factory = DNSStreamFactory(self.responder, self.clock)
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 53))
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(data)
        protocol.connectionLost(None)
        self.assertEqual(self.errorsLogged(), [])

    @HOSTILE
    @given(CASES)
    def test_slipsAreNeverLargerThanTheQuery(self, case):
        name, query = case
        limiter = ResponseRateLimiter(self.clock, rate=0, burst=1, slip=1)
        limiter.decide("192.0.2.1")  # the one token: every packet below is over the limit
        protocol, transport = self.udp(limiter)
        protocol.datagramReceived(query, ("192.0.2.1", 53))
        for data, _ in transport.written:
            self.assertLessEqual(len(data), len(query), name)
            self.assertEqual(readAnswer(data).message.trunc, 1)
        self.assertEqual(self.errorsLogged(), [])
