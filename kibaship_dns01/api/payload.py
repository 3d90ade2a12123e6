"""Decode cert-manager's ``ChallengePayload`` and encode our answer (SPEC §2).

The Go webhook library decodes leniently (unknown fields ignored) and echoes
the request; we do the same but refuse bodies whose *known* fields have the
wrong JSON type, naming the field, because a silently zero-valued ``key``
would make the solver publish nonsense.
"""
import json

from kibaship_dns01.challenge import ACTIONS, ChallengeRequest

KIND = "ChallengePayload"
API_VERSION = "webhook.acme.cert-manager.io/v1alpha1"

#: fields that must be non-empty strings for either action
_REQUIRED_STRINGS = ("dnsName", "key", "resourceNamespace", "resolvedFQDN", "resolvedZone")
_OPTIONAL_STRINGS = ("uid", "type")


class BadPayload(ValueError):
    """The body is not a valid ChallengePayload; ``str()`` says why (for a 400 Status)."""


def _loadObject(body):
    try:
        doc = json.loads(body)
    except UnicodeDecodeError:
        raise BadPayload("request body is not UTF-8 encoded JSON")
    except ValueError as e:
        raise BadPayload(f"request body is not valid JSON: {e}")
    if not isinstance(doc, dict):
        raise BadPayload(
            f"request body must be a JSON object (a ChallengePayload), not {_typeName(doc)}")
    return doc


def _typeName(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "a value")


def _checkType(req, name, expected, label):
    value = req[name]
    # bool is an int subclass; JSON true must not pass as a string or vice versa
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise BadPayload(f"request.{name} must be {label}, not {_typeName(value)}")


def decodeChallengeRequest(body):
    """Parse a request body into a :class:`ChallengeRequest` or raise :class:`BadPayload`."""
    doc = _loadObject(body)
    req = doc.get("request")
    if req is None:
        raise BadPayload('request body has no "request" object; expected a ChallengePayload')
    if not isinstance(req, dict):
        raise BadPayload(f'"request" must be an object, not {_typeName(req)}')
    action = req.get("action")
    if action not in ACTIONS:
        raise BadPayload(
            f"request.action must be one of {', '.join(ACTIONS)} (exact case), not {action!r}")
    for name in _OPTIONAL_STRINGS:
        if name in req:
            _checkType(req, name, str, "a string")
    if req.get("type", "dns-01") != "dns-01":
        raise BadPayload(f'request.type must be "dns-01", not {req["type"]!r}')
    for name in _REQUIRED_STRINGS:
        if name not in req:
            raise BadPayload(f"request.{name} is missing")
        _checkType(req, name, str, "a string")
        if not req[name]:
            raise BadPayload(f"request.{name} must not be empty")
    if "allowAmbientCredentials" in req:
        _checkType(req, "allowAmbientCredentials", bool, "a boolean")
    config = req.get("config")
    if config is not None and not isinstance(config, dict):
        raise BadPayload(f"request.config must be an object, not {_typeName(config)}")
    return ChallengeRequest(
        uid=req.get("uid", ""), action=action, type=req.get("type", "dns-01"),
        dnsName=req["dnsName"], key=req["key"], resourceNamespace=req["resourceNamespace"],
        resolvedFQDN=req["resolvedFQDN"], resolvedZone=req["resolvedZone"],
        allowAmbientCredentials=req.get("allowAmbientCredentials", False),
        config=config, raw=req,
    )


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
