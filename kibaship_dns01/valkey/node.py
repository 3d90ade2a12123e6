"""Connections to one cluster node, on txredisapi's protocol.

txredisapi 1.6.0 speaks RESP well (pipelining, per-reply timeouts, error
replies as ``ResponseError``), but its connection *pool* does not fit a
production cluster client, so this module keeps txredisapi's
``BaseRedisProtocol`` and replaces the pool.  Deliberately, because:

* ``ssl_context_factory=True`` is an unverifying ``ClientContextFactory``:
  we wrap our own endpoint with ``wrapClientTLS(optionsForClientTLS(name,
  trustRoot=<the CA>))``, i.e. certificate *and* host name verification.
* A failed ``AUTH`` in ``connectionMade`` calls ``factory.stopTrying()``: the
  pool never reconnects again.  Here ``AUTH`` is an ordinary first command of
  each new connection; a rejection fails that attempt with
  :class:`ValkeyAuthError` and the next attempt reads the credentials anew.
* ``getConnection()`` waits forever when nothing connects: every attempt here
  is bounded by ``connectTimeout`` on the injected reactor.
* Its pool reconnects in the background on the global reactor with its own
  1-10 s backoff, outside any caller's deadline; here a node is (re)connected
  on demand, one attempt at a time (single-flight), within the caller's bound.
* Its handler picks a random connection per command, so ``ASKING`` and the
  command after it could travel on different connections.  :class:`Node`
  hands out one connection and the caller writes ``ASKING`` and the command
  back to back on it.

``convertNumbers=False`` keeps stream ids and field values as strings
(``"1-0"`` must not become a float).  Replies are pipelined: several callers
share a connection and each gets its own reply in order.
"""
import collections

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, ssl
from twisted.python.failure import Failure
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

import txredisapi

from kibaship_dns01.flight import SingleFlight
from kibaship_dns01.pem import trustRootFromPEM
from kibaship_dns01.valkey.errors import ConnectionLost, ValkeyAuthError, ValkeyTLSError
from kibaship_dns01.valkey.replies import AUTH, NOPERM, ServerError, classify
from kibaship_dns01.valkey.target import formatAddress

log = Logger()

def trustRoot(caPEM):
    """A Twisted trust root from a PEM bundle (one or more CA certificates)."""
    try:
        return trustRootFromPEM(caPEM)
    except ValueError as e:
        raise ValkeyTLSError("the Valkey CA bundle is not usable (%s); check the caSecretRef "
                             "key (expected ca.crt in PEM)" % (e,))


def makeEndpoint(reactor, address, target):
    """The client endpoint for one node: plain TCP for IP literals (no
    resolver round trip), ``HostnameEndpoint`` for names, TLS on top."""
    host, port = address
    timeout = target.connectTimeout
    if isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    elif isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if not target.tls:
        return endpoint
    root = trustRoot(target.caPEM) if target.caPEM else ssl.platformTrust()
    options = ssl.optionsForClientTLS(target.serverName or host, trustRoot=root)
    return wrapClientTLS(options, endpoint, clock=reactor)


