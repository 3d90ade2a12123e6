"""ValkeyPublisher against the shared six-node cluster: routing, live slot
migration (MOVED, ASK), NOSCRIPT, concurrency, durability, policies."""
import uuid

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kibaship_dns01 import metrics
from kibaship_dns01.interfaces import IStreamPublisher
from kibaship_dns01.testing.polling import pollUntil
from tests.valkeysupport import SharedClusterCase, projectOn
from kibaship_dns01.valkey import (
    ValkeyDurabilityError, ValkeyPublisher, ValkeyTarget, ValkeyUnavailable, streamKey)
from kibaship_dns01.valkey.slots import keySlot


def counter(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0


def redirects(kind):
    return counter("kibaship_dns01_valkey_redirects_total", kind=kind)


def retries(cause):
    return counter("kibaship_dns01_valkey_retries_total", cause=cause)


class ClusterTestBase(SharedClusterCase):
    def projectOn(self, node):
        return projectOn(self.cluster, node)

    def stream(self, node, project):
        """XRANGE straight from ``node`` with valkey-cli: [(id, fields)]."""
        return self.cluster.xrange(streamKey(project), node)


class RoutingTests(ClusterTestBase):
    def test_providesInterface(self):
        self.assertTrue(verifyObject(IStreamPublisher, self.publisher))

    @defer.inlineCallbacks
    def test_routesToEveryPrimary(self):
        primaries = self.cluster.primaries()
        self.assertEqual(len(primaries), 3)
        for node in primaries:
            p = self.projectOn(node)
            entryId = yield self.publisher.append(self.target, p, {"on": node.address}, "k")
            self.assertEqual(self.stream(node, p),
                             [(entryId, {"on": node.address, "sequence": "1"})])

    @defer.inlineCallbacks
    def test_movedAfterLiveMigration(self):
        source, destination = self.cluster.primaries()[:2]
        p = self.projectOn(source)
        first = yield self.publisher.append(self.target, p, {"n": "1"}, "k1")
        before = redirects("moved")
        self.cluster.migrateSlot(keySlot(streamKey(p)), destination)
        second = yield self.publisher.appendEvent(self.target, p, {"n": "2"}, "k2")
        self.assertEqual(redirects("moved") - before, 1)
        self.assertEqual(second.sequence, 2, "the counter moved with the slot")
        self.assertEqual([e[0] for e in self.stream(destination, p)], [first, second.entryId])
        # and the idempotency record moved too: a retry of k1 is a duplicate
        again = yield self.publisher.appendEvent(self.target, p, {"n": "1"}, "k1")
        self.assertEqual((again.entryId, again.duplicate), (first, True))

    @defer.inlineCallbacks
    def test_askDuringMigration(self):
        source, destination = self.cluster.primaries()[:2]
        p = self.projectOn(source)
        slot = keySlot(streamKey(p))
        first = yield self.publisher.append(self.target, p, {"n": "1"}, "k1")
        self.cluster.beginMigration(slot, destination)
        self.addCleanup(self._finish, slot, source, destination)
        self.cluster.moveKeys(slot, source, destination)

        # a single-key command is served by the importing node after ASKING
        asks = redirects("ask")
        key = streamKey(p)
        client = self.publisher.clientFor(self.target).client
        length = yield client.execute(key, lambda c: c.send("XLEN", key))
        self.assertEqual((int(length), redirects("ask") - asks), (1, 1))

        # the append script also needs its new idempotency key, which the
        # importing node does not have: TRYAGAIN until the migration ends
        tryagain = retries("tryagain")
        d = self.publisher.appendEvent(self.target, p, {"n": "2"}, "k2")
        yield pollUntil(reactor, lambda: retries("tryagain") > tryagain, 10,
                        what="a TRYAGAIN retry")
        self.assertNoResult(d)
        self._finish(slot, source, destination)
        second = yield d
        self.assertEqual(second.sequence, 2)
        self.assertEqual([e[0] for e in self.stream(destination, p)], [first, second.entryId])

    def _finish(self, slot, source, destination):
        if self.cluster.slotOwner(slot) is not destination:
            self.cluster.finishMigration(slot, source, destination)

    @defer.inlineCallbacks
    def test_noscriptAfterScriptFlush(self):
        p = self.projectOn(self.cluster.primaries()[0])
        yield self.publisher.append(self.target, p, {"n": "1"}, "k1")
        for node in self.cluster.primaries():
            self.cluster.cli(node, "SCRIPT", "FLUSH")
        before = retries("noscript")
        r = yield self.publisher.appendEvent(self.target, p, {"n": "2"}, "k2")
        self.assertEqual((r.sequence, r.duplicate), (2, False))
        self.assertEqual(retries("noscript") - before, 1)

    @defer.inlineCallbacks
    def test_seedHostPolicy(self):
        """Announced 127.0.0.1 is replaced by the seed's host (localhost)."""
        port = self.cluster.nodes[0].port
        target = self.cluster.target(seeds=("localhost:%d" % port,),
                                     announcedAddressPolicy="seed-host")
        r = yield self.publisher.appendEvent(target, str(uuid.uuid4()), {"a": "1"}, "k")
        self.assertFalse(r.duplicate)
        hosts = {a[0] for a in self.publisher.clientFor(target).client.slotMap.primaryAddresses()}
        self.assertEqual(hosts, {"localhost"})


class ConcurrencyAndDurabilityTests(ClusterTestBase):
    @defer.inlineCallbacks
    def test_concurrentRetriesOfOneKey(self):
        """Fifty concurrent appends with one idempotency key: one entry."""
        p = str(uuid.uuid4())
        results = yield defer.gatherResults([
            self.publisher.appendEvent(self.target, p, {"try": str(i)}, "same")
            for i in range(50)])
        self.assertEqual(len({r.entryId for r in results}), 1)
        self.assertEqual(sum(not r.duplicate for r in results), 1)
        node = self.cluster.slotOwner(keySlot(streamKey(p)))
        self.assertEqual(len(self.stream(node, p)), 1)

    @defer.inlineCallbacks
    def test_manyProjectsConcurrently(self):
        projects = [str(uuid.uuid4()) for _ in range(10)]
        results = yield defer.gatherResults([
            self.publisher.appendEvent(self.target, projects[i % 10], {"i": str(i)}, str(i))
            for i in range(100)])
        for p in projects:
            seqs = sorted(r.sequence for r in results if r.stream == streamKey(p))
            self.assertEqual(seqs, list(range(1, 11)))

    @defer.inlineCallbacks
    def test_minReplicasSatisfied(self):
        target = self.cluster.target(minReplicas=1)
        r = yield self.publisher.appendEvent(target, str(uuid.uuid4()), {"a": "1"}, "k")
        self.assertFalse(r.duplicate)

    @defer.inlineCallbacks
    def test_minReplicasUnsatisfiable(self):
        """Two replicas required, one exists: the append fails; a retry with
        a satisfiable requirement returns the same entry."""
        p = str(uuid.uuid4())
        strict = self.cluster.target(minReplicas=2, readTimeout=0.4)
        before = counter("kibaship_dns01_valkey_appends_total", result="failed")
        err = yield self.assertFailure(
            self.publisher.appendEvent(strict, p, {"a": "1"}, "k"), ValkeyDurabilityError)
        self.assertIn("reached 1 of the 2 required replicas", str(err))
        self.assertIn("Retrying is safe", str(err))
        self.assertEqual(counter("kibaship_dns01_valkey_appends_total", result="failed")
                         - before, 1)
        r = yield self.publisher.appendEvent(self.cluster.target(minReplicas=1), p,
                                             {"a": "1"}, "k")
        self.assertTrue(r.duplicate)
        node = self.cluster.slotOwner(keySlot(streamKey(p)))
        self.assertEqual([e[0] for e in self.stream(node, p)], [r.entryId])

    @defer.inlineCallbacks
    def test_concurrentUnsatisfiableAppendsEachReportDurability(self):
        """``WAIT`` blocks the connection it runs on: appends pipelined on one
        connection must not queue one WAIT timeout behind another (found by
        ``bench/drills/failover.py``: with a new primary not yet replicated,
        concurrent Presents ended after the whole budget with "could not reach
        Valkey ... sent no reply" instead of the durability message).  Twenty
        concurrent appends to one primary over its two connections, each
        unsatisfiable, ten WAIT timeouts longer together than the budget: every
        one fails with the durability error."""
        p = str(uuid.uuid4())
        strict = self.cluster.target(minReplicas=2, readTimeout=0.4, operationTimeout=1.5)
        results = yield defer.DeferredList(
            [self.publisher.appendEvent(strict, p, {"i": str(i)}, "k%d" % i) for i in range(20)],
            consumeErrors=True)
        errors = [r.value for ok, r in results if not ok]
        self.assertEqual([type(e) for e in errors], [ValkeyDurabilityError] * 20,
                         [str(e) for e in errors])
        for e in errors:
            self.assertIn("reached 1 of the 2 required replicas", str(e))


class ServiceTests(ClusterTestBase):
    @defer.inlineCallbacks
    def test_checkAndMetrics(self):
        appended = counter("kibaship_dns01_valkey_appends_total", result="appended")
        duplicate = counter("kibaship_dns01_valkey_appends_total", result="duplicate")
        latency = counter("kibaship_dns01_valkey_append_duration_seconds_count")
        yield self.publisher.check(self.target)
        p = str(uuid.uuid4())
        yield self.publisher.append(self.target, p, {"a": "1"}, "k")
        yield self.publisher.append(self.target, p, {"a": "1"}, "k")
        self.assertEqual(counter("kibaship_dns01_valkey_appends_total", result="appended")
                         - appended, 1)
        self.assertEqual(counter("kibaship_dns01_valkey_appends_total", result="duplicate")
                         - duplicate, 1)
        self.assertEqual(counter("kibaship_dns01_valkey_append_duration_seconds_count")
                         - latency, 2)

    @defer.inlineCallbacks
    def test_oneClientPerTarget(self):
        same = self.cluster.target()
        other = self.cluster.target(readTimeout=2.5)
        self.assertIs(self.publisher.clientFor(self.target).client,
                      self.publisher.clientFor(same).client)
        self.assertIsNot(self.publisher.clientFor(self.target).client,
                         self.publisher.clientFor(other).client)
        yield self.publisher.check(other)

    @defer.inlineCallbacks
    def test_stopClosesAndRefuses(self):
        yield self.publisher.check(self.target)
        client = self.publisher.clientFor(self.target).client
        yield self.publisher.stopService()
        self.assertFalse(any(n.connected for n in client._nodes.values()))
        err = yield self.assertFailure(
            self.publisher.append(self.target, str(uuid.uuid4()), {"a": "1"}, "k"),
            ValkeyUnavailable)
        self.assertIn("not running", str(err))


class FakeClient:
    def __init__(self, target):
        self.target = target
        self.closed = False

    def ping(self):
        return defer.succeed(None)

    def close(self):
        self.closed = True
        return defer.succeed(None)


class IdleEvictionTests(SynchronousTestCase):
    def test_idleClientsClosed(self):
        clock = Clock()
        made = []
        publisher = ValkeyPublisher(clock, idleTimeout=60, clientFactory=lambda t: (
            made.append(FakeClient(t)) or made[-1]))
        publisher.startService()
        a, b = ValkeyTarget(seeds="a:1"), ValkeyTarget(seeds="b:1")
        self.successResultOf(publisher.check(a))
        clock.advance(30)
        self.successResultOf(publisher.check(b))
        clock.advance(45)   # a idle 75 s, b idle 45 s
        self.assertEqual([c.closed for c in made], [True, False])
        self.successResultOf(publisher.stopService())
        self.assertEqual([c.closed for c in made], [True, True])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_distinctTargetsAreCapped(self):
        """Tenants write issuer configs: 100 distinct usernames must not keep 100
        clients (issue 12's fuzz drill); the least recently used idle ones go first."""
        clock = Clock()
        made = []
        publisher = ValkeyPublisher(clock, maxClients=3, clientFactory=lambda t: (
            made.append(FakeClient(t)) or made[-1]))
        publisher.startService()
        busy = defer.Deferred()
        publisher._run(ValkeyTarget(seeds="busy:1"), lambda client: busy)
        for n in range(100):
            clock.advance(1)
            self.successResultOf(publisher.check(ValkeyTarget(seeds="a:1", username="u%d" % n)))
        self.assertEqual(len(publisher._entries), 3)
        open_ = [c.target.username or c.target.seeds[0] for c in made if not c.closed]
        self.assertEqual(open_, ["busy:1", "u98", "u99"], "in flight kept, then the newest")
        busy.callback(None)
        self.successResultOf(publisher.stopService())

    def test_newerCredentialsCallableUsed(self):
        publisher = ValkeyPublisher(Clock(), clientFactory=FakeClient)
        publisher.startService()
        first = ValkeyTarget(seeds="a:1", credentials=lambda: defer.succeed("old"))
        second = ValkeyTarget(seeds="a:1", credentials=lambda: defer.succeed("new"))
        publisher.clientFor(first)
        client = publisher.clientFor(second).client
        self.assertIs(client.target.credentials, second.credentials)
