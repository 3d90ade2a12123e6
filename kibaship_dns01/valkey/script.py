"""The idempotent append, as one server-side Lua script (SPEC §7).

All three keys carry the project's hash tag ``{project:<uuid>}``, so they
live in one slot and the script runs atomically on its primary:

* ``{project:<uuid>}:events`` - the stream,
* ``{project:<uuid>}:sequence`` - the per-project counter behind ``sequence``,
* ``{project:<uuid>}:idempotency:<key>`` - ``"<entry id> <sequence>"`` with a
  TTL of the idempotency window.

If the idempotency record exists the script returns it (``duplicate=1``) and
appends nothing.  Otherwise it INCRs the counter, XADDs the fields plus
``sequence``, records the id, and returns it.  Retrying after a lost reply, a
failover or a durability failure is therefore always safe.

Sequence substitution: the event's ``event_data`` JSON must carry the same
number in ``metadata.sequence_number``, but the number exists only inside the
script.  The caller puts :data:`SEQUENCE_TOKEN` as a JSON *string* where the
number belongs (``json.dumps({"sequence_number": SEQUENCE_TOKEN})`` yields
``"sequence_number": "__kibaship_sequence__"``) and names that field; the
script replaces the one quoted occurrence ``"__kibaship_sequence__"`` with
the bare number (a plain, non-pattern ``string.find``), so the stored JSON has
``"sequence_number": 42``.  A missing or repeated token is refused before the
counter moves, both here and in the script.

The script is sent with ``EVALSHA``; on ``NOSCRIPT`` (a new primary after a
failover, ``SCRIPT FLUSH``, a restart) it is loaded with ``SCRIPT LOAD`` and
``EVALSHA`` is repeated on the same connection, pipelined.

The mark (optional fourth key)
------------------------------
Progress events (:mod:`kibaship_dns01.progress`) need a fact every replica
can see: "a Present for this Certificate was appended".  A :class:`MarkOp`
names a hash ``{project:<uuid>}:cert:<namespace>/<name>`` (same hash tag,
same slot) and either

* ``set``: with a fresh append, ``HSET`` its field/value pairs and
  ``PEXPIRE`` the hash (written atomically with the Present), or
* ``require``: append only if ``HGET <field>`` equals a value; otherwise
  append nothing and answer ``skipped`` (status 2).

Its words travel at the *end* of ``ARGV`` followed by their count, so a call
without a mark has exactly the layout above.
"""
import hashlib

import attr

from kibaship_dns01 import metrics
from kibaship_dns01.valkey import replies
from kibaship_dns01.valkey.replies import ServerError

SEQUENCE_TOKEN = "__kibaship_sequence__"
#: what the script looks for: the token as a JSON string, quotes included
SEQUENCE_PLACEHOLDER = '"%s"' % (SEQUENCE_TOKEN,)

APPEND_SCRIPT = r"""
-- KEYS[1] stream, KEYS[2] sequence counter, KEYS[3] idempotency record
-- ARGV[1] record TTL in ms
-- ARGV[2] '1': rewrite a found record (KEEPTTL) so WAIT covers a duplicate
-- ARGV[3] field whose value holds the placeholder ('' for none)
-- ARGV[4] the placeholder; ARGV[5..] field/value pairs
-- KEYS[4] (optional) a mark hash: then ARGV ends with its words and their count,
--   'set' <ttl ms> <field> <value>... or 'require' <field> <value>
local lastField, mark = #ARGV, nil
if #KEYS == 4 then
  local n = tonumber(ARGV[#ARGV])
  lastField = #ARGV - n - 1
  mark = {unpack(ARGV, lastField + 1, #ARGV - 1)}
end
local record = redis.call('GET', KEYS[3])
if record then
  if ARGV[2] == '1' then redis.call('SET', KEYS[3], record, 'KEEPTTL') end
  local id, seq = string.match(record, '^(%S+) (%d+)$')
  return {id, tonumber(seq), 1}
end
if mark and mark[1] == 'require' and redis.call('HGET', KEYS[4], mark[2]) ~= mark[3] then
  return {'', 0, 2}
end
local target, first, last = nil, nil, nil
if ARGV[3] ~= '' then
  for i = 5, lastField, 2 do
    if ARGV[i] == ARGV[3] then
      target = i + 1
      first, last = string.find(ARGV[target], ARGV[4], 1, true)
      if not first or string.find(ARGV[target], ARGV[4], last + 1, true) then
        return redis.error_reply('KIBASHIP_PLACEHOLDER field ' .. ARGV[3] ..
          ' must contain the sequence placeholder exactly once')
      end
    end
  end
  if not target then
    return redis.error_reply('KIBASHIP_PLACEHOLDER field ' .. ARGV[3] .. ' is missing')
  end
end
local seq = redis.call('INCR', KEYS[2])
local seqText = string.format('%d', seq)
local entry = {}
for i = 5, lastField, 2 do
  local value = ARGV[i + 1]
  if i + 1 == target then
    value = string.sub(value, 1, first - 1) .. seqText .. string.sub(value, last + 1)
  end
  entry[#entry + 1] = ARGV[i]
  entry[#entry + 1] = value
end
entry[#entry + 1] = 'sequence'
entry[#entry + 1] = seqText
local id = redis.call('XADD', KEYS[1], '*', unpack(entry))
redis.call('SET', KEYS[3], id .. ' ' .. seqText, 'PX', ARGV[1])
if mark and mark[1] == 'set' then
  redis.call('HSET', KEYS[4], unpack(mark, 3))
  redis.call('PEXPIRE', KEYS[4], mark[2])
end
return {id, seq, 0}
"""

APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode("utf-8")).hexdigest()

#: A retried Present or CleanUp the daemon has seen appended asks only this:
#: is the idempotency record still there?  It costs no event to build and no
#: fields to send; when the record is gone (its window passed, a failover lost
#: it) the caller appends in full.
PROBE_SCRIPT = r"""
-- KEYS[1] idempotency record; ARGV[1] '1': rewrite it (KEEPTTL) so WAIT covers it
local record = redis.call('GET', KEYS[1])
if not record then return {'', 0, 3} end
if ARGV[1] == '1' then redis.call('SET', KEYS[1], record, 'KEEPTTL') end
local id, seq = string.match(record, '^(%S+) (%d+)$')
return {id, tonumber(seq), 1}
"""

PROBE_SHA = hashlib.sha1(PROBE_SCRIPT.encode("utf-8")).hexdigest()


def streamKey(projectUUID):
    return "{project:%s}:events" % (projectUUID,)


def sequenceKey(projectUUID):
    return "{project:%s}:sequence" % (projectUUID,)


def idempotencyKey(projectUUID, key):
    return "{project:%s}:idempotency:%s" % (projectUUID, key)


def markKey(projectUUID, namespace, certificate):
    """The mark hash of one Certificate (see the module docstring)."""
    return "{project:%s}:cert:%s/%s" % (projectUUID, namespace, certificate)


#: what the scripts answer: appended, duplicate (nothing appended), skipped
#: (a ``require`` mark did not hold, nothing appended), missing (the probe found
#: no record)
APPENDED, DUPLICATE, SKIPPED, MISSING = 0, 1, 2, 3


@attr.s(frozen=True, slots=True)
class MarkOp:
    """What an append does to the Certificate's mark hash (module docstring)."""

    key = attr.ib()
    mode = attr.ib(validator=attr.validators.in_(("set", "require")))
    words = attr.ib(converter=tuple)

    @classmethod
    def set(cls, key, fields, ttlSeconds):
        """With a fresh append: ``HSET key fields...`` and expire it after ``ttlSeconds``."""
        if not fields:
            raise ValueError("a mark needs at least one field")
        words = [str(max(1, int(ttlSeconds * 1000)))]
        for name, value in fields.items():
            words += [name, value]
        return cls(key, "set", words)

    @classmethod
    def require(cls, key, field, value):
        """Append only if the mark's ``field`` holds ``value``."""
        return cls(key, "require", (field, value))

    def arguments(self):
        """The words appended to ``ARGV`` (then their count)."""
        words = (self.mode,) + self.words
        return list(words) + [str(len(words))]


def validateProject(projectUUID):
    """The project id must keep every key in one hash tag."""
    if not isinstance(projectUUID, str) or not projectUUID or set("{}") & set(projectUUID):
        raise ValueError("project UUID %r cannot be used in a stream key: it must be a "
                         "non-empty string without braces" % (projectUUID,))


def validateAppend(projectUUID, idempotencyKey, fields, sequenceField=None):
    """Check an append's arguments; :return: the flat field list.

    Shared by the publisher and its fake so both refuse exactly the same calls.
    """
    validateProject(projectUUID)
    if not idempotencyKey:
        raise ValueError("an append needs a non-empty idempotency key")
    return flattenFields(fields, sequenceField)


