"""ValkeyDelegationStore.keys shares a read only among the lookups that arrived before
it was sent: a query never gets its answer from a read sent before it arrived, so a
Present's 201 (its key written) is seen by every query that comes after it.

A fake clock is the reactor (its ``advance(0)`` is the end of a turn) and a manual
publisher holds every command until the test answers it."""
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kibaship_dns01.delegation.store import MAX_KEYS, ValkeyDelegationStore, keysKey
from kibaship_dns01.interfaces import IDelegationStore
from kibaship_dns01.testing.manualvalkey import ManualPublisher
from kibaship_dns01.valkey.errors import ValkeyUnavailable

LABEL = "a" * 32
OTHER = "b" * 32
KEY = "dDlzkoMWZo5NLYFs8-XpPvEmEGdikSbIOfVu3WNJW84"


class SharedReadTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.publisher = ManualPublisher()
        self.store = ValkeyDelegationStore(self.publisher, lambda: "target", self.clock)

    def endOfTurn(self):
        self.clock.advance(0)

    def test_providesInterface(self):
        self.assertTrue(verifyObject(IDelegationStore, self.store))

    def test_lookupsOfOneTurnShareOneRead(self):
        first, second = self.store.keys(LABEL), self.store.keys(LABEL)
        self.assertEqual(self.publisher.sent, [])  # nothing is sent within the turn
        self.endOfTurn()
        [read] = self.publisher.sent
        self.assertEqual((read.key, read.command), (keysKey(LABEL), (
            "ZRANGEBYSCORE", keysKey(LABEL), "(1000000", "+inf", "LIMIT", "0", str(MAX_KEYS))))
        self.assertNoResult(first)
        read.answer([KEY.encode()])
        self.assertEqual(self.successResultOf(first), (KEY,))
        self.assertEqual(self.successResultOf(second), (KEY,))

    def test_aLookupAfterTheReadWasSentNeverSharesIt(self):
        """The first read is in flight when the key is written (a Present's 201) and
        the next query arrives: that query waits for a read of its own, which sees the
        key, even though the first read's answer comes later and says nothing."""
        before = self.store.keys(LABEL)
        self.endOfTurn()
        [inFlight] = self.publisher.sent
        after = self.store.keys(LABEL)
        self.assertEqual(len(self.publisher.sent), 1)
        inFlight.answer([])
        self.assertEqual(self.successResultOf(before), ())
        self.assertNoResult(after)
        self.endOfTurn()
        own = self.publisher.sent[1]
        self.assertEqual(own.command[:2], ("ZRANGEBYSCORE", keysKey(LABEL)))
        own.answer([KEY.encode()])
        self.assertEqual(self.successResultOf(after), (KEY,))

    def test_eachLabelHasItsOwnRead(self):
        a, b, a2 = self.store.keys(LABEL), self.store.keys(OTHER), self.store.keys(LABEL)
        self.endOfTurn()
        reads = {sent.key: sent for sent in self.publisher.sent}
        self.assertEqual(sorted(reads), sorted([keysKey(LABEL), keysKey(OTHER)]))
        reads[keysKey(OTHER)].answer([b"other"])
        self.assertEqual(self.successResultOf(b), ("other",))
        self.assertNoResult(a)
        reads[keysKey(LABEL)].answer([KEY.encode()])
        self.assertEqual((self.successResultOf(a), self.successResultOf(a2)), ((KEY,), (KEY,)))

    def test_theReadAsksForTheKeysLiveWhenItIsSent(self):
        """The expiry bound is the read's own time: a key whose time ran out between the
        query and the read is not served."""
        self.store.keys(LABEL)
        self.clock.advance(2.5)  # the turn ended late
        self.assertEqual(self.publisher.sent[0].command[2], "(1002500")

    def test_aFailedReadFailsEveryLookupOfIt(self):
        first, second = self.store.keys(LABEL), self.store.keys(LABEL)
        self.endOfTurn()
        self.publisher.sent[0].fail(ValkeyUnavailable("node 10.0.0.1:7000 went away"))
        for d in (first, second):
            self.failureResultOf(d, ValkeyUnavailable)

    def test_aCancelledLookupLeavesTheReadToTheOthers(self):
        """The responder cancels a lookup that took too long (SERVFAIL); the others
        sharing its read still get the keys."""
        impatient, patient = self.store.keys(LABEL), self.store.keys(LABEL)
        self.endOfTurn()
        impatient.cancel()
        self.failureResultOf(impatient, defer.CancelledError)
        self.publisher.sent[0].answer([KEY.encode()])
        self.assertEqual(self.successResultOf(patient), (KEY,))

    def test_oneScheduledSendPerTurn(self):
        for label in (LABEL, OTHER, LABEL):
            self.store.keys(label)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.endOfTurn()
        self.assertEqual(len(self.publisher.sent), 2)
        self.store.keys(LABEL)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the next turn's
