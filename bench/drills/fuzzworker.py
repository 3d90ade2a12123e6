"""One client process of ``bench/drills/fuzz.py``: draw hostile inputs, send them, tally.

    python bench/drills/fuzzworker.py SPEC.json     # prints one JSON result line

Inputs come from the suite's own hypothesis generators, drawn here with a
bigger budget (``counts`` per class, ``seed`` per worker):

* ``payload``: :func:`~kibaship_dns01.testing.hostile.payloadCases` of the
  main Challenge's ChallengePayload, POSTed by cert-manager through the front
  proxy (the authorized caller) over kept-alive connections;
* ``http``: :func:`~kibaship_dns01.testing.hostilehttp.brokenRequests` of the
  same request, each on a connection of its own, plus a few inputs below HTTP
  (plain text on the TLS port, bytes that are not TLS, connections closed at once);
* ``credentials``: every identity that must be refused (no certificate, forged
  ``X-Remote-*`` headers, a certificate from an unknown CA or with a CN the
  front proxy does not have, bad bearer tokens, the front proxy vouching for a
  user RBAC does not allow) asking to present the *canary* Challenge, which no
  authorized input ever names: anything on its stream is a bypass.

Once drawn, the worker prints ``{"ready": N, "part": 0}`` and waits for
``go`` on stdin (so every worker starts together), sends the first of its
``parts`` (sizes: a warm-up, then the rounds) through ``slots`` concurrent
lanes, prints the next ``part`` line and waits again (the caller reads the
daemon's memory between parts), and at the end prints the tally: ``{class: {label: {outcome: count}}}`` plus every
violation it saw itself (a 5xx, a refused identity answered 2xx, a
``success:false`` without a message, an exchange the server neither answered
nor closed).
"""
import base64
import collections
import json
import os
import random
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from twisted.internet import defer, task, threads  # noqa: E402

from bench.drills import wire  # noqa: E402
from kibaship_dns01.testing.hostile import payloadCases  # noqa: E402
from kibaship_dns01.testing.hostilehttp import brokenRequests, join, split, without  # noqa: E402

#: identities that must never be let in: (name, certificate, header rewrite)
FORGED = (b"X-Remote-User: system:serviceaccount:cert-manager:cert-manager",
          b"X-Remote-Group: system:masters")
REFUSED_IDENTITIES = {
    "front-proxy/other-user": ("front-proxy", "other-user"),
    "front-proxy/no-user": ("front-proxy", "strip"),
    "no-cert/anonymous": (None, "strip"),
    "no-cert/forged": (None, "forge"),
    "unknown-ca/forged": ("unknown-ca", "forge"),
    "wrong-cn/forged": ("wrong-cn", "forge"),
    "bearer/invalid": (None, "bearer"),
    "bearer/forged": (None, "bearer+forge"),
}
IDENTITY_HEADERS = (b"x-remote-user", b"x-remote-group")
#: below HTTP: (label, TLS?, what to send: bytes, PRESENT for the valid request in
#: plain text, or None to close at once)
PRESENT = "present"
WIRE_CASES = (
    ("wire/plain-http-on-tls-port", False, PRESENT),
    ("wire/random-bytes", False, os.urandom(64)),
    ("wire/tcp-close-at-once", False, None),
    ("wire/tls-close-at-once", True, None),
)


def withBody(request, body):
    """``request`` with ``body`` and a matching ``Content-Length``."""
    line, headers, _ = split(request)
    return join(line, without(headers, b"content-length") + [b"Content-Length: %d" % len(body)],
                body)


def rewriteIdentity(request, how):
    line, headers, body = split(request)
    extra = [h for h in headers if h.split(b":", 1)[0].lower().startswith(b"x-remote-extra-")]
    bare = [h for h in headers if h not in extra
            and h.split(b":", 1)[0].strip().lower() not in IDENTITY_HEADERS]
    if how == "other-user":
        added = [b"X-Remote-User: system:serviceaccount:tenant-a:intruder",
                 b"X-Remote-Group: system:authenticated"]
    elif how == "strip":
        added = []
    elif how == "forge":
        added = list(FORGED)
    else:  # bearer, bearer+forge
        added = [b"Authorization: Bearer " + base64.urlsafe_b64encode(os.urandom(24))]
        added += list(FORGED) if how.endswith("forge") else []
    return join(line, bare + added, body)


