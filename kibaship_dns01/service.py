"""Wires the daemon's services together into one ``MultiService``.

Children: the TLS site (always), the metrics site (``--metrics-port``), and
the Kubernetes, authentication, resolution and Valkey services as they are
configured.  Start order is the order added; stop is the reverse.
"""
import signal

import attr
from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.web.resource import Resource
from twisted.web.server import Site

from kibaship_dns01 import metrics
from kibaship_dns01.api.connections import CLOSE_SETTLE, DEFAULT_MAX_CONNECTIONS, LimitedTLSFactory
from kibaship_dns01.api.discovery import APIIdentity
from kibaship_dns01.api.lifecycle import DEFAULT_GRACE_PERIOD, DEFAULT_SHUTDOWN_DELAY, Lifecycle
from kibaship_dns01.api.site import APIResource, APISite
from kibaship_dns01.api.tls import ReloadingServerTLS
from kibaship_dns01.api.tlspolicy import TLSPolicy
from kibaship_dns01.auth.factory import buildAuth
from kibaship_dns01.config import Defaults, SeenIssuerConfigs
from kibaship_dns01.credentials import SecretReader
from kibaship_dns01.delegation.check import CNAMEChecker
from kibaship_dns01.delegation.names import DelegationNamer
from kibaship_dns01.delegation.offer import DelegationOffer
from kibaship_dns01.delegation.secret import loadSecret
from kibaship_dns01.delegation.store import ValkeyDelegationStore
from kibaship_dns01.dns.answers import Responder
from kibaship_dns01.dns.ratelimit import ResponseRateLimiter
from kibaship_dns01.dns.service import DNSService
from kibaship_dns01.dns.zone import Zone
from kibaship_dns01.kube.client import KubeClient
from kibaship_dns01.logs import buildObserver
from kibaship_dns01.memory import MemoryTrimmer
from kibaship_dns01.progress.service import ProgressService
from kibaship_dns01.resolve import ChallengeResolver
from kibaship_dns01.solver import Solver, TargetFactory
from kibaship_dns01.valkey.publisher import ValkeyPublisher

log = Logger()


def _endpoint(reactor, address, port):
    factory = TCP6ServerEndpoint if ":" in address else TCP4ServerEndpoint
    return factory(reactor, port, interface=address)


class ListeningService(service.Service):
    """Listens with ``factory`` on an endpoint while running."""

    def __init__(self, endpoint, factory, name):
        self.endpoint = endpoint
        self.factory = factory
        self.setName(name)
        self.port = None

    def startService(self):
        """Listen now; a port that cannot be bound raises here, so twistd exits
        with the error instead of running without a listener."""
        super().startService()
        failures = []
        d = self.endpoint.listen(self.factory).addCallbacks(self._listening, failures.append)
        if failures:  # TCP endpoints answer synchronously
            self.running = False
            failures[0].raiseException()
        return d

    def _listening(self, port):
        self.port = port
        host = port.getHost()
        log.info("{name} listening on {host}:{port}", name=self.name, host=host.host,
                 port=host.port)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


class TLSSiteService(ListeningService):
    """The aggregated API over TLS: certificate reloading, a connection cap, and the
    graceful shutdown of :mod:`kibaship_dns01.api.lifecycle`."""

    def __init__(self, endpoint, site, tls, clock=None, maxConnections=DEFAULT_MAX_CONNECTIONS,
                 shutdownDelay=DEFAULT_SHUTDOWN_DELAY, gracePeriod=DEFAULT_GRACE_PERIOD):
        if clock is None:
            from twisted.internet import reactor as clock
        factory = LimitedTLSFactory(tls, site, maxConnections, clock)
        super().__init__(endpoint, factory, "https")
        self.tls = tls
        self.site = site
        self.clock = clock
        self.shutdownDelay = shutdownDelay
        self.gracePeriod = gracePeriod
        self._stopped = None

    def startService(self):
        self.tls.startPolling()
        return super().startService()

    def stopService(self):
        """Drain (see :mod:`kibaship_dns01.api.lifecycle`) once, however often asked; each
        caller gets a Deferred of its own (the root asks first, then ``MultiService`` again:
        handing both the same Deferred would chain it to itself)."""
        if self._stopped is None:
            self._stopped = defer.ensureDeferred(self._shutdown())
            self._stopped.addErrback(lambda f: log.failure("shutdown of the listener", f))
        done = defer.Deferred()
        self._stopped.addBoth(lambda result: done.callback(None) or result)
        return done

    async def _shutdown(self):
        lifecycle = self.site.resource.lifecycle
        lifecycle.stopping = True
        log.info("shutting down: /readyz now fails; the listener closes in {delay}s and "
                 "requests in flight get {grace}s to finish", delay=self.shutdownDelay,
                 grace=self.gracePeriod, inFlight=lifecycle.inFlight)
        if self.shutdownDelay:
            await task.deferLater(self.clock, self.shutdownDelay, lambda: None)
        self.tls.stopPolling()
        await defer.maybeDeferred(super().stopService)
        for channel in self.factory.channels():
            if not channel.requests:  # idle keep-alive: nothing to answer
                channel.loseConnection()
        unanswered = await lifecycle.drain(self.clock, self.gracePeriod)
        log.info("listener drained ({unanswered} request(s) left unanswered)",
                 unanswered=unanswered)
        await self.factory.closeAll(self.clock, CLOSE_SETTLE)


