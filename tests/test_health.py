"""``/healthz``, ``/livez`` and ``/readyz`` through the real site over TLS, with the query
strings operators type (``?verbose``, ``?verbose=1``, ``?exclude=...``), answered as
``k8s.io/apiserver``'s ``handleRootHealth`` answers them."""
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kibaship_dns01.api.health import queryOf
from kibaship_dns01.auth.types import Decision
from kibaship_dns01.interfaces import IAuthorizer
from kibaship_dns01.testing.httpclient import request
from tests.support import startTLSSite

PASSED = (b"[+]ping ok\n[+]serving-certificate ok\n[+]challenge-cache ok\n[+]shutdown ok\n"
          b"readyz check passed\n")


class Condition:
    def __init__(self, name, ready):
        self.name, self.ready = name, ready

    def isReady(self):
        return self.ready


@implementer(IAuthorizer)
class PathAuthorizer:
    """Allows ``get`` on the paths in ``allowed``; remembers every path it was asked about."""

    def __init__(self, allowed):
        self.allowed, self.asked = set(allowed), []

    def authorize(self, attributes):
        self.asked.append(attributes.path)
        allowed = attributes.verb == "get" and attributes.path in self.allowed
        return defer.succeed(Decision(allowed, "" if allowed else "forbidden by the test"))


class SiteMixin:
    """The real site over TLS, started on the first request, with one cache condition."""

    site = None
    authorizer = None

    async def get(self, path, ready=True):
        if self.site is None:
            self.cache = Condition("challenge-cache", ready)
            self.site = await startTLSSite(self, None, readiness=[self.cache],
                                           authorizer=self.authorizer)
        self.cache.ready = ready
        return await request(reactor, "GET", self.site.url(path), caPEM=self.site.ca.certPEM)

    def assertAnswer(self, resp, code, body):
        self.assertEqual((resp.code, resp.body), (code, body))
        self.assertEqual(resp.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; charset=utf-8"])
        self.assertEqual(resp.headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])


class HealthTests(SiteMixin, TestCase):
    def test_plainAnswerIsOk(self):
        async def go():
            for path in ("/readyz", "/livez", "/healthz"):
                self.assertAnswer(await self.get(path), 200, b"ok")
        return defer.ensureDeferred(go())

    def test_bareVerboseListsTheChecks(self):
        """``?verbose`` has no ``=``: Twisted's own query parser would drop it."""
        async def go():
            self.assertAnswer(await self.get("/readyz?verbose"), 200, PASSED)
            self.assertAnswer(await self.get("/livez?verbose"), 200,
                              b"[+]ping ok\nlivez check passed\n")
            self.assertAnswer(await self.get("/healthz?verbose"), 200,
                              b"[+]ping ok\nhealthz check passed\n")
        return defer.ensureDeferred(go())

    def test_verboseWithAValue(self):
        async def go():
            for query in ("?verbose=1", "?verbose=true", "?verbose=", "?verbose&verbose=0"):
                self.assertAnswer(await self.get("/readyz" + query), 200, PASSED)
        return defer.ensureDeferred(go())

    def test_failureIsAlwaysVerbose(self):
        async def go():
            failed = (b"[+]ping ok\n[+]serving-certificate ok\n"
                      b"[-]challenge-cache failed: reason withheld\n[+]shutdown ok\n"
                      b"readyz check failed\n")
            self.assertAnswer(await self.get("/readyz", ready=False), 500, failed)
            self.assertAnswer(await self.get("/readyz?verbose", ready=False), 500, failed)
            # liveness never waits for a cache
            self.assertAnswer(await self.get("/livez", ready=False), 200, b"ok")
            self.assertAnswer(await self.get("/healthz", ready=False), 200, b"ok")
        return defer.ensureDeferred(go())

    def test_excludedCheckPasses(self):
        async def go():
            self.assertAnswer(await self.get("/readyz?exclude=challenge-cache", ready=False),
                              200, b"ok")
            self.assertAnswer(
                await self.get("/readyz?verbose&exclude=challenge-cache", ready=False), 200,
                b"[+]ping ok\n[+]serving-certificate ok\n[+]challenge-cache excluded: ok\n"
                b"[+]shutdown ok\nreadyz check passed\n")
            self.assertAnswer(await self.get("/livez?exclude=ping&verbose"), 200,
                              b"[+]ping excluded: ok\nlivez check passed\n")
        return defer.ensureDeferred(go())

    def test_repeatedExcludes(self):
        async def go():
            self.assertAnswer(
                await self.get("/readyz?exclude=ping&exclude=challenge-cache&verbose",
                               ready=False), 200,
                b"[+]ping excluded: ok\n[+]serving-certificate ok\n"
                b"[+]challenge-cache excluded: ok\n[+]shutdown ok\nreadyz check passed\n")
        return defer.ensureDeferred(go())

    def test_unknownExcludeIsAWarningLine(self):
        async def go():
            self.assertAnswer(
                await self.get("/readyz?verbose&exclude=zeta&exclude=etcd&exclude=ping"), 200,
                b"[+]ping excluded: ok\n[+]serving-certificate ok\n[+]challenge-cache ok\n"
                b"[+]shutdown ok\n"
                b'warn: some health checks cannot be excluded: no matches for "etcd","zeta"\n'
                b"readyz check passed\n")
            # not verbose and passing: still just ok, as in Go
            self.assertAnswer(await self.get("/readyz?exclude=etcd"), 200, b"ok")
            self.assertAnswer(
                await self.get("/readyz?exclude=etcd", ready=False), 500,
                b"[+]ping ok\n[+]serving-certificate ok\n"
                b"[-]challenge-cache failed: reason withheld\n[+]shutdown ok\n"
                b'warn: some health checks cannot be excluded: no matches for "etcd"\n'
                b"readyz check failed\n")
        return defer.ensureDeferred(go())