def getRequest(host, path):
    return b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n\r\n" % (path, host)


def draw(strategy, count, seedValue):
    """``count`` examples of ``strategy``, drawn by hypothesis (in rounds with fresh
    seeds if one round's search space runs dry before ``count``)."""
    out = []
    rounds = 0
    while len(out) < count and rounds < 20:
        @seed(seedValue + rounds)
        @settings(max_examples=count - len(out), deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(example=strategy)
        def collect(example):
            out.append(example)
        collect()
        rounds += 1
    return out[:count]


class Worker:
    def __init__(self, reactor, spec):
        self.reactor = reactor
        self.spec = spec
        with open(spec["caFile"], "rb") as f:
            caPEM = f.read()
        self.host = spec["host"].encode()
        self.present = base64.b64decode(spec["present"])
        self.canary = base64.b64decode(spec["canary"])
        self.timeout = spec["timeout"]
        pairs = {name: wire.loadPair(*files) for name, files in spec["identities"].items()}
        self.dialers = {name: wire.Dialer(reactor, spec["host"], spec["port"], caPEM, pair)
                        for name, pair in pairs.items()}
        self.dialers[None] = wire.Dialer(reactor, spec["host"], spec["port"], caPEM)
        self.plain = wire.Dialer(reactor, spec["host"], spec["port"], caPEM, tls=False)
        self.tally = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
        self.seconds = collections.defaultdict(lambda: [0.0, 0.0])  # label: [sum, max]
        self.violations = collections.Counter()  # (class, label, problem): count
        self.sessions = []
        self.samples = {}  # (class, label, problem): the first such exchange

    # -- drawing --------------------------------------------------------------
    def inputs(self):
        counts, base = self.spec["counts"], self.spec["seed"]
        out = []
        payload = self.spec["payload"]
        for label, body in draw(payloadCases(payload), counts.get("payload", 0), base):
            out.append(("payload", label, "front-proxy", withBody(self.present, body), False))
        httpCount = counts.get("http", 0)
        wireCount = min(httpCount, max(len(WIRE_CASES), httpCount // 50))
        for label, data in draw(brokenRequests(self.present), httpCount - wireCount, base + 1):
            out.append(("http", label, "front-proxy", data, True))
        for i in range(wireCount):
            label, tls, data = WIRE_CASES[i % len(WIRE_CASES)]
            out.append(("http", label, "wire-tls" if tls else "wire-plain",
                        self.present if data == PRESENT else data, True))
        canaryBodies = payloadCases(self.spec["canaryPayload"]).map(
            lambda case: withBody(self.canary, case[1]))
        targets = st.one_of(
            st.just(self.canary).map(lambda r: ("present", r)),
            canaryBodies.map(lambda r: ("mutated", r)),
            st.sampled_from((b"/apis/dns.kibaship.com/v1alpha1", b"/apis", b"/healthz",
                             b"/nonexistent")).map(
                lambda p: ("get " + p.decode(), getRequest(self.host, p))))
        cases = st.tuples(st.sampled_from(sorted(REFUSED_IDENTITIES)), targets, st.booleans())
        for name, (what, request), fresh in draw(cases, counts.get("credentials", 0), base + 2):
            cert, how = REFUSED_IDENTITIES[name]
            label = "%s %s" % (name, what if what.startswith("get") else "POST " + what)
            out.append(("credentials", label, cert, rewriteIdentity(request, how), fresh))
        random.Random(base).shuffle(out)
        return out

    # -- sending --------------------------------------------------------------
    async def run(self, inputs):
        queue = iter(inputs)
        lanes = [defer.ensureDeferred(self.lane(queue)) for _ in range(self.spec["slots"])]
        await defer.gatherResults(lanes, consumeErrors=True)
        for session in self.sessions:  # whatever a lane let go of but is not closed yet
            if session.transport is not None and not session.lost:
                session.transport.abortConnection()
        self.sessions = [s for s in self.sessions if not s.lost]

    async def lane(self, queue):
        sessions = {}
        for kind, label, identity, data, fresh in queue:
            started = self.reactor.seconds()
            if fresh or kind == "http":
                outcome = await self.exchange(identity, data)
            else:
                outcome = await self.onSession(sessions, identity, data)
            took = self.reactor.seconds() - started
            spent = self.seconds["%s %s" % (kind, label)]
            spent[0] += took
            spent[1] = max(spent[1], took)
            self.record(kind, label, outcome, data)
        for session in sessions.values():
            if session.open:  # as Go does: no waiting for the server's close_notify
                session.transport.abortConnection()

    async def exchange(self, identity, data):
        if identity == "wire-plain":
            dialer = self.plain
        elif identity == "wire-tls":
            dialer = self.dialers[None]
        else:
            dialer = self.dialers[identity]
        ending, answers = await dialer.exchange([(0, data)], timeout=self.timeout)
        return ending, answers

    async def onSession(self, sessions, identity, data):
        session = sessions.get(identity)
        if session is None or not session.open:
            try:
                session = sessions[identity] = await wire.openSession(self.dialers[identity])
            except Exception as e:
                return wire.FAILED + ":" + type(e).__name__, []
            self.sessions.append(session)
        answer = await session.send(data, self.reactor, self.timeout)
        if answer is None:
            return wire.CLOSED, []
        return (wire.CLOSED if answer.close else wire.KEPT), [answer]

    # -- tallying -------------------------------------------------------------
    def record(self, kind, label, outcome, data):
        ending, answers = outcome
        problem = self.problem(kind, label, ending, answers)
        key = " ".join(_describe(a) for a in answers) or "no answer"
        if kind == "http":
            key += " (" + ending + ")"
        self.tally[kind][label][key] += 1
        if problem:
            what = (kind, label, problem)
            self.violations[what] += 1
            if what not in self.samples:
                self.samples[what] = {
                    "ending": ending, "answers": [_describe(a) for a in answers],
                    "first": answers[0].body[:300].decode("utf-8", "replace") if answers else "",
                    "sent": (data or b"")[:300].decode("latin-1")}

    @staticmethod
    def problem(kind, label, ending, answers):
        if ending == wire.TIMEOUT:
            return "neither answered nor closed within the client's timeout"
        if ending.startswith(wire.FAILED) and kind != "http":
            return "connection failed: " + ending
        for a in answers:
            if a.status < 0:
                return "unparseable response"
            if a.status >= 500 and a.status != 503:
                return "HTTP %d" % a.status
            if a.status == 201:
                try:
                    response = json.loads(a.body)["response"]
                except (ValueError, KeyError, TypeError):
                    return "201 without a response object"
                if not response.get("success") and not (
                        response.get("status") or {}).get("message"):
                    return "success:false without a message"
        if kind == "payload" and not answers:
            return "no answer"
        if kind == "credentials":
            # /healthz needs no authentication, but a credential that fails is still 401;
            # a body announced over the limit is refused (413) before anything else
            allowed = (200, 401) if label.endswith("get /healthz") else (401, 403, 413)
            for a in answers:
                if a.status not in allowed:
                    return "HTTP %d for an identity that must be refused" % a.status
        return None

    def result(self, elapsed, cpu, sent):
        return {"tally": {k: {label: dict(c) for label, c in v.items()}
                          for k, v in self.tally.items()},
                "violations": [{"class": k, "label": label, "problem": problem, "count": n,
                                "sample": self.samples[(k, label, problem)]}
                               for (k, label, problem), n in self.violations.items()],
                "seconds": dict(self.seconds), "elapsed": elapsed, "cpu": cpu, "sent": sent}


def _describe(answer):
    if answer.status == 201:
        try:
            ok = json.loads(answer.body)["response"]["success"]
        except (ValueError, KeyError, TypeError):
            return "201?"
        return "201 success" if ok else "201 failure"
    return str(answer.status)


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(reactor, specPath):
    with open(specPath) as f:
        spec = json.load(f)
    worker = Worker(reactor, spec)
    inputs = worker.inputs()
    cpu = elapsed = 0.0
    at = 0
    for i, size in enumerate(spec.get("parts") or [len(inputs)]):
        # every part waits for "go": the caller reads the daemon's memory in between
        print(json.dumps({"ready": len(inputs), "part": i}), flush=True)
        # in a thread: the last exchange of a part may still be closing its connection
        if (await threads.deferToThread(sys.stdin.readline)).strip() != "go":
            raise SystemExit("no go on stdin")
        cpu0, t0 = _cpu(), time.monotonic()
        await worker.run(inputs[at:at + size])
        at += size
        cpu, elapsed = cpu + _cpu() - cpu0, elapsed + time.monotonic() - t0
    print(json.dumps(worker.result(elapsed, cpu, len(inputs))), flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1])))
