"""The serving TLS policy (``--tls-min-version``, ``--tls-cipher-suites``), proven with real
clients: Python's ``ssl`` (OpenSSL) in a thread, and Debian's ``sslscan`` as a child
process, against real listening ports and the real daemon.

Every refusal is paired with a control: the same client against a permissive server
with the same certificate succeeds, so a refusal is the policy's doing, not the
client's inability.
"""
import os
import re
import shutil
import socket
import ssl

from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from kibaship_dns01.api.tls import CertificateLoadError, ReloadingServerTLS, buildContext
from kibaship_dns01.api.tlspolicy import (
    ACCEPTED, DEFAULT, INSECURE, SUITES, TLS13_SUITES, PolicyError, TLSPolicy,
    parseCipherSuites, parseMinVersion)
from kibaship_dns01.pem import loadKeyPair
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.daemon import DaemonProcess
from kibaship_dns01.testing.kubeapi import StandInAPIServer
from tests.support import startTLSSite, tempDir

#: Go's default TLS 1.2 suites, by the golang/go sources cited in api/tlspolicy.py
GO_DEFAULT_TLS12 = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
]
TLS13 = ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"]
#: the CBC suites with SHA-256/384 MACs the daemon used to accept (issue 23)
CBC_SHA2_ECDSA = ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384"]
CBC_SHA2_RSA = ["ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES256-SHA384"]


def _rsaKey():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -- the policy's parts ------------------------------------------------------------------

