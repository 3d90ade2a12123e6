"""Slow and greedy clients drill (issue 12): a normal client keeps presenting through it all.

    python bench/drills/slowclients.py            # 1,000 slowloris + 60 greedy, 60 s, then the cap
    python bench/drills/slowclients.py --quick    # 200 + 12, 15 s

Starts the local environment and the real ``twistd kibaship-dns01`` with its
default flags, then:

1. **alone**: the normal client (``bench/loadgen.py``, one kept-alive TLS
   connection through the front proxy, open loop at ``--rate`` Presents a
   second, latency counted from each request's due time) for ``--baseline`` s;
2. **idle connections**: ``--idle`` TLS connections that made one request and
   rest, kept alive: the memory and descriptors one costs, and what
   ``--max-connections`` of them would cost against the Deployment's limit;
3. **attack**: ``--slowloris`` connections trickling a request head, a TLS
   ClientHello, or nothing, and ``--greedy`` ones sending bodies slowly
   (announced over the limit, chunked without end, announced under the limit),
   all reconnecting as soon as the daemon closes them
   (``bench/drills/attackers.py``), while the normal client runs again for
   ``--attack`` s; the daemon's descriptors and memory are sampled throughout;
4. **after**: the attack stopped, ``--pause`` s later (the heap trim runs every
   30 s): descriptors, client connections and RSS back to where they were;
5. **over the cap** (unless ``--no-cap``): ``--max-connections`` + 500
   connections at once while the normal client, connected first, runs.

Prints one tally with the verdicts: the normal client's p99 under 50 ms and no
failed request, descriptors and memory bounded and back afterwards.
"""
import base64
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from twisted.internet import defer  # noqa: E402

from bench.drills import common, ingress  # noqa: E402
from bench.drills.common import say  # noqa: E402
from bench.drills.ingress import mib  # noqa: E402
from bench.stack import fillSizes, rssMiB  # noqa: E402
from kibaship_dns01.api.connections import DEFAULT_MAX_CONNECTIONS  # noqa: E402
from kibaship_dns01.testing.certmanager import numberedChains, projectUUIDs  # noqa: E402
from kibaship_dns01.testing.polling import pollUntil  # noqa: E402

#: the Deployment's memory limit (deploy/base/deployment.yaml)
DEPLOYMENT_LIMIT_MIB = 384
P99_TARGET_MS = 50.0
#: the daemon's defaults: a connection is closed this long after it stops progressing
HEADER_TIMEOUT, BODY_TIMEOUT, ABORT = 10.0, 10.0, 2.0
SLOWLORIS = {"head": 0.8, "handshake": 0.1, "silent": 0.1}
GREEDY = ("body-over", "body-chunked", "body-under")


def parseArgs(argv):
    p = common.baseParser(__doc__.split("\n")[0])
    p.add_argument("--slowloris", type=int, help="slow connections (default 1000, quick 200)")
    p.add_argument("--greedy", type=int, help="slow-body connections (default 60, quick 12)")
    p.add_argument("--idle", type=int, help="idle kept-alive connections measured (default "
                   "1000, quick 200)")
    p.add_argument("--rate", type=float, default=20.0, help="the normal client's Presents/s")
    p.add_argument("--baseline", type=float, help="seconds alone (default 15, quick 5)")
    p.add_argument("--attack", type=float, help="seconds under attack (default 60, quick 15)")
    p.add_argument("--pause", type=float, default=35.0, help="seconds after the attack")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between the bytes (or body chunks) a slow client sends")
    p.add_argument("--no-cap", action="store_true", help="skip the over-the-cap phase")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    return fillSizes(args, {"slowloris": (1000, 200), "greedy": (60, 12), "idle": (1000, 200),
                            "baseline": (15.0, 5.0), "attack": (60.0, 15.0)})


def split(total, weights):
    """``total`` connections over the modes of ``weights`` (fractions or equal shares)."""
    modes = list(weights)
    shares = weights if isinstance(weights, dict) else {m: 1 / len(modes) for m in modes}
    out = {m: int(total * shares[m]) for m in modes}
    out[modes[0]] += total - sum(out.values())
    return out


