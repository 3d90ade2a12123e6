"""The stream event for one challenge decision (SPEC §7), version 1.

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
import json
import uuid

import attr

from kibaship_dns01 import __version__
from kibaship_dns01.names import bareName
from kibaship_dns01.valkey.script import SEQUENCE_TOKEN

RESOURCE_TYPE = "dns_challenge"
PAYLOAD_VERSION = 1
CONTROLLER_VERSION = f"kibaship-dns01/{__version__}"
#: name-space of ``challenge_id``: uuid5(NAMESPACE_DNS, "dns.kibaship.com")
CHALLENGE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "dns.kibaship.com")
#: the field whose JSON carries the sequence placeholder
SEQUENCE_FIELD = "event_data"


def challengeID(namespace, certificate, fqdn, txt):
    """Deterministic id of one challenge: the same inputs always give the same UUIDv5.

    Over ``<namespace>/<certificate>/<fqdn without trailing dot>/<txt>``.
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
    challengeID: str
    operation: str
    eventID: str

    @property
    def idempotencyKey(self):
        """One append per challenge and operation, however often cert-manager retries."""
        return f"{self.challengeID}:{self.operation}"

    def eventData(self):
        """``event_data`` decoded, with the sequence placeholder still in it."""
        return json.loads(self.fields[SEQUENCE_FIELD])


def buildEvent(request, context, config, now, eventID=None, deadlineHint=None):
    """The v1 event for ``request`` in ``context`` under issuer ``config``.

    :param now: an aware ``datetime`` (from the injected clock).
    :param deadlineHint: seconds the user has left, when known.
    """
    operation = request.operation
    namespace = context.certificateNamespace or context.challengeNamespace
    certificate = context.certificateName or ""
    cid = challengeID(namespace, certificate, request.resolvedFQDN, request.key)
    eventID = eventID or str(uuid.uuid4())
    payload = {
        "version": PAYLOAD_VERSION, "type": operation, "challenge_id": cid,
        "fqdn": bareName(request.resolvedFQDN), "zone": bareName(request.resolvedZone),
        "txt": request.key, "ttl": config.ttl, "dnsName": request.dnsName,
        "wildcard": context.wildcard, "namespace": namespace, "certificate": certificate,
        "issuerRef": context.issuerRef.asDict(), "createdAt": _rfc3339(now),
        "record": txtRecord(request.resolvedFQDN, request.resolvedZone, request.key, config.ttl),
        "delegated": request.delegated,
    }
    optional = {"orderName": context.orderName, "challengeName": context.challengeName,
                "uiHints": config.uiHintsDict or None, "deadlineHint": deadlineHint}
    payload.update({k: v for k, v in optional.items() if v is not None})
    metadata = {"reconciliation_id": "", "controller_version": CONTROLLER_VERSION,
                "sequence_number": SEQUENCE_TOKEN}
    if context.domainUUID:
        metadata["parent_resource_uuid"] = context.domainUUID
    eventData = {
        "event_id": eventID, "timestamp": _rfc3339(now), "project_uuid": context.projectUUID,
        "workspace_uuid": context.workspaceUUID or "", "resource_type": RESOURCE_TYPE,
        "resource_uuid": cid, "resource_slug": context.slug or "", "operation": operation,
        "namespace": namespace, "payload": payload, "metadata": metadata,
    }
    fields = {
        "event_id": eventID, "timestamp": str(int(now.timestamp())),
        "project_uuid": context.projectUUID, "workspace_uuid": context.workspaceUUID,
        "resource_type": RESOURCE_TYPE, "resource_uuid": cid, "resource_slug": context.slug,
        "operation": operation, "namespace": namespace,
        "parent_resource_uuid": context.domainUUID,
        SEQUENCE_FIELD: json.dumps(eventData, separators=(",", ":"), sort_keys=False),
    }
    fields = {k: v for k, v in fields.items() if v}
    return BuiltEvent(fields=fields, challengeID=cid, operation=operation, eventID=eventID)


def withSequence(fields, sequence):
    """The fields as stored once the script assigned ``sequence`` (for dry runs and tests)."""
    stored = dict(fields)
    stored[SEQUENCE_FIELD] = stored[SEQUENCE_FIELD].replace(
        json.dumps(SEQUENCE_TOKEN), str(sequence), 1)
    stored["sequence"] = str(sequence)
    return stored
