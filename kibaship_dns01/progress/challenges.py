"""The Challenge follower: a ``status`` event per Challenge transition.

It listens to the resolver's Challenge cache (every replica has one, so every
replica follows every Challenge) and, for Challenges of this server's webhook
group and solver, turns each change of ``status.state`` or of the
:mod:`~.phases` phase into one ``status`` event:

1. classify ``state`` + ``reason``; nothing is said before cert-manager
   marks the Challenge ``presented`` (our Present succeeded) unless it
   reached a final state;
2. resolve its project: the owner chain from the resolver's chain cache, or
   walked once (:meth:`ChallengeResolver.chainOf`), the issuer config from the
   Challenge's own ``spec.solver.dns01.webhook.config`` parsed as the solver
   does (``resourceNamespace``: the Challenge's namespace for an Issuer,
   ``--cluster-resource-namespace`` for a ClusterIssuer, as cert-manager does);
3. read the Present's mark (:func:`~kibaship_dns01.events.presentMark`): the
   challenge id and record the user was shown.  No mark, no event: the
   frontend never heard of the challenge (its Present failed, or it predates
   progress events);
4. append with the key ``<challenge_id>:status:<state>:<phase>``: the replica
   that lands first wins, the other's append is a duplicate.

So each (state, phase) of a challenge lands at most once within the progress
window.  With ``refreshInterval`` set, a challenge that stays in a phase that
is not final gets a reminder every interval since cert-manager last wrote its
status (numbered, key ``...:reminder:<n>``, at most ``maxReminders``).
"""
import datetime
import json

from twisted.internet import defer, task
from twisted.logger import Logger

from kibaship_dns01 import metrics
from kibaship_dns01.config import ConfigError, parseIssuerConfig
from kibaship_dns01.credentials import SecretError
from kibaship_dns01.events import (
    DELEGATION_ACTIVE, SEQUENCE_FIELD, STATUS, buildDelegationActiveEvent, buildStatusEvent,
    markChallengeField)
from kibaship_dns01.memo import BoundedMemo
from kibaship_dns01.progress import phases
from kibaship_dns01.progress.jobs import KeyedJobs
from kibaship_dns01.resolve import ResolutionError
from kibaship_dns01.resolve.challenges import _get, describe
from kibaship_dns01.valkey.errors import ValkeyError
from kibaship_dns01.valkey.script import markKey

log = Logger()

MAX_REMINDERS = 24


def isTransient(failure):
    """Worth retrying: API or Valkey trouble, not a wrong label or config."""
    return bool(getattr(failure.value, "transient", False)) or failure.check(
        ValkeyError, defer.TimeoutError) is not None


