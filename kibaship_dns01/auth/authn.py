"""Delegated authentication, as ``k8s.io/apiserver`` does it (SPEC §5).

The chain, in order (``authenticatorfactory.DelegatingAuthenticatorConfig``):

1. front-proxy: a client certificate chaining to the request-header CA, for
   client auth, whose CN is in ``requestheader-allowed-names`` (when that is
   non-empty), makes the configured identity headers trusted;
2. client certificate chaining to ``client-ca-file``: user = CN, groups = O;
3. ``Authorization: Bearer``: a ``TokenReview``, cached briefly;
4. anonymous.

Like Go's union authenticator, the first method that yields a user wins and
the failures of the others are then irrelevant; if none yields a user but one
failed, the request is refused with every reason (401) -- a credential that
was presented and failed never falls back to anonymous.  The identity headers
are removed from every request: read only when the front-proxy certificate
verified, and never left behind for later code to trust by mistake.
"""
import hashlib
import hmac
import os

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from kibaship_dns01 import metrics
from kibaship_dns01.auth.authconfig import WHERE
from kibaship_dns01.auth.cache import ExpiringCache, withDeadline
from kibaship_dns01.auth.headers import IdentityHeaders, headerNames
from kibaship_dns01.flight import SharedCalls
from kibaship_dns01.auth.peer import PeerCertificates
from kibaship_dns01.auth.types import (
    ANONYMOUS, ANONYMOUS_USER, AUTHENTICATED, UNAUTHENTICATED, Unauthenticated, UserInfo)
from kibaship_dns01.auth.x509verify import (
    CertificateVerificationError, certificateIdentifier)
from kibaship_dns01.interfaces import IAuthenticator

log = Logger()

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
DEFAULT_TTL = 10.0
DEFAULT_TIMEOUT = 10.0


class Rejected(Exception):
    """One authenticator refused a credential that was presented."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


# --- headers -------------------------------------------------------------------

def _values(request, name):
    return [v.decode("utf-8", "replace")
            for v in request.requestHeaders.getRawHeaders(name.encode("latin-1"), [])]


def bearerToken(request):
    """The token of ``Authorization: Bearer <token>``, or ``None`` (Go's bearertoken)."""
    values = _values(request, "Authorization")
    auth = values[0].strip() if values else ""
    parts = auth.split(" ")
    if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    return parts[1]


def withAuthenticatedGroup(user):
    """``group.AuthenticatedGroupAdder``: add ``system:authenticated`` where due."""
    if user.name == ANONYMOUS or AUTHENTICATED in user.groups or UNAUTHENTICATED in user.groups:
        return user
    return UserInfo(name=user.name, groups=user.groups + (AUTHENTICATED,), extra=user.extra,
                    uid=user.uid)


# --- certificates ----------------------------------------------------------------

def _verify(verify, chain, roots, now, what):
    """``verify(chain, roots, now)``, its failure as :class:`Rejected` naming ``what``."""
    try:
        return verify(chain, roots, now)
    except CertificateVerificationError as e:
        raise Rejected("%s %s: %s" % (what, certificateIdentifier(chain[0]), e.message))


def frontProxyUser(headers, chain, config, now, verify):
    """The user the front proxy vouches for, or ``None`` when this method does not apply.

    :param headers: the request's :class:`~kibaship_dns01.auth.headers.IdentityHeaders`.
    :param verify: ``(chain, roots, now) -> VerifiedChain``, e.g. a per-connection memo
        (``now`` is handed to it as given).
    :raise Rejected: the certificate does not verify or its CN is not allowed.
    """
    if not chain or not config.requestHeaderCAs:
        return None
    verified = _verify(verify, chain, config.requestHeaderCAs, now,
                       "front-proxy client certificate")
    cn = verified.leafCommonName
    if config.allowedNames and cn not in config.allowedNames:
        raise Rejected("x509: subject with cn=%s is not in the allowed list (key "
                       "requestheader-allowed-names of %s)" % (cn, WHERE))
    name = headers.username()
    if not name:
        return None
    return UserInfo(name=name, groups=headers.groups(), extra=headers.extra(),
                    uid=headers.uid())


def clientCertificateUser(chain, config, now, verify):
    """User = CN, groups = O of a certificate chaining to ``client-ca-file``."""
    if not chain or not config.clientCAs:
        return None
    verified = _verify(verify, chain, config.clientCAs, now, "client certificate")
    cn = verified.leafCommonName
    if not cn:
        raise Rejected("client certificate %s has no common name, so it names no user"
                       % (certificateIdentifier(verified.leaf),))
    return UserInfo(name=cn, groups=verified.leafOrganizations)


# --- tokens ----------------------------------------------------------------------

class TokenReviewAuthenticator:
    """Bearer tokens checked by ``TokenReview``; answers cached, lookups collapsed.

    Both outcomes the API server gives are cached (10 s each by default, as
    the Go library's ``CacheTTL``) under an HMAC of the token with a per-process
    random key, so the cache never holds a token.  A failure to reach the API
    server is not cached: the next request asks again.
    """

    def __init__(self, client, clock, successTTL=DEFAULT_TTL, failureTTL=DEFAULT_TTL,
                 timeout=DEFAULT_TIMEOUT, maxEntries=8192):
        self._client = client
        self._clock = clock
        self._successTTL = successTTL
        self._failureTTL = failureTTL
        self._timeout = timeout
        self._key = os.urandom(32)
        self._cache = ExpiringCache(clock, maxEntries)
        self._flight = SharedCalls(cancelWhenAbandoned=False)

    def _hash(self, token):
        return hmac.new(self._key, token.encode("utf-8"), hashlib.sha256).digest()

    async def authenticate(self, token):
        """:return: :class:`UserInfo`; :raise Rejected: with the reason.

        Outcomes travel as a ``UserInfo`` or a message string (not an exception
        object) so a cached refusal can be re-raised fresh every time.
        """
        key = self._hash(token)
        outcome = self._cache.get(key)
        if outcome is ExpiringCache.MISSING:
            outcome = await self._flight.call(key, lambda: self._review(token, key))
        if isinstance(outcome, str):
            raise Rejected(outcome)
        return outcome

    def _review(self, token, key):
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token}}
        d = defer.maybeDeferred(self._client.post, TOKEN_REVIEW_PATH, body)
        withDeadline(d, self._timeout, self._clock)
        d.addCallbacks(self._reviewed, self._failed, callbackArgs=(key,))
        return d

    def _reviewed(self, review, key):
        status = (review.get("status") if isinstance(review, dict) else None) or {}
        user = status.get("user") or {}
        if status.get("authenticated") and user.get("username"):
            extra = tuple(sorted((k, tuple(v)) for k, v in (user.get("extra") or {}).items()))
            outcome = UserInfo(name=user["username"], groups=tuple(user.get("groups") or ()),
                               extra=extra, uid=user.get("uid") or "")
            self._cache.set(key, outcome, self._successTTL)
        else:
            reason = status.get("error") or "the API server did not authenticate it"
            outcome = "invalid bearer token: %s" % (reason,)
            self._cache.set(key, outcome, self._failureTTL)
        return outcome

    def _failed(self, failure):
        if failure.check(defer.TimeoutError):
            why = "the API server did not answer within %gs" % (self._timeout,)
        else:
            why = str(getattr(failure.value, "message", None) or failure.getErrorMessage())
        return "bearer token could not be verified: the TokenReview failed: %s" % (why,)


