"""A primary SIGKILLed mid-stream: its replica is promoted, appends resume,
nothing acknowledged is lost and nothing is duplicated (own cluster)."""

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from kibaship_dns01 import metrics
from tests.valkeysupport import projectOn
from kibaship_dns01.testing.polling import pollUntil
from kibaship_dns01.testing.valkeycluster import ValkeyCluster, inThread
from kibaship_dns01.valkey import ValkeyError, ValkeyPublisher, ValkeyUnavailable, streamKey
from kibaship_dns01.valkey.slots import keySlot

TOTAL = 200
WORKERS = 4
KILL_AFTER = 40


def noscriptRetries():
    return metrics.REGISTRY.get_sample_value(
        "kibaship_dns01_valkey_retries_total", {"cause": "noscript"}) or 0


class FailoverTests(TestCase):
    timeout = 90

    def setUp(self):
        self.cluster = ValkeyCluster(nodeTimeoutMs=1000)
        self.addCleanup(inThread, self.cluster.stop)
        return inThread(self.cluster.start)

    def projectOn(self, node):
        return projectOn(self.cluster, node)

    async def appendWithRetries(self, publisher, target, project, i):
        """What a caller does on failure: retry the same idempotency key."""
        for _ in range(100):
            try:
                return await publisher.appendEvent(target, project, {"i": str(i)}, "e%d" % i)
            except ValkeyError as e:
                self.failures.append(e)
                await task.deferLater(reactor, 0.1, lambda: None)
        raise AssertionError("append %d never succeeded: %s" % (i, self.failures[-1]))

    async def worker(self, publisher, target, project, indexes):
        for i in indexes:
            result = await self.appendWithRetries(publisher, target, project, i)
            self.acked[i] = result
            if len(self.acked) == KILL_AFTER:
                self.cluster.kill(self.victim)
                self.killed.callback(None)

    async def recover(self):
        """After the failover, restart the dead node: it rejoins as a replica,
        so minReplicas=1 can be satisfied again."""
        await self.killed
        await pollUntil(reactor, lambda: self.cluster.failedOver(self.victim), 30,
                        what="the replica to take over")
        await inThread(self.cluster.restart, self.victim)

    @defer.inlineCallbacks
    def test_killPrimaryMidStream(self):
        publisher = ValkeyPublisher(reactor)
        publisher.startService()
        self.addCleanup(publisher.stopService)
        target = self.cluster.target(minReplicas=1, operationTimeout=15.0, readTimeout=1.0)
        self.victim = self.cluster.primaries()[0]
        project = self.projectOn(self.victim)
        self.acked, self.failures, self.killed = {}, [], defer.Deferred()
        noscript = noscriptRetries()

        indexes = iter(range(TOTAL))
        recovery = defer.ensureDeferred(self.recover())
        yield defer.gatherResults([
            defer.ensureDeferred(self.worker(publisher, target, project, indexes))
            for _ in range(WORKERS)])
        yield recovery

        owner = self.cluster.slotOwner(keySlot(streamKey(project)))
        self.assertIsNot(owner, self.victim)
        stream = self.cluster.xrange(streamKey(project), owner)
        byIndex = {}
        for entryId, fields in stream:
            self.assertNotIn(fields["i"], byIndex, "appended twice: %s" % (fields["i"],))
            byIndex[fields["i"]] = (entryId, int(fields["sequence"]))
        # none lost: every acknowledged entry is on the new primary, as acked
        self.assertEqual(len(self.acked), TOTAL)
        for i, result in self.acked.items():
            self.assertEqual(byIndex[str(i)], (result.entryId, result.sequence))
        self.assertEqual(len(byIndex), TOTAL)
        # the sequence has no gap and no repeat, in stream order
        self.assertEqual([s for _, s in sorted(byIndex.values(), key=lambda v: v[1])],
                         list(range(1, TOTAL + 1)))
        self.assertEqual([int(f["sequence"]) for _, f in stream],
                         list(range(1, TOTAL + 1)))
        # the promoted replica never had the script loaded
        self.assertGreater(noscriptRetries() - noscript, 0)

        # and when every node is gone, appends fail within their bound
        for node in self.cluster.liveNodes():
            self.cluster.kill(node)
        quick = self.cluster.target(operationTimeout=1.0)
        err = yield self.assertFailure(
            publisher.append(quick, project, {"i": "late"}, "late"), ValkeyUnavailable)
        self.assertIn("could not reach Valkey cluster at %s within 1s" % (
            quick.describe(),), str(err))