@implementer(IHandshakeListener)
class NodeProtocol(txredisapi.BaseRedisProtocol):
    """txredisapi's RESP protocol with the bits its pool used to provide.

    ``ready`` fires once the transport is usable (after the TLS handshake when
    ``tls``), ``closed`` when the connection is gone; ``lostReason`` keeps why,
    so a failed handshake is reported as a TLS error rather than "lost".
    """

    def __init__(self, clock, replyTimeout, tls):
        # no replyTimeout for txredisapi: it would arm (and cancel) a timer and
        # chain two Deferreds per command; the replies are matched and timed here
        super().__init__(charset="utf-8", replyTimeout=None, convertNumbers=False)
        self.clock = clock
        self.callLater = clock.callLater
        self.readTimeout = replyTimeout
        self.tls = tls
        self.ready = defer.Deferred()
        self.closed = defer.Deferred()
        self.lostReason = None
        self._unparsed = []
        self._pending = collections.deque()  # (Deferred, sent at), in reply order
        self._watchdog = None

    # Replies, in order.  One Deferred per command in a deque, replaced by
    # nothing when its caller cancels it (the reply still comes and is
    # dropped), and one timer per connection rather than per command: it
    # fires when the oldest command outstanding would be ``readTimeout`` old,
    # and then, as txredisapi did, fails everything outstanding and aborts the
    # connection, so no later reply can be taken for another command's.

    @property
    def pendingCount(self):
        return len(self._pending)

    def execute_command(self, *args, **kwargs):
        if not self.connected:
            raise txredisapi.ConnectionError("Not connected")
        self.transport.write(self._build_command(*args))
        d = defer.Deferred()
        self._pending.append((d, self.clock.seconds()))
        if self._watchdog is None and self.readTimeout:
            self._watchdog = self.callLater(self.readTimeout, self._checkReplies)
        return d

    def replyReceived(self, reply):
        if not self._pending:
            log.warn("Valkey sent a reply nobody asked for: {reply!r}", reply=reply)
            return
        d, _ = self._pending.popleft()
        if d.called:  # cancelled by its caller
            return
        if isinstance(reply, Exception):
            d.errback(reply)
        else:
            d.callback(reply)

    def _checkReplies(self):
        self._watchdog = None
        if not self._pending:
            return
        due = self._pending[0][1] + self.readTimeout
        now = self.clock.seconds()
        if now < due:
            self._watchdog = self.callLater(due - now, self._checkReplies)
            return
        self._failPending(txredisapi.TimeoutError(
            "Not received Redis response in %s seconds" % (self.readTimeout,)))
        if self.transport is not None:
            self.transport.abortConnection()

    def _failPending(self, error):
        pending, self._pending = self._pending, collections.deque()
        for d, _ in pending:
            if not d.called:
                d.errback(error)

    # txredisapi's LineReceiver hands the bytes that follow every bulk string
    # to the *next reactor iteration* (setLineMode -> callLater(0,
    # dataReceived)) to avoid recursing once per bulk string.  That costs a
    # reactor turn per bulk string (a CLUSTER SLOTS reply has dozens) and
    # leaves delayed calls behind when a connection is closed.  Instead, queue
    # the bytes and parse them in a loop within the same dataReceived call:
    # same order, no recursion, no reactor turns.

    def setLineMode(self, extra=b""):
        self.line_mode = 1
        if extra:
            self._unparsed.append(extra)

    def dataReceived(self, data, unpause=False):
        super().dataReceived(data)
        while self._unparsed:
            super().dataReceived(self._unparsed.pop(0))

    def _build_command(self, *args, **kwargs):
        """RESP-encode one command.

        Same encoding as txredisapi's (UTF-8 text, bytes as is, numbers as
        decimal text) in one pass; its version costs ~0.3 ms for the append
        script's sixteen arguments, which was the largest single CPU cost
        per append in ``bench/bench_valkey.py``.
        """
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            if isinstance(arg, str):
                arg = arg.encode("utf-8")
            elif isinstance(arg, float):
                arg = format(arg, "f").encode("ascii")
            elif not isinstance(arg, (bytes, bytearray)):
                arg = str(arg).encode("utf-8")
            parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        return b"".join(parts)

    def connectionMade(self):
        # Not the base connectionMade: its AUTH/SELECT dance calls
        # factory.stopTrying() on failure.  Node does AUTH itself.
        self.connected = 1
        self._ready = True
        if not self.tls:
            self.ready.callback(self)

    def handshakeCompleted(self):
        if not self.ready.called:
            self.ready.callback(self)

    def connectionLost(self, why):
        self.lostReason = why
        super().connectionLost(why)
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        self._failPending(txredisapi.ConnectionError("Lost connection"))
        if not self.ready.called:
            self.ready.errback(why)
        self.closed.callback(None)


class _ProtocolFactory(Factory):
    noisy = False  # one factory per connection: no "Starting factory" lines

    def __init__(self, clock, replyTimeout, tls):
        self.clock, self.replyTimeout, self.tls = clock, replyTimeout, tls

    def buildProtocol(self, addr):
        p = NodeProtocol(self.clock, self.replyTimeout, self.tls)
        p.factory = self
        return p


def _tlsReason(failure):
    """Why a TLS handshake failed (OpenSSL's reasons, or the host name
    mismatch service_identity found), or None if it was not TLS."""
    if failure is None:
        return None
    if failure.check(VerificationError):
        return "the certificate does not match the expected name: %s" % (failure.value,)
    if not failure.check(SSL.Error):
        return None
    reasons = [r[-1] for r in (failure.value.args[0] if failure.value.args else [])
               if isinstance(r, tuple)]
    return ", ".join(reasons) or str(failure.value)


