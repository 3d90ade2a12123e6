"""The one zone the responder is authoritative for, and what stands at its apex.

A :class:`Zone` is a value: the zone's name, the nameservers served as NS at
the apex (their addresses served as A/AAAA when they lie inside the zone,
``ns1.<zone>``), and the SOA.  The keys served at delegation labels are not
here; they come from the :class:`~kibaship_dns01.interfaces.IDelegationStore`
at every query.

Defaults, and why:

* **TXT TTL 10 s** (:data:`DEFAULT_TXT_TTL`): a key is added moments before
  cert-manager and the CA look it up, and replaced at the next challenge; a
  resolver must not keep an old key for long.
* **SOA minimum 10 s** (:data:`DEFAULT_NEGATIVE_TTL`, the negative-caching
  TTL of RFC 2308): a resolver that asked for a label *before* its key was
  added caches that NXDOMAIN for at most this long.  Negative answers carry
  the SOA with a TTL of min(SOA TTL, minimum) = 10 s, as RFC 2308 asks.
* **SOA, NS and A/AAAA TTL 3600 s** (:data:`DEFAULT_TTL`): they change only
  when the operator moves the service.
* **SOA serial 1**, refresh 3600, retry 600, expire 604800: no zone transfer
  is ever offered (the data is the store, not a zone file), so the serial
  never has to change; a fixed one is the same on every replica, which is
  what consistency checkers compare.
* **rname** ``hostmaster.<zone>``; **mname** the first nameserver.
"""
import ipaddress

import attr

from kibaship_dns01.names import bareName, dnsNameProblem

DEFAULT_TTL = 3600
DEFAULT_TXT_TTL = 10
DEFAULT_NEGATIVE_TTL = 10
DEFAULT_SERIAL = 1
DEFAULT_REFRESH = 3600
DEFAULT_RETRY = 600
DEFAULT_EXPIRE = 604800
#: the largest TTL RFC 2181 allows
MAX_TTL = 2 ** 31 - 1


def _checkName(what):
    def check(instance, attribute, value):
        problem = dnsNameProblem(value)
        if problem:
            raise ValueError("DNS zone: %s %r %s" % (what, value, problem))
    return check


def _checkNameservers(instance, attribute, value):
    if not value:
        raise ValueError("DNS zone %r: at least one nameserver name is needed (the NS "
                         "records at the apex)" % (instance.name,))
    for name in value:
        _checkName("nameserver")(instance, attribute, name)


def _checkSeconds(instance, attribute, value):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TTL:
        raise ValueError("DNS zone %r: %s must be a whole number of seconds from 0 to %d, "
                         "not %r" % (instance.name, attribute.name, MAX_TTL, value))


def _names(values):
    return tuple(bareName(v) for v in values)


def _addresses(mapping):
    """``{name: [address, ...]}`` -> sorted ``((name, (ip_address, ...)), ...)``."""
    out = []
    for name, addresses in dict(mapping).items():
        if isinstance(addresses, str):
            addresses = [addresses]
        parsed = []
        for address in addresses:
            try:
                parsed.append(ipaddress.ip_address(address))
            except ValueError:
                raise ValueError("DNS zone: nameserver %r has address %r, which is not an IPv4 "
                                 "or IPv6 address" % (name, address)) from None
        out.append((bareName(name), tuple(parsed)))
    return tuple(sorted(out))


@attr.s(frozen=True, slots=True, kw_only=True)
class Zone:
    """The zone, its apex records and their TTLs (see the module docstring)."""

    #: the zone, lower case, without the trailing dot (``acme.kibaship.com``)
    name = attr.ib(converter=bareName, validator=_checkName("name"))
    #: the NS names at the apex, in order; the first is the SOA's mname
    nameservers = attr.ib(converter=_names, validator=_checkNameservers)
    #: ``((nameserver, (ip_address, ...)), ...)``: served for in-zone nameservers only
    addresses = attr.ib(converter=_addresses, default=())
    ttl = attr.ib(default=DEFAULT_TTL, validator=_checkSeconds)
    txtTTL = attr.ib(default=DEFAULT_TXT_TTL, validator=_checkSeconds)
    serial = attr.ib(default=DEFAULT_SERIAL, validator=_checkSeconds)
    refresh = attr.ib(default=DEFAULT_REFRESH, validator=_checkSeconds)
    retry = attr.ib(default=DEFAULT_RETRY, validator=_checkSeconds)
    expire = attr.ib(default=DEFAULT_EXPIRE, validator=_checkSeconds)
    #: the negative-caching TTL (RFC 2308)
    minimum = attr.ib(default=DEFAULT_NEGATIVE_TTL, validator=_checkSeconds)

    def __attrs_post_init__(self):
        for name, _ in self.addresses:
            if name not in self.nameservers:
                raise ValueError("DNS zone %r: addresses are given for %r, which is not one of "
                                 "the nameservers %s" % (self.name, name,
                                                         ", ".join(self.nameservers)))
            if self.relative(name) in (None, ""):
                raise ValueError("DNS zone %r: addresses are given for nameserver %r, which is "
                                 "outside the zone; only in-zone names are served (the "
                                 "addresses of other names are their own zone's)" %
                                 (self.name, name))

    @property
    def rname(self):
        """The SOA's responsible mailbox, ``hostmaster.<zone>``."""
        return "hostmaster." + self.name

    @property
    def mname(self):
        """The SOA's primary nameserver: the first NS."""
        return self.nameservers[0]

    @property
    def negativeTTL(self):
        """The TTL of the SOA in a negative answer: min(SOA TTL, minimum) (RFC 2308 §3)."""
        return min(self.ttl, self.minimum)

    def relative(self, name):
        """``name`` (str, lower case, no trailing dot) relative to the zone: ``""`` for
        the apex, ``"a.b"`` for ``a.b.<zone>``, ``None`` outside the zone."""
        if name == self.name:
            return ""
        suffix = "." + self.name
        return name[:-len(suffix)] if name.endswith(suffix) else None
