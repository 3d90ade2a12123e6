"""The client side of the ingress drills: raw HTTP/1.1 over TLS (or not), on Twisted.

A drill must send bytes no HTTP client library would (broken framing, half a
request, a body trickled a byte at a time) and still know exactly what came
back, so this is a protocol of its own: write what it is given, parse every
response as it arrives, and say how the exchange ended:

* ``closed``: the server closed the connection (after answering, or not);
* ``kept``: every request on the wire has been answered and the connection
  stayed open for ``quiet`` seconds (a keep-alive connection at rest);
* ``timeout``: neither within ``timeout`` seconds: the server is waiting for
  something it will never get and has no deadline of its own (a defect);
* ``refused``/``failed``: the connection could not be made.

Responses are parsed as far as the drills need: status, ``Connection:
close``, the body (``Content-Length``, chunked, or until the close for
Twisted's bare ``400``), 1xx interim responses skipped.
"""
import os
import types

import attr
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionRefusedError

from bench.loadgen import ResponseError, parseResponse
from kibaship_dns01.testing.httpclient import clientTLSOptions

CLOSED, KEPT, TIMEOUT, REFUSED, FAILED = "closed", "kept", "timeout", "refused", "failed"


def loadPair(certFile, keyFile):
    """A client certificate pair from PEM files (what :func:`clientTLSOptions` takes)."""
    with open(certFile, "rb") as c, open(keyFile, "rb") as k:
        return types.SimpleNamespace(certPEM=c.read(), keyPEM=k.read())


@attr.s(frozen=True, auto_attribs=True)
class Answer:
    status: int
    close: bool
    body: bytes


