"""The stream publisher: :class:`ValkeyPublisher`, a Twisted ``Service``.

It implements :class:`~kibaship_dns01.interfaces.IStreamPublisher` and owns
one :class:`~kibaship_dns01.valkey.cluster.ClusterClient` per distinct
:class:`~kibaship_dns01.valkey.target.ValkeyTarget` (issuers may point at
different clusters), created on first use, closed when idle for
``idleTimeout`` and all closed by ``stopService``.  At most ``maxClients``
are kept: a target comes from an issuer's config, which tenants write, so
every distinct ``username`` or timeout would otherwise cost a client (about
140 KiB and a socket per node) for ``idleTimeout``; past the cap the least
recently used idle client is closed first (the fuzz drill of issue 12 found it).

``append`` is the interface method (fires the entry id); ``appendEvent``
fires an :class:`AppendResult` with the sequence number and whether the call
was a duplicate, which the solver logs.  With ``target.minReplicas > 0`` an
append only succeeds after ``WAIT`` saw that many replicas acknowledge it
(within half of ``readTimeout``); otherwise it fails with
:class:`~kibaship_dns01.valkey.errors.ValkeyDurabilityError` and the caller
may retry - the same idempotency key never appends twice.
"""
import attr
from twisted.application import service
from twisted.internet import defer, task
from zope.interface import implementer

from kibaship_dns01 import metrics
from kibaship_dns01.interfaces import IStreamPublisher
from kibaship_dns01.valkey.cluster import ClusterClient
from kibaship_dns01.valkey.errors import ValkeyDurabilityError, ValkeyError, ValkeyUnavailable
from kibaship_dns01.valkey.script import (
    DUPLICATE, MISSING, SKIPPED, probeArguments, runAppend, runProbe, scriptArguments, streamKey,
    validateAppend, validateProject)
from kibaship_dns01.valkey.target import formatAddress


@attr.s(frozen=True, auto_attribs=True)
class AppendResult:
    """What one idempotent append did."""

    entryId: str
    sequence: int
    #: True when the idempotency key was already recorded (nothing appended)
    duplicate: bool
    stream: str
    #: True when a ``require`` mark did not hold (nothing appended)
    skipped: bool = False


def _waitTimeoutMs(target):
    """WAIT's own bound: half the read timeout, so the WAIT reply (and any
    command pipelined behind it) still arrives before ``readTimeout``."""
    return max(1, int(target.readTimeout * 500))


def _appendOn(conn, keys, args, target, run=runAppend):
    """The operation run on the primary (it sends its first command at once); with
    ``minReplicas`` the ``WAIT`` is pipelined behind the script: one round trip."""
    if target.minReplicas <= 0:
        return run(conn, keys, args).addCallback(lambda reply: reply[:3])
    wait = ("WAIT", target.minReplicas, _waitTimeoutMs(target))
    return run(conn, keys, args, after=wait).addCallback(_durable, conn, keys, target)


def _durable(reply, conn, keys, target):
    entryId, sequence, status, acked = reply
    if int(acked) < target.minReplicas:
        raise ValkeyDurabilityError(
            "entry %s of %s reached %d of the %d required replicas of Valkey node %s "
            "within %dms; the primary may lose it if it fails now. Retrying is safe "
            "(idempotent); check the replicas' health or lower minReplicas" % (
                entryId, keys[0], int(acked), target.minReplicas,
                formatAddress(conn.address), _waitTimeoutMs(target)))
    return entryId, sequence, status


class _Entry:
    """A cluster client and its bookkeeping for idle eviction."""

    def __init__(self, client, now):
        self.client = client
        self.lastUsed = now
        self.inFlight = 0


