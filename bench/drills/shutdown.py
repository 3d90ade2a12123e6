"""Graceful shutdown drill (issue 12): SIGTERM while Presents wait on a paused Valkey.

    python bench/drills/shutdown.py             # both scenarios, 200 Presents in flight
    python bench/drills/shutdown.py --quick     # 40 in flight

Starts the local environment, then for each scenario a fresh ``twistd
kibaship-dns01`` with ``--shutdown-delay`` and ``--shutdown-grace-period``:

* ``grace runs out`` (``--delay`` 5 s as the Deployment, ``--grace`` 8 s):
  the Presents cannot all finish: one primary is released ``--release`` s after
  the listener closed, the other two stay paused past the grace period;
* ``deployment`` (5 s and 45 s, the Deployment's values): every primary is
  released 3 s after SIGTERM, so everything in flight finishes normally.

Each scenario: fresh Challenges over 30 projects (all three primaries),
``CLIENT PAUSE ... WRITE`` on every primary, ``--in-flight`` Presents sent (one
kept-alive connection each, as the kube-aggregator's pool does), a few more
connections kept alive and idle, and SIGTERM once the daemon counts them all
in flight.  Meanwhile ``/readyz`` is polled every 50 ms on new connections,
a prober connects every 100 ms to see when the listener stops accepting, and
the idle connections send one more Present each during the delay.  The tally:
in flight at SIGTERM, answered ok, answered "shutting down", answered with
another failure, unanswered (must be 0), when ``/readyz`` failed and the
listener closed, exit status and time to exit.
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from twisted.internet import defer, task  # noqa: E402

from bench.drills import common, ingress, wire  # noqa: E402
from bench.drills.common import say  # noqa: E402
from bench.stack import fillSizes, logProblems  # noqa: E402
from kibaship_dns01.api.connections import CLOSE_SETTLE  # noqa: E402
from kibaship_dns01.api.lifecycle import CANCEL_SETTLE  # noqa: E402
from kibaship_dns01.testing.certmanager import numberedChains, projectUUIDs  # noqa: E402

#: the Deployment's terminationGracePeriodSeconds (deploy/base/deployment.yaml)
TERMINATION_GRACE = 60.0
SHUTTING_DOWN = "is shutting down"
READYZ = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"


def parseArgs(argv):
    p = common.baseParser(__doc__.split("\n")[0])
    p.add_argument("--in-flight", type=int, help="Presents in flight at SIGTERM "
                   "(default 200, --quick 40)")
    p.add_argument("--idle", type=int, default=5,
                   help="kept-alive connections that send one more Present during the delay")
    p.add_argument("--delay", type=float, default=5.0, help="--shutdown-delay, seconds")
    p.add_argument("--grace", type=float, default=8.0,
                   help="--shutdown-grace-period of the 'grace runs out' scenario, seconds")
    p.add_argument("--release", type=float, default=2.0,
                   help="seconds after the listener closed when one primary is released")
    p.add_argument("--only", choices=("grace", "deployment"), help="one scenario only")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    return fillSizes(args, {"in_flight": (200, 40)})


class Scenario:
    """One daemon, one SIGTERM; ``figures`` once :meth:`run` is done."""

    def __init__(self, reactor, stack, args, name, delay, grace, release):
        self.reactor, self.stack, self.args = reactor, stack, args
        self.name, self.delay, self.grace = name, delay, grace
        self.release = release  # (seconds after SIGTERM, how many primaries)
        self.figures = {"scenario": name, "delay": delay, "grace": grace}
        self.serial = 0

    async def run(self, chains):
        stack, cluster = self.stack, self.stack.cluster
        stack.daemonArgs = ("--shutdown-delay", "%gs" % self.delay,
                            "--shutdown-grace-period", "%gs" % self.grace)
        await stack.startDaemon()
        await stack.addChains(chains)
        with open(os.path.join(stack.workdir, "ca.crt"), "rb") as f:
            caPEM = f.read()
        pair = wire.loadPair(*wire.identityFiles(stack.workdir, "front-proxy"))
        self.dialer = wire.Dialer(self.reactor, "127.0.0.1", stack.port, caPEM, pair)
        self.anonymous = wire.Dialer(self.reactor, "127.0.0.1", stack.port, caPEM)
        idle = [await wire.openSession(self.dialer) for _ in range(self.args.idle)]
        for session in idle:  # kept alive, at rest
            await session.send(HEALTHZ, self.reactor, 10)
        primaries = cluster.primaries()
        pauseMs = int(1000 * (self.delay + self.grace + CANCEL_SETTLE + 30))
        for node in primaries:
            cluster.cli(node, "CLIENT", "PAUSE", str(pauseMs), "WRITE")
        try:
            await self.shutdown(chains, idle, primaries)
        finally:
            for node in primaries:
                cluster.cli(node, "CLIENT", "UNPAUSE")
        self.figures["log"] = logProblems(stack.daemon.logPath)
        self.figures["drained"] = ingress.logCount(stack.daemon.logPath, "listener drained")
        await stack.stopDaemon()

    async def shutdown(self, chains, idle, primaries):
        stack = self.stack
        requests = stack.requests(chains[:self.args.in_flight])
        sessions = [await wire.openSession(self.dialer) for _ in requests]
        inFlight = [s.send(r, self.reactor, 300) for s, r in zip(sessions, requests)]
        counted = await self.untilInFlight(len(requests))
        late = chains[self.args.in_flight:self.args.in_flight + len(idle)]
        say("%s: %d in flight; SIGTERM" % (self.name, counted))
        t0 = time.monotonic()
        stack.daemon.transport.signalProcess("TERM")
        exited = stack.daemon.proto.ended
        watchers = [defer.ensureDeferred(self.pollReadyz(t0, exited)),
                    defer.ensureDeferred(self.probeListener(t0, exited)),
                    defer.ensureDeferred(self.lateRequests(t0, idle, stack.requests(late)))]
        for seconds, count in self.release:
            self.reactor.callLater(seconds, self._release, primaries[:count], t0)
        code = await exited
        exitAfter = time.monotonic() - t0
        answers = [a for a in await defer.gatherResults(inFlight)]
        readyz, listener, lateAnswers = await defer.gatherResults(watchers)
        self.figures.update({
            "in_flight_metric": counted, "in_flight_sent": len(requests),
            "answers": _classify(answers), "exit_code": code, "exit_after": exitAfter,
            "readyz": readyz, "listener": listener, "late": _classify(lateAnswers),
            "late_closing": sum(1 for a in lateAnswers if a is not None and a.close)})

    def _release(self, nodes, t0):
        for node in nodes:
            self.stack.cluster.cli(node, "CLIENT", "UNPAUSE")
        self.figures.setdefault("released", []).append(
            (round(time.monotonic() - t0, 2), len(nodes)))

    async def untilInFlight(self, count, timeout=60.0):
        """Until the daemon counts ``count`` requests in flight (its own metric)."""
        deadline = self.reactor.seconds() + timeout
        while True:
            value = (await self.stack.metrics()).value("kibaship_dns01_http_requests_in_flight")
            if value is not None and value >= count:
                return int(value)
            if self.reactor.seconds() > deadline:
                raise RuntimeError("only %s of %d Presents in flight after %gs" % (
                    value, count, timeout))
            await task.deferLater(self.reactor, 0.1, lambda: None)

    async def pollReadyz(self, t0, exited):
        """Every 50 ms on a new connection: when /readyz stopped answering 200."""
        firstFail = lastOK = None
        seen = []
        while not exited.called:
            ending, answers = await self.anonymous.exchange([(0, READYZ)], timeout=2,
                                                            quiet=0.05, expect=1)
            now = time.monotonic() - t0
            status = answers[0].status if answers else ending
            seen.append(status)
            if status == 200:
                lastOK = now
            elif firstFail is None:
                firstFail = now
            if ending == wire.REFUSED:
                break
            await task.deferLater(self.reactor, 0.05, lambda: None)
        return {"first_not_ready": firstFail, "last_ready": lastOK,
                "answers": {str(s): seen.count(s) for s in set(seen)}}

    async def probeListener(self, t0, exited):
        """Every 100 ms a new connection and GET /healthz: accepted (and answered) until
        when, refused from when."""
        lastAnswered = refusedAt = None
        answered = 0
        while not exited.called:
            ending, answers = await self.anonymous.exchange([(0, HEALTHZ)], timeout=2,
                                                            quiet=0.05, expect=1)
            now = time.monotonic() - t0
            if answers and answers[0].status == 200:
                answered += 1
                lastAnswered = now
            if ending == wire.REFUSED and refusedAt is None:
                refusedAt = now
                break
            await task.deferLater(self.reactor, 0.1, lambda: None)
        return {"answered": answered, "last_answered": lastAnswered, "refused_at": refusedAt}

    async def lateRequests(self, t0, idle, requests):
        """During the delay: one more Present on each kept-alive connection."""
        await task.deferLater(self.reactor, min(1.0, self.delay / 2), lambda: None)
        return await defer.gatherResults([
            s.send(r, self.reactor, 300) if s.open else defer.succeed(None)
            for s, r in zip(idle, requests)])


def _classify(answers):
    out = {"ok": 0, "shutting down": 0, "other failure": 0, "unanswered": 0, "other": 0}
    for a in answers:
        if a is None:
            out["unanswered"] += 1
        elif a.status == 201:
            response = json.loads(a.body)["response"]
            if response["success"]:
                out["ok"] += 1
            elif SHUTTING_DOWN in response["status"]["message"]:
                out["shutting down"] += 1
            else:
                out["other failure"] += 1
                out.setdefault("sample", response["status"]["message"][:200])
        else:
            out["other"] += 1
            out.setdefault("sample", "HTTP %d" % a.status)
    return out


class ShutdownDrill:
    def __init__(self, reactor, args, stack):
        self.reactor, self.args, self.stack = reactor, args, stack
        self.scenarios = []
        self.projects = projectUUIDs(30)
        self.serial = 0

    def chains(self, count):
        chains = numberedChains("drain", self.serial, count, projects=self.projects)
        self.serial += count
        return chains

    async def run(self):
        await self.stack.stopDaemon()  # each scenario starts its own, with its flags
        args = self.args
        plans = [("grace runs out", args.delay, args.grace, [(args.delay + args.release, 1)]),
                 ("deployment", 5.0, 45.0, [(3.0, 3)])]
        for name, delay, grace, release in plans:
            if args.only and not name.startswith(args.only[:5]):
                continue
            scenario = Scenario(self.reactor, self.stack, args, name, delay, grace, release)
            await scenario.run(self.chains(args.in_flight + args.idle))
            self.scenarios.append(scenario.figures)

    def report(self):
        sections, verdicts = [], []
        for f in self.scenarios:
            answers, late = f["answers"], f["late"]
            budget = f["delay"] + f["grace"] + CANCEL_SETTLE + CLOSE_SETTLE + 2
            readyz, listener = f["readyz"], f["listener"]
            sections.append(("%s: --shutdown-delay %gs --shutdown-grace-period %gs; primaries "
                             "released at %s" % (f["scenario"], f["delay"], f["grace"], ", ".join(
                                 "%.1f s (%d)" % r for r in f.get("released", []))), [
                ("in flight at SIGTERM", "%d (daemon's count), %d sent" % (
                    f["in_flight_metric"], f["in_flight_sent"])),
                ("answered ok", answers["ok"]),
                ("answered 'shutting down'", answers["shutting down"]),
                ("answered another failure", "%d%s" % (answers["other failure"], (
                    " (e.g. %s)" % answers["sample"]) if "sample" in answers else "")),
                ("unanswered", answers["unanswered"] + answers["other"]),
                ("sent during the delay on kept-alive connections", "%d: %d ok, %d shutting "
                 "down, %d unanswered, %d with Connection: close" % (
                     sum(v for k, v in late.items() if k != "sample"), late["ok"],
                     late["shutting down"], late["unanswered"] + late["other"],
                     f["late_closing"])),
                ("/readyz", "last 200 at %s, first failure at %s after SIGTERM (%s)" % (
                    _s(readyz["last_ready"]), _s(readyz["first_not_ready"]), ", ".join(
                        "%s: %d" % kv for kv in sorted(readyz["answers"].items())))),
                ("new connections", "answered until %s, refused from %s after SIGTERM" % (
                    _s(listener["last_answered"]), _s(listener["refused_at"]))),
                ("exit", "status %s, %.2f s after SIGTERM (budget %.0f s, "
                 "terminationGracePeriodSeconds %.0f s)" % (
                     f["exit_code"], f["exit_after"], budget, TERMINATION_GRACE)),
                ("daemon log", "%d error, traceback or unhandled-failure line(s), "
                 "'listener drained' %d" % (len(f["log"]), f["drained"]))]))
            tag = f["scenario"] + ": "
            notReady = readyz["first_not_ready"]
            verdicts += [
                (tag + "every request in flight answered", answers["unanswered"] +
                 answers["other"] + late["unanswered"] + late["other"] == 0, ""),
                (tag + "/readyz failed at once (within 0.5 s)",
                 notReady is not None and notReady <= 0.5, _s(notReady)),
                (tag + "new connections accepted during the delay, refused after it",
                 listener["last_answered"] is not None and listener["refused_at"] is not None
                 and f["delay"] - 1 <= listener["refused_at"] <= f["delay"] + 1.5,
                 "refused from %s" % _s(listener["refused_at"])),
                (tag + "exit status 0 within the grace budget and terminationGracePeriodSeconds",
                 f["exit_code"] == 0 and f["exit_after"] <= min(budget, TERMINATION_GRACE),
                 "%.2f s" % f["exit_after"]),
                (tag + "no error, traceback or unhandled failure in the log", not f["log"],
                 f["log"][0][:300] if f["log"] else "clean"),
            ]
        return sections, verdicts


def _s(seconds):
    return "-" if seconds is None else "%.2f s" % seconds


async def drill(reactor, args, stack):
    shutdown = ShutdownDrill(reactor, args, stack)
    await shutdown.run()
    sections, verdicts = shutdown.report()
    return ingress.tallyOf("shutdown", sections, verdicts, {"scenarios": shutdown.scenarios})


if __name__ == "__main__":
    common.main(parseArgs(sys.argv[1:]), drill, script="bench/drills/shutdown.py")
