"""Progress events end to end in memory: the real solver, resolver, follower and watcher
over the verified fake API client and the fake publisher, on a test clock."""
import copy
import gc
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.config import Defaults, SeenIssuerConfigs
from kibaship_dns01.credentials import SecretReader
from kibaship_dns01.events import presentMark
from kibaship_dns01.progress import phases
from kibaship_dns01.progress.certificates import (
    certificateRecord, decisions, recordIdentity, recordVersion, trimCertificate)
from kibaship_dns01.progress.jobs import KeyedJobs
from kibaship_dns01.progress.service import ProgressService
from kibaship_dns01.resolve import ChallengeResolver
from kibaship_dns01.solver import Solver, TargetFactory
from kibaship_dns01.testing import certmanager as cm
from kibaship_dns01.testing.environment import secret
from kibaship_dns01.testing.eventschema import validateEntry
from kibaship_dns01.testing.fakekube import FakeKubernetesClient
from kibaship_dns01.testing.fakevalkey import FakeStreamPublisher
from kibaship_dns01.testing.kubestore import KubeStore
from kibaship_dns01.valkey.errors import ValkeyUnavailable
from tests.support import LogCapture

GROUP, SOLVER = cm.DEFAULT_GROUP, cm.DEFAULT_SOLVER
DEFAULTS = Defaults()
WINDOW = 8 * 86400.0
START = 1_767_225_600.0
OTHER_PROJECT = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"


class Replica:
    """One daemon's worth of services (resolver, solver, progress) on a shared store
    and publisher: two of them are two replicas."""

    def __init__(self, store, publisher, clock, refreshInterval=0.0):
        self.client = FakeKubernetesClient(store)
        self.resolver = ChallengeResolver(self.client, clock, GROUP, SOLVER)
        targets = TargetFactory(SecretReader(self.client, clock))
        seen = SeenIssuerConfigs()
        self.solver = Solver(self.resolver, publisher, targets, clock, DEFAULTS,
                             markSeconds=WINDOW, seenConfigs=seen)
        self.progress = ProgressService(self.client, self.resolver, publisher, targets, clock,
                                        DEFAULTS, seenConfigs=seen, window=WINDOW,
                                        refreshInterval=refreshInterval)

    def start(self):
        self.resolver.startService()
        self.progress.startService()
        return self

    def stop(self):
        self.progress.stopService()
        self.resolver.stopService()


class ProgressCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.store = KubeStore()
        self.store.add(secret(DEFAULTS.valkeyNamespace, DEFAULTS.valkeySecret,
                              {"password": "operator-password"}))
        self.publisher = FakeStreamPublisher(self.clock)
        self.logs = LogCapture(self)

    def replica(self, **kw):
        replica = Replica(self.store, self.publisher, self.clock, **kw).start()
        self.addCleanup(replica.stop)
        return replica

    def entries(self, project=cm.PROJECT_UUID):
        return [fields for _, fields in self.publisher.entries(project)]

    def summary(self, project=cm.PROJECT_UUID):
        """(operation, phase or revision) per entry, every entry schema-checked."""
        out = []
        for fields in self.entries(project):
            data = validateEntry(fields)
            payload = data["payload"]
            out.append((fields["operation"], payload.get("phase", payload.get("revision"))))
        return out

    def present(self, replica, chain, challenge=None):
        self.successResultOf(replica.solver.present(chain.request(challenge)))

    def status(self, challenge, state, reason="", presented=True, processing=True):
        self.clock.advance(10)
        cm.setChallengeStatus(self.store, challenge, state, reason, presented, processing,
                              at=self.clock.seconds())

    def skippedTopics(self):
        return [e["topic"] for e in self.logs.ofKind("progress_skipped")]


