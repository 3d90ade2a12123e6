"""Which Valkey cluster to talk to, and how: the :class:`ValkeyTarget` value.

The publisher keeps one cluster client per distinct target, so the target's
equality is exactly "same cluster, same user, same TLS trust, same limits,
same credential source".  The password itself is *not* part of it: it is
fetched through ``credentials`` every time a connection is (re)built, so a
rotated password is picked up without creating a new client.

Credentials protocol
--------------------
``credentials()`` takes no argument and returns a Deferred firing the password
(``str``) or ``None`` (no ``AUTH``).  It is called whenever a node
connection is established.  When a server rejects it (``WRONGPASS``,
``NOAUTH``, "invalid password") the client first calls
``invalidateCredentials()`` (if given) so the caller can drop a cached Secret,
then calls ``credentials()`` again and retries once with what it returns.
Only if that fresh password is also rejected does the append fail with
:class:`~kibaship_dns01.valkey.errors.ValkeyAuthError`.

``credentialsSource`` is a human description of where the password comes from
(e.g. ``"Secret valkey/kibaship-valkey key password"``); it appears in error
messages and keeps two targets that differ only in their Secret apart.
"""
import ipaddress

import attr
from twisted.internet import defer

from kibaship_dns01.names import dnsNameProblem

#: The ACL rules a Valkey user needs for the publisher: SPEC §9's list plus
#: what the append script calls (the progress mark: HSET/HGET/PEXPIRE, read
#: back with HMGET) and SCRIPT LOAD/WAIT, on the project keys.
REQUIRED_ACL_RULES = ("~{project:* +evalsha +eval +script|load +cluster|slots +asking +ping "
                      "+wait +incr +xadd +get +set +hset +hmget +hget +pexpire")

ANNOUNCED = "announced"
SEED_HOST = "seed-host"
POLICIES = (ANNOUNCED, SEED_HOST)


def parseAddress(text):
    """``"host:port"`` or ``"[v6]:port"`` → ``(host, port)``; ``ValueError`` if malformed."""
    if not isinstance(text, str):
        raise ValueError("Valkey address must be a string like host:port, not %r" % (text,))
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("Valkey address %r is not host:port (e.g. valkey.ns.svc:6379)" % (text,))
    if not _isIP(host) and dnsNameProblem(host):
        raise ValueError("Valkey address %r: host %r is neither an IP address nor a DNS name (%s)"
                         % (text, host, dnsNameProblem(host)))
    return host, int(port)


def _isIP(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def formatAddress(address):
    """``(host, port)`` → ``"host:port"`` (IPv6 hosts bracketed)."""
    host, port = address
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def noCredentials():
    """The default provider: no password, no ``AUTH``."""
    return defer.succeed(None)


def _seeds(value):
    seeds = (value,) if isinstance(value, str) else tuple(value)
    if not seeds:
        raise ValueError("a Valkey target needs at least one seed address")
    for s in seeds:
        parseAddress(s)
    return seeds


def _positive(instance, attribute, value):
    if not value > 0:
        raise ValueError("%s must be positive, not %r" % (attribute.name, value))


def _policy(instance, attribute, value):
    if value not in POLICIES:
        raise ValueError("announcedAddressPolicy must be one of %s, not %r" % (POLICIES, value))


def _pem(value):
    return value.encode("ascii") if isinstance(value, str) else value


@attr.s(frozen=True, slots=True, kw_only=True)
class ValkeyTarget:
    """How to reach one Valkey cluster; see the module docstring."""

    #: seed addresses ("host:port"); any reachable one yields the slot map
    seeds = attr.ib(converter=_seeds)
    #: ACL user; "" means the default user (``AUTH <password>``)
    username = attr.ib(default="")
    tls = attr.ib(default=False)
    #: PEM CA bundle to verify servers with; None means the system trust store
    caPEM = attr.ib(default=None, converter=attr.converters.optional(_pem))
    #: name to verify the server certificate against (and send as SNI)
    #: instead of each node's address host; needed when nodes announce IPs
    serverName = attr.ib(default=None)
    connectTimeout = attr.ib(default=5.0, validator=_positive)
    readTimeout = attr.ib(default=3.0, validator=_positive)
    #: bound on one whole operation, retries and redirects included; long
    #: enough by default to ride out a failover (cluster-node-timeout + vote)
    operationTimeout = attr.ib(default=10.0, validator=_positive)
    minReplicas = attr.ib(default=0)
    idempotencyWindow = attr.ib(default=86400.0, validator=_positive)
    #: "announced": connect to the addresses nodes announce;
    #: "seed-host": keep the announced port but use the host of the address
    #: the slot map was read from (NAT, port-forwards)
    announcedAddressPolicy = attr.ib(default=ANNOUNCED, validator=_policy)
    credentialsSource = attr.ib(default="")
    credentials = attr.ib(default=noCredentials, eq=False, repr=False)
    invalidateCredentials = attr.ib(default=None, eq=False, repr=False)

    @property
    def seedAddresses(self):
        """The seeds as ``(host, port)`` tuples."""
        return tuple(parseAddress(s) for s in self.seeds)

    def describe(self):
        """Short text naming the cluster for messages: its seed list."""
        return ",".join(self.seeds)

    def describeUser(self):
        return self.username or "default"

    def describeCredentials(self):
        return self.credentialsSource or "the configured Valkey password"
