"""Client chain verification: each failure has its precise reason."""
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.auth import x509verify as xv
from kibaship_dns01.testing import pki

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def makeIntermediate(parent, cn="intermediate", notBefore=None, notAfter=None, ca=True):
    """An intermediate CA signed by ``parent`` (pki.py makes only roots)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
            .issuer_name(parent.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore or NOW - DAY).not_valid_after(notAfter or NOW + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                parent.key.public_key()), critical=False)
            .sign(parent.key, hashes.SHA256()))
    return pki.KeyPair(cert, key)


class VerifyClientChainTests(SynchronousTestCase):
    def setUp(self):
        self.ca = pki.makeCA("front-proxy-ca")
        self.other = pki.makeCA("other-ca")
        self.windowLeaf = pki.clientPair(
            self.ca, "window", notBefore=NOW - 3 * DAY, notAfter=NOW + 20 * DAY).cert

    def assertReason(self, reason, chain, roots, now=NOW):
        e = self.assertRaises(xv.CertificateVerificationError, xv.verifyClientChain,
                              chain, roots, now)
        self.assertEqual(e.reason, reason, e.message)
        return e

    def test_validClientCertificate(self):
        leaf = pki.clientPair(self.ca, "front-proxy-client").cert
        result = xv.verifyClientChain([leaf], [self.ca.cert], NOW)
        self.assertEqual(result.leaf, leaf)
        self.assertEqual(result.chain, (leaf, self.ca.cert))

    def test_leafWithoutSubjectAltNameIsAccepted(self):
        """kubeadm's front-proxy-client certificate has a CN and no SAN."""
        leaf = pki.clientPair(self.ca, "front-proxy-client").cert
        self.assertRaises(x509.ExtensionNotFound, leaf.extensions.get_extension_for_class,
                          x509.SubjectAlternativeName)
        xv.verifyClientChain([leaf], [self.ca.cert], NOW)

    def test_unknownAuthority(self):
        leaf = pki.clientPair(self.other, "someone").cert
        e = self.assertReason(xv.UNKNOWN_AUTHORITY, [leaf], [self.ca.cert])
        self.assertIn("x509: certificate signed by unknown authority", e.message)

    def test_emptyBundleIsUnknownAuthority(self):
        leaf = pki.clientPair(self.ca, "x").cert
        e = self.assertReason(xv.UNKNOWN_AUTHORITY, [leaf], [])
        self.assertIn("CA bundle is empty", e.message)

    def test_expiredLeaf(self):
        leaf = pki.clientPair(self.ca, "x", notBefore=NOW - 10 * DAY, notAfter=NOW - DAY).cert
        e = self.assertReason(xv.EXPIRED, [leaf], [self.ca.cert])
        self.assertIn("certificate has expired: current time", e.message)

    def test_expiryJudgedAtTheGivenTime(self):
        """The injected clock decides, not the wall clock."""
        leaf = pki.clientPair(self.ca, "x", days=30).cert
        xv.verifyClientChain([leaf], [self.ca.cert], NOW + 29 * DAY)
        self.assertReason(xv.EXPIRED, [leaf], [self.ca.cert], NOW + 31 * DAY)

    def test_notYetValidLeaf(self):
        leaf = pki.clientPair(self.ca, "x", notBefore=NOW + DAY, notAfter=NOW + 10 * DAY).cert
        e = self.assertReason(xv.NOT_YET_VALID, [leaf], [self.ca.cert])
        self.assertIn("is not yet valid", e.message)

    def test_serverOnlyUsageRefused(self):
        leaf = pki.issue(self.ca, "server", server=True).cert
        e = self.assertReason(xv.NO_CLIENT_AUTH, [leaf], [self.ca.cert])
        self.assertIn("incompatible key usage", e.message)

    def test_noExtendedKeyUsageIsUnrestricted(self):
        """Go (and RFC 5280) treat a missing EKU extension as any usage."""
        leaf = pki.issue(self.ca, "plain").cert
        xv.verifyClientChain([leaf], [self.ca.cert], NOW)

    def test_presentedIntermediate(self):
        inter = makeIntermediate(self.ca)
        leaf = pki.clientPair(inter, "via-intermediate").cert
        result = xv.verifyClientChain([leaf, inter.cert], [self.ca.cert], NOW)
        self.assertEqual(len(result.chain), 3)

    def test_missingIntermediateIsUnknownAuthority(self):
        inter = makeIntermediate(self.ca)
        leaf = pki.clientPair(inter, "via-intermediate").cert
        self.assertReason(xv.UNKNOWN_AUTHORITY, [leaf], [self.ca.cert])

    def test_expiredIntermediateNamed(self):
        inter = makeIntermediate(self.ca, notBefore=NOW - 10 * DAY, notAfter=NOW - DAY)
        leaf = pki.clientPair(inter, "via-intermediate").cert
        e = self.assertReason(xv.EXPIRED, [leaf, inter.cert], [self.ca.cert])
        self.assertIn("CN=intermediate", e.message)

    def test_nonCAIssuerRefused(self):
        """A leaf certificate cannot sign others, even one chaining to the CA."""
        notCA = makeIntermediate(self.ca, cn="not-a-ca", ca=False)
        leaf = pki.clientPair(notCA, "forged").cert
        self.assertReason(xv.UNKNOWN_AUTHORITY, [leaf, notCA.cert], [self.ca.cert])

    def test_bundleWithSeveralCAs(self):
        """During rotation the bundle holds the old and the new CA: both work."""
        a = pki.clientPair(self.ca, "a").cert
        b = pki.clientPair(self.other, "b").cert
        for leaf in (a, b):
            xv.verifyClientChain([leaf], [self.ca.cert, self.other.cert], NOW)

    @settings(max_examples=25, deadline=None)
    @given(offsetDays=st.integers(min_value=-60, max_value=60))
    def test_validityWindowProperty(self, offsetDays):
        """Accepted exactly while the leaf and its CA are inside their windows;
        otherwise refused for a time reason, never for another."""
        leaf = self.windowLeaf
        when = NOW + offsetDays * DAY
        inside = all(c.not_valid_before_utc <= when <= c.not_valid_after_utc
                     for c in (leaf, self.ca.cert))
        try:
            xv.verifyClientChain([leaf], [self.ca.cert], when)
        except xv.CertificateVerificationError as e:
            self.assertFalse(inside, e.message)
            self.assertIn(e.reason, (xv.EXPIRED, xv.NOT_YET_VALID))
        else:
            self.assertTrue(inside)


