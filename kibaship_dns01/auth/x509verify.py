"""Verify a presented client certificate chain the way Go's ``crypto/x509`` does.

The TLS layer accepts any client certificate at handshake time (it must not
*require* one, and the trusted CAs rotate under it), so this module is where a
client chain is actually judged: against a CA bundle, at the injected clock's
time, for client-authentication use.  ``k8s.io/apiserver`` verifies with
``x509.VerifyOptions{KeyUsages: [ClientAuth]}``; we reproduce its semantics:

- every certificate in the chain must be inside its validity window;
- the chain must lead to a certificate of the bundle through valid signatures
  (intermediates may be presented by the client);
- every certificate of the chain that carries an extended-key-usage extension
  must allow client authentication (or any usage); a certificate without the
  extension is unrestricted (RFC 5280 §4.2.1.12, and what Go accepts).

Chain building and signature checks are ``cryptography``'s verifier
(``PolicyBuilder().build_client_verifier()``) with its extension policies
relaxed to Go's: its WebPKI defaults would demand a subjectAltName on the
leaf, which a front-proxy client certificate (``CN=front-proxy-client``) does
not have.  The leaf's validity is checked first and the key usage last so a
failure carries one precise reason (:data:`EXPIRED`, :data:`NOT_YET_VALID`,
:data:`UNKNOWN_AUTHORITY`, :data:`NO_CLIENT_AUTH`) and a message in Go's words.
"""
import datetime

import attr
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from kibaship_dns01.pem import loadCertificates

EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
UNKNOWN_AUTHORITY = "unknown_authority"
NO_CLIENT_AUTH = "no_client_auth"

_ALLOWED_USAGES = frozenset([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
_MAX_CHAIN_DEPTH = 8


class CertificateVerificationError(Exception):
    """A presented chain failed; ``reason`` is one of this module's constants."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message


def certificateIdentifier(cert):
    """``SN=..., CN=..., issuer=...``: enough for an operator to find the certificate.

    ``k8s.io/apiserver`` names a failed certificate by serial and key ids; the
    subject and issuer are friendlier and just as unique in practice.
    """
    return "SN=%d, subject=%r, issuer=%r" % (
        cert.serial_number, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string())


def commonName(cert):
    """The subject's first CN, or ``""``."""
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return attrs[0].value if attrs else ""


def organizations(cert):
    """The subject's O values in order: ``k8s.io/apiserver`` makes them the groups."""
    return tuple(a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME))


def _rfc3339(when):
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _checkValidity(cert, now, what="certificate"):
    """Go's wording, split into the two reasons an operator acts on differently."""
    if now > cert.not_valid_after_utc:
        raise CertificateVerificationError(
            EXPIRED, "x509: %s has expired: current time %s is after %s" % (
                what, _rfc3339(now), _rfc3339(cert.not_valid_after_utc)))
    if now < cert.not_valid_before_utc:
        raise CertificateVerificationError(
            NOT_YET_VALID, "x509: %s is not yet valid: current time %s is before %s" % (
                what, _rfc3339(now), _rfc3339(cert.not_valid_before_utc)))


def _allowsClientAuth(cert):
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return any(u in _ALLOWED_USAGES for u in usages)


def _policyBuilder(now):
    """A client verifier with Go's extension rules instead of the WebPKI's.

    End-entity: any extensions (EKU is checked separately, over the chain).
    CA: basicConstraints must be present (``cryptography`` insists; Go wants
    ``cA`` asserted for intermediates too, which the verifier enforces).
    """
    eePolicy = verification.ExtensionPolicy.permit_all()
    caPolicy = verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, None)
    return (verification.PolicyBuilder()
            .time(now)
            .max_chain_depth(_MAX_CHAIN_DEPTH)
            .extension_policies(ca_policy=caPolicy, ee_policy=eePolicy))


def _expiredIssuer(chain, roots, now):
    """After a failed build: is an issuing CA out of its validity window?

    An expired CA is the usual culprit during CA rotation, and "unknown
    authority" would send the operator looking in the wrong place.
    """
    issuerNames = {c.issuer for c in chain}
    for ca in list(chain[1:]) + list(roots):
        if ca.subject in issuerNames:
            try:
                _checkValidity(ca, now, "issuing CA certificate %r" % (ca.subject.rfc4514_string(),))
            except CertificateVerificationError as e:
                return e
    return None


@attr.s(frozen=True, auto_attribs=True)
class VerifiedChain:
    """A chain that passed: leaf first, trust anchor last; the leaf's subject is read
    once here (a verified chain is kept per connection and asked on every request)."""

    chain: tuple
    leafCommonName: str = attr.ib(init=False)
    leafOrganizations: tuple = attr.ib(init=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "leafCommonName", commonName(self.chain[0]))
        object.__setattr__(self, "leafOrganizations", organizations(self.chain[0]))

    @property
    def leaf(self):
        return self.chain[0]


def verifyClientChain(presented, roots, now):
    """Verify ``presented`` (leaf first, then any intermediates) against ``roots``.

    :param presented: list of :class:`cryptography.x509.Certificate`, non-empty.
    :param roots: the CA bundle (certificates), may be empty.
    :param now: an aware :class:`datetime.datetime`: the injected clock's time.
    :return: :class:`VerifiedChain`.
    :raise CertificateVerificationError: with a precise ``reason``.
    """
    leaf = presented[0]
    if now.tzinfo is None:
        now = now.replace(tzinfo=datetime.timezone.utc)
    if not roots:
        raise CertificateVerificationError(
            UNKNOWN_AUTHORITY, "x509: certificate signed by unknown authority (the CA bundle is empty)")
    _checkValidity(leaf, now)
    try:
        verifier = _policyBuilder(now).store(verification.Store(list(roots))).build_client_verifier()
        result = verifier.verify(leaf, list(presented[1:]))
    except verification.VerificationError as e:
        raise (_expiredIssuer(presented, roots, now) or CertificateVerificationError(
            UNKNOWN_AUTHORITY, "x509: certificate signed by unknown authority (%s)" % (e,)))
    for cert in result.chain:
        if not _allowsClientAuth(cert):
            raise CertificateVerificationError(
                NO_CLIENT_AUTH, "x509: certificate specifies an incompatible key usage "
                "(its extended key usage does not include client authentication)")
    return VerifiedChain(tuple(result.chain))


def loadPEMBundle(data, what):
    """Parse a PEM CA bundle; an unreadable bundle names ``what`` and says what to fix."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")
    try:
        certs = loadCertificates(data)
        if text.strip() and not certs:
            raise ValueError("no PEM certificate found")
    except ValueError as e:
        raise ValueError("%s does not hold valid PEM certificates (%s); "
                         "it should be a PEM bundle of CA certificates" % (what, e))
    return certs