class LifecycleTests(ProgressCase):
    def test_goodRunFromPresentToIssued(self):
        chain = cm.buildChain().addTo(self.store)
        replica = self.replica()
        challenge = chain.challenges[0]
        self.present(replica, chain)
        self.status(challenge, "pending")
        self.status(challenge, "pending", cm.propagationReason("shop.example.com"))
        # another recheck, another wording, the same phase: nothing new
        self.status(challenge, "pending", cm.propagationReason("shop.example.com") + " ")
        self.status(challenge, "valid", cm.AUTHORIZED_REASON)
        self.clock.advance(30)
        cm.setCertificateIssued(self.store, chain.certificate, 1, at=self.clock.seconds())
        self.successResultOf(replica.solver.cleanUp(chain.request(action="CleanUp")))
        self.assertEqual(self.summary(), [
            ("present", None), ("status", phases.PENDING), ("status", phases.WAITING_FOR_DNS),
            ("status", phases.VERIFIED), ("issued", 1), ("cleanup", None)])
        entries = self.entries()
        self.assertEqual([int(f["sequence"]) for f in entries], list(range(1, 7)))
        present, waiting = (json.loads(entries[i]["event_data"])["payload"] for i in (0, 2))
        # the status repeats the present's challenge id and record
        self.assertEqual(waiting["challenge_id"], present["challenge_id"])
        self.assertEqual(waiting["record"], present["record"])
        self.assertEqual(entries[2]["resource_uuid"], entries[0]["resource_uuid"])
        self.assertEqual((waiting["state"], waiting["final"], waiting["presented"]),
                         ("pending", False, True))
        self.assertEqual(waiting["reason"], cm.propagationReason("shop.example.com"))
        self.assertEqual(waiting["checkedAt"], "2026-01-01T00:00:20Z")
        issued = json.loads(entries[4]["event_data"])["payload"]
        self.assertEqual((issued["certificate"], issued["revision"], issued["dnsNames"]),
                         ("ad-shop-example-com", 1, ["shop.example.com"]))
        self.assertIn("notAfter", issued)

    def test_caRefusesAWrongRecordThenIssuanceFails(self):
        chain = cm.buildChain().addTo(self.store)
        replica = self.replica()
        challenge = chain.challenges[0]
        self.present(replica, chain)
        self.status(challenge, "pending", cm.propagationReason("shop.example.com"))
        self.status(challenge, "invalid", cm.wrongValueReason("shop.example.com"),
                    processing=False)
        self.clock.advance(5)
        cm.setCertificateFailed(self.store, chain.certificate, 'Failed to wait for order'
                                ' resource "x" to become ready: order is in "invalid" state',
                                at=self.clock.seconds())
        self.assertEqual(self.summary(), [
            ("present", None), ("status", phases.WAITING_FOR_DNS),
            ("status", phases.WRONG_VALUE), ("failed", 1)])
        failed = json.loads(self.entries()[-1]["event_data"])["payload"]
        self.assertEqual((failed["failedIssuanceAttempts"], failed["reason"]), (1, "Failed"))
        self.assertIn('order is in "invalid" state', failed["message"])

    def test_nothingBeforeThePresentIsRecorded(self):
        """cert-manager's status before our Present succeeded says nothing (no mark, and
        presented is false)."""
        chain = cm.buildChain().addTo(self.store)
        replica = self.replica()
        self.status(chain.challenges[0], "pending", "some PresentError", presented=False)
        self.assertEqual(self.entries(), [])
        self.present(replica, chain)
        self.assertEqual(self.summary(), [("present", None)])

    def test_presentThatPredatesProgressEventsGetsNoStatus(self):
        chain = cm.buildChain().addTo(self.store)
        replica = self.replica()
        replica.solver._markSeconds = None  # a Present from before this version: no mark
        self.present(replica, chain)
        self.status(chain.challenges[0], "pending", cm.propagationReason("shop.example.com"))
        self.assertEqual(self.summary(), [("present", None)])
        self.assertEqual(self.skippedTopics(), ["no_present"])


