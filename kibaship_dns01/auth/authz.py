"""Delegated authorization, as ``k8s.io/apiserver`` does it (SPEC §5).

The chain of a delegating aggregated API server: the ``system:masters`` group
is always allowed (the aggregator calls as ``system:kube-aggregator`` in it),
the health paths are always allowed (the kubelet probes without credentials),
and everything else is a ``SubjectAccessReview`` against the API server.

Reviews are cached by their whole spec (10 s allow, 10 s deny, like the Go
library's defaults) and identical concurrent reviews share one API call, so
a burst of cert-manager retries costs one review.  An API server that cannot
be asked (unreachable, 5xx, 429, no answer in time) yields a :class:`Decision`
with ``error`` set: refused (503), never cached, so the next request asks
again - unless the same review was answered less than ``staleTTL`` ago: that
answer then stands in (and is cached again for its TTL), so cert-manager's
Presents keep working through an API server restart (found by
``bench/drills/apifaults.py``); a permission revoked meanwhile takes effect at
most ``staleTTL`` late.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from kibaship_dns01 import metrics
from kibaship_dns01.auth.cache import ExpiringCache, withDeadline
from kibaship_dns01.flight import SharedCalls
from kibaship_dns01.auth.types import MASTERS, Decision
from kibaship_dns01.interfaces import IAuthorizer
from kibaship_dns01.kube.errors import APITimeout, Unavailable, makeStatus

log = Logger()

SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")
DEFAULT_TTL = 10.0
DEFAULT_TIMEOUT = 10.0
#: how old an answer may be to stand in while the API server cannot be asked
DEFAULT_STALE_TTL = 300.0
# k8s.io/apiserver's webhook authorizer does not cache reviews whose
# caller-controlled attributes are this large: a cache-flooding guard.
MAX_CACHED_ATTRIBUTES_SIZE = 10000


def isHealthPath(path):
    """Exactly ``/healthz``, ``/livez`` or ``/readyz`` (as ``k8s.io/apiserver``'s
    always-allow paths): a sub-path added later must not escape authorization."""
    return path in HEALTH_PATHS


def _omitEmpty(d):
    return {k: v for k, v in d.items() if v}


def reviewSpec(attributes):
    """The ``SubjectAccessReviewSpec`` for ``attributes``, as the Go webhook builds it.

    Empty fields are omitted (Go's ``omitempty``) so the same question always
    serialises the same way, which makes it a sound cache key.
    """
    user = attributes.user
    spec = _omitEmpty({
        "user": user.name, "groups": list(user.groups), "uid": user.uid,
        "extra": {k: list(v) for k, v in user.extra},
    })
    if attributes.resourceRequest:
        spec["resourceAttributes"] = _omitEmpty({
            "verb": attributes.verb, "group": attributes.apiGroup,
            "version": attributes.apiVersion, "resource": attributes.resource,
            "name": attributes.name,
        })
    else:
        spec["nonResourceAttributes"] = {"path": attributes.path, "verb": attributes.verb}
    return spec


def _cacheable(attributes):
    size = sum(len(x) for x in (attributes.verb, attributes.apiGroup, attributes.apiVersion,
                                attributes.resource, attributes.name, attributes.path))
    return size < MAX_CACHED_ATTRIBUTES_SIZE


# --- the 403 wording ---------------------------------------------------------

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def goQuote(text):
    """Go's ``%q`` for the strings that appear in messages (``strconv.Quote``)."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append("\\x%02x" % ord(ch))
        elif ord(ch) < 0x10000:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append("\\U%08x" % ord(ch))
    return '"' + "".join(out) + '"'


def _sanitize(text):
    """``k8s.io/apiserver`` escapes what could read as HTML; quotes are fine."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _userCannot(attributes):
    user = goQuote(attributes.user.name)
    if not attributes.resourceRequest:
        return "User %s cannot %s path %s" % (user, attributes.verb, goQuote(attributes.path))
    return "User %s cannot %s resource %s in API group %s at the cluster scope" % (
        user, attributes.verb, goQuote(attributes.resource), goQuote(attributes.apiGroup))


def _qualifiedResource(attributes):
    """``schema.GroupResource.String()``: ``resource.group`` (empty for non-resource)."""
    if not attributes.resourceRequest:
        return ""
    if attributes.apiGroup:
        return "%s.%s" % (attributes.resource, attributes.apiGroup)
    return attributes.resource


def forbiddenMessage(attributes, reason=""):
    """The ``Status.message`` kube-apiserver writes for a denied request.

    ``responsewriters.Forbidden`` + ``apierrors.NewForbidden``: e.g.
    ``kibaship.dns.kibaship.com is forbidden: User "system:serviceaccount:x:y"
    cannot create resource "kibaship" in API group "dns.kibaship.com" at the
    cluster scope``, or ``forbidden: User "x" cannot get path "/apis"``; the
    reviewer's reason, when it gave one, follows after ``": "``.
    """
    message = _sanitize(_userCannot(attributes))
    if reason:
        message = "%s: %s" % (message, reason)
    qualified = _qualifiedResource(attributes)
    if not qualified:
        return "forbidden: " + message
    if not attributes.name:
        return "%s is forbidden: %s" % (qualified, message)
    return "%s %s is forbidden: %s" % (qualified, goQuote(attributes.name), message)


def forbiddenStatus(attributes, reason=""):
    """The whole 403 ``Status`` body, with the ``details`` kube-apiserver adds."""
    details = _omitEmpty({"name": attributes.name, "group": attributes.apiGroup,
                          "kind": attributes.resource if attributes.resourceRequest else ""})
    return makeStatus(403, "Forbidden", forbiddenMessage(attributes, reason), details or None)


# --- the authorizer ------------------------------------------------------------

def _decisionFromStatus(attributes, status):
    """Map a review's status like the Go webhook authorizer.

    Allowed wins; denied or no opinion is a denial whose ``reason`` is the
    full 403 message, so the HTTP layer can answer with it unchanged.
    """
    status = status if isinstance(status, dict) else {}
    allowed, denied = bool(status.get("allowed")), bool(status.get("denied"))
    reason = status.get("reason") or ""
    if allowed and denied:
        return Decision(allowed=False, reason=forbiddenMessage(attributes, reason),
                        error="the SubjectAccessReview answered both allowed and denied")
    if allowed:
        return Decision(allowed=True, reason=reason)
    return Decision(allowed=False, reason=forbiddenMessage(attributes, reason))


@implementer(IAuthorizer)
class DelegatingAuthorizer:
    """:class:`IAuthorizer` delegating to ``SubjectAccessReview``.

    :param client: an ``IKubernetesClient``.
    :param clock: ``IReactorTime`` for the cache and the review timeout.
    """

    def __init__(self, client, clock, allowTTL=DEFAULT_TTL, denyTTL=DEFAULT_TTL,
                 timeout=DEFAULT_TIMEOUT, maxEntries=8192, staleTTL=DEFAULT_STALE_TTL):
        self._client = client
        self._clock = clock
        self._allowTTL = allowTTL
        self._denyTTL = denyTTL
        self._timeout = timeout
        self._staleTTL = staleTTL
        self._cache = ExpiringCache(clock, maxEntries)
        self._lastAnswers = ExpiringCache(clock, maxEntries)
        self._flight = SharedCalls(cancelWhenAbandoned=False)

    def authorize(self, attributes):
        if MASTERS in attributes.user.groups:
            return defer.succeed(self._record(attributes, Decision(allowed=True), "masters"))
        if not attributes.resourceRequest and isHealthPath(attributes.path):
            return defer.succeed(self._record(attributes, Decision(allowed=True), "health"))
        # the attributes are the question (frozen, hashable): equal attributes make the
        # same SubjectAccessReview, so they key the cache without serialising it
        key = attributes
        cached = self._cache.get(key)
        if cached is not ExpiringCache.MISSING:
            return defer.succeed(self._record(attributes, cached, "cache"))
        d = self._flight.call(key, lambda: self._review(attributes, reviewSpec(attributes), key))
        d.addCallback(lambda decision: self._record(attributes, decision, "sar"))
        return d

    def _review(self, attributes, spec, key):
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": spec}
        d = defer.maybeDeferred(self._client.post, SAR_PATH, body)
        withDeadline(d, self._timeout, self._clock)
        d.addCallback(lambda review: self._reviewed(attributes, key, review))
        d.addErrback(self._failed, attributes, key)
        return d

    def _ttl(self, decision):
        return self._allowTTL if decision.allowed else self._denyTTL

    def _reviewed(self, attributes, key, review):
        status = review.get("status") if isinstance(review, dict) else None
        decision = _decisionFromStatus(attributes, status)
        if isinstance(status, dict) and status.get("evaluationError"):
            log.warn("SubjectAccessReview for {user} reported an evaluation error: {error}",
                     user=attributes.user.name, error=status["evaluationError"])
        if not decision.error and _cacheable(attributes):
            self._cache.set(key, decision, self._ttl(decision))
            self._lastAnswers.set(key, decision, self._staleTTL)
        return decision

    def _failed(self, failure, attributes, key):
        last = self._lastAnswers.get(key)
        if last is not ExpiringCache.MISSING and failure.check(
                defer.TimeoutError, Unavailable, APITimeout):
            log.warn("SubjectAccessReview for {user} failed ({why}); its last answer (allowed="
                     "{allowed}), at most {stale:g}s old, stands in", user=attributes.user.name,
                     why=failure.getErrorMessage(), allowed=last.allowed, stale=self._staleTTL)
            self._cache.set(key, last, self._ttl(last))
            return last
        if failure.check(defer.TimeoutError):
            why = "the API server did not answer within %gs" % (self._timeout,)
        else:
            why = str(getattr(failure.value, "message", None) or failure.getErrorMessage())
        return Decision(allowed=False, error=(
            "authorization could not be checked: the SubjectAccessReview for user %s failed: %s"
            % (goQuote(attributes.user.name), why)))

    def _record(self, attributes, decision, source):
        kind = "error" if decision.error else ("allow" if decision.allowed else "deny")
        metrics.labelled(metrics.AUTHZ_DECISIONS, kind, source).inc()
        if not decision.allowed:
            log.info("request denied: user={user} groups={groups} verb={verb} path={path} "
                     "reason={reason}", user=attributes.user.name,
                     groups=list(attributes.user.groups), verb=attributes.verb,
                     path=attributes.path, reason=decision.error or decision.reason)
        return decision
