"""The DNS transports: UDP (rate limit, malformed packets, truncation, the read budget)
and TCP (framing, caps, idle timeout, back-pressure) (issue 21)."""
import os
import select
import socket

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import dns
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from kibaship_dns01 import metrics
from kibaship_dns01.dns.answers import Responder
from kibaship_dns01.dns.ratelimit import ResponseRateLimiter
from kibaship_dns01.dns.tcp import ABORT_TIMEOUT, DNSStreamFactory
from kibaship_dns01.dns.udp import (
    DEFAULT_RECEIVE_BUFFER, BoundedUDPPort, DNSDatagramProtocol)
from kibaship_dns01.testing.dnsmessages import framed, optRecord, queryBytes, readAnswer
from kibaship_dns01.testing.fakedelegation import FakeDelegationStore
from tests.dnssupport import (DELEGATED, KEY, LABEL, ZONE, ZONE_NAME, FakeUDPTransport,
                              manyKeys)

CLIENT = ("192.0.2.10", 40000)


def _sample(name, labels=None):
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0


class UDPTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.store = FakeDelegationStore(self.clock)
        self.responder = Responder(ZONE, self.store, self.clock)
        self.start()

    def start(self, limiter=None):
        self.protocol = DNSDatagramProtocol(self.responder, self.clock, limiter)
        self.transport = FakeUDPTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data, addr=CLIENT):
        self.protocol.datagramReceived(data, addr)

    def answers(self):
        return [(readAnswer(data), addr) for data, addr in self.transport.written]

    def test_aQueryIsAnsweredToItsSender(self):
        self.store.add(LABEL, KEY, 60)
        before = _sample("kibaship_dns01_dns_queries_total", {"transport": "udp",
                                                              "rcode": "noerror"})
        self.send(queryBytes(DELEGATED))
        [(answer, addr)] = self.answers()
        self.assertEqual((answer.strings(), addr), ([KEY.encode()], CLIENT))
        self.assertEqual(_sample("kibaship_dns01_dns_queries_total", {
            "transport": "udp", "rcode": "noerror"}) - before, 1)

    def test_malformedPacketsAndAnswersGetNothing(self):
        before = _sample("kibaship_dns01_dns_malformed_total", {"transport": "udp"})
        answer = bytearray(queryBytes(ZONE_NAME))
        answer[2] |= 0x80
        for data in (b"", b"\x00" * 11, bytes(answer), queryBytes(ZONE_NAME)[:-3],
                     queryBytes(ZONE_NAME)[:12] + b"\xc0\x0c\x00\x06\x00\x01"):
            self.send(data)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(_sample("kibaship_dns01_dns_malformed_total",
                                 {"transport": "udp"}) - before, 5)

    def test_tooLargeIsTruncatedToTheRequestersSize(self):
        for key in manyKeys(30):
            self.store.add(LABEL, key, 60)
        before = _sample("kibaship_dns01_dns_truncated_total")
        self.send(queryBytes(DELEGATED))
        self.send(queryBytes(DELEGATED, edns=optRecord(4096)))
        small, large = [a for a, _ in self.answers()]
        self.assertEqual((small.message.trunc, small.answers, small.payload), (1, [], None))
        self.assertLessEqual(small.size, 512)
        self.assertEqual((large.message.trunc, large.payload), (1, 1232))
        self.assertLessEqual(large.size, 1232)
        self.assertEqual(_sample("kibaship_dns01_dns_truncated_total") - before, 2)

    def test_aSlowStoreIsAnsweredLaterOrSERVFAIL(self):
        self.store.hang()
        self.send(queryBytes(DELEGATED))
        self.assertEqual(self.transport.written, [])
        self.clock.advance(2)
        [(answer, _)] = self.answers()
        self.assertEqual(answer.rcode, dns.ESERVER)

    def test_noAnswerAfterThePortStopped(self):
        self.store.hang()
        self.send(queryBytes(DELEGATED))
        self.protocol.doStop()
        self.store.hung[0].callback([KEY])
        self.assertEqual(self.transport.written, [])

    def test_aRefusedWriteIsCounted(self):
        before = _sample("kibaship_dns01_dns_send_failures_total")
        self.transport.refuse = BlockingIOError(11, "full")
        self.send(queryBytes(ZONE_NAME, dns.SOA))
        self.assertEqual(_sample("kibaship_dns01_dns_send_failures_total") - before, 1)

    def test_rateLimitedNetworkSlipsAndDropsWhileAnotherIsAnswered(self):
        self.start(ResponseRateLimiter(self.clock, rate=1, burst=3, slip=2))
        before = {a: _sample("kibaship_dns01_dns_rate_limited_total", {"action": a})
                  for a in ("slip", "drop")}
        query = queryBytes(ZONE_NAME, dns.SOA, edns=optRecord())
        for i in range(9):
            self.send(query, ("192.0.2.%d" % (i + 1), 5353))
        self.send(query, ("198.51.100.1", 5353))
        written = self.answers()
        self.assertEqual(len(written), 3 + 3 + 1, "3 answered, 3 of 6 slipped, the other net")
        slips = [a for a, _ in written if a.message.trunc]
        self.assertEqual(len(slips), 3)
        for data, _ in self.transport.written:
            if readAnswer(data).message.trunc:
                self.assertLessEqual(len(data), len(query))
        self.assertEqual(written[-1][1], ("198.51.100.1", 5353))
        self.assertEqual(written[-1][0].answers[0].type, dns.SOA)
        self.assertEqual({a: _sample("kibaship_dns01_dns_rate_limited_total", {"action": a})
                          - before[a] for a in before}, {"slip": 3, "drop": 3})

    def test_theLimiterDecidesBeforeParsing(self):
        """Garbage over the limit costs a look-up, not a parse (nor a malformed count)."""
        self.start(ResponseRateLimiter(self.clock, rate=1, burst=1, slip=2))
        self.send(queryBytes(ZONE_NAME, dns.SOA))
        before = _sample("kibaship_dns01_dns_malformed_total", {"transport": "udp"})
        for _ in range(10):
            self.send(b"\xff" * 40)
        self.assertEqual(_sample("kibaship_dns01_dns_malformed_total",
                                 {"transport": "udp"}), before)
        self.assertEqual(len(self.transport.written), 1)


