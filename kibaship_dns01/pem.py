"""PEM certificate bundles: the one parser every TLS user of the daemon shares.

Serving chains, the authentication ConfigMap's CA bundles, the API server's
CA and a Valkey CA all arrive as PEM text that may hold several certificates
(CA rotation puts the old and the new one in the same file).
"""
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
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


def loadKeyPair(certPEM, keyPEM):
    """``(chain, key)``: the certificates of ``certPEM`` (leaf first) and its private key.

    Both are ``cryptography`` objects, which is what pyOpenSSL's ``SSL.Context``
    takes; its own ``X509``/``PKey`` objects are deprecated there.

    :raise ValueError: no certificate, a malformed one, or a malformed or
        encrypted key.
    """
    chain = loadCertificates(certPEM)
    if not chain:
        raise ValueError("no PEM certificate found")
    return chain, loadPrivateKey(keyPEM)


def loadPrivateKey(keyPEM):
    """The unencrypted private key of ``keyPEM``, a ``cryptography`` object.

    :raise ValueError: a malformed or encrypted key, or one of a type OpenSSL lacks.
    """
    if isinstance(keyPEM, str):
        keyPEM = keyPEM.encode("utf-8")
    try:
        return serialization.load_pem_private_key(keyPEM, password=None)
    except (TypeError, UnsupportedAlgorithm) as e:  # encrypted, or a key type OpenSSL lacks
        raise ValueError(f"the private key cannot be used: {e}")


def certificateOptions(certPEM, keyPEM):
    """Keyword arguments that make Twisted's ``CertificateOptions`` (or
    ``optionsForClientTLS(extraCertificateOptions=...)``) present this pair.

    Twisted's ``PrivateCertificate`` route hands pyOpenSSL ``X509``/``PKey``
    objects to ``SSL.Context``, which pyOpenSSL deprecates; these are
    ``cryptography`` objects, and the rest of the chain is sent too.

    :raise ValueError: as :func:`loadKeyPair`.
    """
    chain, key = loadKeyPair(certPEM, keyPEM)
    return {"privateKey": key, "certificate": chain[0], "extraCertChain": list(chain[1:])}
