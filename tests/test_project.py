"""Tests for kibaship_dns01.project: label validation and ProjectContext."""
import uuid

import attr
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support import LogCapture
from kibaship_dns01 import project
from kibaship_dns01.project import (
    APPLICATION_LABEL, DOMAIN_LABEL, NAME_ANNOTATION, PROJECT_LABEL, SLUG_LABEL, WORKSPACE_LABEL,
    InvalidProjectLabel, IssuerRef, ProjectContext, contextFromLabels, hasProjectLabel,
    isProjectUUID, parseProjectLabels)
from kibaship_dns01.testing.certmanager import (
    APPLICATION_UUID, DOMAIN_UUID, PROJECT_UUID, WORKSPACE_UUID, kibashipLabels)

OTHER_UUID = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"


class UUIDTests(SynchronousTestCase):

    def test_lowerCaseUUID(self):
        self.assertTrue(isProjectUUID(PROJECT_UUID))

    def test_rejects(self):
        for value in (PROJECT_UUID.upper(), PROJECT_UUID.replace("-", ""), "{%s}" % PROJECT_UUID,
                      PROJECT_UUID + "\n", " " + PROJECT_UUID, "", None, 42,
                      PROJECT_UUID[:-1] + "g"):
            self.assertFalse(isProjectUUID(value), value)

    @given(st.uuids())
    def test_anyUUIDStrAccepted(self, value):
        self.assertTrue(isProjectUUID(str(value)))
        self.assertFalse(isProjectUUID(str(value).upper()) and str(value) != str(value).upper())


class ParseLabelsTests(SynchronousTestCase):

    def test_fullSet(self):
        parsed = parseProjectLabels(kibashipLabels(), {NAME_ANNOTATION: "Shop front"})
        self.assertEqual(
            (parsed.projectUUID, parsed.workspaceUUID, parsed.applicationUUID, parsed.domainUUID,
             parsed.slug, parsed.displayName),
            (PROJECT_UUID, WORKSPACE_UUID, APPLICATION_UUID, DOMAIN_UUID, "shop", "Shop front"))

    def test_noLabels(self):
        parsed = parseProjectLabels(None)
        self.assertEqual(parsed, project.ProjectLabels())
        self.assertIsNone(parsed.projectUUID)

    def test_invalidProjectRaises(self):
        labels = kibashipLabels(projectUUID=PROJECT_UUID.upper())
        e = self.assertRaises(InvalidProjectLabel, parseProjectLabels, labels)
        self.assertEqual(e.value, PROJECT_UUID.upper())
        self.assertIn(PROJECT_LABEL, str(e))

    def test_malformedOptionalDroppedWithWarning(self):
        logs = LogCapture(self)
        labels = kibashipLabels(workspaceUUID="not-a-uuid", slug="-bad-", domainUUID="X" * 36)
        parsed = parseProjectLabels(labels, {NAME_ANNOTATION: "bad\x07name"},
                                    where="Certificate certificates/ad-x")
        self.assertEqual(parsed.projectUUID, PROJECT_UUID)
        self.assertEqual(parsed.applicationUUID, APPLICATION_UUID)
        self.assertIsNone(parsed.workspaceUUID)
        self.assertIsNone(parsed.slug)
        self.assertIsNone(parsed.domainUUID)
        self.assertIsNone(parsed.displayName)
        warned = {(e["key"], e["where"]) for e in logs.warnings()}
        self.assertEqual(warned, {(WORKSPACE_LABEL, "Certificate certificates/ad-x"),
                                  (SLUG_LABEL, "Certificate certificates/ad-x"),
                                  (DOMAIN_LABEL, "Certificate certificates/ad-x"),
                                  (NAME_ANNOTATION, "Certificate certificates/ad-x")})

    def test_validOptionalNoWarning(self):
        logs = LogCapture(self)
        parseProjectLabels(kibashipLabels(), {NAME_ANNOTATION: "Shop"})
        self.assertEqual(logs.warnings(), [])

    def test_slugRules(self):
        for good in ("a", "shop", "my-shop-2", "0" * 63):
            self.assertEqual(parseProjectLabels({SLUG_LABEL: good}).slug, good)
        for bad in ("Shop", "a_b", "-a", "a-", "a" * 64, "", "shop\n"):
            self.assertIsNone(parseProjectLabels({SLUG_LABEL: bad}).slug, bad)

    def test_displayNameBounds(self):
        self.assertIsNone(parseProjectLabels({}, {NAME_ANNOTATION: "  "}).displayName)
        self.assertIsNone(parseProjectLabels({}, {NAME_ANNOTATION: "x" * 257}).displayName)
        self.assertEqual(parseProjectLabels({}, {NAME_ANNOTATION: "Été – shop"}).displayName,
                         "Été – shop")

    def test_otherLabelsIgnored(self):
        parsed = parseProjectLabels({"app": "x", APPLICATION_LABEL: APPLICATION_UUID})
        self.assertEqual(parsed.applicationUUID, APPLICATION_UUID)

    def test_hasProjectLabel(self):
        self.assertTrue(hasProjectLabel(kibashipLabels()))
        self.assertFalse(hasProjectLabel(kibashipLabels(projectUUID=None)))
        self.assertFalse(hasProjectLabel(kibashipLabels(projectUUID="nope")))
        self.assertFalse(hasProjectLabel(None))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(st.sampled_from([PROJECT_LABEL, WORKSPACE_LABEL, APPLICATION_LABEL,
                                            DOMAIN_LABEL, SLUG_LABEL, "other"]),
                           st.one_of(st.text(max_size=70), st.uuids().map(str))))
    def test_fuzzNeverKeepsInvalid(self, labels):
        """Whatever the input, every kept value satisfies its rule, and
        only a malformed project label raises."""
        try:
            parsed = parseProjectLabels(labels)
        except InvalidProjectLabel:
            self.assertFalse(isProjectUUID(labels.get(PROJECT_LABEL)))
            return
        for field in ("projectUUID", "workspaceUUID", "applicationUUID", "domainUUID"):
            value = getattr(parsed, field)
            self.assertTrue(value is None or isProjectUUID(value))
        self.assertTrue(parsed.slug is None or project.SLUG_PATTERN.fullmatch(parsed.slug))


