"""A Valkey node in memory, speaking RESP, for ``bench/bench_hotpath.py``.

The hot-path bench drives the daemon's request path without sockets; with the
fake publisher it leaves out the whole Valkey client (the cluster routing, the
connection's command encoding, the RESP reply parser, the Deferreds between
them), which is a good part of what a Present costs.  :class:`MemoryValkey`
keeps that client real: :meth:`endpoint` is a ``Node`` endpoint factory whose
connections are memory transports; every command written to one is parsed and
answered by this object, and the answers are held until :meth:`pump` delivers
them (as the reactor would, on a later turn: the client writes a command before
it records the Deferred waiting for the reply).

It answers what the publisher sends on its hot path: ``CLUSTER SLOTS`` (one
node serving every slot), ``AUTH``, ``PING``, ``WAIT`` and ``EVALSHA`` of the
append and probe scripts, with the scripts' semantics for the idempotency
record (a first append records it; a repeat or a probe finds it).  Anything
else is an error reply.  It is a bench fixture, not a Valkey: nothing is
stored but the records.
"""
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from kibaship_dns01.valkey.script import APPEND_SHA, APPENDED, DUPLICATE, MISSING, PROBE_SHA


def encode(value):
    """RESP2 encoding of ``value`` (``bytes``/``str`` bulk, ``int``, list, ``None``, an
    exception as an error reply)."""
    if isinstance(value, Exception):
        return b"-ERR %s\r\n" % str(value).encode()
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(encode(v) for v in value)


def parseCommands(data):
    """``(commands, rest)``: the complete RESP commands at the start of ``data``."""
    commands, at = [], 0
    while True:
        end = data.find(b"\r\n", at)
        if end < 0 or data[at:at + 1] != b"*":
            return commands, data[at:]
        count, pos, args = int(data[at + 1:end]), end + 2, []
        for _ in range(count):
            lineEnd = data.find(b"\r\n", pos)
            if lineEnd < 0:
                return commands, data[at:]
            size = int(data[pos + 1:lineEnd])
            if len(data) < lineEnd + 2 + size + 2:
                return commands, data[at:]
            args.append(data[lineEnd + 2:lineEnd + 2 + size])
            pos = lineEnd + 2 + size + 2
        commands.append(args)
        at = pos


class _Transport(StringTransport):
    def __init__(self, server, protocol):
        super().__init__()
        self._server, self._protocol, self._buffer = server, protocol, b""

    def write(self, data):
        # a probe of a record, or a repeated append, always gets the same answer:
        # remembered, so the fixture's own parsing is not what the bench measures
        server = self._server
        answer = server.answers.get(data) if not self._buffer else None
        if answer is None:
            commands, self._buffer = parseCommands(self._buffer + data)
            answers = [server.answer(args) for args in commands]
            answer = b"".join(encode(value) for value, _ in answers)
            if all(stable for _, stable in answers) and not self._buffer:
                server.answers[data] = answer
        server.queue.append((self._protocol, answer))


class _Endpoint:
    def __init__(self, server, address):
        self._server, self._address = server, address

    def connect(self, factory):
        protocol = factory.buildProtocol(self._address)
        protocol.makeConnection(_Transport(self._server, protocol))
        return defer.succeed(protocol)


class MemoryValkey:
    """See the module docstring."""

    def __init__(self, host="10.0.0.1", port=6379):
        self.address = (host, port)
        self.queue = []
        self.records = {}
        self.sequence = 0
        #: command bytes -> their answer, for answers that cannot change
        self.answers = {}

    def endpoint(self, reactor, address, target):
        """A ``Node`` endpoint factory (``endpointFactory=``)."""
        return _Endpoint(self, address)

    def pump(self):
        """Deliver every answer queued so far (and those they cause); :return: how many."""
        delivered = 0
        while self.queue:
            queue, self.queue = self.queue, []
            for protocol, data in queue:
                protocol.dataReceived(data)
            delivered += len(queue)
        return delivered

    def answer(self, args):
        """``(reply, stable)``: the reply to one command, and whether the same
        command will always get it."""
        name = args[0].upper()
        if name == b"CLUSTER":
            return [[0, 16383, [self.address[0], self.address[1], b"n1"]]], False
        if name in (b"AUTH", b"PING"):
            return (b"OK" if name == b"AUTH" else b"PONG"), False
        if name == b"WAIT":
            return 0, False
        if name == b"EVALSHA":
            return self._script(args[1].decode(), int(args[2]), args[3:])
        return ValueError("unknown command"), False

    def _script(self, sha, nkeys, rest):
        keys = rest[:nkeys]
        if sha == PROBE_SHA:
            found = self.records.get(keys[0])
            if found is None:
                return [b"", 0, MISSING], False
            return [found[0], found[1], DUPLICATE], True
        if sha == APPEND_SHA:
            found = self.records.get(keys[2])
            if found is not None:
                return [found[0], found[1], DUPLICATE], True
            self.sequence += 1
            entry = b"1700000000000-%d" % self.sequence
            self.records[keys[2]] = (entry, self.sequence)
            return [entry, self.sequence, APPENDED], False
        return ValueError("unknown script %s" % (sha,)), False
