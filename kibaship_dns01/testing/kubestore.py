"""An in-memory Kubernetes object store with the API server's semantics.

Both the verified fake client (:mod:`.fakekube`) and the TLS stand-in API
server (:mod:`.kubeapi`) serve this store, so a test that passes against the
fake exercises the same resourceVersion, paging, selector and watch rules as
one that goes over the wire.  What it reproduces, because the informer and the
resolver depend on it:

- one global, increasing ``resourceVersion``; every add/update/delete bumps it
  and a DELETED event carries the deletion's version;
- WATCH from a version replays the (bounded) event history after it; a version
  older than the history answers an ``ERROR`` event with a 410 ``Expired``
  Status, exactly like kube-apiserver's watch cache;
- LIST with ``limit``/``continue`` serves a consistent snapshot at the first
  page's version (reconstructed from the history) or 410 once it is gone;
- typed core lists (``ConfigMapList``) omit ``kind``/``apiVersion`` on items,
  custom-resource lists keep them;
- WatchList (``sendInitialEvents=true&resourceVersionMatch=NotOlderThan``):
  the objects as ``ADDED`` events, the ``k8s.io/initial-events-end`` bookmark,
  then live changes; the same 422 ``Invalid`` for bad combinations, or for
  any use when the feature gate is off (``watchList="off"``);
- label selectors and the ``metadata.name``/``metadata.namespace`` field
  selectors; other field labels are a 400 like for CRDs;
- SubjectAccessReview / TokenReview endpoints whose decisions tests program.
"""
import base64
import bisect
import collections
import copy
import datetime
import json
import re
import uuid

import attr

from kibaship_dns01.kube.errors import classForCode, makeStatus


@attr.s(frozen=True, auto_attribs=True)
class Resource:
    """One API resource (collection) the store can serve."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def apiVersion(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def listKind(self):
        return self.kind + "List"

    @property
    def prefix(self):
        return "/apis/%s/%s" % (self.group, self.version) if self.group else "/api/" + self.version

    @property
    def collectionPath(self):
        """The cluster-wide collection path, the store's key for this resource."""
        return "%s/%s" % (self.prefix, self.plural)

    def path(self, namespace=None, name=None):
        """The API path of a namespaced collection or of one object."""
        base = self.prefix
        if namespace is not None and self.namespaced:
            base += "/namespaces/" + namespace
        base += "/" + self.plural
        return base + "/" + name if name is not None else base


DEFAULT_RESOURCES = (
    Resource("", "v1", "configmaps", "ConfigMap"),
    Resource("", "v1", "secrets", "Secret"),
    Resource("acme.cert-manager.io", "v1", "challenges", "Challenge"),
    Resource("acme.cert-manager.io", "v1", "orders", "Order"),
    Resource("cert-manager.io", "v1", "certificaterequests", "CertificateRequest"),
    Resource("cert-manager.io", "v1", "certificates", "Certificate"),
)

SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def _fail(code, reason, message, details=None):
    status = makeStatus(code, reason, message, details)
    return classForCode(code)(message, code=code, reason=reason, status=status)


def _details(resource, name):
    """Status details as the API server sends them (empty group omitted)."""
    details = {"name": name}
    if resource.group:
        details["group"] = resource.group
    details["kind"] = resource.plural
    return details


def _notFound(resource, name):
    return _fail(404, "NotFound", '%s "%s" not found' % (_qualified(resource), name),
                 _details(resource, name))


def _qualified(resource):
    return "%s.%s" % (resource.plural, resource.group) if resource.group else resource.plural


def _unknownPath(path):
    return _fail(404, "NotFound", "the server could not find the requested resource",
                 {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}
                 if not path.startswith("/api") else None)


def _badRequest(message):
    return _fail(400, "BadRequest", message)


# --- selectors ---------------------------------------------------------------

