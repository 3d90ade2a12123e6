"""Challenge objects: the trimmed cache form, the ``spec.key`` index, matching a request."""
import attr
from twisted.logger import Logger

from kibaship_dns01.names import bareName

CHALLENGES_PATH = "/apis/acme.cert-manager.io/v1/challenges"
KEY_INDEX = "key"
_log = Logger()


# --- Challenge objects ---------------------------------------------------------

def _get(obj, *path):
    """``obj[path[0]][path[1]]...`` or ``None``: cert-manager omits empty fields."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


#: Canonical copies of small values most Challenges share (namespace, issuerRef,
#: webhook group/solver, owner apiVersion/kind), bounded so odd input cannot grow it.
_SHARED = {}
_SHARED_MAX = 4096


def _shared(key, make=None):
    """One shared instance per ``key`` (``make()`` builds it); never mutate the result."""
    value = _SHARED.get(key)
    if value is None:
        value = make() if make is not None else key
        if len(_SHARED) < _SHARED_MAX:
            _SHARED[key] = value
    return value


def _sharedStr(value):
    return _shared(("s", value), lambda: value) if isinstance(value, str) else value


def _trimOwner(ref):
    return {"apiVersion": _sharedStr(ref.get("apiVersion")), "kind": _sharedStr(ref.get("kind")),
            "name": ref.get("name"), "uid": ref.get("uid"), "controller": True}


def _strItems(value):
    """A dict's string items as a hashable key (other values are dropped)."""
    return tuple(sorted((k, v) for k, v in (value or {}).items()
                        if isinstance(k, str) and isinstance(v, str)))


def trimChallenge(obj):
    """Keep only the fields the resolver reads, sharing what Challenges share.

    A Challenge carries the issuer's whole webhook ``config`` and a status;
    the trimmed form keeps the identity, the controller ownerReference, and
    the ``spec`` fields matched on (about 1.3 KiB each in CPython, see
    ``bench/bench_resolve.py``).
    """
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    trimmed = {key: meta[key] for key in ("name", "uid", "resourceVersion", "deletionTimestamp")
               if key in meta}
    if "namespace" in meta:
        trimmed["namespace"] = _sharedStr(meta["namespace"])
    owners = [_trimOwner(ref) for ref in meta.get("ownerReferences") or ()
              if isinstance(ref, dict) and ref.get("controller")]
    if owners:
        trimmed["ownerReferences"] = owners
    trimmedSpec = {key: spec[key] for key in ("key", "dnsName", "wildcard") if key in spec}
    if isinstance(spec.get("issuerRef"), dict):
        items = _strItems(spec["issuerRef"])
        trimmedSpec["issuerRef"] = _shared(("issuerRef",) + items, lambda: dict(items))
    webhook = _strItems({key: value for key, value in (
        _get(spec, "solver", "dns01", "webhook") or {}).items()
        if key in ("groupName", "solverName")})
    strategy = _get(spec, "solver", "dns01", "cnameStrategy")
    strategy = strategy if isinstance(strategy, str) else None
    if webhook:
        trimmedSpec["solver"] = _shared(("solver", strategy) + webhook,
                                        lambda: _trimmedSolver(webhook, strategy))
    return {"metadata": trimmed, "spec": trimmedSpec}


def _trimmedSolver(webhook, strategy):
    dns01 = {"webhook": dict(webhook)}
    if strategy is not None:
        dns01["cnameStrategy"] = strategy
    return {"dns01": dns01}


def followsCNAME(challenge):
    """Whether cert-manager follows CNAMEs for this Challenge (``cnameStrategy: Follow``):
    only then may a request's ``resolvedFQDN`` differ from ``_acme-challenge.<dnsName>``."""
    return _get(challenge, "spec", "solver", "dns01", "cnameStrategy") == "Follow"


def challengeKeys(obj):
    """The ``key`` index function: a Challenge is found by its ``spec.key``."""
    key = _get(obj, "spec", "key")
    return [key] if isinstance(key, str) and key else []


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ChallengeQuery:
    """What identifies one Challenge in a request (SPEC §2: dnsName + key)."""

    key: str
    dnsName: str
    resourceNamespace: str
    groupName: str
    solverName: str

    def matches(self, obj):
        """Key, dnsName and webhook match, and the namespace is possible.

        A namespaced ``Issuer``'s requests always carry the Challenge's own
        namespace as ``resourceNamespace``, so an Issuer Challenge elsewhere
        cannot be the one asked about (only ClusterIssuer Challenges can).
        """
        spec = obj.get("spec") or {}
        webhook = _get(spec, "solver", "dns01", "webhook") or {}
        issuerKind = _get(spec, "issuerRef", "kind") or "Issuer"
        return (spec.get("key") == self.key
                and bareName(spec.get("dnsName") or "") == bareName(self.dnsName)
                and webhook.get("groupName") == self.groupName
                and webhook.get("solverName") == self.solverName
                and (issuerKind != "Issuer"
                     or _get(obj, "metadata", "namespace") == self.resourceNamespace))

    def pick(self, candidates):
        """The best matching Challenge among ``candidates``, or ``None``.

        Let's Encrypt reuses a pending authorization for the same account and
        name, so two Orders (say, two namespaces behind one ClusterIssuer) can
        hold Challenges with the same key.  Prefer ``resourceNamespace``, then
        Challenges not being deleted, then a stable order, and say so in the log.
        """
        matching = [obj for obj in candidates if self.matches(obj)]
        if not matching:
            return None
        matching.sort(key=lambda obj: (
            _get(obj, "metadata", "namespace") != self.resourceNamespace,
            _get(obj, "metadata", "deletionTimestamp") is not None,
            _get(obj, "metadata", "namespace") or "", _get(obj, "metadata", "name") or ""))
        if len(matching) > 1:
            _log.warn("{count} Challenges have key and dnsName {dnsName}: {names}; using {chosen}",
                      count=len(matching), dnsName=self.dnsName,
                      names=", ".join(describe("Challenge", obj) for obj in matching),
                      chosen=describe("Challenge", matching[0]))
        return matching[0]


def describe(kind, obj):
    """``Kind namespace/name`` as an operator would type it into kubectl."""
    return "%s %s/%s" % (kind, _get(obj, "metadata", "namespace"), _get(obj, "metadata", "name"))


def _challengeRef(obj):
    meta = obj.get("metadata") or {}
    return (meta.get("namespace"), meta.get("name"), meta.get("uid"))
