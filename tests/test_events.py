"""The v1 event (SPEC §7): envelope, event_data, challenge_id, record; valid against the schema."""
import datetime
import json
import uuid

import jsonschema
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.api.payload import decodeChallengeRequest
from kibaship_dns01.config import parseIssuerConfig
from kibaship_dns01.events import (CHALLENGE_NAMESPACE, buildEvent, challengeID, txtRecord,
                                   withSequence)
from kibaship_dns01.project import IssuerRef, contextFromLabels
from kibaship_dns01.testing.eventschema import validateEntry

PROJECT = "0b6a1a3e-1111-4222-8333-444455556666"
WORKSPACE = "1b6a1a3e-1111-4222-8333-444455556666"
DOMAIN = "2b6a1a3e-1111-4222-8333-444455556666"
NOW = datetime.datetime(2026, 11, 28, 12, 0, 0, 250000, tzinfo=datetime.timezone.utc)


def request(action="Present", fqdn="_acme-challenge.shop.example.com.", zone="example.com.",
            key="dDlzkoMWZo5NLYFs8-XpPvEmEGdikSbIOfVu3WNJW84", dnsName="shop.example.com"):
    return decodeChallengeRequest(json.dumps({"request": {
        "action": action, "type": "dns-01", "dnsName": dnsName, "key": key,
        "resourceNamespace": "cert-manager",
        "resolvedFQDN": fqdn, "resolvedZone": zone}}).encode())


def context(**labels):
    base = {"platform.kibaship.com/project-uuid": PROJECT}
    base.update(labels)
    return contextFromLabels(base, challengeNamespace="certificates", challengeName="ch-1",
                             orderName="ad-shop-1-2", certificateNamespace="certificates",
                             certificateName="ad-shop-example-com",
                             issuerRef=IssuerRef("certmanager-acme-issuer", "ClusterIssuer"))


class ChallengeIDTests(SynchronousTestCase):
    def test_deterministicUUIDv5(self):
        a = challengeID("certificates", "ad-x", "_acme-challenge.x.com.", "txt")
        self.assertEqual(a, challengeID("certificates", "ad-x", "_acme-challenge.x.com", "txt"))
        self.assertEqual(a, str(uuid.uuid5(CHALLENGE_NAMESPACE,
                                           "certificates/ad-x/_acme-challenge.x.com/txt")))
        self.assertEqual(uuid.UUID(a).version, 5)
        self.assertNotEqual(a, challengeID("certificates", "ad-x", "_acme-challenge.x.com", "t2"))


class RecordTests(SynchronousTestCase):
    def test_hostIsRelativeToZone(self):
        self.assertEqual(txtRecord("_acme-challenge.shop.example.com.", "example.com.", "v", 60),
                         {"type": "TXT", "name": "_acme-challenge.shop.example.com",
                          "host": "_acme-challenge.shop", "zone": "example.com", "value": "v",
                          "ttl": 60})
        self.assertEqual(txtRecord("example.com.", "example.com.", "v", 60)["host"], "@")