class SlowClientsDrill:
    def __init__(self, reactor, args, stack):
        self.reactor, self.args, self.stack = reactor, args, stack
        self.figures = {}

    async def run(self):
        stack = self.stack
        self.pid = stack.daemon.pid
        chains = numberedChains("steady", 0, 200, projects=projectUUIDs(10))
        await stack.addChains(chains)
        self.normal = stack.requests(chains)
        self.fdLimit = ingress.fdLimit(self.pid)
        await self.drive(self.args.baseline)  # first Presents: appends, chains cached
        await stack.settle(1.0)
        self.figures["start"] = self.probe()
        say("alone: the normal client for %gs ..." % self.args.baseline)
        self.figures["alone"] = await self.drive(self.args.baseline)
        await self.idleConnections()
        await self.attack()
        if not self.args.no_cap:
            await self.overTheCap()
        self.figures["limit_lines"] = ingress.logCount(stack.daemon.logPath,
                                                       '"log_kind":"connection_limit"')
        metrics = await stack.metrics()
        self.figures["timeouts"] = dict(ingress.countsBy(
            metrics, "kibaship_dns01_http_timeouts_total", "phase"))
        self.figures["refused"] = metrics.total("kibaship_dns01_http_connections_refused_total")

    # -- pieces --------------------------------------------------------------
    def probe(self):
        return {"rss": rssMiB(self.pid), "files": ingress.openFiles(self.pid),
                "sockets": ingress.sockets(self.pid, self.stack.port)}

    def drive(self, seconds):
        count = max(1, int(self.args.rate * seconds))
        return self.stack.drive(self.normal, count, connections=1, rate=self.args.rate)

    async def attackers(self, modes, hold):
        """Start ``bench/drills/attackers.py``; :return: ``(proto, transport)`` once every
        connection is up."""
        spec = {"host": "127.0.0.1", "port": self.stack.port,
                "caFile": os.path.join(self.stack.workdir, "ca.crt"),
                "request": base64.b64encode(self.normal[0]).decode(),
                "interval": self.args.interval, "hold": hold, "modes": modes, "ramp": 60}
        proto, transport = ingress.spawnClient(self.reactor, self.stack, "attackers.py",
                                               "attack-%d" % len(self.figures), spec)
        up = json.loads(await proto.firstLine().addTimeout(120, self.reactor))
        return proto, transport, up

    async def stopAttackers(self, proto, transport):
        transport.write(b"stop\n")
        code = await proto.ended
        if code != 0:
            raise RuntimeError("attackers failed (%s):\n%s" % (
                code, proto.output.decode(errors="replace")[-3000:]))
        return json.loads(bytes(proto.stdout).splitlines()[-1])

    async def settleConnections(self, timeout=60):
        await pollUntil(self.reactor, lambda: ingress.sockets(
            self.pid, self.stack.port)["clients"] <= 0, timeout, interval=0.5,
            what="the daemon's client connections to close")

    async def idleConnections(self):
        n = self.args.idle
        say("idle: %d kept-alive TLS connections ..." % n)
        before = self.probe()
        proto, transport, up = await self.attackers({"idle": n}, hold=600)
        await self.stack.settle(3.0)
        held = self.probe()
        await self.stopAttackers(proto, transport)
        await self.settleConnections()
        self.figures["idle"] = {"before": before, "held": held, "up": up,
                                "per_connection_kib": 1024 * (held["rss"] - before["rss"]) / n,
                                "fds_per_connection": (held["files"]["total"]
                                                       - before["files"]["total"]) / n}

    async def attack(self):
        modes = {**split(self.args.slowloris, SLOWLORIS), **split(self.args.greedy, GREEDY)}
        say("attack: %s, and the normal client for %gs ..." % (modes, self.args.attack))
        before = self.probe()
        sampler = ingress.Sampler(self.reactor, self.pid, port=self.stack.port).start()
        proto, transport, up = await self.attackers(modes, hold=60)
        normal = await self.drive(self.args.attack)
        tally = await self.stopAttackers(proto, transport)
        sampler.stop()
        right = self.probe()
        await self.settleConnections()
        say("after: pausing %gs ..." % self.args.pause)
        await self.stack.settle(self.args.pause)
        self.figures["attack"] = {"modes": modes, "up": up, "normal": normal, "tally": tally,
                                  "before": before, "right": right, "after": self.probe(),
                                  "peak": {k: sampler.peak(k) for k in (
                                      "rss", "fds", "clients", "deleted", "deleted_bytes")}}

    async def overTheCap(self):
        n = DEFAULT_MAX_CONNECTIONS + 500
        say("over the cap: %d connections at once, the normal client connected first ..." % n)
        sampler = ingress.Sampler(self.reactor, self.pid).start()
        normal = defer.ensureDeferred(self.drive(self.args.attack))
        await self.stack.settle(2.0)  # the normal client's connection is up
        proto, transport, up = await self.attackers({"idle": n}, hold=600)
        # The attackers count a connection once the kernel has it; the daemon takes
        # them at its TLS handshake rate, so wait until it holds the cap (bounded).
        started = self.reactor.seconds()
        await pollUntil(self.reactor, lambda: ingress.sockets(self.pid, self.stack.port)[
            "clients"] >= DEFAULT_MAX_CONNECTIONS, 120, interval=0.25,
            what="the daemon to hold --max-connections client connections")
        reached = self.reactor.seconds() - started
        await self.stack.settle(2.0)
        held = self.probe()
        result = await normal
        tally = await self.stopAttackers(proto, transport)
        sampler.stop()
        await self.settleConnections()
        self.figures["cap"] = {"attempted": n, "up": up, "held": held, "normal": result,
                               "reached_after": reached,
                               "tally": tally, "peak_fds": sampler.peak("fds"),
                               "peak_rss": sampler.peak("rss")}

    # -- the tally ------------------------------------------------------------
    def report(self):
        f, args = self.figures, self.args
        alone, attack = f["alone"], f["attack"]
        under = attack["normal"]
        idle = f["idle"]
        start = f["start"]
        sections = [
            ("the normal client (1 kept-alive connection, %g Presents/s offered)" % args.rate, [
                ("alone", _normal(alone)), ("under attack", _normal(under))]
             + ([("over the cap", _normal(f["cap"]["normal"]))] if "cap" in f else [])),
            ("what attacked (%d slowloris + %d greedy connection slots for %gs, one byte or "
             "16 KiB every %gs)" % (args.slowloris, args.greedy, args.attack, args.interval),
             [(mode, _mode(t)) for mode, t in sorted(attack["tally"].items())]),
            ("the daemon during the attack", [
                ("open fds before / peak / right after / after %gs" % args.pause,
                 "%d / %d / %d / %d" % (attack["before"]["files"]["total"], attack["peak"]["fds"],
                                        attack["right"]["files"]["total"],
                                        attack["after"]["files"]["total"])),
                ("client connections peak / after", "%d / %d" % (
                    attack["peak"]["clients"], attack["after"]["sockets"]["clients"])),
                ("RSS before / peak / right after / after %gs" % args.pause, " / ".join(
                    mib(v) for v in (attack["before"]["rss"], attack["peak"]["rss"],
                                     attack["right"]["rss"], attack["after"]["rss"]))),
                ("deleted temporary files, peak", "%d (%d bytes)" % (
                    attack["peak"]["deleted"], attack["peak"]["deleted_bytes"])),
                ("timeouts by phase (kibaship_dns01_http_timeouts_total)", ", ".join(
                    "%s %d" % kv for kv in sorted(f["timeouts"].items())))]),
            ("memory per connection", [
                ("idle kept-alive TLS connection", "%.1f KiB RSS, %.2f fds (%d connections: RSS "
                 "%s -> %s)" % (idle["per_connection_kib"], idle["fds_per_connection"],
                                args.idle, mib(idle["before"]["rss"]), mib(idle["held"]["rss"]))),
                ("--max-connections %d of them" % DEFAULT_MAX_CONNECTIONS,
                 "%s on top of %s at start = %s (Deployment limit %d MiB)" % (
                     mib(idle["per_connection_kib"] * DEFAULT_MAX_CONNECTIONS / 1024),
                     mib(start["rss"]), mib(self.capRSS()), DEPLOYMENT_LIMIT_MIB))]),
            ("file descriptors", [
                ("daemon's limit (soft, hard)", "%d, %d" % self.fdLimit),
                ("needed at --max-connections %d" % DEFAULT_MAX_CONNECTIONS,
                 "about %d + %d in use at start = %d" % (
                     DEFAULT_MAX_CONNECTIONS, start["files"]["total"],
                     DEFAULT_MAX_CONNECTIONS + start["files"]["total"]))]),
        ]
        if "cap" in f:
            cap = f["cap"]
            sections.append(("over the cap (%d connections attempted)" % cap["attempted"], [
                ("the cap held after", "%.1f s after the attackers started" %
                 cap["reached_after"]),
                ("held by the daemon", "%d client connections, %d fds, RSS %s" % (
                    cap["held"]["sockets"]["clients"], cap["held"]["files"]["total"],
                    mib(cap["held"]["rss"]))),
                ("refused (kibaship_dns01_http_connections_refused_total)", "%d" % f["refused"]),
                ("'connection limit reached' log lines", f["limit_lines"]),
                ("the attackers saw", _mode(cap["tally"].get("idle", {})))]))
        return sections, self.verdicts()

    def capRSS(self):
        idle = self.figures["idle"]
        return self.figures["start"]["rss"] + idle["per_connection_kib"] * \
            DEFAULT_MAX_CONNECTIONS / 1024

    def verdicts(self):
        f = self.figures
        attack, under = f["attack"], f["attack"]["normal"]
        failed = under["bad"] + under["errors"]
        slowest = max((t["held_max"] for m, t in attack["tally"].items()), default=0)
        limit = HEADER_TIMEOUT + BODY_TIMEOUT + ABORT + 2
        out = [
            ("the normal client's p99 under attack below %g ms" % P99_TARGET_MS,
             under["p99_ms"] is not None and under["p99_ms"] < P99_TARGET_MS,
             "%.1f ms" % (under["p99_ms"] or 0)),
            ("none of its requests failed", failed == 0, "%d failed" % failed),
            ("no slow connection held longer than the deadlines allow (%g s)" % limit,
             slowest <= limit, "longest %.1f s" % slowest),
            ("fds bounded during the attack", attack["peak"]["fds"] <= attack["before"]["files"][
                "total"] + self.args.slowloris + self.args.greedy + 64,
             "peak %d" % attack["peak"]["fds"]),
            ("no temporary files for request bodies", attack["peak"]["deleted"] == 0, ""),
            ("every client connection closed afterwards", attack["after"]["sockets"]["clients"]
             == 0, ""),
            ("RSS back within 10 %% of its value before the attack after %gs" % self.args.pause,
             attack["after"]["rss"] <= attack["before"]["rss"] * 1.10,
             "%s -> %s" % (mib(attack["before"]["rss"]), mib(attack["after"]["rss"]))),
            ("--max-connections idle connections fit the Deployment's %d MiB" %
             DEPLOYMENT_LIMIT_MIB, self.capRSS() < DEPLOYMENT_LIMIT_MIB, mib(self.capRSS())),
            common.logVerdict(self.stack.daemon.logPath),
        ]
        if "cap" in f:
            cap = f["cap"]
            capFailed = cap["normal"]["bad"] + cap["normal"]["errors"]
            out += [
                ("over the cap: at most --max-connections held", cap["held"]["sockets"]["clients"]
                 <= DEFAULT_MAX_CONNECTIONS, "%d" % cap["held"]["sockets"]["clients"]),
                ("over the cap: refusals counted and logged (rate-limited)",
                 f["refused"] > 0 and 1 <= f["limit_lines"] <= 1 + self.args.attack / 10,
                 "%d refused, %d lines" % (f["refused"], f["limit_lines"])),
                ("over the cap: the normal client's requests all answered", capFailed == 0,
                 "%d failed" % capFailed)]
        return out


def _normal(r):
    return ("%d sent, %d ok, %d failed; p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
        r["sent"], r["ok"], r["bad"] + r["errors"], r["p50_ms"] or 0, r["p99_ms"] or 0,
        r["max_ms"] or 0) + ("; first failure: %s" % r["sample"] if r["sample"] else ""))


def _mode(t):
    if not t:
        return "-"
    return "%d connections; ended %s; answers %s; held %.1f s on average, %.1f s at most" % (
        t["opened"], _counts(t["endings"]), _counts(t["answers"]) or "none", t["held_mean"],
        t["held_max"])


def _counts(counter):
    return ", ".join("%s %d" % kv for kv in sorted(counter.items()))


async def drill(reactor, args, stack):
    slow = SlowClientsDrill(reactor, args, stack)
    await slow.run()
    sections, verdicts = slow.report()
    return ingress.tallyOf("slow clients", sections, verdicts, slow.figures)


if __name__ == "__main__":
    common.main(parseArgs(sys.argv[1:]), drill, script="bench/drills/slowclients.py")
