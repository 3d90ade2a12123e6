"""Hostile input drill (issue 12): a fixed budget of hostile inputs against the live daemon.

    python bench/drills/fuzz.py                       # 100,000 inputs, 4 client processes
    python bench/drills/fuzz.py --quick               # 3,000 inputs, a smoke run
    python bench/drills/fuzz.py --only payload --budget 20000   # issue 14's run

Starts the local environment (six-node Valkey cluster, stand-in Kubernetes API
with the Kibaship chain of ``localrun``) and the real ``twistd kibaship-dns01``
with its default flags, presents the main Challenge once (its one true
``present`` entry), adds a *canary* Challenge in a project of its own that no
authorized input ever names, then lets ``--workers`` processes
(``bench/drills/fuzzworker.py``) send the budget: mutated ChallengePayloads
as the authorized caller, broken HTTP, and refused identities (see that
module).  Afterwards it checks what the daemon did:

* every answer, tallied by class and status; any 5xx but a 503, any refused
  identity answered 2xx, any ``success:false`` without a message, any
  exchange the daemon neither answered nor closed is a violation;
* the daemon's log from the start of the run: no traceback, no
  ``error``/``critical`` line, no unhandled error;
* every stream of every Valkey primary: nothing new (the main Challenge was
  already presented, so anything appended came from a refused or bent input;
  anything on the canary's stream is an authentication bypass);
* the daemon's RSS and open fds: before, peak, right after, and after
  ``--pause`` seconds (back to the baseline within ``--rss-slack``).
"""
import base64
import collections
import json
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


from bench.drills import common, ingress  # noqa: E402
from bench.drills.common import say  # noqa: E402
from bench.stack import cpuSeconds, fillSizes, rssMiB  # noqa: E402
from kibaship_dns01.testing.certmanager import numberedChains, projectUUIDs  # noqa: E402
from kibaship_dns01.testing.polling import pollUntil  # noqa: E402

CLASSES = ("payload", "http", "credentials")
MIX = {"payload": 60, "http": 25, "credentials": 15}


def parseArgs(argv):
    p = common.baseParser(__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, help="inputs in all (default 100000, --quick 3000)")
    p.add_argument("--workers", type=int, default=4, help="client processes")
    p.add_argument("--slots", type=int, default=64, help="concurrent exchanges per worker")
    p.add_argument("--only", default=",".join(CLASSES),
                   help="classes to send, of " + ", ".join(CLASSES))
    p.add_argument("--pause", type=float, help="seconds before the last RSS reading "
                   "(default 40, --quick 35: the daemon trims its heap every 30 s)")
    p.add_argument("--rss-slack", type=float, default=10.0,
                   help="RSS after the pause may exceed the baseline by this many %%")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="client-side limit per exchange (the daemon's own are 10 s + 2 s)")
    p.add_argument("--rounds", type=int, default=2, help="send the budget in this many "
                   "equal parts, reading the daemon's memory after each (a leak grows per round)")
    p.add_argument("--warmup", type=int, help="inputs sent first, beyond the budget, to fill "
                   "what normal traffic fills too (pools, caches): the baseline is read after "
                   "them (default 2000, --quick 400)")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--daemon-flags", default="", help="extra flags for twistd kibaship-dns01 "
                   "(one string, e.g. \"--max-body-bytes 65536\")")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    args.only = [c for c in args.only.split(",") if c]
    unknown = set(args.only) - set(CLASSES)
    if unknown:
        p.error("unknown class(es): %s" % ", ".join(sorted(unknown)))
    return fillSizes(args, {"budget": (100000, 3000), "pause": (40.0, 35.0),
                            "warmup": (2000, 400)})


