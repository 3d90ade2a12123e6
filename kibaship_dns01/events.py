"""The stream event for one challenge decision (SPEC §7), version 1.

One envelope serves every operation: ``present`` and ``cleanup`` (the
solver), ``status``, ``issued`` and ``failed`` (:mod:`kibaship_dns01.progress`).

The flat fields are the envelope the Kibaship operator publishes and
``event_data`` mirrors the operator's ``ResourceEvent`` JSON
(``pkg/streaming``), so existing consumers parse it unchanged; the DNS01
specifics live in ``event_data.payload``.  ``schema/dns-challenge-event.v1.json``
is the published contract and the tests validate every built event against it.

``sequence`` (flat) and ``metadata.sequence_number`` are assigned atomically
by the Valkey append script; the builder leaves the script's placeholder in
``event_data`` (see :mod:`kibaship_dns01.valkey.script`).
"""
import datetime
import functools
import json
import uuid

import attr

from kibaship_dns01 import __version__
from kibaship_dns01.names import bareName
from kibaship_dns01.valkey.script import SEQUENCE_TOKEN, MarkOp, markKey

RESOURCE_TYPE = "dns_challenge"
PAYLOAD_VERSION = 1
CONTROLLER_VERSION = f"kibaship-dns01/{__version__}"
#: name-space of ``challenge_id``: uuid5(NAMESPACE_DNS, "dns.kibaship.com")
CHALLENGE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "dns.kibaship.com")
#: the field whose JSON carries the sequence placeholder
SEQUENCE_FIELD = "event_data"


@functools.lru_cache(maxsize=16384)
def challengeID(namespace, certificate, fqdn, txt):
    """Deterministic id of one challenge: the same inputs always give the same UUIDv5.

    Over ``<namespace>/<certificate>/<fqdn without trailing dot>/<txt>``; remembered
    for the challenges in flight (cert-manager retries each until it is done).
    """
    return str(uuid.uuid5(CHALLENGE_NAMESPACE, f"{namespace}/{certificate}/{bareName(fqdn)}/{txt}"))


def txtRecord(fqdn, zone, value, ttl):
    """What the user must add, in the shape a UI shows as is."""
    name, zone = bareName(fqdn), bareName(zone)
    if name == zone:
        host = "@"
    elif name.endswith("." + zone):
        host = name[: -len(zone) - 1]
    else:
        host = name
    return {"type": "TXT", "name": name, "host": host, "zone": zone, "value": value, "ttl": ttl}


def _rfc3339(when):
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class BuiltEvent:
    """The fields to append, plus what logs and idempotency need."""

    fields: dict
    #: the ``resource_uuid``: the challenge_id (certificate_id for issued/failed)
    challengeID: str
    operation: str
    eventID: str
    #: the idempotency key when it is not ``<challenge_id>:<operation>``
    key: object = None
    #: the ``payload`` as built (not re-parsed from ``event_data``)
    payload: dict = attr.ib(default=None, eq=False, repr=False)

    @property
    def idempotencyKey(self):
        """One append per challenge and operation, however often cert-manager retries;
        the progress operations name their transition (see :mod:`kibaship_dns01.progress`)."""
        return self.key or idempotencyKeyOf(self.challengeID, self.operation)

    def eventData(self):
        """``event_data`` decoded, with the sequence placeholder still in it."""
        return json.loads(self.fields[SEQUENCE_FIELD])


def _envelope(who, operation, resourceUUID, namespace, payload, now, eventID, key=None):
    """The operator's envelope around ``payload``, for every operation.

    :param who: the project's labels: anything with ``projectUUID``,
        ``workspaceUUID``, ``slug`` and ``domainUUID`` (a ``ProjectContext``
        or ``ProjectLabels``).
    """
    eventID = eventID or str(uuid.uuid4())
    metadata = {"reconciliation_id": "", "controller_version": CONTROLLER_VERSION,
                "sequence_number": SEQUENCE_TOKEN}
    if who.domainUUID:
        metadata["parent_resource_uuid"] = who.domainUUID
    eventData = {
        "event_id": eventID, "timestamp": _rfc3339(now), "project_uuid": who.projectUUID,
        "workspace_uuid": who.workspaceUUID or "", "resource_type": RESOURCE_TYPE,
        "resource_uuid": resourceUUID, "resource_slug": who.slug or "", "operation": operation,
        "namespace": namespace, "payload": payload, "metadata": metadata,
    }
    fields = {
        "event_id": eventID, "timestamp": str(int(now.timestamp())),
        "project_uuid": who.projectUUID, "workspace_uuid": who.workspaceUUID,
        "resource_type": RESOURCE_TYPE, "resource_uuid": resourceUUID,
        "resource_slug": who.slug, "operation": operation, "namespace": namespace,
        "parent_resource_uuid": who.domainUUID,
        SEQUENCE_FIELD: json.dumps(eventData, separators=(",", ":"), sort_keys=False),
    }
    fields = {k: v for k, v in fields.items() if v}
    return BuiltEvent(fields=fields, challengeID=resourceUUID, operation=operation,
                      eventID=eventID, key=key, payload=payload)


