"""The DNS responder as a Twisted service: UDP and TCP on one address and port.

Both transports listen on the same port number (resolvers retry a truncated
UDP answer over TCP on the port they asked).  Port 0 (tests) binds TCP on a
free port first and UDP on the same number, trying again a bounded number of
times when that number is taken for UDP; :attr:`DNSService.port` says which
it got.  An IPv6 ``bindAddress`` (``::`` listens on IPv4 too, where the
system allows dual-stack sockets) works as an IPv4 one.  On stop both ports
close and every TCP connection is aborted: DNS clients retry elsewhere.
"""
from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from kibaship_dns01.dns.tcp import (DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
                                    DEFAULT_MAX_PENDING, DNSStreamFactory)
from kibaship_dns01.dns.udp import DEFAULT_PACKETS_PER_READ, BoundedUDPPort, DNSDatagramProtocol

log = Logger()

#: tries to find a port number free for both UDP and TCP when port 0 is asked for
BIND_ATTEMPTS = 10


class DNSService(service.Service):
    """Serves ``responder``'s answers on ``(bindAddress, port)``, UDP and TCP."""

    name = "dns"

    def __init__(self, responder, bindAddress, port, reactor, limiter=None,
                 maxConnections=DEFAULT_MAX_CONNECTIONS, idleTimeout=DEFAULT_IDLE_TIMEOUT,
                 maxPending=DEFAULT_MAX_PENDING, packetsPerRead=DEFAULT_PACKETS_PER_READ):
        self.responder = responder
        self.bindAddress = bindAddress
        self.requestedPort = port
        self.reactor = reactor
        self.packetsPerRead = packetsPerRead
        self.udpProtocol = DNSDatagramProtocol(responder, reactor, limiter)
        self.tcpFactory = DNSStreamFactory(responder, reactor, maxConnections=maxConnections,
                                           idleTimeout=idleTimeout, maxPending=maxPending)
        self._udp = self._tcp = None

    @property
    def port(self):
        """The port number both transports listen on (``None`` when not listening)."""
        return self._tcp.getHost().port if self._tcp is not None else None

    def startService(self):
        """Listen now; a port that cannot be bound raises here, so twistd exits with the
        error instead of running without DNS."""
        super().startService()
        try:
            self._tcp, self._udp = self._listen()
        except Exception:
            self.running = False
            raise
        log.info("DNS for zone {zone} listening on {host} port {port} (UDP and TCP); UDP "
                 "receive buffer {receive_buffer} bytes", zone=self.responder.zone.name,
                 host=self.bindAddress or "0.0.0.0", port=self.port,
                 receive_buffer=self._udp.receiveBufferSize, log_kind="dns_listening")

    def _listen(self):
        attempts = BIND_ATTEMPTS if self.requestedPort == 0 else 1
        for attempt in range(1, attempts + 1):
            tcp = self.reactor.listenTCP(self.requestedPort, self.tcpFactory,
                                         interface=self.bindAddress)
            udp = BoundedUDPPort(tcp.getHost().port, self.udpProtocol,
                                 interface=self.bindAddress, reactor=self.reactor,
                                 packetsPerRead=self.packetsPerRead)
            try:
                udp.startListening()
            except CannotListenError:
                tcp.stopListening()
                if attempt == attempts:
                    raise
                continue
            return tcp, udp

    def stopService(self):
        super().stopService()
        ports, self._tcp, self._udp = [self._tcp, self._udp], None, None
        stopped = [defer.maybeDeferred(p.stopListening) for p in ports if p is not None]
        self.tcpFactory.closeAll()
        return defer.gatherResults(stopped).addCallback(lambda _: None)
