"""Progress events from two real daemons (two twistd processes) on one stand-in API
server and one Valkey cluster: every transition lands once, a restart adds nothing."""
import json
import uuid

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from kibaship_dns01.testing import certmanager as cm
from kibaship_dns01.testing.daemon import DaemonProcess
from kibaship_dns01.testing.environment import LocalEnvironment
from kibaship_dns01.testing.eventschema import validateEntry
from kibaship_dns01.testing.polling import pollUntil
from kibaship_dns01.testing.valkeycluster import inThread, sharedCluster
from kibaship_dns01.valkey import streamKey
from tests.support import tempDir


def progressLines(daemon):
    lines = [json.loads(line) for line in daemon.output.splitlines() if line.startswith(b"{")]
    return [line for line in lines if line.get("log_kind") == "progress_event"]


class TwoReplicasTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.cluster = yield inThread(sharedCluster)
        self.cwd = tempDir(self, "kibaship-progress-")
        self.env = LocalEnvironment(reactor, self.cwd, self.cluster)
        # a project of its own: the shared cluster keeps streams between tests
        self.project = str(uuid.uuid4())
        labels = dict(cm.kibashipLabels(), **{cm.PROJECT_LABEL: self.project})
        self.env.chain = cm.buildChain(labels=labels, keySeed=self.project,
                                       config=self.env.issuerConfig())
        yield defer.ensureDeferred(self.env.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.env.stop()))

    async def daemon(self):
        daemon = DaemonProcess(reactor, self.env.daemonArgs(0), cwd=self.cwd)
        daemon.start()
        self.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
        base = f"https://localhost:{await daemon.listeningPort()}"
        await daemon.waitReady(base, self.env.servingCA.certPEM)
        return daemon, base

    def entries(self):
        return self.cluster.xrange(streamKey(self.project))

    async def step(self, daemons, change, operation, count):
        """Make a change, then wait until the stream has ``count`` entries and every
        daemon has decided on it (published, or found it already published)."""
        seen = [len([l for l in progressLines(d) if l["operation"] == operation])
                for d in daemons]
        change()
        await pollUntil(reactor, lambda: len(self.entries()) >= count, 20.0, 0.1,
                        what="entry %d (%s)" % (count, operation))
        await pollUntil(reactor, lambda: all(
            len([l for l in progressLines(d) if l["operation"] == operation]) > n
            for d, n in zip(daemons, seen)), 20.0, 0.1, what="both daemons on " + operation)

    def test_eachTransitionLandsOnceAndARestartAddsNothing(self):
        async def go():
            (first, base), (second, secondBase) = await self.daemon(), await self.daemon()
            daemons = [first, second]
            store, chain = self.env.api.store, self.env.chain
            challenge = chain.challenges[0]
            present = await self.env.post(base)
            self.assertTrue(present.json()["response"]["success"], present.body)
            # cert-manager's retry reaches the other replica (a duplicate): from then on
            # both know the ClusterIssuer's config is genuine and may use its Secret
            retried = await self.env.post(secondBase)
            self.assertTrue(retried.json()["response"]["success"], retried.body)
            await self.step(daemons, lambda: cm.setChallengeStatus(
                store, challenge, "pending", cm.propagationReason("shop.example.com")),
                "status", 2)
            await self.step(daemons, lambda: cm.setChallengeStatus(
                store, challenge, "valid", cm.AUTHORIZED_REASON), "status", 3)
            await self.step(daemons, lambda: cm.setCertificateIssued(
                store, chain.certificate, 1, at=reactor.seconds()), "issued", 4)
            entries = self.entries()
            datas = [validateEntry(fields) for _, fields in entries]
            self.assertEqual([(f["operation"], d["payload"].get("phase")) for (_, f), d
                              in zip(entries, datas)],
                             [("present", None), ("status", "waiting_for_dns"),
                              ("status", "verified"), ("issued", None)])
            self.assertEqual([int(f["sequence"]) for _, f in entries], [1, 2, 3, 4])
            decided = sorted((l["operation"], l["duplicate"]) for d in daemons
                             for l in progressLines(d))
            self.assertEqual(decided, sorted([("status", False), ("status", True)] * 2
                                             + [("issued", False), ("issued", True)]))

            # a restarted replica relists everything and finds it all published
            await second.stop()
            restarted, restartedBase = await self.daemon()
            await self.env.post(restartedBase)
            try:
                await pollUntil(reactor, lambda: len(progressLines(restarted)) >= 2, 20.0, 0.1,
                                what="the restarted daemon's decisions")
            except Exception:
                print(restarted.output.decode()[-6000:])
                raise
            self.assertTrue(all(l["duplicate"] for l in progressLines(restarted)))
            self.assertEqual(self.entries(), entries)
        return defer.ensureDeferred(go())
