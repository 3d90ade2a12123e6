"""DNS drill (issue 21, "Measured"): the daemon's responder under dnsperf, a flood, bad packets.

    python bench/drills/dns.py                  # about 7 minutes
    python bench/drills/dns.py --quick          # about 3 minutes
    python bench/drills/dns.py --profile dns.raw   # and py-spy on the daemon at TXT saturation

Starts the local environment (a fresh password-protected six-node Valkey
cluster, the stand-in API server), the DNS around delegated renewals of the
end-to-end tests (:class:`~kibaship_dns01.testing.delegationworld.DelegationWorld`:
knot serving the user's zone, unbound as the recursive resolver the daemon's
CNAME check asks through ``--dns-resolvers``), and the real ``twistd
kibaship-dns01`` with ``--delegation-zone`` and its DNS port.  A real Present
(through the front proxy, as cert-manager) stores its key at its project's
delegation label, and ``dig`` checks the daemon serves it.  Then three parts,
numbered as the table prints them and run in the order 1, 3, 2 (one restart
of the daemon, between the rate limit off and on); ``--only`` picks some:

1. **throughput and latency** (the daemon with ``--dns-rate-limit 0``: dnsperf
   asks from one address): ``dnsperf`` at saturation (answers/s, closed loop at
   100 outstanding) and at ``--rate`` queries/s (p50/p99 of every query's
   latency), beside a bare Twisted Names server answering a fixed TXT
   (``bench/dnsload.py``), interleaved in the same run, for two query files:
   the TXT at the label with the key (what cert-manager and the CA ask, one
   Valkey read each), and the mix of :data:`MIX`;
3. **hostile packets** (the same daemon, so every packet reaches the parser:
   with the limiter on, packets from one source over its rate are dropped
   before being read): ``--malformed`` packets from a process of their own
   (``bench/drills/dnspackets.py``), then the daemon's log, its answers
   (``dig``), and its RSS right after and after ``--pause`` seconds (the heap
   trim runs every 30 s);
2. **a flood** (the daemon restarted with its default rate limit): another
   network (127.0.2.1) asks at ``--other-rate`` queries/s and a
   cert-manager-style client sends new Presents at ``--present-rate``/s over
   HTTPS (``bench/loadgen.py``, open loop, latency from each request's due
   time), first alone for ``--alone`` s (what the machine gives them
   without a flood), then while several ``dnsperf`` processes from sources
   in one /24 (127.0.1.0/24) offer ``--flood-rate`` queries/s in all.  The
   limiter's counters come from ``/metrics``, the datagrams the kernel
   dropped at the daemon's socket from ``/proc/net/udp``.

Prints the table and the checks (``PASS``/``FAIL``, ``TALLY``); ``--json``
writes every figure.
"""
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from twisted.internet import defer, utils  # noqa: E402

from bench import dnsload, pyspy  # noqa: E402
from bench.drills import common, ingress  # noqa: E402
from bench.drills.common import say  # noqa: E402
from bench.drills.ingress import mib  # noqa: E402
from bench.stack import ChildServer, cpuSeconds, fillSizes, rssMiB  # noqa: E402
from kibaship_dns01.project import PROJECT_LABEL  # noqa: E402
from kibaship_dns01.testing.certmanager import numberedChains, projectUUIDs  # noqa: E402
from kibaship_dns01.testing.delegationworld import DelegationWorld  # noqa: E402
from kibaship_dns01.testing.hostiledns import AMPLIFICATION  # noqa: E402

TARGET_RATIO = 0.5
P99_TARGET_MS = 50.0
OTHER_ANSWERED = 0.99
FLOOD_TARGET = 20000
#: the networks the daemon sees: the flood's /24, another network, the hostile packets'
FLOOD_NET, OTHER_SOURCE, PACKETS_SOURCE = "127.0.1.", "127.0.2.1", "127.0.3.1"
#: what the world sends, one line of the query file each: mostly the TXT at a label with a
#: key (cert-manager's self-check and every CA perspective), NXDOMAIN for labels without
#: one (asked before the key is stored, or after CleanUp), SOA and NS at the apex
#: (resolvers refreshing the delegation; the SOA of negative answers)
MIX = ("keyed TXT", "unknown0 TXT", "keyed TXT", "apex SOA", "keyed TXT", "unknown1 TXT",
       "keyed TXT", "apex NS", "keyed TXT", "keyed TXT")
