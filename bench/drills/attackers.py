"""The slow and greedy clients of ``bench/drills/slowclients.py``, in a process of their own.

    python bench/drills/attackers.py SPEC.json

SPEC: ``host``, ``port``, ``caFile``, ``request`` (base64 of a valid
aggregator request, whose head the trickles send), ``interval`` (seconds
between trickled bytes or body chunks), ``hold`` (client-side limit per
connection) and ``modes`` (``{mode: connections}``).  Each connection slot
keeps one connection of its mode open, reconnecting as soon as the daemon
closes it, until ``stop`` arrives on stdin:

* ``head``: TLS, then the request head one byte per ``interval`` (slowloris);
* ``handshake``: plain TCP, the TLS ClientHello one byte per ``interval``;
* ``silent``: TLS, then nothing at all;
* ``body-over``: a head announcing 10 MiB, then 16 KiB per ``interval``;
* ``body-chunked``: a chunked head, then a 16 KiB chunk per ``interval``, forever;
* ``body-under``: a head announcing 1,000,000 bytes (under the limit), then
  16 KiB per ``interval``: what the daemon must buffer;
* ``idle``: TLS, one ``GET /healthz``, then a kept-alive connection at rest
  (no reconnect: for the memory an idle connection costs).

It prints ``{"up": N}`` once every slot has connected (each connection counts
once its TCP connection is up), then the tally after ``stop``: per mode the
connections opened, how they ended, the answers seen and how long the daemon
let them stay.
"""
import base64
import collections
import json
import os
import ssl
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from twisted.internet import defer, task, threads  # noqa: E402

from bench.drills import wire  # noqa: E402
from kibaship_dns01.testing.hostilehttp import join, split, without  # noqa: E402

CHUNK = 16 * 1024


def clientHello():
    """The bytes of a TLS ClientHello (what a client sends first)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def trickle(data, interval, limit):
    """One byte of ``data`` per ``interval`` seconds (at most ``limit`` steps)."""
    return [(interval if i else 0, data[i:i + 1]) for i in range(min(len(data), limit))]


def steps(mode, request, interval, hold):
    line, headers, _ = split(request)
    bare = without(headers, b"content-length", b"transfer-encoding")
    forever = int(hold / interval) + 1
    body = [(interval, b"x" * CHUNK)] * forever
    if mode == "head":
        return trickle(request.partition(b"\r\n\r\n")[0] + b"\r\n\r\n", interval, forever)
    if mode == "handshake":
        return trickle(clientHello(), interval, forever)
    if mode == "silent":
        return []
    if mode == "body-over":
        return [(0, join(line, bare + [b"Content-Length: %d" % (10 * 1024 * 1024)]))] + body
    if mode == "body-under":
        return [(0, join(line, bare + [b"Content-Length: 1000000"]))] + body
    if mode == "body-chunked":
        return [(0, join(line, bare + [b"Transfer-Encoding: chunked"]))] + [
            (interval, b"%x\r\n%s\r\n" % (CHUNK, b"x" * CHUNK))] * forever
    if mode == "idle":
        return [(0, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")]
    raise ValueError("unknown mode %r" % (mode,))


class Attack:
    def __init__(self, reactor, spec):
        self.reactor = reactor
        self.spec = spec
        with open(spec["caFile"], "rb") as f:
            caPEM = f.read()
        self.tls = wire.Dialer(reactor, spec["host"], spec["port"], caPEM)
        self.tcp = wire.Dialer(reactor, spec["host"], spec["port"], caPEM, tls=False)
        self.request = base64.b64decode(spec["request"])
        self.stopping = False
        self.live = set()
        self.connected = 0
        self.tally = collections.defaultdict(lambda: {
            "opened": 0, "endings": collections.Counter(), "answers": collections.Counter(),
            "held_sum": 0.0, "held_max": 0.0})

    async def slot(self, mode):
        interval, hold = self.spec["interval"], self.spec["hold"]
        plan = steps(mode, self.request, interval, hold)
        dialer = self.tcp if mode == "handshake" else self.tls
        first = True
        while not self.stopping:
            started = self.reactor.seconds()
            keep = mode == "idle"  # answered, then held open until stopped
            ending, answers = await dialer.exchange(
                plan, timeout=hold, quiet=hold if keep else 0.5, track=self.live,
                onConnect=self._connected if first else None)
            first = False
            held = self.reactor.seconds() - started
            t = self.tally[mode]
            t["opened"] += 1
            t["endings"][ending] += 1
            for a in answers:
                t["answers"][str(a.status)] += 1
            t["held_sum"] += held
            t["held_max"] = max(t["held_max"], held)
            if held < 0.5:  # refused or failed at once: do not spin
                await task.deferLater(self.reactor, 0.2, lambda: None)

    def _connected(self):
        self.connected += 1

    def stop(self):
        self.stopping = True
        for proto in list(self.live):
            if proto.transport is not None:
                proto.transport.abortConnection()

    def result(self):
        out = {}
        for mode, t in self.tally.items():
            out[mode] = {"opened": t["opened"], "endings": dict(t["endings"]),
                         "answers": dict(t["answers"]),
                         "held_mean": t["held_sum"] / max(t["opened"], 1),
                         "held_max": t["held_max"]}
        return out


async def main(reactor, specPath):
    with open(specPath) as f:
        spec = json.load(f)
    attack = Attack(reactor, spec)
    slots = [defer.ensureDeferred(attack.slot(mode))
             for mode, n in spec["modes"].items() for _ in range(n)]
    total = len(slots)
    for _ in range(int(spec.get("ramp", 60) / 0.1)):
        if attack.connected >= total:
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    print(json.dumps({"up": attack.connected, "of": total}), flush=True)
    await threads.deferToThread(sys.stdin.readline)  # "stop"
    attack.stop()
    await defer.DeferredList(slots)
    print(json.dumps(attack.result()), flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1])))
