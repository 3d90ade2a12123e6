"""An ``ICNAMEChecker`` whose answers a test sets: :class:`FakeCNAMEChecker`."""
from twisted.internet import defer
from zope.interface import implementer

from kibaship_dns01.interfaces import ICNAMEChecker


@implementer(ICNAMEChecker)
class FakeCNAMEChecker:
    """Answers ``True`` for the (name, target) pairs in :attr:`delegating`, ``None``
    for names in :attr:`unknown` (resolvers that did not answer), ``False`` otherwise.
    Every call is recorded in :attr:`calls`."""

    def __init__(self):
        self.delegating = set()
        self.unknown = set()
        self.calls = []

    def delegate(self, name, target):
        """The user added ``name CNAME target``."""
        self.delegating.add((name, target))

    def check(self, name, target):
        self.calls.append((name, target))
        if name in self.unknown:
            return defer.succeed(None)
        return defer.succeed((name, target) in self.delegating)
