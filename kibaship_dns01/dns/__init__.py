"""The authoritative DNS responder for delegated renewals (issue 21, SPEC §13).

Authoritative for one zone (``--delegation-zone``): SOA and NS at the apex,
the challenge keys of the :class:`~kibaship_dns01.interfaces.IDelegationStore`
as TXT at ``<label>.<zone>``, and what a public authoritative server must do
besides (no recursion, REFUSED outside the zone, minimal ANY, negative answers
with the SOA, EDNS0, truncation and TCP, response rate limiting), on Twisted
Names' wire format and never blocking the reactor.

Modules, in the order data flows:

* :mod:`.zone` - the zone's name, nameservers and SOA, with their TTLs;
* :mod:`.ratelimit` - response rate limiting per source network, decided
  before a UDP packet is even parsed;
* :mod:`.wire` - reading a query and writing an answer within a size;
* :mod:`.answers` - the answer to one query (the rcode rules);
* :mod:`.udp`, :mod:`.tcp` - the two transports;
* :mod:`.service` - both listening on one address and port.

docs/dns.md describes the whole for operators.
"""
