"""A small HTTPS client for tests: talks to the daemon as the kube-aggregator does.

Trusts a given CA (never "verify nothing"), optionally presents a client
certificate; one-off requests use a non-persistent pool so trial sees a clean
reactor, a :class:`Session` keeps one connection alive for many.
"""
import attr
import treq
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from kibaship_dns01.pem import certificateOptions


@attr.s(frozen=True, auto_attribs=True)
class Response:
    code: int
    headers: object
    body: bytes

    def json(self):
        import json

        return json.loads(self.body)


def clientTLSOptions(hostname, caPEM, clientPair=None):
    """Client TLS options trusting ``caPEM`` (nothing else), presenting ``clientPair`` if given."""
    trust = ssl.Certificate.loadPEM(caPEM) if caPEM else None
    kw = {"trustRoot": trust} if trust is not None else {}
    if clientPair is not None:
        kw["extraCertificateOptions"] = certificateOptions(clientPair.certPEM, clientPair.keyPEM)
    return ssl.optionsForClientTLS(hostname, **kw)


@implementer(IPolicyForHTTPS)
class _Policy:
    def __init__(self, caPEM, clientPair):
        self.caPEM = caPEM
        self.clientPair = clientPair

    def creatorForNetloc(self, hostname, port):
        return clientTLSOptions(hostname.decode("ascii"), self.caPEM, self.clientPair)


class Session:
    """Requests over one kept-alive connection, as the kube-aggregator sends them.

    ``close()`` (a Deferred) drops the connection; tests call it at cleanup so
    trial sees a clean reactor.
    """

    def __init__(self, reactor, caPEM=None, clientPair=None):
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 1
        self.agent = Agent(reactor, contextFactory=_Policy(caPEM, clientPair), pool=self.pool)

    def request(self, method, url, **kw):
        return _send(self.agent, method, url, **kw)

    def close(self):
        return self.pool.closeCachedConnections()


async def request(reactor, method, url, caPEM=None, clientPair=None, headers=None, body=None,
                  timeout=10):
    """One request on a connection of its own; returns :class:`Response`.  ``body`` may
    be bytes or a dict (JSON)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, contextFactory=_Policy(caPEM, clientPair), pool=pool)
    return await _send(agent, method, url, headers=headers, body=body, timeout=timeout)


async def _send(agent, method, url, headers=None, body=None, timeout=10):
    if isinstance(method, bytes):
        method = method.decode("ascii")
    kw = {"headers": headers or {}}
    if isinstance(body, dict):
        kw["json"] = body
    elif body is not None:
        kw["data"] = body
    resp = await treq.request(method, url, agent=agent, timeout=timeout, **kw)
    content = await treq.content(resp)
    return Response(resp.code, resp.headers, content)


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    def __init__(self):
        self.done = defer.Deferred()

    def handshakeCompleted(self):
        cert = self.transport.getPeerCertificate().to_cryptography()
        self.transport.loseConnection()
        self.done.callback(cert.public_bytes(serialization.Encoding.PEM))

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)


async def peerCertificatePEM(reactor, host, port, caPEM, hostname="localhost"):
    """The PEM certificate a TLS server presents to a new connection."""
    endpoint = SSL4ClientEndpoint(reactor, host, port, clientTLSOptions(hostname, caPEM))
    proto = _Handshake()
    await connectProtocol(endpoint, proto)
    return await proto.done
