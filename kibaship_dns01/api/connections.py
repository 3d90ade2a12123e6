"""The TLS listener's connections: a cap, a gauge, and a way to close them all.

Without a cap every accepted socket costs a file descriptor and TLS state
until its timeouts run out, so a flood of connections (slow or not) can
exhaust the process before any timeout helps.  At ``--max-connections`` a
new connection is closed at once, before its TLS handshake, and the log says
so: once when the limit is first hit, then at most every
``REFUSAL_LOG_INTERVAL`` seconds with the number refused meanwhile, so a flood
cannot flood the log too.
"""
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from kibaship_dns01 import metrics
from kibaship_dns01.logs import ThrottledLog

log = Logger()

DEFAULT_MAX_CONNECTIONS = 2048
REFUSAL_LOG_INTERVAL = 10.0
#: at the end of a shutdown, seconds connections get to flush and close before being aborted
CLOSE_SETTLE = 2.0


class LimitedTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` (server side) refusing connections past ``maxConnections``."""

    noisy = False

    def __init__(self, contextFactory, wrappedFactory, maxConnections, clock):
        super().__init__(contextFactory, False, wrappedFactory)
        self.maxConnections = maxConnections
        self._refusals = ThrottledLog(
            log, clock, "connection limit reached: {open} connections are open "
            "(--max-connections {limit}); refused {refused} new connection(s) since the "
            "last report, the latest from {peer}", interval=REFUSAL_LOG_INTERVAL,
            countField="refused", log_kind="connection_limit")
        self._empty = []

    def buildProtocol(self, addr):
        if len(self.protocols) >= self.maxConnections:
            self._refuse(addr)
            return None  # the port closes the socket
        return super().buildProtocol(addr)

    def registerProtocol(self, p):
        super().registerProtocol(p)
        metrics.HTTP_CONNECTIONS.set(len(self.protocols))

    def unregisterProtocol(self, p):
        super().unregisterProtocol(p)
        metrics.HTTP_CONNECTIONS.set(len(self.protocols))
        if not self.protocols:
            waiting, self._empty = self._empty, []
            for d in waiting:
                d.callback(None)

    def _refuse(self, addr):
        metrics.HTTP_CONNECTIONS_REFUSED.inc()
        self._refusals.report(open=len(self.protocols), limit=self.maxConnections,
                              peer=getattr(addr, "host", addr))

    def channels(self):
        """The HTTP channel of every open connection."""
        return [p.wrappedProtocol for p in list(self.protocols)]

    async def closeAll(self, clock, settle):
        """Close every connection, letting each flush what it was sending (the last
        answers of a shutdown), and abort those still open ``settle`` seconds later."""
        if self.protocols:
            gone = defer.Deferred(lambda d: self._empty.remove(d))
            self._empty.append(gone)
            for p in list(self.protocols):
                p.loseConnection()
            gone.addTimeout(settle, clock)
            try:
                await gone
            except defer.TimeoutError:
                for p in list(self.protocols):
                    p.abortConnection()
