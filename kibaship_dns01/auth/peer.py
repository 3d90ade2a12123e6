"""The client certificate chain a ``twisted.web`` request arrived with.

The TLS layer asks for a client certificate but accepts anything at the
handshake, so the chain read here is *unverified*: it is raw material for
:mod:`kibaship_dns01.auth.x509verify`, never an identity by itself.

Over TLS, ``request.channel.transport`` is Twisted's ``TLSMemoryBIOProtocol``
(HTTP/2 streams reach it through their connection); its ``getHandle()`` is the
pyOpenSSL ``Connection``.  On the server side OpenSSL's peer chain omits the
leaf, so the leaf comes from ``get_peer_certificate()`` and the rest from
``get_peer_cert_chain()``.

:class:`PeerCertificates` reads the chain and judges it once per TLS
connection, as kube-apiserver does, instead of once per request of a
keep-alive connection (a chain verification costs more than the rest of a
Present): the verdict is kept per connection *and* per CA bundle, so a CA
rotated through the authentication ConfigMap is applied to the next request
even on a connection that is already open, and it is dropped once the
chain's earliest ``notAfter`` has passed, so an expired certificate is never
honoured because its connection outlived it.
"""
import datetime
import weakref

from kibaship_dns01.auth.x509verify import verifyClientChain


def _transports(request):
    channel = getattr(request, "channel", None)
    yield getattr(request, "transport", None)
    yield getattr(channel, "transport", None)
    connection = getattr(channel, "_conn", None)  # twisted.web._http2.H2Stream
    yield getattr(connection, "transport", None)


def tlsConnection(request):
    """The pyOpenSSL ``Connection`` under ``request``, or ``None`` (plain TCP)."""
    for transport in _transports(request):
        getHandle = getattr(transport, "getHandle", None)
        if getHandle is None:
            continue
        handle = getHandle()
        if hasattr(handle, "get_peer_cert_chain"):
            return handle
    return None


def _readChain(connection):
    leaf = connection.get_peer_certificate(as_cryptography=True)
    if leaf is None:
        return []
    rest = connection.get_peer_cert_chain(as_cryptography=True) or []
    return [leaf] + [cert for cert in rest if cert != leaf]


class _Verdict:
    __slots__ = ("roots", "verified", "notAfter")

    def __init__(self, roots, verified):
        self.roots = roots
        self.verified = verified
        #: POSIX seconds: compared with the clock's time on every request
        self.notAfter = min(cert.not_valid_after_utc for cert in verified.chain).timestamp()


class _ConnectionState:
    __slots__ = ("chain", "verdicts", "__weakref__")

    def __init__(self, chain):
        self.chain = chain
        self.verdicts = {}


class PeerCertificates:
    """Per-connection client chains and their verification (see the module docstring).

    :param connectionOf: ``request -> connection or None``; the connection is
        the cache key (held weakly: the cache dies with the connection).
    :param readChain: ``connection -> [Certificate]``, leaf first.
    :param verify: ``(chain, roots, now) -> VerifiedChain``, raising
        ``CertificateVerificationError``; failures are never cached.
    """

    def __init__(self, connectionOf=tlsConnection, readChain=_readChain,
                 verify=verifyClientChain):
        self._connectionOf = connectionOf
        self._readChain = readChain
        self._verify = verify
        self._states = weakref.WeakKeyDictionary()

    def _state(self, request):
        """The connection's state, found by its HTTP channel (one per connection),
        so only a connection's first request looks for its TLS handle."""
        channel = getattr(request, "channel", None)
        state = self._states.get(channel) if channel is not None else None
        if state is None:
            connection = self._connectionOf(request)
            if connection is None:
                return None
            state = _ConnectionState(self._readChain(connection))
            if channel is not None:
                self._states[channel] = state
        return state

    def chain(self, request):
        """The presented chain (unverified), leaf first; ``[]`` without one."""
        state = self._state(request)
        return state.chain if state is not None else []

    def verify(self, request, roots, seconds):
        """The request's chain verified against ``roots`` at POSIX time ``seconds``, at
        most once per connection and bundle while the chain is valid."""
        state = self._state(request)
        if state is not None:
            verdict = state.verdicts.get(id(roots))
            if verdict is not None and verdict.roots is roots and seconds <= verdict.notAfter:
                return verdict.verified
        now = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
        verified = self._verify(state.chain if state is not None else [], roots, now)
        if state is not None:
            state.verdicts[id(roots)] = _Verdict(roots, verified)
        return verified