class TableTests(SynchronousTestCase):
    def test_openSSLNamesAreTheIANASuites(self):
        """Each OpenSSL name maps to the IANA id Go's constant has (OpenSSL's own table)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ids = {c["name"]: c["id"] & 0xFFFF for c in ctx.get_ciphers()}
        self.assertEqual({s.openssl: ids.get(s.openssl) for s in SUITES},
                         {s.openssl: s.id for s in SUITES})

    def test_defaultIsGosDefault(self):
        self.assertEqual([s.name for s in DEFAULT.tls12Suites], GO_DEFAULT_TLS12)
        self.assertEqual(DEFAULT.minVersion, "VersionTLS12")

    def test_insecureAndAcceptedAreDisjoint(self):
        self.assertEqual(set(INSECURE) & set(ACCEPTED), set())


class ParseTests(SynchronousTestCase):
    def test_minVersion(self):
        self.assertEqual(parseMinVersion("VersionTLS13"), "VersionTLS13")
        e = self.assertRaises(PolicyError, parseMinVersion, "VersionTLS10")
        self.assertEqual(str(e), "VersionTLS10 is not accepted: TLS 1.0 is deprecated "
                                 "(RFC 8996); use VersionTLS12 or VersionTLS13")
        self.assertIn("TLS 1.1 is deprecated", str(
            self.assertRaises(PolicyError, parseMinVersion, "VersionTLS11")))
        self.assertEqual(str(self.assertRaises(PolicyError, parseMinVersion, "TLS1.3")),
                         "'TLS1.3' is not one of VersionTLS12, VersionTLS13")

    def test_suitesNamedAsGoNamesThem(self):
        self.assertEqual(parseCipherSuites(""), ())
        self.assertEqual(parseCipherSuites(
            " TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305 ,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,"
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,TLS_AES_128_GCM_SHA256"),
            ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
             "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"))

    def test_insecureRefused(self):
        for name in INSECURE:
            e = self.assertRaises(PolicyError, parseCipherSuites,
                                  f"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,{name}")
            self.assertEqual(str(e), f"{name} is insecure (Go lists it in crypto/tls "
                                     f"InsecureCipherSuites) and is refused")

    def test_unknownRefused(self):
        for name in ("ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM",
                     "tls_aes_128_gcm_sha256"):
            e = self.assertRaises(PolicyError, parseCipherSuites, name)
            self.assertTrue(str(e).startswith(f"{name!r} is not a cipher suite name Go knows; "
                                              f"accepted: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
                            str(e))

    def test_order(self):
        """Go's preference order decides, not the list's (as in Go since 1.17)."""
        policy = TLSPolicy("VersionTLS12", parseCipherSuites(
            "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"))
        self.assertEqual([s.name for s in policy.tls12Suites],
                         ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                          "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"])

    def test_policyChecksItsParts(self):
        self.assertRaises(PolicyError, TLSPolicy, "VersionTLS11")
        self.assertRaises(PolicyError, TLSPolicy, "VersionTLS12",
                          ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",))
        alias = TLSPolicy("VersionTLS12", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305")
        self.assertEqual([s.name for s in alias.tls12Suites],
                         ["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"])

    def test_tls13OnlyNeedsTLS13(self):
        e = self.assertRaises(PolicyError, TLSPolicy, "VersionTLS12", TLS13_SUITES)
        self.assertIn("--tls-cipher-suites names TLS 1.3 suites only", str(e))
        self.assertIn("--tls-min-version VersionTLS13", str(e))
        self.assertEqual(TLSPolicy("VersionTLS13", TLS13_SUITES).tls12Suites, ())

    def test_suitesMustFitTheKey(self):
        ca = pki.makeCA()
        ecdsa = pki.serverPair(ca)
        rsaPair = pki.serverPair(ca, key=_rsaKey())
        rsaOnly = TLSPolicy("VersionTLS12", ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",))
        e = self.assertRaises(CertificateLoadError, buildContext, ecdsa.certPEM, ecdsa.keyPEM,
                              policy=rsaOnly)
        self.assertEqual(str(e), "the certificate's ECDSA key can use none of the TLS 1.2 cipher "
                                 "suites allowed by --tls-cipher-suites "
                                 "(TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
        buildContext(rsaPair.certPEM, rsaPair.keyPEM, policy=rsaOnly)
        # with TLS 1.2 off the TLS 1.2 list does not matter
        buildContext(ecdsa.certPEM, ecdsa.keyPEM, policy=TLSPolicy("VersionTLS13",
                                                                   rsaOnly.cipherSuites))


# -- real clients against real ports --------------------------------------------------------

def _handshake(port, caPEM, ciphers=None, maximum=None):
    """A blocking handshake (run it in a thread): ``(version, cipher)`` or
    ``(None, OpenSSL's reason)``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=caPEM.decode())
    if ciphers:
        ctx.set_ciphers(ciphers)
    if maximum:
        ctx.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                return tls.version(), tls.cipher()[0]
        except ssl.SSLError as e:
            return None, e.reason


def handshake(port, caPEM, ciphers=None, maximum=ssl.TLSVersion.TLSv1_2):
    return threads.deferToThread(_handshake, port, caPEM, ciphers, maximum)


@implementer(IOpenSSLServerConnectionCreator)
class _Permissive:
    """The control: the same certificate with every suite OpenSSL has."""

    def __init__(self, certPEM, keyPEM):
        chain, key = loadKeyPair(certPEM, keyPEM)
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.context.set_cipher_list(b"ALL:@SECLEVEL=0")
        self.context.use_certificate(chain[0])
        self.context.use_privatekey(key)

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.context, None)


class _Idle(protocol.Protocol):
    pass


def listenPermissive(testCase, certPEM, keyPEM):
    factory = TLSMemoryBIOFactory(_Permissive(certPEM, keyPEM), False,
                                  protocol.Factory.forProtocol(_Idle))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return port.getHost().port


