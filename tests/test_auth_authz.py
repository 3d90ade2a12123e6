"""Delegated authorization: static allows, SubjectAccessReview, cache, single-flight."""
from twisted.internet import defer
from twisted.internet.testing import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kibaship_dns01 import metrics
from kibaship_dns01.auth import authz
from kibaship_dns01.auth.cache import ExpiringCache, withDeadline
from kibaship_dns01.flight import SharedCalls
from kibaship_dns01.auth.types import (
    ANONYMOUS_USER, AUTHENTICATED, MASTERS, Decision, RequestAttributes, UserInfo)
from kibaship_dns01.interfaces import IAuthorizer, IKubernetesClient
from kibaship_dns01.kube.errors import Unavailable
from kibaship_dns01.testing.fakekube import FakeKubernetesClient

GROUP, SOLVER = "dns.kibaship.com", "kibaship"
CERT_MANAGER = UserInfo(name="system:serviceaccount:cert-manager:cert-manager",
                        groups=("system:serviceaccounts", AUTHENTICATED))


def solverPost(user=CERT_MANAGER):
    return RequestAttributes(user=user, verb="create", path="/apis/%s/v1alpha1/%s" % (GROUP, SOLVER),
                             resourceRequest=True, apiGroup=GROUP, apiVersion="v1alpha1",
                             resource=SOLVER)


def get(path, user=CERT_MANAGER):
    return RequestAttributes(user=user, verb="get", path=path)


@implementer(IKubernetesClient)
class HeldClient:
    """The verified fake, with POST answers held until :meth:`release`.

    The fake answers synchronously; holding its answers is how a test makes
    reviews overlap in time, as they do against a real API server.
    """

    def __init__(self, fake):
        self.fake = fake
        self.held = []

    def get(self, path, params=None):
        return self.fake.get(path, params)

    def list(self, path, params=None, pageItems=None):
        return self.fake.list(path, params, pageItems)

    def listPages(self, path, params, onPage):
        return self.fake.listPages(path, params, onPage)

    def watch(self, path, resourceVersion, onEvent, params=None):
        return self.fake.watch(path, resourceVersion, onEvent, params)

    def post(self, path, body):
        held = defer.Deferred()
        self.held.append((held, path, body))
        return held

    def release(self):
        """Answer every held POST from the fake, in order."""
        held, self.held = self.held, []
        for d, path, body in held:
            if not d.called:
                self.fake.post(path, body).chainDeferred(d)


class AuthorizerTestsMixin:
    def setUp(self):
        self.clock = Clock()
        self.kube = FakeKubernetesClient()
        self.reviews = []
        self.answer = {"allowed": True, "reason": "RBAC: allowed by ClusterRoleBinding x"}

        def decide(spec):
            self.reviews.append(spec)
            return dict(self.answer)

        self.kube.setSubjectAccessReviewHandler(decide)
        self.authorizer = authz.DelegatingAuthorizer(self.kube, self.clock)

    def sarCalls(self):
        return self.kube.countCalls("post", authz.SAR_PATH)

    def authorize(self, attributes):
        return self.successResultOf(self.authorizer.authorize(attributes))


class StaticDecisionTests(AuthorizerTestsMixin, SynchronousTestCase):
    def test_interface(self):
        verifyObject(IAuthorizer, self.authorizer)
        verifyObject(IKubernetesClient, HeldClient(self.kube))

    def test_mastersAllowedWithoutReview(self):
        aggregator = UserInfo(name="system:kube-aggregator", groups=(MASTERS, AUTHENTICATED))
        self.answer = {"allowed": False}
        self.assertTrue(self.authorize(solverPost(aggregator)).allowed)
        self.assertTrue(self.authorize(get("/apis", aggregator)).allowed)
        self.assertEqual(self.sarCalls(), 0)

    def test_healthPathsAllowedForAnyone(self):
        self.answer = {"allowed": False}
        for path in ("/healthz", "/livez", "/readyz"):
            self.assertTrue(self.authorize(get(path, ANONYMOUS_USER)).allowed, path)
        self.assertEqual(self.sarCalls(), 0)

    def test_lookalikePathsAreReviewed(self):
        self.answer = {"allowed": False}
        for path in ("/healthzz", "/readyz-extra", "/apis/healthz", "/readyz/ping", "/livez/log"):
            self.assertFalse(self.authorize(get(path, ANONYMOUS_USER)).allowed, path)
        self.assertEqual(self.sarCalls(), 5)


