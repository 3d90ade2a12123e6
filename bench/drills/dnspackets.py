"""The hostile-packet sender of ``bench/drills/dns.py``, in a process of its own.

    python bench/drills/dnspackets.py SPEC.json     # prints JSON lines

Packets: ``pool`` cases drawn with the suite's own hypothesis generator
(:func:`~kibaship_dns01.testing.hostiledns.packetCases`: bit flips, cuts,
extensions, made-up counts, compression pointer loops, odd opcodes and
flags, OPT records of every size and version, answers in a query, random
bytes), its ``valid`` class left out; then, up to ``count``, random bit
flips (1 to 4 bits) of pool members, valid queries included (drawing all
100,000 with hypothesis would take minutes).  Every packet of two octets or
more carries its sequence number as its id, so an answer is matched to its
query.

Once drawn it prints ``{"ready": N}`` and waits for ``go`` on stdin, then
sends them over UDP from ``source`` to ``host:port`` at ``rate`` packets/s,
reads what comes back meanwhile and for ``drain`` s after the last, and
prints the tally: packets by class, answers by class and rcode, and the
*violations*: an answer that does not parse, is no response (QR clear),
carries no id we sent, or is larger than
:data:`~kibaship_dns01.testing.hostiledns.AMPLIFICATION` times its query
without being the TXT of a label with keys.
"""
import collections
import json
import os
import random
import select
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench.drills.fuzzworker import draw  # noqa: E402
from kibaship_dns01.testing.dnsmessages import readAnswer  # noqa: E402
from kibaship_dns01.testing.hostiledns import (  # noqa: E402
    AMPLIFICATION, amplifies, legitimateTXT, packetCases)

#: at most this many violations are kept as examples
SAMPLES = 5


def flipped(rng, packet):
    """``packet`` with 1 to 4 random bits flipped (an empty packet stays empty)."""
    out = bytearray(packet)
    for _ in range(rng.randint(1, 4) if out else 0):
        at = rng.randrange(len(out) * 8)
        out[at // 8] ^= 1 << (at % 8)
    return bytes(out)


def build(spec):
    """``[(class, packet)]``: the hostile pool, then bit flips of it up to ``count``."""
    cases = draw(packetCases(spec["zone"], spec["labels"]), spec["pool"], spec["seed"])
    hostile = [(kind, packet) for kind, packet in cases if kind != "valid"]
    rng = random.Random(spec["seed"])
    out = hostile[:spec["count"]]
    while len(out) < spec["count"]:
        kind, packet = rng.choice(cases)
        out.append(("flipped " + kind, flipped(rng, packet)))
    return [(kind, withID(packet, i)) for i, (kind, packet) in enumerate(out)]


def withID(packet, sequence):
    return sequence.to_bytes(4, "big")[2:] + packet[2:] if len(packet) >= 2 else packet


class Sender:
    def __init__(self, spec, packets):
        self.spec = spec
        self.packets = packets
        self.keyed = spec["keyed"]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((spec["source"], 0))
        self.sock.setblocking(False)
        self.target = (spec["host"], spec["port"])
        self.pending = {}  # id -> (query, class)
        self.sent = collections.Counter()
        self.answered = collections.Counter()
        self.rcodes = collections.Counter()
        self.violations = collections.Counter()
        self.samples = []
        self.sendErrors = 0
        self.largest = 0.0  # largest answer/query ratio seen outside the legitimate TXT

    def run(self):
        rate = float(self.spec["rate"])
        start = time.monotonic()
        for i, (kind, packet) in enumerate(self.packets):
            due = start + i / rate
            while True:
                wait = due - time.monotonic()
                if wait <= 0:
                    break
                self.receive(wait)
            self.send(kind, packet)
        sending = time.monotonic() - start
        end = time.monotonic() + self.spec["drain"]
        while time.monotonic() < end:
            self.receive(end - time.monotonic())
        return self.result(sending)

    def send(self, kind, packet):
        self.sent[kind] += 1
        if len(packet) >= 2:
            self.pending[packet[:2]] = (packet, kind)
        try:
            self.sock.sendto(packet, self.target)
        except OSError:
            self.sendErrors += 1

    def receive(self, timeout):
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        while readable:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:  # the ICMP error of a send: nobody listens
                self.violation("port unreachable", b"", b"")
                return
            self.judge(data)

    def judge(self, data):
        query, kind = self.pending.pop(data[:2], (None, None))
        if query is None:
            self.violation("an answer with an id never sent (or answered twice)", b"", data)
            return
        try:
            answer = readAnswer(data)
        except Exception:  # any parse failure is the finding
            self.violation("an answer that does not parse", query, data)
            return
        if not answer.message.answer:
            self.violation("a message without QR", query, data)
        self.answered[kind] += 1
        self.rcodes[answer.rcode] += 1
        if amplifies(query, data, answer, self.keyed):
            self.violation("an answer over %d times its query" % AMPLIFICATION, query, data)
        elif not legitimateTXT(answer, self.keyed):
            self.largest = max(self.largest, len(data) / len(query))

    def violation(self, what, query, data):
        self.violations[what] += 1
        if len(self.samples) < SAMPLES:
            self.samples.append({"what": what, "query": query.hex(), "answer": data.hex()})

    def result(self, sending):
        return {"sent": sum(self.sent.values()), "seconds": sending,
                "by_class": dict(self.sent), "answered_by_class": dict(self.answered),
                "answered": sum(self.answered.values()),
                "rcodes": {str(k): v for k, v in self.rcodes.items()},
                "send_errors": self.sendErrors, "largest_ratio": self.largest,
                "violations": dict(self.violations), "samples": self.samples}


def main(argv):
    with open(argv[0]) as f:
        spec = json.load(f)
    packets = build(spec)
    print(json.dumps({"ready": len(packets)}), flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go on stdin")
    print(json.dumps(Sender(spec, packets).run()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
