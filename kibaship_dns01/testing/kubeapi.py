"""A stand-in Kubernetes API server: real TLS, real JSON shapes, a real port.

No kube-apiserver can run on the test machines, so the client, the caches and
the auth delegation are tested against this: it serves a
:class:`~kibaship_dns01.testing.kubestore.KubeStore` over HTTPS with its own
CA, bearer-token (and client-certificate) authentication, the API's List /
Status / watch-event shapes, SubjectAccessReview and TokenReview endpoints
whose answers tests program, and failure modes for timeout, reconnect and
fault drills: ``hang`` (never answer), :meth:`~StandInAPIServer.stop` /
:meth:`~StandInAPIServer.start` (down, then up again on the same port with
the same store, as an API server restart), ``latency`` (every answer comes
that many seconds late) and the store's ``injectError`` (5xx, or 429 with
``Retry-After``).

Run it as a process for a local end-to-end run::

    python -m kibaship_dns01.testing.kubeapi --kubeconfig-out /tmp/kubeconfig \\
        --fixtures ./fixtures --port 6443

It writes the kubeconfig, prints one JSON line (url, kubeconfig, token) and
serves until interrupted; objects can be added at run time with
``POST``/``PUT``/``DELETE`` on the collection / object paths.
"""
import argparse
import json
import os
import secrets
import sys

import yaml
from cryptography.x509.oid import NameOID
from twisted.internet import defer, ssl, task
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from kibaship_dns01.kube.config import KubeConfig, StaticToken
from kibaship_dns01.kube.errors import KubeError, makeStatus
from kibaship_dns01.pem import certificateOptions
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.kubestore import KubeStore

DEFAULT_USER = "system:serviceaccount:kibaship-dns01:kibaship-dns01"
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _unauthorized():
    return makeStatus(401, "Unauthorized", "Unauthorized")


def _forbiddenStatus(user, verb, resource, namespace, name):
    qualified = "%s.%s" % (resource.plural, resource.group) if resource.group else resource.plural
    subject = '%s "%s"' % (qualified, name) if name else qualified
    scope = 'in the namespace "%s"' % namespace if namespace else "at the cluster scope"
    message = ('%s is forbidden: User "%s" cannot %s resource "%s" in API group "%s" %s'
               % (subject, user, verb, resource.plural, resource.group, scope))
    details = {"group": resource.group, "kind": resource.plural}
    if name:
        details["name"] = name
    return makeStatus(403, "Forbidden", message, details)


