"""Present and CleanUp: config -> resolve project -> build event -> append (SPEC §2, §7, §8).

Failure policy, because cert-manager retries Present until it succeeds and a
failing CleanUp keeps the Challenge's finalizer:

* Present fails (``success:false`` with a message naming what to fix) on any
  error; retries append nothing twice (idempotency key = challenge + operation).
* CleanUp fails only for transient trouble worth retrying (API server or
  Valkey unreachable) once the project is known.  When the project can no
  longer be determined (objects gone, labels removed, config now invalid) it
  logs, counts and reports success: there is no stream left to tell.
"""
import datetime

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from kibaship_dns01 import metrics
from kibaship_dns01.challenge import PRESENT, SolverError
from kibaship_dns01.config import ConfigError, Defaults, parseIssuerConfig
from kibaship_dns01.credentials import SecretError
from kibaship_dns01.delegation.offer import Ineligible
from kibaship_dns01.events import (
    SEQUENCE_FIELD, buildEvent, idempotencyKeyOf, presentMark, requestChallengeID, withSequence)
from kibaship_dns01.interfaces import ISolver
from kibaship_dns01.memo import BoundedMemo
from kibaship_dns01.names import challengeFQDN
from kibaship_dns01.resolve import ResolutionError
from kibaship_dns01.valkey import streamKey
from kibaship_dns01.valkey.errors import ValkeyError
from kibaship_dns01.valkey.target import ValkeyTarget, parseAddress

log = Logger()


def _serverName(addr):
    host, _ = parseAddress(addr)
    return None if host.replace(".", "").isdigit() or ":" in host else host


#: one append (retries and redirects included) must end well inside the site's
#: 50 s deadline, yet ride out a failover (the publisher's 10 s default)
MIN_OPERATION_BUDGET = 10.0
MAX_OPERATION_BUDGET = 40.0


def _operationBudget(connectTimeout, readTimeout):
    """Room for a connect, a command and one retry of each, within the bounds above."""
    return min(MAX_OPERATION_BUDGET,
               max(MIN_OPERATION_BUDGET, 2 * (connectTimeout + readTimeout)))


class TargetFactory:
    """Turns :class:`~kibaship_dns01.config.ValkeySettings` into a ``ValkeyTarget``.

    The password is not read here: the target carries a provider that the
    publisher calls whenever it (re)connects, and an invalidation hook it
    calls when Valkey rejects the password, so rotation needs no restart.
    """

    def __init__(self, secrets, idempotencyWindow=86400.0):
        self._secrets = secrets
        self._window = idempotencyWindow
        self._made = BoundedMemo()

    async def target(self, settings):
        """The target for ``settings``; fails with ``SecretError`` when a Secret it
        names cannot be read (checked now, so the failure is a Secret error the
        solver can judge, not a Valkey connection error later)."""
        ref = settings.passwordSecret
        caPEM = await self._secrets.read(settings.caSecret) if settings.caSecret else None
        kw = {}
        if ref is not None:
            await self._secrets.readText(ref)  # cached: the connection reads it again cheaply
            kw = dict(credentials=lambda: self._secrets.readText(ref),
                      invalidateCredentials=lambda: self._secrets.invalidate(ref),
                      credentialsSource=ref.describe())
        made = self._made.get((settings, caPEM))
        if made is not None:  # the same target: one validation, one identity for the pool
            return made
        readTimeout = settings.readTimeout + settings.writeTimeout
        return self._made.put((settings, caPEM), ValkeyTarget(
            seeds=(settings.addr,), username=settings.username, tls=settings.tls, caPEM=caPEM,
            serverName=_serverName(settings.addr) if settings.tls else None,
            connectTimeout=settings.connectTimeout, readTimeout=readTimeout,
            operationTimeout=_operationBudget(settings.connectTimeout, readTimeout),
            minReplicas=settings.minReplicas, idempotencyWindow=self._window, **kw))


#: resolution failures a CleanUp retries although they are not transient: the
#: objects exist but the daemon may not read them, which an operator fixes (RBAC)
_RETRY_CLEANUP = frozenset({"forbidden"})


