"""The routing state machine of ClusterClient, against scripted fake nodes
and a Clock: redirects, retries, bounds, single-flight refresh, auth retry."""
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01 import metrics
from kibaship_dns01.valkey.cluster import ClusterClient
from kibaship_dns01.valkey.errors import (
    ConnectionLost, ValkeyAuthError, ValkeyCommandError, ValkeyDurabilityError,
    ValkeyUnavailable)
from kibaship_dns01.valkey.replies import ServerError
from kibaship_dns01.valkey.slots import keySlot
from kibaship_dns01.valkey.target import ValkeyTarget

A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)
KEY = "{project:p}:events"
SLOT = keySlot(KEY)


class FakeConnection:
    def __init__(self, node):
        self.node = node
        self.address = node.address

    def send(self, *args):
        return self.node.world.handle(self.node, args)


class FakeNode:
    """Hands out one connection; ``acquire`` can be made to fail."""

    def __init__(self, world, address):
        self.world = world
        self.address = address
        self.acquireError = None
        self.asking = False
        self.resets = 0
        self.closed = False
        self.connected = True

    def ready(self):
        """A connection at once, as a connected node gives (``None`` when it cannot)."""
        return None if self.acquireError is not None else FakeConnection(self)

    def acquire(self):
        if self.acquireError is not None:
            return defer.fail(self.acquireError())
        return defer.succeed(FakeConnection(self))

    def reset(self):
        self.resets += 1
        return defer.succeed(None)

    def close(self):
        self.closed = True
        return defer.succeed(None)

    def authError(self, reply):
        return ValkeyAuthError("auth rejected by %s: %s" % (self.address, reply))


class World:
    """A pretend cluster: who owns which slot, and what commands answer."""

    def __init__(self):
        self.ranges = [(0, 5460, A), (5461, 10922, B), (10923, 16383, C)]
        self.nodes = {}
        self.log = []
        self.slotsQueries = 0
        self.slotsResult = None       # Deferred to hold CLUSTER SLOTS replies
        self.onCommand = lambda node, args, asking: "OK"

    def node(self, address):
        if address not in self.nodes:
            self.nodes[address] = FakeNode(self, address)
        return self.nodes[address]

    def owner(self, slot):
        for start, end, address in self.ranges:
            if start <= slot <= end:
                return address

    def handle(self, node, args):
        self.log.append((node.address, args))
        if args == ("ASKING",):
            node.asking = True
            return defer.succeed("OK")
        asking, node.asking = node.asking, False
        if args == ("CLUSTER", "SLOTS"):
            self.slotsQueries += 1
            reply = [[s, e, [h, p, "id"]] for s, e, (h, p) in self.ranges]
            if self.slotsResult is not None:
                return self.slotsResult.addCallback(lambda _: reply)
            return defer.succeed(reply)
        try:
            return defer.succeed(self.onCommand(node, args, asking))
        except Exception as e:
            return defer.fail(e)

    def commands(self, name="CMD"):
        return [address for address, args in self.log if args[0] == name]


def target(**kw):
    kw.setdefault("seeds", ("10.0.0.1:7000",))
    kw.setdefault("operationTimeout", 10.0)
    return ValkeyTarget(**kw)


class RoutingTestsMixin:
    def setUp(self):
        self.clock = Clock()
        self.world = World()
        self.target = target()
        self.client = self.makeClient()

    def makeClient(self, **kw):
        kw.setdefault("random", lambda: 1.0)   # no jitter: delays are exact
        return ClusterClient(self.clock, self.target, nodeFactory=self.world.node, **kw)

    def call(self, key=KEY):
        return self.client.execute(key, lambda conn: conn.send("CMD", key))

    def moved(self, node, args, asking):
        owner = self.world.owner(keySlot(args[1]))
        if node.address != owner:
            raise ServerError("MOVED %d %s:%d" % ((keySlot(args[1]),) + owner), node.address)
        return "done@%s" % (node.address[1],)