class ExactlyOnceTests(ProgressCase):
    def test_twoReplicasLandEachTransitionOnce(self):
        chain = cm.buildChain().addTo(self.store)
        first, second = self.replica(), self.replica()
        challenge = chain.challenges[0]
        self.present(first, chain)
        self.status(challenge, "pending", cm.propagationReason("shop.example.com"))
        self.status(challenge, "valid", cm.AUTHORIZED_REASON)
        cm.setCertificateIssued(self.store, chain.certificate, 1, at=self.clock.seconds())
        self.assertEqual(self.summary(), [
            ("present", None), ("status", phases.WAITING_FOR_DNS),
            ("status", phases.VERIFIED), ("issued", 1)])
        # the second replica never served the Present, yet walked the chain itself
        self.assertTrue(any(c.verb == "get" for c in second.client.calls))
        decided = [(e["operation"], e["duplicate"]) for e in self.logs.ofKind("progress_event")]
        self.assertEqual(sorted(decided), sorted([("status", False), ("status", True)] * 2
                                                 + [("issued", False), ("issued", True)]))

    def test_restartAndRelistAddNothing(self):
        chain = cm.buildChain().addTo(self.store)
        replica = self.replica()
        challenge = chain.challenges[0]
        self.present(replica, chain)
        self.status(challenge, "pending", cm.propagationReason("shop.example.com"))
        cm.setCertificateIssued(self.store, chain.certificate, 1, at=self.clock.seconds())
        before = self.entries()
        replica.stop()
        self.clock.advance(3600)
        restarted = self.replica()
        self.store.expireWatches()  # and a relist on top
        self.clock.advance(60)
        self.assertTrue(restarted.progress.certificates.informer.relists >= 1)
        self.assertEqual(self.entries(), before)

    def test_certificatesListedOnceTheResolverIsReady(self):
        """/readyz waits for the Challenge and Order caches, not for Certificates:
        their sync (a WatchList stream here) waits, so a restart's CPU goes first
        to what readiness needs."""
        cm.buildChain().addTo(self.store)
        replica = Replica(self.store, self.publisher, self.clock)
        replica.client.injectError(503, verb="list", path="/apis/acme.cert-manager.io/v1/orders")
        replica.start()
        self.addCleanup(replica.stop)

        def certificateLists():
            return [c for c in replica.client.calls if "/certificates" in c.path]
        self.assertFalse(replica.resolver.isReady())
        self.assertEqual(certificateLists(), [])
        self.clock.advance(60)  # the Order cache's retry
        self.assertTrue(replica.resolver.isReady())
        self.assertEqual([(c.verb, c.params.get("sendInitialEvents")) for c in certificateLists()],
                         [("watch", "true")])
        self.assertEqual(len(replica.progress.certificates.informer), 1)

    def test_transientValkeyFailureIsRetried(self):
        chain = cm.buildChain().addTo(self.store)
        replica = self.replica()
        self.present(replica, chain)
        self.publisher.failNext(ValkeyUnavailable("down for a moment"), method="read")
        self.status(chain.challenges[0], "pending", cm.propagationReason("shop.example.com"))
        self.assertEqual(self.summary(), [("present", None)])
        self.clock.advance(10)
        self.assertEqual(self.summary(), [("present", None), ("status", phases.WAITING_FOR_DNS)])