class ReviewTests(AuthorizerTestsMixin, SynchronousTestCase):
    def test_resourceReviewSpec(self):
        user = UserInfo(name="jane", groups=("devs", AUTHENTICATED), uid="u-1",
                        extra=(("scopes", ("a", "b")),))
        self.authorize(solverPost(user))
        self.assertEqual(self.reviews, [{
            "user": "jane", "groups": ["devs", AUTHENTICATED], "uid": "u-1",
            "extra": {"scopes": ["a", "b"]},
            "resourceAttributes": {"verb": "create", "group": GROUP, "version": "v1alpha1",
                                   "resource": SOLVER}}])

    def test_nonResourceReviewSpec(self):
        self.authorize(get("/apis", ANONYMOUS_USER))
        self.assertEqual(self.reviews, [{
            "user": "system:anonymous", "groups": ["system:unauthenticated"],
            "nonResourceAttributes": {"path": "/apis", "verb": "get"}}])

    def test_allowed(self):
        decision = self.authorize(solverPost())
        self.assertEqual(decision, Decision(allowed=True, reason=self.answer["reason"]))

    def test_deniedCarriesKubernetesMessage(self):
        self.answer = {"allowed": False}
        decision = self.authorize(solverPost())
        self.assertFalse(decision.allowed)
        self.assertEqual(decision.error, "")
        self.assertEqual(decision.reason, authz.forbiddenMessage(solverPost()))

    def test_denialReasonAppended(self):
        self.answer = {"allowed": False, "denied": True, "reason": "no RBAC policy matched"}
        decision = self.authorize(get("/apis"))
        self.assertTrue(decision.reason.endswith(': no RBAC policy matched'), decision.reason)

    def test_noOpinionIsDenial(self):
        self.answer = {}
        self.assertFalse(self.authorize(get("/apis")).allowed)

    def test_allowedAndDeniedIsAnError(self):
        self.answer = {"allowed": True, "denied": True}
        decision = self.authorize(get("/apis"))
        self.assertFalse(decision.allowed)
        self.assertIn("both allowed and denied", decision.error)

    def test_apiErrorNeverAllows(self):
        self.kube.injectError(Unavailable("POST subjectaccessreviews: connection refused"),
                              verb="post")
        decision = self.authorize(solverPost())
        self.assertFalse(decision.allowed)
        self.assertIn("connection refused", decision.error)
        self.assertIn("system:serviceaccount:cert-manager:cert-manager", decision.error)

    def test_errorsAreNotCached(self):
        self.kube.injectError(503, verb="post")
        self.assertTrue(self.authorize(solverPost()).error)
        self.assertTrue(self.authorize(solverPost()).allowed)
        self.assertEqual(self.sarCalls(), 2)

    def test_invalidReviewRefusedByFakeIsAnError(self):
        """A review the API server rejects (422) is an error, not a decision."""
        nobody = UserInfo(name="", groups=())
        decision = self.authorize(get("/apis", nobody))
        self.assertFalse(decision.allowed)
        self.assertIn("is invalid", decision.error)