_REQ = re.compile(r"^\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|"
                  r"\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _splitTopLevel(text):
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def parseLabelSelector(text):
    """Parse a label selector into a predicate on a labels dict.

    Supports ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)`` and
    ``k notin (a,b)``; anything else is a 400 as from the API server.
    """
    preds = []
    for part in _splitTopLevel(text or ""):
        m = _REQ.match(part)
        if not m or (m.group(1) and (m.group(3) or m.group(5))):
            raise _badRequest("unable to parse requirement: %r" % part.strip())
        neg, key, op, val, setOp, setVals = m.groups()
        preds.append(_labelPredicate(neg, key, op, val, setOp, setVals))
    return lambda labels: all(p(labels or {}) for p in preds)


def _labelPredicate(neg, key, op, val, setOp, setVals):
    if setOp:
        values = {v.strip() for v in setVals.split(",") if v.strip()}
        if setOp == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if op in ("=", "=="):
        return lambda labels: labels.get(key) == val
    if op == "!=":
        return lambda labels: labels.get(key) != val
    if neg:
        return lambda labels: key not in labels
    return lambda labels: key in labels


_FIELDS = {"metadata.name": "name", "metadata.namespace": "namespace"}


def parseFieldSelector(text):
    """Parse a field selector (``metadata.name``/``metadata.namespace`` only)."""
    preds = []
    for part in [p for p in (text or "").split(",") if p.strip()]:
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise _badRequest("invalid selector: %r; can't understand %r" % (text, part))
        field, op, val = m.groups()
        if field not in _FIELDS:
            raise _badRequest("field label not supported: " + field)
        metaKey = _FIELDS[field]
        if op == "!=":
            preds.append(lambda md, k=metaKey, v=val: md.get(k) != v)
        else:
            preds.append(lambda md, k=metaKey, v=val: md.get(k) == v)
    return lambda metadata: all(p(metadata) for p in preds)


@attr.s(frozen=True)
class _Selector:
    labels = attr.ib()
    fields = attr.ib()

    @classmethod
    def fromParams(cls, params):
        return cls(parseLabelSelector(params.get("labelSelector")),
                   parseFieldSelector(params.get("fieldSelector")))

    def matches(self, obj):
        md = obj.get("metadata", {})
        return self.labels(md.get("labels")) and self.fields(md)


# --- history and watches -----------------------------------------------------

@attr.s(slots=True, frozen=True)
class _Event:
    rv = attr.ib()
    key = attr.ib()       # (collectionPath, namespace, name)
    type = attr.ib()      # ADDED / MODIFIED / DELETED
    obj = attr.ib()       # the object after the change (DELETED: last state, new rv)
    prev = attr.ib()      # the object before (None for ADDED)


@attr.s(eq=False)
class Watch:
    """A live watch on the store; :meth:`stop` ends it without notifying.

    A WatchList's initial events (``initial``, an iterator of ``(type,
    object)``) go out first, at the consumer's pace (:meth:`drainInitial`);
    changes made meanwhile wait in ``queued`` and follow them in order, as
    kube-apiserver sends them after the ``initial-events-end`` bookmark.
    """

    store = attr.ib(repr=False)
    resource = attr.ib()
    namespace = attr.ib()
    selector = attr.ib(repr=False)
    bookmarks = attr.ib()
    onEvent = attr.ib(repr=False)
    onEnd = attr.ib(repr=False)
    active = attr.ib(default=True)
    initial = attr.ib(default=None, repr=False)
    queued = attr.ib(factory=list, repr=False)

    def stop(self):
        """Detach from the store (the client went away)."""
        self.active = False
        self.store._watches.discard(self)

    def end(self):
        """The server side ends the stream: detach, then tell the consumer."""
        if self.active:
            self.stop()
            self.onEnd()

    def inScope(self, key):
        collection, namespace, _ = key
        return collection == self.resource.collectionPath and (
            self.namespace is None or namespace == self.namespace)

    def deliver(self, event):
        """Translate a store event into what this watch sees (selector aware)."""
        if not self.active or not self.inScope(event.key):
            return
        now = event.type != "DELETED" and self.selector.matches(event.obj)
        before = event.prev is not None and self.selector.matches(event.prev)
        if event.type == "DELETED":
            now, before = False, self.selector.matches(event.obj)
        kind = {(True, False): "ADDED", (True, True): "MODIFIED",
                (False, True): "DELETED"}.get((now, before))
        if kind is None:
            return
        if self.initial is not None:
            self.queued.append((kind, copy.deepcopy(event.obj)))
        else:
            self.onEvent(kind, copy.deepcopy(event.obj))

    def drainInitial(self, limit=None):
        """Send up to ``limit`` initial events (all by default); once they are all
        out, the changes queued meanwhile.  :return: ``True`` once all that is
        done (a call that sent exactly the last ``limit`` says so next time)."""
        if self.initial is None:
            return True
        for n, (kind, obj) in enumerate(self.initial, 1):
            if not self.active:
                return True
            self.onEvent(kind, obj)
            if limit is not None and n >= limit:
                return False
        self.initial = None
        queued, self.queued = self.queued, []
        for kind, obj in queued:
            if self.active:
                self.onEvent(kind, obj)
        return True


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encodeContinue(rv, start):
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"},
                     separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decodeContinue(token):
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if data.get("v") != "meta.k8s.io/v1":
            raise ValueError("unknown version")
        return int(data["rv"]), data["start"].rstrip("\x00")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _badRequest("continue key is not valid: %s" % (e,))


#: LIST snapshots kept for their continue pages (a few LISTs page at once at most)
_SNAPSHOTS_KEPT = 8


@attr.s(slots=True, frozen=True)
class _ListSnapshot:
    """One LIST's matching objects at its resourceVersion: ``keys`` in list
    order, ``positions`` their ``(namespace, name)`` for finding a continue
    point by bisection, ``state`` key -> object (shared, never mutated)."""

    keys = attr.ib()
    positions = attr.ib()
    state = attr.ib()

    @classmethod
    def of(cls, state, selector):
        keys = sorted(k for k, o in state.items() if selector.matches(o))
        return cls(keys, [(k[1] or "", k[2]) for k in keys], state)


#: the annotation of the bookmark that ends a WatchList's initial events
INITIAL_EVENTS_END = "k8s.io/initial-events-end"

_EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter.")


class KubeStore:
    """Objects keyed by (collection path, namespace, name) with API semantics.

    :param historyLimit: how many change events are kept for WATCH and
        continue tokens; older versions answer 410 ``Expired``.
    """

    def __init__(self, historyLimit=1000, resources=DEFAULT_RESOURCES):
        self._objects = {}
        self._history = collections.deque()
        self._snapshots = collections.OrderedDict()
        self._historyLimit = historyLimit
        self._compactedRV = 0
        self._rv = 1
        self._watches = set()
        self._resources = {}
        self._byKind = {}
        self._injected = []
        #: WatchList: "on" (Kubernetes 1.34+ by default), "off" (422 for
        #: ``sendInitialEvents``: the feature gate off) or "ignored" (a server
        #: older than 1.27 that does not know the parameters)
        self.watchList = "on"
        self.requests = []
        self.subjectAccessReviews = []
        self.tokenReviews = []
        self._sarHandler = lambda spec: {"allowed": False, "reason": "no decision programmed"}
        self._tokenHandler = lambda token: {"authenticated": False, "error": "invalid bearer token"}
        for r in resources:
            self.registerResource(r)

    # --- configuration ------------------------------------------------------

    def registerResource(self, resource):
        """Serve another :class:`Resource`."""
        self._resources[resource.collectionPath] = resource
        self._byKind[(resource.apiVersion, resource.kind)] = resource

    def resourceFor(self, apiVersion, kind):
        """The :class:`Resource` of an ``apiVersion``/``kind`` pair."""
        try:
            return self._byKind[(apiVersion, kind)]
        except KeyError:
            raise ValueError("the store serves no %s %s; register a Resource" % (apiVersion, kind))

    @property
    def resources(self):
        return list(self._resources.values())

    @property
    def resourceVersion(self):
        """The current global resourceVersion (an int)."""
        return self._rv

    def setSubjectAccessReviewHandler(self, fn):
        """``fn(spec) -> status`` decides SubjectAccessReviews (may raise KubeError)."""
        self._sarHandler = fn

    def setTokenReviewHandler(self, fn):
        """``fn(token) -> status`` decides TokenReviews (may raise KubeError)."""
        self._tokenHandler = fn

    def injectError(self, error, verb=None, path=None, times=1, retryAfter=None):
        """Make the next ``times`` matching API calls fail with ``error``
        (``times=None``: every one until :meth:`clearInjectedErrors`).

        ``error`` is a :class:`KubeError` (its ``status`` is what the server
        answers) or an HTTP code; with ``retryAfter`` (seconds) the Status
        carries ``details.retryAfterSeconds`` and the stand-in server a
        ``Retry-After`` header, as kube-apiserver's 429s do.  ``verb`` is
        ``get``/``list``/``watch``/``post`` or ``None`` for any; ``path``
        matches as a prefix.
        """
        if isinstance(error, int):
            error = _fail(error, {403: "Forbidden", 409: "Conflict", 410: "Expired",
                                  429: "TooManyRequests", 500: "InternalError",
                                  503: "ServiceUnavailable", 504: "Timeout"}.get(error, "Unknown"),
                          "injected failure %d" % error,
                          {"retryAfterSeconds": int(retryAfter)} if retryAfter else None)
        self._injected.append([error, verb, path, times])

    def clearInjectedErrors(self):
        """Forget every injected error still pending."""
        self._injected = []

    # --- test helpers: mutations -------------------------------------------

    def _keyOf(self, obj):
        resource = self.resourceFor(obj.get("apiVersion"), obj.get("kind"))
        md = obj.get("metadata") or {}
        name, namespace = md.get("name"), md.get("namespace")
        if not name:
            raise ValueError("object has no metadata.name: %r" % (obj,))
        if resource.namespaced and not namespace:
            raise ValueError("%s %s needs metadata.namespace" % (resource.kind, name))
        return resource, (resource.collectionPath, namespace if resource.namespaced else None, name)

    def _record(self, type_, key, obj, prev, copies=True):
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        event = _Event(self._rv, key, type_, obj, prev)
        self._history.append(event)
        while len(self._history) > self._historyLimit:
            self._compactedRV = self._history.popleft().rv
        for w in list(self._watches):
            w.deliver(event)
        return copy.deepcopy(obj) if copies else None

    def add(self, obj, copies=True):
        """Create ``obj``; 409 ``AlreadyExists`` when it exists.  Returns the stored
        copy (``copies=False``: stores ``obj`` itself, which the caller must not
        touch again, and returns nothing: a bench filling it with 100,000 objects)."""
        resource, key = self._keyOf(obj)
        if key in self._objects:
            raise _fail(409, "AlreadyExists", '%s "%s" already exists' % (_qualified(resource), key[2]),
                        _details(resource, key[2]))
        obj = copy.deepcopy(obj) if copies else obj
        md = obj["metadata"]
        md.setdefault("uid", str(uuid.uuid4()))
        md.setdefault("creationTimestamp", _now())
        md.setdefault("generation", 1)
        self._objects[key] = obj
        return self._record("ADDED", key, obj, None, copies)

    def update(self, obj):
        """Replace ``obj``; 404 when missing, 409 when its resourceVersion is stale."""
        resource, key = self._keyOf(obj)
        prev = self._objects.get(key)
        if prev is None:
            raise _notFound(resource, key[2])
        rv = obj["metadata"].get("resourceVersion")
        if rv and rv != prev["metadata"]["resourceVersion"]:
            raise _fail(409, "Conflict",
                        'Operation cannot be fulfilled on %s "%s": the object has been modified; '
                        "please apply your changes to the latest version and try again"
                        % (_qualified(resource), key[2]),
                        _details(resource, key[2]))
        obj = copy.deepcopy(obj)
        for field in ("uid", "creationTimestamp"):
            obj["metadata"][field] = prev["metadata"][field]
        obj["metadata"]["generation"] = prev["metadata"].get("generation", 1) + 1
        self._objects[key] = obj
        return self._record("MODIFIED", key, obj, prev)

    def updateStatus(self, apiVersion, kind, namespace, name, status, manager="cert-manager",
                     at=None):
        """Replace an object's ``status`` as a controller's ``UpdateStatus`` does.

        Like the ``/status`` subresource: nothing else changes, the
        generation stays, and ``metadata.managedFields`` records ``manager``'s
        status write at ``at`` (RFC 3339; now by default), which is how a
        reader learns when the status was last written.
        """
        obj = self.getObject(apiVersion, kind, namespace, name)
        if obj is None:
            raise _notFound(self.resourceFor(apiVersion, kind), name)
        resource, key = self._keyOf(obj)
        prev = self._objects[key]
        obj["status"] = copy.deepcopy(status)
        fields = [e for e in obj["metadata"].get("managedFields") or ()
                  if not (e.get("manager") == manager and e.get("subresource") == "status")]
        fields.append({"manager": manager, "operation": "Update", "subresource": "status",
                       "apiVersion": apiVersion, "time": at or _now(), "fieldsType": "FieldsV1",
                       "fieldsV1": {"f:status": {}}})
        obj["metadata"]["managedFields"] = fields
        self._objects[key] = obj
        return self._record("MODIFIED", key, obj, prev)

    def put(self, obj):
        """Add or update, ignoring any resourceVersion in ``obj``."""
        _, key = self._keyOf(obj)
        if key not in self._objects:
            return self.add(obj)
        obj = copy.deepcopy(obj)
        obj["metadata"].pop("resourceVersion", None)
        return self.update(obj)

    def delete(self, objOrApiVersion, kind=None, namespace=None, name=None):
        """Delete by object (``delete(obj)``) or by ``(apiVersion, kind, namespace, name)``."""
        if isinstance(objOrApiVersion, dict):
            obj = objOrApiVersion
        else:
            obj = {"apiVersion": objOrApiVersion, "kind": kind,
                   "metadata": {"name": name, "namespace": namespace}}
        resource, key = self._keyOf(obj)
        prev = self._objects.pop(key, None)
        if prev is None:
            raise _notFound(resource, key[2])
        gone = copy.deepcopy(prev)
        return self._record("DELETED", key, gone, prev)

    def getObject(self, apiVersion, kind, namespace, name):
        """The stored object (a copy) or ``None``."""
        resource = self.resourceFor(apiVersion, kind)
        obj = self._objects.get((resource.collectionPath, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def objects(self, apiVersion, kind):
        """Every stored object of a kind (copies)."""
        path = self.resourceFor(apiVersion, kind).collectionPath
        return [copy.deepcopy(o) for k, o in sorted(self._objects.items()) if k[0] == path]

    # --- test helpers: watch control ---------------------------------------

    def compact(self):
        """Forget all history: any older resourceVersion now answers 410."""
        self._history.clear()
        self._compactedRV = self._rv

    def bookmark(self):
        """Send a BOOKMARK with the current version to watches that asked for them."""
        for w in list(self._watches):
            if w.bookmarks:
                w.onEvent("BOOKMARK", {"kind": w.resource.kind, "apiVersion": w.resource.apiVersion,
                                       "metadata": {"resourceVersion": str(self._rv)}})

    def expireWatches(self):
        """Send each watch a 410 ``Expired`` ERROR event, then end it."""
        for w in list(self._watches):
            w.onEvent("ERROR", self._tooOld(self._compactedRV))
            w.end()

    def closeWatches(self):
        """End every watch (as when the API server restarts or times them out)."""
        for w in list(self._watches):
            w.end()

    @property
    def watchCount(self):
        return len(self._watches)

    def _tooOld(self, rv):
        return makeStatus(410, "Expired", "too old resource version: %d (%d)"
                          % (rv, self._compactedRV))

    # --- API side --------------------------------------------------------

    def _checkInjected(self, verb, path):
        for entry in self._injected:
            error, v, p, times = entry
            if (v is None or v == verb) and (p is None or path.startswith(p)):
                if times is not None:
                    entry[3] -= 1
                    if entry[3] <= 0:
                        self._injected.remove(entry)
                raise error

    def _enter(self, verb, path, params):
        self.requests.append((verb, path, dict(params or {})))
        self._checkInjected(verb, path)

    def parsePath(self, path):
        """Split an API path into ``(resource, namespace, name)``; 404 when unknown."""
        m = re.match(r"^(/api/v1|/apis/[^/]+/[^/]+)(?:/namespaces/([^/]+))?/([^/]+)(?:/([^/]+))?/?$",
                     path)
        if not m:
            raise _unknownPath(path)
        prefix, namespace, plural, name = m.groups()
        resource = self._resources.get("%s/%s" % (prefix, plural))
        if resource is None:
            raise _unknownPath(path)
        return resource, namespace, name

    def getPath(self, path, params=None):
        """GET one object by path (a copy)."""
        self._enter("get", path, params)
        resource, namespace, name = self.parsePath(path)
        if name is None:
            raise _badRequest("GET of a collection: use LIST")
        obj = self._objects.get((resource.collectionPath, namespace, name))
        if obj is None:
            raise _notFound(resource, name)
        return copy.deepcopy(obj)

    def _inScope(self, resource, namespace):
        collection = resource.collectionPath
        for key, obj in self._objects.items():
            if key[0] == collection and (namespace is None or key[1] == namespace):
                yield key, obj

    def _snapshot(self, resource, namespace, rv):
        """The scope's objects as they were at ``rv`` (rolled back through history)."""
        if rv < self._compactedRV:
            raise _fail(410, "Expired", _EXPIRED_CONTINUE)
        state = dict(self._inScope(resource, namespace))
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            c, ns, _ = event.key
            if c != resource.collectionPath or (namespace is not None and ns != namespace):
                continue
            if event.prev is None:
                state.pop(event.key, None)
            else:
                state[event.key] = event.prev
        return state

    def listPath(self, path, params=None, copies=True):
        """LIST a collection (``limit``, ``continue``, selectors) as a List object.

        :param copies: ``False`` returns the stored objects themselves as items,
            for a caller that only serialises them (the stand-in server):
            deep-copying every item of every page was most of a large LIST's cost.
        """
        params = params or {}
        self._enter("list", path, params)
        resource, namespace, name = self.parsePath(path)
        if name is not None:
            raise _badRequest("LIST of one object: use GET")
        selector = _Selector.fromParams(params)
        rv, start = self._rv, None
        if params.get("continue"):
            rv, start = _decodeContinue(params["continue"])
        snapshot = self._listSnapshot(resource, namespace, rv, start is not None, params,
                                      selector)
        first = 0
        if start is not None:
            after = tuple(start.split("/", 1)) if "/" in start else ("", start)
            first = bisect.bisect_right(snapshot.positions, after)
        counted = not (params.get("labelSelector") or params.get("fieldSelector"))
        return self._page(resource, snapshot, first, rv, self._limit(params), counted, copies)

    def _listSnapshot(self, resource, namespace, rv, continued, params, selector):
        """The matching objects at ``rv``, sorted: built once per LIST and reused
        by each of its ``continue`` pages (a page used to rebuild it all).

        Stored objects are replaced on change, never mutated, so a snapshot
        holding references stays what the scope was at ``rv``; an expired
        ``rv`` still answers 410 whether or not the snapshot is kept.
        """
        if continued and rv < self._compactedRV:
            raise _fail(410, "Expired", _EXPIRED_CONTINUE)
        cacheKey = (resource.collectionPath, namespace, rv, params.get("labelSelector") or "",
                    params.get("fieldSelector") or "")
        snapshot = self._snapshots.get(cacheKey)
        if snapshot is not None:
            self._snapshots.move_to_end(cacheKey)
            return snapshot
        state = self._snapshot(resource, namespace, rv) if continued else dict(
            self._inScope(resource, namespace))
        snapshot = _ListSnapshot.of(state, selector)
        self._snapshots[cacheKey] = snapshot
        while len(self._snapshots) > _SNAPSHOTS_KEPT:
            self._snapshots.popitem(last=False)
        return snapshot

    @staticmethod
    def _limit(params):
        try:
            limit = int(params.get("limit") or 0)
        except ValueError:
            raise _badRequest("invalid limit: %r" % (params.get("limit"),))
        return limit if limit > 0 else None

    def _page(self, resource, snapshot, first, rv, limit, counted, copies=True):
        """One page from ``first``; ``remainingItemCount`` only without selectors
        (ListMeta docs)."""
        end = min(first + limit, len(snapshot.keys)) if limit else len(snapshot.keys)
        page = snapshot.keys[first:end]
        metadata = {"resourceVersion": str(rv)}
        if end < len(snapshot.keys):
            last = page[-1]
            metadata["continue"] = _encodeContinue(rv, "%s/%s" % (last[1] or "", last[2]))
            if counted:
                metadata["remainingItemCount"] = len(snapshot.keys) - end
        items = [self._listItem(resource, snapshot.state[k], copies) for k in page]
        return {"kind": resource.listKind, "apiVersion": resource.apiVersion,
                "metadata": metadata, "items": items}

    @staticmethod
    def _listItem(resource, obj, copies=True):
        """Typed (core) lists carry no kind/apiVersion per item; CRD lists do."""
        if not resource.group:
            item = copy.deepcopy(obj) if copies else dict(obj)
            item.pop("kind", None)
            item.pop("apiVersion", None)
            return item
        return copy.deepcopy(obj) if copies else obj

    def watchPath(self, path, params, onEvent, onEnd, stream=False):
        """Start a WATCH; returns a :class:`Watch`.

        Errors in the request (unknown path, bad selector, WatchList
        parameters the server refuses) raise before the stream starts, like
        an HTTP error status.  A too-old resourceVersion is delivered as an
        ``ERROR`` event followed by ``onEnd()``, like the real watch cache
        (HTTP 200, then the event).

        ``sendInitialEvents=true`` (a WatchList, see :attr:`watchList`): the
        scope's objects as ``ADDED`` events, then (with
        ``allowWatchBookmarks``) a ``BOOKMARK`` annotated
        ``k8s.io/initial-events-end``, then live changes; ``stream=True``
        leaves sending the initial events to :meth:`Watch.drainInitial` (a
        server writing them as the client reads), else they go out now.
        """
        params = params or {}
        self._enter("watch", path, params)
        resource, namespace, name = self.parsePath(path)
        if name is not None:
            raise _badRequest("watch of a single object: use fieldSelector=metadata.name=...")
        initialEvents = self._watchListOptions(params)
        w = Watch(self, resource, namespace, _Selector.fromParams(params),
                  str(params.get("allowWatchBookmarks", "")).lower() in ("true", "1"),
                  onEvent, onEnd)
        rvText = params.get("resourceVersion") or "0"
        try:
            rv = int(rvText)
        except ValueError:
            raise _badRequest("invalid resource version: %r" % (rvText,))
        self._watches.add(w)
        if initialEvents:
            w.initial = self._initialEvents(w, resource, namespace, copies=not stream)
            if not stream:
                w.drainInitial()
        elif rv == 0:
            self._replayCurrent(w, resource, namespace)
        elif rv < self._compactedRV:
            onEvent("ERROR", self._tooOld(rv))
            w.end()
        else:
            for event in [e for e in self._history if e.rv > rv]:
                w.deliver(event)
        return w

    def _watchListOptions(self, params):
        """Whether this WATCH asks for initial events, checked as kube-apiserver's
        ``ValidateListOptions`` does (422 ``Invalid`` on ``ListOptions``); a
        server without WatchList (``watchList="off"``: its feature gate off,
        1.27 to 1.33) refuses ``sendInitialEvents``, an older one
        (``"ignored"``) does not know the parameters and ignores them."""
        if self.watchList == "ignored":
            return False
        send, match = params.get("sendInitialEvents"), params.get("resourceVersionMatch")
        problems = []
        if send is not None:
            if match != "NotOlderThan":
                problems.append(("resourceVersionMatch", "Forbidden: sendInitialEvents requires"
                                 " setting resourceVersionMatch to NotOlderThan"))
            if self.watchList != "on":
                problems.append(("sendInitialEvents", "Forbidden: sendInitialEvents is forbidden"
                                 " for watch unless the WatchList feature gate is enabled"))
        if match and send is None:
            problems.append(("resourceVersionMatch", "Forbidden: resourceVersionMatch is"
                             " forbidden for watch unless sendInitialEvents is provided"))
        if problems:
            message = 'ListOptions.meta.k8s.io "" is invalid: ' + ", ".join(
                "%s: %s" % p for p in problems)
            raise _fail(422, "Invalid", message, {
                "group": "meta.k8s.io", "kind": "ListOptions",
                "causes": [{"reason": "FieldValueForbidden", "message": why, "field": field}
                           for field, why in problems]})
        return send is not None and send.lower() in ("true", "1")

    def _initialEvents(self, w, resource, namespace, copies=True):
        """A WatchList's initial events at the current version (NotOlderThan any
        version asked for): every matching object, then the bookmark.  The
        snapshot is taken now; the events go out as the iterator is read."""
        rv = self._rv
        # references are a consistent snapshot: stored objects are replaced on
        # change, never mutated.  In the order they were stored, as a watch cache
        # sends them (no order is promised), and filtered as they go out, so a
        # stream of 100,000 objects costs the server nothing up front.
        state = [obj for _, obj in self._inScope(resource, namespace)]
        bookmark = {"kind": resource.kind, "apiVersion": resource.apiVersion,
                    "metadata": {"resourceVersion": str(rv),
                                 "annotations": {INITIAL_EVENTS_END: "true"}}}

        def events():
            for obj in state:
                if w.selector.matches(obj):
                    yield "ADDED", copy.deepcopy(obj) if copies else obj
            if w.bookmarks:
                yield "BOOKMARK", bookmark
        return events()

    def _replayCurrent(self, w, resource, namespace):
        """Version "0"/unset: synthetic ADDED events for everything in scope."""
        for key, obj in sorted(self._inScope(resource, namespace)):
            if w.active and w.selector.matches(obj):
                w.onEvent("ADDED", copy.deepcopy(obj))

    def postPath(self, path, body):
        """POST: SubjectAccessReview, TokenReview, or create an object."""
        self._enter("post", path, None)
        if path == SAR_PATH:
            return self._subjectAccessReview(body)
        if path == TOKENREVIEW_PATH:
            return self._tokenReview(body)
        resource, namespace, name = self.parsePath(path)
        if name is not None:
            raise _fail(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        obj = copy.deepcopy(body)
        obj.setdefault("apiVersion", resource.apiVersion)
        obj.setdefault("kind", resource.kind)
        obj.setdefault("metadata", {})
        if namespace is not None:
            obj["metadata"]["namespace"] = namespace
        return self.add(obj)

    def _subjectAccessReview(self, body):
        spec = (body or {}).get("spec") or {}
        self.subjectAccessReviews.append(copy.deepcopy(spec))
        invalid = []
        if bool(spec.get("resourceAttributes")) == bool(spec.get("nonResourceAttributes")):
            invalid.append('spec.resourceAttributes: Invalid value: "null": exactly one of '
                           "nonResourceAttributes or resourceAttributes must be specified")
        if not spec.get("user") and not spec.get("groups"):
            invalid.append('spec.user: Invalid value: "": at least one of user or group must be specified')
        if invalid:
            raise _fail(422, "Invalid", 'SubjectAccessReview.authorization.k8s.io "" is invalid: '
                        + ", ".join(invalid), {"group": "authorization.k8s.io",
                                               "kind": "SubjectAccessReview"})
        return {"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": spec,
                "status": self._sarHandler(copy.deepcopy(spec))}

    def _tokenReview(self, body):
        spec = (body or {}).get("spec") or {}
        token = spec.get("token") or ""
        self.tokenReviews.append(token)
        if not token:
            raise _badRequest("token is required for TokenReview in authentication")
        return {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": spec,
                "status": self._tokenHandler(token)}