class _APIResource(Resource):
    """Every request: authenticate, authorize, then serve from the store."""

    isLeaf = True

    def __init__(self, server):
        super().__init__()
        self._server = server

    def render(self, request):
        server = self._server
        server.requestCount += 1
        if server.hang:
            server.hungRequests.append(request)
            return NOT_DONE_YET
        if server.latency > 0:
            call = server.reactor.callLater(server.latency, self._answerLate, request)
            request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
            return NOT_DONE_YET
        return self._answer(request)

    def _answerLate(self, request):
        """A slow API server: the whole answer (a watch: its start) comes late."""
        if request._disconnected:
            return
        body = self._answer(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _answer(self, request):
        server = self._server
        request.setHeader(b"content-type", b"application/json")
        user = server._authenticate(request)
        if user is None:
            return self._status(request, _unauthorized())
        path = request.path.decode("utf-8", "replace")
        params = {k.decode(): v[0].decode() for k, v in request.args.items()}
        try:
            return self._dispatch(request, user, path, params)
        except KubeError as e:
            return self._status(request, e.status or makeStatus(e.code or 500, e.reason or "InternalError",
                                                                e.message))

    def _status(self, request, status):
        request.setResponseCode(status["code"])
        retryAfter = (status.get("details") or {}).get("retryAfterSeconds")
        if retryAfter:  # as kube-apiserver's max-in-flight and priority-and-fairness filters
            request.setHeader(b"retry-after", b"%d" % (retryAfter,))
        return _dumps(status)

    def _dispatch(self, request, user, path, params):
        method = request.method.decode()
        if path in ("/version", "/healthz", "/livez", "/readyz"):
            return b"ok" if path != "/version" else _dumps({"major": "1", "minor": "31",
                                                            "gitVersion": "v1.31.0-standin"})
        store = self._server.store
        if method == "POST" and path in (self._server.reviewPaths):
            request.setResponseCode(201)
            return _dumps(store.postPath(path, self._body(request)))
        if path.endswith("/status") and method == "PUT":
            return self._putStatus(user, path[:-len("/status")], self._body(request))
        resource, namespace, name = store.parsePath(path)
        watching = method == "GET" and params.get("watch") in ("1", "true")
        verb = self._verb(method, name, watching)
        self._server._authorize(user, verb, resource, namespace, name)
        if watching:
            return self._watch(request, path, params)
        return self._crud(request, method, path, params, name)

    def _putStatus(self, user, path, body):
        """``PUT <object>/status``: replace the status only (the status subresource)."""
        store = self._server.store
        resource, namespace, name = store.parsePath(path)
        if name is None:
            raise KubeError("the status subresource needs an object path", code=404,
                            reason="NotFound", status=makeStatus(404, "NotFound", path))
        self._server._authorize(user, "update", resource, namespace, name)
        return _dumps(store.updateStatus(resource.apiVersion, resource.kind, namespace, name,
                                         (body or {}).get("status") or {}, manager=user))

    @staticmethod
    def _verb(method, name, watching):
        if watching:
            return "watch"
        if method == "GET":
            return "get" if name else "list"
        return _VERBS.get(method, method.lower())

    def _crud(self, request, method, path, params, name):
        store = self._server.store
        if method == "GET":
            return _dumps(store.getPath(path, params) if name else store.listPath(
                path, params, copies=False))
        if method == "POST" and name is None:
            request.setResponseCode(201)
            return _dumps(store.postPath(path, self._body(request)))
        if method == "PUT" and name is not None:
            store.parsePath(path)
            return _dumps(store.update(self._body(request)))
        if method == "DELETE" and name is not None:
            obj = store.getPath(path)
            return _dumps(store.delete(obj))
        request.setResponseCode(405)
        return _dumps(makeStatus(405, "MethodNotAllowed",
                                 "the server does not allow this method on the requested resource"))

    @staticmethod
    def _body(request):
        try:
            return json.loads(request.content.read() or b"{}")
        except ValueError as e:
            raise KubeError("invalid JSON body: %s" % e, code=400, reason="BadRequest",
                            status=makeStatus(400, "BadRequest", "invalid JSON body: %s" % e))

    def _watch(self, request, path, params):
        """Stream events as JSON lines until the store, the timeout or the client ends it."""
        server = self._server
        state = {"timer": None, "watch": None}

        def onEvent(type_, obj):
            line = _dumps({"type": type_, "object": obj})
            if server.holdingWatchEvents:
                server.heldWatchEvents.append((request, line))
            elif not request.finished and not request._disconnected:
                request.write(line)

        def onEnd():
            if state["timer"] is not None and state["timer"].active():
                state["timer"].cancel()
            if not request.finished and not request._disconnected:
                request.finish()

        request.setResponseCode(200)
        state["watch"] = server.store.watchPath(path, params, onEvent, onEnd, stream=True)
        if not request.finished:
            request.write(b"")  # like kube-apiserver: headers go out when the watch starts
        if state["watch"].initial is not None:
            _InitialEvents(request, state["watch"]).start()
        if state["watch"].active:
            timeout = float(params.get("timeoutSeconds") or server.defaultWatchTimeout)
            state["timer"] = server.reactor.callLater(timeout, state["watch"].end)
            request.notifyFinish().addErrback(lambda _: self._clientGone(state))
        return NOT_DONE_YET

    @staticmethod
    def _clientGone(state):
        state["watch"].stop()
        if state["timer"] is not None and state["timer"].active():
            state["timer"].cancel()


@implementer(IPushProducer)
class _InitialEvents:
    """Writes a WatchList's initial events as the client reads them: a few per
    reactor turn, paused while the connection's send buffer is full, as
    kube-apiserver streams them (100,000 objects written at once would hold
    this process's reactor for seconds and buffer them all in memory)."""

    BATCH = 50

    def __init__(self, request, watch):
        self._request, self._watch = request, watch
        self._task = None

    def start(self):
        self._request.registerProducer(self, True)
        self._task = task.cooperate(self._batches())
        self._task.whenDone().addBoth(self._done)

    def _batches(self):
        while not self._watch.drainInitial(self.BATCH):
            yield None

    def _done(self, _):
        if not self._request.finished and not self._request._disconnected:
            self._request.unregisterProducer()

    def _tell(self, what):
        try:
            what()
        except (task.TaskDone, task.TaskStopped, task.TaskFailed, task.NotPaused):
            pass  # already finished (or stopped): nothing left to pace

    def pauseProducing(self):
        self._tell(self._task.pause)

    def resumeProducing(self):
        self._tell(self._task.resume)

    def stopProducing(self):
        self._tell(self._task.stop)


class _QuietSite(Site):
    noisy = False

    def log(self, request):
        """No access log: tests make many requests."""


class _TrackingFactory(WrappingFactory):
    """Remembers every connection so stop() can abort them and wait until closed."""

    noisy = False

    def __init__(self, wrapped, server):
        super().__init__(wrapped)
        self._server = server
        self._lost = {}

    def registerProtocol(self, p):
        super().registerProtocol(p)
        self._server.connectionsMade += 1
        self._lost[p] = defer.Deferred()

    def unregisterProtocol(self, p):
        super().unregisterProtocol(p)
        lost = self._lost.pop(p, None)
        if lost is not None:
            lost.callback(None)

    def abortAll(self):
        """Abort every open connection; the Deferred fires when all are gone."""
        waits = list(self._lost.values())
        for p in list(self.protocols):
            p.transport.abortConnection()
        return defer.gatherResults(waits)


class StandInAPIServer:
    """The stand-in API server.

    :param store: the :class:`KubeStore` to serve (a fresh one by default).
    :param reactor: the reactor to listen on.
    :param port: TCP port on 127.0.0.1 (0: any free port).
    :param token: the initial accepted bearer token (random by default).
    :param user: the user that token authenticates as.
    """

    reviewPaths = ("/apis/authorization.k8s.io/v1/subjectaccessreviews",
                   "/apis/authentication.k8s.io/v1/tokenreviews")

    def __init__(self, store=None, reactor=None, port=0, token=None, user=DEFAULT_USER,
                 defaultWatchTimeout=1800):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.store = store if store is not None else KubeStore()
        self.ca = pki.makeCA("stand-in-kube-apiserver-ca")
        self._serving = pki.serverPair(self.ca, ("localhost", "127.0.0.1"))
        self.token = token or secrets.token_urlsafe(24)
        self._tokens = {self.token: user}
        self._authorizer = None
        self.hang = False
        self.hungRequests = []
        #: seconds every answer is held back (0: none); a watch starts that late,
        #: then streams its events without delay, as a slow API server does
        self.latency = 0.0
        self.holdingWatchEvents = False
        self.heldWatchEvents = []
        self.requestCount = 0
        self.connectionsMade = 0
        self.defaultWatchTimeout = defaultWatchTimeout
        self._wantedPort = port
        self._listening = None
        self._factory = None

    # --- lifecycle ----------------------------------------------------------

    def _contextFactory(self):
        return ssl.CertificateOptions(
            **certificateOptions(self._serving.certPEM, self._serving.keyPEM),
            verify=True, requireCertificate=False,
            caCerts=[ssl.Certificate.loadPEM(self.ca.certPEM).original])

    def start(self):
        """Listen (again, on the same port after :meth:`down`). :return: Deferred."""
        self._factory = _TrackingFactory(_QuietSite(_APIResource(self)), self)
        self._listening = self.reactor.listenSSL(self._wantedPort, self._factory,
                                                 self._contextFactory(), interface="127.0.0.1")
        self._wantedPort = self._listening.getHost().port
        return defer.succeed(self)

    up = start

    def stop(self):
        """Stop listening and close every connection. :return: Deferred."""
        listening, self._listening = self._listening, None
        self.hungRequests = []
        waits = [defer.maybeDeferred(listening.stopListening)] if listening else []
        if self._factory is not None:
            waits.append(self._factory.abortAll())
        return defer.gatherResults(waits).addCallback(lambda _: None)

    down = stop

    @property
    def port(self):
        return self._wantedPort

    @property
    def url(self):
        return "https://127.0.0.1:%d" % (self._wantedPort,)

    @property
    def caPEM(self):
        return self.ca.certPEM

    @property
    def connectionCount(self):
        return len(self._factory.protocols) if self._factory is not None else 0

    # --- watch delivery control -------------------------------------------

    def holdWatchEvents(self):
        """Keep watch events back (each watch stays open, silent) until
        :meth:`releaseWatchEvents`: a deterministic "the watch has not
        delivered this object yet", for cache-miss paths."""
        self.holdingWatchEvents = True

    def releaseWatchEvents(self):
        """Deliver the held events in order to the watches still open; :return: how many."""
        self.holdingWatchEvents = False
        held, self.heldWatchEvents = self.heldWatchEvents, []
        delivered = 0
        for request, line in held:
            if not request.finished and not request._disconnected:
                request.write(line)
                delivered += 1
        return delivered

    # --- authentication / authorization -----------------------------------

    def addToken(self, token, user=DEFAULT_USER):
        """Accept another bearer token (as ``user``)."""
        self._tokens[token] = user

    def removeToken(self, token):
        self._tokens.pop(token, None)

    def rotateToken(self, user=DEFAULT_USER):
        """Replace every accepted token by a fresh one; returns it."""
        self._tokens = {}
        self.token = secrets.token_urlsafe(24)
        self.addToken(self.token, user)
        return self.token

    def issueClientCertificate(self, cn, orgs=()):
        """A client :class:`~kibaship_dns01.testing.pki.KeyPair` the server accepts."""
        return pki.clientPair(self.ca, cn, orgs)

    def setAuthorizer(self, fn):
        """``fn(user, verb, resource, namespace, name) -> bool``; False answers a real 403."""
        self._authorizer = fn

    def _authenticate(self, request):
        header = request.getHeader(b"authorization")
        if header:
            kind, _, token = header.decode("latin-1").partition(" ")
            return self._tokens.get(token.strip()) if kind.lower() == "bearer" else None
        cert = request.transport.getPeerCertificate() if hasattr(
            request.transport, "getPeerCertificate") else None
        if cert is not None:
            names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            return names[0].value if names else None
        return None

    def _authorize(self, user, verb, resource, namespace, name):
        if self._authorizer and not self._authorizer(user, verb, resource, namespace, name):
            status = _forbiddenStatus(user, verb, resource, namespace, name)
            raise KubeError(status["message"], code=403, reason="Forbidden", status=status)

    def setSubjectAccessReviewHandler(self, fn):
        self.store.setSubjectAccessReviewHandler(fn)

    def setTokenReviewHandler(self, fn):
        self.store.setTokenReviewHandler(fn)

    @property
    def subjectAccessReviews(self):
        return self.store.subjectAccessReviews

    @property
    def tokenReviews(self):
        return self.store.tokenReviews

    # --- client configuration -------------------------------------------

    def clientConfig(self, token=None, clientCert=None):
        """A :class:`KubeConfig` for :class:`KubeClient` (token auth by default)."""
        if clientCert is not None:
            return KubeConfig(server=self.url, caPEM=self.caPEM, clientCertPEM=clientCert.certPEM,
                              clientKeyPEM=clientCert.keyPEM, source="stand-in API server")
        return KubeConfig(server=self.url, caPEM=self.caPEM,
                          tokenProvider=StaticToken(token or self.token),
                          source="stand-in API server")

    def kubeconfigDict(self, token=None):
        import base64
        b64 = base64.standard_b64encode(self.caPEM).decode()
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {
                "server": self.url, "certificate-authority-data": b64}}],
            "users": [{"name": "stand-in", "user": {"token": token or self.token}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in"}}],
        }

    def writeKubeconfig(self, path, token=None):
        """Write a kubeconfig for this server (mode 0600). :return: ``path``."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(self.kubeconfigDict(token), f)
        return path


# --- command line (local run) ------------------------------------------------

def loadFixtures(store, directory):
    """Add every object in ``*.yaml``/``*.yml``/``*.json`` files (Lists and multi-doc too)."""
    count = 0
    for name in sorted(os.listdir(directory)):
        if not name.endswith((".yaml", ".yml", ".json")):
            continue
        with open(os.path.join(directory, name)) as f:
            docs = list(yaml.safe_load_all(f))
        for doc in docs:
            for obj in (doc.get("items", []) if str(doc.get("kind", "")).endswith("List") else [doc]):
                store.put(obj)
                count += 1
    return count


def _reviewTokens(pairs):
    table = {}
    for pair in pairs:
        token, _, rest = pair.partition("=")
        user, _, groups = rest.partition(":")
        table[token] = {"username": user, "groups": [g for g in groups.split(",") if g]}
    return table


def _parseArgs(argv):
    p = argparse.ArgumentParser(prog="python -m kibaship_dns01.testing.kubeapi",
                                description="Serve a stand-in Kubernetes API over TLS.")
    p.add_argument("--kubeconfig-out", required=True, help="where to write the kubeconfig")
    p.add_argument("--fixtures", help="directory of YAML/JSON objects to load")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token", help="bearer token to accept (random by default)")
    p.add_argument("--review-token", action="append", default=[], metavar="TOKEN=USER[:G1,G2]",
                   help="a token that TokenReview authenticates (repeatable)")
    p.add_argument("--deny-all", action="store_true",
                   help="SubjectAccessReview denies everything (default: allows everything)")
    return p.parse_args(argv)


def main(argv=None, reactor=None):
    """Run the stand-in as a process until interrupted."""
    args = _parseArgs(sys.argv[1:] if argv is None else argv)
    if reactor is None:
        from twisted.internet import reactor
    server = StandInAPIServer(reactor=reactor, port=args.port, token=args.token)
    loaded = loadFixtures(server.store, args.fixtures) if args.fixtures else 0
    reviews = _reviewTokens(args.review_token)
    server.setTokenReviewHandler(lambda t: {"authenticated": True, "user": reviews[t]}
                                 if t in reviews else {"authenticated": False})
    server.setSubjectAccessReviewHandler(lambda spec: {"allowed": not args.deny_all})
    server.start()
    server.writeKubeconfig(args.kubeconfig_out)
    print(json.dumps({"url": server.url, "kubeconfig": args.kubeconfig_out,
                      "token": server.token, "objects": loaded}), flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", server.stop)
    reactor.run()


if __name__ == "__main__":
    main()