class CacheTests(AuthorizerTestsMixin, SynchronousTestCase):
    def test_allowCachedForTTL(self):
        self.authorize(solverPost())
        self.clock.advance(9.9)
        self.assertTrue(self.authorize(solverPost()).allowed)
        self.assertEqual(self.sarCalls(), 1)
        self.clock.advance(0.1)
        self.authorize(solverPost())
        self.assertEqual(self.sarCalls(), 2)

    def test_denyCachedForTTL(self):
        self.answer = {"allowed": False}
        self.authorize(solverPost())
        self.answer = {"allowed": True}
        self.assertFalse(self.authorize(solverPost()).allowed)
        self.clock.advance(10)
        self.assertTrue(self.authorize(solverPost()).allowed)
        self.assertEqual(self.sarCalls(), 2)

    def test_separateTTLs(self):
        self.authorizer = authz.DelegatingAuthorizer(self.kube, self.clock, allowTTL=30, denyTTL=2)
        self.answer = {"allowed": False}
        self.authorize(get("/apis"))
        self.clock.advance(2)
        self.authorize(get("/apis"))
        self.assertEqual(self.sarCalls(), 2)

    def test_keyIsTheWholeSpec(self):
        other = UserInfo(name=CERT_MANAGER.name, groups=CERT_MANAGER.groups,
                         extra=(("k", ("v",)),))
        for attributes in (solverPost(), solverPost(other), get("/apis"), get("/version"),
                           solverPost(), get("/apis")):
            self.authorize(attributes)
        self.assertEqual(self.sarCalls(), 4)

    def test_lastAnswerStandsInWhileTheAPIServerCannotBeAsked(self):
        """Found by bench/drills/apifaults.py: 10 s into an API server restart every
        cached Present was refused 503.  The last answer now stands in (and is cached
        again, so the dead API server is asked once per TTL, not per request)."""
        self.authorize(solverPost())
        self.clock.advance(10)
        self.kube.injectError(Unavailable("POST subjectaccessreviews: connection refused"),
                              verb="post")
        decision = self.authorize(solverPost())
        self.assertEqual((decision.allowed, decision.error), (True, ""))
        self.clock.advance(9)
        self.assertTrue(self.authorize(solverPost()).allowed)
        self.assertEqual(self.sarCalls(), 2)
        self.clock.advance(1)
        self.kube.injectError(defer.TimeoutError(), verb="post")
        self.assertTrue(self.authorize(solverPost()).allowed)
        self.assertEqual(self.sarCalls(), 3)

    def test_aDenialStandsInToo(self):
        self.answer = {"allowed": False}
        self.authorize(solverPost())
        self.clock.advance(10)
        self.kube.injectError(503, verb="post")
        decision = self.authorize(solverPost())
        self.assertEqual((decision.allowed, decision.error), (False, ""))

    def test_noAnswerOlderThanStaleTTLStandsIn(self):
        self.authorizer = authz.DelegatingAuthorizer(self.kube, self.clock, staleTTL=60)
        self.authorize(solverPost())
        self.clock.advance(60)
        self.kube.injectError(503, verb="post")
        decision = self.authorize(solverPost())
        self.assertFalse(decision.allowed)
        self.assertIn("SubjectAccessReview", decision.error)

    def test_aRefusedReviewIsNoReasonToUseTheLastAnswer(self):
        """Only an API server that cannot be asked: a 403 (the daemon may no longer
        create reviews) is an error like before."""
        self.authorize(solverPost())
        self.clock.advance(10)
        self.kube.injectError(403, verb="post")
        self.assertTrue(self.authorize(solverPost()).error)

    def test_hugeAttributesNotCached(self):
        path = "/" + "x" * authz.MAX_CACHED_ATTRIBUTES_SIZE
        self.authorize(get(path))
        self.authorize(get(path))
        self.assertEqual(self.sarCalls(), 2)


class SingleFlightAuthorizerTests(AuthorizerTestsMixin, SynchronousTestCase):
    def setUp(self):
        super().setUp()
        self.held = HeldClient(self.kube)
        self.authorizer = authz.DelegatingAuthorizer(self.held, self.clock, timeout=5)

    def test_concurrentIdenticalReviewsCollapse(self):
        pending = [self.authorizer.authorize(solverPost()) for _ in range(50)]
        self.assertEqual(len(self.held.held), 1)
        self.held.release()
        self.assertTrue(all(self.successResultOf(d).allowed for d in pending))
        self.assertEqual(self.sarCalls(), 1)

    def test_differentReviewsDoNotCollapse(self):
        self.authorizer.authorize(solverPost())
        self.authorizer.authorize(get("/apis"))
        self.assertEqual(len(self.held.held), 2)

    def test_timeoutIsAnErrorForEveryWaiter(self):
        pending = [self.authorizer.authorize(solverPost()) for _ in range(3)]
        self.clock.advance(5)
        for d in pending:
            decision = self.successResultOf(d)
            self.assertFalse(decision.allowed)
            self.assertIn("did not answer within 5s", decision.error)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneWaiterCancellingLeavesTheOthers(self):
        first = self.authorizer.authorize(solverPost())
        second = self.authorizer.authorize(solverPost())
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.held.release()
        self.assertTrue(self.successResultOf(second).allowed)


class RecordingTests(AuthorizerTestsMixin, SynchronousTestCase):
    def sample(self, decision, source):
        return metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_authorization_total", {"decision": decision, "source": source}) or 0

    def test_decisionsCounted(self):
        before = {k: self.sample(*k) for k in (("allow", "sar"), ("allow", "cache"),
                                               ("allow", "health"), ("deny", "sar"),
                                               ("error", "sar"))}
        self.authorize(solverPost())
        self.authorize(solverPost())
        self.authorize(get("/healthz"))
        self.answer = {"allowed": False}
        self.authorize(get("/apis"))
        self.kube.injectError(503, verb="post")
        self.authorize(get("/version"))
        for key in before:
            self.assertEqual(self.sample(*key), before[key] + 1, key)

    def test_denialLogged(self):
        self.answer = {"allowed": False}
        with capturedLogs() as events:
            self.authorize(get("/apis"))
        denials = [e for e in events if "request denied" in e.get("log_format", "")]
        self.assertEqual(len(denials), 1)
        event = denials[0]
        self.assertEqual(event["user"], CERT_MANAGER.name)
        self.assertEqual(event["groups"], list(CERT_MANAGER.groups))
        self.assertEqual((event["verb"], event["path"]), ("get", "/apis"))
        self.assertIn("cannot get path", event["reason"])


