"""Hostile DNS packets: one hypothesis generator for the suite (and a later drill).

Random bytes are refused by the first length check and never reach what
guards the answer, so most cases start from a *valid* query for a name that
matters (the apex, a label with keys, one without, a nameserver, names
outside the zone, in any letter case) and bend it: bits flipped, the end cut
off or extended, the header's counts made up, the question's name replaced
by compression pointers (a loop, into the header, forward), opcodes and
flags no query has, OPT records of every payload size and version and two of
them, answer records appended to the query.

:func:`packetCases` labels each packet with the class it came from;
:func:`packets` is the same strategy without labels.  :func:`amplifies` is the
judge of what comes back: no answer is larger than :data:`AMPLIFICATION` times
its query, except a TXT answer at a label with keys (the one answer worth its
size).
"""
import struct

from hypothesis import strategies as st
from twisted.names import dns

from kibaship_dns01.testing.dnsmessages import optRecord, queryBytes

QTYPES = (dns.A, dns.AAAA, dns.TXT, dns.SOA, dns.NS, dns.CNAME, dns.MX, dns.HINFO,
          dns.ALL_RECORDS, dns.AXFR, dns.IXFR, dns.OPT, 0, 65535)
#: mostly what a resolver sends, so most cases reach the zone's answers
QCLASSES = (dns.IN,) * 8 + (dns.CH, dns.HS, dns.ANY, 0, 65535)
OPCODES = (dns.OP_QUERY,) * 8 + (1, 2, 4, 5, 15)
EDNS_VERSIONS = (0,) * 8 + (1, 255)
#: an answer may be this many times its query's size (but a TXT answer with keys)
AMPLIFICATION = 3


def _recase(name, pattern):
    return "".join(c.upper() if (pattern >> (i % 31)) & 1 else c for i, c in enumerate(name))


def _names(zone, labels):
    base = [zone, "ns1." + zone, "www." + zone, "x.y." + zone, "example.com", "com", "",
            "version.bind", "a" * 63 + "." + zone, ".".join(["b" * 50] * 4)]
    return base + ["%s.%s" % (label, zone) for label in labels] + \
        ["_acme-challenge.%s.%s" % (label, zone) for label in labels]


def validQueries(zone, labels):
    """Well-formed queries for the names that matter, in any case, with any OPT."""
    names = st.builds(_recase, st.sampled_from(_names(zone, labels)),
                      st.integers(0, 2 ** 31 - 1))
    edns = st.one_of(st.none(), st.builds(optRecord, payload=st.integers(0, 65535),
                                          version=st.sampled_from(EDNS_VERSIONS),
                                          options=st.binary(max_size=40)))
    return st.builds(queryBytes, names, type=st.sampled_from(QTYPES),
                     cls=st.sampled_from(QCLASSES), id=st.integers(0, 65535), edns=edns,
                     opCode=st.sampled_from(OPCODES),
                     recDes=st.integers(0, 1))


def _flipBits(data, positions):
    out = bytearray(data)
    for p in positions:
        out[p % len(out)] ^= 1 << (p % 8)
    return bytes(out)


def _withCounts(data, counts):
    return data[:4] + struct.pack("!4H", *counts) + data[12:]


def _pointerName(data, pointer):
    """The question's name replaced by a compression pointer (to itself: a loop)."""
    return data[:12] + struct.pack("!H", 0xC000 | pointer) + b"\x00\x10\x00\x01" + data[12:]


def _twoOPTs(data):
    return data[:10] + struct.pack("!H", 2) + data[12:] + b"\x00\x00\x29\x04\xd0" + bytes(6)


def _withAnswers(data, extra):
    """``extra`` bytes appended and counted as an answer record."""
    record = b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x0a" + struct.pack("!H", len(extra)) + extra
    return data[:6] + struct.pack("!H", 1) + data[8:] + record


def _flags(data, byte2, byte3):
    return data[:2] + bytes((byte2, byte3)) + data[4:]


def packetCases(zone, labels):
    """``(class, packet)`` pairs; ``labels`` are delegation labels to aim at."""
    valid = validQueries(zone, labels)
    return st.one_of(
        st.tuples(st.just("valid"), valid),
        st.tuples(st.just("random"), st.binary(max_size=600)),
        st.tuples(st.just("bitflip"), st.builds(_flipBits, valid,
                                                st.lists(st.integers(0, 4096), min_size=1,
                                                         max_size=6))),
        st.tuples(st.just("truncated"), st.builds(lambda d, n: d[:n % (len(d) + 1)], valid,
                                                  st.integers(0, 600))),
        st.tuples(st.just("extended"), st.builds(bytes.__add__, valid,
                                                 st.binary(min_size=1, max_size=300))),
        st.tuples(st.just("counts"), st.builds(_withCounts, valid,
                                               st.tuples(*[st.integers(0, 65535)] * 4))),
        st.tuples(st.just("pointer"), st.builds(_pointerName, valid,
                                                st.sampled_from((0, 2, 12, 14, 0x3FFF)))),
        st.tuples(st.just("two_opts"), st.builds(_twoOPTs, valid)),
        st.tuples(st.just("with_answers"), st.builds(_withAnswers, valid,
                                                     st.binary(max_size=200))),
        st.tuples(st.just("flags"), st.builds(_flags, valid, st.integers(0, 255),
                                              st.integers(0, 255))),
    )


def packets(zone, labels):
    """The packets of :func:`packetCases`, without their class."""
    return packetCases(zone, labels).map(lambda case: case[1])


def legitimateTXT(answer, keyedNames):
    """Whether ``answer`` (a :class:`~kibaship_dns01.testing.dnsmessages.ReadAnswer`) is
    a TXT answer at one of ``keyedNames`` (lower-case str, no trailing dot: labels with
    keys): its size is the keys', not an attack's."""
    names = {name.encode("ascii") for name in keyedNames}
    return answer.rcode == dns.OK and bool(answer.answers) and all(
        rr.type == dns.TXT and rr.name.name.lower() in names for rr in answer.answers)


def amplifies(query, data, answer, keyedNames):
    """Whether answer bytes ``data`` (read as ``answer``) to ``query`` are larger than
    :data:`AMPLIFICATION` times the query, and not a :func:`legitimateTXT` answer."""
    return len(data) > AMPLIFICATION * len(query) and not legitimateTXT(answer, keyedNames)
