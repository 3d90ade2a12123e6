"""One contract, two implementations: the in-memory FakeStreamPublisher and
the real ValkeyPublisher on the shared local cluster must behave the same."""
import json
import uuid

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from kibaship_dns01.interfaces import IStreamPublisher
from kibaship_dns01.testing.fakevalkey import FakeStreamPublisher
from kibaship_dns01.testing.valkeycluster import streamEntries
from tests.valkeysupport import SharedClusterCase
from kibaship_dns01.valkey import (
    SEQUENCE_TOKEN, AppendResult, ValkeyUnavailable, streamKey)
from kibaship_dns01.valkey.script import MarkOp, markKey


def eventData(note="x"):
    return json.dumps({"metadata": {"sequence_number": SEQUENCE_TOKEN}, "note": note})


class PublisherContractMixin:
    """Subclasses provide ``publisher``, ``target``, ``readStream``, ``passTime``."""

    def project(self):
        return str(uuid.uuid4())

    def test_providesInterface(self):
        self.assertTrue(verifyObject(IStreamPublisher, self.publisher))

    async def _appendAndRead(self):
        p = self.project()
        entryId = await self.publisher.append(self.target, p, {"a": "1", "b": "2"}, "k1")
        return p, entryId, await self.readStream(p)

    @defer.inlineCallbacks
    def test_appendAddsSequence(self):
        p, entryId, entries = yield defer.ensureDeferred(self._appendAndRead())
        self.assertIsInstance(entryId, str)
        self.assertEqual(entries, [(entryId, {"a": "1", "b": "2", "sequence": "1"})])

    @defer.inlineCallbacks
    def test_duplicateReturnsFirstId(self):
        p = self.project()
        first = yield self.publisher.appendEvent(self.target, p, {"a": "1"}, "same")
        again = yield self.publisher.appendEvent(self.target, p, {"a": "changed"}, "same")
        self.assertEqual(first, AppendResult(first.entryId, 1, False, streamKey(p)))
        self.assertEqual(again, AppendResult(first.entryId, 1, True, streamKey(p)))
        entries = yield self.readStream(p)
        self.assertEqual(entries, [(first.entryId, {"a": "1", "sequence": "1"})])

    @defer.inlineCallbacks
    def test_confirmAnswersForTheFirstAppend(self):
        p = self.project()
        first = yield self.publisher.appendEvent(self.target, p, {"a": "1"}, "seen")
        confirmed = yield self.publisher.confirm(self.target, p, "seen")
        self.assertEqual(confirmed, AppendResult(first.entryId, 1, True, streamKey(p)))
        self.assertIsNone((yield self.publisher.confirm(self.target, p, "never-appended")))
        self.assertEqual(len((yield self.readStream(p))), 1, "a confirmation appends nothing")

    @defer.inlineCallbacks
    def test_confirmMissesOnceTheWindowPassed(self):
        p = self.project()
        yield self.publisher.appendEvent(self.target, p, {"a": "1"}, "short", window=0.2)
        yield self.passTime(0.3)
        self.assertIsNone((yield self.publisher.confirm(self.target, p, "short")))

    @defer.inlineCallbacks
    def test_sequencePerProject(self):
        p, q = self.project(), self.project()
        seqs = []
        for i, project in enumerate([p, p, q, p]):
            r = yield self.publisher.appendEvent(self.target, project, {"i": str(i)}, "k%d" % i)
            seqs.append(r.sequence)
        self.assertEqual(seqs, [1, 2, 1, 3])
        ids = [e[0] for e in (yield self.readStream(p))]
        self.assertEqual(ids, sorted(ids, key=lambda i: tuple(map(int, i.split("-")))))

    @defer.inlineCallbacks
    def test_sequenceSubstitutedIntoEventData(self):
        p = self.project()
        yield self.publisher.append(self.target, p, {"a": "1"}, "k0")
        r = yield self.publisher.appendEvent(
            self.target, p, {"event_data": eventData('"__kibaship_sequence__" in text? no')},
            "k1", sequenceField="event_data")
        self.assertEqual(r.sequence, 2)
        fields = (yield self.readStream(p))[-1][1]
        data = json.loads(fields["event_data"])
        self.assertEqual(data["metadata"]["sequence_number"], 2)
        self.assertEqual(fields["sequence"], "2")

    @defer.inlineCallbacks
    def test_badArguments(self):
        p = self.project()
        cases = [
            (p, {"sequence": "1"}, "k", None),
            (p, {}, "k", None),
            (p, {"a": None}, "k", None),
            (p, {"a": "1"}, "", None),
            ("{evil}", {"a": "1"}, "k", None),
            (p, {"event_data": "{}"}, "k", "event_data"),
            (p, {"event_data": eventData() + eventData()}, "k", "event_data"),
            (p, {"a": "1"}, "k", "event_data"),
        ]
        for project, fields, key, seqField in cases:
            yield self.assertFailure(self.publisher.append(
                self.target, project, fields, key, sequenceField=seqField), ValueError)
        self.assertEqual((yield self.readStream(p)), [])
        # the counter did not move either
        r = yield self.publisher.appendEvent(self.target, p, {"a": "1"}, "k")
        self.assertEqual(r.sequence, 1)

    @defer.inlineCallbacks
    def test_windowExpires(self):
        target = self.target.__class__(**{**self._targetFields(), "idempotencyWindow": 0.2})
        p = self.project()
        first = yield self.publisher.appendEvent(target, p, {"a": "1"}, "k")
        yield self.passTime(0.3)
        second = yield self.publisher.appendEvent(target, p, {"a": "1"}, "k")
        self.assertFalse(second.duplicate)
        self.assertNotEqual(first.entryId, second.entryId)
        self.assertEqual(second.sequence, 2)

    def _targetFields(self):
        import attr
        return {f.name: getattr(self.target, f.name) for f in attr.fields(type(self.target))}

    @defer.inlineCallbacks
    def test_check(self):
        self.assertIsNone((yield self.publisher.check(self.target)))

    @defer.inlineCallbacks
    def test_markSetWithAFreshAppendOnly(self):
        """The mark is written atomically with a fresh append, never by a duplicate."""
        p = self.project()
        key = markKey(p, "certificates", "ad-x")
        yield self.publisher.appendEvent(self.target, p, {"a": "1"}, "present",
                                         mark=MarkOp.set(key, {"revision": "1", "ch:u": "x"}, 60))
        again = yield self.publisher.appendEvent(
            self.target, p, {"a": "1"}, "present", mark=MarkOp.set(key, {"revision": "9"}, 60))
        self.assertTrue(again.duplicate)
        values = yield self.publisher.readFields(self.target, p, key, ["revision", "ch:u", "no"])
        self.assertEqual(values, ["1", "x", None])

    @defer.inlineCallbacks
    def test_requireMarkSkipsWithoutAppending(self):
        p = self.project()
        key = markKey(p, "certificates", "ad-x")
        skipped = yield self.publisher.appendEvent(
            self.target, p, {"a": "1"}, "issued", mark=MarkOp.require(key, "revision", "1"))
        self.assertEqual((skipped.skipped, skipped.duplicate, skipped.sequence), (True, False, 0))
        yield self.publisher.appendEvent(self.target, p, {"p": "1"}, "present",
                                         mark=MarkOp.set(key, {"revision": "1"}, 60))
        wrong = yield self.publisher.appendEvent(
            self.target, p, {"a": "1"}, "issued", mark=MarkOp.require(key, "revision", "2"))
        self.assertTrue(wrong.skipped)
        landed = yield self.publisher.appendEvent(
            self.target, p, {"a": "1"}, "issued", mark=MarkOp.require(key, "revision", "1"),
            window=600)
        self.assertEqual((landed.skipped, landed.sequence), (False, 2))
        self.assertEqual([f for _, f in (yield self.readStream(p))],
                         [{"p": "1", "sequence": "1"}, {"a": "1", "sequence": "2"}])

    @defer.inlineCallbacks
    def test_markOfAnotherProjectRefused(self):
        p = self.project()
        yield self.assertFailure(self.publisher.appendEvent(
            self.target, p, {"a": "1"}, "k",
            mark=MarkOp.set(markKey(self.project(), "n", "c"), {"f": "v"}, 60)), ValueError)
        yield self.assertFailure(self.publisher.readFields(
            self.target, p, markKey(self.project(), "n", "c"), ["f"]), ValueError)
        self.assertEqual((yield self.readStream(p)), [])


