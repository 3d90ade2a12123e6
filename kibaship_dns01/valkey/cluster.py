"""Cluster routing on top of per-node connections (SPEC §9).

:class:`ClusterClient` keeps the slot map (from ``CLUSTER SLOTS`` on any
reachable node or seed), sends each operation to the primary serving the
key's slot and reacts to what comes back:

``MOVED``
    the slot has a new owner: patch the map at once, refresh the whole map in
    the background (single-flight, at most one per ``minRefreshInterval``) and
    retry at the new owner without waiting.
``ASK``
    the slot is migrating and this key is already on the importing node: retry
    there once, with ``ASKING`` written immediately before the command on the
    same connection; the map is not changed.
``TRYAGAIN`` / ``CLUSTERDOWN`` / ``LOADING`` / ``MASTERDOWN`` / ``READONLY``
    topology in flux: back off, refresh (not for ``TRYAGAIN``), retry.  Note
    that an append to a slot being migrated always ends here: after ``ASK``
    the importing node refuses a multi-key script with a key it does not have
    (the new idempotency record) with ``TRYAGAIN``, so the append waits,
    within its bound, until ``CLUSTER SETSLOT ... NODE`` ends the migration.
connection refused / lost / no reply in time
    refresh (the node may have failed over) after a back-off, retry.
``WRONGPASS`` / ``NOAUTH``
    tell the caller to drop its cached credentials, close every connection,
    retry once with freshly read credentials; a second rejection is final.

Every operation is bounded twice: at most ``maxAttempts`` tries, and
``target.operationTimeout`` seconds in total (each try is cancelled when the
budget runs out).  Backoff doubles from ``backoffBase`` to ``backoffMax`` with
jitter so that many daemons do not retry in lockstep.

An operation is ``op(connection) -> Deferred``; it must write its first
command before returning (so an ``ASKING`` written just before applies to
it).  Every command an operation sends may be retried on another node, so
operations must be idempotent - the append script is.
"""
import random as _random

from twisted.internet import defer, task
from twisted.logger import Logger

from kibaship_dns01 import metrics
from kibaship_dns01.valkey import replies
from kibaship_dns01.valkey.errors import (
    ConnectionLost, ValkeyAuthError, ValkeyCommandError, ValkeyError, ValkeyUnavailable)
from kibaship_dns01.flight import SingleFlight
from kibaship_dns01.valkey.node import Node
from kibaship_dns01.valkey.replies import ServerError, SlotMap
from kibaship_dns01.valkey.slots import keySlot
from kibaship_dns01.valkey.target import REQUIRED_ACL_RULES, formatAddress

log = Logger()


class _DeadlineExceeded(Exception):
    """The operation's total time budget ran out."""


class _Asking:
    """A connection whose every command is preceded by ``ASKING``.

    ``ASKING`` only applies to the next command, so a retry inside the
    operation (``SCRIPT LOAD`` then ``EVALSHA`` after ``NOSCRIPT``) needs it
    again; both are written back to back, so nothing can come between.
    """

    def __init__(self, connection):
        self._connection = connection
        self.address = connection.address

    def send(self, *args):
        if args[0] != "WAIT":  # no key, and it may go out later (``Connection._wait``)
            self._connection.send("ASKING").addErrback(lambda f: None)
        return self._connection.send(*args)


class _Attempts:
    """The mutable state of one routed operation."""

    def __init__(self):
        self.count = 0
        self.backoffs = 0
        self.askTo = None
        self.authRetried = False
        self.refreshFirst = False
        self.lastError = None