class Recorder(DatagramProtocol):
    def __init__(self):
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append(data)


class BoundedPortTests(SynchronousTestCase):
    """The read budget, on a real loopback socket (the reactor is not run)."""

    def test_atMostPacketsPerReadEachTime(self):
        recorder = Recorder()
        port = BoundedUDPPort(0, recorder, interface="127.0.0.1", reactor=reactor,
                              packetsPerRead=10)
        port.startListening()
        port.stopReading()  # the test reads by hand
        self.addCleanup(port.stopListening)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        for i in range(25):
            sender.sendto(b"packet %d" % i, ("127.0.0.1", port.getHost().port))
        select.select([port.socket], [], [], 5)
        counts = []
        for _ in range(4):
            port.doRead()
            counts.append(len(recorder.received))
        self.assertEqual(counts, [10, 20, 25, 25])
        self.assertEqual(recorder.received[0], b"packet 0")


def _sysctl(name):
    with open("/proc/sys/net/core/" + name) as f:
        return int(f.read())


class ReceiveBufferTests(SynchronousTestCase):
    """The port asks the kernel for its receive buffer (Linux grants at most
    ``net.core.rmem_max`` and reports twice what it granted)."""

    def setUp(self):
        if not os.path.exists("/proc/sys/net/core/rmem_max"):
            raise SkipTest("not Linux: no net.core.rmem_max")

    def listen(self, **options):
        port = BoundedUDPPort(0, Recorder(), interface="127.0.0.1", reactor=reactor, **options)
        port.startListening()
        self.addCleanup(port.stopListening)
        return port

    def test_theDefaultIsAskedFor(self):
        self.assertEqual(self.listen().receiveBufferSize,
                         2 * min(DEFAULT_RECEIVE_BUFFER, _sysctl("rmem_max")))

    def test_aSizeOfItsOwn(self):
        self.assertEqual(self.listen(receiveBuffer=300000).receiveBufferSize,
                         2 * min(300000, _sysctl("rmem_max")))

    def test_zeroKeepsTheSystemDefault(self):
        self.assertEqual(self.listen(receiveBuffer=0).receiveBufferSize,
                         _sysctl("rmem_default"))


class TCPFixture:
    def setUpTCP(self, **options):
        self.clock = MemoryReactorClock()
        self.store = FakeDelegationStore(self.clock)
        self.factory = DNSStreamFactory(Responder(ZONE, self.store, self.clock), self.clock,
                                        **options)

    def connect(self):
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(lambda: protocol.connectionLost(None) if protocol._open else None)
        return protocol, transport

    def received(self, transport):
        """The answers written so far, unframed."""
        data, out = transport.value(), []
        while data:
            length = int.from_bytes(data[:2], "big")
            out.append(readAnswer(data[2:2 + length]))
            data = data[2 + length:]
        return out


