"""DNS messages on the wire: reading a query, writing an answer within a size.

Parsing and encoding are Twisted Names' (:class:`twisted.names.dns.Message`);
what this module adds is what a server facing the internet must check that
``Message.decode`` does not:

* ``decode`` stops quietly where the bytes run out, so a query whose counts
  promise more than it holds would look whole: :func:`parseQuery` compares
  what was read with the header's counts, and such a packet is malformed.
* The question is read by :func:`questionEnd` as well, which refuses what a
  real query never holds (a compression pointer, a label over 63 octets or
  holding a dot, a name over 255 octets): Twisted joins labels with dots, so
  a label ``a.b`` would otherwise be taken for two, and the question could
  not be echoed exactly as it was sent (0x20 relies on that echo).
* EDNS0 (RFC 6891) is read and written as the OPT pseudo-record in the
  additional section (an ``RRHeader`` of type OPT: the class carries the
  UDP payload size, the TTL the extended rcode and version); Twisted's
  EDNS message class is private.  The DO bit is not echoed: the zone is not
  signed, and a server that does not do DNSSEC leaves it clear (RFC 3225).
* :func:`slipAnswer` makes the rate limiter's truncated answer straight from
  the query's bytes, never parsing it and never larger than it.

A malformed packet is ``None`` here: the transports count it and send
nothing (an answer to garbage only helps whoever forged its source).
"""
import struct

import attr
from twisted.names import dns

HEADER_SIZE = 12
#: the UDP answer size without EDNS (RFC 1035)
CLASSIC_UDP_SIZE = 512
#: the UDP payload size we advertise and cap answers at (DNS flag day 2020)
OUR_UDP_PAYLOAD = 1232
#: the largest query read, over UDP or TCP: a real one is well under 512 octets
MAX_QUERY_SIZE = 4096
#: the largest name on the wire, the root's zero octet included (RFC 1035)
MAX_NAME_OCTETS = 255
MAX_LABEL_OCTETS = 63
_DOT = ord(".")
_QR, _OPCODE_AND_RD, _TC = 0x80, 0x79, 0x02
_ONE_QUESTION = b"\x00\x01"


@attr.s(frozen=True, slots=True)
class EDNS:
    """What a query's OPT record asks for."""

    #: the requester's UDP payload size
    payload = attr.ib()
    version = attr.ib()


def questionEnd(data):
    """The offset just past the first question of ``data`` (its name, type and class),
    or ``None`` when the question is not one a real query holds (see the module
    docstring)."""
    i, size = HEADER_SIZE, len(data)
    while True:
        if i >= size:
            return None
        length = data[i]
        if length == 0:
            break
        if length > MAX_LABEL_OCTETS or _DOT in data[i + 1:i + 1 + length]:
            return None
        i += 1 + length
        if i - HEADER_SIZE >= MAX_NAME_OCTETS:
            return None
    end = i + 5
    return end if end <= size else None


def parseQuery(data):
    """``data`` as a :class:`~twisted.names.dns.Message`, or ``None`` when it is
    malformed or is not a query at all (QR set: answering answers is how
    reflection loops start)."""
    if len(data) < HEADER_SIZE or data[2] & _QR:
        return None
    counts = struct.unpack_from("!4H", data, 4)
    if counts[0] == 1 and questionEnd(data) is None:
        return None
    message = dns.Message()
    try:
        message.fromStr(data)
    except Exception:  # hostile bytes: decoders raise EOFError, ValueError, struct.error ...
        return None
    read = (len(message.queries), len(message.answers), len(message.authority),
            len(message.additional))
    return message if read == counts else None


class BadOPT(ValueError):
    """More than one OPT record, or one not owned by the root (RFC 6891 §6.1.1): FORMERR."""


def readEDNS(message):
    """The query's :class:`EDNS`, ``None`` without an OPT record; raises :class:`BadOPT`."""
    found = None
    for record in message.additional:
        if record.type == dns.OPT:
            if found is not None or record.name.name != b"":
                raise BadOPT()
            found = EDNS(payload=record.cls, version=(record.ttl >> 16) & 0xFF)
    return found


def optRecord(rcode):
    """Our OPT record: version 0, our payload size, the upper bits of ``rcode``."""
    return dns.RRHeader(name=b"", type=dns.OPT, cls=OUR_UDP_PAYLOAD, ttl=(rcode >> 4) << 24,
                        payload=dns.UnknownRecord(b""))


def udpLimit(edns):
    """How large a UDP answer to a query with ``edns`` may be: 512 without EDNS,
    else the requester's size (never under 512) capped at ours."""
    if edns is None:
        return CLASSIC_UDP_SIZE
    return max(CLASSIC_UDP_SIZE, min(edns.payload, OUR_UDP_PAYLOAD))


def encodeAnswer(message, limit=None):
    """``message`` as bytes; over ``limit`` (UDP) it is sent again with TC set and its
    answer and authority sections emptied, so the requester retries over TCP.

    :return: ``(bytes, truncated)``
    """
    data = message.toStr()
    if limit is None or len(data) <= limit:
        return data, False
    message.answers, message.authority, message.trunc = [], [], 1
    return message.toStr(), True


def slipAnswer(data):
    """The rate limiter's "slip": the query's header and question with QR and TC set
    and every other count zero, or ``None`` when ``data`` holds no plain question.
    Made from the bytes alone and never larger than them."""
    if len(data) < HEADER_SIZE or data[2] & _QR or data[4:6] != _ONE_QUESTION:
        return None
    end = questionEnd(data)
    if end is None:
        return None
    flags = _QR | (data[2] & _OPCODE_AND_RD) | _TC
    return data[:2] + bytes((flags, 0)) + _ONE_QUESTION + bytes(6) + data[HEADER_SIZE:end]
