"""The wire contract with cert-manager and the kube-aggregator (SPEC §2–§4), over real TLS."""
import json

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kibaship_dns01.auth.types import Decision
from kibaship_dns01.challenge import SolverError
from kibaship_dns01.interfaces import IAuthorizer, ISolver
from kibaship_dns01.testing.polling import pollUntil
from kibaship_dns01.testing.fakesolver import RecordingSolver
from kibaship_dns01.testing.httpclient import request
from tests.support import GROUP, SOLVER, SOLVER_PATH, startTLSSite

JSON = {"Content-Type": ["application/json"]}

REQUEST = {
    "uid": "", "action": "Present", "type": "dns-01", "dnsName": "example.com",
    "key": "dDlzkoMWZo5NLYFs8-XpPvEmEGdikSbIOfVu3WNJW84", "resourceNamespace": "cert-manager",
    "resolvedFQDN": "_acme-challenge.example.com.", "resolvedZone": "example.com.",
    "allowAmbientCredentials": True, "config": {"ttl": 60},
}


def payload(**changes):
    req = dict(REQUEST, **changes)
    return {"apiVersion": "webhook.acme.cert-manager.io/v1alpha1", "kind": "ChallengePayload",
            "request": req}


def d(coro):
    return defer.ensureDeferred(coro)


