"""Shared test scaffolding: a real TLS API site on a loopback port."""
import os
import shutil
import tempfile

import attr
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import globalLogPublisher

from kibaship_dns01.api.tls import ReloadingServerTLS
from kibaship_dns01.service import TLSSiteService, buildAPISite, buildServingTLS
from kibaship_dns01.tap import Settings
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.daemon import DaemonProcess
from kibaship_dns01.testing.environment import LocalEnvironment
from kibaship_dns01.testing.ports import freePort

GROUP = "dns.kibaship.com"
SOLVER = "kibaship"
SOLVER_PATH = f"/apis/{GROUP}/v1alpha1/{SOLVER}"


def settingsFor(certFile, keyFile, **overrides):
    """Daemon settings with test-friendly values."""
    values = dict(
        securePort=0, bindAddress="127.0.0.1", tlsCertFile=certFile, tlsPrivateKeyFile=keyFile,
        groupName=GROUP, solverName=SOLVER, kubeconfig=None, metricsPort=0,
        metricsBindAddress="127.0.0.1", dryRun=False, logFormat="json", logLevel="info",
        maxBodyBytes=1024 * 1024, requestHeaderTimeout=10.0, requestBodyTimeout=10.0,
        idleTimeout=90.0, maxConnections=2048, shutdownDelay=0.0, shutdownGracePeriod=45.0,
        valkeyNamespace="kibaship-operator",
        valkeyService="kibaship-valkey-cluster-kibaship-com", valkeyPort=6379,
        valkeySecret="kibaship-valkey-cluster-kibaship-com", valkeyConnectTimeout=5.0,
        valkeyReadTimeout=3.0, valkeyMinReplicas=0, idempotencyWindow=86400.0)
    values.update(overrides)
    return Settings(**values)


def tempDir(testCase, prefix="kibaship-test-"):
    """A fresh temporary directory removed when the test ends (under both runners;
    trial's ``mktemp`` would write into the current directory under pytest)."""
    directory = tempfile.mkdtemp(prefix=prefix)
    testCase.addCleanup(shutil.rmtree, directory, True)
    return directory


def writeServingFiles(directory, ca=None, key=None):
    """A fresh serving pair for localhost under ``directory`` (``key``: its private key,
    P-256 by default); returns (ca, cert, key paths)."""
    ca = ca or pki.makeCA()
    certFile, keyFile = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    pki.serverPair(ca, key=key).writeTo(certFile, keyFile)
    return ca, certFile, keyFile


async def startDaemon(testCase, cluster, prefix="kibaship-e2e-"):
    """The local environment around ``cluster`` and the real ``twistd`` daemon, ready;
    both stopped at cleanup. :return: ``(env, daemon, base URL, metrics port)``."""
    cwd = tempDir(testCase, prefix)
    env = LocalEnvironment(reactor, cwd, cluster)
    await env.start()
    testCase.addCleanup(lambda: defer.ensureDeferred(env.stop()))
    metricsPort = freePort()
    daemon = DaemonProcess(reactor, env.daemonArgs(0, metricsPort), cwd=cwd)
    daemon.start()
    testCase.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
    base = f"https://localhost:{await daemon.listeningPort()}"
    await daemon.waitReady(base, env.servingCA.certPEM)
    return env, daemon, base, metricsPort


class LogCapture:
    """Collect the log events emitted while a test runs."""

    def __init__(self, case):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self):
        return [e for e in self.events
                if e.get("log_level") is not None and e["log_level"].name == "warn"]

    def ofKind(self, kind):
        """Events logged with ``log_kind=kind`` (e.g. ``challenge_decision``)."""
        return [e for e in self.events if e.get("log_kind") == kind]


@attr.s(auto_attribs=True)
class RunningSite:
    service: TLSSiteService
    ca: object
    certFile: str
    keyFile: str
    tls: ReloadingServerTLS

    @property
    def port(self):
        return self.service.port.getHost().port

    def url(self, path):
        return f"https://localhost:{self.port}{path}"


async def startTLSSite(testCase, solver, authenticator=None, authorizer=None, readiness=(),
                       clock=reactor, pollInterval=10.0, servingKey=None, **overrides):
    """Start the real API site over TLS on 127.0.0.1; stopped at test cleanup.
    ``servingKey`` is the serving certificate's private key (P-256 by default)."""
    ca, certFile, keyFile = writeServingFiles(tempDir(testCase, "kibaship-tls-"),
                                              key=servingKey)
    settings = settingsFor(certFile, keyFile, **overrides)
    tls = buildServingTLS(settings, clock, interval=pollInterval)
    tls.load()
    site = buildAPISite(settings, tls, solver, clock, authenticator=authenticator,
                        authorizer=authorizer, readiness=readiness)
    svc = TLSSiteService(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), site, tls,
                         clock=reactor, maxConnections=settings.maxConnections,
                         shutdownDelay=settings.shutdownDelay,
                         gracePeriod=settings.shutdownGracePeriod)
    await svc.startService()
    testCase.addCleanup(svc.stopService)
    return RunningSite(svc, ca, certFile, keyFile, tls)
