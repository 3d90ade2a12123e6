"""The decoded cert-manager ``ChallengeRequest`` (SPEC §2).

It lives at the bottom of the dependency graph: the HTTP layer produces it,
the solver, the resolver and the event builder consume it.  Nothing here does
I/O.
"""
import attr

from kibaship_dns01.names import bareName, challengeFQDN

PRESENT = "Present"
CLEANUP = "CleanUp"
ACTIONS = (PRESENT, CLEANUP)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class ChallengeRequest:
    """One ``request`` object as cert-manager sends it.

    ``raw`` is the request object exactly as received; the response echoes it
    verbatim so cert-manager sees what it sent.  ``config`` is the issuer's
    ``dns01.webhook.config`` (``None`` when the issuer has none); validating
    it is the solver's job, not the decoder's.
    """

    uid: str
    action: str
    type: str
    dnsName: str
    key: str
    resourceNamespace: str
    resolvedFQDN: str
    resolvedZone: str
    allowAmbientCredentials: bool
    config: object = None
    raw: dict = attr.ib(factory=dict, eq=False, repr=False)

    @property
    def operation(self):
        """The stream event's ``operation`` value: ``present`` or ``cleanup``."""
        return "present" if self.action == PRESENT else "cleanup"

    @property
    def delegated(self):
        """The record is not ``_acme-challenge.<dnsName>``: cert-manager followed a CNAME
        (``cnameStrategy: Follow``) to a name the user delegated the challenge to."""
        return bareName(self.resolvedFQDN) != challengeFQDN(self.dnsName)


class SolverError(Exception):
    """A solver failure whose message is meant for ``kubectl describe challenge``.

    The message must say what is wrong and what to fix; the HTTP layer places
    it in ``response.status.message`` verbatim.
    """

    def __init__(self, message, reason="unknown"):
        super().__init__(message)
        self.message = message
        #: a short machine label for metrics (``config``, ``resolve``, ``valkey`` ...)
        self.reason = reason