def _challengePayload(operation, cid, fqdn, zone, txt, ttl, dnsName, delegated, context, now):
    """The DNS01 fields every challenge operation carries (present, cleanup, status)."""
    namespace = context.certificateNamespace or context.challengeNamespace
    payload = {
        "version": PAYLOAD_VERSION, "type": operation, "challenge_id": cid,
        "fqdn": bareName(fqdn), "zone": bareName(zone), "txt": txt, "ttl": ttl,
        "dnsName": dnsName, "wildcard": context.wildcard, "namespace": namespace,
        "certificate": context.certificateName or "", "issuerRef": context.issuerRef.asDict(),
        "createdAt": _rfc3339(now), "record": txtRecord(fqdn, zone, txt, ttl),
        "delegated": delegated,
    }
    return _withOptional(payload, orderName=context.orderName,
                         challengeName=context.challengeName)


def _withOptional(payload, **optional):
    payload.update({k: v for k, v in optional.items() if v is not None})
    return payload


def idempotencyKeyOf(challengeID, operation):
    """The idempotency key of a Present or CleanUp: one append per challenge and operation."""
    return f"{challengeID}:{operation}"


def requestChallengeID(request, context):
    """The ``challenge_id`` of ``request`` in ``context`` (see :func:`challengeID`)."""
    namespace = context.certificateNamespace or context.challengeNamespace
    return challengeID(namespace, context.certificateName or "", request.resolvedFQDN,
                       request.key)


def buildEvent(request, context, config, now, eventID=None, deadlineHint=None,
               delegation=None):
    """The v1 event for ``request`` in ``context`` under issuer ``config``.

    :param now: an aware ``datetime`` (from the injected clock).
    :param deadlineHint: seconds the user has left, when known.
    :param delegation: a ``present``'s CNAME offer (``Delegation.asPayload``), when
        delegated renewals are on and the challenge is eligible.
    """
    namespace = context.certificateNamespace or context.challengeNamespace
    cid = requestChallengeID(request, context)
    payload = _challengePayload(request.operation, cid, request.resolvedFQDN,
                                request.resolvedZone, request.key, config.ttl, request.dnsName,
                                request.delegated, context, now)
    _withOptional(payload, uiHints=config.uiHintsDict or None, deadlineHint=deadlineHint,
                  delegation=delegation)
    return _envelope(context, request.operation, cid, namespace, payload, now, eventID)


# --- progress operations (kibaship_dns01.progress) ---------------------------

STATUS, ISSUED, FAILED = "status", "issued", "failed"
#: hash fields of a Certificate's mark (see kibaship_dns01.valkey.script):
#: the revision of the latest Present, and when it was appended (Unix seconds)
MARK_REVISION = "revision"
MARK_PRESENTED_AT = "presentedAt"


def markChallengeField(challengeUID):
    """The mark field holding what a Present told the user about one Challenge."""
    return "ch:" + challengeUID


def presentMark(event, context, now, ttl):
    """The :class:`~kibaship_dns01.valkey.script.MarkOp` a Present appends with.

    It records, under the Certificate's mark, the revision being issued and
    this challenge's id and record, so every replica can later build the
    challenge's ``status`` events and decide ``issued``.  ``None`` without a
    Certificate (a hand-made CertificateRequest has no progress events).
    """
    if not context.certificateName or not context.challengeUID:
        return None
    payload = event.payload
    details = {"challenge_id": event.challengeID, "fqdn": payload["fqdn"],
               "zone": payload["zone"], "ttl": payload["ttl"],
               "delegated": payload["delegated"], "presentedAt": round(now.timestamp(), 3)}
    if "delegation" in payload:  # the follower tells the user once the CNAME appears
        details["delegation"] = payload["delegation"]
    fields = {markChallengeField(context.challengeUID): json.dumps(details, sort_keys=True),
              MARK_PRESENTED_AT: str(details["presentedAt"])}
    if context.certificateRevision:
        fields[MARK_REVISION] = context.certificateRevision
    key = markKey(context.projectUUID, context.certificateNamespace, context.certificateName)
    return MarkOp.set(key, fields, ttl)