class _Unresolved(Exception):
    """CleanUp without a project: finish successfully, but say why in the log."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message


@implementer(ISolver)
class Solver:
    """The real solver: publishes the challenge's DNS instructions to the project stream."""

    def __init__(self, resolver, publisher, targets, clock, defaults=Defaults(), dryRun=False,
                 markSeconds=None, seenConfigs=None, delegation=None):
        """:param markSeconds: with progress events on, a Present also writes the
        Certificate's mark (kept this long) that they read; ``None``: no mark.
        :param seenConfigs: a :class:`~kibaship_dns01.config.SeenIssuerConfigs`
        told every valid issuer config a request carried.
        :param delegation: a :class:`~kibaship_dns01.delegation.offer.DelegationOffer`
        when ``--delegation-zone`` is set: Presents then also serve their key at the
        project's delegation name (before they are answered) and offer its CNAME."""
        self._offer = delegation
        self._markSeconds = markSeconds
        self._seenConfigs = seenConfigs
        self._parsed = BoundedMemo()
        #: idempotency keys this process appended (or found appended): their retries
        #: are confirmed with a probe instead of a whole append (see ``_publish``)
        self._appended = BoundedMemo(size=16384)
        self._resolver = resolver
        self._publisher = publisher
        self._targets = targets
        self._clock = clock
        self._defaults = defaults
        self._dryRun = dryRun

    def present(self, request):
        return defer.ensureDeferred(self._solve(request))

    def cleanUp(self, request):
        return defer.ensureDeferred(self._solve(request))

    async def _solve(self, request):
        started = self._clock.seconds()
        record = {"action": request.action, "fqdn": request.resolvedFQDN,
                  "dns_name": request.dnsName, "resource_namespace": request.resourceNamespace}
        try:
            outcome = await self._publish(request, record)
        except _Unresolved as e:
            outcome = "unresolved"
            record.update(reason=e.reason, detail=e.message)
        except SolverError as e:
            self._decided(request, record, "failure", started, reason=e.reason, error=e.message)
            raise
        self._decided(request, record, outcome, started)

    def _decided(self, request, record, outcome, started, **extra):
        duration = self._clock.seconds() - started
        metrics.labelled(metrics.SOLVER_REQUESTS, request.action, outcome).inc()
        metrics.labelled(metrics.SOLVER_LATENCY, request.action).observe(duration)
        record.update(extra, outcome=outcome, duration_ms=round(duration * 1000, 1))
        level = log.warn if outcome == "failure" else log.info
        level("{action} {fqdn}: {outcome}", log_kind="challenge_decision", **record)

    async def _publish(self, request, record):
        cleanup = request.action != PRESENT
        config = self._config(request, cleanup)
        context = await self._resolve(request, config, cleanup)
        self._checkRecordName(request, context)
        cid = requestChallengeID(request, context)
        stream = streamKey(context.projectUUID)
        record.update(challenge_id=cid, project_uuid=context.projectUUID, stream=stream,
                      certificate=f"{context.certificateNamespace}/{context.certificateName}")
        key = idempotencyKeyOf(cid, request.operation)
        delegation = self._delegation(request, context, record, cleanup)
        retry = not self._dryRun and self._appended.get(key)
        active = await self._serve(request, delegation, cleanup, check=not retry)
        result = None
        if retry:
            # a retry of what this process appended: ask Valkey whether the record
            # still stands before building the whole event again
            result = await self._valkey(request, config, stream, cleanup, lambda target: (
                self._publisher.confirm(target, context.projectUUID, key)))
        if result is None:
            offered = None
            if delegation is not None and not cleanup:
                if retry:  # the record was lost: this append is a first one again
                    active = await self._offer.isActive(delegation)
                offered = delegation.asPayload(active)
                record.update(delegation_active=active)
            now = self._now()
            event = buildEvent(request, context, config, now, delegation=offered)
            record.update(event_id=event.eventID)
            if self._dryRun:
                record.update(event=withSequence(event.fields, 0))
                return "dry_run"
            mark = (presentMark(event, context, now, self._markSeconds)
                    if self._markSeconds and not cleanup else None)
            result = await self._valkey(request, config, stream, cleanup, lambda target: (
                self._publisher.appendEvent(
                    target, context.projectUUID, event.fields, event.idempotencyKey,
                    sequenceField=SEQUENCE_FIELD, mark=mark)))
            self._appended.put(key, True)
        record.update(entry_id=result.entryId, sequence=result.sequence,
                      duplicate=result.duplicate)
        return "success"

    def _config(self, request, cleanup):
        """The parsed issuer config; an issuer sends the same config on every request,
        so a parse is remembered by its text (a miss costs a parse, never a wrong answer)."""
        key = (repr(request.config), request.resourceNamespace)
        config = self._parsed.get(key)
        if config is not None:
            return config
        try:
            config = parseIssuerConfig(request.config, request.resourceNamespace, self._defaults)
        except ConfigError as e:
            if cleanup:
                raise _Unresolved("config", str(e))
            raise SolverError(f"invalid issuer webhook config: {e}", reason="config")
        if self._seenConfigs is not None:
            # once per remembered parse: a hit was added within the last 256 parses,
            # well inside SeenIssuerConfigs' larger bound
            self._seenConfigs.add(request.config, request.resourceNamespace)
        return self._parsed.put(key, config)

    async def _resolve(self, request, config, cleanup):
        try:
            return await self._resolver.resolve(request, config.defaultProjectUUID)
        except ResolutionError as e:
            if cleanup and not (e.transient or e.reason in _RETRY_CLEANUP):
                raise _Unresolved(e.reason, e.message)
            raise SolverError(e.message, reason=e.reason)

    @staticmethod
    def _checkRecordName(request, context):
        """The record the event will show a person must be the one cert-manager checks.

        Without ``cnameStrategy: Follow`` cert-manager always presents
        ``_acme-challenge.<dnsName>.`` (``util.DNS01LookupFQDN``), so another
        ``resolvedFQDN`` did not come from it; with Follow any name may be the
        end of the user's CNAME chain, and the event says ``delegated``.
        """
        if request.delegated and not context.followsCNAME:
            raise SolverError(
                "request.resolvedFQDN %s is not %s. although Challenge %s/%s does not follow "
                "CNAMEs (its solver has no cnameStrategy: Follow); cert-manager never sends "
                "such a name, so nothing was published" % (
                    request.resolvedFQDN, challengeFQDN(request.dnsName),
                    context.challengeNamespace, context.challengeName), reason="fqdn_mismatch")

    def _delegation(self, request, context, record, cleanup):
        """The challenge's :class:`~kibaship_dns01.delegation.names.Delegation`, or ``None``
        (delegation off, or not offered: the reason goes to the log line).

        A ``resolvedFQDN`` inside the delegation zone (cert-manager followed the
        user's CNAME there) must be this project's own name: the key is only ever
        served there, so a Present for another name would wait forever.
        """
        if self._offer is None:
            return None
        delegation = self._offer.delegationFor(context, request.dnsName)
        if isinstance(delegation, Ineligible):
            record.update(delegation_skipped=delegation.reason)
            inZone = self._offer.zoneName(request.resolvedFQDN)
            if inZone and not cleanup:
                raise SolverError(
                    "request.resolvedFQDN %s lies in the delegation zone %s, but %s; only "
                    "eligible certificates have keys served there" % (
                        request.resolvedFQDN, self._offer.zone, delegation.message),
                    reason="delegation_ineligible")
            return None
        foreign = self._offer.foreignName(request.resolvedFQDN, delegation)
        if foreign and not cleanup:
            raise SolverError(
                "%s is a CNAME to %s, which is not the delegation name of project %s: this "
                "project's keys are served only at %s. If this project owns %s, point the "
                "CNAME at %s; nothing was published" % (
                    delegation.name, foreign, context.projectUUID, delegation.value,
                    request.dnsName, delegation.value), reason="delegation_foreign")
        record.update(delegation=delegation.value)
        return delegation

    async def _serve(self, request, delegation, cleanup, check):
        """Store (Present) or withdraw (CleanUp) the key at ``delegation``'s label, before
        the event is appended, so a Present's 201 means every replica serves it.

        :param check: ask, meanwhile, whether the user's CNAME is in place.
        :return: the check's answer (``True``/``False``/``None``); ``None`` unchecked.
        """
        if delegation is None or self._dryRun:
            return None
        active = self._offer.isActive(delegation) if check and not cleanup else None
        try:
            if cleanup:
                await self._offer.withdraw(delegation, request.key)
            else:
                await self._offer.serve(delegation, request.key)
        except (ValkeyError, SecretError) as e:
            message = getattr(e, "message", None) or str(e)
            raise SolverError(
                "could not %s the key served at %s (delegated renewals) on the daemon's "
                "Valkey: %s; cert-manager will retry" % (
                    "withdraw" if cleanup else "store", delegation.value, message),
                reason="delegation_store")
        return (await active) if active is not None else None

    async def _valkey(self, request, config, stream, cleanup, call):
        """``call(target)`` (an append or a confirmation), its failures judged by policy."""
        try:
            target = await self._targets.target(config.valkey)
            return await call(target)
        except SecretError as e:
            if cleanup and not e.transient:
                raise _Unresolved("secret", e.message)
            raise
        except ValkeyError as e:
            raise SolverError(
                f"could not append the {request.operation} event for {request.resolvedFQDN} "
                f"to Valkey stream {stream}: {e}; cert-manager will retry", reason="valkey")

    def _now(self):
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.timezone.utc)
