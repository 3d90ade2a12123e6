"""A verified fake of :class:`~kibaship_dns01.interfaces.ISolver` that records calls."""
from twisted.internet import defer
from zope.interface import implementer

from kibaship_dns01.interfaces import ISolver


@implementer(ISolver)
class RecordingSolver:
    """Records every request; answers with ``outcome``.

    ``outcome`` is ``None`` (success), an exception instance (raised through
    the Deferred) or a Deferred returned as is (e.g. one that never fires).
    """

    def __init__(self, outcome=None):
        self.outcome = outcome
        self.calls = []

    def _answer(self, method, request):
        self.calls.append((method, request))
        if isinstance(self.outcome, defer.Deferred):
            return self.outcome
        if isinstance(self.outcome, BaseException):
            return defer.fail(self.outcome)
        return defer.succeed(None)

    def present(self, request):
        return self._answer("present", request)

    def cleanUp(self, request):
        return self._answer("cleanUp", request)