def buildStatusEvent(context, details, challenge, phase, now, key, reminder=None):
    """A ``status`` event: the Challenge's state and phase, with the record again.

    :param details: the mark's record of the Present (``challenge_id``,
        ``fqdn``, ``zone``, ``ttl``), so the id and record match ``present``.
    :param challenge: the (trimmed) Challenge object.
    :param phase: its :class:`~kibaship_dns01.progress.phases.Phase`.
    :param reminder: the refresh number, for a "still waiting" reminder.
    """
    spec, status = challenge.get("spec") or {}, challenge.get("status") or {}
    cid = details["challenge_id"]
    payload = _challengePayload(STATUS, cid, details["fqdn"], details["zone"], spec["key"],
                                details["ttl"], spec.get("dnsName") or "",
                                bool(details.get("delegated")), context, now)
    payload.update(state=status.get("state") or "pending", phase=phase.name, final=phase.final,
                   reason=status.get("reason") or "", presented=bool(status.get("presented")),
                   processing=bool(status.get("processing")),
                   checkedAt=status.get("writtenAt") or _rfc3339(now))
    _withOptional(payload, rcode=phase.rcode, reminder=reminder)
    namespace = payload["namespace"]
    return _envelope(context, STATUS, cid, namespace, payload, now, None, key)


DELEGATION_ACTIVE = "delegation_active"


def delegationActiveKey(delegation):
    """One ``delegation_active`` event per delegation name (within the progress window)."""
    return "%s:%s" % (DELEGATION_ACTIVE, delegation["value"])


def buildDelegationActiveEvent(context, details, challenge, now):
    """A ``delegation_active`` event: the user's CNAME to the delegation name is now in
    place (seen while cert-manager worked on the challenge), so this challenge and every
    renewal complete without them.

    :param details: the mark's record of the Present, with the ``delegation`` it offered.
    """
    spec = challenge.get("spec") or {}
    cid = details["challenge_id"]
    payload = _challengePayload(DELEGATION_ACTIVE, cid, details["fqdn"], details["zone"],
                                spec["key"], details["ttl"], spec.get("dnsName") or "",
                                bool(details.get("delegated")), context, now)
    offered = details["delegation"]
    # in the order a present payload has it (the mark's record may have sorted its keys)
    payload["delegation"] = {"type": offered["type"], "name": offered["name"],
                             "value": offered["value"], "active": True}
    return _envelope(context, DELEGATION_ACTIVE, cid, payload["namespace"], payload, now, None,
                     delegationActiveKey(offered))


def certificateID(namespace, name):
    """Deterministic id of a Certificate (the ``resource_uuid`` of issued/failed)."""
    return str(uuid.uuid5(CHALLENGE_NAMESPACE, f"certificate/{namespace}/{name}"))


def buildCertificateEvent(operation, labels, certificate, now, key, **details):
    """An ``issued`` or ``failed`` event for a (trimmed) Certificate.

    :param labels: its :class:`~kibaship_dns01.project.ProjectLabels`.
    :param details: the operation's own payload fields (revision, notAfter ...).
    """
    meta, spec = certificate["metadata"], certificate.get("spec") or {}
    namespace, name = meta["namespace"], meta["name"]
    cid = certificateID(namespace, name)
    payload = {"version": PAYLOAD_VERSION, "type": operation, "certificate_id": cid,
               "namespace": namespace, "certificate": name,
               "dnsNames": list(spec.get("dnsNames") or ()), "createdAt": _rfc3339(now)}
    _withOptional(payload, **details)
    return _envelope(labels, operation, cid, namespace, payload, now, None, key)


def withSequence(fields, sequence):
    """The fields as stored once the script assigned ``sequence`` (for dry runs and tests)."""
    stored = dict(fields)
    stored[SEQUENCE_FIELD] = stored[SEQUENCE_FIELD].replace(
        json.dumps(SEQUENCE_TOKEN), str(sequence), 1)
    stored["sequence"] = str(sequence)
    return stored