class NotOursTests(ProgressCase):
    def test_otherSolverAddsNothingAndSaysSoOnce(self):
        chain = cm.buildChain(solverName="someone-else").addTo(self.store)
        self.replica()
        for reason in ("a", "b"):
            self.status(chain.challenges[0], "pending", reason)
        self.assertEqual(self.publisher.calls, [])
        lines = self.logs.ofKind("progress_skipped")
        self.assertEqual([e["topic"] for e in lines], ["other_solver"])
        self.assertIn("is solved by webhook dns.kibaship.com/someone-else", lines[0]["log_format"]
                      .format(**lines[0]))

    def test_unresolvableChallengeAddsNothingAndSaysSoOnce(self):
        chain = cm.buildChain(labels={}).addTo(self.store)
        self.replica()
        self.status(chain.challenges[0], "pending", cm.propagationReason("shop.example.com"))
        self.status(chain.challenges[0], "valid", cm.AUTHORIZED_REASON)
        self.assertEqual([c[0] for c in self.publisher.calls], [])
        self.assertEqual(self.skippedTopics(), ["unresolved"])
        line = self.logs.ofKind("progress_skipped")[0]
        self.assertIn("has no label platform.kibaship.com/project-uuid", line["why"])

    def test_unlabelledCertificateGetsStatusButNoIssued(self):
        config = {"defaultProjectUUID": OTHER_PROJECT}
        chain = cm.buildChain(labels={}, config=config).addTo(self.store)
        replica = self.replica()
        self.successResultOf(replica.solver.present(chain.request(config=config)))
        self.status(chain.challenges[0], "pending", cm.propagationReason("shop.example.com"))
        cm.setCertificateIssued(self.store, chain.certificate, 1, at=self.clock.seconds())
        self.assertEqual(self.summary(OTHER_PROJECT),
                         [("present", None), ("status", phases.WAITING_FOR_DNS)])
        self.assertEqual(self.skippedTopics(), ["unlabelled_certificate"])

    def test_certificateIssuedWithoutOurChallengesAddsNothing(self):
        """A labelled Certificate whose revision was not presented by us (another solver,
        or an authorization the CA reused): the mark does not match."""
        chain = cm.buildChain().addTo(self.store)
        replica = self.replica()
        self.present(replica, chain)  # revision 1
        cm.setCertificateIssued(self.store, chain.certificate, 2, at=self.clock.seconds())
        self.assertEqual(self.summary(), [("present", None)])
        self.assertEqual(self.skippedTopics(), ["not_ours:issued:2"])


class ForgedChallengeTests(ProgressCase):
    CONFIG = {"valkey": {"addr": "valkey.attacker.example:6379",
                         "passwordSecretRef": {"name": "valkey-auth", "key": "password"}}}

    def test_clusterIssuerSecretsOnlyForAConfigARequestCarried(self):
        """A Challenge anyone may create, naming a ClusterIssuer and an address of their
        choosing, must not make the daemon read cert-manager's Secrets and send them there."""
        self.store.add(secret("cert-manager", "valkey-auth", {"password": "s3cret"}))
        chain = cm.buildChain(config=self.CONFIG).addTo(self.store)
        replica = self.replica()
        self.status(chain.challenges[0], "pending", cm.propagationReason("shop.example.com"))
        self.assertEqual(self.skippedTopics(), ["unconfirmed_config"])
        self.assertFalse(any("/secrets/" in c.path for c in replica.client.calls))
        self.assertEqual(self.publisher.calls, [])
        # once cert-manager sent a request with that config, the config is the issuer's
        request = chain.request(resourceNamespace="cert-manager", config=self.CONFIG)
        self.successResultOf(replica.solver.present(request))
        self.status(chain.challenges[0], "pending", cm.propagationReason("shop.example.com")
                    + "!")  # same phase: already decided, nothing new
        self.status(chain.challenges[0], "valid", cm.AUTHORIZED_REASON)
        self.assertEqual(self.summary(), [("present", None), ("status", phases.VERIFIED)])

    def test_issuerChallengesUseTheirOwnNamespace(self):
        issuer = {"name": "team-issuer", "kind": "Issuer", "group": "cert-manager.io"}
        self.store.add(secret("certificates", "valkey-auth", {"password": "team"}))
        chain = cm.buildChain(config=self.CONFIG, issuerRef=issuer).addTo(self.store)
        replica = self.replica()
        self.status(chain.challenges[0], "pending", cm.propagationReason("shop.example.com"))
        self.assertNotIn("unconfirmed_config", self.skippedTopics())
        self.assertIn("/api/v1/namespaces/certificates/secrets/valkey-auth",
                      [c.path for c in replica.client.calls])