class BuildEventTests(SynchronousTestCase):
    def build(self, req=None, ctx=None, config=None):
        return buildEvent(req or request(), ctx or context(),
                          config or parseIssuerConfig({"uiHints": {"tenant": "acme"}}, "cm"),
                          NOW, eventID="3b6a1a3e-1111-4222-8333-444455556666", deadlineHint=600)

    def test_everyFieldForAFullyLabelledCertificate(self):
        ctx = context(**{"platform.kibaship.com/workspace-uuid": WORKSPACE,
                         "platform.kibaship.com/uuid": DOMAIN,
                         "platform.kibaship.com/slug": "shop"})
        event = self.build(ctx=ctx)
        stored = withSequence(event.fields, 7)
        data = validateEntry(stored)
        cid = challengeID("certificates", "ad-shop-example-com",
                          "_acme-challenge.shop.example.com", request().key)
        self.assertEqual({k: v for k, v in stored.items() if k != "event_data"}, {
            "event_id": "3b6a1a3e-1111-4222-8333-444455556666", "timestamp": "1795867200",
            "project_uuid": PROJECT, "workspace_uuid": WORKSPACE,
            "resource_type": "dns_challenge", "resource_uuid": cid, "resource_slug": "shop",
            "operation": "present", "namespace": "certificates", "parent_resource_uuid": DOMAIN,
            "sequence": "7"})
        self.assertEqual(data["metadata"], {
            "reconciliation_id": "", "controller_version": "kibaship-dns01/0.1.0",
            "sequence_number": 7, "parent_resource_uuid": DOMAIN})
        self.assertEqual(data["timestamp"], "2026-11-28T12:00:00.250000Z")
        self.assertEqual(data["payload"], {
            "version": 1, "type": "present", "challenge_id": cid,
            "fqdn": "_acme-challenge.shop.example.com", "zone": "example.com",
            "txt": request().key, "ttl": 60, "dnsName": "shop.example.com", "wildcard": False,
            "namespace": "certificates", "certificate": "ad-shop-example-com",
            "issuerRef": {"name": "certmanager-acme-issuer", "kind": "ClusterIssuer",
                          "group": "cert-manager.io"},
            "createdAt": "2026-11-28T12:00:00.250000Z", "orderName": "ad-shop-1-2",
            "challengeName": "ch-1", "uiHints": {"tenant": "acme"}, "deadlineHint": 600,
            "record": {"type": "TXT", "name": "_acme-challenge.shop.example.com",
                       "host": "_acme-challenge.shop", "zone": "example.com",
                       "value": request().key, "ttl": 60},
            "delegated": False})
        self.assertEqual(event.idempotencyKey, f"{cid}:present")

    def test_delegatedWhenTheRecordIsNotTheChallengeName(self):
        """cert-manager followed a CNAME: the record lives elsewhere and the event says so."""
        req = request(fqdn="_acme-challenge.shop.delegated.example.net.",
                      zone="delegated.example.net.")
        data = validateEntry(withSequence(self.build(req=req).fields, 1))
        self.assertIs(data["payload"]["delegated"], True)
        self.assertEqual(data["payload"]["record"]["name"],
                         "_acme-challenge.shop.delegated.example.net")
        wildcard = request(dnsName="*.shop.example.com")
        self.assertIs(self.build(req=wildcard).eventData()["payload"]["delegated"], False)

    def test_minimalLabelsOmitOptionalFlatFields(self):
        event = self.build(req=request("CleanUp"), config=parseIssuerConfig({"ttl": 120}, "cm"))
        stored = withSequence(event.fields, 1)
        data = validateEntry(stored)
        for absent in ("workspace_uuid", "resource_slug", "parent_resource_uuid"):
            self.assertNotIn(absent, stored)
        self.assertEqual((data["workspace_uuid"], data["resource_slug"]), ("", ""))
        self.assertEqual((stored["operation"], data["payload"]["type"]), ("cleanup", "cleanup"))
        self.assertNotIn("uiHints", data["payload"])
        self.assertEqual(data["payload"]["record"]["ttl"], 120)
        self.assertTrue(event.idempotencyKey.endswith(":cleanup"))

    def test_schemaRejectsWhatConsumersCouldNotParse(self):
        stored = withSequence(self.build().fields, 3)
        for broken in ({"operation": "Present"}, {"sequence": "0"}, {"project_uuid": "x"},
                       {"surprise": "field"}):
            self.assertRaises(jsonschema.ValidationError, validateEntry, {**stored, **broken})
        data = json.loads(stored["event_data"])
        data["payload"]["record"]["type"] = "A"
        self.assertRaises(jsonschema.ValidationError, validateEntry,
                          {**stored, "event_data": json.dumps(data)})

    @settings(max_examples=100, deadline=None)
    @given(labels=st.lists(st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?\Z"),
                           min_size=1, max_size=4),
           key=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                       min_size=43, max_size=43),
           wildcardApex=st.booleans(), seq=st.integers(1, 2**53))
    def test_everyBuiltEventIsSchemaValid(self, labels, key, wildcardApex, seq):
        zone = ".".join(labels) + "."
        fqdn = zone if wildcardApex else "_acme-challenge." + zone
        event = self.build(req=request(fqdn=fqdn, zone=zone, key=key, dnsName=zone.rstrip(".")))
        validateEntry(withSequence(event.fields, seq))