def nextAnswer(buf, bodiless=False):
    """``(Answer, bytes consumed)`` for the first response in ``buf``; ``None`` when
    more bytes are needed; ``(Answer, None)`` for a response delimited by the close.
    ``bodiless``: the answer to a ``HEAD`` (headers only, whatever they announce)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    if not head.startswith(b"http/1."):
        raise ResponseError("not an HTTP/1.x response: %r" % bytes(buf[:60]))
    status = int(head[9:12])
    close = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
    if 100 <= status < 200 or bodiless:
        return Answer(status, close and status >= 200, b""), end + 4
    if b"\r\ncontent-length:" not in head and b"\r\ntransfer-encoding: chunked" not in head:
        return Answer(status, True, bytes(buf[end + 4:])), None
    # bench/loadgen.py's parser reads HTTP/1.1 only; the framing is the same in 1.0
    parsed = parseResponse(buf if head.startswith(b"http/1.1") else b"HTTP/1.1" + buf[8:])
    if parsed is None:
        return None
    status, body, consumed = parsed
    return Answer(status, close, body), consumed


class Exchange(protocol.Protocol):
    """Write ``steps`` (``(delay seconds, bytes)``, in order; ``None`` instead of bytes
    closes the connection), collect the answers.

    ``done`` fires ``(ending, [Answer])``.  ``expect`` answers (when known) end
    the exchange as ``kept`` once they are in and the line is quiet.
    """

    def __init__(self, clock, steps, timeout, quiet=0.5, expect=None):
        self.clock = clock
        self.bodiless = any(data and data.startswith(b"HEAD ") for _, data in steps)
        self.steps = list(steps)
        self.timeout = timeout
        self.quiet = quiet
        self.expect = expect
        self.answers = []
        self.buf = bytearray()
        self.done = defer.Deferred()
        self._timers = []
        self._quietCall = None

    track = onConnect = None

    def connectionMade(self):
        if self.track is not None:
            self.track.add(self)
        if self.onConnect is not None:
            self.onConnect()
        self._timers.append(self.clock.callLater(self.timeout, self._end, TIMEOUT))
        self._nextStep()

    def _nextStep(self):
        if not self.steps or self.done.called:
            self._maybeQuiet()
            return
        delay, data = self.steps.pop(0)
        if delay:
            self._timers.append(self.clock.callLater(delay, self._send, data))
        else:
            self._send(data)

    def _send(self, data):
        if self.done.called:
            return
        if data is None:  # the client lets go
            self.transport.loseConnection()
            return
        if data:
            self.transport.write(data)
        self._nextStep()

    def dataReceived(self, data):
        self.buf += data
        try:
            while True:
                parsed = nextAnswer(self.buf, self.bodiless)
                if parsed is None:
                    break
                answer, consumed = parsed
                if consumed is None:  # delimited by the close
                    break
                del self.buf[:consumed]
                if answer.status >= 200:
                    self.answers.append(answer)
        except (ResponseError, ValueError):
            self.answers.append(Answer(-1, True, bytes(self.buf[:200])))
            self.buf.clear()
        self._maybeQuiet()

    def _maybeQuiet(self):
        if self._quietCall is not None and self._quietCall.active():
            self._quietCall.cancel()
        if self.steps or self.buf or not self.answers:
            return
        if self.expect is not None and len(self.answers) < self.expect:
            return
        self._quietCall = self.clock.callLater(self.quiet, self._end, KEPT)

    def connectionLost(self, reason):
        if self.buf:
            try:
                parsed = nextAnswer(self.buf, self.bodiless)
            except (ResponseError, ValueError):
                parsed = (Answer(-1, True, bytes(self.buf[:200])), 0)
            if parsed is not None and parsed[0].status >= 200:
                self.answers.append(parsed[0])
        self._finish(CLOSED)

    def _end(self, how):
        self._finish(how)
        self.transport.abortConnection()

    def _finish(self, how):
        if self.track is not None:
            self.track.discard(self)
        for call in self._timers + [self._quietCall]:
            if call is not None and call.active():
                call.cancel()
        if not self.done.called:
            self.done.callback((how, self.answers))


class Dialer:
    """Opens connections to the daemon as one identity (a client certificate or none)."""

    def __init__(self, reactor, host, port, caPEM, clientPair=None, tls=True,
                 serverName="localhost"):
        self.reactor = reactor
        self.host, self.port = host, port
        self.options = clientTLSOptions(serverName, caPEM, clientPair) if tls else None

    def endpoint(self):
        tcp = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=10)
        return wrapClientTLS(self.options, tcp) if self.options is not None else tcp

    async def exchange(self, steps, timeout=15.0, quiet=0.5, expect=None, track=None,
                       onConnect=None):
        """One connection, ``steps`` written on it; :return: ``(ending, [Answer])``.

        ``track``: a set holding the protocol while its connection is open (to abort
        it from outside); ``onConnect``: called once the TCP connection is up."""
        proto = Exchange(self.reactor, steps, timeout, quiet, expect)
        proto.track, proto.onConnect = track, onConnect
        try:
            await connectProtocol(self.endpoint(), proto)
        except ConnectionRefusedError:
            return REFUSED, []
        except Exception as e:  # a TLS or socket failure before any byte
            return FAILED + ":" + type(e).__name__, []
        return await proto.done


class Session(protocol.Protocol):
    """A keep-alive connection sending one request at a time (what the kube-aggregator
    does); :meth:`send` fires the :class:`Answer`, or ``None`` if the connection ended
    first (which also ends the session: open a new one)."""

    def __init__(self):
        self.buf = bytearray()
        self.waiting = None
        self.open = False  # usable for the next request
        self.lost = False  # the connection is gone

    def connectionMade(self):
        self.open = True

    def send(self, data, clock, timeout):
        self.waiting = defer.Deferred()
        self.transport.write(data)
        timer = clock.callLater(timeout, self._timedOut)
        self.waiting.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return self.waiting

    def _timedOut(self):
        self.transport.abortConnection()

    def dataReceived(self, data):
        self.buf += data
        try:
            parsed = nextAnswer(self.buf)
        except (ResponseError, ValueError):
            parsed = (Answer(-1, True, bytes(self.buf[:200])), len(self.buf))
        if parsed is None or parsed[1] is None:
            return
        answer, consumed = parsed
        del self.buf[:consumed]
        if answer.status < 200:
            return self.dataReceived(b"")
        if answer.close:  # before answering: the caller must not send on it again
            self.open = False
            self.transport.loseConnection()
        self._answer(answer)

    def connectionLost(self, reason):
        self.open = False
        self.lost = True
        answer = None
        if self.buf:
            try:
                parsed = nextAnswer(self.buf)
                answer = parsed[0] if parsed is not None else None
            except (ResponseError, ValueError):
                answer = Answer(-1, True, bytes(self.buf[:200]))
        self._answer(answer)

    def _answer(self, answer):
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback(answer)


async def openSession(dialer):
    session = Session()
    await connectProtocol(dialer.endpoint(), session)
    return session


def identityFiles(workdir, name):
    return os.path.join(workdir, name + ".crt"), os.path.join(workdir, name + ".key")