class RefreshTests(ProgressCase):
    def test_remindersAreBoundedAndOncePerInterval(self):
        chain = cm.buildChain().addTo(self.store)
        first = self.replica(refreshInterval=600.0)
        self.replica(refreshInterval=600.0)
        first.progress.follower._maxReminders = 3
        self.present(first, chain)
        self.status(chain.challenges[0], "pending", cm.propagationReason("shop.example.com"))
        for _ in range(30):
            self.clock.advance(300)
        reminders = [json.loads(f["event_data"])["payload"].get("reminder")
                     for f in self.entries() if f["operation"] == "status"]
        # the first replica stops at 3; the second (24) covers the rest, each number once
        self.assertEqual(reminders, [None] + list(range(1, 16)))


class WaitingForDNSMetricsTests(ProgressCase):
    """The gauges behind the alert for a user who never added the record."""

    def gauges(self):
        from kibaship_dns01 import metrics
        return (metrics.REGISTRY.get_sample_value("kibaship_dns01_challenges_waiting_for_dns"),
                metrics.REGISTRY.get_sample_value(
                    "kibaship_dns01_challenge_waiting_for_dns_oldest_seconds"))

    def test_oldestWaitingCountsFromItsPresentUntilItMovesOn(self):
        first = cm.buildChain().addTo(self.store)
        second = cm.buildChain("ad-other-example-com", dnsNames=("other.example.com",),
                               keySeed="other").addTo(self.store)
        replica = self.replica()
        self.assertEqual(self.gauges(), (0, 0))
        self.present(replica, first)
        presented = self.clock.seconds()
        self.status(first.challenges[0], "pending")
        self.assertEqual(self.gauges(), (0, 0), "pending is not waiting for DNS yet")
        self.status(first.challenges[0], "pending", cm.propagationReason("shop.example.com"))
        self.clock.advance(3600)
        self.present(replica, second)
        secondPresented = self.clock.seconds()
        self.status(second.challenges[0], "pending", cm.propagationReason("other.example.com"))
        self.clock.advance(7200)
        self.assertEqual(self.gauges(), (2, self.clock.seconds() - presented))
        self.status(first.challenges[0], "valid", cm.AUTHORIZED_REASON)
        self.assertEqual(self.gauges(), (1, self.clock.seconds() - secondPresented))
        self.store.delete(second.challenges[0])
        self.assertEqual(self.gauges(), (0, 0))
def _withoutEventID(fields):
    """An entry's fields less its random ``event_id`` (twice: field and envelope)."""
    fields = {k: v for k, v in fields.items() if k != "event_id"}
    data = json.loads(fields["event_data"])
    data.pop("event_id", None)
    fields["event_data"] = data
    return fields


