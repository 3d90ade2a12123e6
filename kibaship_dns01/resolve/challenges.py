"""Challenge objects: the trimmed cache form, the ``spec.key`` index, matching a request."""
import json
import sys

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


#: Canonical copies of small values most Challenges share (issuerRef, the webhook
#: solver, a chain's IssuerRef), bounded so odd input cannot grow it; strings
#: are interned instead (:func:`_sharedStr`).
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
    """The interned copy of a string that many cached objects hold (namespace,
    state, owner kind): held only while some object refers to it."""
    return sys.intern(value) if type(value) is str else value


def _trimOwner(ref):
    return {"apiVersion": _sharedStr(ref.get("apiVersion")), "kind": _sharedStr(ref.get("kind")),
            "name": ref.get("name"), "uid": ref.get("uid"), "controller": True}


def _strItems(value):
    """A dict's string items as a hashable key (other values are dropped)."""
    return tuple(sorted((k, v) for k, v in (value or {}).items()
                        if isinstance(k, str) and isinstance(v, str)))


#: what cert-manager reports in a Challenge's status and the progress events read
STATUS_FIELDS = ("state", "reason", "processing", "presented")


def _sharedWebhook(webhook, strategy=None):
    """The solver (webhook group, name, issuer config; ``cnameStrategy``) as one
    shared dict: every Challenge of one issuer carries the same."""
    names = tuple((key, webhook[key]) for key in ("groupName", "solverName")
                  if isinstance(webhook.get(key), str))
    config = webhook.get("config")
    configKey = json.dumps(config, sort_keys=True) if config is not None else None

    def make():
        value = dict(names)
        if config is not None:
            value["config"] = config
        dns01 = {"webhook": value}
        if strategy is not None:
            dns01["cnameStrategy"] = strategy
        return {"dns01": dns01}
    return _shared(("solver", strategy) + names + (configKey,), make)


def _statusWrittenAt(meta):
    """When cert-manager last wrote the status: the newest ``managedFields``
    entry for the ``status`` subresource (the API server records it)."""
    times = [entry.get("time") for entry in meta.get("managedFields") or ()
             if isinstance(entry, dict) and entry.get("subresource") == "status"
             and isinstance(entry.get("time"), str)]
    return max(times) if times else None


def _trimStatus(obj, meta):
    status = obj.get("status") or {}
    kept = {key: status[key] for key in STATUS_FIELDS if key in status}
    if "state" in kept:
        kept["state"] = _sharedStr(kept["state"])
    written = _statusWrittenAt(meta)
    if written:
        kept["writtenAt"] = written
    return kept


def trimChallenge(obj):
    """Keep only the fields the resolver and the progress events read.

    A Challenge carries managedFields and a long spec; the trimmed form keeps
    the identity, the controller ownerReference, the ``spec`` fields matched
    on and, for DNS01 webhook Challenges, the webhook's issuer config (one
    shared copy per issuer), ``creationTimestamp`` and the status
    (``state``, ``reason``, ``processing``, ``presented`` and when it was
    written).  See ``bench/bench_progress.py`` for the bytes per Challenge.
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
    dns01 = _get(spec, "solver", "dns01") or {}
    strategy = dns01.get("cnameStrategy") if isinstance(dns01, dict) else None
    strategy = strategy if isinstance(strategy, str) else None
    out = {"metadata": trimmed, "spec": trimmedSpec}
    webhook = dns01.get("webhook") if isinstance(dns01, dict) else None
    if isinstance(webhook, dict):
        trimmedSpec["solver"] = _sharedWebhook(webhook, strategy)
        if "creationTimestamp" in meta:
            trimmed["creationTimestamp"] = meta["creationTimestamp"]
        status = _trimStatus(obj, meta)
        if status:
            out["status"] = status
    return out


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
