"""ValkeyDelegationStore on the shared six-node cluster: what one daemon adds, another
serves at once; CleanUp withdraws; keys expire on their own; the set stays bounded."""
import time

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from kibaship_dns01.delegation.store import MAX_KEYS, ValkeyDelegationStore, keysKey
from kibaship_dns01.interfaces import IDelegationStore
from kibaship_dns01.valkey import ValkeyDurabilityError, ValkeyPublisher
from kibaship_dns01.valkey.slots import keySlot
from tests.valkeysupport import SharedClusterCase

KEY = "dDlzkoMWZo5NLYFs8-XpPvEmEGdikSbIOfVu3WNJW84"
OTHER = "AAAAkoMWZo5NLYFs8-XpPvEmEGdikSbIOfVu3WNJW84"


def labelFor(test):
    """A label of its own per test (the shared cluster outlives the test)."""
    import base64
    import hashlib
    digest = hashlib.sha256(test.id().encode() + str(time.time()).encode()).digest()[:20]
    return base64.b32encode(digest).decode().lower()


class StoreTests(SharedClusterCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(time.time())  # PEXPIREAT takes absolute times
        return super().setUp()

    def _started(self, cluster):
        super()._started(cluster)
        self.store = self.storeOn(self.publisher)
        self.label = labelFor(self)

    def keysAt(self, store):
        """``store.keys(self.label)``, its read sent: the end of the reactor turn is
        the test clock's (the store's clock also tells the time keys expire by)."""
        d = store.keys(self.label)
        self.clock.advance(0)
        return d

    def storeOn(self, publisher, target=None):
        return ValkeyDelegationStore(publisher, lambda: target or self.target, self.clock)

    def anotherDaemon(self):
        """A second publisher and store: another replica of the daemon."""
        publisher = ValkeyPublisher(reactor)
        publisher.startService()
        self.addCleanup(publisher.stopService)
        return self.storeOn(publisher)

    def test_providesInterface(self):
        self.assertTrue(verifyObject(IDelegationStore, self.store))

    @defer.inlineCallbacks
    def test_addedKeyIsServedByAnotherReplicaAtOnce(self):
        other = self.anotherDaemon()
        self.assertEqual((yield self.keysAt(other)), ())
        yield self.store.add(self.label, KEY, 3600)
        self.assertEqual((yield self.keysAt(other)), (KEY,))

    @defer.inlineCallbacks
    def test_addIsIdempotentAndKeysAccumulate(self):
        yield self.store.add(self.label, KEY, 3600)
        yield self.store.add(self.label, KEY, 3600)
        yield self.store.add(self.label, OTHER, 3600)
        self.assertEqual(sorted((yield self.keysAt(self.store))), sorted([KEY, OTHER]))

    @defer.inlineCallbacks
    def test_withdrawRemovesOnlyThatKey(self):
        yield self.store.add(self.label, KEY, 3600)
        yield self.store.add(self.label, OTHER, 3600)
        yield self.store.withdraw(self.label, KEY)
        self.assertEqual((yield self.keysAt(self.store)), (OTHER,))
        yield self.store.withdraw(self.label, KEY)  # again: nothing to do, no error
        yield self.store.withdraw(self.label, OTHER)
        self.assertEqual((yield self.keysAt(self.store)), ())
        self.assertEqual(self.cluster.cli(self.owner(), "EXISTS", keysKey(self.label)), "0")

    def owner(self):
        return self.cluster.slotOwner(keySlot(keysKey(self.label)))

    @defer.inlineCallbacks
    def test_keysExpireOnTheirOwn(self):
        yield self.store.add(self.label, KEY, 60)
        self.clock.advance(30)
        yield self.store.add(self.label, OTHER, 60)
        self.clock.advance(31)  # KEY's 60 s are over, OTHER has 29 s left
        self.assertEqual((yield self.keysAt(self.store)), (OTHER,))
        # the whole set expires with its last key (Valkey's own clock: real time)
        expires = int(self.cluster.cli(self.owner(), "PEXPIRETIME", keysKey(self.label)))
        self.assertLessEqual(abs(expires - (self.clock.seconds() + 29) * 1000), 1)

    @defer.inlineCallbacks
    def test_aReAddRenewsTheExpiry(self):
        yield self.store.add(self.label, KEY, 60)
        self.clock.advance(50)
        yield self.store.add(self.label, KEY, 60)
        self.clock.advance(50)
        self.assertEqual((yield self.keysAt(self.store)), (KEY,))

    @defer.inlineCallbacks
    def test_atMostMaxKeysPerLabelOldestFirst(self):
        keys = ["k%041d" % i for i in range(MAX_KEYS + 3)]
        for key in keys:
            yield self.store.add(self.label, key, 3600)
            self.clock.advance(1)
        served = yield self.keysAt(self.store)
        self.assertEqual(sorted(served), keys[3:])

    @defer.inlineCallbacks
    def test_durabilityChecked(self):
        # one replica per primary: WAIT 1 succeeds; asking for 2 cannot be met
        yield self.storeOn(self.publisher, self.cluster.target(minReplicas=1)).add(
            self.label, KEY, 3600)
        store = self.storeOn(self.publisher, self.cluster.target(minReplicas=2, readTimeout=0.2))
        failure = yield self.assertFailure(store.add(self.label, OTHER, 3600),
                                           ValkeyDurabilityError)
        self.assertIn("delegation label %s reached 1 of the 2" % (self.label,), str(failure))
