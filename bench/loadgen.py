"""A small HTTPS load generator that costs little per request, in its own process.

    python bench/loadgen.py SPEC.json      # prints one JSON result line

Why not treq or ``http.client``: the generator must not be what limits a
benchmark of a server that answers in about a millisecond, so each request is
written as pre-serialised bytes on an already open keep-alive TLS connection,
and the response is parsed only as far as needed (status line,
``Content-Length`` or chunked framing, one substring check of the body).
Non-blocking ``ssl`` sockets under one ``selectors`` loop drive every
connection; all TLS handshakes finish before the clock starts.

Two modes:

- **closed loop** (``rate`` absent): each connection sends its next request as
  soon as the previous answer is in; the rate is the server's saturation rate
  at that many connections;
- **open loop** (``rate`` given): request ``i`` is due at ``start + i/rate``
  whatever the server does, goes out on the first idle connection (queueing
  when none is), and its latency counts from its *due* time, so a slow answer
  that delays later requests is charged to them too (no coordinated omission).

SPEC (JSON): ``host``, ``port``, ``serverName``, ``caFile``, ``certFile``,
``keyFile`` (the client certificate, optional), ``requestsFile`` (requests as
4-byte big-endian length + bytes, see :func:`writeRequests`), ``count`` (sent
in order, cycling through the file), ``connections``, ``rate`` (optional),
``expectStatus`` (default 201), ``expectBody`` (a substring every good answer
holds, optional), ``timeout`` (per request, seconds), ``deadline`` (whole run),
``gate`` (once connected, print ``{"connected": N}`` and wait for ``go`` on
stdin, so the caller can start measuring the server's CPU exactly then),
``retry`` and ``timeline`` (below).

**Retry mode** (``retry: {"base": s, "max": s}``, closed loop only) plays
cert-manager: each of the first ``count`` requests must succeed once; a failed
attempt (wrong status or body, connection trouble, no answer within
``timeout``) is sent again after an exponential backoff with equal jitter
(``base * 2**(failures-1)`` capped at ``max``, then a random point in its
upper half).  The run ends when every request has succeeded, or at
``deadline`` (the rest are ``gave_up``).

**Timeline** (``timeline``: a path): one JSON line per attempt,
``[index, since, sent, done, ok, code, why]`` (see :class:`Attempt`, read back
with :func:`readTimeline`), times on the system-wide ``time.monotonic()``
clock so a caller can line them up with what it did meanwhile.

The result: ``sent``, ``ok``, ``bad`` (wrong status or body), ``errors``
(connection trouble, timeouts), ``elapsed`` (first send to last answer),
``rate``, latency percentiles in milliseconds, ``cpu`` (this process's user +
system seconds during the measured window) and a sample of the first bad
answer; in retry mode also ``succeeded`` and ``gave_up`` (distinct requests).
"""
import array
import collections
import heapq
import json
import math
import random
import resource
import selectors
import socket
import ssl
import struct
import sys
import time

_LEN = struct.Struct(">I")
#: how much of a failed answer's message the timeline keeps
_WHY_CHARS = 300

#: one attempt of the timeline: request ``index``; ``since`` (when its latency
#: started counting: due time in open loop, else ``sent``), ``sent``, ``done``
#: (answer or failure) in ``time.monotonic()`` seconds; ``ok``; the HTTP
#: ``code`` (``None`` without an answer); ``why`` it failed (``None`` if ok)
Attempt = collections.namedtuple("Attempt", "index since sent done ok code why")


def readTimeline(path):
    """The :class:`Attempt` records a run wrote to its ``timeline`` file, in order."""
    with open(path) as f:
        return [Attempt(*json.loads(line)) for line in f if line.strip()]


def failureMessage(body):
    """What a failed answer says: the ChallengePayload's ``response.status.message``
    or a ``Status``'s ``message``, else the start of the body."""
    try:
        value = json.loads(body)
        status = value.get("response", {}).get("status") if "response" in value else value
        message = status.get("message")
        if isinstance(message, str):
            return message[:_WHY_CHARS]
    except (ValueError, AttributeError):
        pass
    return body[:_WHY_CHARS].decode("utf-8", "replace")


