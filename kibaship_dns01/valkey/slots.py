"""Cluster key slots (SPEC §9): CRC16/XMODEM of the hash tag, mod 16384.

The rules are those of the Valkey/Redis cluster specification: if the key
contains ``{``, and a ``}`` follows it, and at least one byte sits between
the *first* ``{`` and the first ``}`` after it, only those bytes are hashed;
otherwise the whole key is.  ``binascii.crc_hqx`` with an initial value of 0
is exactly CRC16/XMODEM (CRC16 of ``b"123456789"`` is ``0x31C3``).
"""
import binascii

SLOT_COUNT = 16384


def _bytes(key):
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def hashTag(key):
    """The bytes of ``key`` that decide its slot."""
    key = _bytes(key)
    start = key.find(b"{")
    if start == -1:
        return key
    end = key.find(b"}", start + 1)
    if end == -1 or end == start + 1:
        return key
    return key[start + 1:end]


def crc16(data):
    """CRC16/XMODEM as the cluster uses it."""
    return binascii.crc_hqx(_bytes(data), 0)


def keySlot(key):
    """The cluster slot (0..16383) of ``key`` (``str`` is UTF-8 encoded)."""
    return crc16(hashTag(key)) % SLOT_COUNT