def parseTime(text):
    """Seconds since the epoch of a Kubernetes timestamp, or ``None``."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def utcNow(clock):
    return datetime.datetime.fromtimestamp(clock.seconds(), datetime.timezone.utc)


class ChallengeFollower:
    """See the module docstring.

    :param resolver: the :class:`~kibaship_dns01.resolve.ChallengeResolver`
        (its cache is followed, its chains reused).
    :param targets: the solver's ``TargetFactory`` (ValkeySettings -> target).
    :param book: the :class:`~.targets.TargetBook` told which Valkey each
        Certificate's issuer uses.
    :param notes: :class:`~.targets.Notes` for one-line explanations.
    """

    def __init__(self, resolver, publisher, targets, clock, book, notes, *, defaults,
                 seenConfigs, clusterResourceNamespace, window, refreshInterval=0.0,
                 maxReminders=MAX_REMINDERS, limit=8, checker=None):
        """:param checker: an ``ICNAMEChecker`` when delegated renewals are on: at each
        transition of a challenge whose Present offered a delegation that was not yet
        in place, it asks again, and the first time the CNAME is seen a
        ``delegation_active`` event says so."""
        self._checker = checker
        #: delegation names seen in place (or announced) by this process
        self._active = BoundedMemo(size=16384)
        self._resolver = resolver
        self._informer = resolver.informer
        self._publisher = publisher
        self._targets = targets
        self._clock = clock
        self._book = book
        self._notes = notes
        self._defaults = defaults
        self._seenConfigs = seenConfigs
        self._clusterNamespace = clusterResourceNamespace
        self._window = window
        self._refreshInterval = refreshInterval
        self._maxReminders = maxReminders
        self._said = {}  # uid -> (namespace, name, state, phase, reminder) last published
        self._waiting = {}  # uid -> its Present's time, for those now waiting_for_dns
        metrics.CHALLENGES_WAITING_FOR_DNS.set_function(lambda: len(self._waiting))
        metrics.OLDEST_WAITING_FOR_DNS.set_function(self.oldestWaitingForDNS)
        self._jobs = KeyedJobs(clock, self._follow, "challenge progress", limit=limit,
                               isTransient=isTransient)
        self._loop = None
        self._informer.addListener(self._onEvent)

    # --- lifecycle -------------------------------------------------------------

    def start(self):
        if self._refreshInterval > 0:
            self._loop = task.LoopingCall(self._remind)
            self._loop.clock = self._clock
            self._loop.start(max(1.0, self._refreshInterval / 4), now=False)

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._jobs.stop()

    # --- watching --------------------------------------------------------------

    def busy(self):
        """Whether Challenges are still being looked at (the cache is syncing, or
        transitions are queued): what it learns about Certificates may come."""
        return not self._informer.hasSynced or len(self._jobs) > 0

    def ours(self, obj):
        webhook = _get(obj, "spec", "solver", "dns01", "webhook") or {}
        return (webhook.get("groupName") == self._resolver.groupName
                and webhook.get("solverName") == self._resolver.solverName)

    def _onEvent(self, kind, obj):
        uid = _get(obj, "metadata", "uid")
        if not uid:
            return
        if kind == "DELETED":
            self._said.pop(uid, None)
            self._waiting.pop(uid, None)
            self._notes.forget(uid)
            return
        if not self.ours(obj):
            webhook = _get(obj, "spec", "solver", "dns01", "webhook") or {}
            solver = ("webhook %s/%s" % (webhook.get("groupName"), webhook.get("solverName"))
                      if webhook else "another kind of solver")
            self._notes.once(uid, "other_solver", "{challenge} is solved by {solver}, not by"
                             " this daemon ({group}/{name}): no progress events for it",
                             challenge=describe("Challenge", obj), solver=solver,
                             group=self._resolver.groupName, name=self._resolver.solverName)
            return
        state, phase = self._classify(obj)
        if not (_get(obj, "status", "presented") or phase.final):
            return
        said = self._said.get(uid)
        if said is not None and said[2:4] == (state, phase.name):
            return
        self._jobs.submit(uid, (obj, None))

    @staticmethod
    def _classify(obj):
        state = (_get(obj, "status", "state") or "pending").lower()
        return state, phases.classify(state, _get(obj, "status", "reason"))

    def _remind(self):
        """Reminders for challenges still in a phase that is not final."""
        now = self._clock.seconds()
        for uid, (namespace, name, state, phase, reminder) in list(self._said.items()):
            obj = self._informer.get(namespace, name)
            if obj is None or self._jobs.pending(uid):
                continue
            current, now_phase = self._classify(obj)
            if now_phase.final or (current, now_phase.name) != (state, phase):
                continue
            since = parseTime(_get(obj, "status", "writtenAt")) or parseTime(
                _get(obj, "metadata", "creationTimestamp"))
            if since is None:
                continue
            n = int((now - since) // self._refreshInterval)
            if 1 <= n <= self._maxReminders and n > (reminder or 0):
                self._jobs.submit(uid, (obj, n))

    # --- publishing ------------------------------------------------------------

    def _resourceNamespace(self, obj):
        """As cert-manager picks it: the Challenge's namespace for an Issuer, the
        cluster resource namespace for a ClusterIssuer."""
        if _get(obj, "spec", "issuerRef", "kind") == "ClusterIssuer":
            return self._clusterNamespace
        return _get(obj, "metadata", "namespace")

    async def _follow(self, uid, item):
        obj, reminder = item
        state, phase = self._classify(obj)
        said = self._said.get(uid)
        if said is not None and said[2:5] == (state, phase.name, reminder):
            return
        meta = obj["metadata"]
        where = describe("Challenge", obj)
        context, config = await self._project(uid, obj, where)
        if context is None:
            return self._remember(uid, meta, state, phase, reminder)
        target = await self.target(uid, config.valkey, where)
        details = target and await self._presented(uid, context, target, where)
        if details is None:
            return self._remember(uid, meta, state, phase, reminder)
        await self._delegationSeen(context, details, obj, target, where)
        key = "%s:status:%s:%s" % (details["challenge_id"], state, phase.name)
        if reminder is not None:
            key += ":reminder:%d" % (reminder,)
        event = buildStatusEvent(context, details, obj, phase, utcNow(self._clock), key, reminder)
        result = await self._append(target, context, event)
        self._remember(uid, meta, state, phase, reminder, details.get("presentedAt")
                       or parseTime(meta.get("creationTimestamp")))
        self._landed(result, event, phase, details, where, reminder)

    def _append(self, target, context, event):
        """Append ``event`` to its project's stream, once per idempotency key."""
        return self._publisher.appendEvent(
            target, context.projectUUID, event.fields, event.idempotencyKey,
            sequenceField=SEQUENCE_FIELD, window=self._window)

    async def _delegationSeen(self, context, details, obj, target, where):
        """Say ``delegation_active`` once, when a CNAME the Present offered appears."""
        offered = details.get("delegation")
        if not offered or offered.get("active") is True or self._checker is None \
                or self._active.get(offered["value"]):
            return
        if await self._checker.check(offered["name"], offered["value"]) is not True:
            return
        event = buildDelegationActiveEvent(context, details, obj, utcNow(self._clock))
        result = await self._append(target, context, event)
        self._active.put(offered["value"], True)
        if not result.duplicate:
            metrics.PROGRESS_EVENTS.labels(operation=DELEGATION_ACTIVE, phase="").inc()
        log.info("{challenge}: {name} now delegates to {value}: delegation_active {outcome}",
                 log_kind="progress_event", operation=DELEGATION_ACTIVE, challenge=where,
                 name=offered["name"], value=offered["value"], challenge_id=event.challengeID,
                 stream=result.stream, entry_id=result.entryId, sequence=result.sequence,
                 duplicate=result.duplicate,
                 outcome="already published" if result.duplicate else "published")

    def _remember(self, uid, meta, state, phase, reminder, presentedAt=None):
        """What was last said of a Challenge; one whose user was told to add the record
        and whose status now says waiting_for_dns is also kept with its Present's time."""
        self._said[uid] = (meta.get("namespace"), meta.get("name"), state, phase.name, reminder)
        if phase.name == phases.WAITING_FOR_DNS and presentedAt:
            self._waiting[uid] = float(presentedAt)
        else:
            self._waiting.pop(uid, None)

    def oldestWaitingForDNS(self):
        """Seconds since the Present of the oldest Challenge now waiting_for_dns (0: none).

        Computed when ``/metrics`` is scraped, over the waiting Challenges only: the
        alert for a user who never added the record reads it."""
        if not self._waiting:
            return 0.0
        return max(0.0, self._clock.seconds() - min(self._waiting.values()))

    async def _project(self, uid, obj, where):
        """``(context, config)`` of a Challenge, or ``(None, None)`` with one line saying why."""
        webhook = _get(obj, "spec", "solver", "dns01", "webhook") or {}
        resourceNamespace = self._resourceNamespace(obj)
        try:
            config = parseIssuerConfig(webhook.get("config"), resourceNamespace, self._defaults)
            if not self._trusted(obj, webhook.get("config"), config, resourceNamespace):
                self._skipped(uid, "unconfirmed_config", "{challenge} names a ClusterIssuer whose"
                              " webhook config reads Secrets in {namespace}, and no request from"
                              " cert-manager carried that config to this replica yet: its events"
                              " are left to a replica that has seen one", challenge=where,
                              namespace=resourceNamespace)
                return None, None
            chain = await self._resolver.chainOf(obj)
            context = chain.context(config.defaultProjectUUID)
        except (ResolutionError, ConfigError) as e:
            if getattr(e, "transient", False):
                raise
            self._skipped(uid, "unresolved", "{challenge}: no progress events: {why}",
                          challenge=where, why=str(e))
            return None, None
        if context.certificateName:
            self._book.learn(context.certificateNamespace, context.certificateName,
                             config.valkey)
            if context.projectFromDefault:
                self._skipped(uid, "unlabelled_certificate",
                              "Certificate {namespace}/{name} has no label"
                              " platform.kibaship.com/project-uuid: its challenges get status"
                              " events in the issuer's defaultProjectUUID {project}, but it gets"
                              " no issued/failed events (only labelled Certificates are watched)",
                              namespace=context.certificateNamespace,
                              name=context.certificateName, project=context.projectUUID)
        return context, config

    def _trusted(self, obj, raw, config, resourceNamespace):
        """Whether the Secrets of a Challenge's config may be used.

        A Challenge naming an Issuer reads Secrets in its own namespace, as that
        Issuer's Presents do.  One naming a ClusterIssuer reads them in cert-manager's
        namespace, so its config must be one a request from cert-manager carried
        (see :class:`~kibaship_dns01.config.SeenIssuerConfigs`): anyone who may
        create Challenges could otherwise send those Secrets to an address of
        their choosing.
        """
        settings = config.valkey
        if settings.isDefault or (settings.passwordSecret is None and settings.caSecret is None):
            return True  # the daemon's own Valkey, or no Secret sent anywhere
        return (_get(obj, "spec", "issuerRef", "kind") != "ClusterIssuer"
                or (raw, resourceNamespace) in self._seenConfigs)

    async def target(self, uid, settings, where):
        """The Valkey target of ``settings``, or ``None`` (said once) when a Secret
        it names is missing or malformed; unreadable for now: raised, retried."""
        try:
            return await self._targets.target(settings)
        except SecretError as e:
            if e.transient:
                raise
            self._skipped(uid, "secret", "{what}: no progress events: {why}",
                          what=where, why=e.message)
            return None

    async def _presented(self, uid, context, target, where):
        """What the Present told the user (from the mark), or ``None`` if none was recorded."""
        if not context.certificateName:
            self._skipped(uid, "no_certificate", "{challenge}: its CertificateRequest has no"
                          " Certificate: no progress events", challenge=where)
            return None
        key = markKey(context.projectUUID, context.certificateNamespace,
                      context.certificateName)
        [raw] = await self._publisher.readFields(target, context.projectUUID, key,
                                                 [markChallengeField(uid)])
        if raw is None:
            self._skipped(uid, "no_present", "{challenge}: no Present of it is recorded in"
                          " {mark} on {valkey} (it failed, or predates progress events): no"
                          " status events", challenge=where, mark=key, valkey=target.describe())
            return None
        return json.loads(raw)

    def _skipped(self, uid, reason, text, **fields):
        if self._notes.once(uid, reason, text, **fields):
            metrics.PROGRESS_SKIPPED.labels(reason=reason).inc()

    def _landed(self, result, event, phase, details, where, reminder):
        if not result.duplicate:
            metrics.PROGRESS_EVENTS.labels(operation=STATUS, phase=phase.name).inc()
            presentedAt = details.get("presentedAt")
            if phase.name == phases.VERIFIED and reminder is None and presentedAt:
                metrics.PRESENT_TO_VERIFIED.observe(max(0.0, self._clock.seconds() - presentedAt))
        log.info("{challenge}: status {phase} ({state}) {outcome}", log_kind="progress_event",
                 operation=STATUS, challenge=where, phase=phase.name,
                 state=event.payload["state"], challenge_id=event.challengeID,
                 stream=result.stream, entry_id=result.entryId, sequence=result.sequence,
                 duplicate=result.duplicate, reminder=reminder,
                 outcome="already published" if result.duplicate else "published")