METRIC = "kibaship_dns01_dns_%s_total"
PARTS = ("throughput", "flood", "packets")


def parseArgs(argv):
    p = common.baseParser(__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, help="each dnsperf run of part 1 (default 10, quick 3)")
    p.add_argument("--rounds", type=int, help="rounds of part 1 (default 2, quick 1)")
    p.add_argument("--rate", type=int, default=1000, help="queries/s for p50/p99")
    p.add_argument("--malformed", type=int, help="hostile packets (default 100000, quick 10000)")
    p.add_argument("--pool", type=int, help="of them drawn by hypothesis, the rest bit flips "
                   "(default 5000, quick 1000)")
    p.add_argument("--malformed-rate", type=float, default=5000.0, help="hostile packets/s")
    p.add_argument("--pause", type=float, default=35.0, help="seconds before the last RSS "
                   "reading (the daemon trims its heap every 30 s)")
    p.add_argument("--rss-slack", type=float, default=10.0,
                   help="RSS after the pause may exceed the baseline by this many %%")
    p.add_argument("--flood-rate", type=int, default=24000,
                   help="queries/s the flood offers in all")
    p.add_argument("--flooders", type=int, default=3, help="dnsperf processes flooding")
    p.add_argument("--flood-seconds", type=int, help="(default 30, quick 12)")
    p.add_argument("--alone", type=int, help="seconds the other network and the Presents run "
                   "before the flood, for comparison (default 10, quick 5)")
    p.add_argument("--other-rate", type=int, default=50,
                   help="queries/s from the other network (the limit is 100/s)")
    p.add_argument("--present-rate", type=float, default=20.0, help="Presents/s under the flood")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--profile", metavar="OUT", help="py-spy the daemon at TXT saturation")
    p.add_argument("--daemon-flags", default="", help="extra flags for twistd kibaship-dns01 "
                   "(one string, e.g. \"--dns-rate-limit-slip 0\")")
    p.add_argument("--only", default=",".join(PARTS), help="parts to run, of " + ", ".join(PARTS))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    args.only = [part for part in args.only.split(",") if part]
    if not args.only or set(args.only) - set(PARTS):
        p.error("--only: give some of %s" % ", ".join(PARTS))
    if args.profile:
        pyspy.findPySpy()
    dnsload.findDnsperf()
    return fillSizes(args, {"seconds": (10, 3), "rounds": (2, 1), "malformed": (100000, 10000),
                            "pool": (5000, 1000), "flood_seconds": (30, 12),
                            "alone": (10, 5)})


def rcodeShares(rcodes):
    total = sum(rcodes.values())
    return {code: n / total for code, n in rcodes.items()} if total else {}


def describeRcodes(rcodes):
    shares = rcodeShares(rcodes)
    return ", ".join("%s %.1f%%" % (code, 100 * share) for code, share in
                     sorted(shares.items(), key=lambda kv: -kv[1])) or "no answer"


def _mixLines():
    return [line.split() for line in MIX]


def mixRcodes():
    """The rcodes :data:`MIX` must get, as shares: NXDOMAIN for the labels without a key."""
    shares = {}
    for name, _ in _mixLines():
        code = "NXDOMAIN" if name.startswith("unknown") else "NOERROR"
        shares[code] = shares.get(code, 0) + 1 / len(MIX)
    return shares


