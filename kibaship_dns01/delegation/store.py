"""The keys served at delegation labels, on the daemon's own Valkey cluster.

One sorted set per label, ``{delegation:<label>}:keys``: member = a challenge
key, score = when it stops being served (Unix milliseconds).  Why this shape:

* **every replica serves the same keys** - the DNS responder of each replica
  reads the set from the slot's primary, and a Present is only answered once
  its key was written there (with ``WAIT`` when ``--valkey-min-replicas`` asks
  for it, as appends do), so a 201 means "served";
* **nothing outlives its use** - each key carries its own expiry (the
  idempotency window), so a CleanUp that never came leaves nothing behind;
  expired members are pruned on every add and the whole set expires with its
  last key;
* **bounded** - at most :data:`MAX_KEYS` keys per label (the oldest go
  first): a (project, domain) has a handful of challenges at a time (apex,
  wildcard, a retried order), and a TXT answer must stay small.

**Reads are never cached** (a cache would serve what was read before a
Present's 201), but lookups of one label that arrive *before* its read is
sent share that read: :meth:`ValkeyDelegationStore.keys` queues them per
label and sends one ``ZRANGEBYSCORE`` per label at the end of the reactor
turn (``callLater(0)``: after every datagram that turn read).  A lookup that
arrives once the read is sent waits for the next one, so no answer comes
from a read sent before its query arrived - the same guarantee as a read per
query, at one Valkey round trip per label and turn.  Under saturation (many
queries for one label in each turn) that is most of the responder's CPU
saved (bench/README.md, ``bench/drills/dns.py``).

The store always uses the daemon's default Valkey (the ``--valkey-*`` flags),
never an issuer's: the responder has no issuer to ask, and a tenant's issuer
config must not decide where the platform's zone is read from.
"""
import hashlib

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from kibaship_dns01.interfaces import IDelegationStore
from kibaship_dns01.valkey.errors import ValkeyDurabilityError
from kibaship_dns01.valkey.script import runScript

#: keys kept per label
MAX_KEYS = 32

ADD_SCRIPT = r"""
-- KEYS[1] the label's keys; ARGV[1] now (ms), ARGV[2] expiry (ms), ARGV[3] key,
-- ARGV[4] most keys kept
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[3])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if extra > 0 then redis.call('ZPOPMIN', KEYS[1], extra) end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return {'', 0, 0}
"""
ADD_SHA = hashlib.sha1(ADD_SCRIPT.encode("utf-8")).hexdigest()

#: what a Valkey ACL user of the delegation store needs, beside the publisher's
#: rules (``kibaship_dns01.valkey.REQUIRED_ACL_RULES``)
DELEGATION_ACL_RULES = ("~{delegation:* +evalsha +eval +script|load +zadd +zremrangebyscore "
                        "+zcard +zpopmin +zrange +pexpireat +zrem +zrangebyscore +wait")


def keysKey(label):
    """The sorted set of ``label``'s keys (its own hash tag: labels spread over slots)."""
    return "{delegation:%s}:keys" % (label,)


def _ms(seconds):
    return str(int(seconds * 1000))


@implementer(IDelegationStore)
class ValkeyDelegationStore:
    """:class:`~kibaship_dns01.interfaces.IDelegationStore` on a Valkey cluster.

    :param publisher: the running :class:`~kibaship_dns01.valkey.ValkeyPublisher`
        (its cluster clients, routing and retries).
    :param target: ``() -> Deferred[ValkeyTarget]``: the daemon's default Valkey
        (asked each time: the password Secret is read through a cache).
    """

    def __init__(self, publisher, target, clock):
        self._publisher = publisher
        self._target = target
        self._clock = clock
        #: label -> the lookups waiting for its next read (not sent yet)
        self._waiting = {}
        self._sending = None

    def add(self, label, key, ttl):
        now = self._clock.seconds()
        args = (_ms(now), _ms(now + ttl), key, str(MAX_KEYS))
        return self._on(label, lambda conn, target: runScript(
            conn, ADD_SCRIPT, ADD_SHA, [keysKey(label)], args,
            after=_waitFor(target)).addCallback(_checkWait, target, label))

    def withdraw(self, label, key):
        return self._on(label, lambda conn, target: conn.send(
            "ZREM", keysKey(label), key).addCallback(lambda _: None))

    def keys(self, label):
        """The keys served at ``label``, from a read sent at the end of this reactor turn
        (shared with the other lookups of ``label`` this turn; see the module docstring).
        Cancelling the returned Deferred (the responder's timeout) leaves the read to
        the others."""
        waiters = self._waiting.get(label)
        if waiters is None:
            waiters = self._waiting[label] = []
            if self._sending is None:
                self._sending = self._clock.callLater(0, self._sendReads)
        waiter = defer.Deferred()
        waiters.append(waiter)
        return waiter

    def _sendReads(self):
        """One read per label looked up since the last turn; a lookup from now on
        waits for the next turn's read."""
        waiting, self._waiting, self._sending = self._waiting, {}, None
        for label, waiters in waiting.items():
            self._read(label).addBoth(_answerAll, waiters)

    def _read(self, label):
        now = _ms(self._clock.seconds())
        return self._on(label, lambda conn, target: conn.send(
            "ZRANGEBYSCORE", keysKey(label), "(" + now, "+inf", "LIMIT", "0",
            str(MAX_KEYS)).addCallback(_texts))

    def _on(self, label, op):
        """``op(connection, target)`` on the primary of ``label``'s slot."""
        d = defer.maybeDeferred(self._target)
        return d.addCallback(lambda target: self._publisher.execute(
            target, keysKey(label), lambda conn: op(conn, target)))


def _waitFor(target):
    """``WAIT`` pipelined behind an add when the target asks for replicas (half the
    read timeout, as the publisher's appends wait)."""
    if target.minReplicas <= 0:
        return None
    return ("WAIT", target.minReplicas, max(1, int(target.readTimeout * 500)))


def _checkWait(reply, target, label):
    acked = reply[3]
    if acked is not None and int(acked) < target.minReplicas:
        raise ValkeyDurabilityError(
            "the key served at delegation label %s reached %d of the %d required replicas; "
            "retrying is safe" % (label, int(acked), target.minReplicas))


def _answerAll(result, waiters):
    """Fire every waiting lookup with the read's keys or its failure (a cancelled one,
    already failed, ignores it)."""
    for waiter in waiters:
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)


def _texts(values):
    return tuple(v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
                 for v in values or ())
