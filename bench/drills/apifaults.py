"""API server faults under steady load: restarted, slow, answering 500, answering 429.

    python bench/drills/apifaults.py [--quick] [--faults restart,slow,500,429] [--json OUT]

The real ``twistd kibaship-dns01`` runs against the stand-in API server
(``kibaship_dns01.testing.kubeapi``, in this process) and a six-node Valkey
cluster.  ``--cached`` Challenges are created and presented once beforehand,
so the daemon holds them and their owner chains.  Then, for each fault, two
open-loop generators run side by side for ``--pre`` + ``--fault-seconds`` +
``--post`` seconds:

- *cached*: ``--rate`` Presents per second cycling over the cached
  Challenges (cert-manager retrying Presents it already made);
- *uncached*: ``--uncached-rate`` Presents per second for ``--uncached`` new
  Challenges created in the API at the start of the fault, which the daemon
  has not resolved (until a second into the fault: the previous fault's, which
  have been presented until they succeeded in between).

``--pre`` seconds in, the fault starts:

- ``restart``: the stand-in stops (every connection, watches included, is
  cut; new ones are refused) and listens again on the same port with the
  same store ``--fault-seconds`` later;
- ``slow``: watches are cut and every answer (a watch: its start) comes
  ``--latency`` seconds late;
- ``500`` / ``429``: watches are cut and every request is answered 500
  InternalError / 429 TooManyRequests with ``Retry-After``.

Halfway through it, ``--deleted`` cached Challenges are deleted from the API.
After the load the drill waits until the daemon's Challenge cache matches the
API again (the watch resumed) and checks: the cached Presents all succeeded;
the uncached ones were answered (a success, or a failure with a message)
well within cert-manager's 60 s; how many LISTs and WATCHes the stand-in saw
from the fault until the watch resumed, and how many full LISTs the daemon's
caches made (``kibaship_dns01_cache_lists_total``): a resumed watch needs
none; the deleted Challenges are gone from the cache (metric), and a Present
for one fails with "no Challenge"; the daemon is still up and its log clean.
At the end, every Challenge is presented until it succeeds (as cert-manager
would) and every project's stream is checked as in the failover drill.  The
stand-in sends watch BOOKMARKs every few seconds, as kube-apiserver does (about
once a minute), so that a quiet watch can resume from a recent version.
"""
import collections
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from twisted.internet import defer, task, threads  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from bench import loadgen  # noqa: E402
from bench.drills import common  # noqa: E402
from bench.drills.common import percentile, say, seconds  # noqa: E402
from bench.stack import fillSizes  # noqa: E402
from kibaship_dns01.testing.certmanager import numberedChains, projectUUIDs  # noqa: E402

FAULTS = ("restart", "slow", "500", "429")
CHALLENGE = ("acme.cert-manager.io/v1", "Challenge")
#: cert-manager's deadline for a webhook call
CERT_MANAGER_DEADLINE = 60.0
#: kube-apiserver sends watch BOOKMARKs (a recent resourceVersion) about once a
#: minute, so a quiet watch (the authentication ConfigMap) can resume after a
#: restart however much else changed; the drill's own churn is faster, so it
#: sends them more often
BOOKMARK_INTERVAL = 5.0


def parseArgs(argv):
    p = common.baseParser("API server faults under steady load (issue 12).")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help="which, in order (default %s)" % ",".join(FAULTS))
    p.add_argument("--cached", type=int, help="Challenges presented beforehand (1000)")
    p.add_argument("--uncached", type=int, default=40, help="new Challenges per fault")
    p.add_argument("--deleted", type=int, default=10,
                   help="cached Challenges deleted during each fault")
    p.add_argument("--projects", type=int, default=12)
    p.add_argument("--rate", type=float, default=20.0, help="cached Presents per second")
    p.add_argument("--uncached-rate", type=float, default=4.0,
                   help="uncached Presents per second")
    p.add_argument("--pre", type=float, help="s of load before each fault (5)")
    p.add_argument("--fault-seconds", type=float, help="how long each fault lasts (30)")
    p.add_argument("--post", type=float, help="s of load after each fault (15)")
    p.add_argument("--latency", type=float, default=4.0, help="s per answer when slow")
    p.add_argument("--retry-after", type=int, default=2, help="Retry-After of the 429s")
    p.add_argument("--quick", action="store_true",
                   help="200 cached Challenges, 3 s + 12 s + 8 s per fault")
    args = p.parse_args(argv)
    fillSizes(args, {"cached": (1000, 200), "pre": (5.0, 3.0), "fault_seconds": (30.0, 12.0),
                     "post": (15.0, 8.0)})
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        p.error("unknown fault(s) %s; choose from %s" % (", ".join(sorted(unknown)),
                                                         ", ".join(FAULTS)))
    return args


