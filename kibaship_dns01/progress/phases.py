"""From a Challenge's ``status`` to a short, machine-readable ``phase``.

cert-manager writes what it knows into ``status.state`` (the ACME state:
pending, processing, valid, invalid, expired, errored; ``ready`` exists in
the API) and ``status.reason`` (prose).  A UI should switch on a word, not
parse prose, so this module turns the pair into a :class:`Phase`.  The
wording matched is cert-manager's own and the ACME server's (Let's Encrypt's
Boulder), quoted with where it comes from in ``tests/test_progress_phases.py``:

* cert-manager, ``pkg/controller/acmechallenges/sync.go``: ``Waiting for
  %s challenge propagation: %s`` (the self-check failed, the second ``%s``
  says why), ``Successfully authorized domain``, ``Error accepting
  authorization: %v`` (the CA's verdict), ``unexpected non-ACME API error``;
* cert-manager, ``pkg/issuer/acme/dns/dns.go``: ``DNS record for %q not yet
  propagated`` - the self-check found no TXT record with the key.  It cannot
  tell a missing record from one with another value (both are "not found"),
  so ``wrong_value`` comes only from the CA;
* cert-manager, ``pkg/issuer/acme/dns/util/wait.go``: ``NS %s returned %s
  for %s`` (an authoritative server answered SERVFAIL, REFUSED ...), the SOA
  walk's ``rcode was expected to be 'NOERROR' or 'NXDOMAIN', but got '%s'``
  and ``Could not find the SOA record in the DNS tree`` (no zone);
* Boulder, ``va/dns.go`` and ``bdns/problem.go``: ``Incorrect TXT record %q%s
  found at %s``, ``No TXT record found at %s``, ``DNS problem: %s looking up
  %s for %s`` (NXDOMAIN, SERVFAIL, query timed out ...).

Anything else falls back to ``waiting`` (still running) or ``failed``
(finished), with cert-manager's raw reason alongside.
"""
import re

import attr

PENDING = "pending"
WAITING_FOR_DNS = "waiting_for_dns"
WRONG_VALUE = "wrong_value"
RECORD_MISSING = "record_missing"
DNS_SERVER_ERROR = "dns_server_error"
ZONE_NOT_FOUND = "zone_not_found"
WAITING = "waiting"
VALIDATING = "validating"
VERIFIED = "verified"
FAILED = "failed"
EXPIRED = "expired"
ERRORED = "errored"

#: every phase, in the order a good run meets them, then the others
PHASES = (PENDING, WAITING_FOR_DNS, VALIDATING, VERIFIED, WRONG_VALUE, RECORD_MISSING,
          DNS_SERVER_ERROR, ZONE_NOT_FOUND, WAITING, FAILED, EXPIRED, ERRORED)

#: cert-manager's final Challenge states (``acme.IsFinalState``)
FINAL_STATES = frozenset({"valid", "invalid", "expired", "errored"})

_RCODE = r"(?P<rcode>[A-Z][A-Za-z]+)"

#: (phase, pattern) in the order they are tried; a pattern may name the DNS rcode
_CAUSES = tuple((phase, re.compile(pattern)) for phase, pattern in (
    (WRONG_VALUE, r"Incorrect TXT record"),
    (RECORD_MISSING, r"No TXT record found at"),
    (RECORD_MISSING, r"DNS problem: (?P<rcode>NXDOMAIN) looking up TXT"),
    (DNS_SERVER_ERROR, r"DNS problem: (?P<rcode>SERVFAIL|REFUSED|[A-Z]+) looking up"),
    (DNS_SERVER_ERROR, r"DNS problem: (query timed out|networking error|server failure)"),
    (DNS_SERVER_ERROR, r"\bNS \S+ returned " + _RCODE + r" for "),
    (DNS_SERVER_ERROR, r"rcode was expected to be 'NOERROR' or 'NXDOMAIN', but got '"
     + _RCODE + "'"),
    (DNS_SERVER_ERROR, r"Unexpected response code '" + _RCODE + "'"),
    (DNS_SERVER_ERROR, r"i/o timeout"),
    (ZONE_NOT_FOUND, r"Could not find the SOA record|Could not find the start of authority"),
    (ZONE_NOT_FOUND, r"Could not determine (the zone for|authoritative nameservers for)"),
    (WAITING_FOR_DNS, r"DNS record for \".*\" not yet propagated"),
    (VALIDATING, r"Challenge propagated using"),
))


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Phase:
    """What a person should be told about one Challenge status."""

    #: one of :data:`PHASES`
    name: str
    #: cert-manager is done with the Challenge (a final state)
    final: bool
    #: the DNS response code named in the reason (``SERVFAIL`` ...), when any
    rcode: object = None


def _cause(reason):
    for phase, pattern in _CAUSES:
        match = pattern.search(reason)
        if match is not None:
            return phase, match.groupdict().get("rcode")
    return None, None


def classify(state, reason):
    """The :class:`Phase` of a Challenge in ``state`` with ``reason``.

    ``state`` and ``reason`` are ``status.state`` and ``status.reason``
    (either may be missing: ``None``).
    """
    state, reason = (state or "").lower(), reason or ""
    if state == "valid":
        return Phase(VERIFIED, True)
    if state in ("expired", "errored"):
        return Phase(EXPIRED if state == "expired" else ERRORED, True)
    cause, rcode = _cause(reason)
    if state == "invalid":
        final = cause if cause not in (None, WAITING_FOR_DNS, VALIDATING) else FAILED
        return Phase(final, True, rcode)
    if state in ("processing", "ready"):
        return Phase(VALIDATING, False)
    if cause is not None:
        return Phase(cause, False, rcode)
    if not reason:
        return Phase(PENDING, False)
    if reason.startswith("Waiting for DNS-01 challenge propagation") and ":" not in reason:
        return Phase(WAITING_FOR_DNS, False)
    return Phase(WAITING, False)
