"""DNS over TCP (RFC 7766): length-prefixed queries, the same answers, no truncation.

Resolvers come here after a truncated UDP answer or a rate limiter's slip,
so this path must stay open under a flood without letting one client hold
the process.  What bounds a connection:

* **the number of connections** (``maxConnections``): past it a new one is
  closed at once (:class:`DNSStreamFactory`), the log says so at most once
  every 10 seconds;
* **idleness** (``idleTimeout``): no byte received and no query being
  answered for that long closes the connection; one that does not let go
  (it does not read) is aborted ``ABORT_TIMEOUT`` seconds later;
* **queries in flight** (``maxPending``): past it the connection is not
  read until an answer has been written (RFC 7766 lets answers go out of
  order; each carries its query's id);
* **answers not read**: the protocol is the transport's producer, so when
  the client stops reading, the server stops reading its queries;
* **message size**: a length prefix over :data:`.wire.MAX_QUERY_SIZE` closes
  the connection; no query is that large.
"""
import struct

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from kibaship_dns01 import metrics
from kibaship_dns01.dns import wire
from kibaship_dns01.logs import ThrottledLog

log = Logger()

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_IDLE_TIMEOUT = 10.0
DEFAULT_MAX_PENDING = 16
#: seconds a closed connection gets to flush before it is aborted
ABORT_TIMEOUT = 2.0
#: the largest DNS message a 2-octet length prefix can announce
MAX_TCP_MESSAGE = 65535
_PREFIX = struct.Struct("!H")
_PENDING, _WRITER = "pending", "writer"


@implementer(IPushProducer)
class DNSStreamProtocol(Protocol, TimeoutMixin):
    """One DNS-over-TCP connection."""

    def __init__(self, factory):
        self.factory = factory
        self.callLater = factory.clock.callLater
        self._buffer = b""
        self._pending = 0
        self._paused = set()
        self._draining = False
        self._open = False
        self._abortCall = None

    def connectionMade(self):
        self._open = True
        self.factory.opened(self)
        self.transport.registerProducer(self, True)
        self.setTimeout(self.factory.idleTimeout)

    def connectionLost(self, reason):
        self._open = False
        self.setTimeout(None)
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        self.factory.closed(self)

    def dataReceived(self, data):
        if not self._open:  # closing: nothing more is read
            return
        self.resetTimeout()
        self._buffer += data
        self._drain()

    def _drain(self):
        """Answer the whole queries in the buffer, as many as may be in flight."""
        if self._draining:
            return
        self._draining = True
        try:
            start = self._takeQueries()
            self._buffer = self._buffer[start:]
        finally:
            self._draining = False
        self._pause(_PENDING, self._pending >= self.factory.maxPending)

    def _takeQueries(self):
        start, buffer = 0, self._buffer
        while self._open and _WRITER not in self._paused \
                and self._pending < self.factory.maxPending and len(buffer) - start >= 2:
            (length,) = _PREFIX.unpack_from(buffer, start)
            if length > wire.MAX_QUERY_SIZE:
                metrics.labelled(metrics.DNS_TCP_CLOSED, "too_large").inc()
                self._close()
                return len(buffer)
            if len(buffer) - start - 2 < length:
                break
            query = buffer[start + 2:start + 2 + length]
            start += 2 + length
            self._handle(query)
        return start

    def _handle(self, data):
        started = self.factory.clock.seconds()
        d = self.factory.responder.respondToBytes(data, "tcp")
        if d is None:
            return
        self._pending += 1
        d.addCallback(self._send, started)
        d.addErrback(lambda f: log.failure("answering a DNS query over TCP", f))
        d.addBoth(self._answered)

    def _send(self, answer, started):
        if not self._open:
            return
        data, _ = wire.encodeAnswer(answer.message, MAX_TCP_MESSAGE)
        self.transport.write(_PREFIX.pack(len(data)) + data)
        self.factory.responder.countSent(answer, "tcp", started)

    def _answered(self, _):
        self._pending -= 1
        if self._open:
            self.resetTimeout()
            self._drain()

    def _pause(self, reason, paused):
        """Read the socket only while no reason to stop holds."""
        before = bool(self._paused)
        if paused:
            self._paused.add(reason)
        else:
            self._paused.discard(reason)
        if not self._open or before == bool(self._paused):
            return
        if self._paused:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    # IPushProducer: the transport's write buffer is full, or has room again
    def pauseProducing(self):
        self._pause(_WRITER, True)

    def resumeProducing(self):
        self._pause(_WRITER, False)
        self._drain()

    def stopProducing(self):
        self._open = False

    def timeoutConnection(self):
        if self._pending:  # still answering: not idle
            self.setTimeout(self.factory.idleTimeout)
            return
        metrics.labelled(metrics.DNS_TCP_CLOSED, "idle").inc()
        self._close()

    def _close(self):
        """Close; abort if the client does not let go (it may not be reading at all).
        Nothing more is read or answered on it."""
        self._open = False
        self.transport.loseConnection()
        if self._abortCall is None:
            self._abortCall = self.callLater(ABORT_TIMEOUT, self.transport.abortConnection)


class DNSStreamFactory(ServerFactory):
    """Builds :class:`DNSStreamProtocol` connections, at most ``maxConnections`` open."""

    noisy = False

    def __init__(self, responder, clock, maxConnections=DEFAULT_MAX_CONNECTIONS,
                 idleTimeout=DEFAULT_IDLE_TIMEOUT, maxPending=DEFAULT_MAX_PENDING):
        self.responder = responder
        self.clock = clock
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
        self.maxPending = maxPending
        self.connections = set()
        self._refusals = ThrottledLog(
            log, clock, "DNS over TCP: {open} connections are open (the limit); refused "
            "{refused} new connection(s) since the last report, the latest from {peer}",
            countField="refused", log_kind="dns_connection_limit")

    def buildProtocol(self, addr):
        if len(self.connections) >= self.maxConnections:
            metrics.labelled(metrics.DNS_TCP_CLOSED, "limit").inc()
            self._refusals.report(open=len(self.connections), peer=getattr(addr, "host", addr))
            return None  # the port closes the socket
        return DNSStreamProtocol(self)

    def opened(self, protocol):
        self.connections.add(protocol)
        metrics.DNS_TCP_CONNECTIONS.inc()

    def closed(self, protocol):
        if protocol in self.connections:
            self.connections.discard(protocol)
            metrics.DNS_TCP_CONNECTIONS.dec()

    def closeAll(self):
        """Abort every connection (the service is stopping; DNS clients retry)."""
        for protocol in list(self.connections):
            protocol.transport.abortConnection()