class APIFaultsDrill:
    def __init__(self, reactor, args, stack):
        self.reactor, self.args, self.stack = reactor, args, stack
        self.api = stack.env.api
        self.store = self.api.store
        self.tally = common.Tally("apifaults")
        self.projects = projectUUIDs(args.projects, namespace="kibaship-apifaults")
        self.serial = 0
        self.figures = {}

    def chains(self, prefix, count):
        chains = numberedChains(prefix, self.serial, count, projects=self.projects)
        self.serial += count
        return chains

    async def run(self):
        args, stack = self.args, self.stack
        cached = self.chains("cached", args.cached)
        doomed = {f: self.chains("doomed", args.deleted) for f in args.faults}
        uncached = {f: self.chains("uncached-" + f, args.uncached) for f in args.faults}
        previous = self.chains("uncached-before", args.uncached)
        primed = cached + previous + [c for f in args.faults for c in doomed[f]]
        bookmarks = task.LoopingCall(self.store.bookmark)
        bookmarks.clock = self.reactor
        bookmarks.start(BOOKMARK_INTERVAL, now=False)
        say("creating and presenting %d Challenges (the daemon caches them) ..." % len(primed))
        await stack.addChains(primed)
        await self.presentAll(primed, "priming")
        self.tally.line(
            "tried: %d Challenges cached and presented beforehand; per fault %.0f s of load"
            " (%.0f s before, %.0f s of fault, %.0f s after): %g cached Presents/s and %g"
            " uncached Presents/s (%d new Challenges), %d cached Challenges deleted halfway"
            % (len(primed), args.pre + args.fault_seconds + args.post, args.pre,
               args.fault_seconds, args.post, args.rate, args.uncached_rate, args.uncached,
               args.deleted))
        for fault in args.faults:
            # cert-manager's retries of the previous fault's Presents have succeeded
            await self.presentAll(previous, "before " + fault, retry=True)
            await self.fault(fault, cached, previous, uncached[fault], doomed[fault])
            previous = uncached[fault]
        every = primed + [c for f in args.faults for c in uncached[f]]
        say("presenting every Challenge until it succeeds, then reading the streams ...")
        final = await self.presentAll([c for f in args.faults for c in uncached[f]], "final",
                                      retry=True)
        self.tally.check("every uncached Challenge presented in the end (cert-manager retries)",
                         final["succeeded"] == final["count"] and final["gave_up"] == 0,
                         "%d of %d" % (final["succeeded"], final["count"]))
        streams, counters = await threads.deferToThread(
            common.readStreams, stack.cluster, self.projects)
        common.StreamCheck(streams, counters, common.expectedOf(every)).report(self.tally)
        bookmarks.stop()
        common.checkDaemon(self.tally, stack)
        self.tally.figures = self.figures
        return self.tally

    async def presentAll(self, chains, what, retry=False):
        """Each Challenge presented once (closed loop); ``retry``: until it succeeds."""
        spec = {"retry": {"base": 0.1, "max": 2.0}, "deadline": 300} if retry else {}
        result = await self.stack.drive(self.stack.requests(chains), len(chains), 10, **spec)
        result["count"] = len(chains)
        if not retry and (result["bad"] or result["errors"]):
            raise RuntimeError("%s Presents failed: %s" % (what, result["sample"]))
        return result

    # -- one fault -------------------------------------------------------------
    async def fault(self, fault, cached, previous, fresh, doomed):
        args, stack = self.args, self.stack
        duration = args.pre + args.fault_seconds + args.post
        timelines = {k: os.path.join(stack.workdir, "%s-%s.jsonl" % (fault, k))
                     for k in ("cached", "uncached")}
        runs = [dict(requests=stack.requests(cached), count=int(args.rate * duration),
                     connections=16, rate=args.rate, timeout=CERT_MANAGER_DEADLINE,
                     timeline=timelines["cached"]),
                dict(requests=self.uncachedRequests(previous, fresh, duration),
                     count=int(args.uncached_rate * duration), connections=48,
                     rate=args.uncached_rate, timeout=CERT_MANAGER_DEADLINE,
                     timeline=timelines["uncached"])]
        marks = {}
        before = await stack.metrics()
        say("fault %s: %.0f s of load, the fault from %.0f s to %.0f s ..." % (
            fault, duration, args.pre, args.pre + args.fault_seconds))
        schedule = []
        await stack.driveMany(runs, onGo=lambda: schedule.append(
            defer.ensureDeferred(self.inject(fault, fresh, doomed, marks))))
        resumed = await schedule[0]
        after = await stack.metrics()
        requests = self.store.requests[marks["requestsAtStart"]:marks["requestsAtResume"]]
        stale = await self.presentDeleted(doomed[0])
        self.report(fault, marks, resumed, before, after, requests, stale,
                    {k: loadgen.readTimeline(p) for k, p in timelines.items()}, len(doomed))

    def uncachedRequests(self, previous, fresh, duration):
        """Due ``i / rate`` s after the start: the previous fault's Challenges (by
        now presented and resolved) until a second after the fault begins (the new
        ones exist from then), then this fault's; ``self.newIndexes``: theirs."""
        rate, switch = self.args.uncached_rate, self.args.pre + 1.0
        count = int(rate * duration)
        self.newIndexes = {i for i in range(count) if i / rate >= switch}
        chains = [(fresh if i in self.newIndexes else previous)[i % len(fresh)]
                  for i in range(count)]
        return self.stack.requests(chains)

    async def inject(self, fault, fresh, doomed, marks):
        args = self.args
        await self.sleep(args.pre)
        marks["requestsAtStart"] = len(self.store.requests)
        marks["start"] = time.monotonic()
        await self.startFault(fault)
        self.stack.env.addChains(fresh)  # created while the daemon cannot see them
        await self.sleep(args.fault_seconds / 2)
        for chain in doomed:
            self.store.delete(chain.challenges[0])
        await self.sleep(max(0.0, marks["start"] + args.fault_seconds - time.monotonic()))
        await self.endFault(fault)
        marks["end"] = time.monotonic()
        resumed = await self.waitResumed(marks["end"])
        marks["requestsAtResume"] = len(self.store.requests)
        return resumed

    async def startFault(self, fault):
        if fault == "restart":
            await self.api.stop()
            return
        self.store.closeWatches()
        if fault == "slow":
            self.api.latency = self.args.latency
        else:
            retryAfter = self.args.retry_after if fault == "429" else None
            self.store.injectError(int(fault), times=None, retryAfter=retryAfter)

    async def endFault(self, fault):
        if fault == "restart":
            await self.api.start()
        self.api.latency = 0.0
        self.store.clearInjectedErrors()

    def sleep(self, s):
        return deferLater(self.reactor, s, lambda: None)

    async def waitResumed(self, since, timeout=120.0):
        """Seconds from the end of the fault until the daemon's Challenge cache
        holds exactly what the API holds (``None``: not within ``timeout``)."""
        want = len(self.store.objects(*CHALLENGE))
        while time.monotonic() - since < timeout:
            if (await self.stack.cachedChallenges()) == want:
                return time.monotonic() - since
            await self.sleep(0.1)
        return None

    async def presentDeleted(self, chain):
        """A Present for a Challenge deleted during the fault: the message says."""
        env = self.stack.env
        response = await env.post("https://localhost:%d" % self.stack.port,
                                  challenge=chain.challenges[0])
        body = response.json()
        return response.code, body.get("response", {}).get("success"), (
            body.get("response", {}).get("status") or {}).get("message") or body.get("message")

    # -- the figures -------------------------------------------------------------
    def report(self, fault, marks, resumed, before, after, requests, stale, timelines,
               deleted):
        t, start, end = self.tally, marks["start"], marks["end"]
        timelines["uncached"] = [a for a in timelines["uncached"] if a.index in self.newIndexes]
        during = {k: [a for a in v if start <= a.sent < end] for k, v in timelines.items()}
        cachedAll, uncachedAll = timelines["cached"], timelines["uncached"]
        failedCached = [a for a in cachedAll if not a.ok]
        answered = [a.done - a.sent for a in uncachedAll]
        uncachedFailed = [a for a in during["uncached"] if not a.ok]
        speechless = [a for a in uncachedAll if not a.ok and (a.code is None or not a.why)]
        lists = collections.Counter(path for verb, path, _ in requests if verb == "list")
        watches = collections.Counter(path for verb, path, _ in requests if verb == "watch")
        fullLists = {cache: (after.value("kibaship_dns01_cache_lists_total", cache=cache) or 0)
                     - (before.value("kibaship_dns01_cache_lists_total", cache=cache) or 0)
                     for cache in after.labelValues("kibaship_dns01_cache_lists_total", "cache")}
        cachedLatency = [a.done - a.sent for a in during["cached"] if a.ok]
        figure = {"fault_s": end - start, "resumed_after_s": resumed,
                  "cached_during": len(during["cached"]), "cached_failed": len(failedCached),
                  "cached_p99_s": percentile(cachedLatency, 0.99),
                  "cached_max_s": max(cachedLatency) if cachedLatency else None,
                  "uncached_during": len(during["uncached"]),
                  "uncached_failed_during": len(uncachedFailed),
                  "uncached_answer_max_s": max(answered) if answered else None,
                  "stand_in_lists": dict(lists), "stand_in_watches": dict(watches),
                  "daemon_full_lists": fullLists, "deleted_present": stale}
        self.figures[fault] = figure
        t.line("")
        t.line("fault %s: %s for %.1f s; the daemon's Challenge cache matched the API %s after"
               " it ended" % (fault, self.describe(fault), end - start, seconds(resumed)))
        t.line("  cached Presents sent during the fault: %d, failed: %d (whole run: %d of %d"
               " failed); latency p99 %s, max %s" % (
                   len(during["cached"]), len([a for a in during["cached"] if not a.ok]),
                   len(failedCached), len(cachedAll), seconds(figure["cached_p99_s"]),
                   seconds(figure["cached_max_s"])))
        common.describeFailures(t, failedCached, indent="    ")
        t.line("  Presents of the new Challenges sent during the fault: %d, succeeded %d, failed"
               " %d; every answer to them (whole run) within %s (p99 %s)" % (
                   len(during["uncached"]), len(during["uncached"]) - len(uncachedFailed),
                   len(uncachedFailed), seconds(figure["uncached_answer_max_s"]),
                   seconds(percentile(answered, 0.99))))
        common.describeFailures(t, uncachedFailed, indent="    ")
        t.line("  from the fault until the cache matched: LISTs at the stand-in %s; WATCHes %s;"
               " full LISTs by the daemon's caches %s" % (
                   self.counts(lists), self.counts(watches),
                   ", ".join("%s %d" % kv for kv in sorted(fullLists.items()))))
        t.line("  a Present for a Challenge deleted during the fault: HTTP %s, success %s: %s"
               % (stale[0], stale[1], (stale[2] or "")[:200]))
        name = "%s: " % fault
        t.check(name + "cached Presents kept succeeding", not failedCached,
                "%d of %d failed" % (len(failedCached), len(cachedAll)))
        t.check(name + "uncached Presents answered well within cert-manager's 60 s, with a"
                " message when they fail", not speechless and (figure["uncached_answer_max_s"]
                                                                or 0) < CERT_MANAGER_DEADLINE / 2,
                "max %s, %d without an answer or message" % (
                    seconds(figure["uncached_answer_max_s"]), len(speechless)))
        t.check(name + "watch resumed, no relist storm",
                resumed is not None and sum(fullLists.values()) <= len(fullLists),
                "cache matched after %s; %d full LIST(s)" % (seconds(resumed),
                                                             sum(fullLists.values())))
        t.check(name + "no stale cache entry after recovery",
                stale[1] is False and "no Challenge" in (stale[2] or ""),
                "%d deleted, %s" % (deleted, "gone" if stale[1] is False else "still cached"))

    @staticmethod
    def counts(counter):
        short = lambda path: path.replace("/apis/acme.cert-manager.io/v1", "acme") \
            .replace("/apis/cert-manager.io/v1", "cm").replace("/api/v1", "core")
        return "{%s}" % ", ".join("%s: %d" % (short(p), n) for p, n in sorted(counter.items())) \
            if counter else "none"

    def describe(self, fault):
        return {"restart": "stand-in API stopped (connections cut, new ones refused), then"
                           " started on the same port with the same store",
                "slow": "watches cut, every answer %g s late" % self.args.latency,
                "500": "watches cut, every request answered 500 InternalError",
                "429": "watches cut, every request answered 429 TooManyRequests, Retry-After"
                       " %d" % self.args.retry_after}[fault]


async def drill(reactor, args, stack):
    return await APIFaultsDrill(reactor, args, stack).run()


if __name__ == "__main__":
    common.main(parseArgs(sys.argv[1:]), drill, script="bench/drills/apifaults.py")
