"""A tiny PKI for tests and local runs: CAs, server and client certificates.

Built on ``cryptography`` so every test gets real, verifiable X.509 material
(expired certificates, wrong usages, other CAs) instead of canned files.
"""
import datetime
import ipaddress

import attr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


@attr.s(frozen=True, auto_attribs=True)
class KeyPair:
    """A certificate and its private key, with PEM helpers."""

    cert: x509.Certificate
    key: object

    @property
    def certPEM(self):
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def keyPEM(self):
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def writeTo(self, certPath, keyPath):
        """Write cert and key to the given paths (``FilePath`` or ``str``)."""
        for path, data in ((certPath, self.certPEM), (keyPath, self.keyPEM)):
            with open(getattr(path, "path", path), "wb") as f:
                f.write(data)


def _name(cn, orgs=()):
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _builder(subject, issuerName, publicKey, notBefore, notAfter):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuerName)
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
    )


def makeCA(cn="test-ca", days=365):
    """A self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    now = _now()
    cert = (
        _builder(name, name, key.public_key(), now - datetime.timedelta(minutes=5),
                 now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def _sanList(names):
    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def issue(ca, cn, orgs=(), sans=(), server=False, client=False,
          notBefore=None, notAfter=None, days=30, key=None):
    """A leaf certificate signed by ``ca``.

    ``server``/``client`` set the extended key usages; with neither the
    certificate has no EKU extension at all (useful to test usage checks).
    ``notBefore``/``notAfter`` override the validity window (e.g. expired).
    ``key`` is the leaf's private key (a fresh P-256 key by default; an RSA key
    makes a certificate for the ECDHE-RSA cipher suites).
    """
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = _now()
    notBefore = notBefore or now - datetime.timedelta(minutes=5)
    notAfter = notAfter or now + datetime.timedelta(days=days)
    b = _builder(_name(cn, orgs), ca.cert.subject, key.public_key(), notBefore, notAfter)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    b = b.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages:
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(_sanList(sans)), critical=False)
    return KeyPair(b.sign(ca.key, hashes.SHA256()), key)


def serverPair(ca, names=("localhost", "127.0.0.1"), **kw):
    """A serving certificate for ``names`` (the first is also the CN)."""
    return issue(ca, names[0], sans=names, server=True, **kw)


def clientPair(ca, cn, orgs=(), **kw):
    """A client certificate: user ``cn`` in groups ``orgs``."""
    return issue(ca, cn, orgs=orgs, client=True, **kw)


def writeServingPair(directory, names=("localhost", "127.0.0.1")):
    """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` into ``directory`` (local runs)."""
    import os

    os.makedirs(directory, exist_ok=True)
    ca = makeCA("kibaship-dns01-local-ca")
    pair = serverPair(ca, names)
    pair.writeTo(os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key"))
    with open(os.path.join(directory, "ca.crt"), "wb") as f:
        f.write(ca.certPEM)
    return ca, pair


if __name__ == "__main__":
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "./local-certs"
    writeServingPair(target)
    print(f"wrote {target}/ca.crt, {target}/tls.crt, {target}/tls.key")
