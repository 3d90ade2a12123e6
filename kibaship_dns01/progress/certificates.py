"""The Certificate watcher: ``issued`` and ``failed`` for Kibaship Certificates.

A watch on Certificates labelled ``platform.kibaship.com/project-uuid``
(cluster-wide, label selector on the server, objects trimmed to what is read
here) decides from what every replica sees:

* ``issued`` once per revision: the ``Ready`` condition is ``True`` and
  ``status.revision`` is R.  Appended only if the Certificate's mark says the
  latest Present through this solver was for revision R
  (:meth:`~kibaship_dns01.valkey.script.MarkOp.require`, checked inside the
  append script), so a Certificate issued without our Challenges (another
  solver, an authorization the CA reused) says nothing.  Key
  ``<certificate uid>:issued:<R>``.
* ``failed``: the ``Issuing`` condition is ``False`` with reason ``Failed``
  (cert-manager's ``failIssueCertificate``), for the attempted revision
  A = R + 1 (1 before the first issuance), if the mark's revision is A.  Key
  ``<certificate uid>:failed:<A>:<lastFailureTime>``: each failed attempt once.

The cache keeps a :func:`certificateRecord` per Certificate (identity and
resourceVersion, a few hundred bytes with its key): the transitions are decided
from the watch event's object, which carries the whole Certificate, so no copy
of labels, status or conditions needs to stay in memory (100,000 Certificates
kept as trimmed dicts cost 3.4 KB each).  The cache syncs with a WatchList
stream where the API server serves one (see :mod:`~kibaship_dns01.kube.informer`).

Only issuances this recent are considered: ``notBefore`` (issued) or
``lastFailureTime`` (failed) within the progress window, which is also how long
the idempotency records and the mark live; a relist after that finds no mark
and appends nothing.  Which Valkey: see :mod:`.targets`.
"""
import re
import sys
import uuid

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from kibaship_dns01 import metrics
from kibaship_dns01.events import (
    FAILED, ISSUED, MARK_PRESENTED_AT, MARK_REVISION, SEQUENCE_FIELD, buildCertificateEvent)
from kibaship_dns01.kube.informer import Informer
from kibaship_dns01.progress.challenges import isTransient, parseTime, utcNow
from kibaship_dns01.progress.jobs import KeyedJobs
from kibaship_dns01.project import (
    LABEL_PREFIX, NAME_ANNOTATION, PROJECT_LABEL, InvalidProjectLabel, parseProjectLabels)
from kibaship_dns01.resolve.challenges import _get, describe
from kibaship_dns01.valkey.script import MarkOp, markKey

log = Logger()


CERTIFICATES_PATH = "/apis/cert-manager.io/v1/certificates"
#: the CA may backdate notBefore (Let's Encrypt: one hour)
NOT_BEFORE_SLACK = 3 * 3600.0
#: how long a Certificate's event waits for the Challenge follower to learn its issuer's
#: Valkey (a restart relists both caches at once), in steps
LEARN_WAIT, LEARN_STEPS = 5.0, 12

_STATUS_FIELDS = ("revision", "notAfter", "notBefore", "renewalTime", "failedIssuanceAttempts",
                  "lastFailureTime")
_CONDITION_FIELDS = ("type", "status", "reason", "message", "lastTransitionTime")


def certificateRecord(obj):
    """What the Certificate cache keeps of one Certificate (the informer's ``trim``):
    ``(namespace, name, uid, version)``, its identity, to say goodbye when it is
    deleted (also when a relist finds it gone), and its resourceVersion, so a
    relist passes over the unchanged ones.

    Integers rather than strings where they fit: the UID as its 128-bit integer
    (44 bytes instead of 85), the resourceVersion as an integer (etcd's
    revisions are decimal; any other string is kept as it is); the namespace
    interned, the name the cache key's own string.  A plain tuple rather than
    an object with slots: CPython's collector stops tracking a tuple of strings
    and integers once it has seen it, so 100,000 records add nothing to each
    full collection (as slotted objects they made each one about 65 ms longer,
    a stall in the middle of a sync).  :func:`recordIdentity` reads it back.
    """
    meta = obj.get("metadata") or {}
    namespace, rv = meta.get("namespace"), meta.get("resourceVersion")
    return (sys.intern(namespace) if type(namespace) is str else namespace, meta.get("name"),
            _packUID(meta.get("uid")), int(rv) if type(rv) is str and rv.isdigit() else rv)


def recordVersion(record):
    return record[3]