def shares(budget, classes, workers):
    """Inputs per class per worker: the budget split by :data:`MIX` over ``classes``."""
    weight = sum(MIX[c] for c in classes)
    total = {c: budget * MIX[c] // weight for c in classes}
    total[classes[0]] += budget - sum(total.values())
    return [{c: total[c] // workers + (1 if i < total[c] % workers else 0) for c in classes}
            for i in range(workers)]


class FuzzDrill:
    def __init__(self, reactor, args, stack):
        self.reactor, self.args, self.stack = reactor, args, stack
        self.results = []
        self.before = self.after = None

    async def run(self):
        stack, env = self.stack, self.stack.env
        identities = ingress.writeIdentities(stack)
        canaryProject = projectUUIDs(1, namespace="kibaship-canary")[0]
        canary = numberedChains("canary", 0, 1, projects=(canaryProject,))[0]
        await stack.addChains([canary])
        main = env.chain.challenges[0]
        answer = (await env.post("https://" + stack.host)).json()
        if not answer["response"]["success"]:
            raise RuntimeError("the first Present failed: %s" % answer)
        await stack.settle(2.0)
        pid = stack.daemon.pid
        self.cold = self.probe(pid)
        self.fdLimit = ingress.fdLimit(pid)
        self.before = await ingress.streamEntries(stack.cluster)
        metricsBefore = await stack.metrics()
        specs = self.specs(identities, main, canary)
        sampler = ingress.Sampler(self.reactor, pid).start()
        self.results = await self.drive(specs, pid)
        sampler.stop()
        self.peak = {"rss": sampler.peak("rss"), "fds": sampler.peak("fds"),
                     "deleted_bytes": sampler.peak("deleted_bytes")}
        self.after = await ingress.streamEntries(stack.cluster)
        self.metrics = (metricsBefore, await stack.metrics())
        self.streams = {"main": "{project:%s}:events" % _project(env.chain),
                        "canary": "{project:%s}:events" % canaryProject}

    def probe(self, pid):
        return {"rss": rssMiB(pid), "files": ingress.openFiles(pid),
                "sockets": ingress.sockets(pid, self.stack.port)}

    def specs(self, identities, main, canary):
        env, host = self.stack.env, self.stack.host
        common = {"host": "127.0.0.1", "port": self.stack.port,
                  "caFile": os.path.join(self.stack.workdir, "ca.crt"),
                  "identities": identities, "timeout": self.args.timeout,
                  "slots": self.args.slots,
                  "present": base64.b64encode(env.aggregatorRequest(host, challenge=main)).decode(),
                  "canary": base64.b64encode(env.aggregatorRequest(
                      host, challenge=canary.challenges[0])).decode(),
                  "payload": env.payload(challenge=main),
                  "canaryPayload": env.payload(challenge=canary.challenges[0])}
        total = shares(self.args.budget + self.args.warmup, self.args.only, self.args.workers)
        return [dict(common, counts=counts, seed=self.args.seed * 1000 + i * 10,
                     parts=_parts(sum(counts.values()), self.args.warmup // self.args.workers,
                                  self.args.rounds))
                for i, counts in enumerate(total)]

    async def drive(self, specs, pid):
        """Spawn the workers, then for each part (the warm-up, then the rounds): let
        them send it, and read the daemon once it is done and again after the pause."""
        workers = []
        for i, spec in enumerate(specs):
            workers.append(ingress.spawnClient(self.reactor, self.stack, "fuzzworker.py",
                                               "fuzz-%d" % i, spec))
        say("%d workers drawing %d inputs with hypothesis ..." % (
            len(specs), self.args.budget + self.args.warmup))
        self.parts = []
        names = ["warm-up"] + ["round %d of %d" % (n + 1, self.args.rounds)
                               for n in range(self.args.rounds)]
        for k, name in enumerate(names):
            await pollUntil(self.reactor, lambda: all(_lines(p) > k or p.ended.called
                                                      for p, _ in workers), 3600,
                            interval=0.2, what="the fuzz workers")
            if k:
                await self.partDone(pid)
            say("%s: sending ..." % name)
            self.parts.append({"name": name, "started": self.reactor.seconds(),
                               "cpu0": cpuSeconds(pid)})
            for _, transport in workers:
                transport.write(b"go\n")
        codes = [await proto.ended for proto, _ in workers]
        await self.partDone(pid)
        results = []
        for (proto, _), code in zip(workers, codes):
            if code != 0:
                raise RuntimeError("fuzz worker failed (%s):\n%s" % (
                    code, proto.output.decode(errors="replace")[-3000:]))
            results.append(json.loads(bytes(proto.stdout).splitlines()[-1]))
        measured = self.parts[1:]
        self.elapsed = sum(p["seconds"] for p in measured)
        self.daemonCPU = sum(p["cpu"] for p in measured)
        return results

    async def partDone(self, pid):
        """Figures of the part just sent: right away, and after the pause (during which
        the daemon's heap trim runs)."""
        part = self.parts[-1]
        part.update(seconds=self.reactor.seconds() - part["started"],
                    cpu=cpuSeconds(pid) - part["cpu0"], right=self.probe(pid))
        say("%s sent; pausing %gs ..." % (part["name"], self.args.pause))
        await self.stack.settle(self.args.pause)
        part["later"] = self.probe(pid)

    # -- the tally ------------------------------------------------------------
    def merged(self):
        tally = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
        for result in self.results:
            for kind, labels in result["tally"].items():
                for label, outcomes in labels.items():
                    tally[kind][label].update(outcomes)
        return tally

    def slowest(self, n=4):
        """The labels whose exchanges took longest in all (where the run's time went)."""
        spent = collections.defaultdict(lambda: [0.0, 0.0])
        for r in self.results:
            for label, (total, most) in r["seconds"].items():
                spent[label][0] += total
                spent[label][1] = max(spent[label][1], most)
        top = sorted(spent.items(), key=lambda kv: -kv[1][0])[:n]
        return [("slowest: " + label, "%.0f lane-seconds in all, at most %.1f s" % (total, most))
                for label, (total, most) in top]

    def report(self):
        tally = self.merged()
        sent = sum(r["sent"] for r in self.results)
        byStatus = collections.Counter()
        perClass = []
        for kind in CLASSES:
            if kind not in tally:
                continue
            statuses = collections.Counter()
            for outcomes in tally[kind].values():
                for outcome, n in outcomes.items():
                    for status in _statuses(outcome):
                        statuses[status] += n
            byStatus.update(statuses)
            count = sum(sum(o.values()) for o in tally[kind].values())
            perClass.append(("%s (%d inputs, %d labels)" % (kind, count, len(tally[kind])),
                             "  ".join("%s: %d" % kv for kv in sorted(statuses.items()))))
        new = ingress.newEntries(self.before, self.after)
        mainNew = len(new.get(self.streams["main"], []))
        canaryNew = len(new.get(self.streams["canary"], []))
        otherNew = {k: len(v) for k, v in new.items() if k not in self.streams.values()}
        kinds = collections.Counter()
        samples = {}
        for r in self.results:
            for v in r["violations"]:
                what = (v["class"], v["label"], v["problem"])
                kinds[what] += v["count"]
                samples.setdefault(what, v["sample"])
        violations = sum(kinds.values())
        fiveXX = {s: n for s, n in byStatus.items() if s[:1] == "5"}
        served = _requestsByCode(*self.metrics)
        baseline, last = self.parts[0]["later"], self.parts[-1]["later"]
        rss0, rss1 = baseline["rss"], last["rss"]
        measured = sum(r["sent"] for r in self.results) - self.args.warmup
        sections = [
            ("inputs", [("sent", "%d (%d warm-up, then %d in %.0f s: %.0f/s) by %d workers x "
                         "%d slots" % (sent, self.args.warmup, measured, self.elapsed,
                                       measured / max(self.elapsed, 1e-9), len(self.results),
                                       self.args.slots)),
                ("daemon CPU", "%.0f s (%.1f ms per input, %.0f %% of one core)" % (
                    self.daemonCPU, 1000 * self.daemonCPU / max(measured, 1),
                    100 * self.daemonCPU / max(self.elapsed, 1e-9))),
                ("client CPU (all workers)", "%.0f s" % sum(r["cpu"] for r in self.results)),
                *perClass, *self.slowest()]),
            ("answers by status (every class)", [(s, n) for s, n in sorted(byStatus.items())]),
            ("daemon's own count (kibaship_dns01_http_requests_total during the run)",
             [(code, n) for code, n in sorted(served.items())]),
            ("violations seen by the clients", [("count", violations)] + [
                ("%d x %s %s" % (n, k, label), "%s; e.g. %s" % (problem, json.dumps(
                    samples[(k, label, problem)])[:300]))
                for (k, label, problem), n in kinds.most_common(12)]),
            ("Valkey streams: entries appended during the run", [
                ("main project (already presented)", mainNew),
                ("canary project (never authorized)", canaryNew),
                ("any other key", sum(otherNew.values()))]),
            ("daemon memory and file descriptors", [
                ("before any input", "RSS %s, %d fds" % (ingress.mib(self.cold["rss"]),
                                                       self.cold["files"]["total"])),
                *[("after the %s: right away / after %gs" % (p["name"], self.args.pause),
                   "RSS %s / %s, fds %d / %d, client connections %d / %d (%.0f s, daemon CPU "
                   "%.0f s)" % (ingress.mib(p["right"]["rss"]), ingress.mib(p["later"]["rss"]),
                                p["right"]["files"]["total"], p["later"]["files"]["total"],
                                p["right"]["sockets"]["clients"],
                                p["later"]["sockets"]["clients"], p["seconds"], p["cpu"]))
                  for p in self.parts],
                ("peak while sending", "RSS %s, %d fds, %d bytes in deleted temporary files" % (
                    ingress.mib(self.peak["rss"]), self.peak["fds"] or 0,
                    self.peak["deleted_bytes"] or 0)),
                ("fd limit (soft, hard)", "%d, %d" % self.fdLimit)]),
        ]
        verdicts = [
            ("no 5xx other than 503", not [s for s in fiveXX if s != "503"],
             ", ".join("%s: %d" % kv for kv in sorted(fiveXX.items()))),
            ("no violation seen by the clients", violations == 0, ""),
            common.logVerdict(self.stack.daemon.logPath),
            ("nothing appended for a refused or bent input", mainNew + canaryNew + sum(
                otherNew.values()) == 0, ", ".join("%s: %d" % kv for kv in otherNew.items())),
            ("RSS after the last round's pause within %g %% of the baseline (after the "
             "warm-up's pause)" % self.args.rss_slack,
             rss1 <= rss0 * (1 + self.args.rss_slack / 100),
             "%s -> %s, %+.1f %%" % (ingress.mib(rss0), ingress.mib(rss1),
                                     100 * (rss1 - rss0) / rss0)),
            ("RSS flat from the first round to the last (after their pauses; a leak grows "
             "with every round) within 5 %", last["rss"] <= self.parts[1]["later"]["rss"] * 1.05,
             "%s -> %s" % (ingress.mib(self.parts[1]["later"]["rss"]), ingress.mib(rss1))),
            ("no client connection left open after the pause", last["sockets"]["clients"] == 0,
             "%d open" % last["sockets"]["clients"]),
        ]
        return sections, verdicts, tally


def _parts(count, warmup, rounds):
    """Sizes of a worker's parts: the warm-up, then ``rounds`` equal rounds."""
    rest = count - warmup
    return [warmup] + [rest // rounds + (1 if i < rest % rounds else 0) for i in range(rounds)]


def _lines(proto):
    return bytes(proto.stdout).count(b"\n")


def _project(chain):
    return chain.certificate["metadata"]["labels"]["platform.kibaship.com/project-uuid"]


def _statuses(outcome):
    """The statuses in an outcome key (``"201 success 400 (closed)"``), or ``no answer``."""
    words = outcome.split(" (")[0].split()
    out, i = [], 0
    while i < len(words):
        if words[i] == "201" and i + 1 < len(words) and words[i + 1] in ("success", "failure"):
            out.append("201 " + words[i + 1])
            i += 2
        elif words[i] == "no":
            out.append("no answer")
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


def _requestsByCode(before, after):
    name = "kibaship_dns01_http_requests_total"
    a, b = ingress.countsBy(after, name, "code"), ingress.countsBy(before, name, "code")
    return {code: int(a[code] - b[code]) for code in a if a[code] - b[code]}


async def drill(reactor, args, stack):
    fuzz = FuzzDrill(reactor, args, stack)
    await fuzz.run()
    sections, verdicts, tally = fuzz.report()
    return ingress.tallyOf("fuzz", sections, verdicts, {"tally": tally, "results": fuzz.results})


if __name__ == "__main__":
    arguments = parseArgs(sys.argv[1:])
    common.main(arguments, drill, daemonArgs=shlex.split(arguments.daemon_flags),
                script="bench/drills/fuzz.py")