def mixLabel():
    counts = {}
    for name, rdtype in _mixLines():
        what = {"keyed": "TXT key", "apex": rdtype + " apex"}.get(name, "TXT NXDOMAIN")
        counts[what] = counts.get(what, 0) + 1
    return ", ".join("%d%% %s" % (100 * n // len(MIX), what) for what, n in counts.items())


def mixMatches(rcodes, slack=0.02):
    """The mix got only the rcodes of :func:`mixRcodes`, each within ``slack`` of its share."""
    shares, expected = rcodeShares(rcodes), mixRcodes()
    return set(shares) <= set(expected) and all(
        abs(shares.get(code, 0.0) - share) <= slack for code, share in expected.items())


def _otherNetwork(run):
    return "%d sent, %d answered (%.2f%%), %d lost; p50 %s ms, p99 %s ms; %s" % (
        run["sent"], run["completed"], 100.0 * run["completed"] / max(1, run["sent"]),
        run["lost"], _ms(run["p50"]), _ms(run["p99"]), describeRcodes(run["rcodes"]))


def _presents(run):
    return "%d sent, %d ok, %d failed; p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
        run["sent"], run["ok"], run["bad"] + run["errors"], run["p50_ms"] or 0,
        run["p99_ms"] or 0, run["max_ms"] or 0)


def childrenCPU():
    """CPU seconds of this process's finished children (dnsperf, loadgen: reaped)."""
    t = os.times()
    return t.children_user + t.children_system


def _ms(seconds):
    return "%.2f" % (seconds * 1000)


class DNSDrill:
    def __init__(self, args):
        self.args = args
        self.figures = {}
        self.world = None

    # -- around the daemon ---------------------------------------------------------
    async def prepare(self, reactor, args, stack):
        """The user's zone (knot) and the resolver (unbound) before the daemon starts;
        the daemon first runs without a rate limit (parts 1 and 2)."""
        self.world = DelegationWorld(reactor, stack.env, replicas=1)
        try:
            await self.world.start()
        except BaseException:
            await self.world.stop()
            raise
        stack.daemonArgs = self.daemonArgs(limited=not self.unlimitedParts())
        return self.world.stop

    def unlimitedParts(self):
        return [part for part in ("throughput", "packets") if part in self.args.only]

    def daemonArgs(self, limited):
        """The daemon's delegation flags; without the rate limit unless ``limited``."""
        flags = (*self.world.delegationArgs(0), *shlex.split(self.args.daemon_flags))
        return flags if limited else flags + ("--dns-rate-limit", "0")

    async def drill(self, reactor, args, stack):
        self.reactor, self.stack = reactor, stack
        self.port = self.world.dnsPorts[0]
        try:
            await self.run()
        finally:
            for path in getattr(self, "files", {}).values():
                os.unlink(path)
        sections, verdicts = self.report()
        return ingress.tallyOf("dns", sections, verdicts, self.figures)

    async def run(self):
        only = self.args.only
        await self.setUp()
        if "throughput" in only:
            self.figures["throughput"] = await self.throughput()
            if self.args.profile:
                await self.profile()
        if "packets" in only:
            self.figures["packets"] = await self.hostilePackets()
        if "flood" in only:
            if self.unlimitedParts():
                say("restarting the daemon with the default rate limit ...")
                await self.stack.stopDaemon()
                self.stack.daemonArgs = self.daemonArgs(limited=True)
                await self.stack.startDaemon()
            self.figures["flood"] = await self.flood()

    async def setUp(self):
        """Chains for the Presents; the first one presented: its key at its label."""
        stack, args = self.stack, self.args
        presents = int(args.present_rate * (args.alone + args.flood_seconds)) + 1
        chains = numberedChains("dnsdrill", 0, 1 + presents, projects=projectUUIDs(10))
        await stack.addChains(chains)
        self.floodChains = chains[1:]
        first = await stack.drive(stack.requests(chains[:1]), 1, connections=1)
        if first["ok"] != 1:
            raise RuntimeError("the first Present failed: %s" % (first["sample"],))
        challenge = chains[0].challenges[0]["spec"]
        project = chains[0].certificate["metadata"]["labels"][PROJECT_LABEL]
        self.key = challenge["key"]
        self.keyed = self.world.delegationFor(project, challenge["dnsName"]).value
        self.unknown = [self.world.delegationFor(str(uuid.UUID(int=i + 1)),
                                                 "unknown-%d.example.com" % i).value
                        for i in range(2)]
        self.names = {"keyed": self.keyed, "apex": self.world.zone,
                      **{"unknown%d" % i: name for i, name in enumerate(self.unknown)}}
        self.files = {"txt": self.queryFile(["keyed TXT"]), "mix": self.queryFile(MIX)}
        self.figures["setup"] = {"keyed": self.keyed, "key": self.key,
                                 "answers": await self.answers()}

    def queryFile(self, lines):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False,
                                         dir=self.stack.workdir) as f:
            for line in lines:
                name, rdtype = line.split()
                f.write("%s %s\n" % (self.names[name], rdtype))
        return f.name

    async def answers(self):
        """What ``dig +norec`` gets from the daemon: the key, NXDOMAIN, the SOA."""
        keyed = await self.world.askReplica(0, self.keyed, "TXT")
        unknown = await self.world.askReplica(0, self.unknown[0], "TXT")
        soa = await self.world.askReplica(0, self.world.zone, "SOA")
        seen = {"keyed": (keyed.status, keyed.values("TXT")),
                "unknown": (unknown.status, unknown.values("TXT")),
                "apex SOA": (soa.status, len(soa.values("SOA")))}
        return {"seen": seen, "ok": seen == {"keyed": ("NOERROR", [self.key]),
                                             "unknown": ("NXDOMAIN", []),
                                             "apex SOA": ("NOERROR", 1)}}

    # -- dnsperf -------------------------------------------------------------------
    async def dnsperf(self, port, kind, seconds, **options):
        argv = dnsload.dnsperfArgs(port, self.files[kind], seconds, **options)
        out, err, code = await utils.getProcessOutputAndValue(
            argv[0], argv[1:], env=dict(os.environ), reactor=self.reactor)
        if code != 0:
            raise dnsload.DnsperfError("%s exited %s:\n%s" % (" ".join(argv), code,
                                                               err.decode(errors="replace")))
        return dnsload.parseDnsperf(out.decode(errors="replace"), options.get("verbose"))

    # -- part 1 ---------------------------------------------------------------------
    async def throughput(self):
        args = self.args
        floor = ChildServer(self.reactor, dnsload.floorArgv(self.key), self.stack.workdir)
        await floor.start()
        ports = {"daemon": self.port, "floor": floor.port}
        runs = {(kind, server): {"sat": [], "rate": []} for kind in ("txt", "mix")
                for server in ports}
        say("throughput: dnsperf, %d s runs x %d rounds ..." % (args.seconds, args.rounds))
        try:
            for _ in range(args.rounds):
                for kind in ("txt", "mix"):
                    for server, port in ports.items():
                        runs[kind, server]["sat"].append(
                            await self.dnsperf(port, kind, args.seconds))
                    for server, port in ports.items():
                        runs[kind, server]["rate"].append(await self.dnsperf(
                            port, kind, args.seconds, rate=args.rate, verbose=True))
        finally:
            await floor.stop()
        return {"%s/%s" % key: self.summary(value) for key, value in runs.items()}

    @staticmethod
    def summary(runs):
        """Best saturation rate, median p50/p99 at the fixed rate, everything lost, rcodes."""
        sat, rate = runs["sat"], runs["rate"]
        rcodes = {}
        for run in sat:
            for code, n in run["rcodes"].items():
                rcodes[code] = rcodes.get(code, 0) + n
        return {"qps": max(r["qps"] for r in sat), "lost_sat": sum(r["lost"] for r in sat),
                "p50": statistics.median(r["p50"] for r in rate),
                "p99": statistics.median(r["p99"] for r in rate),
                "lost_rate": sum(r["lost"] for r in rate), "rcodes": rcodes,
                "rate_rcodes": rate[-1]["rcodes"], "runs": runs}

    async def profile(self):
        seconds = self.args.seconds
        say("py-spy on the daemon at TXT saturation for %d s ..." % seconds)
        recording = pyspy.Recording(self.reactor, self.stack.daemon.pid, self.args.profile)
        await recording.waitAttached()
        run = await self.dnsperf(self.port, "txt", seconds)
        await recording.stop()
        text = pyspy.formatSummary(self.args.profile, title=(
            "py-spy profile of the daemon, TXT at saturation (%.0f answers/s under py-spy)"
            % run["qps"]))
        with open(self.args.profile + ".summary.txt", "w") as f:
            f.write(text)
        say(text)

    # -- part 3 ---------------------------------------------------------------------
    async def hostilePackets(self):
        args, stack = self.args, self.stack
        pid = stack.daemon.pid
        spec = {"host": "127.0.0.1", "port": self.port, "source": PACKETS_SOURCE,
                "zone": self.world.zone, "labels": [self.keyed.split(".")[0]] + [
                    name.split(".")[0] for name in self.unknown], "keyed": [self.keyed],
                "pool": args.pool, "count": args.malformed, "seed": args.seed,
                "rate": args.malformed_rate, "drain": 2.0}
        say("hostile packets: drawing %d hostile packets ..." % args.malformed)
        proto, transport = ingress.spawnClient(self.reactor, stack, "dnspackets.py",
                                               "dnspackets", spec)
        ready = json.loads(await proto.firstLine().addTimeout(900, self.reactor))
        await stack.settle(2.0)
        before, metricsBefore = rssMiB(pid), await stack.metrics()
        dropsBefore = ingress.udpDrops(self.port)
        say("hostile packets: sending %d at %g/s ..." % (ready["ready"], args.malformed_rate))
        sampler = ingress.Sampler(self.reactor, pid).start()
        transport.write(b"go\n")
        code = await proto.ended
        sampler.stop()
        if code != 0:
            raise RuntimeError("dnspackets failed (%s):\n%s" % (
                code, proto.output.decode(errors="replace")[-3000:]))
        sent = json.loads(bytes(proto.stdout).splitlines()[-1])
        right, metricsAfter = rssMiB(pid), await stack.metrics()
        drops = ingress.udpDrops(self.port) - dropsBefore
        answers = await self.answers()
        log = common.logVerdict(stack.daemon.logPath)
        say("hostile packets: pausing %g s (heap trim) ..." % args.pause)
        await stack.settle(args.pause)
        return {"sent": sent, "rss": {"before": before, "peak": sampler.peak("rss"),
                                      "right": right, "after": rssMiB(pid)},
                "daemon": self.deltas(metricsBefore, metricsAfter), "answers": answers,
                "log": log, "kernel_drops": drops}

    @staticmethod
    def deltas(before, after):
        """What the daemon counted between two scrapes."""
        def delta(name, label):
            b = ingress.countsBy(before, METRIC % name, label)
            return {k: v - b.get(k, 0) for k, v in ingress.countsBy(
                after, METRIC % name, label).items() if v != b.get(k, 0)}
        return {"answers": delta("queries", "rcode"), "malformed": delta("malformed",
                                                                         "transport"),
                "limited": delta("rate_limited", "action"),
                "store_failures": delta("store_failures", "reason"),
                "send_failures": sum(delta("send_failures", None).values())}

    # -- part 2 ---------------------------------------------------------------------
    async def flood(self):
        args, stack = self.args, self.stack
        pid = stack.daemon.pid
        answers = await self.answers()  # the restarted daemon serves the key (from Valkey)
        say("flood: first the other network and the Presents alone for %d s ..." % args.alone)
        chains = iter(self.floodChains)
        alone = await self.clients(args.alone, chains)
        seconds = args.flood_seconds
        measured = seconds - 4
        each = args.flood_rate // args.flooders
        say("flood: %d queries/s from %d dnsperf processes in %s0/24 for %d s ..."
            % (each * args.flooders, args.flooders, FLOOD_NET, seconds))
        before, metricsBefore = rssMiB(pid), await stack.metrics()
        dropsBefore = ingress.udpDrops(self.port)
        cpuBefore, started = (cpuSeconds(pid), childrenCPU()), time.monotonic()
        sampler = ingress.Sampler(self.reactor, pid).start()
        flooders = [defer.ensureDeferred(self.dnsperf(
            self.port, "txt", seconds, rate=each, outstanding=65535, timeout=1, clients=8,
            source=FLOOD_NET + str(10 + i))) for i in range(args.flooders)]
        await stack.settle(2.0)
        other, presents = await self.clients(measured, chains)
        flood = [await d for d in flooders]
        sampler.stop()
        elapsed = time.monotonic() - started
        cpu = {"daemon": (cpuSeconds(pid) - cpuBefore[0]) / elapsed,
               "generators": (childrenCPU() - cpuBefore[1]) / elapsed}
        metricsAfter = await stack.metrics()
        drops = ingress.udpDrops(self.port) - dropsBefore
        await stack.settle(5.0)
        return {"flood": flood, "other": other, "presents": presents, "alone": alone,
                "daemon": self.deltas(metricsBefore, metricsAfter),
                "rss": {"before": before, "peak": sampler.peak("rss"), "after": rssMiB(pid)},
                "answers_before": answers, "answers_after": await self.answers(),
                "offered": each * args.flooders, "kernel_drops": drops, "cpu": cpu}

    async def clients(self, seconds, chains):
        """The other network's queries and the Presents (of the next of ``chains``) for
        ``seconds``, at once; :return: their figures."""
        args = self.args
        count = int(args.present_rate * seconds)
        requests = self.stack.requests([next(chains) for _ in range(count)])
        other = defer.ensureDeferred(self.dnsperf(
            self.port, "txt", seconds, rate=args.other_rate, source=OTHER_SOURCE, verbose=True,
            timeout=2))
        presents = await self.stack.drive(requests, count, connections=1, rate=args.present_rate)
        return await other, presents

    # -- the table --------------------------------------------------------------------
    def report(self):
        """The sections and verdicts of the parts that ran, in the table's order."""
        ran = [part for part in PARTS if part in self.figures]
        sections = [getattr(self, part + "Section")() for part in ran]
        verdicts = [("a real Present's key served at its label (dig)",
                     self.figures["setup"]["answers"]["ok"], "; ".join(
                         "%s %s" % kv for kv in self.figures["setup"]["answers"]["seen"].items()))]
        for part in ran:
            verdicts += getattr(self, part + "Verdicts")()
        return sections, verdicts + [
            ("daemon still running (no crash)", not self.stack.daemon.proto.ended.called, ""),
            common.logVerdict(self.stack.daemon.logPath)]

    def throughputSection(self):
        t, args = self.figures["throughput"], self.args
        rows = [("queries: server", "%11s %6s %8s %8s %6s  %s" % (
            "answers/s", "lost", "p50 ms", "p99 ms", "lost", "rcodes")),
            ("", "%11s %6s %22s" % ("(saturation)", "", "(at %d queries/s)" % args.rate))]
        for kind, label in (("txt", "TXT at the key's label"), ("mix", "the mix")):
            for server, name in (("daemon", "daemon (Valkey)"), ("floor", "floor")):
                s = t["%s/%s" % (kind, server)]
                rows.append(("%s: %s" % (label, name), "%11.0f %6d %8s %8s %6d  %s" % (
                    s["qps"], s["lost_sat"], _ms(s["p50"]), _ms(s["p99"]), s["lost_rate"],
                    describeRcodes(s["rcodes"]))))
        rows += [("daemon/floor at saturation", "TXT %.2f, mix %.2f (target >= %.1f)" % (
            self.ratio("txt"), self.ratio("mix"), TARGET_RATIO)),
            ("the mix", mixLabel()),
            ("the floor", "twisted.names answering a fixed TXT to every name")]
        return ("1. throughput and latency: dnsperf over UDP loopback, %d s runs x %d rounds, "
                "daemon and floor interleaved; the daemon runs with --dns-rate-limit 0 "
                "(dnsperf asks from one address)" % (args.seconds, args.rounds), rows)

    def ratio(self, kind):
        t = self.figures["throughput"]
        return t[kind + "/daemon"]["qps"] / t[kind + "/floor"]["qps"]

    def floodSection(self):
        f = self.figures["flood"]
        flood, other, presents, daemon = f["flood"], f["other"], f["presents"], f["daemon"]
        sent = sum(r["sent"] for r in flood)
        answered = sum(r["completed"] for r in flood)
        rows = [
            ("the flood (%d dnsperf, sources in %s0/24)" % (len(flood), FLOOD_NET),
             "%d queries/s offered, %.0f reached (%d sent in %.1f s); %d answered (%.1f%%)" % (
                 f["offered"], self.floodRate(), sent, max(r["runtime"] for r in flood),
                 answered, 100.0 * answered / max(1, sent))),
            ("the daemon's limiter (/metrics)", "slip %d, drop %d" % (
                daemon["limited"].get("slip", 0), daemon["limited"].get("drop", 0))),
            ("dropped by the kernel, the socket's buffer full (/proc/net/udp)",
             "%d (%.1f%% of what was sent)" % (f["kernel_drops"], 100.0 * f["kernel_drops"]
                                               / max(1, sent))),
            ("the daemon's answers meanwhile (/metrics)", ", ".join(
                "%s %d" % kv for kv in sorted(daemon["answers"].items())) or "none"),
            ("another network (%s, %d queries/s): alone" % (OTHER_SOURCE, self.args.other_rate),
             _otherNetwork(f["alone"][0])),
            ("another network: under the flood", _otherNetwork(other)),
            ("Presents over HTTPS (new challenges, %g/s, open loop): alone"
             % self.args.present_rate, _presents(f["alone"][1])),
            ("Presents: under the flood", _presents(presents)),
            ("the daemon's RSS before / peak / after", " / ".join(
                mib(f["rss"][k]) for k in ("before", "peak", "after"))),
            ("CPU, in cores: the daemon; dnsperf and loadgen processes", "%.2f; %.2f" % (
                f["cpu"]["daemon"], f["cpu"]["generators"])),
            ("store failures, send failures", "%s, %d" % (
                daemon["store_failures"] or "none", daemon["send_failures"]))]
        return ("2. a flood, the daemon with its default rate limit (100/s a network, "
                "burst 200, slip 2)%s" % (" and %s" % self.args.daemon_flags
                                           if self.args.daemon_flags else ""), rows)

    def floodRate(self):
        flood = self.figures["flood"]["flood"]
        return sum(r["sent"] / max(r["runtime"], 1e-9) for r in flood)

    def otherShare(self):
        other = self.figures["flood"]["other"]
        return other["completed"] / max(1, other["sent"])

    def packetsSection(self):
        p = self.figures["packets"]
        sent, daemon, rss = p["sent"], p["daemon"], p["rss"]
        classes = sorted(sent["by_class"].items(), key=lambda kv: -kv[1])
        rows = [
            ("sent (from %s, %.0f packets/s)" % (PACKETS_SOURCE, sent["sent"] / max(
                sent["seconds"], 1e-9)), "%d: %s" % (sent["sent"], ", ".join(
                    "%s %d" % kv for kv in classes))),
            ("the daemon counted (/metrics)", "%d malformed (not answered), %d answered (%s)"
             % (sum(daemon["malformed"].values()), sum(daemon["answers"].values()),
                ", ".join("%s %d" % kv for kv in sorted(daemon["answers"].items())))),
            ("dropped by the kernel (/proc/net/udp)", "%d" % p["kernel_drops"]),
            ("answers received", "%d; largest answer/query outside a TXT with keys %.2f" % (
                sent["answered"], sent["largest_ratio"])),
            ("violations (unparseable, no QR, unknown id, amplification)", ", ".join(
                "%s %d" % kv for kv in sent["violations"].items()) or "none"),
            ("dig afterwards", "; ".join("%s %s" % kv for kv in p["answers"]["seen"].items())),
            ("the daemon's RSS before / peak / right after / after %gs" % self.args.pause,
             " / ".join(mib(rss[k]) for k in ("before", "peak", "right", "after")))]
        return ("3. %d hostile packets (the daemon with --dns-rate-limit 0, so each reaches "
                "the parser)" % sent["sent"], rows)

    def throughputVerdicts(self):
        t = self.figures["throughput"]
        txt, mix = t["txt/daemon"], t["mix/daemon"]
        return [
            ("1: TXT answers/s at saturation >= %.1f x the floor's" % TARGET_RATIO,
             self.ratio("txt") >= TARGET_RATIO, "%.2f (%.0f vs %.0f)" % (
                 self.ratio("txt"), txt["qps"], t["txt/floor"]["qps"])),
            ("1: every TXT query answered NOERROR, none lost",
             set(txt["rcodes"]) == {"NOERROR"} and txt["lost_sat"] + txt["lost_rate"] == 0,
             describeRcodes(txt["rcodes"])),
            ("1: the mix answered as the zone says (no SERVFAIL), none lost",
             mixMatches(mix["rcodes"]) and mix["lost_sat"] + mix["lost_rate"] == 0,
             describeRcodes(mix["rcodes"]))]

    def floodVerdicts(self):
        flood = self.figures["flood"]
        presents, limited = flood["presents"], flood["daemon"]["limited"]
        failed = presents["bad"] + presents["errors"]
        return [
            ("2: the flood reached >= %d queries/s from one /24" % FLOOD_TARGET,
             self.floodRate() >= FLOOD_TARGET, "%.0f queries/s" % self.floodRate()),
            ("2: the other network >= %d%% answered" % (100 * OTHER_ANSWERED),
             self.otherShare() >= OTHER_ANSWERED, "%.2f%%" % (100 * self.otherShare())),
            ("2: Present p99 <= %g ms, none failed" % P99_TARGET_MS,
             presents["p99_ms"] is not None and presents["p99_ms"] <= P99_TARGET_MS
             and failed == 0, "p99 %.1f ms, %d failed" % (presents["p99_ms"] or 0, failed)),
            ("2: the limiter slipped and dropped the flood",
             limited.get("slip", 0) > 0 and limited.get("drop", 0) > 0,
             "slip %d, drop %d" % (limited.get("slip", 0), limited.get("drop", 0))),
            ("2: the key served before and after the flood (dig)",
             flood["answers_before"]["ok"] and flood["answers_after"]["ok"], "")]

    def packetsVerdicts(self):
        args, packets = self.args, self.figures["packets"]
        sent, reached, rss = packets["sent"], packets["daemon"], packets["rss"]
        counted = sum(reached["malformed"].values()) + sum(reached["answers"].values())
        return [
            ("3: every packet reached the daemon: answered or counted malformed (>= 99%)",
             counted >= 0.99 * sent["sent"], "%d of %d" % (counted, sent["sent"])),
            ("3: no answer unparseable, without QR, unmatched or over %dx its query"
             % AMPLIFICATION, not sent["violations"],
             json.dumps(sent["samples"][:2]) if sent["violations"] else "none"),
            ("3: no error, traceback or unhandled failure in the daemon's log",
             packets["log"][1], packets["log"][2]),
            ("3: the daemon answers correctly afterwards (dig)", packets["answers"]["ok"], ""),
            ("3: RSS after %gs within %g%% of its baseline" % (args.pause, args.rss_slack),
             rss["after"] <= rss["before"] * (1 + args.rss_slack / 100),
             "%s -> %s" % (mib(rss["before"]), mib(rss["after"])))]


def main(argv=None):
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    drill = DNSDrill(args)
    common.main(args, drill.drill, script="bench/drills/dns.py", prepare=drill.prepare)


if __name__ == "__main__":
    main()
