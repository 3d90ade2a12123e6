"""The per-request ``http_request`` log line: refusals always, successes only at debug."""
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import pages, resource

from kibaship_dns01.api.site import APISite
from kibaship_dns01.api.tls import ReloadingServerTLS
from kibaship_dns01.service import buildAPISite
from kibaship_dns01.testing.fakesolver import RecordingSolver
from kibaship_dns01.testing.inmemory import MemoryClient, parseResponse
from tests.support import LogCapture, settingsFor, tempDir, writeServingFiles


class _Root(resource.Resource):
    """``/healthz`` answers ok, anything else 404 (``Resource``'s own default 404 page is
    deprecated by Twisted)."""

    def getChild(self, path, request):
        return pages.notFound()


class _OK(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok"


def _tree():
    root = _Root()
    root.putChild(b"healthz", _OK())
    return root


def _get(site, path):
    client = MemoryClient(site)
    return parseResponse(client.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path))


class RequestLogTests(SynchronousTestCase):
    def setUp(self):
        self.logs = LogCapture(self)

    def lines(self):
        return [(e["code"], e["log_level"].name) for e in self.logs.ofKind("http_request")]

    def test_everyAnswerLoggedWhenSuccessesAreAskedFor(self):
        site = APISite(_tree(), logSuccesses=True, reactor=MemoryReactorClock())
        self.assertEqual(_get(site, b"/healthz").code, 200)
        self.assertEqual(_get(site, b"/nowhere").code, 404)
        self.assertEqual(self.lines(), [(200, "debug"), (404, "info")])

    def test_onlyRefusalsWithoutDebug(self):
        site = APISite(_tree(), logSuccesses=False, reactor=MemoryReactorClock())
        self.assertEqual(_get(site, b"/healthz").code, 200)
        self.assertEqual(_get(site, b"/nowhere").code, 404)
        self.assertEqual(self.lines(), [(404, "info")])

    def test_theDaemonLogsSuccessesOnlyAtDebug(self):
        """``--log-level`` decides: the observer would drop the debug lines anyway."""
        _, certFile, keyFile = writeServingFiles(tempDir(self))
        clock = MemoryReactorClock()
        tls = ReloadingServerTLS(certFile, keyFile, clock)
        tls.load()
        for level, logged in (("info", False), ("warn", False), ("debug", True)):
            settings = settingsFor(certFile, keyFile, logLevel=level)
            site = buildAPISite(settings, tls, RecordingSolver(), clock)
            self.assertIs(site.logSuccesses, logged, level)