class CheckPathTests(SiteMixin, TestCase):
    """``/<endpoint>/<check>``, one check each, as ``k8s.io/apiserver`` installs them;
    authorized like any other non-resource path (only the three roots are always allowed)."""

    def setUp(self):
        self.authorizer = PathAuthorizer({"/readyz", "/readyz/challenge-cache", "/readyz/ping",
                                          "/livez/ping", "/healthz/ping", "/readyz/shutdown",
                                          "/readyz/etcd", "/livez/challenge-cache"})
        verifyObject(IAuthorizer, self.authorizer)

    def test_oneCheck(self):
        async def go():
            for path in ("/readyz/challenge-cache", "/readyz/ping", "/readyz/shutdown",
                         "/livez/ping", "/healthz/ping"):
                self.assertAnswer(await self.get(path), 200, b"ok")
            self.assertAnswer(await self.get("/readyz/challenge-cache", ready=False), 500,
                              b"internal server error: reason withheld\n")
            self.assertAnswer(await self.get("/readyz/ping", ready=False), 200, b"ok")
        return defer.ensureDeferred(go())

    def test_unknownCheckIsNotFound(self):
        async def go():
            self.assertEqual((await self.get("/readyz/etcd")).code, 404)
            # liveness has the ping check only
            self.assertEqual((await self.get("/livez/challenge-cache")).code, 404)
        return defer.ensureDeferred(go())

    def test_checkPathsAreAuthorized(self):
        async def go():
            self.assertEqual((await self.get("/readyz")).code, 200)
            self.assertEqual((await self.get("/livez/ping")).code, 200)
            self.authorizer.allowed.discard("/livez/ping")
            self.assertEqual((await self.get("/livez/ping")).code, 403)
            self.assertEqual(self.authorizer.asked, ["/readyz", "/livez/ping", "/livez/ping"])
        return defer.ensureDeferred(go())


class QueryTests(SynchronousTestCase):
    """The raw query as Go's ``url.ParseQuery`` reads it."""

    def test_parameterWithoutValueIsKept(self):
        self.assertEqual(queryOf(b"/readyz?verbose"), {"verbose": [""]})
        self.assertEqual(queryOf(b"/readyz?exclude=a&verbose&exclude=b"),
                         {"exclude": ["a", "b"], "verbose": [""]})

    def test_escapesDecoded(self):
        self.assertEqual(queryOf(b"/readyz?exclude=a%2Db+c"), {"exclude": ["a-b c"]})

    def test_noQuery(self):
        self.assertEqual(queryOf(b"/readyz"), {})
        self.assertEqual(queryOf(b"/readyz?"), {})