class ServedPolicyTests(TestCase):
    """Python ``ssl`` clients against the API site on a real port."""

    timeout = 60

    async def site(self, key=None, **overrides):
        """The real API site serving a fresh certificate (``key``: its private key) under
        the given settings, and a permissive control server with the same pair."""
        running = await startTLSSite(self, None, servingKey=key, **overrides)
        self.ca = running.ca
        with open(running.certFile, "rb") as c, open(running.keyFile, "rb") as k:
            return running.port, listenPermissive(self, c.read(), k.read())

    async def assertRefused(self, port, control, ciphers):
        for cipher in ciphers:
            version, reason = await handshake(control, self.ca.certPEM, cipher)
            self.assertEqual(version, "TLSv1.2", f"control: {cipher}: {reason}")
            version, reason = await handshake(port, self.ca.certPEM, cipher)
            self.assertEqual((version, reason), (None, "SSLV3_ALERT_HANDSHAKE_FAILURE"), cipher)

    async def assertAccepted(self, port, ciphers):
        for cipher in ciphers:
            self.assertEqual(await handshake(port, self.ca.certPEM, cipher), ("TLSv1.2", cipher))

    def test_defaultRefusesCBCWithSHA2MACsOnECDSA(self):
        async def go():
            port, control = await self.site()
            await self.assertRefused(port, control, CBC_SHA2_ECDSA)
            await self.assertAccepted(port, [
                "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA",
                "ECDHE-ECDSA-AES256-SHA"])
            self.assertEqual((await handshake(port, self.ca.certPEM, maximum=None))[0],
                             "TLSv1.3")
        return defer.ensureDeferred(go())

    def test_defaultRefusesCBCWithSHA2MACsOnRSA(self):
        async def go():
            port, control = await self.site(key=_rsaKey())
            await self.assertRefused(port, control, CBC_SHA2_RSA + ["AES128-GCM-SHA256"])
            await self.assertAccepted(port, [
                "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA"])
        return defer.ensureDeferred(go())

    def test_customSuitesHonoured(self):
        async def go():
            port, control = await self.site(tlsCipherSuites=(
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"))
            await self.assertAccepted(port, ["ECDHE-ECDSA-AES256-GCM-SHA384",
                                             "ECDHE-ECDSA-CHACHA20-POLY1305"])
            await self.assertRefused(port, control, [
                "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-SHA",
                "ECDHE-ECDSA-AES256-SHA"])
        return defer.ensureDeferred(go())

    def test_tls13MinimumRefusesTLS12Clients(self):
        async def go():
            port, control = await self.site(tlsMinVersion="VersionTLS13")
            self.assertEqual((await handshake(control, self.ca.certPEM))[0], "TLSv1.2")
            self.assertEqual(await handshake(port, self.ca.certPEM),
                             (None, "TLSV1_ALERT_PROTOCOL_VERSION"))
            version, cipher = await handshake(port, self.ca.certPEM, maximum=None)
            self.assertEqual(version, "TLSv1.3")
            self.assertIn(cipher, TLS13)
        return defer.ensureDeferred(go())

    def test_rotationAndClientCAsKeepThePolicy(self):
        """A reloaded certificate and a new client-CA list are served under the same policy."""
        async def go():
            policy = TLSPolicy("VersionTLS12", ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",))
            directory = tempDir(self)
            cert, key = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
            self.ca = pki.makeCA()
            pki.serverPair(self.ca).writeTo(cert, key)
            tls = ReloadingServerTLS(cert, key, reactor, policy=policy)
            tls.load()
            factory = TLSMemoryBIOFactory(tls, False, protocol.Factory.forProtocol(_Idle))
            listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(listening.stopListening)
            port = listening.getHost().port
            pki.serverPair(self.ca).writeTo(cert, key)
            self.assertTrue(tls.reloadIfChanged())
            await self.assertAccepted(port, ["ECDHE-ECDSA-AES256-GCM-SHA384"])
            self.assertEqual((await handshake(port, self.ca.certPEM,
                                              "ECDHE-ECDSA-AES128-GCM-SHA256"))[0], None)
            tls.setClientCAs([pki.makeCA("front-proxy-ca").certPEM])
            await self.assertAccepted(port, ["ECDHE-ECDSA-AES256-GCM-SHA384"])
            self.assertEqual((await handshake(port, self.ca.certPEM,
                                              "ECDHE-ECDSA-AES128-SHA"))[0], None)
        return defer.ensureDeferred(go())


# -- sslscan against the real daemon ------------------------------------------------------

_ACCEPTED = re.compile(r"^(?:Preferred|Accepted)\s+(TLSv1\.[0-3])\s+\d+ bits\s+(\S+)", re.M)
_PROTOCOL = re.compile(r"^(SSLv[23]|TLSv1\.[0-3])\s+(enabled|disabled)", re.M)


async def sslscan(port):
    """``sslscan``'s protocols and accepted suites for 127.0.0.1:``port``."""
    exe = shutil.which("sslscan")
    if exe is None:
        raise SkipTest("sslscan is not installed (Debian: apt-get install sslscan)")
    out, err, code = await getProcessOutputAndValue(
        exe, ["--no-colour", "--no-heartbleed", "--no-renegotiation", "--no-compression",
              "--no-fallback", "--no-groups", f"127.0.0.1:{port}"], env=os.environ,
        reactor=reactor)
    text = out.decode(errors="replace")
    if code != 0:
        raise AssertionError(f"sslscan failed ({code}): {text}{err.decode(errors='replace')}")
    return dict(_PROTOCOL.findall(text)), _ACCEPTED.findall(text), text


class DaemonScanTests(TestCase):
    """The flags reach the real ``twistd kibaship-dns01``; ``sslscan`` looks at it."""

    timeout = 120

    async def daemon(self, *flags):
        cwd = tempDir(self, "kibaship-scan-")
        self.ca = pki.makeCA()
        cert, key = os.path.join(cwd, "tls.crt"), os.path.join(cwd, "tls.key")
        pki.serverPair(self.ca).writeTo(cert, key)
        api = StandInAPIServer(reactor=reactor)
        await api.start()
        self.addCleanup(api.stop)
        daemon = DaemonProcess(reactor, [
            "--tls-cert-file", cert, "--tls-private-key-file", key, "--kubeconfig",
            api.writeKubeconfig(os.path.join(cwd, "kubeconfig")), "--bind-address",
            "127.0.0.1", "--secure-port", "0", *flags], cwd=cwd)
        daemon.start()
        self.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
        return await daemon.listeningPort()

    def test_defaultPolicyScanned(self):
        async def go():
            # the control: sslscan sees the CBC suites with SHA-2 MACs where they are served
            pair = pki.serverPair(pki.makeCA())
            control = listenPermissive(self, pair.certPEM, pair.keyPEM)
            _, suites, text = await sslscan(control)
            self.assertIn(("TLSv1.2", "ECDHE-ECDSA-AES128-SHA256"), suites, text)

            protocols, suites, text = await sslscan(await self.daemon())
            self.assertEqual(protocols, {"SSLv2": "disabled", "SSLv3": "disabled",
                                         "TLSv1.0": "disabled", "TLSv1.1": "disabled",
                                         "TLSv1.2": "enabled", "TLSv1.3": "enabled"}, text)
            self.assertEqual(sorted(suites), sorted(
                [("TLSv1.3", name) for name in TLS13]
                + [("TLSv1.2", name) for name in (
                    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA",
                    "ECDHE-ECDSA-AES256-SHA")]), text)
        return defer.ensureDeferred(go())

    def test_flagsScanned(self):
        async def go():
            protocols, suites, text = await sslscan(await self.daemon(
                "--tls-min-version", "VersionTLS13"))
            self.assertEqual((protocols["TLSv1.2"], protocols["TLSv1.3"]),
                             ("disabled", "enabled"), text)
            self.assertEqual(sorted(suites), sorted(("TLSv1.3", n) for n in TLS13), text)
        return defer.ensureDeferred(go())

    def test_customSuitesReachTheDaemon(self):
        async def go():
            port = await self.daemon("--tls-cipher-suites",
                                     "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,"
                                     "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA")
            self.assertEqual(await handshake(port, self.ca.certPEM),
                             ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384"))
            self.assertEqual((await handshake(port, self.ca.certPEM,
                                              "ECDHE-ECDSA-CHACHA20-POLY1305"))[0], None)
        return defer.ensureDeferred(go())
