"""Shared fixtures of the DNS responder's tests: one zone, labels, a responder."""
from twisted.internet.task import Clock
from twisted.names import dns

from kibaship_dns01.delegation.names import delegationLabel
from kibaship_dns01.dns import wire
from kibaship_dns01.dns.answers import Responder
from kibaship_dns01.dns.zone import Zone
from kibaship_dns01.testing.dnsmessages import queryBytes, readAnswer
from kibaship_dns01.testing.fakedelegation import FakeDelegationStore

ZONE_NAME = "acme.example.com"
ZONE = Zone(name=ZONE_NAME, nameservers=("ns1.acme.example.com", "ns2.example.net",
                                         "ns3.dns.acme.example.com"),
            addresses={"ns1.acme.example.com": ["192.0.2.53", "2001:db8::53"],
                       "ns3.dns.acme.example.com": ["192.0.2.54"]})
SECRET = b"s" * 32
LABEL = delegationLabel(SECRET, "0f5b3c1e-8a51-4b5e-9d3e-3f2f6c1a9b01", "example.org")
OTHER_LABEL = delegationLabel(SECRET, "0f5b3c1e-8a51-4b5e-9d3e-3f2f6c1a9b01", "example.net")
DELEGATED = "%s.%s" % (LABEL, ZONE_NAME)
KEY = "A" * 42 + "1"
KEY2 = "B" * 42 + "2"


def manyKeys(n):
    """``n`` distinct 43-character keys (enough of them do not fit 512 octets)."""
    return ["%043d" % i for i in range(n)]


class ResponderFixture:
    """A responder over the fake store on a fake clock; ``ask`` answers as a client reads."""

    def setUpResponder(self, **options):
        self.clock = Clock()
        self.store = FakeDelegationStore(self.clock)
        self.responder = Responder(ZONE, self.store, self.clock, **options)

    def answerTo(self, data):
        """The responder's :class:`~kibaship_dns01.dns.answers.Answer` to query bytes."""
        query = wire.parseQuery(data)
        self.assertIsNotNone(query, "the test's query must parse")
        return self.successResultOf(self.responder.respond(query))

    def ask(self, name, type=dns.TXT, udp=False, **options):
        """Ask; the answer encoded as over TCP, or within its UDP size (``udp``)."""
        answer = self.answerTo(queryBytes(name, type, **options))
        data, _ = wire.encodeAnswer(answer.message, answer.udpLimit if udp else None)
        return readAnswer(data)

    def serve(self, *keys, label=LABEL, ttl=600):
        for key in keys:
            self.store.add(label, key, ttl)

    def lookups(self):
        return [call[1] for call in self.store.calls if call[0] == "keys"]


class FakeUDPTransport:
    """What a DatagramProtocol writes to, recorded; ``refuse`` makes writes fail."""

    def __init__(self):
        self.written = []
        self.refuse = None

    def write(self, data, addr):
        if self.refuse is not None:
            raise self.refuse
        self.written.append((data, addr))