class Connection:
    """One established, authenticated connection to ``address``."""

    def __init__(self, protocol, address, readTimeout):
        self.protocol = protocol
        self.address = address
        self.readTimeout = readTimeout
        self._waitRunning = False
        self._waitQueue = []

    @property
    def usable(self):
        return self.protocol.lostReason is None and self.protocol.connected

    @property
    def pending(self):
        return self.protocol.pendingCount

    def send(self, *args):
        """Write one command now; Deferred firing its reply.

        Error replies fail with :class:`ServerError`; a lost connection or a
        reply slower than ``readTimeout`` with :class:`ConnectionLost` (the
        connection is then closed by txredisapi, so later pipelined replies
        cannot be confused).  ``WAIT`` goes through :meth:`_wait`.
        """
        if args and args[0] == "WAIT":
            return self._wait(args)
        return self._send(args)

    def _wait(self, args):
        """``WAIT`` blocks the connection until it returns, so WAITs pipelined one
        behind another would each start when the one before ended: with a
        replica lagging, the k-th would answer after k timeouts, past
        ``readTimeout`` (found by ``bench/drills/failover.py``).  A WAIT covers
        every write sent on its connection before it, so at most one runs at a
        time and the callers that come meanwhile share the next one, sent when
        it returns: each caller's answer comes within about two WAIT timeouts."""
        d = defer.Deferred()
        self._waitQueue.append((args, d))
        if not self._waitRunning:
            self._nextWait()
        return d

    def _nextWait(self):
        waiters, self._waitQueue = self._waitQueue, []
        if not waiters:
            self._waitRunning = False
            return
        self._waitRunning = True
        replicas = max(int(args[1]) for args, _ in waiters)
        sent = self._send(("WAIT", replicas) + tuple(waiters[0][0][2:]))
        sent.addBoth(self._waited, waiters)

    def _waited(self, result, waiters):
        self._nextWait()
        for _, d in waiters:
            d.errback(result) if isinstance(result, Failure) else d.callback(result)

    def _send(self, args):
        try:
            d = self.protocol.execute_command(*args)
        except txredisapi.ConnectionError as e:
            return defer.fail(self._lost(e))
        return d.addErrback(self._mapError)

    def _mapError(self, failure):
        if failure.check(txredisapi.ResponseError):
            raise ServerError(str(failure.value), self.address)
        if failure.check(txredisapi.TimeoutError):
            raise ConnectionLost("Valkey node %s sent no reply within %gs" % (
                formatAddress(self.address), self.readTimeout))
        if failure.check(txredisapi.ConnectionError):
            raise self._lost(failure.value)
        return failure

    def _lost(self, error):
        reason = self.protocol.lostReason
        detail = reason.getErrorMessage() if reason is not None else str(error)
        return ConnectionLost("connection to Valkey node %s lost: %s" % (
            formatAddress(self.address), detail))

    def abort(self):
        if self.protocol.transport is not None and self.protocol.lostReason is None:
            self.protocol.transport.abortConnection()
        return self.protocol.closed


