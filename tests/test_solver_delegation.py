"""Delegated renewals in memory: the real solver, resolver and follower with a
DelegationOffer over the verified fake store and CNAME checker, on a test clock.

The order that makes a 201 mean "served", eligibility (the takeover case), the offer
in the event, CleanUp, failures, dry runs, retries, and the one delegation_active."""
import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kibaship_dns01.challenge import SolverError
from kibaship_dns01.config import Defaults, SeenIssuerConfigs
from kibaship_dns01.credentials import SecretReader
from kibaship_dns01.delegation.names import DelegationNamer
from kibaship_dns01.delegation.offer import DelegationOffer
from kibaship_dns01.interfaces import IDelegationStore
from kibaship_dns01.progress.service import ProgressService
from kibaship_dns01.resolve import ChallengeResolver
from kibaship_dns01.solver import Solver, TargetFactory
from kibaship_dns01.testing import certmanager as cm
from kibaship_dns01.testing.environment import secret
from kibaship_dns01.testing.eventschema import validateEntry
from kibaship_dns01.testing.fakecname import FakeCNAMEChecker
from kibaship_dns01.testing.fakedelegation import FakeDelegationStore
from kibaship_dns01.testing.fakekube import FakeKubernetesClient
from kibaship_dns01.testing.fakevalkey import FakeStreamPublisher
from kibaship_dns01.testing.kubestore import KubeStore
from kibaship_dns01.valkey.errors import ValkeyUnavailable
from tests.support import LogCapture

DEFAULTS = Defaults()
WINDOW = 8 * 86400.0
KEY_TTL = 86400.0
ZONE = "acme.kibaship.test"
SECRET = b"s" * 32
OTHER_PROJECT = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"


class OrderedStore(FakeDelegationStore):
    """Records, with each add, how many entries the publisher held at that moment."""

    def __init__(self, clock, publisher):
        super().__init__(clock)
        self.publisher = publisher
        self.entriesAtAdd = []

    def add(self, label, key, ttl):
        self.entriesAtAdd.append(sum(len(self.publisher.entries(p)) for p in
                                     (cm.PROJECT_UUID, OTHER_PROJECT)))
        return super().add(label, key, ttl)


class DelegationCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_767_225_600)
        self.store = KubeStore()
        self.store.add(secret(DEFAULTS.valkeyNamespace, DEFAULTS.valkeySecret,
                              {"password": "operator-password"}))
        self.publisher = FakeStreamPublisher(self.clock)
        self.keys = OrderedStore(self.clock, self.publisher)
        self.checker = FakeCNAMEChecker()
        self.namer = DelegationNamer(SECRET, ZONE)
        self.logs = LogCapture(self)
        client = FakeKubernetesClient(self.store)
        self.resolver = ChallengeResolver(client, self.clock, cm.DEFAULT_GROUP, cm.DEFAULT_SOLVER)
        targets = TargetFactory(SecretReader(client, self.clock))
        seen = SeenIssuerConfigs()
        self.offer = DelegationOffer(self.namer, self.keys, self.checker, ("certificates",),
                                     keyTTL=KEY_TTL)
        self.dryRun = False
        self.solver = Solver(self.resolver, self.publisher, targets, self.clock, DEFAULTS,
                             markSeconds=WINDOW, seenConfigs=seen, delegation=self.offer)
        self.progress = ProgressService(client, self.resolver, self.publisher, targets,
                                        self.clock, DEFAULTS, seenConfigs=seen, window=WINDOW,
                                        checker=self.checker)
        self.resolver.startService()
        self.progress.startService()
        self.addCleanup(self.resolver.stopService)
        self.addCleanup(self.progress.stopService)
        self.chain = cm.buildChain().addTo(self.store)
        self.delegation = self.namer.delegationFor(cm.PROJECT_UUID, "shop.example.com")

    def present(self, chain=None, challenge=None, solver=None, **overrides):
        request = (chain or self.chain).request(challenge)
        if overrides:
            request = type(request)(**dict({a: getattr(request, a) for a in (
                "uid", "action", "type", "dnsName", "key", "resourceNamespace", "resolvedFQDN",
                "resolvedZone", "allowAmbientCredentials", "config")}, **overrides))
        return (solver or self.solver).present(request)

    def cleanUp(self, chain=None, challenge=None):
        return self.solver.cleanUp((chain or self.chain).request(challenge, action="CleanUp"))

    def payloads(self, project=cm.PROJECT_UUID):
        return [validateEntry(fields)["payload"] for _, fields in self.publisher.entries(project)]

    def served(self, delegation=None):
        return self.successResultOf(self.keys.keys((delegation or self.delegation).label))

    def key(self, chain=None):
        return (chain or self.chain).challenges[0]["spec"]["key"]


