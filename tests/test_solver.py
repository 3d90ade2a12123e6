"""Present and CleanUp with verified fakes: every branch of the failure policy."""
import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kibaship_dns01 import metrics
from kibaship_dns01.challenge import CLEANUP, PRESENT, SolverError
from kibaship_dns01.config import Defaults, SecretRef
from kibaship_dns01.credentials import SecretReader
from kibaship_dns01.interfaces import IProjectResolver, IStreamPublisher
from kibaship_dns01.kube.errors import Forbidden, Unavailable
from kibaship_dns01.project import IssuerRef, contextFromLabels
from kibaship_dns01.resolve import ChallengeGone, ResolutionError, TransientResolutionError
from kibaship_dns01.solver import Solver, TargetFactory
from kibaship_dns01.testing.certmanager import PROJECT_UUID, buildChain
from kibaship_dns01.testing.environment import secret
from kibaship_dns01.testing.eventschema import validateEntry
from kibaship_dns01.testing.fakekube import FakeKubernetesClient
from kibaship_dns01.testing.fakeresolver import FakeResolver
from kibaship_dns01.testing.fakevalkey import FakeStreamPublisher
from kibaship_dns01.valkey.errors import ValkeyAuthError, ValkeyUnavailable
from tests.support import LogCapture

NS = "cert-manager"
PASSWORD = "hunter2-very-secret"
CONFIG = {"valkey": {"addr": "valkey.team.svc:6379",
                     "passwordSecretRef": {"name": "valkey-auth", "key": "password"}}}


def context():
    return contextFromLabels(
        {"platform.kibaship.com/project-uuid": PROJECT_UUID, "platform.kibaship.com/slug": "shop"},
        challengeNamespace="certificates", challengeName="ch", orderName="o",
        certificateNamespace="certificates", certificateName="ad-shop-example-com",
        issuerRef=IssuerRef("certmanager-acme-issuer", "ClusterIssuer"))