@implementer(IStreamPublisher)
class ValkeyPublisher(service.Service):
    """See the module docstring."""

    name = "valkey-publisher"

    def __init__(self, reactor=None, poolSize=2, idleTimeout=600.0, clientFactory=None,
                 maxClients=32):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.idleTimeout = idleTimeout
        self.maxClients = maxClients
        self._clientFactory = clientFactory or (
            lambda target: ClusterClient(reactor, target, poolSize=poolSize))
        self._entries = {}
        self._reaper = None

    # --- Service ---------------------------------------------------------------

    def startService(self):
        super().startService()
        self._reaper = task.LoopingCall(self._closeIdle)
        self._reaper.clock = self.reactor
        self._reaper.start(max(1.0, self.idleTimeout / 4), now=False)

    def stopService(self):
        super().stopService()
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
        entries, self._entries = list(self._entries.values()), {}
        return defer.DeferredList([e.client.close() for e in entries]).addCallback(
            lambda _: None)

    def _closeIdle(self):
        cutoff = self.reactor.seconds() - self.idleTimeout
        for target, entry in list(self._entries.items()):
            if entry.inFlight == 0 and entry.lastUsed < cutoff:
                del self._entries[target]
                entry.client.close()

    # --- clients ---------------------------------------------------------------

    def clientFor(self, target):
        """The cluster client for ``target`` (created on first use)."""
        if not self.running:
            raise ValkeyUnavailable("the Valkey publisher is not running (daemon starting "
                                    "or stopping); retry shortly")
        entry = self._entries.get(target)
        if entry is None:
            self._makeRoom()
            entry = self._entries[target] = _Entry(
                self._clientFactory(target), self.reactor.seconds())
        # an equal target may carry a newer credentials callable
        entry.client.target = target
        return entry

    def _makeRoom(self):
        """Below ``maxClients`` again by closing the least recently used idle clients
        (clients with calls in flight stay: the cap may be exceeded while they run)."""
        idle = sorted((e.lastUsed, i, t) for i, (t, e) in enumerate(self._entries.items())
                      if e.inFlight == 0)
        for _, _, target in idle[:max(0, len(self._entries) - self.maxClients + 1)]:
            self._entries.pop(target).client.close()

    def _run(self, target, call):
        """Run ``call(client)`` counting it as in flight for idle eviction."""
        try:
            entry = self.clientFor(target)
        except ValkeyError as e:
            return defer.fail(e)
        entry.inFlight += 1

        def done(result):
            entry.inFlight -= 1
            entry.lastUsed = self.reactor.seconds()
            return result
        return call(entry.client).addBoth(done)

    # --- IStreamPublisher ------------------------------------------------------

    def append(self, target, projectUUID, fields, idempotencyKey, sequenceField=None):
        """Append once; Deferred firing the entry id (``str``)."""
        return self.appendEvent(target, projectUUID, fields, idempotencyKey,
                                sequenceField).addCallback(lambda r: r.entryId)

    def appendEvent(self, target, projectUUID, fields, idempotencyKey, sequenceField=None,
                    mark=None, window=None):
        """Append once; Deferred firing an :class:`AppendResult`.

        ``sequenceField`` names the field whose value contains
        :data:`~kibaship_dns01.valkey.script.SEQUENCE_PLACEHOLDER` (see
        :mod:`kibaship_dns01.valkey.script`); ``mark`` is a
        :class:`~kibaship_dns01.valkey.script.MarkOp`; ``window`` overrides
        ``target.idempotencyWindow`` (seconds).  Bad arguments fail the
        Deferred with ``ValueError``.
        """
        try:
            flat = validateAppend(projectUUID, idempotencyKey, fields, sequenceField)
            keys, args = scriptArguments(
                projectUUID, idempotencyKey, flat, window or target.idempotencyWindow,
                target.minReplicas > 0, sequenceField, mark)
        except ValueError as e:
            return defer.fail(e)
        started = self.reactor.seconds()
        d = self._run(target, lambda client: client.execute(
            keys[0], lambda conn: _appendOn(conn, keys, args, target)))
        d.addCallback(lambda r: AppendResult(r[0], r[1], r[2] == DUPLICATE,
                                             streamKey(projectUUID), skipped=r[2] == SKIPPED))
        return d.addBoth(self._countAppend, started)

    def confirm(self, target, projectUUID, idempotencyKey):
        """Is ``idempotencyKey`` still recorded?  An :class:`AppendResult` of the first
        append (``duplicate=True``, after the same ``WAIT`` an append makes), or ``None``
        when the record is gone and the caller must append in full."""
        try:
            validateProject(projectUUID)
            keys, args = probeArguments(projectUUID, idempotencyKey, target.minReplicas > 0)
        except ValueError as e:
            return defer.fail(e)
        started = self.reactor.seconds()
        d = self._run(target, lambda client: client.execute(
            keys[0], lambda conn: _appendOn(conn, keys, args, target, run=runProbe)))
        d.addCallback(lambda r: None if r[2] == MISSING else
                      AppendResult(r[0], r[1], True, streamKey(projectUUID)))
        # a confirmed retry counts as the duplicate append it stands for; a missing
        # record is counted by the append that follows
        return d.addBoth(lambda r: r if r is None else self._countAppend(r, started))

    def execute(self, target, key, op):
        """``op(connection)`` on the primary serving ``key`` of ``target``'s cluster,
        routed and retried as every append is (``op`` must be idempotent and write
        its first command at once); for the other keys the daemon keeps there
        (:mod:`kibaship_dns01.delegation.store`).  Failures are counted."""
        return self._run(target, lambda client: client.execute(key, op)).addErrback(
            self._countError)

    def readFields(self, target, projectUUID, key, fields):
        """``HMGET key fields`` on a key of ``projectUUID``'s hash tag.

        :return: Deferred firing a list of ``str`` or ``None`` (missing), one per field.
        """
        try:
            validateProject(projectUUID)
            if not key.startswith("{project:%s}:" % (projectUUID,)) or not fields:
                raise ValueError("readFields needs fields of a key of project %s, not %r"
                                 % (projectUUID, key))
        except ValueError as e:
            return defer.fail(e)
        d = self._run(target, lambda client: client.execute(
            key, lambda conn: conn.send("HMGET", key, *fields)))
        d.addCallback(lambda values: [None if v is None else
                                      v.decode() if isinstance(v, bytes) else str(v)
                                      for v in values])
        return d.addErrback(self._countError)

    def _countAppend(self, result, started):
        metrics.VALKEY_LATENCY.observe(self.reactor.seconds() - started)
        if isinstance(result, AppendResult):
            metrics.labelled(metrics.VALKEY_APPENDS, "duplicate" if result.duplicate else
                             "skipped" if result.skipped else "appended").inc()
        else:
            metrics.labelled(metrics.VALKEY_APPENDS, "failed").inc()
            self._countError(result)
        return result

    @staticmethod
    def _countError(failure):
        kind = failure.value.kind if isinstance(failure.value, ValkeyError) else "internal"
        metrics.VALKEY_ERRORS.labels(kind).inc()
        return failure

    def check(self, target):
        """PING a primary of ``target``'s cluster; Deferred firing ``None``."""
        return self._run(target, lambda client: client.ping()).addErrback(self._countError)