class ClusterClient:
    """Routes operations for one :class:`~kibaship_dns01.valkey.target.ValkeyTarget`."""

    def __init__(self, reactor, target, nodeFactory=None, poolSize=2, maxAttempts=16,
                 backoffBase=0.05, backoffMax=1.0, minRefreshInterval=0.1, random=None):
        self.reactor = reactor
        #: replaced by the publisher with the latest equal target, so the
        #: newest credentials callable is the one used
        self.target = target
        self.maxAttempts = maxAttempts
        self.backoffBase = backoffBase
        self.backoffMax = backoffMax
        self.minRefreshInterval = minRefreshInterval
        self._random = random or _random.random
        self._nodeFactory = nodeFactory or (lambda address: Node(
            reactor, address, self.target, self._credentials, size=poolSize))
        self._map = SlotMap.empty()
        self._nodes = {}
        self._refresh = SingleFlight(self._refreshOnce)
        self._lastRefresh = None
        self._sleeps = set()
        self._closed = False

    # --- public ---------------------------------------------------------------

    @property
    def slotMap(self):
        return self._map

    def execute(self, key, op):
        """Run ``op`` on the primary serving ``key`` (see the module docstring).

        When the slot's primary is known and connected (nearly always), ``op``
        runs at once on that connection; only if it fails does the operation
        enter the retry loop, with that failure as its first attempt.  The
        first try is bounded by the command's read timeout, the whole by
        ``operationTimeout`` from the start.
        """
        slot = keySlot(key)
        conn = self._connectedPrimary(slot)
        if conn is None:
            return defer.ensureDeferred(self._execute(slot, op))
        started = self.reactor.seconds()
        try:
            d = op(conn)
        except Exception:
            d = defer.fail()
        return d.addErrback(lambda failure: defer.ensureDeferred(
            self._execute(slot, op, failure.value, started)))

    def _connectedPrimary(self, slot):
        if self._closed:
            return None
        address = self._map.primaryFor(slot)
        node = self._nodes.get(address) if address is not None else None
        return node.ready() if node is not None else None

    def executeOnSlot(self, slot, op):
        return defer.ensureDeferred(self._execute(slot, op))

    def ping(self):
        """PING the primary of slot 0: cheap proof that the cluster answers."""
        return self.executeOnSlot(0, lambda conn: conn.send("PING")).addCallback(
            lambda _: None)

    def node(self, address):
        """The (possibly new) node object for ``address``."""
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = self._nodeFactory(address)
        return node

    def close(self):
        """Stop everything: sleeps, the refresh, every node's connections."""
        self._closed = True
        for d in list(self._sleeps):
            d.cancel()
        self._refresh.cancel()
        nodes, self._nodes = list(self._nodes.values()), {}
        return defer.DeferredList([n.close() for n in nodes])

    # --- the retry loop ---------------------------------------------------------

    async def _execute(self, slot, op, firstError=None, started=None):
        """The retry loop; ``firstError`` is how the fast path's try failed."""
        started = self.reactor.seconds() if started is None else started
        deadline = started + self.target.operationTimeout
        state = _Attempts()
        error, state.count = firstError, (0 if firstError is None else 1)
        while True:
            if error is None:
                self._checkOpen()
                state.count += 1
                try:
                    return await self._withDeadline(self._try(slot, op, state), deadline)
                except _DeadlineExceeded:
                    raise self._gaveUp(state, "the time budget ran out")
                except Exception as e:
                    error = e
            self._checkOpen()   # closing cancels whatever was in progress
            delay = await self._onFailure(error, slot, state)
            error = None
            self._checkOpen()
            if state.count >= self.maxAttempts:
                raise self._gaveUp(state, "%d attempts failed" % (state.count,))
            if self.reactor.seconds() + delay >= deadline:
                raise self._gaveUp(state, "the time budget ran out")
            if delay:
                await self._sleep(delay)

    def _withDeadline(self, coroutine, deadline):
        remaining = deadline - self.reactor.seconds()
        if remaining <= 0:
            coroutine.close()   # never started: nothing was sent
            return defer.fail(_DeadlineExceeded())
        d = defer.ensureDeferred(coroutine)

        def exceeded(result, timeout):
            raise _DeadlineExceeded()
        return d.addTimeout(remaining, self.reactor, onTimeoutCancel=exceeded)

    async def _try(self, slot, op, state):
        if state.refreshFirst:
            state.refreshFirst = False
            await self._refresh()
        askTo, state.askTo = state.askTo, None
        address = askTo or await self._primaryFor(slot)
        conn = await self.node(address).acquire()
        return await op(_Asking(conn) if askTo is not None else conn)

    async def _primaryFor(self, slot):
        address = self._map.primaryFor(slot)
        if address is None:
            await self._refresh()
            address = self._map.primaryFor(slot)
        if address is None:
            raise ConnectionLost("slot %d is not served by any node of Valkey cluster %s" % (
                slot, self.target.describe()))
        return address

    async def _onFailure(self, error, slot, state):
        """Decide what to do after a failed try: return the delay before the
        next one, or raise the final error."""
        state.lastError = error
        if isinstance(error, ServerError):
            return await self._onServerError(error, slot, state)
        if isinstance(error, ValkeyAuthError):
            return await self._retryAuth(error, state)
        if isinstance(error, ConnectionLost):
            metrics.VALKEY_RETRIES.labels("connection").inc()
            state.refreshFirst = True
            return self._backoff(state)
        raise error

    async def _onServerError(self, error, slot, state):
        kind = replies.classify(error.message)
        if kind in (replies.MOVED, replies.ASK):
            return self._redirect(error, slot, state)
        if kind == replies.TRYAGAIN:
            metrics.VALKEY_RETRIES.labels("tryagain").inc()
            return self._backoff(state)
        if kind == replies.CLUSTERDOWN:
            metrics.VALKEY_RETRIES.labels("clusterdown").inc()
            state.refreshFirst = True
            return self._backoff(state)
        if kind == replies.AUTH:
            return await self._retryAuth(self.node(error.address).authError(error.message), state)
        if kind == replies.NOPERM:
            raise self._permissionError(error)
        raise ValkeyCommandError("Valkey node %s refused the command: %s" % (
            formatAddress(error.address), error.message))

    def _redirect(self, error, slot, state):
        redirect = replies.parseRedirect(error.message, error.address)
        if redirect is None:
            raise ValkeyCommandError("Valkey node %s sent a malformed redirect: %s" % (
                formatAddress(error.address), error.message))
        address = replies.rewriteHost(
            redirect.address, error.address, self.target.announcedAddressPolicy)
        metrics.VALKEY_REDIRECTS.labels(redirect.kind).inc()
        if redirect.kind == replies.MOVED:
            self._map = self._map.withSlot(redirect.slot, address)
            self._refreshSoon()
        else:
            state.askTo = address
        return 0

    async def _retryAuth(self, error, state):
        if state.authRetried:
            raise error
        state.authRetried = True
        metrics.VALKEY_RETRIES.labels("auth").inc()
        invalidate = self.target.invalidateCredentials
        if invalidate is not None:
            await defer.maybeDeferred(invalidate)
        await defer.DeferredList([n.reset() for n in list(self._nodes.values())])
        return 0

    def _permissionError(self, error):
        return ValkeyAuthError(
            "Valkey user %s at %s lacks a permission: %s; grant it the ACL rules %s" % (
                self.target.describeUser(), formatAddress(error.address), error.message,
                REQUIRED_ACL_RULES))

    def _backoff(self, state):
        state.backoffs += 1
        delay = min(self.backoffMax, self.backoffBase * 2 ** (state.backoffs - 1))
        return delay * (0.5 + self._random() / 2)

    def _sleep(self, delay):
        d = task.deferLater(self.reactor, delay, lambda: None)
        self._sleeps.add(d)
        return d.addBoth(self._slept, d)

    def _slept(self, result, d):
        self._sleeps.discard(d)
        self._checkOpen()
        return result

    def _checkOpen(self):
        if self._closed:
            raise ValkeyUnavailable("the Valkey client for %s was closed (daemon stopping)" % (
                self.target.describe(),))

    def _gaveUp(self, state, why):
        last = state.lastError
        detail = str(last) if last is not None else "no node answered"
        if isinstance(last, ValkeyError) and not isinstance(
                last, (ConnectionLost, ValkeyUnavailable)):
            return last
        return ValkeyUnavailable(
            "could not reach Valkey cluster at %s within %gs (%s, %d attempt(s)): %s" % (
                self.target.describe(), self.target.operationTimeout, why, state.count, detail))

    # --- the slot map -----------------------------------------------------------

    def _credentials(self):
        return defer.maybeDeferred(self.target.credentials)

    def _refreshSoon(self):
        """Background refresh after a MOVED, unless one is running or recent."""
        if self._refresh.running or self._closed:
            return
        if self._lastRefresh is not None and (
                self.reactor.seconds() - self._lastRefresh < self.minRefreshInterval):
            return
        self._refresh().addErrback(self._backgroundRefreshFailed)

    def _backgroundRefreshFailed(self, failure):
        if not failure.check(defer.CancelledError):
            log.info("Valkey slot map refresh for {cluster} failed: {why}",
                     cluster=self.target.describe(), why=failure.getErrorMessage())

    def _candidates(self):
        """Where to read the map: connected nodes, other known nodes, seeds."""
        known = list(self._map.primaryAddresses()) + sorted(self._map.nodes)
        connected = [a for a in known if a in self._nodes and self._nodes[a].connected]
        ordered = connected + known + list(self.target.seedAddresses)
        return list(dict.fromkeys(ordered))

    async def _refreshOnce(self):
        errors = []
        for address in self._candidates():
            try:
                conn = await self.node(address).acquire()
                reply = await conn.send("CLUSTER", "SLOTS")
            except (ValkeyError, ServerError) as e:
                errors.append(e)
                continue
            newMap = SlotMap.fromClusterSlots(
                reply, address, self.target.announcedAddressPolicy)
            if not newMap.primaryAddresses():
                errors.append(ConnectionLost("Valkey node %s serves no slots yet" % (
                    formatAddress(address),)))
                continue
            self._install(newMap)
            return newMap
        raise self._refreshError(errors)

    def _install(self, newMap):
        self._map = newMap
        self._lastRefresh = self.reactor.seconds()
        for address in [a for a in self._nodes if a not in newMap.nodes]:
            self._nodes.pop(address).close()

    def _refreshError(self, errors):
        """The most useful error among the failed map reads."""
        for e in errors:
            if isinstance(e, ServerError):
                kind = replies.classify(e.message)
                if kind == replies.AUTH:
                    return self.node(e.address).authError(e.message)
                if kind == replies.NOPERM:
                    return self._permissionError(e)
        for e in errors:
            if isinstance(e, ValkeyError) and not isinstance(e, ConnectionLost):
                return e
        for e in errors:
            if isinstance(e, ServerError) and replies.classify(e.message) == replies.OTHER:
                return ValkeyCommandError(
                    "Valkey at %s cannot serve as a cluster: CLUSTER SLOTS answered %s "
                    "(is cluster mode enabled?)" % (formatAddress(e.address), e.message))
        return ConnectionLost("no node of Valkey cluster %s answered CLUSTER SLOTS: %s" % (
            self.target.describe(), "; ".join(str(e) for e in errors[:4]) or "no candidates"))