class ContextTests(SynchronousTestCase):

    def test_fromLabels(self):
        ref = IssuerRef("certmanager-acme-issuer", "ClusterIssuer")
        ctx = contextFromLabels(kibashipLabels(), {NAME_ANNOTATION: "Shop"},
                                challengeNamespace="certificates", challengeName="ch-1",
                                certificateNamespace="certificates",
                                certificateName="ad-shop-example-com", issuerRef=ref,
                                wildcard=True, orderName="o-1")
        self.assertEqual(ctx.projectUUID, PROJECT_UUID)
        self.assertFalse(ctx.projectFromDefault)
        self.assertEqual(ctx.issuerRef.asDict(), {"name": "certmanager-acme-issuer",
                                                  "kind": "ClusterIssuer",
                                                  "group": "cert-manager.io"})
        self.assertTrue(ctx.wildcard)
        self.assertEqual((ctx.slug, ctx.displayName, ctx.orderName), ("shop", "Shop", "o-1"))

    def test_frozen(self):
        ctx = contextFromLabels(kibashipLabels())
        self.assertRaises(attr.exceptions.FrozenInstanceError, setattr, ctx, "projectUUID", "x")
        self.assertEqual(ctx, contextFromLabels(kibashipLabels()))
        self.assertEqual(hash(ctx), hash(contextFromLabels(kibashipLabels())))

    def test_defaultAppliesOnlyWithoutLabel(self):
        ctx = contextFromLabels({}, defaultProjectUUID=OTHER_UUID)
        self.assertEqual((ctx.projectUUID, ctx.projectFromDefault), (OTHER_UUID, True))
        ctx = contextFromLabels(kibashipLabels(), defaultProjectUUID=OTHER_UUID)
        self.assertEqual((ctx.projectUUID, ctx.projectFromDefault), (PROJECT_UUID, False))

    def test_defaultNeverHidesInvalidLabel(self):
        self.assertRaises(InvalidProjectLabel, contextFromLabels,
                          {PROJECT_LABEL: "Nope"}, defaultProjectUUID=OTHER_UUID)

    def test_missingWithoutDefault(self):
        self.assertRaises(ValueError, contextFromLabels, {})
        self.assertRaises(ValueError, contextFromLabels, {}, defaultProjectUUID="bad")

    def test_issuerRefDefaults(self):
        self.assertEqual(IssuerRef.fromSpec({"name": "le"}), IssuerRef("le", "Issuer",
                                                                       "cert-manager.io"))
        self.assertEqual(IssuerRef.fromSpec(None).name, "")

    def test_requiredFields(self):
        self.assertRaises(TypeError, ProjectContext, projectUUID=str(uuid.uuid4()))