class PresentTests(DelegationCase):
    def test_fakeIsVerified(self):
        self.assertTrue(verifyObject(IDelegationStore, self.keys))

    def test_keyServedBeforeTheEventAndTheCNAMEOffered(self):
        self.successResultOf(self.present())
        self.assertEqual(self.served(), [self.key()])
        self.assertEqual(self.keys.entriesAtAdd, [0], "the key is stored before the append")
        self.assertEqual(self.keys.calls[0], ("add", self.delegation.label, self.key(), KEY_TTL))
        [payload] = self.payloads()
        self.assertEqual(payload["delegation"], {
            "type": "CNAME", "name": "_acme-challenge.shop.example.com",
            "value": self.delegation.label + "." + ZONE, "active": False})
        self.assertEqual(payload["record"]["name"], "_acme-challenge.shop.example.com")
        self.assertEqual(self.checker.calls, [(self.delegation.name, self.delegation.value)])
        [decision] = self.logs.ofKind("challenge_decision")
        self.assertEqual((decision["delegation"], decision["delegation_active"]),
                         (self.delegation.value, False))

    def test_activeAndUnknownAreSaid(self):
        self.checker.delegate(self.delegation.name, self.delegation.value)
        self.successResultOf(self.present())
        self.assertIs(self.payloads()[-1]["delegation"]["active"], True)
        renewal = cm.renewal(self.chain, 2, "renewal")
        renewal.addTo(self.store, certificate=False)
        self.checker.unknown.add(self.delegation.name)
        self.successResultOf(self.present(renewal))
        self.assertIsNone(self.payloads()[-1]["delegation"]["active"])
        self.assertEqual(sorted(self.served()), sorted([self.key(), self.key(renewal)]))

    def test_retryServesAgainWithoutAskingAgain(self):
        """A retry re-adds the key (Valkey may have lost it) but builds no event."""
        request = self.chain.request()
        self.successResultOf(self.solver.present(request))
        self.successResultOf(self.solver.present(request))
        self.assertEqual([c[0] for c in self.keys.calls], ["add", "add"])
        self.assertEqual(len(self.checker.calls), 1)
        self.assertEqual(len(self.payloads()), 1)

    def test_storeFailureFailsThePresentAndAppendsNothing(self):
        self.keys.failWith(ValkeyUnavailable("no primary reachable for slot 42"))
        failure = self.failureResultOf(self.present(), SolverError)
        self.assertIn("could not store the key served at %s (delegated renewals) on the "
                      "daemon's Valkey: no primary reachable for slot 42; cert-manager will "
                      "retry" % (self.delegation.value,), failure.value.message)
        self.assertEqual(self.payloads(), [])
        self.keys.recover()
        self.successResultOf(self.present())
        self.assertEqual(self.served(), [self.key()])

    def test_cleanUpWithdraws(self):
        self.successResultOf(self.present())
        self.successResultOf(self.cleanUp())
        self.assertEqual(self.served(), [])
        self.assertNotIn("delegation", self.payloads()[-1])

    def test_cleanUpStoreFailureIsRetried(self):
        self.successResultOf(self.present())
        self.keys.failWith(ValkeyUnavailable("down"))
        failure = self.failureResultOf(self.cleanUp(), SolverError)
        self.assertIn("could not withdraw the key", failure.value.message)
        self.assertEqual([p["type"] for p in self.payloads()], ["present"])

    def test_keysExpireAfterTheWindow(self):
        self.successResultOf(self.present())
        self.clock.advance(KEY_TTL + 1)
        self.assertEqual(self.served(), [])

    def test_dryRunTouchesNothing(self):
        solver = Solver(self.resolver, self.publisher, TargetFactory(None), self.clock,
                        DEFAULTS, dryRun=True, delegation=self.offer)
        self.successResultOf(self.present(solver=solver))
        self.assertEqual((self.keys.calls, self.checker.calls), ([], []))
        [decision] = self.logs.ofKind("challenge_decision")
        self.assertEqual(json.loads(decision["event"]["event_data"])["payload"]["delegation"]
                         ["active"], None)


