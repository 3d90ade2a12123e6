"""A publisher whose Valkey commands wait until the test answers them.

For unit tests of code built on :meth:`ValkeyPublisher.execute
<kibaship_dns01.valkey.publisher.ValkeyPublisher.execute>` (the delegation
store): :class:`ManualPublisher` runs each ``op`` on a connection whose
``send(*command)`` records the command (with the key it was routed by) and
returns a Deferred that fires only when the test says, with
:meth:`SentCommand.answer` or :meth:`SentCommand.fail`.  So a test decides
when each reply arrives relative to every other call - what a real cluster,
answering in a millisecond, never lets a test arrange.
"""
import attr
from twisted.internet import defer


@attr.s(auto_attribs=True)
class SentCommand:
    """One command sent: the key it was routed by, its words, its pending reply."""

    key: str
    command: tuple
    reply: defer.Deferred

    def answer(self, value):
        self.reply.callback(value)

    def fail(self, exception):
        self.reply.errback(exception)


class _Connection:
    def __init__(self, publisher, key):
        self._publisher, self._key = publisher, key

    def send(self, *command):
        sent = SentCommand(self._key, command, defer.Deferred())
        self._publisher.sent.append(sent)
        return sent.reply


class ManualPublisher:
    """``execute(target, key, op)`` as the real publisher's, on a connection of
    :class:`SentCommand` records (:attr:`sent`, in order)."""

    def __init__(self):
        self.sent = []

    def execute(self, target, key, op):
        return defer.maybeDeferred(op, _Connection(self, key))

    def commands(self):
        """The words of every command sent so far."""
        return [sent.command for sent in self.sent]