class CompactRecordTests(ProgressCase):
    """The Certificate cache keeps a :func:`certificateRecord`, not a copy."""

    def lifecycle(self, chain, fullCopies):
        """Present, a status, a failed attempt, issued, deleted: the entries, with the
        cache storing records or (``fullCopies``) trimmed dicts as before."""
        clock = Clock()
        clock.advance(START)
        store = KubeStore()
        store.add(secret(DEFAULTS.valkeyNamespace, DEFAULTS.valkeySecret,
                         {"password": "operator-password"}))
        publisher = FakeStreamPublisher(clock)
        replica = Replica(store, publisher, clock)
        informer = replica.progress.certificates.informer
        if fullCopies:
            informer._trim, informer._view = trimCertificate, None
            informer._version = lambda cert: cert["metadata"]["resourceVersion"]
        replica.start()
        self.addCleanup(replica.stop)
        chain.addTo(store)
        self.successResultOf(replica.solver.present(chain.request()))
        clock.advance(60)
        cm.setChallengeStatus(store, chain.challenges[0], "pending",
                              cm.propagationReason("shop.example.com"), at=clock.seconds())
        clock.advance(60)
        cm.setCertificateFailed(store, chain.certificate, "the CA said no", at=clock.seconds())
        clock.advance(3600)
        cm.setCertificateIssued(store, chain.certificate, 1, at=clock.seconds())
        stored = informer.get(chain.certificate["metadata"]["namespace"],
                              chain.certificate["metadata"]["name"])
        chain.removeFrom(store)
        clock.advance(60)
        return [_withoutEventID(fields) for _, fields in publisher.entries(cm.PROJECT_UUID)], stored

    def test_sameEventsAsAFullCopyCache(self):
        chain = cm.buildChain()
        compact, record = self.lifecycle(copy.deepcopy(chain), fullCopies=False)
        full, trimmed = self.lifecycle(copy.deepcopy(chain), fullCopies=True)
        self.assertEqual([f["operation"] for f in compact],
                         ["present", "status", "failed", "issued"])
        self.assertEqual(compact, full)
        self.assertIsInstance(trimmed, dict)
        self.assertEqual(recordIdentity(record) + (recordVersion(record),),
                         ("certificates", "ad-shop-example-com",
                          chain.certificate["metadata"]["uid"],
                          int(trimmed["metadata"]["resourceVersion"])))
        gc.collect()
        self.assertFalse(gc.is_tracked(record))  # full collections pass over records

    def test_aCertificateGoneWhileDownIsForgotten(self):
        """A relist that no longer finds a Certificate hands its record to the
        watcher, which forgets its issuer's Valkey and its notes."""
        chain = cm.buildChain().addTo(self.store)
        replica = self.replica()
        self.present(replica, chain)
        self.status(chain.challenges[0], "pending")
        self.assertEqual(len(replica.progress.book), 1)
        replica.client.injectError(503, verb="watch", path="/apis/cert-manager.io")
        self.store.closeWatches()
        chain.removeFrom(self.store)
        self.store.compact()
        informer = replica.progress.certificates.informer
        for _ in range(20):
            if informer.relists >= 2:
                break
            self.clock.advance(5)
        self.assertEqual(informer.relists, 2)
        self.assertEqual(len(informer), 0)
        self.assertEqual(len(replica.progress.book), 0)

    def test_recordsKeepOddIdentitiesAsTheyAre(self):
        record = certificateRecord({"metadata": {"namespace": "n", "name": "c",
                                                 "uid": "not-a-uuid", "resourceVersion": "x7"}})
        self.assertEqual(recordIdentity(record) + (recordVersion(record),),
                         ("n", "c", "not-a-uuid", "x7"))
        upper = "0B6F3A2E-5C1D-4E8F-9A7B-1C2D3E4F5A6B"
        self.assertEqual(recordIdentity(certificateRecord({"metadata": {"uid": upper}}))[2], upper)


class DecisionTests(SynchronousTestCase):
    def cert(self, **status):
        return trimCertificate({"metadata": {"name": "c", "namespace": "n", "uid": "u",
                                             "labels": {"app": "x"}}, "status": status})

    def test_trimKeepsOnlyWhatIsRead(self):
        cert = trimCertificate({"metadata": {"name": "c", "namespace": "n", "uid": "u",
                                             "labels": {"app": "x", cm.PROJECT_LABEL: "p"},
                                             "managedFields": [{}]},
                                "spec": {"dnsNames": ["a"], "secretName": "s"},
                                "status": {"revision": 2, "conditions": [
                                    {"type": "Ready", "status": "True", "x": 1},
                                    {"type": "Other"}]}})
        self.assertEqual(cert, {"metadata": {"name": "c", "namespace": "n", "uid": "u",
                                             "labels": {cm.PROJECT_LABEL: "p"}},
                                "spec": {"dnsNames": ["a"]},
                                "status": {"revision": 2, "conditions": [
                                    {"type": "Ready", "status": "True"}]}})

    def test_oldIssuanceIsNotReconsidered(self):
        ready = [{"type": "Ready", "status": "True"}]
        recent = self.cert(revision=3, notBefore="2026-01-01T00:00:00Z", conditions=ready)
        self.assertEqual([d[:3] for d in decisions(recent, START, WINDOW)],
                         [("issued", 3, "u:issued:3")])
        self.assertEqual(decisions(recent, START + 30 * 86400, WINDOW), [])

    def test_failedAttemptIsTheNextRevision(self):
        cert = self.cert(revision=1, lastFailureTime="2026-01-01T00:00:00Z",
                         failedIssuanceAttempts=2,
                         conditions=[{"type": "Issuing", "status": "False", "reason": "Failed",
                                      "message": "m"}])
        [(operation, revision, key, details)] = decisions(cert, START, WINDOW)
        self.assertEqual((operation, revision, key), ("failed", 2,
                                                      "u:failed:2:2026-01-01T00:00:00Z"))
        self.assertEqual(details["failedIssuanceAttempts"], 2)


