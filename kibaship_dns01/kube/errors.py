"""Typed failures of the Kubernetes API layer.

Every failure the API server (or the path to it) can produce becomes one of
these, so callers branch on a class (``except NotFound``) instead of parsing
HTTP codes, and every message names the object involved and hints at the fix:
an operator reading a log line should know which RBAC rule or credential to
change without reading code.
"""


class KubeError(Exception):
    """A failed Kubernetes API call.

    :ivar message: human readable text naming the object.
    :ivar code: the HTTP status code (``None`` when no response arrived).
    :ivar reason: the ``Status.reason`` (``NotFound``, ``Expired``...) or ``None``.
    :ivar status: the Kubernetes ``Status`` dict as received or built, or ``None``.
    """

    defaultCode = None
    defaultReason = None
    hint = ""

    def __init__(self, message, code=None, reason=None, status=None):
        super().__init__(message)
        self.message = message
        self.code = self.defaultCode if code is None else code
        self.reason = self.defaultReason if reason is None else reason
        self.status = status

    def __str__(self):
        return self.message

    def __repr__(self):
        return "%s(%r, code=%r, reason=%r)" % (
            type(self).__name__, self.message, self.code, self.reason)


class NotFound(KubeError):
    defaultCode = 404
    defaultReason = "NotFound"


class Forbidden(KubeError):
    defaultCode = 403
    defaultReason = "Forbidden"
    hint = "grant the daemon's ServiceAccount this permission in its RBAC rules"


class Unauthorized(KubeError):
    defaultCode = 401
    defaultReason = "Unauthorized"
    hint = "check the ServiceAccount token or kubeconfig credentials"


class Gone(KubeError):
    """410: a resourceVersion or continue token is too old (``Expired``)."""

    defaultCode = 410
    defaultReason = "Expired"


class Conflict(KubeError):
    defaultCode = 409
    defaultReason = "Conflict"


class APITimeout(KubeError):
    """Our own deadline passed, or the server answered 504."""

    defaultCode = 504
    defaultReason = "Timeout"
    hint = "the API server did not answer in time"


class Unavailable(KubeError):
    """5xx, 429, or the connection failed / was lost: worth retrying later."""

    defaultCode = 503
    defaultReason = "ServiceUnavailable"
    hint = "the API server is unreachable or overloaded; retrying later may help"


_BY_CODE = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
            410: Gone, 504: APITimeout, 429: Unavailable}


def classForCode(code):
    """The exception class for an HTTP status ``code``."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if code is not None and 500 <= code < 600:
        return Unavailable
    return KubeError


def _statusMessage(statusDict):
    if isinstance(statusDict, dict):
        msg = statusDict.get("message")
        if isinstance(msg, str) and msg:
            return msg
    return None


def errorFromStatus(code, statusDict, what):
    """Build the right :class:`KubeError` subclass for a failed call.

    :param code: the HTTP status code; when ``None`` the ``code`` field of
        ``statusDict`` is used (watch ``ERROR`` events carry no HTTP code).
    :param statusDict: the decoded ``Status`` body, or ``None`` when the
        body was not a Status (e.g. a proxy's HTML error page).
    :param what: names the object or request, e.g.
        ``'GET /apis/acme.cert-manager.io/v1/namespaces/x/challenges/y'``.
    """
    if not isinstance(statusDict, dict):
        statusDict = None
    if code is None and statusDict is not None:
        code = statusDict.get("code")
    if not isinstance(code, int):
        code = None
    cls = classForCode(code)
    reason = statusDict.get("reason") if statusDict else None
    detail = _statusMessage(statusDict) or "HTTP %s" % (code if code else "error")
    message = "%s: %s" % (what, detail)
    extra = [str(code)] if code else []
    if reason:
        extra.insert(0, reason)
    if extra:
        message += " (%s)" % ", ".join(extra)
    if cls.hint:
        message += "; " + cls.hint
    return cls(message, code=code, reason=reason or None, status=statusDict)


def makeStatus(code, reason, message, details=None):
    """A Kubernetes ``Status`` failure body, exactly as the API server sends it."""
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {},
              "status": "Failure", "message": message, "reason": reason}
    if details:
        status["details"] = details
    status["code"] = code
    return status
