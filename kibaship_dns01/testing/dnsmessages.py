"""DNS queries and answers as a client sees them, for tests, drills and benchmarks.

:func:`queryBytes` writes a query as resolvers and ``dig`` do (optionally with
an OPT record of any payload size and version); :func:`readAnswer` reads an
answer back with its OPT record's fields.  Both use Twisted Names' public
wire format, as the responder does, so a test states what a client would see.
"""
import struct

import attr
from twisted.names import dns

DEFAULT_ID = 0x1234


def optRecord(payload=1232, version=0, rcodeHigh=0, options=b""):
    """A client's OPT record (RFC 6891): the payload size in the class, the
    extended rcode and version in the TTL."""
    return dns.RRHeader(name=b"", type=dns.OPT, cls=payload,
                        ttl=(rcodeHigh << 24) | (version << 16), payload=dns.UnknownRecord(options))


def queryBytes(name, type=dns.TXT, cls=dns.IN, id=DEFAULT_ID, edns=None, opCode=dns.OP_QUERY,
               recDes=0, questions=None):
    """A query on the wire.  ``edns``: ``None`` (no OPT) or an :func:`optRecord`;
    ``questions``: a list of ``(name, type, cls)`` replacing the one question."""
    message = dns.Message(id=id, opCode=opCode, recDes=recDes, maxSize=0)
    if questions is None:
        questions = [(name, type, cls)]
    message.queries = [dns.Query(n, t, c) for n, t, c in questions]
    if edns is not None:
        message.additional = [edns]
    return message.toStr()


def framed(data):
    """``data`` as DNS over TCP sends it: after its 2-octet length."""
    return struct.pack("!H", len(data)) + data


@attr.s(frozen=True)
class ReadAnswer:
    """An answer as the client reads it."""

    message = attr.ib()
    #: the OPT record's fields, ``None`` when the answer has none
    payload = attr.ib()
    version = attr.ib()
    #: the whole rcode: the header's 4 bits and the OPT record's upper 8
    rcode = attr.ib()
    size = attr.ib()

    @property
    def answers(self):
        return self.message.answers

    @property
    def authority(self):
        return self.message.authority

    def strings(self):
        """Every TXT string in the answer section, in order."""
        return [s for rr in self.answers if rr.type == dns.TXT for s in rr.payload.data]


def readAnswer(data):
    """Parse answer bytes (as sent over UDP, or one TCP message without its prefix)."""
    message = dns.Message()
    message.fromStr(data)
    opts = [rr for rr in message.additional if rr.type == dns.OPT]
    payload = version = None
    high = 0
    if opts:
        payload, high, version = opts[0].cls, opts[0].ttl >> 24, (opts[0].ttl >> 16) & 0xFF
    return ReadAnswer(message=message, payload=payload, version=version,
                      rcode=(high << 4) | message.rCode, size=len(data))