class StopOnSIGTERM(service.Service):
    """Answer SIGTERM with a normal stop, so a drained shutdown exits with status 0.

    Twisted's own handler also remembers the signal, and twistd re-raises it
    once shutdown is over: even a clean drain would end "killed by SIGTERM"
    (status 143), which reads as a crash in a rolling update.  Installed once
    the reactor runs, because the reactor installs its handlers as it starts.
    """

    name = "sigterm"

    def __init__(self, reactor):
        self._reactor = reactor

    def startService(self):
        super().startService()
        self._reactor.callWhenRunning(signal.signal, signal.SIGTERM, self._onSIGTERM)

    def _onSIGTERM(self, number, frame):
        log.info("Received SIGTERM, shutting down.")
        self._reactor.callFromThread(self._reactor.stop)


class DaemonService(service.MultiService):
    """The root service; installs the configured log observer under twistd.

    twistd asks the application for an ``ILogObserver`` component before it
    falls back to its own text log; attaching ours when the service joins the
    application makes ``--log-format`` apply to everything twistd logs too.
    """

    logObserver = None

    def stopService(self):
        """Drain the HTTPS listener before anything it uses (resolver, publisher,
        Kubernetes client) stops: ``MultiService`` would stop them all at once."""
        https = self.namedServices.get("https")
        first = defer.maybeDeferred(https.stopService) if https is not None else defer.succeed(None)
        return first.addCallback(lambda _: super(DaemonService, self).stopService())

    def setServiceParent(self, parent):
        if self.logObserver is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.logObserver)
        return super().setServiceParent(parent)


def buildAPISite(settings, tls, solver, clock, authenticator=None, authorizer=None,
                 readiness=()):
    api = APIIdentity(group=settings.groupName, solver=settings.solverName)
    lifecycle = Lifecycle(clock)
    metrics.HTTP_IN_FLIGHT.set_function(lambda: lifecycle.inFlight)
    conditions = [tls, *readiness, lifecycle]
    for condition in conditions:
        metrics.READY.labels(condition=condition.name).set_function(
            lambda c=condition: 1.0 if c.isReady() else 0.0)
    resource = APIResource(api, solver, authenticator=authenticator, authorizer=authorizer,
                           readiness=conditions, clock=clock, lifecycle=lifecycle)
    return APISite(resource, maxBodyBytes=settings.maxBodyBytes,
                   headerTimeout=settings.requestHeaderTimeout,
                   bodyTimeout=settings.requestBodyTimeout, idleTimeout=settings.idleTimeout,
                   logSuccesses=settings.logLevel == "debug", reactor=clock)


class QuietSite(Site):
    """A plain site without per-request access logs (scrapes every few seconds)."""

    noisy = False

    def log(self, request):
        pass


def buildMetricsService(settings, reactor):
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.REGISTRY))
    site = QuietSite(root)
    endpoint = _endpoint(reactor, settings.metricsBindAddress, settings.metricsPort)
    return ListeningService(endpoint, site, "metrics")


class KubeClientService(service.Service):
    """Owns the API client's connection pool: closed (watches cancelled) on stop."""

    name = "kubernetes-client"

    def __init__(self, client):
        self.client = client

    def stopService(self):
        super().stopService()
        return self.client.close()


def buildTargets(settings, client, clock):
    """Issuer Valkey settings -> targets, with Secrets read through ``client``."""
    return TargetFactory(SecretReader(client, clock), settings.idempotencyWindow)


def buildSolver(settings, client, resolver, publisher, clock, targets=None, seenConfigs=None,
                delegation=None):
    """The real solver over the given Kubernetes client, resolver and publisher."""
    targets = targets or buildTargets(settings, client, clock)
    return Solver(resolver, publisher, targets, clock, Defaults.fromSettings(settings),
                  dryRun=settings.dryRun,
                  markSeconds=settings.progressWindow if settings.progressEvents else None,
                  seenConfigs=seenConfigs, delegation=delegation)


def buildProgress(settings, client, resolver, publisher, clock, targets, seenConfigs,
                  delegation=None):
    """The progress events (status/issued/failed), or ``None`` when turned off or dry."""
    if not settings.progressEvents or settings.dryRun:
        return None
    return ProgressService(client, resolver, publisher, targets, clock,
                           Defaults.fromSettings(settings), seenConfigs=seenConfigs,
                           clusterResourceNamespace=settings.clusterResourceNamespace,
                           window=settings.progressWindow,
                           refreshInterval=settings.progressRefreshInterval,
                           checker=delegation.checker if delegation else None)


