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
    SEQUENCE_PLACEHOLDER, scriptArguments, streamKey, validateAppend, validateProject)


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
    marks: dict = attr.Factory(dict)         # mark key -> ({field: value}, expiresAt)


@implementer(IStreamPublisher)
class FakeStreamPublisher:
    """See the module docstring."""

    def __init__(self, clock=None):
        self.clock = clock or task.Clock()
        self._projects = {}
        self._failures = {"append": [], "check": [], "read": [], "confirm": []}
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

    def appendEvent(self, target, projectUUID, fields, idempotencyKey, sequenceField=None,
                    mark=None, window=None):
        self.calls.append(("append", target, projectUUID, idempotencyKey))
        try:
            flat = validateAppend(projectUUID, idempotencyKey, fields, sequenceField)
            scriptArguments(projectUUID, idempotencyKey, flat, 1, False, sequenceField, mark)
        except ValueError as e:
            return defer.fail(e)
        failure = self._takeFailure("append")
        if failure is not None and not failure.afterAppend:
            return defer.fail(failure.error)
        result = self._appendOnce(target, projectUUID, flat, idempotencyKey, sequenceField,
                                  mark, window or target.idempotencyWindow)
        if failure is not None:
            return defer.fail(failure.error)
        return defer.succeed(result)

    def confirm(self, target, projectUUID, idempotencyKey):
        self.calls.append(("confirm", target, projectUUID, idempotencyKey))
        try:
            validateProject(projectUUID)
        except ValueError as e:
            return defer.fail(e)
        failure = self._takeFailure("confirm")
        if failure is not None:
            return defer.fail(failure.error)
        project = self._projects.get((target, projectUUID))
        record = project.records.get(idempotencyKey) if project is not None else None
        if record is None or record[2] <= self.clock.seconds():
            return defer.succeed(None)
        return defer.succeed(AppendResult(record[0], record[1], True, streamKey(projectUUID)))

    def forget(self, target, projectUUID, idempotencyKey):
        """Drop an idempotency record, as a failover that lost it would."""
        self._projects[(target, projectUUID)].records.pop(idempotencyKey)

    def readFields(self, target, projectUUID, key, fields):
        self.calls.append(("read", target, projectUUID, key))
        try:
            validateProject(projectUUID)
            if not key.startswith("{project:%s}:" % (projectUUID,)) or not fields:
                raise ValueError("readFields needs fields of a key of project %s" % (projectUUID,))
        except ValueError as e:
            return defer.fail(e)
        failure = self._takeFailure("read")
        if failure is not None:
            return defer.fail(failure.error)
        values = self.mark(target, projectUUID, key)
        return defer.succeed([values.get(f) for f in fields])

    def mark(self, target, projectUUID, key):
        """The live fields of a mark hash (``{}`` when absent or expired)."""
        project = self._projects.get((target, projectUUID))
        held = project.marks.get(key) if project is not None else None
        if held is None or held[1] <= self.clock.seconds():
            return {}
        return dict(held[0])

    def check(self, target):
        self.calls.append(("check", target, None, None))
        failure = self._takeFailure("check")
        return defer.fail(failure.error) if failure is not None else defer.succeed(None)

    # --- the script's semantics ------------------------------------------------

    def _appendOnce(self, target, projectUUID, flat, key, sequenceField, mark, window):
        project = self._projects.setdefault((target, projectUUID), _Project())
        now = self.clock.seconds()
        record = project.records.get(key)
        if record is not None and record[2] > now:
            return AppendResult(record[0], record[1], True, streamKey(projectUUID))
        if mark is not None and mark.mode == "require" and self.mark(
                target, projectUUID, mark.key).get(mark.words[0]) != mark.words[1]:
            return AppendResult("", 0, False, streamKey(projectUUID), skipped=True)
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
        project.records[key] = (entryId, seq, now + window)
        if mark is not None and mark.mode == "set":
            held = self.mark(target, projectUUID, mark.key)
            words = mark.words[1:]
            held.update(zip(words[::2], words[1::2]))
            project.marks[mark.key] = (held, now + int(mark.words[0]) / 1000.0)
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
