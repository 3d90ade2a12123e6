"""The HTTP side of the aggregated API: one request, one direction of flow.

authenticate -> authorize -> route -> (solver POST: limit, decode, solve,
encode) -> respond.  Routing happens after authorization, as in
``k8s.io/apiserver``, so an unauthenticated caller learns nothing about paths.
Every error is a Kubernetes ``Status`` (SPEC §4).
"""
import io
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from kibaship_dns01 import metrics
from kibaship_dns01.api import discovery
from kibaship_dns01.api.channel import (
    DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, GuardedHTTPChannel)
from kibaship_dns01.api.health import PING, HealthEndpoint
from kibaship_dns01.api.lifecycle import SHUTTING_DOWN, Lifecycle
from kibaship_dns01.api.payload import BadPayload, decodeChallengeRequest, responseBody
from kibaship_dns01.api.status import writeBody, writeJSON, writeStatus
from kibaship_dns01.auth.authz import isHealthPath
from kibaship_dns01.auth.types import ANONYMOUS_USER, RequestAttributes, Unauthenticated
from kibaship_dns01.challenge import PRESENT, SolverError

log = Logger()

DEFAULT_MAX_BODY = 1024 * 1024
SOLVER_TIMEOUT = 50.0  # cert-manager gives up after 60 s


class BoundedRequest(server.Request):
    """A request that stops buffering its body past the site's limit.

    Twisted reads the whole body before ``render``; without this a client
    could make us buffer any amount.  Bytes past the limit are discarded and
    the request is answered 413 without parsing (a body *announced* over the
    limit is answered at once by the channel: see :mod:`~kibaship_dns01.api.channel`).

    The body is always buffered in memory: Twisted's default puts chunked
    bodies and bodies of 100,000 bytes or more in a temporary file, and in the
    Deployment ``/tmp`` is a 16 MiB ``emptyDir`` (the root is read-only), so a
    few unauthenticated clients sending large bodies slowly would fill it and
    get the pod evicted (found by issue 12's slow-clients drill).  In memory it
    is bounded by ``maxBodyBytes`` per connection.
    """

    tooLarge = False
    user = None

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.started = time.monotonic()

    def gotLength(self, length):
        # replaces Twisted's, whose only job is choosing BytesIO or a temporary file
        if length is not None and length > self.channel.site.maxBodyBytes:
            self.tooLarge = True
        self.content = io.BytesIO()

    def handleContentChunk(self, data):
        if self.tooLarge:
            return
        if self.content.tell() + len(data) > self.channel.site.maxBodyBytes:
            self.tooLarge = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


def _isJSON(request):
    """Whether the body is to be read as JSON, as k8s.io/apiserver decides it
    (``NegotiateInputSerializerForMediaType``): an empty or missing Content-Type is the
    first media type the server supports, JSON (``kubectl create --raw`` sends none);
    any other type must be ``application/json``, parameters aside."""
    ctype = (request.getHeader(b"content-type") or b"").strip()
    return not ctype or ctype.split(b";")[0].strip().lower() == b"application/json"