def writeRequests(path, requests):
    """Write request byte strings in the format ``requestsFile`` expects."""
    with open(path, "wb") as f:
        for req in requests:
            f.write(_LEN.pack(len(req)))
            f.write(req)


def readRequests(path):
    with open(path, "rb") as f:
        data = f.read()
    out, at = [], 0
    while at < len(data):
        (size,) = _LEN.unpack_from(data, at)
        out.append(data[at + 4:at + 4 + size])
        at += 4 + size
    return out


class ResponseError(Exception):
    """The server's answer is not HTTP/1.1 as expected."""


def parseResponse(buf):
    """``(status, body, consumed)`` for the first complete response in ``buf``,
    or ``None`` when more bytes are needed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    if not head.startswith(b"http/1.1 "):
        raise ResponseError("not an HTTP/1.1 response: %r" % bytes(buf[:60]))
    status = int(head[9:12])
    at = end + 4
    cl = head.find(b"\r\ncontent-length:")
    if cl >= 0:
        stop = head.find(b"\r\n", cl + 2)
        length = int(head[cl + 17:stop if stop >= 0 else len(head)])
        if len(buf) < at + length:
            return None
        return status, bytes(buf[at:at + length]), at + length
    if b"\r\ntransfer-encoding: chunked" in head:
        return _chunked(buf, status, at)
    raise ResponseError("response has neither Content-Length nor chunked framing")


def _chunked(buf, status, at):
    body = bytearray()
    while True:
        line = buf.find(b"\r\n", at)
        if line < 0:
            return None
        size = int(bytes(buf[at:line]).split(b";")[0], 16)
        at = line + 2
        if size == 0:
            trailer = buf.find(b"\r\n", at)  # no trailers expected: the blank line
            if trailer < 0:
                return None
            return status, bytes(body), trailer + 2
        if len(buf) < at + size + 2:
            return None
        body += buf[at:at + size]
        at += size + 2


class _Conn:
    """One keep-alive TLS connection and the request it has in flight."""

    def __init__(self, sock):
        self.sock = sock
        self.handshaken = False
        self.out = None       # memoryview of what is left to send
        self.inbuf = bytearray()
        self.index = None     # the request in flight
        self.since = None     # when its latency started counting
        self.sentAt = None    # when it was sent


class LoadGenerator:
    def __init__(self, spec, requests):
        self.spec = spec
        self.requests = requests
        self.count = int(spec["count"])
        self.rate = spec.get("rate")
        self.expectStatus = int(spec.get("expectStatus", 201))
        self.expectBody = spec.get("expectBody", "").encode()
        self.timeout = float(spec.get("timeout", 30))
        self.deadline = time.perf_counter() + float(spec.get("deadline", 600))
        self.sel = selectors.DefaultSelector()
        self.ctx = ssl.create_default_context(cafile=spec["caFile"])
        if spec.get("certFile"):
            self.ctx.load_cert_chain(spec["certFile"], spec["keyFile"])
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.latencies = array.array("d")
        self.sent = self.ok = self.bad = self.errors = 0
        self.sample = None
        self.idle = collections.deque()
        self.due = collections.deque()   # open loop: (index, due time) waiting for a connection
        self.conns = []
        retry = spec.get("retry")
        self.retry = (float(retry.get("base", 0.1)), float(retry.get("max", 2.0))) \
            if retry else None
        if self.retry and self.rate:
            raise ValueError("retry mode is closed loop only: give no rate")
        self.failures = {}    # retry mode: index -> failed attempts so far
        self.waiting = []     # retry mode: heap of (ready time, index)
        self.succeeded = 0
        self.gaveUp = 0
        self.timeline = open(spec["timeline"], "w") if spec.get("timeline") else None
        self._toMonotonic = time.monotonic() - time.perf_counter()

    # -- connections ------------------------------------------------------
    def _connect(self):
        raw = socket.create_connection((self.spec["host"], self.spec["port"]), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setblocking(False)
        sock = self.ctx.wrap_socket(raw, server_hostname=self.spec["serverName"],
                                    do_handshake_on_connect=False)
        conn = _Conn(sock)
        self.sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        self.conns.append(conn)
        return conn

    def _handshake(self, conn):
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self.sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        conn.handshaken = True
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
        self.idle.append(conn)

    def openAll(self, n):
        for _ in range(n):
            self._connect()
        while len(self.idle) < n:
            if time.perf_counter() > self.deadline:
                raise TimeoutError("TLS handshakes did not finish before the deadline")
            for key, _ in self.sel.select(1.0):
                if not key.data.handshaken:
                    self._handshake(key.data)

    def _drop(self, conn, why):
        """Connection trouble: count the request in flight as an error, reconnect.

        In retry mode a connection the server closed while idle loses nothing,
        so it is no error."""
        if conn.index is not None or self.retry is None:
            self.errors += 1
            if self.sample is None:
                self.sample = "connection error: %s" % (why,)
        if conn.index is not None:
            self._finished(conn, time.perf_counter(), False, None, "connection error: %s" % (why,))
        self.sel.unregister(conn.sock)
        conn.sock.close()
        self.conns.remove(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._connect()

    # -- requests ---------------------------------------------------------
    def _send(self, conn, index, since=None):
        """Send request ``index``; its latency counts from ``since`` (open loop: its
        due time), by default from now."""
        conn.sentAt = time.perf_counter()
        conn.index, conn.since = index, conn.sentAt if since is None else since
        conn.out = memoryview(self.requests[index % len(self.requests)])
        self.sent += 1
        self._flush(conn)

    def _flush(self, conn):
        try:
            while conn.out:
                n = conn.sock.send(conn.out)
                conn.out = conn.out[n:]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            return
        except OSError as e:
            self._drop(conn, e)
            return
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _readable(self, conn, now):
        try:
            while True:
                data = conn.sock.recv(65536)
                if not data:
                    self._drop(conn, "closed by the server")
                    return
                conn.inbuf += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError as e:
            self._drop(conn, e)
            return
        if conn.index is None:
            if conn.inbuf:
                self._drop(conn, "unsolicited bytes %r" % bytes(conn.inbuf[:60]))
            return
        try:
            parsed = parseResponse(conn.inbuf)
        except (ResponseError, ValueError) as e:
            self._drop(conn, e)
            return
        if parsed is not None:
            self._answered(conn, now, *parsed)

    def _answered(self, conn, now, status, body, consumed):
        del conn.inbuf[:consumed]
        self.latencies.append(now - conn.since)
        ok = status == self.expectStatus and self.expectBody in body
        if ok:
            self.ok += 1
        else:
            self.bad += 1
            if self.sample is None:
                self.sample = "HTTP %d: %s" % (status, body[:400].decode("utf-8", "replace"))
        self._finished(conn, now, ok, status, None if ok else failureMessage(body))
        conn.index = conn.since = None
        self.idle.append(conn)

    def _finished(self, conn, now, ok, code, why):
        """One attempt is over: write it to the timeline; retry mode: count a
        success, or schedule the next attempt after its backoff."""
        if self.timeline is not None:
            shift = self._toMonotonic
            self.timeline.write(json.dumps([conn.index, conn.since + shift, conn.sentAt + shift,
                                            now + shift, ok, code, why]) + "\n")
        if self.retry is None:
            return
        if ok:
            self.succeeded += 1
            return
        failures = self.failures[conn.index] = self.failures.get(conn.index, 0) + 1
        base, cap = self.retry
        delay = min(cap, base * 2 ** min(failures - 1, 30))
        heapq.heappush(self.waiting, (now + delay / 2 + random.random() * delay / 2, conn.index))

    def _complete(self):
        if self.retry is not None:
            return self.succeeded >= self.count
        return self.ok + self.bad + self.errors >= self.count

    def _retryDue(self, now):
        """Retry mode: a failed request whose backoff is over, or ``None``."""
        if self.waiting and self.waiting[0][0] <= now:
            return heapq.heappop(self.waiting)[1]
        return None

    def _timeouts(self, now):
        for conn in list(self.conns):
            if conn.since is not None and now - conn.since > self.timeout:
                self._drop(conn, "no answer within %gs" % self.timeout)

    # -- the loop ---------------------------------------------------------
    def run(self):
        self.openAll(int(self.spec["connections"]))
        if self.spec.get("gate"):
            # connected: let the caller start its own measurements, then go
            print(json.dumps({"connected": len(self.conns)}), flush=True)
            if sys.stdin.readline().strip() != "go":
                raise SystemExit("no go on stdin")
        cpu0 = _cpu()
        start = time.perf_counter()
        nextIndex = 0
        interval = 1.0 / float(self.rate) if self.rate else None
        last = start
        lastSweep = start
        while not self._complete():
            now = time.perf_counter()
            if now > self.deadline:
                if self.retry is not None:
                    self.gaveUp = self.count - self.succeeded
                else:
                    self.errors += self.count - (self.ok + self.bad + self.errors)
                self.sample = self.sample or "run deadline passed"
                break
            if interval is None:
                while self.idle:
                    index = self._retryDue(time.perf_counter())
                    if index is None:
                        if nextIndex >= self.count:
                            break
                        index, nextIndex = nextIndex, nextIndex + 1
                    self._send(self._takeIdle(), index)
                # a free connection waits for the next backoff to end, a busy one for answers
                wait = max(0.0, self.waiting[0][0] - time.perf_counter()) \
                    if self.waiting and self.idle else 1.0
            else:
                while nextIndex < self.count and start + nextIndex * interval <= now:
                    self.due.append((nextIndex, start + nextIndex * interval))
                    nextIndex += 1
                while self.idle and self.due:
                    self._send(self._takeIdle(), *self.due.popleft())
                wait = (max(0.0, start + nextIndex * interval - time.perf_counter())
                        if nextIndex < self.count else 1.0)
            for key, events in self.sel.select(min(wait, 1.0)):
                conn = key.data
                if not conn.handshaken:
                    self._handshake(conn)
                elif events & selectors.EVENT_WRITE and conn.out:
                    self._flush(conn)
                else:
                    self._readable(conn, time.perf_counter())
                last = time.perf_counter()
            if now - lastSweep > 1.0:
                self._timeouts(now)
                lastSweep = now
        cpu = _cpu() - cpu0
        for conn in self.conns:
            conn.sock.close()
        if self.timeline is not None:
            self.timeline.close()
        return self._result(last - start, cpu)

    def _takeIdle(self):
        conn = self.idle.popleft()
        while not conn.handshaken:  # a reconnect still in its handshake
            self.idle.append(conn)
            conn = self.idle.popleft()
        return conn

    def _result(self, elapsed, cpu):
        lat = sorted(self.latencies)
        done = self.ok + self.bad
        result = {"sent": self.sent, "ok": self.ok, "bad": self.bad, "errors": self.errors,
                  "elapsed": elapsed, "rate": done / elapsed if elapsed > 0 else 0.0,
                  "cpu": cpu, "connections": int(self.spec["connections"]),
                  "offered": self.rate, "sample": self.sample}
        if self.retry is not None:
            result.update(succeeded=self.succeeded, gave_up=self.gaveUp)
        for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)):
            result[name + "_ms"] = percentile(lat, q) * 1000 if lat else None
        result["max_ms"] = lat[-1] * 1000 if lat else None
        result["mean_ms"] = sum(lat) / len(lat) * 1000 if lat else None
        return result


def percentile(ordered, q):
    """The ``q`` quantile of an already sorted sequence (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(spec):
    """Run one load described by ``spec`` (a dict, see the module docstring)."""
    return LoadGenerator(spec, readRequests(spec["requestsFile"])).run()


def main(argv):
    with open(argv[0]) as f:
        spec = json.load(f)
    print(json.dumps(run(spec)), flush=True)  # always the last line


if __name__ == "__main__":
    main(sys.argv[1:])
