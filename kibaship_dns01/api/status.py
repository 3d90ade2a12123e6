"""Kubernetes ``Status`` error bodies (SPEC §4).

Every error this server returns over HTTP is a ``Status`` so ``kubectl`` and
the kube-aggregator show a readable message instead of an opaque body.
"""
import json

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def statusBody(code, message, reason=None, details=None):
    """The ``Status`` object for an HTTP error ``code``."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, "InternalError"),
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def writeJSON(request, code, body):
    """Serialise ``body`` as the response with status ``code``; return the bytes.

    Returned rather than written so ``render_*`` methods can ``return`` it.
    """
    data = json.dumps(body, separators=(",", ":"), sort_keys=False).encode("utf-8")
    return writeBody(request, code, data)


def writeBody(request, code, data):
    """Answer ``code`` with JSON bytes ``data`` (already encoded); return them."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-cache, private")
    return data


def writeStatus(request, code, message, reason=None, details=None):
    """Answer with a ``Status`` error; return the body bytes."""
    return writeJSON(request, code, statusBody(code, message, reason, details))
