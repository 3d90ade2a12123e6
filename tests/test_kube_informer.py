"""The watch-backed cache (kibaship_dns01.kube.informer)."""
import random

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from kibaship_dns01.testing.polling import pollUntil
from kibaship_dns01 import metrics
from kibaship_dns01.interfaces import IReadiness
from kibaship_dns01.kube import errors
from kibaship_dns01.kube.client import KubeClient
from kibaship_dns01.kube.informer import Backoff, Informer
from kibaship_dns01.kube.trim import keepFields
from kibaship_dns01.testing.fakekube import FakeKubernetesClient
from kibaship_dns01.testing.kubeapi import StandInAPIServer

CHALLENGES = "/apis/acme.cert-manager.io/v1/challenges"


def challenge(name, ns="ns", key=None, **extra):
    spec = dict({"key": key or "key-" + name, "dnsName": name + ".example.com"}, **extra)
    return {"apiVersion": "acme.cert-manager.io/v1", "kind": "Challenge",
            "metadata": {"name": name, "namespace": ns, "annotations": {"big": "x" * 100}},
            "spec": spec, "status": {"state": "pending"}}


def trim(obj):
    """Keep what the resolver reads."""
    md = obj["metadata"]
    return {"metadata": {k: md[k] for k in ("name", "namespace", "resourceVersion") if k in md},
            "spec": {"key": obj["spec"]["key"], "dnsName": obj["spec"]["dnsName"]}}


class _MaxRandom(random.Random):
    """Jitter at its maximum, so backoff delays are exactly base * 2**n, capped."""

    def random(self):
        return 1.0


class InformerTestsBase(SynchronousTestCase):
    def setUp(self):
        self.fake = FakeKubernetesClient()
        self.store = self.fake.store
        self.clock = Clock()
        self.events = []

    def informer(self, start=True, **kw):
        kw.setdefault("indexers", {"byKey": lambda o: [o["spec"]["key"]]})
        inf = Informer(self.fake, CHALLENGES, self.clock, "challenges", rng=_MaxRandom(), **kw)
        inf.addListener(lambda kind, obj: self.events.append((kind, obj["metadata"]["name"])))
        if start:
            inf.startService()
            self.addCleanup(inf.stopService)
        return inf

    def names(self, inf):
        return sorted(o["metadata"]["name"] for o in inf.list())

    def pendingDelay(self):
        """The delay of the one pending timer (a backoff)."""
        (call,) = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    def advanceUntil(self, predicate, limit=100):
        """Run pending timers (backoff) until ``predicate()``; bounded."""
        for _ in range(limit):
            if predicate():
                return
            calls = self.clock.getDelayedCalls()
            self.assertTrue(calls, "nothing scheduled and condition not met")
            self.clock.advance(min(c.getTime() for c in calls) - self.clock.seconds())
        self.fail("condition not met after %d timer runs" % limit)


