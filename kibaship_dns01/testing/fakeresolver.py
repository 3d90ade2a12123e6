"""A verified fake of :class:`~kibaship_dns01.interfaces.IProjectResolver`."""
from twisted.internet import defer
from zope.interface import implementer

from kibaship_dns01.interfaces import IProjectResolver


@implementer(IProjectResolver)
class FakeResolver:
    """Answers every request with ``outcome``: a ``ProjectContext`` or an exception.

    Records ``(request, defaultProjectUUID)`` for each call.
    """

    def __init__(self, outcome):
        self.outcome = outcome
        self.calls = []

    def resolve(self, request, defaultProjectUUID=None):
        self.calls.append((request, defaultProjectUUID))
        if isinstance(self.outcome, BaseException):
            return defer.fail(self.outcome)
        return defer.succeed(self.outcome)
