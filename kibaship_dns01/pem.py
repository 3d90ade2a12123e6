"""PEM certificate bundles: the one parser every TLS user of the daemon shares.

Serving chains, the authentication ConfigMap's CA bundles, the API server's
CA and a Valkey CA all arrive as PEM text that may hold several certificates
(CA rotation puts the old and the new one in the same file).
"""
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl

_MARKER = b"-----BEGIN CERTIFICATE-----"


def loadCertificates(data):
    """Every certificate of a PEM bundle, in order; ``()`` when it holds none.

    :raise ValueError: a certificate block is malformed.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data or _MARKER not in data:
        return ()
    return tuple(x509.load_pem_x509_certificates(data))


def trustRootFromPEM(data):
    """A Twisted trust root of every certificate in a PEM bundle.

    :raise ValueError: the bundle holds no certificate or a malformed one.
    """
    certs = loadCertificates(data)
    if not certs:
        raise ValueError("no PEM certificate found")
    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certs])
