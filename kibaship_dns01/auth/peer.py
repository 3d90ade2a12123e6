"""The client certificate chain a ``twisted.web`` request arrived with.

The TLS layer asks for a client certificate but accepts anything at the
handshake, so the chain read here is *unverified*: it is raw material for
:mod:`kibaship_dns01.auth.x509verify`, never an identity by itself.

Over TLS, ``request.channel.transport`` is Twisted's ``TLSMemoryBIOProtocol``
(HTTP/2 streams reach it through their connection); its ``getHandle()`` is the
pyOpenSSL ``Connection``.  On the server side OpenSSL's peer chain omits the
leaf, so the leaf comes from ``get_peer_certificate()`` and the rest from
``get_peer_cert_chain()``.
"""


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


def peerCertificateChain(request):
    """The presented chain as ``cryptography`` certificates, leaf first; ``[]`` if none."""
    connection = tlsConnection(request)
    if connection is None:
        return []
    leaf = connection.get_peer_certificate(as_cryptography=True)
    if leaf is None:
        return []
    rest = connection.get_peer_cert_chain(as_cryptography=True) or []
    return [leaf] + [cert for cert in rest if cert != leaf]