def sample(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class SolverTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.kube = FakeKubernetesClient()
        self.kube.store.add(secret(NS, "valkey-auth", {"password": PASSWORD, "other": "x"}))
        self.kube.store.add(secret("kibaship-operator", "kibaship-valkey-cluster-kibaship-com",
                                   {"only": PASSWORD}))
        self.publisher = FakeStreamPublisher(self.clock)
        self.resolver = FakeResolver(context())
        self.secrets = SecretReader(self.kube, self.clock)
        self.logs = LogCapture(self)

    def solver(self, dryRun=False):
        return Solver(self.resolver, self.publisher, TargetFactory(self.secrets), self.clock,
                      Defaults(), dryRun=dryRun)

    def request(self, action=PRESENT, config=CONFIG):
        chain = buildChain()
        return chain.request(resourceNamespace=NS, action=action, config=config)

    def solve(self, action=PRESENT, config=CONFIG, dryRun=False):
        s = self.solver(dryRun)
        call = s.present if action == PRESENT else s.cleanUp
        return call(self.request(action, config))

    def decisions(self):
        return self.logs.ofKind("challenge_decision")

    def entries(self):
        return self.publisher.entries(PROJECT_UUID)

    def test_fakesAreVerified(self):
        verifyObject(IStreamPublisher, self.publisher)
        verifyObject(IProjectResolver, self.resolver)

    def test_presentAppendsOneSchemaValidEntry(self):
        before = sample("kibaship_dns01_solver_requests_total", action=PRESENT, outcome="success")
        self.successResultOf(self.solve())
        [(entryId, fields)] = self.entries()
        data = validateEntry(fields)
        self.assertEqual((fields["operation"], fields["sequence"], fields["resource_slug"]),
                         ("present", "1", "shop"))
        self.assertEqual(data["payload"]["certificate"], "ad-shop-example-com")
        [(_, target, project, key)] = self.publisher.calls
        self.assertEqual(target.seeds, ("valkey.team.svc:6379",))
        self.assertEqual(key, f"{fields['resource_uuid']}:present")
        self.assertEqual(self.resolver.calls[0][1], None)
        [decision] = self.decisions()
        self.assertEqual((decision["outcome"], decision["entry_id"], decision["project_uuid"],
                          decision["stream"], decision["duplicate"]),
                         ("success", entryId, PROJECT_UUID,
                          "{project:%s}:events" % PROJECT_UUID, False))
        self.assertEqual(sample("kibaship_dns01_solver_requests_total", action=PRESENT,
                                outcome="success"), before + 1)

    def test_retriedPresentAppendsNothing(self):
        self.successResultOf(self.solve())
        self.successResultOf(self.solve())
        self.assertEqual(len(self.entries()), 1)
        self.assertEqual([d["duplicate"] for d in self.decisions()], [False, True])

    def test_aRetryThisProcessAppendedIsConfirmedNotRebuilt(self):
        """The retry asks Valkey whether the record still stands (one small probe)
        instead of building and sending the whole event again."""
        solver = self.solver()
        request = self.request()
        self.successResultOf(solver.present(request))
        self.successResultOf(solver.present(request))
        self.assertEqual([c[0] for c in self.publisher.calls], ["append", "confirm"])
        self.assertEqual(len(self.entries()), 1)
        first, retry = self.decisions()
        self.assertEqual((retry["duplicate"], retry["entry_id"], retry["sequence"]),
                         (True, first["entry_id"], first["sequence"]))
        self.assertNotIn("event_id", retry, "no event was built for the retry")

    def test_aRecordLostMeanwhileIsAppendedAgain(self):
        """A failover can lose an acknowledged record (minReplicas 0): the probe misses and
        the retry appends in full, so the user still gets the instruction."""
        solver = self.solver()
        request = self.request()
        self.successResultOf(solver.present(request))
        [(_, target, project, key)] = self.publisher.calls
        self.publisher.forget(target, project, key)
        self.successResultOf(solver.present(request))
        self.assertEqual([c[0] for c in self.publisher.calls], ["append", "confirm", "append"])
        self.assertEqual(len(self.entries()), 2)
        self.assertEqual(self.decisions()[1]["duplicate"], False)

    def test_aFailedConfirmationFailsThePresentClearly(self):
        solver = self.solver()
        request = self.request()
        self.successResultOf(solver.present(request))
        self.publisher.failNext(ValkeyUnavailable("no primary answered"), method="confirm")
        failure = self.failureResultOf(solver.present(request), SolverError)
        self.assertIn("could not append the present event", failure.value.message)
        self.assertIn("no primary answered", failure.value.message)

    def test_cleanUpAppendsOneCleanupEntry(self):
        self.successResultOf(self.solve())
        self.successResultOf(self.solve(CLEANUP))
        self.successResultOf(self.solve(CLEANUP))
        ops = [f["operation"] for _, f in self.entries()]
        self.assertEqual(ops, ["present", "cleanup"])
        validateEntry(self.entries()[1][1])

    def test_passwordComesFromTheNamedSecretKeyAndIsNeverLogged(self):
        self.successResultOf(self.solve())
        target = self.publisher.calls[0][1]
        self.assertEqual(self.successResultOf(target.credentials()), PASSWORD)
        self.assertEqual(target.credentialsSource, "Secret cert-manager/valkey-auth key password")
        self.assertNotIn(PASSWORD, repr(self.logs.events))

    def test_defaultConfigUsesTheOperatorsSingleKeySecret(self):
        self.successResultOf(self.solve(config=None))
        target = self.publisher.calls[0][1]
        self.assertEqual(target.seeds, (Defaults().addr,))
        self.assertEqual(self.successResultOf(target.credentials()), PASSWORD)

    def test_defaultSecretWithSeveralKeysIsAClearError(self):
        self.kube.store.update(secret("kibaship-operator", "kibaship-valkey-cluster-kibaship-com",
                                      {"a": "1", "b": "2"}))
        e = self.failureResultOf(self.solve(config=None), SolverError).value
        self.assertIn("must hold exactly one key (the Valkey password) but holds 2", e.message)
        self.assertEqual(self.publisher.calls, [])

    def test_cleanUpFinishesWhenThePasswordSecretIsGone(self):
        self.kube.store.delete("v1", "Secret", NS, "valkey-auth")
        e = self.failureResultOf(self.solve(), SolverError).value
        self.assertIn("Secret cert-manager/valkey-auth not found", e.message)
        self.successResultOf(self.solve(CLEANUP))
        self.assertEqual((self.entries(), self.decisions()[-1]["outcome"]), ([], "unresolved"))

    def test_secretReadsAreBoundedInTime(self):
        from kibaship_dns01.testing.fakekube import FakeKubernetesClient as Fake

        class Hanging(Fake):
            def get(self, path, params=None):
                return defer.Deferred()

        reader = SecretReader(Hanging(), self.clock, timeout=10)
        d = reader.read(SecretRef(NS, "valkey-auth", "password"))
        self.assertNoResult(d)
        self.clock.advance(10)
        e = self.failureResultOf(d, SolverError).value
        self.assertIn("took longer than 10s", e.message)
        self.assertTrue(e.transient)

    def test_secretCacheExpiresAndForgets(self):
        ref = SecretRef(NS, "valkey-auth", "password")
        self.assertEqual(self.successResultOf(self.secrets.read(ref)), PASSWORD.encode())
        self.kube.store.put(secret(NS, "valkey-auth", {"password": "new", "other": "x"}))
        self.assertEqual(self.successResultOf(self.secrets.read(ref)), PASSWORD.encode())
        self.clock.advance(31)
        self.assertEqual(self.successResultOf(self.secrets.read(ref)), b"new")
        self.clock.advance(31)
        self.assertEqual(self.successResultOf(
            self.secrets.read(SecretRef(NS, "valkey-auth", "other"))), b"x")
        self.assertEqual(len(self.secrets._cache), 1)  # the expired entry is gone

    def test_lastValueStandsInWhileTheAPIServerCannotBeAsked(self):
        """Found by bench/drills/apifaults.py: 30 s into an API server restart every
        cached Present failed on its password Secret; now the last value stands in,
        for ``staleTTL`` at most, and never once Valkey rejected it."""
        ref = SecretRef(NS, "valkey-auth", "password")
        reader = SecretReader(self.kube, self.clock, staleTTL=600)
        self.successResultOf(reader.read(ref))
        self.clock.advance(31)
        self.kube.injectError(Unavailable("api down"), verb="get", times=2)
        self.assertEqual(self.successResultOf(reader.read(ref)), PASSWORD.encode())
        self.clock.advance(600)
        self.assertTrue(self.failureResultOf(reader.read(ref), SolverError).value.transient)
        self.successResultOf(reader.read(ref))
        reader.invalidate(ref)
        self.kube.injectError(Unavailable("api down"), verb="get")
        self.failureResultOf(reader.read(ref), SolverError)

    def test_aMissingSecretIsNoReasonToUseTheLastValue(self):
        ref = SecretRef(NS, "valkey-auth", "password")
        self.successResultOf(self.secrets.read(ref))
        self.clock.advance(31)
        self.kube.store.delete(secret(NS, "valkey-auth", {}))
        e = self.failureResultOf(self.secrets.read(ref), SolverError).value
        self.assertIn("not found", e.message)

    def test_rejectedPasswordIsReadAgain(self):
        self.successResultOf(self.solve())
        target = self.publisher.calls[0][1]
        self.successResultOf(target.credentials())
        self.kube.store.update(secret(NS, "valkey-auth", {"password": "rotated", "other": "x"}))
        self.assertEqual(self.successResultOf(target.credentials()), PASSWORD)  # cached
        target.invalidateCredentials()
        self.assertEqual(self.successResultOf(target.credentials()), "rotated")

    def test_configErrorsFailPresentAndNameTheField(self):
        bad = {"valkey": {"passwordSecretRef": {"name": "s", "namespace": "kube-system"}}}
        e = self.failureResultOf(self.solve(config=bad), SolverError).value
        self.assertIn("invalid issuer webhook config: config.valkey.passwordSecretRef.namespace",
                      e.message)
        self.assertEqual((self.entries(), self.kube.countCalls("get")), ([], 0))

    def test_configErrorsDoNotBlockCleanUp(self):
        self.successResultOf(self.solve(CLEANUP, config={"typo": 1}))
        self.assertEqual(self.entries(), [])
        [d] = self.decisions()
        self.assertEqual((d["outcome"], d["reason"]), ("unresolved", "config"))

    def test_missingSecretFailsPresentClearly(self):
        config = dict(CONFIG, valkey=dict(CONFIG["valkey"], tls=True,
                                          caSecretRef={"name": "valkey-ca"}))
        e = self.failureResultOf(self.solve(config=config), SolverError).value
        self.assertIn("Secret cert-manager/valkey-ca not found", e.message)
        self.assertEqual(self.entries(), [])

    def test_forbiddenSecretSaysWhichRBACIsMissing(self):
        self.kube.injectError(Forbidden("secrets is forbidden"), verb="get")
        config = dict(CONFIG, valkey=dict(CONFIG["valkey"], caSecretRef={"name": "valkey-ca"}))
        e = self.failureResultOf(self.solve(config=config), SolverError).value
        self.assertIn("grant its ServiceAccount get on secrets in namespace cert-manager",
                      e.message)

    def test_resolutionErrorFailsPresentWithItsMessage(self):
        self.resolver.outcome = ResolutionError("Certificate certificates/x has no label y", "x")
        e = self.failureResultOf(self.solve(), SolverError).value
        self.assertEqual(e.message, "Certificate certificates/x has no label y")
        self.assertEqual(self.entries(), [])

    def test_cleanUpOfAVanishedChallengeSucceeds(self):
        before = sample("kibaship_dns01_solver_requests_total", action=CLEANUP,
                        outcome="unresolved")
        self.resolver.outcome = ChallengeGone("Order certificates/o no longer exists", "gone")
        self.successResultOf(self.solve(CLEANUP))
        self.assertEqual(self.entries(), [])
        self.assertEqual(sample("kibaship_dns01_solver_requests_total", action=CLEANUP,
                                outcome="unresolved"), before + 1)

    def test_cleanUpRetriesWhenRBACForbidsReadingTheChain(self):
        self.resolver.outcome = ResolutionError("cannot read Order certificates/o", "forbidden")
        self.failureResultOf(self.solve(CLEANUP), SolverError)

    def test_cleanUpWithoutAProjectLabelSucceeds(self):
        self.resolver.outcome = ResolutionError("Certificate x has no label", "label_missing")
        self.successResultOf(self.solve(CLEANUP))
        self.assertEqual(self.entries(), [])

    def test_cleanUpRetriesTransientAPITrouble(self):
        self.resolver.outcome = TransientResolutionError("reading Order failed", "api_error")
        self.failureResultOf(self.solve(CLEANUP), SolverError)

    def test_valkeyDownFailsPresentSoCertManagerRetries(self):
        self.publisher.failNext(ValkeyUnavailable("could not reach Valkey cluster at x:1"))
        e = self.failureResultOf(self.solve(), SolverError).value
        self.assertIn("could not append the present event for _acme-challenge.shop.example.com."
                      " to Valkey stream {project:", e.message)
        self.assertIn("could not reach Valkey cluster at x:1", e.message)
        self.assertIn("cert-manager will retry", e.message)
        self.successResultOf(self.solve())  # the retry appends exactly once
        self.assertEqual(len(self.entries()), 1)

    def test_lostReplyRetryIsADuplicate(self):
        self.publisher.failNext(ValkeyUnavailable("connection lost"), afterAppend=True)
        self.failureResultOf(self.solve(), SolverError)
        self.successResultOf(self.solve())
        self.assertEqual(len(self.entries()), 1)

    def test_cleanUpReportsValkeyFailure(self):
        self.publisher.failNext(ValkeyAuthError("WRONGPASS"))
        self.failureResultOf(self.solve(CLEANUP), SolverError)

    def test_dryRunBuildsLogsAndAppendsNothing(self):
        self.successResultOf(self.solve(dryRun=True))
        self.assertEqual((self.entries(), self.publisher.calls), ([], []))
        [d] = self.decisions()
        self.assertEqual(d["outcome"], "dry_run")
        self.assertEqual(json.loads(d["event"]["event_data"])["payload"]["type"], "present")

    def test_defaultProjectUUIDReachesTheResolver(self):
        config = dict(CONFIG, defaultProjectUUID="9b6a1a3e-1111-4222-8333-444455556666")
        self.successResultOf(self.solve(config=config))
        self.assertEqual(self.resolver.calls[0][1], "9b6a1a3e-1111-4222-8333-444455556666")

    def test_unavailableSecretIsTransientForCleanUp(self):
        self.kube.injectError(Unavailable("api down"), verb="get")
        config = dict(CONFIG, valkey=dict(CONFIG["valkey"], caSecretRef={"name": "valkey-ca"}))
        self.failureResultOf(self.solve(CLEANUP, config=config), SolverError)
