"""The DNS service on real sockets, asked by ``dig`` (bind9-dnsutils) over UDP and TCP."""
import os
import re
import shutil
import socket

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from kibaship_dns01.dns.answers import Responder
from kibaship_dns01.dns.ratelimit import ResponseRateLimiter
from kibaship_dns01.dns.service import DNSService
from kibaship_dns01.testing.fakedelegation import FakeDelegationStore
from tests.dnssupport import DELEGATED, KEY, KEY2, LABEL, ZONE, ZONE_NAME, manyKeys
from tests.support import LogCapture

DIG = shutil.which("dig")


def _ipv6Loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class DigTests(TestCase):
    timeout = 60

    def setUp(self):
        if DIG is None:
            raise SkipTest("dig is not installed (Debian: apt-get install bind9-dnsutils)")
        self.logs = LogCapture(self)
        self.store = FakeDelegationStore(reactor)
        self.store.add(LABEL, KEY, 600)
        self.store.add(LABEL, KEY2, 600)
        self.service = self.startOn("127.0.0.1")

    def startOn(self, address):
        service = DNSService(Responder(ZONE, self.store, reactor), address, 0, reactor,
                             limiter=ResponseRateLimiter(reactor))
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    async def dig(self, *args, service=None, server="127.0.0.1"):
        service = service or self.service
        out, err, code = await getProcessOutputAndValue(
            DIG, ["-r", "@" + server, "-p", str(service.port), "+norec", "+time=5", "+tries=1",
                  *args], env=dict(os.environ))
        self.assertEqual(code, 0, err)
        return re.sub(r"[ \t]+", " ", out.decode())  # dig aligns with tabs or spaces

    async def test_txtOverUDP(self):
        out = await self.dig(DELEGATED, "TXT")
        self.assertIn("status: NOERROR", out)
        self.assertIn("flags: qr aa;", out)
        self.assertIn("(UDP)", out)
        self.assertIn('%s. 10 IN TXT "%s"' % (DELEGATED, KEY), out)
        self.assertIn('%s. 10 IN TXT "%s"' % (DELEGATED, KEY2), out)
        self.assertIn("udp: 1232", out)

    async def test_txtOverTCP(self):
        out = await self.dig("+tcp", DELEGATED, "TXT")
        self.assertIn("(TCP)", out)
        self.assertIn('"%s"' % (KEY,), out)

    async def test_truncatedOverUDPThenWholeOverTCP(self):
        for key in manyKeys(30):
            self.store.add(LABEL, key, 600)
        truncated = await self.dig("+ignore", "+bufsize=512", DELEGATED, "TXT")
        self.assertIn("flags: qr aa tc;", truncated)
        self.assertIn("ANSWER: 0,", truncated)
        retried = await self.dig("+bufsize=512", DELEGATED, "TXT")
        self.assertIn("Truncated, retrying in TCP mode", retried)
        self.assertIn("ANSWER: 32,", retried)
        whole = await self.dig("+bufsize=4096", "+ignore", DELEGATED, "TXT")
        self.assertIn("ANSWER: 0,", whole, "32 keys do not fit 1232 octets either")
        noedns = await self.dig("+noedns", "+ignore", DELEGATED, "TXT")
        self.assertNotIn("OPT PSEUDOSECTION", noedns)

    async def test_theQuestionsLetterCaseComesBack(self):
        mixed = "".join(c.upper() if i % 3 == 0 else c for i, c in enumerate(DELEGATED))
        out = await self.dig(mixed, "TXT")
        self.assertIn(";%s. IN TXT" % (mixed,), out)
        self.assertIn('%s. 10 IN TXT "%s"' % (mixed, KEY), out)

    async def test_apexAndNegativeAnswers(self):
        soa = await self.dig(ZONE_NAME, "SOA")
        self.assertIn("IN SOA ns1.acme.example.com. hostmaster.acme.example.com. 1 3600 600 "
                      "604800 10", soa)
        missing = await self.dig("www." + ZONE_NAME, "TXT")
        self.assertIn("status: NXDOMAIN", missing)
        self.assertIn("AUTHORITY: 1", missing)
        self.assertIn("%s. 10 IN SOA" % (ZONE_NAME,), missing)
        nodata = await self.dig(DELEGATED, "A")
        self.assertIn("status: NOERROR", nodata)
        self.assertIn("ANSWER: 0, AUTHORITY: 1", nodata)

    async def test_refusedOutsideTheZoneAndForCHAOS(self):
        for args in (("example.com", "A"), ("version.bind", "TXT", "CH")):
            out = await self.dig(*args)
            self.assertIn("status: REFUSED", out)
            self.assertIn("flags: qr;", out, "neither AA nor RA")

    async def test_anyIsMinimal(self):
        out = await self.dig(ZONE_NAME, "ANY")
        self.assertIn('IN HINFO "RFC8482" ""', out)
        self.assertIn("ANSWER: 1,", out)

    async def test_ipv6(self):
        if not _ipv6Loopback():
            raise SkipTest("no IPv6 loopback here")
        service = self.startOn("::1")
        out = await self.dig(DELEGATED, "TXT", service=service, server="::1")
        self.assertIn('"%s"' % (KEY,), out)
        out = await self.dig("+tcp", ZONE_NAME, "NS", service=service, server="::1")
        self.assertIn("ANSWER: 3,", out)

    async def test_listensAndLogsThenClosesEverything(self):
        [line] = self.logs.ofKind("dns_listening")
        self.assertEqual((line["port"], line["zone"]), (self.service.port, ZONE_NAME))
        self.assertEqual(line["receive_buffer"], self.service._udp.receiveBufferSize)
        self.assertGreater(line["receive_buffer"], 0)
        port = self.service.port
        await self.service.stopService()
        self.assertIsNone(self.service.port)
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))  # free again: raises if still held

    def test_aPortThatIsTakenFailsTheStart(self):
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        service = DNSService(Responder(ZONE, self.store, reactor), "127.0.0.1",
                             taken.getsockname()[1], reactor)
        self.assertRaises(CannotListenError, service.startService)
        self.assertFalse(service.running)
        self.assertIsNone(service.port)
