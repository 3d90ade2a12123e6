"""Server TLS that follows certificate rotation and requests client certificates.

cert-manager rotates the serving certificate by updating a Secret; the kubelet
swaps the volume's ``..data`` symlink, so the files change under us.  We poll
the files on the injected clock and build a fresh ``SSL.Context`` when they
change.  A half-written or mismatched pair is rejected (and logged) and the
previous context keeps serving, because a daemon that drops TLS on a bad
rotation takes cert-manager's issuance down with it.

Client certificates are *requested* against the CA names the authentication
layer supplies, never *required* (probes and bearer-token clients have none),
and accepted unconditionally at the handshake: verification happens in the
authenticator so it can answer 401 with the reason (expired, unknown CA, ...)
instead of an opaque handshake failure, as ``k8s.io/apiserver`` does.
"""
import hashlib

from OpenSSL import SSL
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from kibaship_dns01 import metrics
from kibaship_dns01.api.tlspolicy import DEFAULT, PolicyError
from kibaship_dns01.interfaces import IReadiness
from kibaship_dns01.pem import loadCertificates, loadPrivateKey

log = Logger()

_SESSION_ID = b"kibaship-dns01"


class CertificateLoadError(Exception):
    """The certificate/key pair on disk cannot be served; ``str()`` says why."""


def _readPair(certPath, keyPath):
    try:
        with open(certPath, "rb") as f:
            certPEM = f.read()
        with open(keyPath, "rb") as f:
            keyPEM = f.read()
    except OSError as e:
        raise CertificateLoadError(f"cannot read {e.filename}: {e.strerror}")
    return certPEM, keyPEM


def _parseCAs(pems):
    """The CA certificates of PEM bundles, one per subject (for the CertificateRequest)."""
    cas, seen = [], set()
    for bundle in pems:
        for cert in loadCertificates(bundle):
            subject = cert.subject.public_bytes()
            if subject not in seen:
                seen.add(subject)
                cas.append(cert)
    return cas


def buildContext(certPEM, keyPEM, clientCAs=(), policy=DEFAULT):
    """An ``SSL.Context`` serving ``certPEM`` (leaf first, then chain) under the
    :class:`~kibaship_dns01.api.tlspolicy.TLSPolicy` ``policy``.

    Raises :class:`CertificateLoadError` when the pair is unusable, or when no
    TLS 1.2 suite of the policy suits its key.
    """
    try:
        chain = loadCertificates(certPEM)
        if not chain:
            raise CertificateLoadError("certificate file holds no PEM certificate")
        key = loadPrivateKey(keyPEM)
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        policy.apply(ctx, chain[0])
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except CertificateLoadError:
        raise
    except PolicyError as e:
        raise CertificateLoadError(str(e))
    except (SSL.Error, ValueError, TypeError) as e:
        raise CertificateLoadError(f"certificate and key are not a usable pair: {e}")
    ctx.set_session_id(_SESSION_ID)
    ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: True)
    for ca in clientCAs:
        ctx.add_client_ca(ca)
    ctx.set_alpn_select_callback(_selectALPN)
    return ctx


def exportExpiry(certPEM):
    """Publish the served leaf's notAfter, so an alert fires while there is still time to
    renew; ``certPEM`` has already been accepted by :func:`buildContext`."""
    leaf = loadCertificates(certPEM)[0]
    metrics.SERVING_CERT_EXPIRY.set(leaf.not_valid_after_utc.timestamp())


def _selectALPN(conn, offered):
    # We speak HTTP/1.1 only; the kube-aggregator falls back to it.
    return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator, IReadiness)
class ReloadingServerTLS:
    """Serves the current certificate pair and requested client-CA list.

    New connections get the newest good context; established ones keep theirs.
    Every context, after a rotation or a client-CA change too, is built under
    the same TLS ``policy`` (``--tls-min-version``, ``--tls-cipher-suites``).
    """

    name = "serving-certificate"

    def __init__(self, certPath, keyPath, clock, interval=10.0, policy=DEFAULT):
        self.certPath = certPath
        self.keyPath = keyPath
        self.policy = policy
        self._clock = clock
        self._interval = interval
        self._fingerprint = None
        self._pair = None
        self._clientCAs = ()
        self._context = None
        self._poller = None
        self.lastError = None

    # -- loading ----------------------------------------------------------
    def load(self):
        """Read the files now; raise :class:`CertificateLoadError` if unusable.

        Used at start-up, where a bad pair must stop the daemon with a clear
        message rather than serve nothing.
        """
        certPEM, keyPEM = _readPair(self.certPath, self.keyPath)
        self._install(certPEM, keyPEM)

    def _install(self, certPEM, keyPEM):
        fingerprint = hashlib.sha256(certPEM + b"\0" + keyPEM).digest()
        if fingerprint == self._fingerprint:
            return False
        self._context = buildContext(certPEM, keyPEM, _parseCAs(self._clientCAs), self.policy)
        self._pair = (certPEM, keyPEM)
        self._fingerprint = fingerprint
        exportExpiry(certPEM)
        return True

    def reloadIfChanged(self):
        """Poll step: install a changed pair, or keep the old one and log why."""
        try:
            certPEM, keyPEM = _readPair(self.certPath, self.keyPath)
            changed = self._install(certPEM, keyPEM)
        except CertificateLoadError as e:
            if str(e) != self.lastError:
                log.error("keeping the previous serving certificate: {cert} / {key}: {why}",
                          cert=self.certPath, key=self.keyPath, why=str(e))
            self.lastError = str(e)
            return False
        self.lastError = None
        if changed:
            log.info("serving certificate reloaded from {cert}", cert=self.certPath)
        return changed

    def setClientCAs(self, pems):
        """Set the CA bundles whose names are sent in the CertificateRequest.

        Called by the authentication layer whenever its ConfigMap changes.
        """
        self._clientCAs = tuple(pems)
        if self._pair is not None:
            self._context = buildContext(*self._pair, _parseCAs(self._clientCAs), self.policy)

    # -- polling ----------------------------------------------------------
    def startPolling(self):
        self._poller = LoopingCall(self.reloadIfChanged)
        self._poller.clock = self._clock
        self._poller.start(self._interval, now=False)

    def stopPolling(self):
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None

    # -- IOpenSSLServerConnectionCreator / IReadiness -----------------------
    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self._context, None)

    def isReady(self):
        return self._context is not None
