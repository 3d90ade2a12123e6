"""An in-memory ``IStreamPublisher`` with the real publisher's semantics.

:class:`FakeStreamPublisher` keeps one stream, sequence counter and set of
idempotency records per (target, project), validates arguments with the very
functions the real publisher uses, substitutes the sequence into the named
field exactly like the Lua script, and expires idempotency records after the
target's window on its clock.  ``tests/test_valkey_fake.py`` runs one
contract suite against this fake and against the real publisher on a live
cluster, so the two cannot drift apart.

Failures are programmable: :meth:`failNext` makes the next ``n`` appends (or
checks) fail with a given exception *without* appending - or, with
``afterAppend=True``, fail after appending, which is what a lost reply looks
like to the caller (a retry must then be a duplicate).
"""
import attr
from twisted.internet import defer, task
from zope.interface import implementer

from kibaship_dns01.interfaces import IStreamPublisher
from kibaship_dns01.valkey.publisher import AppendResult
from kibaship_dns01.valkey.script import (
    SEQUENCE_PLACEHOLDER, streamKey, validateAppend)


@attr.s(auto_attribs=True)
class _Failure:
    error: Exception
    remaining: int
    afterAppend: bool


@attr.s(auto_attribs=True)
class _Project:
    entries: list = attr.Factory(list)       # [(entryId, {field: value})]
    sequence: int = 0
    records: dict = attr.Factory(dict)       # key -> (entryId, sequence, expiresAt)


@implementer(IStreamPublisher)
class FakeStreamPublisher:
    """See the module docstring."""

    def __init__(self, clock=None):
        self.clock = clock or task.Clock()
        self._projects = {}
        self._failures = {"append": [], "check": []}
        self._lastMs, self._lastSeq = -1, 0
        #: every call as ``(method, target, projectUUID, idempotencyKey)``
        self.calls = []

    # --- programming -----------------------------------------------------------

    def failNext(self, error, times=1, method="append", afterAppend=False):
        """Make the next ``times`` calls of ``method`` fail with ``error``."""
        self._failures[method].append(_Failure(error, times, afterAppend))

    def _takeFailure(self, method):
        queue = self._failures[method]
        if not queue:
            return None
        head = queue[0]
        head.remaining -= 1
        if head.remaining <= 0:
            queue.pop(0)
        return head

    # --- inspection ------------------------------------------------------------

    def entries(self, projectUUID, target=None):
        """``[(entryId, fields)]`` of a project's stream (any target if None)."""
        out = []
        for (t, p), project in self._projects.items():
            if p == projectUUID and (target is None or t == target):
                out.extend(project.entries)
        return out

    # --- IStreamPublisher ------------------------------------------------------

    def append(self, target, projectUUID, fields, idempotencyKey, sequenceField=None):
        return self.appendEvent(target, projectUUID, fields, idempotencyKey,
                                sequenceField).addCallback(lambda r: r.entryId)

    def appendEvent(self, target, projectUUID, fields, idempotencyKey, sequenceField=None):
        self.calls.append(("append", target, projectUUID, idempotencyKey))
        try:
            flat = validateAppend(projectUUID, idempotencyKey, fields, sequenceField)
        except ValueError as e:
            return defer.fail(e)
        failure = self._takeFailure("append")
        if failure is not None and not failure.afterAppend:
            return defer.fail(failure.error)
        result = self._appendOnce(target, projectUUID, flat, idempotencyKey, sequenceField)
        if failure is not None:
            return defer.fail(failure.error)
        return defer.succeed(result)

    def check(self, target):
        self.calls.append(("check", target, None, None))
        failure = self._takeFailure("check")
        return defer.fail(failure.error) if failure is not None else defer.succeed(None)

    # --- the script's semantics ------------------------------------------------

    def _appendOnce(self, target, projectUUID, flat, key, sequenceField):
        project = self._projects.setdefault((target, projectUUID), _Project())
        now = self.clock.seconds()
        record = project.records.get(key)
        if record is not None and record[2] > now:
            return AppendResult(record[0], record[1], True, streamKey(projectUUID))
        project.sequence += 1
        seq = project.sequence
        fields = {}
        for name, value in zip(flat[::2], flat[1::2]):
            if name == sequenceField:
                value = value.replace(SEQUENCE_PLACEHOLDER, str(seq), 1)
            fields[name] = value
        fields["sequence"] = str(seq)
        entryId = self._nextId(now)
        project.entries.append((entryId, fields))
        project.records[key] = (entryId, seq, now + target.idempotencyWindow)
        return AppendResult(entryId, seq, False, streamKey(projectUUID))

    def _nextId(self, now):
        """Stream ids as Valkey makes them: ``<ms>-<n>``, strictly increasing."""
        ms = int(now * 1000)
        if ms <= self._lastMs:
            ms, self._lastSeq = self._lastMs, self._lastSeq + 1
        else:
            self._lastSeq = 0
        self._lastMs = ms
        return "%d-%d" % (ms, self._lastSeq)