class EligibilityTests(DelegationCase):
    """Keys are served under a project's name only for that project's own labelled
    Certificates in the allowed namespaces (docs/configuration.md)."""

    def test_anotherProjectGetsItsOwnName(self):
        other = cm.buildChain(certificateName="ad-shop-2", keySeed="other", labels=dict(
            cm.kibashipLabels(), **{cm.PROJECT_LABEL: OTHER_PROJECT})).addTo(self.store)
        self.successResultOf(self.present(other))
        theirs = self.namer.delegationFor(OTHER_PROJECT, "shop.example.com")
        self.assertNotEqual(theirs.label, self.delegation.label)
        self.assertEqual(self.served(theirs), [self.key(other)])
        self.assertEqual(self.served(), [])

    def test_followedIntoAnotherProjectsNameIsRefused(self):
        other = cm.buildChain(certificateName="ad-shop-2", keySeed="other", labels=dict(
            cm.kibashipLabels(), **{cm.PROJECT_LABEL: OTHER_PROJECT}))
        other.challenges[0]["spec"]["solver"]["dns01"]["cnameStrategy"] = "Follow"
        other.addTo(self.store)
        failure = self.failureResultOf(self.present(
            other, resolvedFQDN=self.delegation.value + ".", resolvedZone=ZONE + "."),
            SolverError)
        self.assertEqual(failure.value.reason, "delegation_foreign")
        self.assertIn("_acme-challenge.shop.example.com is a CNAME to %s, which is not the "
                      "delegation name of project %s" % (self.delegation.value, OTHER_PROJECT),
                      failure.value.message)
        self.assertEqual((self.keys.calls, self.payloads(OTHER_PROJECT)), ([], []))

    def test_followedIntoItsOwnNameIsServed(self):
        self.chain.challenges[0]["spec"]["solver"]["dns01"]["cnameStrategy"] = "Follow"
        self.store.update(self.chain.challenges[0])
        self.successResultOf(self.present(resolvedFQDN=self.delegation.value + ".",
                                          resolvedZone=ZONE + "."))
        self.assertEqual(self.served(), [self.key()])
        [payload] = self.payloads()
        self.assertEqual((payload["delegated"], payload["fqdn"]), (True, self.delegation.value))

    def test_defaultProjectIsNotOffered(self):
        unlabelled = cm.buildChain(certificateName="ad-platform", keySeed="p", labels={},
                                   config={"defaultProjectUUID": OTHER_PROJECT}).addTo(self.store)
        self.successResultOf(self.solver.present(unlabelled.request(config={
            "defaultProjectUUID": OTHER_PROJECT})))
        [payload] = self.payloads(OTHER_PROJECT)
        self.assertNotIn("delegation", payload)
        self.assertEqual((self.keys.calls, self.checker.calls), ([], []))
        [decision] = self.logs.ofKind("challenge_decision")
        self.assertEqual(decision["delegation_skipped"], "default_project")

    def test_otherNamespacesAreNotOffered(self):
        tenant = cm.buildChain(namespace="tenant-a", keySeed="t").addTo(self.store)
        self.successResultOf(self.present(tenant))
        self.assertNotIn("delegation", self.payloads()[-1])
        self.assertEqual(self.keys.calls, [])
        # and a request that followed a CNAME into the zone is refused for them
        following = cm.buildChain(namespace="tenant-a", certificateName="ad-2", keySeed="f")
        following.challenges[0]["spec"]["solver"]["dns01"]["cnameStrategy"] = "Follow"
        following.addTo(self.store)
        failure = self.failureResultOf(self.present(
            following, resolvedFQDN=self.delegation.value + ".", resolvedZone=ZONE + "."),
            SolverError)
        self.assertEqual(failure.value.reason, "delegation_ineligible")
        self.assertIn("namespace tenant-a are not offered delegation", failure.value.message)


class ActivationTests(DelegationCase):
    def status(self, state, reason=""):
        self.clock.advance(10)
        cm.setChallengeStatus(self.store, self.chain.challenges[0], state, reason,
                              at=self.clock.seconds())

    def operations(self):
        return [p["type"] for p in self.payloads()]

    def test_theFirstSightingIsSaidOnce(self):
        self.successResultOf(self.present())
        self.status("pending")
        self.assertEqual(self.operations(), ["present", "status"])
        self.checker.delegate(self.delegation.name, self.delegation.value)  # the user's CNAME
        self.status("pending", cm.propagationReason("shop.example.com"))
        self.status("valid", cm.AUTHORIZED_REASON)
        self.assertEqual(self.operations(),
                         ["present", "status", "delegation_active", "status", "status"])
        active = self.payloads()[2]
        self.assertEqual((active["delegation"], active["challenge_id"]),
                         (self.delegation.asPayload(True), self.payloads()[0]["challenge_id"]))
        # the frontend reads one shape: the keys in the order the present had them
        self.assertEqual(list(active["delegation"]), list(self.payloads()[0]["delegation"]))
        asked = len(self.checker.calls)
        self.status("invalid", "later trouble")  # seen active already: not asked again
        self.assertEqual(len(self.checker.calls), asked)
        self.assertEqual(self.operations().count("delegation_active"), 1)

    def test_notSaidWhenThePresentAlreadySaidActive(self):
        self.checker.delegate(self.delegation.name, self.delegation.value)
        self.successResultOf(self.present())
        self.status("pending", cm.propagationReason("shop.example.com"))
        self.assertEqual(self.operations(), ["present", "status"])
        self.assertEqual(len(self.checker.calls), 1)

    def test_notSaidWhileTheCNAMEIsMissing(self):
        self.successResultOf(self.present())
        self.status("pending", cm.propagationReason("shop.example.com"))
        self.status("valid", cm.AUTHORIZED_REASON)
        self.assertNotIn("delegation_active", self.operations())
        self.assertEqual(len(self.checker.calls), 3)
