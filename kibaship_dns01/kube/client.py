"""A non-blocking JSON client for the Kubernetes API server, on treq.

One persistent connection pool (so GETs reuse TLS sessions), a bearer token
read per request from the config's provider (rotated service-account tokens
are picked up without a restart), bounded connect/request times, and every
failure mapped to :mod:`kibaship_dns01.kube.errors`.  WATCH streams are parsed
line by line as they arrive with a bounded line buffer, so one huge or
malicious event cannot exhaust memory.
"""
import json

from treq.client import HTTPClient
from twisted.internet import defer, error as ierror
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import _newclient
from twisted.web.client import (Agent, HTTPConnectionPool, PotentialDataLoss, ResponseDone,
                                _HTTP11ClientFactory)
from zope.interface import implementer

from kibaship_dns01 import __version__, metrics
from kibaship_dns01.interfaces import IKubernetesClient
from kibaship_dns01.kube.config import KubeConfigError
from kibaship_dns01.kube.errors import (APITimeout, Gone, KubeError, Unauthorized, Unavailable,
                                        errorFromStatus)
from kibaship_dns01.kube.listjson import decodeList
from kibaship_dns01.kube.tls import APIServerTLSPolicy

MiB = 1024 * 1024
#: idle-pool room beyond the request bound: the daemon's few watches (ConfigMap,
#: Challenges, Orders, Certificates) return their connections when they end
WATCH_CONNECTIONS = 4
USER_AGENT = "kibaship-dns01/%s" % (__version__,)


def _describeConnectionFailure(exc):
    """Dig the root cause out of twisted.web's wrapper exceptions."""
    reasons = getattr(exc, "reasons", None)
    if reasons:
        inner = [r.value for r in reasons if isinstance(r, Failure)]
        for value in inner:
            if type(value).__module__.startswith("OpenSSL"):
                return ("TLS handshake failed (%s); check that the configured certificate "
                        "authority signed the API server's certificate" % (value,))
        return "; ".join(_describeConnectionFailure(v) for v in inner) or str(exc)
    return "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__


_CONNECTION_ERRORS = (ierror.ConnectError, ierror.ConnectionLost, ierror.ConnectionDone,
                      _newclient.ResponseNeverReceived, _newclient.RequestTransmissionFailed,
                      _newclient.ResponseFailed, _newclient.RequestGenerationFailed)


def _wasCancelled(exc):
    if isinstance(exc, defer.CancelledError):
        return True
    return any(isinstance(r, Failure) and _wasCancelled(r.value)
               for r in getattr(exc, "reasons", None) or ())


def _mapTransportFailure(exc, what):
    """A transport-level exception -> the typed error (or ``None``: re-raise)."""
    if isinstance(exc, KubeError):
        return exc
    if _wasCancelled(exc):
        return defer.CancelledError()
    if isinstance(exc, (defer.TimeoutError, ierror.TimeoutError)):
        return APITimeout("%s: no answer from the API server in time; %s"
                          % (what, APITimeout.hint), code=None)
    if isinstance(exc, _CONNECTION_ERRORS):
        return Unavailable("%s: cannot reach the API server: %s; %s"
                           % (what, _describeConnectionFailure(exc), Unavailable.hint), code=None)
    return None


class _StreamReader(Protocol):
    """Base for body consumers that may give up on a response early.

    Giving up stops the transport (closing the connection) and reports the
    error only once the connection is gone, so the abandoned connection can
    never go back into the pool after the caller has moved on.
    """

    def __init__(self, what):
        self._what = what
        self._error = None
        self.done = defer.Deferred(lambda d: self._stop())

    def _stop(self):
        if self.transport is not None:
            self.transport.stopProducing()

    def _giveUp(self, error):
        if self._error is None and not self.done.called:
            self._error = error
            self._stop()

    @property
    def _active(self):
        return self._error is None and not self.done.called

    def connectionLost(self, reason):
        if self.done.called:
            return
        if self._error is not None:
            self.done.errback(self._error)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._finished()
        else:
            self.done.errback(Unavailable("%s: connection lost while reading the response: %s"
                                          % (self._what, _describeConnectionFailure(reason.value))))


class _BodyReader(_StreamReader):
    """Collects a response body up to ``limit`` bytes."""

    def __init__(self, limit, what):
        super().__init__(what)
        self._chunks, self._size, self._limit = [], 0, limit

    def dataReceived(self, data):
        if not self._active:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._giveUp(KubeError("%s: response body larger than %d bytes"
                                   % (self._what, self._limit)))
            return
        self._chunks.append(data)

    def _finished(self):
        self.done.callback(b"".join(self._chunks))