# --- the chain -------------------------------------------------------------------

@implementer(IAuthenticator)
class DelegatingAuthenticator:
    """:class:`IAuthenticator`: front proxy, client certificate, token, anonymous.

    :param configSource: ``() -> AuthenticationConfig | None`` (the watcher's current).
    :param tokens: a :class:`TokenReviewAuthenticator`.
    :param clock: ``IReactorTime``: certificate validity is judged at its time.
    :param peers: :class:`~kibaship_dns01.auth.peer.PeerCertificates`, which reads
        and verifies a client chain once per TLS connection (tests may substitute).
    """

    def __init__(self, configSource, tokens, clock, peers=None):
        self._configSource = configSource
        self._tokens = tokens
        self._clock = clock
        self._peers = peers if peers is not None else PeerCertificates()

    def authenticate(self, request):
        return defer.ensureDeferred(self._authenticate(request))

    async def _authenticate(self, request):
        config = self._configSource()
        headers = IdentityHeaders(request, headerNames(config))
        try:
            method, user, failures = await self._firstUser(request, headers, config)
        finally:
            headers.strip(request)
        if user is not None:
            metrics.labelled(metrics.AUTHN_DECISIONS, method, "success").inc()
            return user if method == "anonymous" else withAuthenticatedGroup(user)
        metrics.labelled(metrics.AUTHN_DECISIONS, failures[0][0], "failure").inc()
        message = "; ".join(m for _, m in failures)
        log.info("authentication failed: {reason}", reason=message)
        raise Unauthenticated(message)

    async def _firstUser(self, request, headers, config):
        """``(method, user, failures)``: the first method yielding a user wins."""
        failures = []
        chain = self._peers.chain(request)
        if chain:
            for method, attempt in self._certificateMethods(request, headers, chain, config):
                try:
                    user = attempt()
                except Rejected as e:
                    failures.append((method, e.message))
                    continue
                if user is not None:
                    return method, user, failures
        token = bearerToken(request)
        if token is not None:
            try:
                user = await self._tokens.authenticate(token)
            except Rejected as e:
                failures.append(("token", e.message))
            else:
                request.requestHeaders.removeHeader(b"authorization")
                return "token", user, failures
        if failures:
            return None, None, failures
        return "anonymous", ANONYMOUS_USER, failures

    def _certificateMethods(self, request, headers, chain, config):
        if config is None:
            return [("client_cert", lambda: _raise(
                "a client certificate was presented but cannot be verified yet: "
                "%s has not been loaded" % (WHERE,)))]
        if not config.requestHeaderCAs and not config.clientCAs:
            return [("client_cert", lambda: _raise(
                "a client certificate was presented but %s names no CA to verify it "
                "(keys requestheader-client-ca-file and client-ca-file are empty)" % (WHERE,)))]
        now = self._clock.seconds()  # a datetime is made only if a chain must be verified

        def verify(chain, roots, now):
            return self._peers.verify(request, roots, now)
        return [("front_proxy", lambda: frontProxyUser(headers, chain, config, now, verify)),
                ("client_cert", lambda: clientCertificateUser(chain, config, now, verify))]


def _raise(message):
    raise Rejected(message)
