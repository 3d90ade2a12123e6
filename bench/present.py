"""Presents as cert-manager sends them, end to end, against a bare-Twisted floor.

    python bench/present.py [--quick] [--only KIND[,KIND]] [--json OUT]
                            [--profile OUT [--profile-scenario fresh-50]]

Starts the local environment of ``python -m kibaship_dns01.testing.localrun``
(six-node password-protected Valkey cluster, stand-in Kubernetes API holding
Kibaship Certificate -> CertificateRequest -> Order -> Challenge chains, the
PKI) and the real ``twistd kibaship-dns01``, then drives it over TLS as the
kube-aggregator does (front-proxy client certificate, ``X-Remote-User`` /
``X-Remote-Group`` / ``X-Remote-Extra-*``, keep-alive HTTP/1.1, cert-manager's
ChallengePayload body) from ``bench/loadgen.py`` processes, and drives
``bench/floor.py`` the same way in the same run.  Prints one table; see
``bench/README.md`` for what each row means and how the runs are built.

Kinds (``--only``): floor, fresh, cleanup, retry, cold, memory, restart.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


from bench import pyspy, report  # noqa: E402
from bench.stack import (  # noqa: E402
    Stack, fillSizes, rssMiB, runHeader, runWithCluster, writeResults)
from kibaship_dns01.memory import DEFAULT_INTERVAL as TRIM_INTERVAL  # noqa: E402
from kibaship_dns01.testing.certmanager import numberedChains, projectUUIDs  # noqa: E402

KINDS = ("floor", "fresh", "cleanup", "retry", "cold", "memory", "restart")
LOADS = ("floor", "fresh", "cleanup", "retry")
SIZES = {  # option: (default, --quick)
    "requests": (3000, 200), "open_seconds": (10.0, 1.5), "cached": (10000, 500),
    "retry_set": (1000, 100), "memory_presents": (100000, 1000), "cold": (3, 1)}


def say(text=""):
    print(text, file=sys.stderr, flush=True)


class PresentBench:
    """The scenarios, in the order :meth:`run` gives them; rows go to ``self.rows``."""

    def __init__(self, reactor, args, stack):
        self.reactor, self.args, self.stack = reactor, args, stack
        self.rows = []
        self.serial = 0
        self.projects = projectUUIDs(args.projects)
        self.cached = []
        self.retriesPrimed = False
        self.profileText = None

    def chains(self, prefix, count):
        """``count`` new Challenge chains with numbers never used before in this run."""
        chains = numberedChains(prefix, self.serial, count, projects=self.projects)
        self.serial += count
        return chains

    def wants(self, kind):
        return kind in self.args.only

    # -- the run ------------------------------------------------------------
    async def run(self):
        await self.stack.start()
        await self.startAndMeasure("ready: twistd start to /readyz 200 (1 Challenge)",
                                   "RSS after start")
        self.cached = self.chains("cached", self.args.cached)
        say("creating %d Challenges and waiting for the daemon's cache ..." % len(self.cached))
        await self.stack.addChains(self.cached)
        await self.stack.settle(1.0)
        rss = rssMiB(self.stack.daemon.pid)
        self.rows.append(report.valueRow("rss_cached", "RSS, %d Challenges cached" % len(
            self.cached), rss, "%.1f MiB" % rss))
        await self.afterTrim()
        await self.warmUp()
        if self.wants("floor"):
            await self.stack.startFloor()
        if self.wants("cold"):
            await self.cold()
        for connections in self.args.connections:
            await self.level(connections, None)
        if self.args.rate:
            await self.level(self.args.open_connections, self.args.rate)
        if self.wants("memory"):
            await self.memory()
        profilingRestart = self.args.profile and self.args.profile_scenario[0] == "restart"
        if self.args.profile and not profilingRestart:
            await self.profile()
        if self.wants("restart"):
            await self.stack.stopDaemon()
            await self.startAndMeasure(
                "ready after restart, %d Challenges in the API" % (len(self.cached) + 1),
                "RSS after restart, %d Challenges cached" % (len(self.cached) + 1), "rss_cached",
                profile=profilingRestart)

    async def startAndMeasure(self, readyLabel, rssLabel, rssKey="rss_start", profile=False):
        if profile:
            seconds, daemonCPU, apiCPU = await self.profiledStart()
        else:
            seconds, daemonCPU, apiCPU = await self.stack.startDaemon()
        self.rows.append(report.valueRow(
            "ready", readyLabel, seconds, "%.2f s (CPU by then: daemon %.2f s, stand-in and"
            " /readyz poller %.2f s)" % (seconds, daemonCPU, apiCPU)))
        await self.stack.settle(0.5)
        rss = rssMiB(self.stack.daemon.pid)
        self.rows.append(report.valueRow(rssKey, rssLabel, rss, "%.1f MiB" % rss))
        say("daemon ready in %.2f s, RSS %.1f MiB" % (seconds, rss))
        if rssKey == "rss_cached":
            await self.afterTrim()

    async def afterTrim(self, label="  the same after a heap trim"):
        """RSS once the daemon's periodic heap trim (``kibaship_dns01.memory``) has run
        after the cache filled: what stays, rather than the decoding's freed garbage
        glibc had not yet handed back.  Not in a ``--quick`` smoke run."""
        if self.args.quick:
            return
        await self.stack.settle(TRIM_INTERVAL + 1.0)
        rss = rssMiB(self.stack.daemon.pid)
        self.rows.append(report.valueRow("rss_cached", label, rss, "%.1f MiB (%gs later)" % (
            rss, TRIM_INTERVAL + 1.0)))

    async def warmUp(self):
        """Untimed: the SubjectAccessReview cache, Valkey pools and the append script."""
        await self.checked(self.stack.requests([self.stack.env.chain]), 50, 2)

    async def checked(self, requests, count, connections):
        """An untimed run that must succeed (priming, warm-up)."""
        result = await self.stack.drive(requests, count, connections)
        if result["bad"] or result["errors"]:
            raise RuntimeError("priming run failed: %s" % (result["sample"],))

    # -- load rows -------------------------------------------------------------
    async def drive(self, kind, mode, requests, count, connections, rate, floor=False):
        result = await self.stack.drive(requests, count, connections, rate, floor=floor)
        row = report.loadRow(kind, mode, result)
        say("%-50s %3d conns: %6.0f req/s  p50 %6.2f ms  p99 %7.2f ms  errors %d"
            % (row["what"], connections, row["rate"], row["p50_ms"] or 0, row["p99_ms"] or 0,
               row["bad"] + row["errors"]))
        return row

    async def level(self, connections, rate):
        """Every selected load kind at one connection count (``rate``: open loop)."""
        count = self.args.requests if rate is None else int(rate * self.args.open_seconds)
        mode = "saturation" if rate is None else "%g/s offered" % rate
        if self.wants("floor"):
            self.rows.append(await self.drive("floor", mode, self.retryRequests(), count,
                                              connections, rate, floor=True))
        if self.wants("fresh") or self.wants("cleanup"):
            self.rows.extend(await self.freshAndCleanup(mode, count, connections, rate,
                                                        self.wants("fresh"),
                                                        self.wants("cleanup")))
        if self.wants("retry"):
            self.rows.append(await self.retries(mode, count, connections, rate))

    async def freshAndCleanup(self, mode, count, connections, rate, fresh, cleanup):
        """A batch of new Challenges (created, as cert-manager does, before it
        presents), each presented once, then each cleaned up once, then deleted
        so the cache size stays put."""
        rows = []
        batch = self.chains("fresh", count)
        await self.stack.addChains(batch)
        presents = self.stack.requests(batch)
        if fresh:
            rows.append(await self.drive("fresh", mode, presents, count, connections, rate))
        elif cleanup:
            await self.checked(presents, count, 10)
        if cleanup:
            rows.append(await self.drive("cleanup", mode, self.stack.cleanups(batch), count,
                                         connections, rate))
        await self.stack.removeChains(batch)
        return rows

    def retryRequests(self):
        return self.stack.requests(self.cached[:self.args.retry_set])

    async def primeRetries(self):
        """Present the retry set once (untimed), so what follows are duplicates."""
        if not self.retriesPrimed:
            requests = self.retryRequests()
            await self.checked(requests, len(requests), 10)
            self.retriesPrimed = True

    async def retries(self, mode, count, connections, rate):
        """Presents of already-presented Challenges (cert-manager's retries)."""
        await self.primeRetries()
        return await self.drive("retry", mode, self.retryRequests(), count, connections, rate)

    # -- cold path --------------------------------------------------------------
    async def cold(self):
        """A Present whose Challenge the watch has not delivered (the stand-in holds
        watch events back for the whole request): latency and API requests."""
        api, samples = self.stack.env.api, []
        for _ in range(self.args.cold):
            chain = self.chains("cold", 1)
            before, orders = await self.stack.cachedChallenges(), await self.stack.cachedOrders()
            metric = "kibaship_dns01_kube_api_requests_total"
            api.holdWatchEvents()
            try:
                self.stack.env.addChains(chain)
                counted = (await self.stack.metrics()).total(metric)
                mark = len(api.store.requests)
                result = await self.stack.drive(self.stack.requests(chain), 1, 1)
                verbs = [verb for verb, _, _ in api.store.requests[mark:] if verb != "watch"]
                counted = (await self.stack.metrics()).total(metric) - counted
            finally:
                api.releaseWatchEvents()
            await self.stack.waitCachedChallenges(before + 1, orders=orders + 1)
            await self.stack.removeChains(chain)
            if result["ok"] != 1:
                raise RuntimeError("cold Present failed: %s" % (result["sample"],))
            samples.append((result["max_ms"], verbs, counted, result["cpu_s"]))
        self.rows.append(_coldRow(samples, self.args.cached))
        say("%s: %s" % (self.rows[-1]["what"], self.rows[-1]["text"]))

    # -- memory ---------------------------------------------------------------
    async def memory(self):
        """Two runs of N Presents spread over the cached Challenges; RSS after each."""
        requests = self.stack.requests(self.cached)
        first = None
        for n in (1, 2):
            result = await self.stack.drive(requests, self.args.memory_presents,
                                            self.args.memory_connections)
            await self.stack.settle(2.0)
            rss = rssMiB(self.stack.daemon.pid)
            chains = (await self.stack.metrics()).value("kibaship_dns01_cache_objects",
                                                        cache="challenge_chains")
            text = ("%.1f MiB (%d Presents at %d conns, %.0f/s, %d errors; %d chains cached)"
                    % (rss, self.args.memory_presents, self.args.memory_connections,
                       result["rate"], result["bad"] + result["errors"], chains or 0))
            row = report.valueRow("rss_run", "RSS after %s run of %d Presents"
                                  % ("first" if n == 1 else "second", self.args.memory_presents),
                                  rss, text, rate=result["rate"])
            if first is None:
                first = rss
            else:
                row["key"], row["growth_pct"] = "rss_flat", 100 * (rss - first) / first
                row["text"] = text.replace(" MiB", " MiB, %+.1f %%" % row["growth_pct"], 1)
            self.rows.append(row)
            say("%s: %s" % (row["what"], row["text"]))

    # -- profile --------------------------------------------------------------
    async def profiledStart(self):
        """The daemon's start with py-spy attached as soon as it is spawned (the
        first few tens of ms, while py-spy attaches, go unsampled) until ready."""
        recordings = []

        def attach(pid):
            recordings.append(pyspy.Recording(self.reactor, pid, self.args.profile))
        say("profiling the daemon's start with py-spy ...")
        try:
            result = await self.stack.startDaemon(onSpawn=attach)
        finally:
            for recording in recordings:
                await recording.stop()
        self.profileText = pyspy.formatSummary(
            self.args.profile, title="py-spy profile of the daemon from spawn to ready, %d"
            " Challenges in the API (%.2f s under py-spy)" % (len(self.cached) + 1, result[0]))
        with open(self.args.profile + ".summary.txt", "w") as f:
            f.write(self.profileText)
        return result

    async def profile(self):
        """One more saturation run of the chosen kind with py-spy on the daemon,
        attached only for the measured run (not the batch set-up or priming)."""
        kind, connections = self.args.profile_scenario
        count, batch = self.args.requests, None
        if kind == "retry":
            await self.primeRetries()
            requests = self.retryRequests()
        else:
            batch = self.chains("fresh", count)
            await self.stack.addChains(batch)
            requests = self.stack.requests(batch)
            if kind == "cleanup":
                await self.checked(requests, count, 10)
                requests = self.stack.cleanups(batch)
        say("profiling the daemon with py-spy during %s at %d connections ..."
            % (kind, connections))
        recording = pyspy.Recording(self.reactor, self.stack.daemon.pid, self.args.profile)
        await recording.waitAttached()
        try:
            row = await self.drive(kind, "saturation", requests, count, connections, None)
        finally:
            await recording.stop()
        if batch is not None:
            await self.stack.removeChains(batch)
        title = ("py-spy profile of the daemon, %s at %d connections (%.0f req/s under py-spy)"
                 % (report.LABELS[kind], connections, row["rate"]))
        self.profileText = pyspy.formatSummary(self.args.profile, title=title)
        with open(self.args.profile + ".summary.txt", "w") as f:
            f.write(self.profileText)


def _coldRow(samples, cached):
    latencies = sorted(s[0] for s in samples)
    verbs = samples[-1][1]
    cpu = samples[-1][3]
    text = ("median %.0f ms, max %.0f ms (%d runs); API requests: %d at the stand-in (%s), %d by"
            " the daemon's metric; CPU: daemon %.0f ms, stand-in %.0f ms"
            % (latencies[len(latencies) // 2], latencies[-1], len(samples), len(verbs),
               ", ".join(_runs(verbs)), samples[-1][2], 1000 * cpu["server"], 1000 * cpu["api"]))
    return report.valueRow("cold", "cold Present (watch held back, %d cached)" % cached,
                           latencies[-1], text, samples=samples)


def _runs(verbs):
    """``['list', 'list', 'get']`` -> ``['2 list', '1 get']`` in order of first use."""
    out = []
    for verb in verbs:
        if out and out[-1][0] == verb:
            out[-1][1] += 1
        else:
            out.append([verb, 1])
    return ["%d %s" % (n, verb) for verb, n in out]


# --- command line ------------------------------------------------------------------

def _profileScenario(text):
    if text == "restart":
        return "restart", None
    kind, _, level = text.partition("-")
    if kind not in ("fresh", "retry", "cleanup") or not level.isdigit():
        raise argparse.ArgumentTypeError("use fresh-N, retry-N or cleanup-N (N connections),"
                                         " or restart")
    return kind, int(level)


def _kinds(text):
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError("unknown kind %s; choose from %s"
                                         % (", ".join(unknown), ", ".join(KINDS)))
    return kinds


def parseArgs(argv):
    p = argparse.ArgumentParser(prog="python bench/present.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    p.add_argument("--only", type=_kinds, default=list(KINDS),
                   help="comma-separated kinds to run: " + ", ".join(KINDS))
    p.add_argument("--connections", type=lambda t: [int(c) for c in t.split(",")],
                   default=[1, 10, 50], help="saturation runs (default 1,10,50)")
    p.add_argument("--rate", type=float, default=200.0, help="offered rate, req/s (0: none)")
    p.add_argument("--open-connections", type=int, default=10,
                   help="connections for the offered-rate runs")
    p.add_argument("--requests", type=int, help="requests per saturation run (3000)")
    p.add_argument("--open-seconds", type=float, help="length of an offered-rate run (10)")
    p.add_argument("--cached", type=int, help="Challenges held in the cache (10000)")
    p.add_argument("--retry-set", type=int, help="cached Challenges the retries cycle over (1000)")
    p.add_argument("--memory-presents", type=int, help="Presents per memory run (100000)")
    p.add_argument("--memory-connections", type=int, default=50)
    p.add_argument("--cold", type=int, help="cold-path samples (3)")
    p.add_argument("--projects", type=int, default=30, help="Kibaship projects (streams)")
    p.add_argument("--json", metavar="OUT", help="write every figure as JSON")
    p.add_argument("--profile", metavar="OUT", help="py-spy raw profile of one extra run")
    p.add_argument("--profile-scenario", type=_profileScenario, default=("fresh", 50),
                   metavar="KIND-CONNS", help="fresh-50 (default), retry-10, cleanup-1, ...;"
                   " restart: the daemon's start after the restart (with --only restart)")
    p.add_argument("--workdir", help="keep certificates, logs and profiles here")
    args = p.parse_args(argv)
    fillSizes(args, SIZES)
    if args.profile:
        pyspy.findPySpy()
        args.profile = os.path.abspath(args.profile)
    return args


def _notes(rows):
    return ["%s: %d errors, first: %s" % (r["what"], r["bad"] + r["errors"], r["sample"])
            for r in rows if r["kind"] != "value" and (r["bad"] or r["errors"])]


async def _run(reactor, args, cluster, workdir):
    loadBefore = os.getloadavg()[0]
    stack = Stack(reactor, workdir, cluster)
    bench = PresentBench(reactor, args, stack)
    try:
        await bench.run()
    finally:
        await stack.stop()
    rows = bench.rows
    report.addFloorRatios(rows)
    report.attachTargets(rows)
    header = runHeader("bench/present.py", loadBefore)
    print(header)
    print(report.render(rows))
    print(report.LEGEND)
    for note in _notes(rows):
        print("NOTE " + note)
    if bench.profileText:
        print()
        print(bench.profileText)
    if args.json:
        writeResults(args.json, header, args, rows, bench.profileText)


def main(argv=None):
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    runWithCluster(args.workdir, "kibaship-present-",
                   lambda reactor, cluster, workdir: _run(reactor, args, cluster, workdir))


if __name__ == "__main__":
    main()
