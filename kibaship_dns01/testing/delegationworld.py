"""The DNS around delegated renewals, on loopback, for end-to-end tests and localrun.

:class:`DelegationWorld` starts, next to a :class:`~.environment.LocalEnvironment`:

* knot, authoritative for the user's zone (the zone of the chain's domain), where
  the user adds ``_acme-challenge.<domain> CNAME <label>.<zone>`` once;
* unbound, the recursive resolver cert-manager and the CA would use: stub zones
  send the user's zone to knot and the delegation zone to the first daemon's DNS
  port, so unbound follows the user's CNAME into the daemon's zone;
* and says which flags each daemon gets (its own DNS port, unbound as
  ``--dns-resolvers``, one shared delegation secret).
"""
from kibaship_dns01.delegation.names import DelegationNamer
from kibaship_dns01.testing.dnsservers import (
    KnotServer, UnboundResolver, dig, digCommand, freeDNSPort)

ZONE = "acme.kibaship.test"


class DelegationWorld:
    """See the module docstring.

    :param replicas: how many daemons will serve the zone (each gets a DNS port;
        unbound asks the first).
    """

    def __init__(self, reactor, env, replicas=1, zone=ZONE):
        self.reactor = reactor
        self.env = env
        self.zone = zone
        self.domain = env.chain.challenges[0]["spec"]["dnsName"]
        self.userZone = self.domain.split(".", 1)[1]
        self.dnsPorts = [freeDNSPort() for _ in range(replicas)]
        self.knot = KnotServer(reactor, self.userZone, [("@", "A", "192.0.2.1")])
        self.unbound = None

    async def start(self):
        await self.knot.start()
        self.unbound = UnboundResolver(self.reactor, {
            self.userZone: self.knot.address, self.zone: ("127.0.0.1", self.dnsPorts[0])})
        await self.unbound.start()

    async def stop(self):
        for server in (self.unbound, self.knot):
            if server is not None:
                await server.stop()

    def delegationArgs(self, replica):
        """The ``replica``'s delegation flags: its DNS port, unbound as resolver."""
        return self.env.delegationArgs(self.zone, self.dnsPorts[replica],
                                       resolvers=[self.unbound.address])

    def daemonArgs(self, replica, port=0, extra=()):
        """The ``replica``'s flags: the environment's, plus delegated renewals."""
        return self.env.daemonArgs(port, extra=(*self.delegationArgs(replica), *extra))

    def delegationFor(self, projectUUID, domain=None):
        """The delegation the daemons offer (the same secret: the same name)."""
        return DelegationNamer(self.env.delegationSecret(), self.zone).delegationFor(
            projectUUID, domain or self.domain)

    def replicaAddress(self, replica):
        return ("127.0.0.1", self.dnsPorts[replica])

    async def addCNAME(self, delegation):
        """The user's one-time change in their own DNS; unbound forgets what it cached."""
        await self.knot.setRecord(delegation.name + ".", "CNAME", delegation.value + ".")
        await self.unbound.flush()

    def askReplica(self, replica, name, rdtype="TXT"):
        """``dig @replica name rdtype +norec``: the daemon's own answer."""
        return dig(self.reactor, self.replicaAddress(replica), name, rdtype, ("+norec",))

    def askResolver(self, name, rdtype="TXT"):
        """``dig @unbound name rdtype``: what cert-manager's self-check and the CA see."""
        return dig(self.reactor, self.unbound.address, name, rdtype)

    def resolverCommand(self, name, rdtype="TXT"):
        return " ".join(digCommand(self.unbound.address, name, rdtype))

    def replicaCommand(self, replica, name, rdtype="TXT"):
        return " ".join(digCommand(self.replicaAddress(replica), name, rdtype, ("+norec",)))