class APIResource(Resource):
    """The single leaf resource routing every path of the aggregated API."""

    isLeaf = True

    def __init__(self, api, solver, authenticator=None, authorizer=None, readiness=(),
                 clock=None, solverTimeout=SOLVER_TIMEOUT, lifecycle=None):
        super().__init__()
        self.api = api
        self.solver = solver
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle(clock)
        self.readiness = list(readiness)
        if self.lifecycle not in self.readiness:
            self.readiness.append(self.lifecycle)  # /readyz fails once shutdown begins
        self._clock = clock
        self._solverTimeout = solverTimeout
        # liveness (and /healthz, the Deployment's liveness probe) never waits for caches:
        # a pod restarted because the API server is slow would not load them faster
        health = [HealthEndpoint(name, checks) for name, checks in (
            ("healthz", [PING]), ("livez", [PING]), ("readyz", [PING, *self.readiness]))]
        self._gets = {
            **{f"/{endpoint.name}": endpoint.render for endpoint in health},
            **{path: render for endpoint in health for path, render in endpoint.subPaths().items()},
            "/version": lambda r: writeJSON(r, 200, discovery.versionInfo()),
            "/apis": lambda r: writeJSON(r, 200, discovery.apiGroupList(api)),
            f"/apis/{api.group}": lambda r: writeJSON(r, 200, discovery.apiGroupDocument(api)),
            api.versionPath: lambda r: writeJSON(r, 200, discovery.apiResourceList(api)),
            "/openapi/v2": lambda r: writeJSON(r, 200, discovery.openAPIv2()),
            "/openapi/v3": lambda r: writeJSON(r, 200, discovery.openAPIv3Discovery(api)),
            f"/openapi/v3{api.versionPath}": lambda r: writeJSON(
                r, 200, discovery.openAPIv3Document()),
        }

    # -- entry ------------------------------------------------------------
    def render(self, request):
        # the solver's deadline counts from here: authentication and authorization
        # (TokenReview, SubjectAccessReview) spend the same 60 s cert-manager gives us
        request.deadline = (self._clock.seconds() + self._solverTimeout
                            if self._clock is not None else None)
        self.lifecycle.requestStarted(request)
        if self.lifecycle.stopping:
            # answer, but send kept-alive clients to another replica for the next one
            request.setHeader(b"connection", b"close")
            request.channel.persistent = False
        d = defer.ensureDeferred(self._handle(request))
        d.addErrback(self._internalError, request)
        d.addCallback(self._finish, request)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return server.NOT_DONE_YET

    def _finish(self, body, request):
        if body is not None and not request.finished and not request._disconnected:
            # a known length spares the client (and us) chunked framing
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

    def _internalError(self, failure, request):
        if failure.check(defer.CancelledError):
            return None
        log.failure("unhandled error serving {path}", failure, path=_path(request))
        return writeStatus(request, 500, "internal error; see the kibaship-dns01 logs")

    async def _handle(self, request):
        path = _path(request)
        try:
            user = await self._authenticate(request)
        except Unauthenticated as e:
            return writeStatus(request, 401, e.message)
        request.user = user
        refusal = await self._authorize(request, path, user)
        if refusal is not None:
            return refusal
        return await self._route(request, path)

    # -- authn / authz ----------------------------------------------------
    async def _authenticate(self, request):
        if self.authenticator is None:
            return ANONYMOUS_USER
        return await self.authenticator.authenticate(request)

    def _attributes(self, request, path, user):
        method = request.method.decode("ascii", "replace")
        if method == "POST" and path == self.api.solverPath:
            return RequestAttributes(user=user, verb="create", path=path, resourceRequest=True,
                                     apiGroup=self.api.group, apiVersion=discovery.VERSION,
                                     resource=self.api.solver)
        verb = "get" if method in ("GET", "HEAD") else method.lower()
        return RequestAttributes(user=user, verb=verb, path=path)

    async def _authorize(self, request, path, user):
        if self.authorizer is None:
            return None
        attributes = self._attributes(request, path, user)
        decision = await self.authorizer.authorize(attributes)
        if decision.allowed:
            return None
        if decision.error:
            return writeStatus(request, 503, decision.error, reason="InternalError")
        return writeStatus(request, 403, decision.reason, reason="Forbidden")

    # -- routing ----------------------------------------------------------
    async def _route(self, request, path):
        method = request.method
        if path == self.api.solverPath:
            if method != b"POST":
                return self._notAllowed(request, path, b"POST")
            return await self._solve(request)
        handler = self._gets.get(path)
        if handler is None:
            return writeStatus(request, 404, f"the server could not find the requested resource "
                               f"({method.decode('ascii', 'replace')} {path})")
        if method not in (b"GET", b"HEAD"):
            return self._notAllowed(request, path, b"GET, HEAD")
        return handler(request)

    def _notAllowed(self, request, path, allow):
        request.setHeader(b"allow", allow)
        return writeStatus(request, 405, f"{request.method.decode('ascii', 'replace')} is not "
                           f"allowed on {path}; use {allow.decode()}")

    # -- the solver POST --------------------------------------------------
    async def _solve(self, request):
        if request.tooLarge:
            limit = request.channel.site.maxBodyBytes
            return writeStatus(request, 413, f"request body is larger than the limit of "
                               f"{limit} bytes; a ChallengePayload is a few kilobytes")
        if not _isJSON(request):
            got = (request.getHeader(b"content-type") or b"none").decode("latin-1")
            return writeStatus(request, 415, f"Content-Type must be application/json, not {got}")
        try:
            challenge = decodeChallengeRequest(request.content.read())
        except BadPayload as e:
            return writeStatus(request, 400, str(e))
        message = await self._runSolver(challenge, request.deadline)
        return writeBody(request, 201, responseBody(challenge, message))

    async def _runSolver(self, challenge, deadline):
        """Run the solver; ``None`` on success, else the message for cert-manager."""
        call = self.solver.present if challenge.action == PRESENT else self.solver.cleanUp
        d = defer.maybeDeferred(call, challenge)
        try:
            await self.lifecycle.solving(d, deadline)
        except SolverError as e:
            return e.message
        except defer.CancelledError:
            if self.lifecycle.expired(d):
                return (f"{challenge.action} for {challenge.resolvedFQDN} did not finish "
                        f"within {self._solverTimeout:g}s; cert-manager will retry")
            if not self.lifecycle.stopping:
                raise  # the client went away: nobody to answer
            return SHUTTING_DOWN.format(action=challenge.action)
        except Exception as e:
            log.failure("solver failed for {fqdn}", fqdn=challenge.resolvedFQDN)
            return (f"internal error in kibaship-dns01 while handling {challenge.action} for "
                    f"{challenge.resolvedFQDN} ({type(e).__name__}); see its logs")
        return None