class _WatchReader(_StreamReader):
    """Splits a watch stream into ``{"type","object"}`` lines and dispatches them.

    ``done`` fires ``None`` when the server ends the stream cleanly; it fails
    on a lost connection, an oversized or malformed line, or an exception
    raised by ``onEvent`` (a consumer bug must not be silently swallowed).
    """

    def __init__(self, onEvent, maxLine, what):
        super().__init__(what)
        self._onEvent, self._maxLine = onEvent, maxLine
        self._buf = bytearray()
        self._scanned = 0
        self.events = 0

    def _tooLong(self):
        self._giveUp(KubeError("%s: watch event larger than %d bytes" % (self._what, self._maxLine)))

    def dataReceived(self, data):
        """Dispatch every complete line; the buffer is cut once per call (cutting
        it per line moved the rest of a 64 KB read once per event: a tenth of
        a large WatchList's CPU)."""
        if not self._active:
            return
        buf = self._buf
        buf += data
        start = 0
        while self._active:
            end = buf.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            if end - start > self._maxLine:
                self._tooLong()
                return
            line, start = buf[start:end], end + 1
            self._dispatch(line)
        if not self._active:
            return
        del buf[:start]
        self._scanned = len(buf)
        if len(buf) > self._maxLine:
            self._tooLong()

    def _dispatch(self, line):
        if not line.strip():
            return
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
            if not isinstance(kind, str) or not isinstance(obj, dict):
                raise ValueError("type must be a string and object a mapping")
        except (ValueError, KeyError, TypeError) as e:
            self._giveUp(KubeError("%s: malformed watch event: %s" % (self._what, e)))
            return
        self.events += 1
        try:
            self._onEvent(kind, obj)
        except Exception:
            self._giveUp(Failure())

    def connectionLost(self, reason):
        if self._active and self._buf.strip() and len(self._buf) <= self._maxLine:
            self._dispatch(bytes(self._buf))
        self._buf.clear()
        super().connectionLost(reason)

    def _finished(self):
        self.done.callback(None)


def _allItems(page):
    return page.get("items") or ()


def _invalidJSON(what, error):
    return KubeError("%s: the API server answered invalid JSON: %s" % (what, error))


def _decodeJSON(body, what):
    try:
        return json.loads(body)
    except ValueError as e:
        raise _invalidJSON(what, e)


def _decodeListPage(body, what):
    try:
        page = decodeList(body)
    except ValueError as e:
        raise _invalidJSON(what, e)
    if isinstance(page, dict) and not isinstance(page.get("items"), (list, tuple, type(None))):
        page["items"] = _checkedItems(page["items"], what)
    return page


def _checkedItems(items, what):
    """The lazily decoded items; a malformed one fails as a :class:`KubeError`."""
    try:
        yield from items
    except ValueError as e:
        raise _invalidJSON(what, e)


