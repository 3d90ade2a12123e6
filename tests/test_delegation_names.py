"""The delegation name: project-bound, keyed, the same for apex and wildcard, stable;
the secret file; which challenges are offered a delegation."""
import base64
import hashlib
import hmac

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.delegation.names import (
    DelegationNamer, delegationLabel, isDelegationLabel, normalDomain)
from kibaship_dns01.delegation.offer import DelegationOffer, Ineligible
from kibaship_dns01.delegation.secret import DelegationSecretError, loadSecret
from kibaship_dns01.project import IssuerRef, ProjectContext
from kibaship_dns01.testing.fakecname import FakeCNAMEChecker

SECRET = b"0123456789abcdef0123456789abcdef"
A = "7d1a6c9e-0000-4000-8000-000000000001"
B = "7d1a6c9e-0000-4000-8000-000000000002"

projects = st.uuids().map(str)
domains = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,10}){1,3}",
                        fullmatch=True)


class LabelTests(SynchronousTestCase):
    def test_knownValue(self):
        """Pinned: a change of derivation would silently break every user's CNAME."""
        self.assertEqual(delegationLabel(b"x" * 32, A, "example.com"),
                         "eknd7jawcbok2v5d6sq2vubqqugqxbpi")
        # the documented derivation, spelled out (docs/configuration.md)
        mac = hmac.new(SECRET, b"kibaship-dns01 delegation label v1\x00" + A.encode() +
                       b"\x00example.com", hashlib.sha256).digest()[:20]
        self.assertEqual(delegationLabel(SECRET, A, "Example.com."),
                         base64.b32encode(mac).decode().lower())

    @given(projects, domains)
    def test_oneLabelOfTheRightShape(self, project, domain):
        label = delegationLabel(SECRET, project, domain)
        self.assertTrue(isDelegationLabel(label), label)

    @given(projects, projects, domains)
    def test_boundToTheProject(self, first, second, domain):
        """Another tenant adding the same domain gets another name."""
        if first != second:
            self.assertNotEqual(delegationLabel(SECRET, first, domain),
                                delegationLabel(SECRET, second, domain))

    @given(projects, domains)
    def test_apexAndWildcardShareTheName(self, project, domain):
        apex = delegationLabel(SECRET, project, domain)
        for spelling in ("*." + domain, domain.upper() + ".", "*.%s." % domain):
            self.assertEqual(delegationLabel(SECRET, project, spelling), apex)

    @given(projects, domains)
    def test_keyedBySecret(self, project, domain):
        self.assertNotEqual(delegationLabel(SECRET, project, domain),
                            delegationLabel(SECRET[::-1], project, domain))

    def test_otherDomainsDiffer(self):
        self.assertNotEqual(delegationLabel(SECRET, A, "example.com"),
                            delegationLabel(SECRET, A, "www.example.com"))

    def test_labelShape(self):
        label = delegationLabel(SECRET, A, "example.com")
        for bad in (label.upper(), label[:-1], label + "a", label[:-1] + "1", "", None, 7):
            self.assertFalse(isDelegationLabel(bad), bad)

    def test_namer(self):
        namer = DelegationNamer(SECRET, "ACME.Kibaship.com.")
        d = namer.delegationFor(A, "*.Shop.Example.com")
        self.assertEqual(d.name, "_acme-challenge.shop.example.com")
        self.assertEqual(d.value, d.label + ".acme.kibaship.com")
        self.assertEqual(d.asPayload(None), {"type": "CNAME", "name": d.name, "value": d.value,
                                             "active": None})
        self.assertNotIn(SECRET.decode(), repr(namer))

    def test_normalDomain(self):
        self.assertEqual(normalDomain("*.Example.COM."), "example.com")


class SecretTests(SynchronousTestCase):
    def write(self, content):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_trailingWhitespaceIsNotPartOfIt(self):
        self.assertEqual(loadSecret(self.write(SECRET + b"\n")), SECRET)
        self.assertEqual(loadSecret(self.write(SECRET + b" \r\n")), SECRET)

    def test_tooShort(self):
        path = self.write(b"short\n")
        e = self.assertRaises(DelegationSecretError, loadSecret, path)
        self.assertIn("holds 5 bytes; at least 32 random bytes", str(e))
        self.assertIn("openssl rand -hex 32", str(e))

    def test_unreadable(self):
        e = self.assertRaises(DelegationSecretError, loadSecret, self.mktemp())
        self.assertIn("cannot be read", str(e))


def context(project=A, namespace="certificates", fromDefault=False):
    return ProjectContext(
        projectUUID=project, projectFromDefault=fromDefault, certificateNamespace=namespace,
        certificateName="ad-shop", challengeNamespace=namespace, challengeName="ch",
        issuerRef=IssuerRef("certmanager-acme-issuer", "ClusterIssuer"))


class OfferTests(SynchronousTestCase):
    def offer(self, namespaces=("certificates",)):
        return DelegationOffer(DelegationNamer(SECRET, "acme.kibaship.test"), store=None,
                               checker=FakeCNAMEChecker(), namespaces=namespaces, keyTTL=60)

    def test_labelledCertificateInAnAllowedNamespace(self):
        d = self.offer().delegationFor(context(), "example.com")
        self.assertEqual(d.label, delegationLabel(SECRET, A, "example.com"))

    def test_defaultProjectIsRefused(self):
        """An issuer's defaultProjectUUID could name another tenant's project."""
        d = self.offer().delegationFor(context(fromDefault=True), "example.com")
        self.assertIsInstance(d, Ineligible)
        self.assertEqual(d.reason, "default_project")
        self.assertIn("defaultProjectUUID", d.message)

    def test_otherNamespacesAreRefused(self):
        d = self.offer().delegationFor(context(namespace="tenant-x"), "example.com")
        self.assertIsInstance(d, Ineligible)
        self.assertIn("namespace tenant-x", d.message)
        self.assertNotIsInstance(
            self.offer(("*",)).delegationFor(context(namespace="tenant-x"), "example.com"),
            Ineligible)

    def test_foreignName(self):
        offer = self.offer()
        own = offer.delegationFor(context(), "example.com")
        other = offer.delegationFor(context(project=B), "example.com")
        self.assertIsNone(offer.foreignName(own.value + ".", own))
        self.assertEqual(offer.foreignName(other.value.upper() + ".", own), other.value)
        self.assertIsNone(offer.foreignName("_acme-challenge.example.com.", own))
        self.assertEqual(offer.zoneName("X.acme.kibaship.test."), "x.acme.kibaship.test")
        self.assertIsNone(offer.zoneName("acme.kibaship.test.evil.com."))