class ContractTests(TestCase):
    """Every endpoint and every class of malformed input, asserting codes and bodies."""

    async def _site(self, solver=None, **kw):
        self.solver = solver or RecordingSolver()
        self.site = await startTLSSite(self, self.solver, **kw)

    async def _call(self, method, path, **kw):
        return await request(reactor, method, self.site.url(path), caPEM=self.site.ca.certPEM,
                             **kw)

    async def _post(self, body, headers=JSON, path=SOLVER_PATH):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        return await self._call(b"POST", path, headers=headers, body=body)

    def assertStatus(self, resp, code, reason, contains):
        self.assertEqual(resp.code, code, resp.body)
        body = resp.json()
        self.assertEqual(
            {k: body[k] for k in ("kind", "apiVersion", "metadata", "status", "reason", "code")},
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "reason": reason, "code": code})
        self.assertIn(contains, body["message"])
        self.assertEqual(resp.headers.getRawHeaders(b"content-type"), [b"application/json"])

    def test_fakesAreVerified(self):
        verifyObject(ISolver, RecordingSolver())
        verifyObject(IBodyProducer, ChunkedProducer(b""))

    # -- discovery ---------------------------------------------------------
    def test_apiResourceList(self):
        async def go():
            await self._site()
            resp = await self._call(b"GET", f"/apis/{GROUP}/v1alpha1")
            self.assertEqual(resp.code, 200)
            self.assertEqual(resp.json(), {
                "kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": "dns.kibaship.com/v1alpha1",
                "resources": [{"name": "kibaship", "singularName": "ChallengePayload",
                               "namespaced": False, "group": "webhook.acme.cert-manager.io",
                               "version": "v1alpha1", "kind": "ChallengePayload",
                               "verbs": ["create"]}]})
        return d(go())

    def test_apiGroupListAndGroup(self):
        async def go():
            await self._site()
            gv = {"groupVersion": "dns.kibaship.com/v1alpha1", "version": "v1alpha1"}
            group = {"name": GROUP, "versions": [gv], "preferredVersion": gv}
            resp = await self._call(b"GET", "/apis")
            self.assertEqual((resp.code, resp.json()), (200, {
                "kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}))
            # aggregated discovery may be asked for; the plain list is an acceptable answer
            resp = await self._call(b"GET", "/apis", headers={"Accept": [
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"]})
            self.assertEqual(resp.code, 200)
            resp = await self._call(b"GET", f"/apis/{GROUP}")
            self.assertEqual((resp.code, resp.json()), (200, {
                "kind": "APIGroup", "apiVersion": "v1", **group}))
        return d(go())

    def test_openAPIAndVersion(self):
        async def go():
            await self._site()
            v2 = await self._call(b"GET", "/openapi/v2")
            self.assertEqual((v2.code, v2.json()["swagger"]), (200, "2.0"))
            v3 = await self._call(b"GET", "/openapi/v3")
            url = v3.json()["paths"][f"apis/{GROUP}/v1alpha1"]["serverRelativeURL"]
            doc = await self._call(b"GET", url)
            self.assertEqual((doc.code, doc.json()["openapi"]), (200, "3.0.0"))
            version = await self._call(b"GET", "/version")
            self.assertEqual(version.code, 200)
            self.assertEqual(version.json()["gitVersion"], "v0.1.0")
        return d(go())

    def test_healthEndpoints(self):
        async def go():
            await self._site()
            for path in ("/healthz", "/livez", "/readyz"):
                resp = await self._call(b"GET", path)
                self.assertEqual((resp.code, resp.body), (200, b"ok"), path)
        return d(go())

    def test_readyzReportsWhatIsNotReady(self):
        class NotYet:
            name = "challenge-cache"

            def isReady(self):
                return False

        async def go():
            await self._site(readiness=[NotYet()])
            resp = await self._call(b"GET", "/readyz")
            self.assertEqual(resp.code, 500)
            self.assertIn(b"[+]serving-certificate ok", resp.body)
            self.assertIn(b"[-]challenge-cache failed", resp.body)
            self.assertIn(b"readyz check failed", resp.body)
        return d(go())

    # -- routing errors ------------------------------------------------------
    def test_unknownPath404(self):
        async def go():
            await self._site()
            resp = await self._call(b"GET", "/apis/other.example/v1")
            self.assertStatus(resp, 404, "NotFound", "could not find the requested resource")
        return d(go())

    def test_wrongGroupOrSolver404(self):
        async def go():
            await self._site()
            for path in (f"/apis/other.example.com/v1alpha1/{SOLVER}",
                         f"/apis/{GROUP}/v1alpha1/other", f"/apis/{GROUP}/v1beta1/{SOLVER}",
                         f"/apis/{GROUP}/v1alpha1/namespaces/x/{SOLVER}"):
                resp = await self._post(payload(), path=path)
                self.assertStatus(resp, 404, "NotFound", path)
            self.assertEqual(self.solver.calls, [])
        return d(go())

    def test_wrongMethod405(self):
        async def go():
            await self._site()
            resp = await self._call(b"GET", SOLVER_PATH)
            self.assertStatus(resp, 405, "MethodNotAllowed", "use POST")
            self.assertEqual(resp.headers.getRawHeaders(b"allow"), [b"POST"])
            resp = await self._call(b"DELETE", "/apis")
            self.assertStatus(resp, 405, "MethodNotAllowed", "DELETE is not allowed on /apis")
        return d(go())

    # -- the solver POST ----------------------------------------------------
    def test_presentReachesSolverWithDecodedFields(self):
        async def go():
            await self._site()
            resp = await self._post(payload())
            self.assertEqual(resp.code, 201)
            self.assertEqual(resp.json(), {
                "kind": "ChallengePayload", "apiVersion": "webhook.acme.cert-manager.io/v1alpha1",
                "request": REQUEST, "response": {"uid": "", "success": True}})
            [(method, req)] = self.solver.calls
            self.assertEqual(method, "present")
            self.assertEqual((req.dnsName, req.key, req.resourceNamespace, req.resolvedFQDN,
                              req.resolvedZone, req.allowAmbientCredentials, req.config),
                             ("example.com", REQUEST["key"], "cert-manager",
                              "_acme-challenge.example.com.", "example.com.", True, {"ttl": 60}))
        return d(go())

    def test_cleanUpWithoutTypeMetaOrConfig(self):
        async def go():
            await self._site()
            req = {k: v for k, v in REQUEST.items() if k != "config"}
            req["action"] = "CleanUp"
            resp = await self._post({"request": req})
            self.assertEqual(resp.code, 201)
            self.assertEqual(resp.json()["request"], req)
            [(method, decoded)] = self.solver.calls
            self.assertEqual((method, decoded.config), ("cleanUp", None))
        return d(go())

    def test_solverFailureIsSuccessFalseWithMessage(self):
        async def go():
            await self._site(RecordingSolver(SolverError("Certificate x/y has no label z")))
            resp = await self._post(payload())
            self.assertEqual(resp.code, 201)
            self.assertEqual(resp.json()["response"], {
                "uid": "", "success": False,
                "status": {"metadata": {}, "status": "Failure",
                           "message": "Certificate x/y has no label z"}})
        return d(go())

    def test_unexpectedSolverErrorStillCarriesMessage(self):
        async def go():
            await self._site(RecordingSolver(RuntimeError("secret detail")))
            resp = await self._post(payload())
            status = resp.json()["response"]["status"]
            self.assertIn("internal error in kibaship-dns01", status["message"])
            self.assertNotIn("secret detail", status["message"])
            self.flushLoggedErrors(RuntimeError)
        return d(go())

    def test_malformedBodies400(self):
        cases = [
            (b"{not json", "not valid JSON"),
            (b"\xff\xfe", "not"),
            (b"[1,2]", "must be a JSON object"),
            (b"{}", 'no "request" object'),
            (json.dumps({"request": "x"}).encode(), '"request" must be an object'),
            (json.dumps(payload(action="present")).encode(), "request.action must be one of"),
            (json.dumps(payload(action="Delete")).encode(), "request.action must be one of"),
            (json.dumps(payload(key=5)).encode(), "request.key must be a string, not a number"),
            (json.dumps(payload(dnsName=None)).encode(), "request.dnsName must be a string"),
            (json.dumps(payload(resolvedFQDN="")).encode(), "request.resolvedFQDN must not be"),
            (json.dumps(payload(allowAmbientCredentials="yes")).encode(),
             "allowAmbientCredentials must be a boolean"),
            (json.dumps(payload(uid=True)).encode(), "request.uid must be a string"),
            (json.dumps(payload(type="http-01")).encode(), 'request.type must be "dns-01"'),
            (json.dumps(payload(config=[1])).encode(), "request.config must be an object"),
        ]
        req = dict(REQUEST)
        del req["resolvedZone"]
        cases.append((json.dumps({"request": req}).encode(), "request.resolvedZone is missing"))

        async def go():
            await self._site()
            for body, message in cases:
                resp = await self._post(body)
                self.assertStatus(resp, 400, "BadRequest", message)
            self.assertEqual(self.solver.calls, [])
        return d(go())

    def test_wrongContentType415(self):
        async def go():
            await self._site()
            for ctype in ("text/plain", "application/yaml", "application/x-www-form-urlencoded",
                          "application/jsonl", "json", ";application/json"):
                resp = await self._post(payload(), headers={"Content-Type": [ctype]})
                self.assertStatus(resp, 415, "UnsupportedMediaType",
                                  f"Content-Type must be application/json, not {ctype}")
            self.assertEqual(self.solver.calls, [])
        return d(go())

    def test_jsonOrNoContentTypeAccepted(self):
        """An empty or missing Content-Type is JSON, as in k8s.io/apiserver
        (``NegotiateInputSerializerForMediaType``): ``kubectl create --raw`` sends none."""
        async def go():
            await self._site()
            for headers in ({}, {"Content-Type": [""]},
                            {"Content-Type": ["application/json; charset=utf-8"]},
                            {"Content-Type": ["Application/JSON"]}):
                resp = await self._post(payload(), headers=headers)
                self.assertEqual(resp.code, 201, (headers, resp.body))
                self.assertEqual(resp.json()["response"], {"uid": "", "success": True})
            self.assertEqual(len(self.solver.calls), 4)
        return d(go())

    def test_oversizedBody413(self):
        async def go():
            await self._site(maxBodyBytes=4096)
            big = payload(config={"uiHints": {"pad": "x" * 10000}})
            resp = await self._post(big)
            self.assertStatus(resp, 413, "RequestEntityTooLarge", "limit of 4096 bytes")
            self.assertEqual(self.solver.calls, [])
        return d(go())

    def test_oversizedChunkedBody413(self):
        """Without a Content-Length the limit is enforced while the body streams in."""
        async def go():
            await self._site(maxBodyBytes=4096)
            body = json.dumps(payload(config={"pad": "x" * 20000})).encode()
            resp = await self._call(b"POST", SOLVER_PATH, headers=JSON,
                                    body=ChunkedProducer(body))
            self.assertStatus(resp, 413, "RequestEntityTooLarge", "limit of 4096 bytes")
            small = await self._call(b"POST", SOLVER_PATH, headers=JSON,
                                     body=ChunkedProducer(json.dumps(payload()).encode()))
            self.assertEqual(small.code, 201)
            self.assertEqual(len(self.solver.calls), 1)
        return d(go())

    def test_deadlineCountsAuthorizationTime(self):
        """A slow SubjectAccessReview leaves the solver only what remains of 50 s."""
        from twisted.internet.task import Clock

        clock = Clock()
        verifyObject(IAuthorizer, SlowAuthorizer(clock, 0))

        async def go():
            authorizer = SlowAuthorizer(clock, 30)
            await self._site(RecordingSolver(defer.Deferred()), clock=clock,
                             authorizer=authorizer)
            pending = d(self._post(payload()))
            await pollUntil(reactor, lambda: authorizer.calls, 10, what="the review")
            clock.advance(30)
            await pollUntil(reactor, lambda: self.solver.calls, 10, what="the solver call")
            clock.advance(19)
            self.assertNoResult(pending)
            clock.advance(1)  # 50 s after the request arrived
            resp = await pending
            self.assertIn("did not finish within 50s",
                          resp.json()["response"]["status"]["message"])
        return d(go())

    def test_solverThatNeverAnswersTimesOut(self):
        from twisted.internet.task import Clock

        clock = Clock()

        async def go():
            await self._site(RecordingSolver(defer.Deferred()), clock=clock)
            pending = d(self._post(payload()))
            await pollUntil(reactor, lambda: self.solver.calls, 10, what="the solver call")
            clock.advance(51)
            resp = await pending
            self.assertEqual(resp.code, 201)
            self.assertIn("did not finish within 50s",
                          resp.json()["response"]["status"]["message"])
        return d(go())


@implementer(IBodyProducer)
class ChunkedProducer:
    """A body of unknown length, so the client sends it chunked in 1 KiB pieces."""

    length = UNKNOWN_LENGTH

    def __init__(self, data):
        self.data = data

    def startProducing(self, consumer):
        for i in range(0, len(self.data), 1024):
            consumer.write(self.data[i:i + 1024])
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@implementer(IAuthorizer)
class SlowAuthorizer:
    """Allows everything, after ``delay`` seconds of the given clock."""

    def __init__(self, clock, delay):
        self.clock, self.delay, self.calls = clock, delay, 0

    def authorize(self, attributes):
        from twisted.internet.task import deferLater as later

        self.calls += 1
        return later(self.clock, self.delay, lambda: Decision(allowed=True))