class RoutingTests(RoutingTestsMixin, SynchronousTestCase):
    def test_routesToSlotOwner(self):
        """The first call reads the map from the seed and goes to the owner."""
        self.world.onCommand = self.moved
        for key, port in (("{a}", 7002), ("{b}", 7000), ("{project:p}:x", None)):
            expected = self.world.owner(keySlot(key))
            self.assertEqual(self.successResultOf(self.call(key)), "done@%d" % expected[1])
            if port:
                self.assertEqual(expected[1], port)
        self.assertEqual(self.world.slotsQueries, 1)
        self.assertEqual(self.world.commands("CLUSTER"), [A])

    def test_movedFollowedAndPatched(self):
        """MOVED: retry at once at the new owner, patch the map, refresh once."""
        self.world.onCommand = self.moved
        self.successResultOf(self.call())
        before = metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_valkey_redirects_total", {"kind": "moved"}) or 0
        old = self.world.owner(SLOT)
        self.world.ranges = [(0, 16383, C)]
        self.clock.advance(1)   # past minRefreshInterval
        self.assertEqual(self.successResultOf(self.call()), "done@7002")
        self.assertEqual(self.client.slotMap.primaryFor(SLOT), C)
        self.assertEqual(self.world.commands("CMD")[-2:], [old, C])
        self.assertEqual(self.world.slotsQueries, 2)
        after = metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_valkey_redirects_total", {"kind": "moved"})
        self.assertEqual(after - before, 1)

    def test_concurrentMovedRefreshOnce(self):
        """Fifty requests that all see MOVED cause a single CLUSTER SLOTS."""
        self.world.onCommand = self.moved
        self.successResultOf(self.call())
        new = C if self.world.owner(SLOT) != C else A
        self.world.ranges = [(0, 16383, new)]
        self.clock.advance(1)
        self.world.slotsResult = defer.Deferred()   # hold the refresh open
        results = [self.call() for _ in range(50)]
        for d in results:
            self.assertEqual(self.successResultOf(d), "done@%d" % new[1])
        self.assertEqual(self.world.slotsQueries, 2)
        self.world.slotsResult.callback(None)
        self.assertEqual(self.world.slotsQueries, 2)

    def test_askUsesAskingOnSameConnectionWithoutChangingMap(self):
        def ask(node, args, asking):
            if node.address == A and not asking:
                raise ServerError("ASK %d 10.0.0.2:7001" % SLOT, A)
            if node.address == B and not asking:
                raise ServerError("MOVED %d 10.0.0.1:7000" % SLOT, B)
            return "done@%d" % node.address[1]
        self.world.ranges = [(0, 16383, A)]
        self.world.onCommand = ask
        self.assertEqual(self.successResultOf(self.call()), "done@7001")
        self.assertEqual([entry for entry in self.world.log if entry[0] == B],
                         [(B, ("ASKING",)), (B, ("CMD", KEY))])
        self.assertEqual(self.client.slotMap.primaryFor(SLOT), A)

    def test_tryAgainBacksOffAndRetries(self):
        calls = []

        def tryagain(node, args, asking):
            calls.append(self.clock.seconds())
            if len(calls) < 3:
                raise ServerError("TRYAGAIN Multiple keys request during rehashing", node.address)
            return "ok"
        self.world.onCommand = tryagain
        d = self.call()
        self.assertNoResult(d)
        self.clock.advance(0.05)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual([round(c, 6) for c in calls], [0, 0.05, 0.15])

    def test_attemptsAreBounded(self):
        """A node that keeps answering CLUSTERDOWN: give up after maxAttempts."""
        self.client = self.makeClient(maxAttempts=4)

        def down(node, args, asking):
            raise ServerError("CLUSTERDOWN The cluster is down", node.address)
        self.world.onCommand = down
        d = self.call()
        self.clock.pump([0.5] * 10)
        err = self.failureResultOf(d, ValkeyUnavailable).value
        self.assertIn("4 attempts failed", str(err))
        self.assertIn("CLUSTERDOWN", str(err))
        self.assertIn("10.0.0.1:7000", str(err))
        self.assertEqual(len(self.world.commands("CMD")), 4)

    def test_totalTimeBounded(self):
        """With endless retries allowed, the operation still ends within
        operationTimeout even if a try never answers."""
        self.target = target(operationTimeout=2.0)
        self.client = self.makeClient(maxAttempts=1000)
        self.world.onCommand = lambda node, args, asking: defer.Deferred()
        self.world.handle = self._hangingHandle(self.world.handle)
        d = self.call()
        self.clock.advance(1.99)
        self.assertNoResult(d)
        self.clock.advance(0.02)
        err = self.failureResultOf(d, ValkeyUnavailable).value
        self.assertIn("within 2s", str(err))

    def _hangingHandle(self, handle):
        def h(node, args):
            if args[0] == "CMD":
                self.world.log.append((node.address, args))
                return defer.Deferred()
            return handle(node, args)
        return h

    def test_connectionLossRefreshesAndRetries(self):
        """A failed-over primary: refused connections, then the map moves."""
        self.world.onCommand = self.moved
        self.successResultOf(self.call())
        owner = self.world.owner(SLOT)
        self.world.node(owner).acquireError = lambda: ConnectionLost("refused")
        d = self.call()
        self.assertNoResult(d)
        new = C if owner != C else A
        self.world.ranges = [(s, e, new if a == owner else a) for s, e, a in self.world.ranges]
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(d), "done@%d" % new[1])
        self.assertEqual(self.world.slotsQueries, 2)
        self.assertTrue(self.world.node(owner).closed, "dropped from the map, so closed")

    def test_allNodesDown(self):
        """Nothing answers: a clear ValkeyUnavailable naming the seeds."""
        self.world.node(A).acquireError = lambda: ConnectionLost(
            "could not connect to Valkey node 10.0.0.1:7000: Connection refused")
        d = self.call()
        self.clock.pump([0.25] * 60)
        err = self.failureResultOf(d, ValkeyUnavailable).value
        self.assertIn("could not reach Valkey cluster at 10.0.0.1:7000", str(err))
        self.assertIn("Connection refused", str(err))

    def test_authRetriedOnceWithFreshCredentials(self):
        invalidated = []
        self.target = target(invalidateCredentials=lambda: invalidated.append(1))
        self.client = self.makeClient()
        answers = iter([ServerError("NOAUTH Authentication required.", A), "ok"])

        def auth(node, args, asking):
            a = next(answers)
            if isinstance(a, Exception):
                raise a
            return a
        self.world.ranges = [(0, 16383, A)]
        self.world.onCommand = auth
        self.assertEqual(self.successResultOf(self.call()), "ok")
        self.assertEqual(invalidated, [1])
        self.assertEqual(self.world.node(A).resets, 1)

    def test_authFailsForGoodAfterOneRetry(self):
        self.world.ranges = [(0, 16383, A)]
        self.world.node(A)
        self.world.onCommand = lambda node, args, asking: (_ for _ in ()).throw(
            ServerError("WRONGPASS invalid username-password pair", A))
        err = self.failureResultOf(self.call(), ValkeyAuthError).value
        self.assertIn("WRONGPASS", str(err))
        self.assertEqual(len(self.world.commands("CMD")), 2)

    def test_connectAuthErrorDuringRefresh(self):
        """The seed rejects the password before any map exists."""
        self.world.node(A).acquireError = lambda: ValkeyAuthError("rejected by seed")
        err = self.failureResultOf(self.call(), ValkeyAuthError).value
        self.assertEqual(str(err), "rejected by seed")

    def test_nopermNamesTheRules(self):
        self.world.onCommand = lambda node, args, asking: (_ for _ in ()).throw(
            ServerError("NOPERM User app has no permissions to run the 'evalsha' command",
                        node.address))
        self.target = target(username="app")
        self.client = self.makeClient()
        err = self.failureResultOf(self.call(), ValkeyAuthError).value
        self.assertIn("Valkey user app", str(err))
        self.assertIn("+evalsha", str(err))

    def test_commandErrorNotRetried(self):
        self.world.onCommand = lambda node, args, asking: (_ for _ in ()).throw(
            ServerError("WRONGTYPE Operation against a key holding the wrong kind of value",
                        node.address))
        err = self.failureResultOf(self.call(), ValkeyCommandError).value
        self.assertIn("WRONGTYPE", str(err))
        self.assertEqual(len(self.world.commands("CMD")), 1)

    def test_durabilityErrorPassesThrough(self):
        def op(conn):
            return defer.fail(ValkeyDurabilityError("1 of 2"))
        d = self.client.execute(KEY, op)
        self.failureResultOf(d, ValkeyDurabilityError)

    def test_closeEndsSleepingOperation(self):
        self.world.onCommand = lambda node, args, asking: (_ for _ in ()).throw(
            ServerError("TRYAGAIN later", node.address))
        d = self.call()
        self.assertNoResult(d)
        self.successResultOf(self.client.close())
        err = self.failureResultOf(d, ValkeyUnavailable).value
        self.assertIn("closed", str(err))
        self.assertTrue(all(n.closed for n in self.world.nodes.values()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ping(self):
        self.assertIsNone(self.successResultOf(self.client.ping()))
        self.assertEqual(self.world.commands("PING"), [A])

    def test_notClusterMode(self):
        """A standalone server answers CLUSTER SLOTS with an error."""
        def handle(node, args):
            return defer.fail(ServerError("ERR This instance has cluster support disabled",
                                          node.address))
        self.world.handle = handle
        err = self.failureResultOf(self.call(), ValkeyCommandError).value
        self.assertIn("cluster mode enabled", str(err))