class Node:
    """Up to ``size`` pipelined connections to one node, made on demand.

    ``credentials`` is a zero-argument callable returning a Deferred with the
    password (or None); it is called for every new connection, so a rotated
    password is used as soon as the old connections are gone.
    """

    def __init__(self, reactor, address, target, credentials, size=2, endpointFactory=None):
        self.reactor = reactor
        self.address = address
        self.target = target
        self.credentials = credentials
        self.size = size
        self._endpointFactory = endpointFactory or makeEndpoint
        self._connections = []
        self._connect = SingleFlight(self._newConnection)
        self._closed = False
        self._attempts = set()

    def __repr__(self):
        return "<Node %s %d connection(s)>" % (formatAddress(self.address), len(self._connections))

    @property
    def connected(self):
        """True if at least one usable connection is open."""
        return any(c.usable for c in self._connections)

    def ready(self):
        """The least busy usable connection now, or ``None`` (then use :meth:`acquire`).

        Like :meth:`acquire`, opens another connection in the background while
        below ``size``.
        """
        if self._closed:
            return None
        live = self._connections = [c for c in self._connections if c.usable]
        if not live:
            return None
        if len(live) < self.size and not self._connect.running:
            self._connect().addErrback(self._backgroundFailed)
        return live[0] if len(live) == 1 else min(live, key=lambda c: c.pending)

    def acquire(self):
        """A Deferred firing a usable :class:`Connection` (the least busy one).

        Opens another connection in the background while below ``size``.
        Fails with :class:`ConnectionLost`, :class:`ValkeyAuthError` or
        :class:`ValkeyTLSError` within ``connectTimeout`` when no connection
        can be made.
        """
        if self._closed:
            return defer.fail(ConnectionLost("Valkey node %s: client closed" % (
                formatAddress(self.address),)))
        conn = self.ready()
        return defer.succeed(conn) if conn is not None else self._connect()

    def _backgroundFailed(self, failure):
        log.info("extra connection to Valkey node {node} failed: {why}",
                 node=formatAddress(self.address), why=failure.getErrorMessage())

    def _newConnection(self):
        d = defer.ensureDeferred(self._open())
        self._attempts.add(d)
        d.addBoth(self._attemptDone, d)
        d.addTimeout(self.target.connectTimeout, self.reactor, onTimeoutCancel=self._timedOut)
        return d.addErrback(self._cancelled)

    def _cancelled(self, failure):
        failure.trap(defer.CancelledError)
        raise ConnectionLost("Valkey node %s: connection attempt abandoned (client closed)" % (
            formatAddress(self.address),))

    def _attemptDone(self, result, d):
        self._attempts.discard(d)
        return result

    def _timedOut(self, result, timeout):
        raise ConnectionLost("could not connect to Valkey node %s within %gs" % (
            formatAddress(self.address), timeout))

    async def _open(self):
        endpoint = self._endpointFactory(self.reactor, self.address, self.target)
        factory = _ProtocolFactory(self.reactor, self.target.readTimeout, self.target.tls)
        try:
            protocol = await endpoint.connect(factory)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise ConnectionLost("could not connect to Valkey node %s: %s" % (
                formatAddress(self.address), e))
        conn = Connection(protocol, self.address, self.target.readTimeout)
        try:
            await self._handshake(protocol)
            await self._authenticate(conn)
        except BaseException:
            conn.abort()
            raise
        if self._closed:
            conn.abort()
            raise ConnectionLost("Valkey node %s: client closed" % (formatAddress(self.address),))
        self._connections.append(conn)
        return conn

    async def _handshake(self, protocol):
        try:
            await protocol.ready
        except defer.CancelledError:
            raise
        except Exception:
            tls = _tlsReason(protocol.lostReason)
            if tls is not None:
                raise ValkeyTLSError(
                    "TLS handshake with Valkey node %s failed (%s): check that the CA "
                    "(caSecretRef) signed the server certificate and that the certificate "
                    "names %s (set serverName if nodes announce other addresses)" % (
                        formatAddress(self.address), tls,
                        self.target.serverName or self.address[0]))
            raise ConnectionLost("connection to Valkey node %s closed before it was ready: %s"
                                 % (formatAddress(self.address),
                                    protocol.lostReason.getErrorMessage()))

    async def _authenticate(self, conn):
        try:
            password = await self.credentials()
        except defer.CancelledError:
            raise
        except Exception as e:
            raise ValkeyAuthError("could not read the password for Valkey at %s from %s: %s" % (
                formatAddress(self.address), self.target.describeCredentials(), e)) from e
        if password is None:
            return
        args = ("AUTH", self.target.username, password) if self.target.username else (
            "AUTH", password)
        try:
            await conn.send(*args)
        except ServerError as e:
            if classify(e.message) in (AUTH, NOPERM) or "AUTH" in e.message:
                raise self.authError(e.message)
            raise

    def authError(self, reply):
        """The :class:`ValkeyAuthError` for a rejection ``reply``."""
        return ValkeyAuthError(
            "Valkey at %s rejected the credentials for user %s: %s; check %s" % (
                formatAddress(self.address), self.target.describeUser(), reply,
                self.target.describeCredentials()))

    def reset(self):
        """Close every connection (e.g. after an auth failure); the next
        :meth:`acquire` connects anew with fresh credentials."""
        conns, self._connections = self._connections, []
        return defer.DeferredList([c.abort() for c in conns])

    def close(self):
        """Close for good: connections, the attempt in progress, waiters."""
        self._closed = True
        for d in list(self._attempts):
            d.cancel()
        return self.reset()