class MarkTests(SynchronousTestCase):
    def test_noMarkWithoutACertificate(self):
        from kibaship_dns01.project import contextFromLabels
        context = contextFromLabels({cm.PROJECT_LABEL: cm.PROJECT_UUID}, challengeUID="u")
        self.assertIsNone(presentMark(None, context, None, 60))


class JobsTests(SynchronousTestCase):
    def test_latestWinsAndOneAtATimePerKey(self):
        from twisted.internet import defer
        clock, started = Clock(), []
        waiting = {}

        def work(key, item):
            started.append((key, item))
            waiting[key] = defer.Deferred()
            return waiting[key]
        jobs = KeyedJobs(clock, work, "test", limit=1)
        for item in ("a1", "a2", "a3"):
            jobs.submit("a", item)
        jobs.submit("b", "b1")
        self.assertEqual(started, [("a", "a1")])
        waiting["a"].callback(None)
        self.assertEqual(started, [("a", "a1"), ("a", "a3")])
        waiting["a"].callback(None)
        self.assertEqual(started[-1], ("b", "b1"))

    def test_transientFailuresRetryABoundedNumberOfTimes(self):
        clock, attempts = Clock(), []

        def work(key, item):
            attempts.append(clock.seconds())
            raise ValkeyUnavailable("down")
        jobs = KeyedJobs(clock, work, "test", maxAttempts=3, isTransient=lambda f: True)
        jobs.submit("k", 1)
        for _ in range(20):
            clock.advance(60)
        self.assertEqual(len(attempts), 3)
        self.assertEqual(len(jobs), 0)
        self.flushLoggedErrors()


class WiringTests(SynchronousTestCase):
    def test_offOrDryRunBuildsNoProgressAndNoMark(self):
        from kibaship_dns01.service import buildProgress, buildSolver, buildTargets
        from tests.support import settingsFor
        clock, client = Clock(), FakeKubernetesClient()
        resolver = ChallengeResolver(client, clock, GROUP, SOLVER)
        publisher = FakeStreamPublisher(clock)
        for overrides, wanted in (({}, True), ({"progressEvents": False}, False),
                                  ({"dryRun": True}, False)):
            settings = settingsFor("unused", "unused", **overrides)
            targets = buildTargets(settings, client, clock)
            built = buildProgress(settings, client, resolver, publisher, clock, targets,
                                  SeenIssuerConfigs())
            self.assertEqual(built is not None, wanted, overrides)
            solver = buildSolver(settings, client, resolver, publisher, clock, targets)
            self.assertEqual(solver._markSeconds is not None, settings.progressEvents)


class SchemaTests(SynchronousTestCase):
    def test_phasesInTheSchemaAreTheClassifiers(self):
        from kibaship_dns01.testing.eventschema import loadSchema
        schema = loadSchema()
        self.assertEqual(schema["$defs"]["statusPayload"]["properties"]["phase"]["enum"],
                         list(phases.PHASES))
        self.assertEqual(schema["properties"]["operation"]["enum"][:2], ["present", "cleanup"])
