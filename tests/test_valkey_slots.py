"""Key slots and hash tags (SPEC §9): known vectors and the tag rules."""
from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.valkey.slots import SLOT_COUNT, crc16, hashTag, keySlot


class KnownVectorsTests(SynchronousTestCase):
    def test_crc16Check(self):
        """CRC16/XMODEM's standard check value."""
        self.assertEqual(crc16(b"123456789"), 0x31C3)

    def test_specExamples(self):
        """The cluster specification's examples hash the tag only."""
        self.assertEqual(keySlot("{user1000}.following"), keySlot("{user1000}.followers"))
        self.assertEqual(keySlot("{user1000}.following"), keySlot("user1000"))
        self.assertEqual(hashTag("foo{}{bar}"), b"foo{}{bar}")
        self.assertEqual(hashTag("foo{{bar}}zap"), b"{bar")
        self.assertEqual(hashTag("foo{bar}{zap}"), b"bar")

    def test_knownSlots(self):
        """Slots as valkey's CLUSTER KEYSLOT reports them."""
        self.assertEqual(keySlot("foo"), 12182)
        self.assertEqual(keySlot("bar"), 5061)
        self.assertEqual(keySlot(""), 0)

    def test_projectKeysShareSlot(self):
        """Every key of a project lands in the project's slot."""
        tag = "{project:0b7c1e7e-8a3c-4c55-9a77-1f2e3d4c5b6a}"
        slots = {keySlot(tag + suffix) for suffix in (":events", ":sequence", ":idempotency:x")}
        self.assertEqual(len(slots), 1)

    def test_strAndBytesAgree(self):
        self.assertEqual(keySlot("caf\u00e9"), keySlot("caf\u00e9".encode("utf-8")))


_text = st.binary(max_size=20)
_noBraces = st.binary(max_size=12).map(lambda b: b.replace(b"{", b"").replace(b"}", b""))


class HashTagRulesTests(SynchronousTestCase):
    @given(_noBraces)
    def test_noBraceHashesWholeKey(self, key):
        self.assertEqual(hashTag(key), key)

    @given(_noBraces, _noBraces.filter(bool), _text)
    def test_firstNonEmptyTagWins(self, prefix, tag, suffix):
        """``prefix{tag}suffix`` hashes ``tag`` whatever follows."""
        key = prefix + b"{" + tag + b"}" + suffix
        self.assertEqual(hashTag(key), tag)
        self.assertEqual(keySlot(key), keySlot(tag))

    @given(_noBraces, _text)
    def test_emptyFirstTagHashesWholeKey(self, prefix, suffix):
        """``{}`` right after the first ``{`` disables tags for the key."""
        key = prefix + b"{}" + suffix
        self.assertEqual(hashTag(key), key)

    @given(_noBraces, _noBraces)
    def test_unclosedBraceHashesWholeKey(self, prefix, rest):
        key = prefix + b"{" + rest
        self.assertEqual(hashTag(key), key)

    @given(_text)
    def test_slotInRange(self, key):
        self.assertTrue(0 <= keySlot(key) < SLOT_COUNT)
