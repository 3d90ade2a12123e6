"""Does ``_acme-challenge.<domain>`` already delegate to its label?

Asked through the recursive resolvers of ``--dns-resolvers`` (default: the
nameservers of ``/etc/resolv.conf``), as cert-manager's
``--dns01-recursive-nameservers`` are: the user's DNS is seen the way
cert-manager's self-check and the CA will see it.

The answer is informational (it tells the UI which of its two offers to
show), so the check is bounded and never fails: ``True`` (the name's CNAME
chain reaches the label), ``False`` (the resolvers answered, and it does
not), ``None`` (they did not answer in time, or answered SERVFAIL/REFUSED).
CNAME queries are asked hop by hop, at most :data:`MAX_HOPS`, all inside one
time budget: a resolver answers a CNAME query with the first link only, and a
user may point ``_acme-challenge`` at a name that points onwards (cert-manager
follows such chains too).
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import client, dns, error
from zope.interface import implementer

from kibaship_dns01.interfaces import ICNAMEChecker
from kibaship_dns01.names import bareName

log = Logger()

#: the whole check (all hops, all resolvers) ends within this many seconds
DEFAULT_BUDGET = 1.0
MAX_HOPS = 8
#: answers that mean "the resolvers looked, and there is no such CNAME"
_DEFINITE = (error.DNSNameError,)


@implementer(ICNAMEChecker)
class CNAMEChecker:
    """See the module docstring.

    :param servers: ``[(ip, port), ...]`` recursive resolvers.
    """

    def __init__(self, servers, clock, budget=DEFAULT_BUDGET, resolver=None):
        self._clock = clock
        self._budget = budget
        # one try per resolver in the budget; no resolv.conf polling, no cache
        perTry = max(0.1, budget / max(1, len(servers)))
        self._resolver = resolver or client.Resolver(
            servers=list(servers), timeout=(perTry,), reactor=clock)

    def check(self, name, target):
        d = defer.ensureDeferred(self._follow(bareName(name), bareName(target)))
        d.addTimeout(self._budget, self._clock)
        return d.addErrback(self._unknown, name)

    async def _follow(self, name, target):
        for _ in range(MAX_HOPS):
            try:
                answers, _, _ = await self._resolver.lookupCanonicalName(name)
            except _DEFINITE:
                return False
            following = _cnameOf(answers, name)
            if following is None:
                return False  # NODATA: a TXT record, or nothing, at that name
            if following == target:
                return True
            name = following
        return False

    @staticmethod
    def _unknown(failure, name):
        """Timeouts, SERVFAIL, REFUSED, a resolver that cannot be reached: unknown."""
        log.debug("could not tell whether {name} delegates: {why}", name=name,
                  why=failure.getErrorMessage() or failure.type.__name__)
        return None


def _cnameOf(answers, name):
    """The target of ``name``'s CNAME among ``answers`` (bare, lower case), or ``None``."""
    for rr in answers:
        if rr.type == dns.CNAME and bareName(rr.name.name.decode("ascii", "replace")) == name:
            return bareName(rr.payload.name.name.decode("ascii", "replace"))
    return None


def resolversFromResolvConf(path="/etc/resolv.conf"):
    """``[(ip, 53), ...]``: the ``nameserver`` lines of a resolv.conf (read once, at
    start-up, by the flag parser: the daemon never polls the file)."""
    servers = []
    try:
        with open(path) as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    servers.append((words[1].split("%")[0], 53))
    except OSError:
        return []
    return servers