def recordIdentity(record):
    """``(namespace, name, uid)`` of a :func:`certificateRecord`."""
    namespace, name, uid, _ = record
    return namespace, name, str(uuid.UUID(int=uid)) if type(uid) is int else uid


#: a UID as the API server writes one (a lower-case UUID): packed into its integer
_CANONICAL_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _packUID(uid):
    """A UID in the canonical UUID form as its integer; any other value as it is."""
    if type(uid) is str and _CANONICAL_UID.fullmatch(uid):
        return int(uid.replace("-", ""), 16)
    return uid


def _identity(cert):
    """``(namespace, name, uid)`` of a trimmed Certificate or a :func:`certificateRecord`."""
    if type(cert) is tuple:
        return recordIdentity(cert)
    meta = cert.get("metadata") or {}
    return meta.get("namespace"), meta.get("name"), meta.get("uid")


def trimCertificate(obj):
    """Keep what the watcher reads: identity, Kibaship labels, ``dnsNames``, the
    issuance status and the ``Ready``/``Issuing`` conditions.  What listeners
    see of an event (the cache keeps a :func:`certificateRecord`): held only
    while its transition is decided and published, so nothing is interned."""
    meta, spec, status = (obj.get(k) or {} for k in ("metadata", "spec", "status"))
    trimmed = {key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion")
               if key in meta}
    trimmed["labels"] = {k: v for k, v in (meta.get("labels") or {}).items()
                         if k.startswith(LABEL_PREFIX)}
    name = (meta.get("annotations") or {}).get(NAME_ANNOTATION)
    if name is not None:
        trimmed["annotations"] = {NAME_ANNOTATION: name}
    kept = {key: status[key] for key in _STATUS_FIELDS if key in status}
    conditions = [{k: c[k] for k in _CONDITION_FIELDS if k in c}
                  for c in status.get("conditions") or () if isinstance(c, dict)
                  and c.get("type") in ("Ready", "Issuing")]
    if conditions:
        kept["conditions"] = conditions
    return {"metadata": trimmed, "spec": {"dnsNames": list(spec.get("dnsNames") or ())},
            "status": kept}


def _condition(cert, kind):
    for c in _get(cert, "status", "conditions") or ():
        if c.get("type") == kind:
            return c
    return None


def _revision(cert):
    value = _get(cert, "status", "revision")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def decisions(cert, now, window):
    """``[(operation, revision, key, details)]`` this Certificate's status calls for."""
    uid, status = _get(cert, "metadata", "uid"), cert.get("status") or {}
    out, revision = [], _revision(cert)
    ready = _condition(cert, "Ready")
    notBefore = parseTime(status.get("notBefore"))
    if (ready is not None and ready.get("status") == "True" and revision is not None
            and (notBefore is None or now - notBefore <= window + NOT_BEFORE_SLACK)):
        details = {key: status[key] for key in ("notAfter", "notBefore", "renewalTime")
                   if isinstance(status.get(key), str)}
        out.append((ISSUED, revision, "%s:issued:%d" % (uid, revision), details))
    issuing = _condition(cert, "Issuing")
    failedAt = status.get("lastFailureTime")
    failedWhen = parseTime(failedAt)
    if (issuing is not None and issuing.get("status") == "False"
            and issuing.get("reason") == "Failed" and failedWhen is not None
            and now - failedWhen <= window):
        attempted = (revision or 0) + 1
        attempts = status.get("failedIssuanceAttempts")
        details = {"lastFailureTime": failedAt, "reason": issuing.get("reason"),
                   "message": issuing.get("message") or ""}
        if isinstance(attempts, int):
            details["failedIssuanceAttempts"] = attempts
        out.append((FAILED, attempted, "%s:failed:%d:%s" % (uid, attempted, failedAt), details))
    return out