def flattenFields(fields, sequenceField=None):
    """``fields`` (mapping or pairs) → a flat list of strings, validated.

    Refuses ``sequence`` (the script adds it), ``None`` values, an empty
    set of fields, and a ``sequenceField`` without exactly one placeholder.
    """
    pairs = list(fields.items()) if hasattr(fields, "items") else list(fields)
    if not pairs:
        raise ValueError("a stream entry needs at least one field")
    flat, names = [], set()
    for name, value in pairs:
        if name == "sequence":
            raise ValueError("field 'sequence' is set by the append script; do not pass it")
        if value is None:
            raise ValueError("field %r has no value" % (name,))
        value = value if isinstance(value, (str, bytes)) else str(value)
        names.add(name)
        flat += [name, value]
    if sequenceField is not None:
        if sequenceField not in names:
            raise ValueError("sequenceField %r is not among the fields" % (sequenceField,))
        value = dict(pairs)[sequenceField]
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if text.count(SEQUENCE_PLACEHOLDER) != 1:
            raise ValueError("field %r must contain %s exactly once" % (
                sequenceField, SEQUENCE_PLACEHOLDER))
    return flat


def scriptArguments(projectUUID, key, flatFields, windowSeconds, touch, sequenceField,
                    mark=None):
    """``(keys, args)`` for :data:`APPEND_SCRIPT`; ``mark`` is a :class:`MarkOp`."""
    keys = [streamKey(projectUUID), sequenceKey(projectUUID), idempotencyKey(projectUUID, key)]
    args = [str(max(1, int(windowSeconds * 1000))), "1" if touch else "0",
            sequenceField or "", SEQUENCE_PLACEHOLDER] + list(flatFields)
    if mark is not None:
        if not mark.key.startswith("{project:%s}:" % (projectUUID,)):
            raise ValueError("mark %r is not a key of project %s" % (mark.key, projectUUID))
        keys.append(mark.key)
        args += mark.arguments()
    return keys, args


def probeArguments(projectUUID, key, touch):
    """``(keys, args)`` for :data:`PROBE_SCRIPT`."""
    return [idempotencyKey(projectUUID, key)], ["1" if touch else "0"]


def runProbe(conn, keys, args, after=None):
    """:data:`PROBE_SCRIPT` as :func:`runAppend` runs the append script."""
    return runScript(conn, PROBE_SCRIPT, PROBE_SHA, keys, args, after)


def runAppend(conn, keys, args, after=None):
    """:data:`APPEND_SCRIPT` on ``conn``, see :func:`runScript`."""
    return runScript(conn, APPEND_SCRIPT, APPEND_SHA, keys, args, after)


def runScript(conn, script, sha, keys, args, after=None):
    """EVALSHA ``script`` on ``conn``; load it on NOSCRIPT and try once more.

    ``after`` is a command pipelined right behind every EVALSHA sent (the
    publisher's ``WAIT``), so an append with a durability check is one round
    trip, and on the NOSCRIPT path the check still follows the write it checks.
    Plain Deferreds, no coroutine: this runs for every append.

    :return: a Deferred of ``(entryId, sequence, status, afterReply)``, status
        one of :data:`APPENDED`, :data:`DUPLICATE`, :data:`SKIPPED`,
        :data:`MISSING`; ``afterReply`` is ``None`` without ``after``.
    """
    call = ("EVALSHA", sha, len(keys)) + tuple(keys) + tuple(args)
    d = _sendWith(conn, call, after)
    d.addErrback(_loadAndRetry, conn, script, call, after)
    return d.addCallback(_scriptReply)


def _scriptReply(replies_):
    (entryId, sequence, status), afterReply = replies_
    return str(entryId), int(sequence), int(status), afterReply


def _loadAndRetry(failure, conn, script, call, after):
    """On ``NOSCRIPT`` (a new primary, ``SCRIPT FLUSH``): ``SCRIPT LOAD`` and the call
    again, pipelined on the same connection."""
    failure.trap(ServerError)
    if replies.classify(failure.value.message) != replies.NOSCRIPT:
        return failure
    metrics.VALKEY_RETRIES.labels("noscript").inc()
    loaded = conn.send("SCRIPT", "LOAD", script)
    again = _sendWith(conn, call, after)

    def loadFailed(f):
        again.addErrback(lambda _: None)  # fails with NOSCRIPT; report the load error
        return f
    return loaded.addCallbacks(lambda _: again, loadFailed)


def _sendWith(conn, call, after):
    """Send ``call`` and, pipelined behind it, ``after``; a Deferred of both replies.

    Both are written before either reply is awaited; if ``call`` fails, the
    reply to ``after`` is dropped.
    """
    first = conn.send(*call)
    if not after:
        return first.addCallback(lambda reply: (reply, None))
    second = conn.send(*after)

    def firstFailed(f):
        second.addErrback(lambda _: None)
        return f
    return first.addCallbacks(
        lambda reply: second.addCallback(lambda afterReply: (reply, afterReply)), firstFailed)