def _path(request):
    return request.path.decode("utf-8", "replace")


class APISite(server.Site):
    """A ``Site`` with bounded bodies, read deadlines (:mod:`~kibaship_dns01.api.channel`)
    and one structured log line per request.

    HTTP/1.1 only: the channel is not wrapped for HTTP/2 negotiation (Twisted's h2
    support is an optional extra this daemon does not install).
    """

    protocol = GuardedHTTPChannel
    requestFactory = BoundedRequest
    noisy = False

    def __init__(self, resource, maxBodyBytes=DEFAULT_MAX_BODY,
                 headerTimeout=DEFAULT_HEADER_TIMEOUT, bodyTimeout=DEFAULT_BODY_TIMEOUT,
                 idleTimeout=DEFAULT_IDLE_TIMEOUT, logSuccesses=True, **kw):
        # no form parsing: it parses every POST's Content-Type through the email
        # package only to find that a ChallengePayload is not a form
        super().__init__(resource, parsePOSTFormSubmission=False, timeout=idleTimeout, **kw)
        self.maxBodyBytes = maxBodyBytes
        #: whether answers below 400 are logged (at debug) at all; the daemon passes
        #: ``--log-level debug``, since the observer would drop them anyway and making
        #: the event is a measurable part of a retry's CPU
        self.logSuccesses = logSuccesses
        self.headerTimeout = headerTimeout
        self.bodyTimeout = bodyTimeout

    def log(self, request):
        """One ``http_request`` line per request: at info for refusals and errors (who was
        refused what matters to an operator), at debug otherwise, as kube-apiserver logs
        requests only at higher verbosity; every Present/CleanUp already has its
        ``challenge_decision`` line, and a second line per request would double the
        logging cost of the busiest path."""
        metrics.labelled(metrics.HTTP_REQUESTS, _route(request), str(request.code)).inc()
        if request.code < 400 and not self.logSuccesses:
            return
        user = request.user.name if getattr(request, "user", None) else None
        duration = time.monotonic() - request.started
        emit = log.info if request.code >= 400 else log.debug
        emit("{method} {path} {code} {duration_ms}ms user={user}",
                 method=request.method.decode("ascii", "replace"), path=_path(request),
                 code=request.code, user=user, duration_ms=round(duration * 1000, 1),
                 client=request.getClientAddress().host if request.getClientAddress() else None,
                 log_kind="http_request")


def _route(request):
    path = _path(request)
    if isHealthPath(path):
        return path[1:]
    if path.startswith("/apis"):
        return "solver" if request.method == b"POST" else "discovery"
    return "other"