class TCPTests(TCPFixture, SynchronousTestCase):
    def setUp(self):
        self.setUpTCP(maxConnections=3, idleTimeout=10, maxPending=4)

    def test_theWholeAnswerWithoutTruncation(self):
        for key in manyKeys(40):
            self.store.add(LABEL, key, 60)
        protocol, transport = self.connect()
        protocol.dataReceived(framed(queryBytes(DELEGATED)))
        [answer] = self.received(transport)
        self.assertEqual((answer.message.trunc, len(answer.strings())), (0, 40))
        self.assertGreater(answer.size, 1232)

    def test_queriesSplitAndPipelined(self):
        self.store.add(LABEL, KEY, 60)
        protocol, transport = self.connect()
        stream = b"".join(framed(queryBytes(name, id=n)) for n, name in
                          enumerate((DELEGATED, ZONE_NAME, "example.com")))
        for i in range(len(stream)):
            protocol.dataReceived(stream[i:i + 1])
        answers = self.received(transport)
        self.assertEqual([(a.message.id, a.rcode) for a in answers],
                         [(0, dns.OK), (1, dns.OK), (2, dns.EREFUSED)])

    def test_malformedQueriesAreSkipped(self):
        protocol, transport = self.connect()
        protocol.dataReceived(framed(b"\x00" * 5) + framed(queryBytes(ZONE_NAME, dns.SOA)))
        [answer] = self.received(transport)
        self.assertEqual(answer.answers[0].type, dns.SOA)
        self.assertFalse(transport.disconnecting)

    def test_anOversizedMessageClosesTheConnection(self):
        protocol, transport = self.connect()
        protocol.dataReceived(b"\xff\xff" + b"\x00" * 100)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_connectionCap(self):
        before = _sample("kibaship_dns01_dns_tcp_closed_total", {"reason": "limit"})
        connections = [self.connect() for _ in range(3)]
        self.assertIsNone(self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1)))
        self.assertEqual(_sample("kibaship_dns01_dns_tcp_closed_total", {"reason": "limit"})
                         - before, 1)
        connections[0][0].connectionLost(None)
        self.assertIsNotNone(self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1)))

    def test_idleTimeoutClosesThenAborts(self):
        protocol, transport = self.connect()
        self.clock.advance(9)
        protocol.dataReceived(framed(queryBytes(ZONE_NAME, dns.SOA)))
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting, "a query resets the idle timer")
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.clock.advance(ABORT_TIMEOUT)
        self.assertTrue(transport.disconnected, "aborted: the client did not let go")

    def test_notIdleWhileAnswering(self):
        self.store.hang()
        self.factory.responder.storeTimeout = 30
        protocol, transport = self.connect()
        protocol.dataReceived(framed(queryBytes(DELEGATED)))
        self.clock.advance(15)
        self.assertFalse(transport.disconnecting)
        self.store.hung[0].callback([KEY])
        self.assertEqual(self.received(transport)[0].strings(), [KEY.encode()])
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_queriesInFlightAreBounded(self):
        self.store.hang()
        protocol, transport = self.connect()
        protocol.dataReceived(b"".join(framed(queryBytes(DELEGATED, id=n)) for n in range(7)))
        self.assertEqual((len(self.store.hung), transport.producerState), (4, "paused"))
        self.store.hung[0].callback([KEY])
        self.assertEqual(len(self.store.hung), 5, "one answered, one more taken")
        self.assertEqual(transport.producerState, "paused")
        for d in self.store.hung[1:]:
            d.callback([KEY])
        self.assertEqual(len(self.store.hung), 7)
        for d in self.store.hung[5:]:
            d.callback([KEY])
        self.assertEqual(sorted(a.message.id for a in self.received(transport)), list(range(7)))
        self.assertEqual(transport.producerState, "producing")

    def test_aClientNotReadingIsNotRead(self):
        protocol, transport = self.connect()
        protocol.pauseProducing()  # the transport's buffer is full
        self.assertEqual(transport.producerState, "paused")
        protocol.dataReceived(framed(queryBytes(ZONE_NAME, dns.SOA)))
        self.assertEqual(transport.value(), b"", "queued, not answered")
        protocol.resumeProducing()
        self.assertEqual(len(self.received(transport)), 1)
        self.assertEqual(transport.producerState, "producing")
