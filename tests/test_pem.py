"""The shared PEM bundle parser."""
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.pem import loadCertificates, trustRootFromPEM
from kibaship_dns01.testing import pki


class PEMTests(SynchronousTestCase):
    def test_bundleInOrder(self):
        a, b = pki.makeCA("a"), pki.makeCA("b")
        certs = loadCertificates(a.certPEM + b"\n" + b.certPEM.decode().encode())
        self.assertEqual([c.subject.rfc4514_string() for c in certs], ["CN=a", "CN=b"])
        self.assertEqual(loadCertificates(a.certPEM.decode()), (a.cert,))

    def test_emptyOrNoCertificate(self):
        for data in (b"", "", None, b"not pem at all"):
            self.assertEqual(loadCertificates(data), ())
        e = self.assertRaises(ValueError, trustRootFromPEM, b"not pem at all")
        self.assertIn("no PEM certificate", str(e))

    def test_malformedBlockRefused(self):
        bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        self.assertRaises(ValueError, loadCertificates, bad)
        self.assertRaises(ValueError, trustRootFromPEM, bad)

    def test_trustRoot(self):
        self.assertIsNotNone(trustRootFromPEM(pki.makeCA().certPEM + pki.makeCA().certPEM))