def _statusOf(body):
    """The ``Status`` dict in an error body, or ``None``."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("kind") == "Status" else None


#: how often one LIST starts again from its first page after a continue token expired
MAX_LIST_RESTARTS = 3


async def pagedList(fetch, path, params, onPage, maxPages):
    """Page through a LIST: ``fetch(params)`` -> Deferred of one page; each page
    goes to ``onPage(page, first)`` (a Deferred it returns is awaited before the
    next page is asked for, so a consumer that spreads its work over reactor
    turns also bounds what is held to one page).

    A continue token the server no longer knows (410 ``Expired``, its snapshot
    compacted away) starts the LIST again from the first page, at the server's
    current version, rather than one unpaged LIST: a large collection's whole
    JSON in one body is what paging is there to avoid.  ``first`` is true for
    every first page, so a consumer knows to forget what an abandoned pass gave.

    :return: the last pass's first page's ``metadata`` (its resourceVersion).
    """
    for restart in range(MAX_LIST_RESTARTS + 1):
        page = await fetch(params)
        metadata = dict(page.get("metadata") or {})
        await _handOver(onPage, page, True)
        token, pages = metadata.get("continue"), 1
        try:
            while token:
                if pages >= maxPages:
                    raise KubeError("LIST %s: more than %d pages" % (path, maxPages))
                page = await fetch(dict(params, **{"continue": token}))
                token, pages = (page.get("metadata") or {}).get("continue"), pages + 1
                await _handOver(onPage, page, False)
        except Gone:
            if restart == MAX_LIST_RESTARTS:
                raise
            continue
        metadata.pop("continue", None)
        metadata.pop("remainingItemCount", None)
        return metadata


async def _handOver(onPage, page, first):
    waited = onPage(page, first)
    if waited is not None:
        await waited


async def collectPages(listPages, path, params, pageItems):
    """One List object of every page's ``pageItems(page)`` (``list`` on top of
    ``listPages``): kind and apiVersion of the first page, items of the last pass."""
    state = {"items": [], "head": {}}

    def onPage(page, first):
        if first:
            state["items"] = []
            state["head"] = {k: page[k] for k in ("kind", "apiVersion") if k in page}
        state["items"].extend(pageItems(page))
    metadata = await listPages(path, params, onPage)
    return dict(state["head"], metadata=metadata, items=state["items"])


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietConnectionPool(HTTPConnectionPool):
    """A pool whose per-connection factories do not log "Starting factory" /
    "Stopping factory" around every API request (two lines per call otherwise)."""

    _factory = _QuietClientFactory


@implementer(IKubernetesClient)
class KubeClient:
    """:class:`IKubernetesClient` over HTTPS with treq.

    :param config: a :class:`~kibaship_dns01.kube.config.KubeConfig`.
    :param reactor: the reactor (connections and timeouts).
    :param connectTimeout: seconds for the TCP connect.
    :param requestTimeout: seconds until response headers (GET, LIST page,
        POST, WATCH); a whole GET/LIST page/POST, including one retry after
        a rotated token, is bounded by twice this.
    :param watchTimeout: ``timeoutSeconds`` asked of the server when the
        caller gives none; the client gives up ``watchGrace`` seconds later.
    :param pageSize: LIST ``limit`` per page when the caller sets none.
    :param maxConcurrentRequests: GETs, LIST pages and POSTs in flight at once;
        more wait their turn (within their own time bound).  Twisted's pool
        opens a new connection whenever none is idle and keeps at most
        ``maxPersistentPerHost`` idle ones, so without this bound a burst of
        GETs costs a TLS handshake per GET beyond the pool, every burst.
        WATCHes are not counted: each holds its connection for minutes.
    :param maxPersistentPerHost: idle connections kept; by default the
        concurrency bound plus room for the connections ended watches hand
        back, so a burst's connections all stay for the next one.
    """

    def __init__(self, config, reactor=None, connectTimeout=10.0, requestTimeout=30.0,
                 watchTimeout=300, watchGrace=30.0, pageSize=500, maxBodyBytes=64 * MiB,
                 maxEventBytes=16 * MiB, maxPages=10000, maxConcurrentRequests=16,
                 maxPersistentPerHost=None):
        if reactor is None:
            from twisted.internet import reactor
        self._config = config
        self._reactor = reactor
        self._requestTimeout = requestTimeout
        self._watchTimeout = watchTimeout
        self._watchGrace = watchGrace
        self._pageSize = pageSize
        self._maxBody = maxBodyBytes
        self._maxEvent = maxEventBytes
        self._maxPages = maxPages
        self._slots = defer.DeferredSemaphore(maxConcurrentRequests)
        self._pool = QuietConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = (
            maxConcurrentRequests + WATCH_CONNECTIONS if maxPersistentPerHost is None
            else maxPersistentPerHost)
        self._pool.retryAutomatically = True
        agent = Agent(reactor, contextFactory=APIServerTLSPolicy(config),
                      connectTimeout=connectTimeout, pool=self._pool)
        self._http = HTTPClient(agent)
        self._watches = set()

    @property
    def server(self):
        return self._config.server

    def close(self):
        """Cancel running watches and close pooled connections. :return: Deferred."""
        for d in list(self._watches):
            d.cancel()
        return self._pool.closeCachedConnections()

    # --- plumbing -----------------------------------------------------------

    def _headers(self):
        headers = {"Accept": ["application/json"], "User-Agent": [USER_AGENT]}
        provider = self._config.tokenProvider
        token = None
        if provider is not None:
            try:
                token = provider.token()
            except KubeConfigError as e:
                raise Unauthorized("no bearer token for the API server: %s" % (e,), code=None)
        if token:
            headers["Authorization"] = ["Bearer " + token]
        return headers, token

    async def _open(self, method, path, params, body, what):
        """Send a request; fire the response once headers arrived (bounded).

        The timer is ours rather than ``addTimeout`` because twisted.web
        wraps the cancellation in ``ResponseNeverReceived``, and we must tell
        our timeout apart from a caller cancelling (informer shutdown).
        """
        headers, token = self._headers()
        kw = {"json": body} if body is not None else {}
        d = self._http.request(method, self._config.server + path, params=params,
                               headers=headers, allow_redirects=False, unbuffered=True,
                               reactor=self._reactor, **kw)
        expired = []
        timer = self._reactor.callLater(self._requestTimeout,
                                        lambda: (expired.append(True), d.cancel()))
        try:
            return await d, token
        except Exception as e:
            if expired:
                raise APITimeout("%s: no response headers within %ss; %s"
                                 % (what, self._requestTimeout, APITimeout.hint), code=None)
            mapped = _mapTransportFailure(e, what)
            if mapped is None:
                raise
            raise mapped
        finally:
            if timer.active():
                timer.cancel()

    async def _readBody(self, response, what):
        reader = _BodyReader(self._maxBody, what)
        response.deliverBody(reader)
        try:
            return await reader.done
        except Exception as e:
            mapped = _mapTransportFailure(e, what)
            if mapped is None:
                raise
            raise mapped

    def _count(self, verb, code):
        metrics.API_REQUESTS.labels(verb=verb, code=str(code)).inc()

    async def _once(self, verb, method, path, params, body, decode=None):
        """One request in one of the ``maxConcurrentRequests`` slots; the slot is
        released once the body is read, when the connection is idle in the pool
        again (twisted.web returns it before the body's end is delivered)."""
        what = "%s %s" % (method, path)
        await self._slots.acquire()
        try:
            response, token = await self._open(method, path, params, body, what)
            data = await self._readBody(response, what)
        except APITimeout:
            self._count(verb, "timeout")
            raise
        except KubeError:
            self._count(verb, "error")
            raise
        finally:
            self._slots.release()
        self._count(verb, response.code)
        if 200 <= response.code < 300:
            return (decode or _decodeJSON)(data, what), token
        raise errorFromStatus(response.code, _statusOf(data), what)

    async def _request(self, verb, method, path, params=None, body=None, decode=None):
        """One call; a 401 re-reads the token and retries once if it changed."""
        try:
            result, _ = await self._once(verb, method, path, params, body, decode)
            return result
        except Unauthorized:
            provider = self._config.tokenProvider
            if provider is None:
                raise
            _, used = self._headers()
            provider.invalidate()
            _, fresh = self._headers()
            if fresh == used:
                raise
        result, _ = await self._once(verb, method, path, params, body, decode)
        return result

    def _bounded(self, coro, timeout, what):
        d = defer.ensureDeferred(coro)
        d.addTimeout(timeout, self._reactor)

        def timedOut(f):
            f.trap(defer.TimeoutError)
            raise APITimeout("%s: no answer from the API server within %ss; %s"
                             % (what, timeout, APITimeout.hint), code=None)
        return d.addErrback(timedOut)

    # --- IKubernetesClient ---------------------------------------------------

    def get(self, path, params=None):
        return self._bounded(self._request("get", "GET", path, params),
                             2 * self._requestTimeout, "GET " + path)

    def post(self, path, body):
        return self._bounded(self._request("post", "POST", path, None, body),
                             2 * self._requestTimeout, "POST " + path)

    def list(self, path, params=None, pageItems=None):
        pageItems = pageItems or _allItems
        return defer.ensureDeferred(collectPages(
            self.listPages, path, params,
            lambda page: pageItems(dict(page, items=list(page.get("items") or ())))))

    def listPages(self, path, params, onPage):
        return defer.ensureDeferred(self._listPages(path, dict(params or {}), onPage))

    async def _page(self, path, params):
        """One page, its ``items`` decoded as they are read (:mod:`.listjson`)."""
        return await self._bounded(self._request("list", "GET", path, params,
                                                 decode=_decodeListPage),
                                   2 * self._requestTimeout, "LIST " + path)

    async def _listPages(self, path, params, onPage):
        """Hand each ``continue`` page to ``onPage`` (awaited before the next is
        asked for); a continue token that expired (410) restarts the paged LIST,
        at most :data:`MAX_LIST_RESTARTS` times (see :func:`pagedList`)."""
        params.setdefault("limit", str(self._pageSize))
        return await pagedList(lambda p: self._page(path, p), path, params, onPage,
                               self._maxPages)

    def watch(self, path, resourceVersion, onEvent, params=None):
        params = dict(params or {})
        params.setdefault("timeoutSeconds", str(int(self._watchTimeout)))
        params.update(watch="1", allowWatchBookmarks="true")
        if resourceVersion:
            params["resourceVersion"] = str(resourceVersion)
        bound = float(params["timeoutSeconds"]) + self._watchGrace
        d = self._bounded(self._watch(path, params, onEvent), bound, "WATCH " + path)
        self._watches.add(d)
        d.addBoth(self._forgetWatch, d)
        return d

    def _forgetWatch(self, result, d):
        self._watches.discard(d)
        return result

    async def _watch(self, path, params, onEvent):
        what = "WATCH " + path
        try:
            response, _ = await self._open("GET", path, params, None, what)
        except KubeError:
            self._count("watch", "error")
            raise
        self._count("watch", response.code)
        if response.code != 200:
            data = await self._readBody(response, what)
            if response.code == 401 and self._config.tokenProvider is not None:
                self._config.tokenProvider.invalidate()
            raise errorFromStatus(response.code, _statusOf(data), what)
        reader = _WatchReader(onEvent, self._maxEvent, what)
        response.deliverBody(reader)
        await reader.done