class FakeContractTests(PublisherContractMixin, TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.publisher = FakeStreamPublisher(self.clock)
        from kibaship_dns01.valkey import ValkeyTarget
        self.target = ValkeyTarget(seeds="fake:6379")

    def readStream(self, project):
        return defer.succeed(self.publisher.entries(project, self.target))

    def passTime(self, seconds):
        self.clock.advance(seconds)
        return defer.succeed(None)


class FakeProgrammingTests(TestCase):
    """The fake's failure knobs behave as documented."""

    def setUp(self):
        from kibaship_dns01.valkey import ValkeyTarget
        self.publisher = FakeStreamPublisher()
        self.target = ValkeyTarget(seeds="fake:6379")

    def test_failBeforeAppend(self):
        self.publisher.failNext(ValkeyUnavailable("down"), times=2)
        for _ in range(2):
            self.failureResultOf(self.publisher.append(self.target, "p", {"a": "1"}, "k"),
                                 ValkeyUnavailable)
        self.assertEqual(self.publisher.entries("p"), [])
        self.successResultOf(self.publisher.append(self.target, "p", {"a": "1"}, "k"))
        self.assertEqual(len(self.publisher.entries("p")), 1)

    def test_failAfterAppendThenRetryIsDuplicate(self):
        """A lost reply: the entry exists, the retry returns it."""
        self.publisher.failNext(ValkeyUnavailable("reply lost"), afterAppend=True)
        self.failureResultOf(self.publisher.append(self.target, "p", {"a": "1"}, "k"),
                             ValkeyUnavailable)
        r = self.successResultOf(self.publisher.appendEvent(self.target, "p", {"a": "1"}, "k"))
        self.assertTrue(r.duplicate)
        self.assertEqual(len(self.publisher.entries("p")), 1)

    def test_failCheck(self):
        self.publisher.failNext(ValkeyUnavailable("down"), method="check")
        self.failureResultOf(self.publisher.check(self.target), ValkeyUnavailable)
        self.successResultOf(self.publisher.check(self.target))
        self.assertEqual([c[0] for c in self.publisher.calls], ["check", "check"])

    def test_idsIncreaseWithinOneMillisecond(self):
        ids = [self.successResultOf(self.publisher.append(self.target, "p", {"a": "1"}, str(i)))
               for i in range(3)]
        self.assertEqual(ids, ["0-0", "0-1", "0-2"])


class RealContractTests(PublisherContractMixin, SharedClusterCase):

    def readStream(self, project):
        key = streamKey(project)
        client = self.publisher.clientFor(self.target).client
        return client.execute(key, lambda c: c.send("XRANGE", key, "-", "+")).addCallback(
            streamEntries)

    def passTime(self, seconds):
        return task.deferLater(reactor, seconds, lambda: None)
