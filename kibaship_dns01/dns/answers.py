"""The answer to one query: what an authoritative server for one zone says.

:class:`Responder` turns a parsed query (:func:`.wire.parseQuery`) into an
:class:`Answer`; the transports encode and send it.  It asks the
:class:`~kibaship_dns01.interfaces.IDelegationStore` only about names
``<label>.<zone>`` whose label has the shape of a delegation label; every
other name is answered from the :class:`~.zone.Zone` alone.

What it says, in the order it decides:

* opcode other than QUERY: NOTIMP; more than one OPT record: FORMERR; EDNS
  version above 0: BADVERS; not exactly one question: FORMERR;
* class other than IN (CHAOS ``version.bind`` too), a name outside the zone,
  or a zone transfer (AXFR, IXFR: never offered): REFUSED, and no recursion,
  ever (RA is never set);
* the apex: SOA and NS; an in-zone nameserver name: its A/AAAA; a label
  with keys: TXT, one string a key; other types there, and the names above
  an in-zone nameserver name (empty non-terminals): NOERROR without answers
  (NODATA) and the SOA in the authority section (RFC 2308);
* every other name in the zone (a label of another shape, one without keys,
  anything deeper): NXDOMAIN with the SOA;
* ANY (RFC 8482) at a name that exists: one synthesized ``HINFO "RFC8482"
  ""``, never the records (the answer amplifiers ask for), with the
  smallest TTL of what is there;
* the store fails, is overloaded (``maxLookups`` in flight) or does not
  answer within ``storeTimeout`` seconds: SERVFAIL, so resolvers retry;
  never an NXDOMAIN that the store did not say.

Answers are authoritative (AA) but for REFUSED, NOTIMP, FORMERR, BADVERS and
SERVFAIL.  Records carry the question's own spelling in their owner names
(the SOA of a negative answer: the apex as the question spells it), so a
resolver using 0x20 sees its letter case back everywhere it looks, and the
owner compresses against the question.  No additional data is ever added
(minimal responses): an answer stays within a few times its query's size.
"""
import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns

from kibaship_dns01 import metrics
from kibaship_dns01.delegation.names import isDelegationLabel
from kibaship_dns01.dns import wire
from kibaship_dns01.logs import ThrottledLog

log = Logger()

#: seconds the store gets to answer before the query is answered SERVFAIL
DEFAULT_STORE_TIMEOUT = 2.0
#: store lookups in flight at once; past it SERVFAIL at once (memory stays bounded)
DEFAULT_MAX_LOOKUPS = 1024
#: the CPU field of the HINFO of a minimal ANY answer (RFC 8482 §4.2); its OS field is empty
ANY_HINFO_CPU = b"RFC8482"
_TRANSFERS = frozenset((dns.AXFR, dns.IXFR))
RCODE_NAMES = {dns.OK: "noerror", dns.EFORMAT: "formerr", dns.ESERVER: "servfail",
               dns.ENAME: "nxdomain", dns.ENOTIMP: "notimp", dns.EREFUSED: "refused",
               dns.EBADVERSION: "badvers"}


class StoreOverloaded(Exception):
    """Too many store lookups are in flight; this query does not wait for one."""


@attr.s(slots=True)
class Answer:
    """A response ready to encode."""

    message = attr.ib()
    #: the whole rcode (BADVERS is 16: its upper bits travel in the OPT record)
    rcode = attr.ib()
    #: the largest UDP answer the requester takes
    udpLimit = attr.ib()


def _names(zone):
    """What the zone holds besides delegation labels, keyed by the name relative to the
    apex (bytes, lower case): ``{relative: {type: [record, ...]}}``, with ``{}`` for
    the empty non-terminals above in-zone nameserver names."""
    names = {b"": {dns.SOA: [dns.Record_SOA(
        mname=zone.mname, rname=zone.rname, serial=zone.serial, refresh=zone.refresh,
        retry=zone.retry, expire=zone.expire, minimum=zone.minimum, ttl=zone.ttl)],
        dns.NS: [dns.Record_NS(name, ttl=zone.ttl) for name in zone.nameservers]}}
    for name, addresses in zone.addresses:
        relative = zone.relative(name).encode("ascii")
        parts = relative.split(b".")
        for i in range(1, len(parts)):
            names.setdefault(b".".join(parts[i:]), {})
        rrsets = names[relative] = {}
        for address in addresses:
            if address.version == 4:
                rrsets.setdefault(dns.A, []).append(dns.Record_A(str(address), ttl=zone.ttl))
            else:
                rrsets.setdefault(dns.AAAA, []).append(
                    dns.Record_AAAA(str(address), ttl=zone.ttl))
    return names


def txtRecords(keys, ttl):
    """One TXT record per distinct key, in the store's order.  Keys are ACME digests
    (43 ASCII characters); one that cannot be a single TXT string is not served."""
    records = []
    for key in dict.fromkeys(keys):
        data = key if isinstance(key, bytes) else str(key).encode("utf-8")
        if 0 < len(data) <= 255:
            records.append(dns.Record_TXT(data, ttl=ttl))
    return records