class HelpersTests(SynchronousTestCase):
    def test_namesFromSubject(self):
        ca = pki.makeCA()
        leaf = pki.clientPair(ca, "jane", orgs=("devs", "ops")).cert
        self.assertEqual(xv.commonName(leaf), "jane")
        self.assertEqual(xv.organizations(leaf), ("devs", "ops"))

    def test_identifierNamesSubjectAndIssuer(self):
        ca = pki.makeCA("the-ca")
        leaf = pki.clientPair(ca, "jane").cert
        ident = xv.certificateIdentifier(leaf)
        self.assertIn("CN=jane", ident)
        self.assertIn("CN=the-ca", ident)
        self.assertIn("SN=%d" % leaf.serial_number, ident)

    def test_loadBundle(self):
        a, b = pki.makeCA("a"), pki.makeCA("b")
        certs = xv.loadPEMBundle(a.certPEM + b.certPEM, "test bundle")
        self.assertEqual([c.subject for c in certs], [a.cert.subject, b.cert.subject])
        self.assertEqual(xv.loadPEMBundle("", "empty"), ())

    def test_loadBundleErrorNamesIt(self):
        e = self.assertRaises(ValueError, xv.loadPEMBundle, b"not pem at all", "key X")
        self.assertIn("key X", str(e))