class CertificateWatcher(service.Service):
    """See the module docstring; a Service owning its Certificate cache."""

    name = "certificate-progress"

    def __init__(self, client, publisher, targets, clock, book, notes, window, follower,
                 limit=8, startAfter=None):
        """:param follower: the :class:`~.challenges.ChallengeFollower`, whose
        ``target`` turns settings into a Valkey target the same way.
        :param startAfter: ``fn() -> Deferred``; the Certificate LIST waits for it
        (the resolver's readiness: ``/readyz`` does not wait for Certificates, so
        a restart's CPU goes first to the caches it does wait for)."""
        self._startAfter = startAfter
        self._publisher = publisher
        self._clock = clock
        self._book = book
        self._notes = notes
        self._window = window
        self._follower = follower
        self._said = {}  # (uid, operation) -> key last published
        self._jobs = KeyedJobs(clock, self._publish, "certificate progress", limit=limit,
                               isTransient=isTransient)
        self.informer = Informer(client, CERTIFICATES_PATH, clock, "certificates",
                                 trim=certificateRecord, view=trimCertificate,
                                 version=recordVersion, watchList=True,
                                 params={"labelSelector": PROJECT_LABEL})
        self.informer.addListener(self._onEvent)

    def startService(self):
        super().startService()
        log.info("watching Certificates labelled {label} for issued/failed events; Certificates"
                 " without it (platform certificates using defaultProjectUUID) get none",
                 label=PROJECT_LABEL)
        waited = self._startAfter() if self._startAfter is not None else defer.succeed(None)
        waited.addCallback(self._startInformer)

    def _startInformer(self, _):
        if self.running and not self.informer.running:
            self.informer.startService()

    def stopService(self):
        super().stopService()
        self._jobs.stop()
        return self.informer.stopService()

    def _onEvent(self, kind, cert):
        """``cert`` is the event's Certificate, trimmed; for one a relist found
        gone, its :func:`certificateRecord`."""
        if kind == "DELETED":
            namespace, name, uid = _identity(cert)
            self._book.forget(namespace, name)
            self._notes.forget(uid)
            for operation in (ISSUED, FAILED):
                self._said.pop((uid, operation), None)
            return
        uid = _get(cert, "metadata", "uid")
        for decision in decisions(cert, self._clock.seconds(), self._window):
            if self._said.get((uid, decision[0])) != decision[2]:
                self._jobs.submit((uid, decision[0]), (cert, decision))

    async def _publish(self, job, item):
        cert, (operation, revision, key, details) = item
        uid, where = job[0], describe("Certificate", cert)
        meta = cert["metadata"]
        try:
            labels = parseProjectLabels(meta.get("labels"), meta.get("annotations"), where)
        except InvalidProjectLabel as e:
            return self._skipped(uid, "label_invalid", "{certificate}: {why}: no issued/failed"
                                 " events", certificate=where, why=str(e))
        settings, learnt = await self._settings(meta)
        target = await self._follower.target(uid, settings, where)
        if target is None:
            return
        mark = markKey(labels.projectUUID, meta["namespace"], meta["name"])
        event = buildCertificateEvent(operation, labels, cert, utcNow(self._clock), key,
                                      revision=revision, **details)
        result = await self._publisher.appendEvent(
            target, labels.projectUUID, event.fields, key, sequenceField=SEQUENCE_FIELD,
            mark=MarkOp.require(mark, MARK_REVISION, str(revision)), window=self._window)
        self._said[job] = key
        if result.skipped:
            return self._skipped(
                uid, "not_ours:%s:%d" % (operation, revision),
                "{certificate}: revision {revision} was not presented through this solver"
                " ({mark} on {valkey}{guess}): no {operation} event", certificate=where,
                revision=revision, mark=mark, valkey=target.describe(), operation=operation,
                guess="" if learnt else ", the default Valkey: none of its Challenges seen")
        await self._landed(result, event, operation, target, labels, mark, where)

    async def _settings(self, meta):
        """The issuer's Valkey settings; while Challenges are still being looked at
        (a restart relists both caches), wait a bounded while for them."""
        for _ in range(LEARN_STEPS):
            settings, learnt = self._book.settingsFor(meta["namespace"], meta["name"])
            if learnt or not self._follower.busy():
                return settings, learnt
            await task.deferLater(self._clock, LEARN_WAIT, lambda: None)
        return self._book.settingsFor(meta["namespace"], meta["name"])

    def _skipped(self, uid, reason, text, **fields):
        if self._notes.once(uid, reason, text, **fields):
            metrics.PROGRESS_SKIPPED.labels(reason=reason.split(":")[0]).inc()

    async def _landed(self, result, event, operation, target, labels, mark, where):
        if not result.duplicate:
            metrics.PROGRESS_EVENTS.labels(operation=operation, phase=operation).inc()
            if operation == ISSUED:
                [presentedAt] = await self._publisher.readFields(
                    target, labels.projectUUID, mark, [MARK_PRESENTED_AT])
                if presentedAt:
                    metrics.PRESENT_TO_ISSUED.observe(
                        max(0.0, self._clock.seconds() - float(presentedAt)))
        log.info("{certificate}: {operation} revision {revision} {outcome}",
                 log_kind="progress_event", operation=operation, certificate=where,
                 revision=event.payload["revision"], stream=result.stream,
                 entry_id=result.entryId, sequence=result.sequence, duplicate=result.duplicate,
                 outcome="already published" if result.duplicate else "published")