class Responder:
    """Answers queries for ``zone`` from its apex records and ``store``'s keys."""

    def __init__(self, zone, store, clock, storeTimeout=DEFAULT_STORE_TIMEOUT,
                 maxLookups=DEFAULT_MAX_LOOKUPS):
        self.zone = zone
        self.store = store
        self.clock = clock
        self.storeTimeout = storeTimeout
        self.maxLookups = maxLookups
        self.lookups = 0
        self._apex = zone.name.encode("ascii")
        self._suffix = b"." + self._apex
        self._names = _names(zone)
        self._soa = self._names[b""][dns.SOA][0]
        self._failureLog = ThrottledLog(
            log, clock, "the delegation store failed {count} time(s) in the last {interval}s "
            "(DNS answered SERVFAIL); the latest: {reason}", log_kind="dns_store_failure")

    def respondToBytes(self, data, transport):
        """The :class:`Answer` to the query in ``data`` (a Deferred), or ``None`` when
        ``data`` is not a readable query: counted as malformed on ``transport``
        (``udp``/``tcp``), never answered."""
        query = wire.parseQuery(data)
        if query is None:
            metrics.labelled(metrics.DNS_MALFORMED, transport).inc()
            return None
        return self.respond(query)

    def countSent(self, answer, transport, started):
        """Count ``answer``, sent on ``transport``, with its latency since ``started``."""
        metrics.labelled(metrics.DNS_QUERIES, transport, RCODE_NAMES[answer.rcode]).inc()
        metrics.labelled(metrics.DNS_LATENCY, transport).observe(self.clock.seconds() - started)

    def respond(self, query):
        """The :class:`Answer` to ``query`` (a parsed query, QR clear): a Deferred."""
        try:
            edns = wire.readEDNS(query)
        except wire.BadOPT:
            return defer.succeed(self._reply(query, None, dns.EFORMAT, question=False))
        if query.opCode != dns.OP_QUERY:
            return defer.succeed(self._reply(query, edns, dns.ENOTIMP))
        if edns is not None and edns.version > 0:
            return defer.succeed(self._reply(query, edns, dns.EBADVERSION))
        if len(query.queries) != 1:
            return defer.succeed(self._reply(query, edns, dns.EFORMAT, question=False))
        question = query.queries[0]
        relative = self._relative(question.name.name.lower())
        if relative is None or question.cls != dns.IN or question.type in _TRANSFERS:
            return defer.succeed(self._reply(query, edns, dns.EREFUSED))
        rrsets = self._names.get(relative)
        if rrsets is not None:
            return defer.succeed(self._fromRRsets(query, edns, rrsets))
        label = relative.decode("latin-1")
        if not isDelegationLabel(label):
            return defer.succeed(self._negative(query, edns, dns.ENAME))
        # a store answering something that is not a list of keys fails here too: SERVFAIL
        return self._lookup(label).addCallback(self._keysFound, query, edns).addErrback(
            self._storeFailed, query, edns)

    def _relative(self, name):
        if name == self._apex:
            return b""
        return name[:-len(self._suffix)] if name.endswith(self._suffix) else None

    def _reply(self, query, edns, rcode, answers=(), authority=(), question=True):
        """The response to ``query``: its id, opcode, RD and CD copied; AA when the
        zone answered; our OPT record when the query had one."""
        message = dns.Message(id=query.id, answer=1, opCode=query.opCode, recDes=query.recDes,
                              auth=rcode in (dns.OK, dns.ENAME), rCode=rcode & 0xF, maxSize=0,
                              checkingDisabled=query.checkingDisabled)
        if question:
            message.queries = query.queries
        message.answers = list(answers)
        message.authority = list(authority)
        if edns is not None:
            message.additional = [wire.optRecord(rcode)]
        return Answer(message, rcode, wire.udpLimit(edns))

    def _negative(self, query, edns, rcode):
        """NXDOMAIN, or NOERROR without answers (NODATA): the SOA says for how long.
        Its owner is the apex as the question spells it, like every owner here."""
        name = query.queries[0].name.name
        apex = name[len(name) - len(self._apex):]
        return self._reply(query, edns, rcode, authority=[dns.RRHeader(
            apex, dns.SOA, dns.IN, self.zone.negativeTTL, self._soa, auth=True)])

    def _fromRRsets(self, query, edns, rrsets):
        """The answer at a name that exists and holds ``rrsets`` (``{type: [record]}``)."""
        question = query.queries[0]
        if question.type == dns.ALL_RECORDS and rrsets:
            ttl = min(r.ttl for records in rrsets.values() for r in records)
            records = [dns.Record_HINFO(cpu=ANY_HINFO_CPU, os=b"", ttl=ttl)]
        else:
            records = rrsets.get(question.type)
        if not records:
            return self._negative(query, edns, dns.OK)
        owner = question.name.name
        return self._reply(query, edns, dns.OK, answers=[
            dns.RRHeader(owner, r.TYPE, dns.IN, r.ttl, r, auth=True) for r in records])

    def _lookup(self, label):
        """The store's keys at ``label``, failing after ``storeTimeout`` seconds."""
        if self.lookups >= self.maxLookups:
            return defer.fail(StoreOverloaded("%d store lookups are in flight" % (self.lookups,)))
        d = defer.maybeDeferred(self.store.keys, label)
        if not d.called:
            self.lookups += 1
            d.addTimeout(self.storeTimeout, self.clock)
            d.addBoth(self._lookupDone)
        return d

    def _lookupDone(self, result):
        self.lookups -= 1
        return result

    def _keysFound(self, keys, query, edns):
        records = txtRecords(keys, self.zone.txtTTL)
        if not records:
            return self._negative(query, edns, dns.ENAME)
        return self._fromRRsets(query, edns, {dns.TXT: records})

    def _storeFailed(self, failure, query, edns):
        if failure.check(defer.TimeoutError):
            reason = "timeout"
        elif failure.check(StoreOverloaded):
            reason = "overload"
        else:
            reason = "error"
        metrics.labelled(metrics.DNS_STORE_FAILURES, reason).inc()
        self._failureLog.report(reason="%s: %s" % (reason, failure.getErrorMessage()))
        return self._reply(query, edns, dns.ESERVER)