class ForbiddenMessageTests(SynchronousTestCase):
    def test_resourceWording(self):
        user = UserInfo(name="system:serviceaccount:x:y")
        self.assertEqual(
            authz.forbiddenMessage(solverPost(user)),
            'kibaship.dns.kibaship.com is forbidden: User "system:serviceaccount:x:y" cannot '
            'create resource "kibaship" in API group "dns.kibaship.com" at the cluster scope')

    def test_nonResourceWording(self):
        self.assertEqual(authz.forbiddenMessage(get("/apis", UserInfo(name="x"))),
                         'forbidden: User "x" cannot get path "/apis"')

    def test_reasonSuffix(self):
        self.assertEqual(
            authz.forbiddenMessage(get("/apis", UserInfo(name="x")), "no RBAC policy matched"),
            'forbidden: User "x" cannot get path "/apis": no RBAC policy matched')

    def test_namedResource(self):
        attributes = RequestAttributes(user=UserInfo(name="x"), verb="get", path="/p",
                                       resourceRequest=True, apiGroup="g", resource="r", name="n")
        self.assertEqual(authz.forbiddenMessage(attributes),
                         'r.g "n" is forbidden: User "x" cannot get resource "r" in API group '
                         '"g" at the cluster scope')

    def test_coreGroup(self):
        attributes = RequestAttributes(user=UserInfo(name="x"), verb="list", path="/p",
                                       resourceRequest=True, resource="pods")
        self.assertEqual(authz.forbiddenMessage(attributes),
                         'pods is forbidden: User "x" cannot list resource "pods" in API group "" '
                         'at the cluster scope')

    def test_quotingAndSanitizing(self):
        message = authz.forbiddenMessage(get('/a"<b>&\n', UserInfo(name='e"vil')))
        self.assertEqual(message,
                         'forbidden: User "e\\"vil" cannot get path "/a\\"&lt;b&gt;&amp;\\n"')

    def test_status(self):
        status = authz.forbiddenStatus(solverPost(UserInfo(name="x")), "why")
        self.assertEqual(status["code"], 403)
        self.assertEqual(status["reason"], "Forbidden")
        self.assertEqual(status["details"], {"group": GROUP, "kind": SOLVER})
        self.assertTrue(status["message"].endswith(": why"))


class CachePrimitiveTests(SynchronousTestCase):
    def test_expiry(self):
        clock = Clock()
        cache = ExpiringCache(clock)
        cache.set("k", 1, 5)
        cache.set("zero", 2, 0)
        self.assertEqual(cache.get("k"), 1)
        self.assertIs(cache.get("zero"), ExpiringCache.MISSING)
        clock.advance(5)
        self.assertIs(cache.get("k"), ExpiringCache.MISSING)
        self.assertEqual(len(cache), 0)

    def test_boundedLeastRecentlyUsedFirst(self):
        cache = ExpiringCache(Clock(), maxEntries=2)
        cache.set("a", 1, 10)
        cache.set("b", 2, 10)
        cache.get("a")
        cache.set("c", 3, 10)
        self.assertEqual((cache.get("a"), cache.get("c")), (1, 3))
        self.assertIs(cache.get("b"), ExpiringCache.MISSING)

    def test_singleFlightSharesFailures(self):
        flight = SharedCalls(cancelWhenAbandoned=False)
        shared = defer.Deferred()
        calls = []
        a = flight.call("k", lambda: calls.append(1) or shared)
        b = flight.call("k", lambda: calls.append(2) or shared)
        self.assertTrue(flight.inFlight("k"))
        shared.errback(ValueError("boom"))
        self.failureResultOf(a, ValueError)
        self.failureResultOf(b, ValueError)
        self.assertEqual(calls, [1])
        self.assertFalse(flight.inFlight("k"))

    def test_deadlineReportedAsTimeoutWhateverTheCancelledCallSays(self):
        clock = Clock()
        call = defer.Deferred(lambda d: d.errback(Unavailable("cannot reach: CancelledError")))
        withDeadline(call, 3, clock)
        clock.advance(2.9)
        self.assertNoResult(call)
        clock.advance(0.1)
        self.assertIn("within 3s", str(self.failureResultOf(call, defer.TimeoutError).value))

    def test_deadlineCancelledWhenAnswered(self):
        clock = Clock()
        call = withDeadline(defer.Deferred(), 3, clock)
        call.callback("ok")
        self.assertEqual(self.successResultOf(call), "ok")
        self.assertEqual(clock.getDelayedCalls(), [])
