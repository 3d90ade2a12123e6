"""Values shared by the authenticators, the authorizers and the HTTP layer."""
import attr

ANONYMOUS = "system:anonymous"
UNAUTHENTICATED = "system:unauthenticated"
AUTHENTICATED = "system:authenticated"
MASTERS = "system:masters"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class UserInfo:
    """An authenticated identity, as ``k8s.io/apiserver``'s ``user.Info``."""

    name: str
    groups: tuple = ()
    extra: tuple = ()  # sorted ((key, (values...)), ...) so the value is hashable
    uid: str = ""

    @property
    def extraDict(self):
        return {k: list(v) for k, v in self.extra}


ANONYMOUS_USER = UserInfo(name=ANONYMOUS, groups=(UNAUTHENTICATED,))


@attr.s(frozen=True, slots=True, auto_attribs=True)
class RequestAttributes:
    """What is being asked, in SubjectAccessReview terms.

    A resource request (the solver POST) carries group/version/resource; any
    other request is a non-resource request on ``path``.
    """

    user: UserInfo
    verb: str
    path: str
    resourceRequest: bool = False
    apiGroup: str = ""
    apiVersion: str = ""
    resource: str = ""
    name: str = ""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Decision:
    """The authorizer's answer.

    ``error`` is set when no decision could be reached (API server unreachable);
    the request is then refused with 503 rather than 403.
    """

    allowed: bool
    reason: str = ""
    error: str = ""


class Unauthenticated(Exception):
    """A credential was presented and failed verification: answer 401 with ``message``."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message
