"""DNS over UDP: rate limit, parse, answer, write; and a port that shares the reactor.

Per datagram (:class:`DNSDatagramProtocol`): the rate limiter decides from
the source address alone (:mod:`.ratelimit`); a packet that is not a
readable query is counted and gets nothing (no answer, no log line); the
answer is encoded within the requester's UDP size (TC set when it does not
fit, :func:`.wire.encodeAnswer`).  Nothing here raises into the reactor: a
write the kernel refuses (a full buffer under a flood) is counted.

:class:`BoundedUDPPort` bounds the datagrams handled per reactor turn.
Twisted's ``udp.Port.doRead`` reads until 256 KiB have arrived, which at
~40 bytes a query is over 6,000 queries in one turn: under a flood the
HTTPS listener on the same reactor would wait for all of them every turn.
Reading ``packetsPerRead`` datagrams and returning lets the reactor serve
every other socket between batches; the rest wait in the kernel's buffer.

That buffer is asked to be large (``receiveBuffer``, 4 MiB).  The kernel
drops what does not fit *before* the rate limiter sees it, whatever network
it came from: the default (``net.core.rmem_default``, 208 KiB) holds 256
small datagrams, which a flood of 24,000 queries/s fills in 11 ms, so every
pause of the reactor longer than that (a Present's TLS and Valkey work, the
process waiting for a CPU) dropped up to 1.3 % of *every* network's
queries, the other networks' included (``bench/drills/dns.py``).  4 MiB
holds about 10,000 (the kernel counts twice the size asked, and some 830
bytes a small datagram): 420 ms of such a flood absorbed rather than
dropped; the price is that a query may wait that long behind the flood
while the process cannot keep up.  The kernel grants at most
``net.core.rmem_max`` (docs/dns.md); the service logs what it got.
"""
import socket

from twisted.internet import udp
from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from kibaship_dns01 import metrics
from kibaship_dns01.dns import wire
from kibaship_dns01.dns.ratelimit import ANSWER, SLIP

log = Logger()

#: datagrams read per reactor turn (see the module docstring; bench/bench_dns.py)
DEFAULT_PACKETS_PER_READ = 16
#: bytes of kernel receive buffer asked for (see the module docstring; 0: the system's)
DEFAULT_RECEIVE_BUFFER = 4 * 1024 * 1024


class BoundedUDPPort(udp.Port):
    """A UDP port reading at most ``packetsPerRead`` datagrams each time it is readable."""

    def __init__(self, port, proto, interface="", reactor=None,
                 packetsPerRead=DEFAULT_PACKETS_PER_READ, receiveBuffer=DEFAULT_RECEIVE_BUFFER):
        super().__init__(port, proto, interface=interface, maxPacketSize=wire.MAX_QUERY_SIZE,
                         reactor=reactor)
        self.packetsPerRead = packetsPerRead
        self.receiveBuffer = receiveBuffer

    def createInternetSocket(self):
        """The socket, with a receive buffer of ``receiveBuffer`` bytes asked for (the
        kernel grants at most ``net.core.rmem_max``; :attr:`receiveBufferSize` says
        what it gave)."""
        skt = super().createInternetSocket()
        if self.receiveBuffer:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receiveBuffer)
        return skt

    @property
    def receiveBufferSize(self):
        """The receive buffer the kernel gave, in bytes (Linux reports twice what it
        counts against, its bookkeeping included)."""
        return self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def doRead(self):
        """Twisted's loop (``udp.Port.doRead``) counted in datagrams, not bytes."""
        for _ in range(self.packetsPerRead):
            if not self.connected:  # stopped by a datagram handled in this batch
                return
            try:
                data, addr = self.socket.recvfrom(self.maxPacketSize)
            except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                # nothing more to read; or the ICMP error of an earlier answer
                return
            if self.addressFamily == socket.AF_INET6:
                addr = addr[:2]  # without flow and scope id, as Twisted hands them
            try:
                self.protocol.datagramReceived(data, addr)
            except Exception:  # a defect: keep the port serving, as Twisted does
                log.failure("handling a datagram from {peer}", peer=addr[0])


class DNSDatagramProtocol(DatagramProtocol):
    """Answers the queries arriving on one UDP port with ``responder``."""

    noisy = False

    def __init__(self, responder, clock, limiter=None):
        self.responder = responder
        self.clock = clock
        self.limiter = limiter
        self._running = False

    def startProtocol(self):
        self._running = True

    def stopProtocol(self):
        self._running = False

    def datagramReceived(self, data, addr):
        if self.limiter is not None:
            action = self.limiter.decide(addr[0])
            if action != ANSWER:
                self._limited(action, data, addr)
                return
        started = self.clock.seconds()
        d = self.responder.respondToBytes(data, "udp")
        if d is None:
            return
        d.addCallback(self._send, addr, started)
        d.addErrback(lambda f: log.failure("answering a DNS query from {peer}", f,
                                           peer=addr[0]))

    def _limited(self, action, data, addr):
        slip = wire.slipAnswer(data) if action == SLIP else None
        if slip is None:
            metrics.labelled(metrics.DNS_RATE_LIMITED, "drop").inc()
            return
        metrics.labelled(metrics.DNS_RATE_LIMITED, "slip").inc()
        self._write(slip, addr)

    def _send(self, answer, addr, started):
        data, truncated = wire.encodeAnswer(answer.message, answer.udpLimit)
        if not self._write(data, addr):
            return
        if truncated:
            metrics.DNS_TRUNCATED.inc()
        self.responder.countSent(answer, "udp", started)

    def _write(self, data, addr):
        """Send ``data``; ``False`` when the port has closed or the kernel refused it."""
        if not self._running:
            return False
        try:
            self.transport.write(data, addr)
        except (OSError, MessageLengthError):
            metrics.DNS_SEND_FAILURES.inc()
            return False
        return True