def buildDelegation(settings, publisher, targets, clock):
    """The :class:`DelegationOffer` of ``--delegation-zone``, or ``None`` when it is off.

    Its keys live on the daemon's own Valkey, whatever Valkey an issuer names.
    """
    if not settings.delegationOn:
        return None
    namer = DelegationNamer(loadSecret(settings.delegationSecretFile), settings.delegationZone)
    valkey = Defaults.fromSettings(settings).valkeySettings()
    store = ValkeyDelegationStore(
        publisher, lambda: defer.ensureDeferred(targets.target(valkey)), clock)
    checker = CNAMEChecker(settings.dnsResolvers, clock)
    return DelegationOffer(namer, store, checker, settings.delegationNamespaces,
                           keyTTL=settings.idempotencyWindow)


def buildZone(settings):
    """The delegation zone as the flags describe it; the nameserver addresses are
    served for the nameserver names inside the zone."""
    zone = Zone(name=settings.delegationZone, nameservers=settings.delegationNameservers)
    inZone = [ns for ns in zone.nameservers if zone.relative(ns)]
    if not settings.delegationNameserverAddresses or not inZone:
        return zone
    return attr.evolve(zone, addresses={
        ns: settings.delegationNameserverAddresses for ns in inZone})


def buildDNSService(settings, delegation, reactor):
    """The authoritative DNS responder for ``--delegation-zone``, serving the keys of
    ``delegation``'s store; with ``--dns-rate-limit`` 0, no rate limiting."""
    responder = Responder(buildZone(settings), delegation.store, reactor)
    limiter = None
    if settings.dnsRateLimit > 0:
        limiter = ResponseRateLimiter(reactor, rate=settings.dnsRateLimit,
                                      burst=max(1.0, 2 * settings.dnsRateLimit),
                                      slip=settings.dnsRateLimitSlip)
    return DNSService(responder, settings.dnsBindAddress, settings.dnsPort, reactor,
                      limiter=limiter)


def buildServingTLS(settings, clock, interval=10.0):
    """The serving certificate, re-read when it rotates, under the TLS policy of
    ``--tls-min-version`` and ``--tls-cipher-suites``.

    :raise kibaship_dns01.api.tlspolicy.PolicyError: the two flags conflict.
    """
    policy = TLSPolicy(settings.tlsMinVersion, settings.tlsCipherSuites)
    return ReloadingServerTLS(settings.tlsCertFile, settings.tlsPrivateKeyFile, clock,
                              interval=interval, policy=policy)


def buildService(settings, reactor, kubeConfig, stdout=None):
    """The whole daemon for ``settings``.

    Children start in this order (and stop in reverse): API client, the
    authentication ConfigMap watcher, the Challenge cache, the Valkey
    publisher, the progress events (Certificate cache), then the listeners, so nothing is served before its
    dependencies exist; ``/readyz`` says when the caches have loaded.
    """
    import sys

    root = DaemonService()
    root.logObserver = buildObserver(stdout or sys.stdout, settings.logFormat, settings.logLevel)
    tls = buildServingTLS(settings, reactor)
    tls.load()
    client = KubeClient(kubeConfig, reactor)
    KubeClientService(client).setServiceParent(root)
    auth = buildAuth(client, reactor, setClientCAs=tls.setClientCAs)
    auth.watcher.setServiceParent(root)
    resolver = ChallengeResolver(client, reactor, settings.groupName, settings.solverName)
    resolver.setServiceParent(root)
    publisher = ValkeyPublisher(reactor)
    publisher.setServiceParent(root)
    targets, seenConfigs = buildTargets(settings, client, reactor), SeenIssuerConfigs()
    delegation = buildDelegation(settings, publisher, targets, reactor)
    solver = buildSolver(settings, client, resolver, publisher, reactor, targets, seenConfigs,
                         delegation)
    progress = buildProgress(settings, client, resolver, publisher, reactor, targets,
                             seenConfigs, delegation)
    if progress is not None:
        progress.setServiceParent(root)
    site = buildAPISite(settings, tls, solver, reactor, authenticator=auth.authenticator,
                        authorizer=auth.authorizer, readiness=[auth.watcher, resolver])
    TLSSiteService(_endpoint(reactor, settings.bindAddress, settings.securePort), site, tls,
                   clock=reactor, maxConnections=settings.maxConnections,
                   shutdownDelay=settings.shutdownDelay,
                   gracePeriod=settings.shutdownGracePeriod).setServiceParent(root)
    if delegation is not None:
        buildDNSService(settings, delegation, reactor).setServiceParent(root)
    if settings.metricsPort:
        buildMetricsService(settings, reactor).setServiceParent(root)
    MemoryTrimmer(reactor).setServiceParent(root)
    return root
