"""Decode cert-manager's ``ChallengePayload`` and encode our answer (SPEC §2).

The Go webhook library decodes leniently (unknown fields ignored) and echoes
the request; we do the same, but every *known* field must be what
cert-manager's challenge controller puts there (``ChallengeRequest`` in
``pkg/acme/webhook/apis/acme/v1alpha1``, filled by the DNS01 solver's
``buildChallengeRequest``): ``type`` ``"dns-01"``, ``dnsName`` the domain,
``key`` the ACME DNS-01 digest, ``resolvedFQDN``/``resolvedZone`` absolute
names with the FQDN inside the zone, ``resourceNamespace`` a namespace.
These values are published to a person ("add this TXT record at ..."), so a
value we never checked must not get that far: each refusal names the field
and what was expected, for a 400 ``Status``.
"""
import json
import re

from kibaship_dns01.api import jsonbody
from kibaship_dns01.challenge import ACTIONS, ChallengeRequest
from kibaship_dns01.names import dnsNameProblem, isDNS1123Label, isWithin

KIND = "ChallengePayload"
API_VERSION = "webhook.acme.cert-manager.io/v1alpha1"
DNS01 = "dns-01"

#: base64url (unpadded) of a SHA-256 digest: RFC 8555 §8.4
_ACME_KEY = re.compile(r"[A-Za-z0-9_-]{43}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SHOWN = 80  # characters of a refused value quoted back


class BadPayload(ValueError):
    """The body is not a valid ChallengePayload; ``str()`` says why (for a 400 Status)."""


def _loadObject(body):
    try:
        doc = jsonbody.loads(body)
    except jsonbody.BadJSON as e:
        raise BadPayload(str(e))
    if not isinstance(doc, dict):
        raise BadPayload(
            f"request body must be a JSON object (a ChallengePayload), not {_typeName(doc)}")
    return doc


def _typeName(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "a value")


def _shown(value):
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def _string(req, name, required=True):
    """``req[name]`` as a string; absent gives ``None`` unless required."""
    if name not in req:
        if required:
            raise BadPayload(f"request.{name} is missing")
        return None
    value = req[name]
    if not isinstance(value, str):
        raise BadPayload(f"request.{name} must be a string, not {_typeName(value)}")
    if required and not value:
        raise BadPayload(f"request.{name} must not be empty")
    return value


def _checkName(name, value, what, **rules):
    problem = dnsNameProblem(value, **rules)
    if problem:
        raise BadPayload(f"request.{name} must be {what}; {_shown(value)} {problem}")


def _checkAction(req):
    action = req.get("action")
    if action not in ACTIONS:
        shown = _shown(action) if isinstance(action, str) else _typeName(action)
        raise BadPayload(
            f"request.action must be one of {', '.join(ACTIONS)} (exact case), not {shown}")
    return action


def _checkFields(req):
    """Every known field, in the order a reader of the message would fix them."""
    if _string(req, "type") != DNS01:
        raise BadPayload(f'request.type must be "{DNS01}", not {_shown(req["type"])}')
    uid = _string(req, "uid", required=False) or ""
    if uid and not _UUID.fullmatch(uid):
        raise BadPayload(f"request.uid must be empty or a UUID, not {_shown(uid)}")
    _checkName("dnsName", _string(req, "dnsName"), "a DNS name (optionally *.-prefixed)",
               wildcard=True)
    key = _string(req, "key")
    if not _ACME_KEY.fullmatch(key):
        raise BadPayload(f"request.key must be an ACME DNS-01 value (43 base64url characters:"
                         f" the SHA-256 digest of the key authorization), not {_shown(key)}")
    namespace = _string(req, "resourceNamespace")
    if not isDNS1123Label(namespace):
        raise BadPayload(f"request.resourceNamespace must be a namespace name (lower-case "
                         f"DNS-1123 label), not {_shown(namespace)}")
    fqdn, zone = _string(req, "resolvedFQDN"), _string(req, "resolvedZone")
    _checkName("resolvedFQDN", fqdn, "an absolute DNS name", absolute=True)
    _checkName("resolvedZone", zone, "an absolute DNS name", absolute=True)
    if not isWithin(fqdn, zone):
        raise BadPayload(f"request.resolvedFQDN {_shown(fqdn)} is not inside "
                         f"request.resolvedZone {_shown(zone)}")
    ambient = req.get("allowAmbientCredentials", False)
    if not isinstance(ambient, bool):
        raise BadPayload(
            f"request.allowAmbientCredentials must be a boolean, not {_typeName(ambient)}")
    config = req.get("config")
    if config is not None and not isinstance(config, dict):
        raise BadPayload(f"request.config must be an object, not {_typeName(config)}")
    return uid, ambient, config


def decodeChallengeRequest(body):
    """Parse a request body into a :class:`ChallengeRequest` or raise :class:`BadPayload`."""
    doc = _loadObject(body)
    req = doc.get("request")
    if req is None:
        raise BadPayload('request body has no "request" object; expected a ChallengePayload')
    if not isinstance(req, dict):
        raise BadPayload(f'"request" must be an object, not {_typeName(req)}')
    action = _checkAction(req)
    uid, ambient, config = _checkFields(req)
    return ChallengeRequest(
        uid=uid, action=action, type=DNS01, dnsName=req["dnsName"], key=req["key"],
        resourceNamespace=req["resourceNamespace"], resolvedFQDN=req["resolvedFQDN"],
        resolvedZone=req["resolvedZone"], allowAmbientCredentials=ambient, config=config,
        raw=req)


def encodeResponse(request, message=None):
    """The 201 body: echo the request and add ``response``.

    ``message is None`` means success.  A failure always carries a non-empty
    message: cert-manager treats ``success:false`` without one as success.
    """
    response = {"uid": request.uid, "success": message is None}
    if message is not None:
        response["status"] = {
            "metadata": {}, "status": "Failure",
            "message": message or "the solver failed without saying why (this is a bug)",
        }
    return {"kind": KIND, "apiVersion": API_VERSION, "request": request.raw, "response": response}


_BODY_HEAD = ('{"kind":"%s","apiVersion":"%s","request":' % (KIND, API_VERSION)).encode()
_SUCCESS = b',"response":{"uid":"","success":true}}'


def responseBody(request, message=None):
    """:func:`encodeResponse` serialised, byte for byte what ``json.dumps`` with compact
    separators makes of it; the constant parts are encoded once, so an answer costs
    one ``json.dumps`` of the echoed request."""
    echo = json.dumps(request.raw, separators=(",", ":")).encode()
    if message is None and not request.uid:
        return _BODY_HEAD + echo + _SUCCESS
    response = encodeResponse(request, message)["response"]
    return (_BODY_HEAD + echo + b',"response":' +
            json.dumps(response, separators=(",", ":")).encode() + b"}")
