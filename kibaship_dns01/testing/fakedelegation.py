"""A verified fake of :class:`~kibaship_dns01.interfaces.IDelegationStore`.

Keys live in memory and expire on the fake's clock, as they do in Valkey.
Tests program how it fails: :meth:`FakeDelegationStore.failWith` makes every
call fail (Valkey unreachable), :meth:`FakeDelegationStore.hang` makes every
call wait forever (Valkey not answering; the caller's timeout must act), and
:meth:`FakeDelegationStore.recover` ends either.  Every call is recorded.
"""
from twisted.internet import defer
from zope.interface import implementer

from kibaship_dns01.delegation.names import isDelegationLabel
from kibaship_dns01.interfaces import IDelegationStore


@implementer(IDelegationStore)
class FakeDelegationStore:
    """Keys by label, each with its own expiry on ``clock``."""

    def __init__(self, clock):
        self.clock = clock
        self.calls = []
        #: ``{label: {key: expiry}}``
        self._keys = {}
        self._failure = None
        self._hanging = False
        #: the Deferreds handed out while hanging (a test may fire or inspect them)
        self.hung = []

    # -- programming ----------------------------------------------------------
    def failWith(self, exception):
        """Every call fails with ``exception`` until :meth:`recover`."""
        self._failure, self._hanging = exception, False

    def hang(self):
        """Every call returns a Deferred that never fires (unless cancelled)."""
        self._failure, self._hanging = None, True

    def recover(self):
        self._failure, self._hanging = None, False

    # -- IDelegationStore -----------------------------------------------------
    def add(self, label, key, ttl):
        self.calls.append(("add", label, key, ttl))
        self._checkLabel(label)
        return self._outcome(self._add, label, key, ttl)

    def withdraw(self, label, key):
        self.calls.append(("withdraw", label, key))
        return self._outcome(self._withdraw, label, key)

    def keys(self, label):
        self.calls.append(("keys", label))
        return self._outcome(self._live, label)

    # -- inside -----------------------------------------------------------------
    @staticmethod
    def _checkLabel(label):
        if not isDelegationLabel(label):
            raise ValueError("FakeDelegationStore.add: %r is not a delegation label (32 "
                             "lower-case base32 characters, delegation.names)" % (label,))

    def _add(self, label, key, ttl):
        self._keys.setdefault(label, {})[key] = self.clock.seconds() + ttl

    def _withdraw(self, label, key):
        self._keys.get(label, {}).pop(key, None)

    def _live(self, label):
        now = self.clock.seconds()
        held = self._keys.get(label, {})
        for key in [k for k, expiry in held.items() if expiry <= now]:
            del held[key]
        return list(held)

    def _outcome(self, action, *args):
        """``action(*args)``'s result, or the programmed failure or silence."""
        if self._failure is not None:
            return defer.fail(self._failure)
        if self._hanging:
            d = defer.Deferred()
            self.hung.append(d)
            return d
        return defer.succeed(action(*args))
