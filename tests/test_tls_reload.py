"""Serving-certificate rotation over real TLS (Secret volume ``..data`` swaps)."""
import os

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kibaship_dns01.api.tls import CertificateLoadError, ReloadingServerTLS
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.fakesolver import RecordingSolver
from kibaship_dns01.testing.httpclient import peerCertificatePEM, request
from tests.support import tempDir, startTLSSite


def swapSecretVolume(directory, pair):
    """Rotate files the way the kubelet does: write a new dir, flip ``..data``."""
    version = os.path.join(directory, f"..{os.urandom(4).hex()}")
    os.mkdir(version)
    pair.writeTo(os.path.join(version, "tls.crt"), os.path.join(version, "tls.key"))
    tmp = os.path.join(directory, "..data_tmp")
    os.symlink(os.path.basename(version), tmp)
    os.replace(tmp, os.path.join(directory, "..data"))


def makeSecretVolume(directory, pair):
    os.makedirs(directory)
    swapSecretVolume(directory, pair)
    for name in ("tls.crt", "tls.key"):
        os.symlink(os.path.join("..data", name), os.path.join(directory, name))
    return os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")


class RotationOverTLSTests(TestCase):
    def test_newConnectionsGetNewCertificateAndBadRotationKeepsOld(self):
        clock = Clock()

        async def go():
            site = await startTLSSite(self, RecordingSolver(), clock=clock)
            volume = os.path.join(tempDir(self), "volume")
            first = pki.serverPair(site.ca)
            site.tls.certPath, site.tls.keyPath = makeSecretVolume(volume, first)
            site.tls.reloadIfChanged()
            port = site.port
            seen = await peerCertificatePEM(reactor, "127.0.0.1", port, site.ca.certPEM)
            self.assertEqual(seen, first.certPEM)

            second = pki.serverPair(site.ca)
            swapSecretVolume(volume, second)
            clock.advance(10)  # one poll interval
            seen = await peerCertificatePEM(reactor, "127.0.0.1", port, site.ca.certPEM)
            self.assertEqual(seen, second.certPEM)

            # A half-written pair: the new key does not match the certificate.
            third, other = pki.serverPair(site.ca), pki.serverPair(site.ca)
            bad = pki.KeyPair(third.cert, other.key)
            swapSecretVolume(volume, bad)
            clock.advance(10)
            self.assertIn("not a usable pair", site.tls.lastError)
            seen = await peerCertificatePEM(reactor, "127.0.0.1", port, site.ca.certPEM)
            self.assertEqual(seen, second.certPEM)
            resp = await request(reactor, "GET", site.url("/healthz"), caPEM=site.ca.certPEM)
            self.assertEqual(resp.code, 200)
        return defer.ensureDeferred(go())


class ReloadingServerTLSTests(SynchronousTestCase):
    def setUp(self):
        self.ca = pki.makeCA()
        self.dir = tempDir(self)
        self.cert, self.key = (os.path.join(self.dir, n) for n in ("tls.crt", "tls.key"))

    def test_loadRefusesMissingFiles(self):
        tls = ReloadingServerTLS(self.cert, self.key, Clock())
        e = self.assertRaises(CertificateLoadError, tls.load)
        self.assertIn("cannot read", str(e))
        self.assertFalse(tls.isReady())

    def test_loadRefusesGarbage(self):
        with open(self.cert, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        with open(self.key, "wb") as f:
            f.write(b"nope")
        e = self.assertRaises(CertificateLoadError,
                              ReloadingServerTLS(self.cert, self.key, Clock()).load)
        self.assertIn("not a usable pair", str(e))

    def test_truncatedRotationKeepsServing(self):
        pki.serverPair(self.ca).writeTo(self.cert, self.key)
        tls = ReloadingServerTLS(self.cert, self.key, Clock())
        tls.load()
        before = tls._context
        with open(self.cert, "wb") as f:
            f.write(b"")
        self.assertFalse(tls.reloadIfChanged())
        self.assertIs(tls._context, before)
        self.assertIn("no PEM certificate", tls.lastError)
        self.assertEqual(len(self.flushLoggedErrors()), 0)  # logged as an event, not a failure

    def test_unchangedFilesDoNotRebuild(self):
        pki.serverPair(self.ca).writeTo(self.cert, self.key)
        tls = ReloadingServerTLS(self.cert, self.key, Clock())
        tls.load()
        before = tls._context
        self.assertFalse(tls.reloadIfChanged())
        self.assertIs(tls._context, before)

    def test_clientCAsAreRequestedNotRequired(self):
        from OpenSSL import SSL

        pki.serverPair(self.ca).writeTo(self.cert, self.key)
        tls = ReloadingServerTLS(self.cert, self.key, Clock())
        tls.load()
        front, client = pki.makeCA("front-proxy-ca"), pki.makeCA("client-ca")
        tls.setClientCAs([front.certPEM, client.certPEM + front.certPEM])
        ctx = tls._context
        self.assertEqual(ctx.get_verify_mode(), SSL.VERIFY_PEER)  # no FAIL_IF_NO_PEER_CERT
        conn = tls.serverConnectionForTLS(None)
        names = [n.CN for n in conn.get_client_ca_list()]
        self.assertEqual(names, ["front-proxy-ca", "client-ca"])