class SyncTests(InformerTestsBase):
    def test_initialSync(self):
        self.store.add(challenge("a"))
        self.store.add(challenge("b", ns="other"))
        inf = self.informer(start=False)
        synced = inf.whenSynced()
        self.assertFalse(inf.hasSynced)
        self.assertFalse(inf.isReady())
        self.assertNoResult(synced)
        inf.startService()
        self.addCleanup(inf.stopService)
        self.successResultOf(synced)
        self.successResultOf(inf.whenSynced())
        self.assertTrue(inf.isReady())
        self.assertEqual(len(inf), 2)
        self.assertEqual(inf.get("other", "b")["spec"]["key"], "key-b")
        self.assertIsNone(inf.get("ns", "b"))
        self.assertEqual(sorted(self.events), [("ADDED", "a"), ("ADDED", "b")])
        self.assertEqual(inf.resourceVersion, str(self.store.resourceVersion))
        self.assertEqual(metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_cache_objects", {"cache": "challenges"}), 2)

    def test_readiness(self):
        inf = self.informer()
        self.assertTrue(verifyObject(IReadiness, inf))
        self.assertEqual(inf.name, "challenges")

    def test_listThenWatchFromListVersion(self):
        self.store.add(challenge("a"))
        self.informer()
        verbs = [(c.verb, c.params.get("resourceVersion")) for c in self.fake.calls]
        self.assertEqual(verbs, [("list", None), ("watch", str(self.store.resourceVersion))])

    def test_paramsGoToListAndWatch(self):
        self.informer(params={"labelSelector": "app=x"})
        self.assertEqual([c.params.get("labelSelector") for c in self.fake.calls], ["app=x", "app=x"])
        self.assertGreaterEqual(int(self.fake.calls[1].params["timeoutSeconds"]), 300)


class WatchTests(InformerTestsBase):
    def test_addModifyDelete(self):
        inf = self.informer()
        self.store.add(challenge("a"))
        self.assertEqual(inf.get("ns", "a")["spec"]["key"], "key-a")
        self.store.put(challenge("a", key="k2"))
        self.assertEqual(inf.get("ns", "a")["spec"]["key"], "k2")
        self.store.delete(challenge("a"))
        self.assertIsNone(inf.get("ns", "a"))
        self.assertEqual(self.events, [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")])
        self.assertEqual(len(inf), 0)

    def test_bookmarkMovesVersionOnly(self):
        inf = self.informer()
        self.store.add({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "x"}})
        self.store.bookmark()
        self.assertEqual(inf.resourceVersion, str(self.store.resourceVersion))
        self.assertEqual(self.events, [])

    def test_indexes(self):
        inf = self.informer()
        self.store.add(challenge("a", key="shared"))
        self.store.add(challenge("b", ns="n2", key="shared"))
        self.store.add(challenge("c", key="own"))
        self.assertEqual([o["metadata"]["name"] for o in inf.byIndex("byKey", "shared")], ["b", "a"])
        self.store.put(challenge("a", key="moved"))
        self.assertEqual([o["metadata"]["name"] for o in inf.byIndex("byKey", "shared")], ["b"])
        self.assertEqual([o["metadata"]["name"] for o in inf.byIndex("byKey", "moved")], ["a"])
        self.store.delete(challenge("b", ns="n2"))
        self.assertEqual(inf.byIndex("byKey", "shared"), [])
        e = self.assertRaises(KeyError, inf.byIndex, "byName", "x")
        self.assertIn("byKey", str(e))

    def test_trimAppliesToListAndWatch(self):
        self.store.add(challenge("a"))
        inf = self.informer(trim=trim)
        self.store.add(challenge("b"))
        for name in ("a", "b"):
            obj = inf.get("ns", name)
            self.assertNotIn("status", obj)
            self.assertNotIn("annotations", obj["metadata"])
            self.assertEqual(obj["spec"]["dnsName"], name + ".example.com")

    def test_trimNoneLeavesObjectsOut(self):
        """A trim answering ``None`` keeps only objects in some state: left out at
        the LIST and on ADDED, dropped (``DELETED``) when one leaves that state."""
        self.store.add(challenge("done", state="valid"))
        self.store.add(challenge("open"))
        inf = self.informer(trim=lambda obj: None if obj["spec"].get("state") == "valid" else obj)
        self.assertEqual(self.names(inf), ["open"])
        self.store.add(challenge("late", state="valid"))
        self.assertIsNone(inf.get("ns", "late"))
        self.store.put(challenge("open", state="valid"))
        self.assertEqual((self.names(inf), inf.byIndex("byKey", "key-open")), ([], []))
        self.store.delete(challenge("done"))
        self.assertEqual(self.events, [("ADDED", "open"), ("DELETED", "open")])

    def test_keepFields(self):
        inf = self.informer(trim=keepFields("spec.key", "metadata.ownerReferences"))
        obj = challenge("a")
        obj["metadata"]["ownerReferences"] = [{"kind": "Order", "name": "o"}]
        self.store.add(obj)
        self.assertEqual(inf.get("ns", "a"), {
            "apiVersion": "acme.cert-manager.io/v1", "kind": "Challenge", "spec": {"key": "key-a"},
            "metadata": {"name": "a", "namespace": "ns", "ownerReferences": [{"kind": "Order", "name": "o"}],
                         "resourceVersion": str(self.store.resourceVersion)}})

    def test_listenerFailureDoesNotBreakTheCache(self):
        inf = self.informer()
        inf.addListener(lambda kind, obj: 1 / 0)
        self.store.add(challenge("a"))
        self.store.add(challenge("b"))
        self.assertEqual(self.names(inf), ["a", "b"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)


class RelistTests(InformerTestsBase):
    def test_goneRelistsWithNoLostOrStaleObject(self):
        for name in "abc":
            self.store.add(challenge(name))
        inf = self.informer()
        self.events.clear()
        self.fake.injectError(errors.Unavailable("down"), verb="watch")
        self.store.closeWatches()                       # connection lost
        self.store.delete(challenge("b"))               # changes the cache does not see ...
        self.store.put(challenge("c", key="new-c"))
        self.store.add(challenge("d"))
        self.store.compact()                            # ... and whose history is gone
        self.advanceUntil(lambda: inf.relists == 2)
        self.assertEqual(self.names(inf), ["a", "c", "d"])
        self.assertEqual(inf.get("ns", "c")["spec"]["key"], "new-c")
        self.assertEqual(inf.byIndex("byKey", "key-c"), [])
        self.assertEqual(sorted(self.events), [("ADDED", "d"), ("DELETED", "b"), ("MODIFIED", "c")])
        expired = [c for c in self.fake.calls if c.verb == "watch"][-2]
        self.assertEqual(expired.params["resourceVersion"], str(self.store.resourceVersion - 3))
        self.store.add(challenge("e"))                  # and the new watch works
        self.assertEqual(self.names(inf), ["a", "c", "d", "e"])

    def test_expiredErrorEventDuringWatch(self):
        self.store.add(challenge("a"))
        inf = self.informer()
        self.store.add(challenge("b"))                  # the watch was healthy ...
        self.store.expireWatches()                      # ... then the server says 410
        self.assertEqual(inf.relists, 2)                # relisted at once, no backoff
        self.assertEqual(self.names(inf), ["a", "b"])
        self.assertEqual(self.store.watchCount, 1)

    def test_httpGoneOnWatchRelists(self):
        inf = self.informer()
        self.fake.injectError(410, verb="watch")
        self.store.closeWatches()
        self.advanceUntil(lambda: inf.relists == 2)
        self.assertEqual(self.store.watchCount, 1)

    def test_relistOnlyEmitsDifferences(self):
        for name in "ab":
            self.store.add(challenge(name))
        inf = self.informer()
        self.events.clear()
        self.fake.injectError(410, verb="watch")
        self.store.closeWatches()
        self.advanceUntil(lambda: inf.relists == 2)
        self.assertEqual(self.events, [])
        self.assertEqual(self.names(inf), ["a", "b"])

    def test_coreListItemsGetKind(self):
        self.store.add({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"}})
        inf = Informer(self.fake, "/api/v1/namespaces/kube-system/configmaps", self.clock, "authcm")
        inf.startService()
        self.addCleanup(inf.stopService)
        obj = inf.get("kube-system", "extension-apiserver-authentication")
        self.assertEqual((obj["kind"], obj["apiVersion"]), ("ConfigMap", "v1"))


class FreshnessMetricsTests(InformerTestsBase):
    """What the alert on an API server that cannot be read is computed from."""

    def lastSync(self, cache="challenges"):
        return metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_cache_last_sync_timestamp_seconds", {"cache": cache})

    def failures(self, verb, cache="challenges"):
        return metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_cache_failures_total", {"cache": cache, "verb": verb}) or 0

    def test_listEventAndTimelyWatchEndMoveTheTimestamp(self):
        self.clock.advance(1000)
        self.informer()
        self.assertEqual(self.lastSync(), 1000)
        self.clock.advance(30)
        self.store.add(challenge("a"))                  # a watch event
        self.assertEqual(self.lastSync(), 1030)
        self.clock.advance(400)
        self.store.closeWatches()                       # ended after 400 s: current until then
        self.assertEqual(self.lastSync(), 1430)

    def test_failingAPIServerLeavesTheTimestampAndCountsFailures(self):
        self.clock.advance(1000)
        lists, watches = self.failures("list"), self.failures("watch")
        self.fake.injectError(errors.Unavailable("connection refused"), verb="list", times=4)
        inf = self.informer()
        self.assertEqual(self.lastSync(), 1000, "the start counts until the first LIST")
        for _ in range(4):
            self.clock.advance(self.pendingDelay())
        self.assertTrue(inf.hasSynced)
        self.assertEqual(self.lastSync(), 1000 + 0.5 + 1 + 2 + 4)
        self.assertEqual(self.failures("list") - lists, 4)
        self.store.closeWatches()                       # a watch that ends at once
        self.assertEqual(self.lastSync(), 1007.5, "a watch that ended at once proves nothing")
        self.assertEqual(self.failures("watch") - watches, 1)
class _TickingClock(Clock):
    """A clock whose time moves on by ``tick`` every time it is read, as the
    reactor's does while the informer works: applying a page takes time."""

    tick = 0.003
    handedBack = 0

    def seconds(self):
        self.rightNow += self.tick
        return self.rightNow

    def callLater(self, delay, fn, *args, **kw):
        self.handedBack += delay == 0
        return super().callLater(delay, fn, *args, **kw)


class PagedSyncTests(InformerTestsBase):
    """LISTs are applied a page at a time, in bounded slices per reactor turn."""

    def test_aLargePageIsAppliedOverSeveralTurns(self):
        """With time passing while objects are applied, the informer hands the
        reactor back every ``TURN_BUDGET``; the sync ends only once all are in."""
        for i in range(200):
            self.store.add(challenge("c%03d" % i))
        self.clock = _TickingClock()
        inf = self.informer()
        self.assertFalse(inf.hasSynced)
        self.assertLess(len(inf), 200)
        self.assertEqual(self.clock.handedBack, 1)
        self.clock.advance(0)
        self.assertTrue(inf.hasSynced)
        self.assertGreater(self.clock.handedBack, 3)
        self.assertEqual(len(inf), 200)
        self.assertEqual(len(self.events), 200)

    def test_nextPageAskedForOnceThisOneIsApplied(self):
        for i in range(6):
            self.store.add(challenge("c%d" % i))
        applied = []

        def counting(obj):
            applied.append(sum(1 for c in self.fake.calls if c.verb == "list"))
            return trim(obj)
        self.informer(trim=counting, params={"limit": "2"})
        self.assertEqual(applied, [1, 1, 2, 2, 3, 3])

    def test_expiredContinueRestartsThePassWithoutLosingOrInventing(self):
        """A 410 on a continue page restarts the LIST; what the abandoned pass
        applied stays (it is not older than the restarted pass), and an object
        deleted in between is dropped at the restarted pass's end."""
        for name in "abcd":
            self.store.add(challenge(name))
        real = self.store.listPath
        state = {"done": False}

        def listPath(path, params=None, **kw):
            if params.get("continue") and not state["done"]:
                state["done"] = True
                self.store.delete(challenge("a"))        # seen by the first pass
                self.store.add(challenge("e"))
                self.store.compact()
            return real(path, params, **kw)
        self.patch(self.store, "listPath", listPath)
        inf = self.informer(params={"limit": "2"})
        self.assertTrue(inf.hasSynced)
        self.assertEqual(self.names(inf), ["b", "c", "d", "e"])
        self.assertEqual(sorted(self.events), [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c"),
                                               ("ADDED", "d"), ("ADDED", "e"), ("DELETED", "a")])
        firstPages = [c for c in self.fake.calls if c.verb == "list"
                      and "continue" not in c.params]
        self.assertEqual(len(firstPages), 2)
        self.assertEqual(self.fake.calls[-1].params["resourceVersion"],
                         str(self.store.resourceVersion))


class WatchListTests(InformerTestsBase):
    """``watchList=True``: one stream whose initial events are the list."""

    def test_initialEventsThenTheBookmarkSyncOnOneStream(self):
        for name in "ab":
            self.store.add(challenge(name))
        inf = self.informer(watchList=True)
        self.assertTrue(inf.hasSynced)
        self.assertEqual(self.names(inf), ["a", "b"])
        [call] = self.fake.calls
        self.assertEqual((call.verb, call.params["sendInitialEvents"],
                          call.params["resourceVersionMatch"], call.params["allowWatchBookmarks"],
                          call.params["resourceVersion"]),
                         ("watch", "true", "NotOlderThan", "true", ""))
        self.assertEqual(inf.resourceVersion, str(self.store.resourceVersion))
        self.store.add(challenge("c"))                  # the same stream goes on, live
        self.assertEqual(self.names(inf), ["a", "b", "c"])
        self.assertEqual(len(self.fake.calls), 1)
        self.assertEqual(inf.relists, 1)

    def test_notSyncedBeforeTheBookmark(self):
        """Objects arrive one by one; the cache is synced only at the bookmark."""
        self.store.add(challenge("a"))
        seen = []
        real = self.fake.watch

        def watch(path, rv, onEvent, params=None):
            def spy(kind, obj):
                seen.append((kind, inf.hasSynced))
                onEvent(kind, obj)
            return real(path, rv, spy, params)
        self.patch(self.fake, "watch", watch)
        inf = self.informer(watchList=True, start=False)
        inf.startService()
        self.addCleanup(inf.stopService)
        self.assertEqual(seen, [("ADDED", False), ("BOOKMARK", False)])
        self.assertTrue(inf.hasSynced)

    def test_aRestreamDropsWhatIsGoneAndPassesOverWhatDidNotChange(self):
        for name in "abc":
            self.store.add(challenge(name))
        inf = self.informer(watchList=True)
        self.events.clear()
        self.fake.injectError(errors.Unavailable("down"), verb="watch")
        self.store.closeWatches()
        self.store.delete(challenge("b"))
        self.store.put(challenge("c", key="new-c"))
        self.store.compact()
        self.advanceUntil(lambda: inf.relists == 2)
        self.assertEqual(self.names(inf), ["a", "c"])
        self.assertEqual(sorted(self.events), [("DELETED", "b"), ("MODIFIED", "c")])
        restream = [c for c in self.fake.calls if c.verb == "watch"][-1]
        self.assertEqual(restream.params["sendInitialEvents"], "true")

    def test_goneDuringTheInitialEventsStartsOverFromNow(self):
        self.store.add(challenge("a"))
        self.store.watchList = "ignored"                # a plain watch from the version asked
        inf = self.informer(watchList=True, start=False)
        inf._rv = "1"
        self.store.compact()
        self.store.watchList = "on"
        inf.startService()
        self.addCleanup(inf.stopService)
        self.assertTrue(inf.hasSynced)
        self.assertEqual(self.names(inf), ["a"])

    def test_aServerWithTheFeatureOffGetsPagedListsFromThenOn(self):
        """422 for ``sendInitialEvents`` (the WatchList gate off, Kubernetes
        1.27-1.33): the cache lists in pages at once, and never asks again."""
        self.store.watchList = "off"
        for name in "ab":
            self.store.add(challenge(name))
        inf = self.informer(watchList=True)
        self.assertTrue(inf.hasSynced)
        self.assertEqual(self.names(inf), ["a", "b"])
        self.assertEqual([c.verb for c in self.fake.calls], ["watch", "list", "watch"])
        self.assertNotIn("sendInitialEvents", self.fake.calls[-1].params)
        self.assertFalse(inf.watchList)
        self.assertEqual([c for c in self.clock.getDelayedCalls()   # no backoff for a refusal
                          if c.getTime() - self.clock.seconds() < 60], [])
        self.fake.injectError(410, verb="watch")
        self.store.closeWatches()
        self.advanceUntil(lambda: inf.relists == 2)
        self.assertEqual([c.verb for c in self.fake.calls][-2:], ["list", "watch"])

    def test_noBookmarkInTimeFallsBackToPagedLists(self):
        """A server that ignores the parameters (older than 1.27) sends a plain
        watch and never the bookmark: after ``listTimeout`` the cache lists."""
        self.store.watchList = "ignored"
        self.store.add(challenge("a"))
        inf = self.informer(watchList=True, listTimeout=30)
        self.assertFalse(inf.hasSynced)
        self.clock.advance(30)
        self.assertTrue(inf.hasSynced)
        self.assertFalse(inf.watchList)
        self.assertEqual([c.verb for c in self.fake.calls], ["watch", "list", "watch"])

    def test_aStreamEndingBeforeTheBookmarkFallsBack(self):
        self.store.watchList = "ignored"
        self.store.add(challenge("a"))
        inf = self.informer(watchList=True)
        self.store.closeWatches()
        self.assertTrue(inf.hasSynced)
        self.assertFalse(inf.watchList)
        self.assertEqual([c.verb for c in self.fake.calls], ["watch", "list", "watch"])

    def test_transientFailuresKeepTryingWatchList(self):
        self.store.add(challenge("a"))
        self.fake.injectError(503, verb="watch")
        inf = self.informer(watchList=True)
        self.assertFalse(inf.hasSynced)
        self.advanceUntil(lambda: inf.hasSynced)
        self.assertTrue(inf.watchList)
        self.assertEqual([c.verb for c in self.fake.calls], ["watch", "watch"])


class ViewTests(InformerTestsBase):
    """A compact stored form, with listeners seeing the event's object."""

    def test_listenersSeeTheViewTheCacheKeepsTheRecord(self):
        self.store.add(challenge("a"))
        seen = []
        inf = Informer(self.fake, CHALLENGES, self.clock, "challenges",
                       trim=lambda o: (o["metadata"]["name"], o["metadata"]["resourceVersion"]),
                       version=lambda record: record[1],
                       view=lambda o: {"name": o["metadata"]["name"], "key": o["spec"]["key"]})
        inf.addListener(lambda kind, obj: seen.append((kind, obj)))
        inf.startService()
        self.addCleanup(inf.stopService)
        self.store.put(challenge("a", key="k2"))
        self.store.delete(challenge("a"))
        self.assertEqual(seen, [("ADDED", {"name": "a", "key": "key-a"}),
                                ("MODIFIED", {"name": "a", "key": "k2"}),
                                ("DELETED", {"name": "a", "key": "k2"})])
        self.store.add(challenge("b"))
        self.fake.injectError(errors.Unavailable("down"), verb="watch")
        self.store.closeWatches()
        self.store.delete(challenge("b"))
        self.store.compact()
        self.advanceUntil(lambda: inf.relists == 2)
        self.assertEqual(seen[-1], ("DELETED", ("b", str(self.store.resourceVersion - 1))))


class BackoffTests(InformerTestsBase):
    def test_listFailuresBackOffExponentiallyWithCap(self):
        self.fake.injectError(errors.Unavailable("down"), verb="list", times=9)
        inf = self.informer()
        delays = []
        for _ in range(9):
            delays.append(self.pendingDelay())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [0.5, 1, 2, 4, 5, 5, 5, 5, 5])
        self.assertTrue(inf.hasSynced)
        (deadline,) = self.clock.getDelayedCalls()    # only the running watch's deadline
        self.assertGreater(deadline.getTime() - self.clock.seconds(), 300)

    def test_healthyWatchResetsFailures(self):
        self.fake.injectError(errors.Unavailable("down"), verb="list", times=3)
        inf = self.informer()
        self.advanceUntil(lambda: inf.hasSynced)
        self.clock.advance(60)                          # a long, healthy watch
        self.fake.injectError(errors.Unavailable("down"), verb="watch")
        self.store.closeWatches()
        self.assertEqual(self.pendingDelay(), 0.5)

    def test_serverDownThenBackReconnects(self):
        """Down: every call fails and watches drop; back: the cache catches up."""
        self.store.add(challenge("a"))
        inf = self.informer()
        self.fake.injectError(errors.Unavailable("connection refused"), times=6)
        self.store.closeWatches()
        self.store.add(challenge("b"))
        delays = []
        while self.store.watchCount == 0:
            delays.append(self.pendingDelay())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [0.5, 1, 2, 4, 5, 5, 5])
        self.assertEqual(self.names(inf), ["a", "b"])

    def test_retryAfterIsAFloor(self):
        """A 429 saying Retry-After: 7 is not asked again sooner."""
        busy = errors.Unavailable("too many requests", code=429, status={
            "kind": "Status", "code": 429, "reason": "TooManyRequests",
            "details": {"retryAfterSeconds": 7}})
        self.fake.injectError(busy, verb="list", times=2)
        self.informer()
        self.assertEqual(self.pendingDelay(), 7)
        self.clock.advance(7)
        self.assertEqual(self.pendingDelay(), 7)

    def test_quickCleanEndsBackOff(self):
        """A server that ends every watch at once must not cause a hot loop."""
        inf = self.informer()
        for expected in (0.5, 1, 2):
            self.store.closeWatches()
            self.assertEqual(self.pendingDelay(), expected)
            self.clock.advance(expected)
        self.assertEqual(inf.relists, 1)

    def test_backoffBounds(self):
        b = Backoff(base=0.5, cap=30.0, rng=random.Random(7))
        for n in range(1, 60):
            d = min(30.0, 0.5 * 2 ** (n - 1))
            self.assertTrue(d / 2 <= b.delay(n) <= d, n)


class _HangOnce(FakeKubernetesClient):
    """The first LIST never answers (a client without its own timeout)."""

    hung = False

    def listPages(self, path, params, onPage):
        if not self.hung:
            self.hung = True
            return defer.Deferred()
        return super().listPages(path, params, onPage)


class DeadlineTests(InformerTestsBase):
    def test_listThatNeverAnswersIsRetried(self):
        self.fake = _HangOnce(self.store)
        inf = self.informer(listTimeout=20)
        self.assertFalse(inf.hasSynced)
        self.clock.advance(20)
        self.assertEqual(self.pendingDelay(), 0.5)
        self.clock.advance(0.5)
        self.assertTrue(inf.hasSynced)

    def test_watchIsBoundedBeyondItsServerTimeout(self):
        inf = self.informer(watchGrace=60)
        seconds = int(self.fake.calls[-1].params["timeoutSeconds"])
        self.clock.advance(seconds + 59)
        self.assertEqual(self.fake.countCalls("watch"), 1)
        self.clock.advance(1)
        self.assertEqual(self.store.watchCount, 0)
        self.assertEqual(self.pendingDelay(), 0.5)
        self.clock.advance(0.5)
        self.assertEqual((self.store.watchCount, self.fake.countCalls("watch"), inf.relists), (1, 2, 1))


class StopTests(InformerTestsBase):
    def test_stopCancelsWatch(self):
        inf = self.informer()
        self.assertEqual(self.store.watchCount, 1)
        self.successResultOf(inf.stopService())
        self.assertEqual(self.store.watchCount, 0)
        self.store.add(challenge("late"))
        self.assertIsNone(inf.get("ns", "late"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopCancelsBackoff(self):
        self.fake.injectError(errors.Unavailable("down"), verb="list")
        inf = self.informer()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(inf.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(inf.hasSynced)


class StandInTests(TestCase):
    """The informer over real TLS against the stand-in, including a restart."""

    def setUp(self):
        self.server = StandInAPIServer(reactor=reactor)
        self.addCleanup(self.server.stop)
        return self.server.start()

    def waitFor(self, predicate, what):
        return pollUntil(reactor, predicate, 10, interval=0.025, what=what)

    @defer.inlineCallbacks
    def test_listTrimmedPageByPage(self):
        """Each LIST page is trimmed as it arrives, before the next is asked for:
        a sync never holds more than one page of whole objects."""
        store = self.server.store
        for i in range(5):
            store.add(challenge("c%d" % i))
        client = KubeClient(self.server.clientConfig(), reactor=reactor, pageSize=2)
        self.addCleanup(client.close)
        listsWhenTrimmed = []

        def trim(obj):
            listsWhenTrimmed.append(sum(1 for r in store.requests if r[0] == "list"))
            return {"metadata": obj["metadata"]}
        inf = Informer(client, CHALLENGES, reactor, "challenges", trim=trim)
        inf.startService()
        self.addCleanup(inf.stopService)
        yield inf.whenSynced()
        self.assertEqual(listsWhenTrimmed, [1, 1, 2, 2, 3])
        self.assertEqual(sorted(o["metadata"]["name"] for o in inf.list()),
                         ["c%d" % i for i in range(5)])
        self.assertNotIn("spec", inf.get("ns", "c0"))

    @defer.inlineCallbacks
    def test_watchListOverTLSThenFallbackWhereRefused(self):
        """Over the wire: a WatchList sync (no LIST at all) that goes on live, and
        against a server with the feature off, paged LISTs instead."""
        store = self.server.store
        for i in range(300):
            store.add(challenge("c%03d" % i))
        client = KubeClient(self.server.clientConfig(), reactor=reactor, pageSize=100)
        self.addCleanup(client.close)
        inf = Informer(client, CHALLENGES, reactor, "challenges", trim=trim, watchList=True)
        inf.startService()
        self.addCleanup(inf.stopService)
        yield inf.whenSynced()
        self.assertEqual(len(inf), 300)
        self.assertEqual([r[0] for r in store.requests], ["watch"])
        store.add(challenge("late"))
        yield self.waitFor(lambda: inf.get("ns", "late"), "the live event")
        yield inf.stopService()
        store.watchList = "off"
        mark = len(store.requests)
        again = Informer(client, CHALLENGES, reactor, "challenges2", trim=trim, watchList=True)
        again.startService()
        self.addCleanup(again.stopService)
        yield again.whenSynced()
        self.assertEqual(len(again), 301)
        self.assertEqual([r[0] for r in store.requests[mark:mark + 5]],
                         ["watch", "list", "list", "list", "list"])
        self.assertFalse(again.watchList)

    @defer.inlineCallbacks
    def test_syncWatchAndReconnectAfterRestart(self):
        store = self.server.store
        store.add(challenge("a"))
        client = KubeClient(self.server.clientConfig(), reactor=reactor, requestTimeout=2.0,
                            connectTimeout=1.0)
        self.addCleanup(client.close)
        inf = Informer(client, CHALLENGES, reactor, "challenges",
                       indexers={"byKey": lambda o: [o["spec"]["key"]]},
                       backoff=Backoff(base=0.05, cap=0.2))
        inf.startService()
        self.addCleanup(inf.stopService)
        yield inf.whenSynced()
        self.assertEqual(len(inf), 1)
        yield self.waitFor(lambda: store.watchCount == 1, "the watch")
        store.add(challenge("b", key="kb"))
        yield self.waitFor(lambda: inf.byIndex("byKey", "kb"), "the ADDED event")
        yield self.server.down()
        store.delete(challenge("a"))
        store.add(challenge("c"))
        store.compact()
        yield self.server.up()
        yield self.waitFor(lambda: inf.get("ns", "c") is not None and inf.get("ns", "a") is None,
                           "reconnect and relist")
        self.assertEqual(sorted(o["metadata"]["name"] for o in inf.list()), ["b", "c"])
        self.assertGreaterEqual(inf.relists, 2)
