"""Failover under load: every Valkey primary SIGKILLed while fresh Presents pour in.

    python bench/drills/failover.py [--presents 10000] [--quick] [--json OUT]

The real ``twistd kibaship-dns01`` runs with ``--valkey-min-replicas 1`` (a
Present succeeds only once ``WAIT`` saw a replica take its entry) against a
six-node Valkey cluster (three primaries, one replica each).  ``--presents``
fresh Challenges of ``--projects`` Kibaship projects (spread over all three
primaries) are created in the stand-in API server and presented once each by
``bench/loadgen.py`` in retry mode, which behaves like cert-manager: a failed
Present (HTTP error, no answer in time, or 201 with ``success:false``) is
sent again after an exponential backoff until it succeeds.  Meanwhile, once a
quarter, a half and three quarters of them have succeeded, the primary of
each shard in turn is SIGKILLed; ``--restart-after`` seconds later (15 by
default: a pod's restart), and not before its replica has taken over, the
killed node is started again and rejoins as a replica (``--rounds 2`` kills
each shard's primary twice).  Until then the new primary has no replica,
so Presents on its projects fail their ``WAIT`` and are retried.

At the end every project's stream is read back with ``valkey-cli`` and
checked (see :class:`~bench.drills.common.StreamCheck`): each challenge has
exactly one ``present`` entry, per-project sequences are consecutive, no
loss, no duplicate.  A :class:`LiveConsumer` reads every stream throughout,
as the Kibaship frontend would (each time from the last entry it saw, on the
primary): what it saw must be what is there at the end, in the same order,
each sequence one more than the one before.  Each failover's cost is printed from the generator's
timeline: how long the shard's projects got no Present through (blackout),
and the stall of every Present that failed at least once meanwhile (first
attempt to success: p99 and max).
"""
import collections
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from twisted.internet import defer, threads  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from bench import loadgen  # noqa: E402
from bench.drills import common  # noqa: E402
from bench.drills.common import percentile, say, seconds  # noqa: E402
from bench.stack import fillSizes  # noqa: E402
from kibaship_dns01.testing.certmanager import numberedChains, projectUUIDs  # noqa: E402
from kibaship_dns01.testing.valkeycluster import streamEntries  # noqa: E402
from kibaship_dns01.valkey.cluster import ClusterClient  # noqa: E402
from kibaship_dns01.valkey.errors import ValkeyError  # noqa: E402
from kibaship_dns01.valkey.script import streamKey  # noqa: E402
from kibaship_dns01.valkey.slots import keySlot  # noqa: E402

PRESENT_SUCCESS = {"action": "Present", "outcome": "success"}


def parseArgs(argv):
    p = common.baseParser("Failover under load (issue 12).")
    p.add_argument("--presents", type=int, default=None, help="fresh Presents (default 10000)")
    p.add_argument("--projects", type=int, default=30)
    p.add_argument("--connections", type=int, default=20,
                   help="concurrent Presents in flight (cert-manager's workers)")
    p.add_argument("--rounds", type=int, default=1, help="kills per shard")
    p.add_argument("--restart-after", type=float, default=15.0,
                   help="s from the SIGKILL to starting the node again (at the earliest once"
                   " its replica took over): until it is back the new primary has no replica"
                   " and WAIT fails")
    p.add_argument("--backoff-base", type=float, default=0.1,
                   help="first retry delay in s (cert-manager's own: 5 s)")
    p.add_argument("--backoff-max", type=float, default=2.0,
                   help="longest retry delay in s (cert-manager's own: 300 s)")
    p.add_argument("--timeout", type=float, default=30.0, help="per attempt, in s")
    p.add_argument("--quick", action="store_true", help="1,000 Presents over 12 projects")
    args = p.parse_args(argv)
    fillSizes(args, {"presents": (10000, 1000)})
    if args.quick:
        args.projects = min(args.projects, 12)
    return args


# --- the faults (blocking; run in a thread) ----------------------------------------

def failoverOnce(cluster, slot, restartAfter):
    """SIGKILL the primary serving ``slot``, wait for its replica to take over,
    ``restartAfter`` seconds later start it again, and wait until it is that
    replica's replica, in sync."""
    node = cluster.slotOwner(slot)
    ranges = sorted(r for r, owner in cluster.slotMap().items() if owner is node)
    record = {"node": node.address, "ranges": ranges, "killed": time.monotonic()}
    cluster.kill(node)
    cluster.waitForFailover(node, timeout=60)
    record["promoted"] = time.monotonic()
    record["newPrimary"] = cluster.slotOwner(slot).address
    time.sleep(max(0.0, record["killed"] + restartAfter - time.monotonic()))
    cluster.restart(node)
    record["restarted"] = time.monotonic()

    def rejoined():
        repl = cluster.info(node, "replication")
        return (repl.get("role") == "slave" and repl.get("master_link_status") == "up"
                and cluster.healthy())
    cluster._waitUntil(rejoined, time.monotonic() + 60, "%s to rejoin as a replica" % (
        node.address,))
    record["rejoined"] = time.monotonic()
    return record


class LiveConsumer:
    """Reads each project's stream while the drill runs, as a consumer does:
    ``XRANGE key (<last id seen> +`` on the primary, every ``interval`` seconds,
    through the product's own cluster client (it follows the failover)."""

    def __init__(self, reactor, cluster, projects, interval=0.2):
        self.reactor, self.interval = reactor, interval
        self.client = ClusterClient(reactor, cluster.target())
        self.seen = {p: [] for p in projects}  # (entry id, sequence, event_id) in reading order
        self.running = True

    def start(self):
        self.done = defer.gatherResults([defer.ensureDeferred(self._follow(p))
                                         for p in self.seen])
        return self

    async def stop(self):
        self.running = False
        await self.done
        await self.client.close()

    async def _follow(self, project):
        key, last = streamKey(project), "0-0"
        while self.running:
            try:
                reply = await self.client.execute(key, lambda conn, after=last: conn.send(
                    "XRANGE", key, "(" + after, "+", "COUNT", 1000))
            except ValkeyError:
                reply = []
            for entryId, fields in streamEntries(reply):
                self.seen[project].append((entryId, int(fields["sequence"]),
                                           fields["event_id"]))
                last = entryId
            await deferLater(self.reactor, self.interval, lambda: None)

    def report(self, tally, streams):
        """What it saw against what is there at the end."""
        vanished, reused, jumps, count = [], [], [], 0
        for project, seen in self.seen.items():
            final = {entryId: (int(f["sequence"]), f["event_id"])
                     for entryId, f in streams[project]}
            bySequence = {seq: eventId for seq, eventId in final.values()}
            previous = 0
            for entryId, sequence, eventId in seen:
                count += 1
                if entryId not in final:
                    vanished.append("%s %s (sequence %d)" % (project, entryId, sequence))
                if bySequence.get(sequence, eventId) != eventId:
                    reused.append("%s sequence %d" % (project, sequence))
                if sequence != previous + 1:
                    jumps.append("%s: %d after %d" % (project, sequence, previous))
                previous = sequence
        tally.line("live consumer: read %d entries while the load ran (XRANGE after the last id"
                   " seen, every %g s per stream)" % (count, self.interval))
        tally.check("the live consumer saw each project's sequence one by one (no gap, no"
                    " repeat)", not jumps, "; ".join(jumps[:5]) or "none")
        tally.check("nothing the live consumer saw was taken back by a failover",
                    not vanished and not reused,
                    "%d vanished (%s), %d sequence numbers given to another event" % (
                        len(vanished), ", ".join(vanished[:3]), len(reused)))


class FailoverDrill:
    def __init__(self, reactor, args, stack):
        self.reactor, self.args, self.stack = reactor, args, stack
        self.cluster = stack.cluster
        self.tally = common.Tally("failover")
        self.failovers = []
        self.loadOver = False

    async def run(self):
        args, stack = self.args, self.stack
        projects = projectUUIDs(args.projects, namespace="kibaship-failover")
        chains = numberedChains("failover", 0, args.presents, projects=projects)
        shards = await threads.deferToThread(self.shardsOf, projects)
        say("creating %d Challenges of %d projects, waiting for the daemon's cache ..."
            % (len(chains), len(projects)))
        await stack.addChains(chains)
        warm = await stack.drive(stack.requests([stack.env.chain]), 20, 2)
        if warm["bad"] or warm["errors"]:
            raise RuntimeError("warm-up Presents failed: %s" % (warm["sample"],))
        plan = sorted(shards) * args.rounds
        timeline = os.path.join(stack.workdir, "failover-timeline.jsonl")
        base = (await stack.metrics()).value("kibaship_dns01_solver_requests_total",
                                             **PRESENT_SUCCESS) or 0
        say("presenting %d challenges on %d connections; %d primaries to kill ..."
            % (len(chains), args.connections, len(plan)))
        started = time.monotonic()
        consumer = LiveConsumer(self.reactor, self.cluster, projects).start()
        chaos = []
        run = dict(requests=stack.requests(chains), count=len(chains),
                   connections=args.connections, timeout=args.timeout, deadline=1500,
                   timeline=timeline, retry={"base": args.backoff_base, "max": args.backoff_max})
        result = (await stack.driveMany(
            [run], onGo=lambda: chaos.append(self.chaos(plan, base, len(chains)))))[0]
        self.loadOver = True
        ended = time.monotonic()
        await chaos[0]
        await deferLater(self.reactor, 2 * consumer.interval, lambda: None)  # the last entries
        await consumer.stop()
        say("load over in %.1f s; reading %d streams back ..." % (ended - started, len(projects)))
        streams, counters = await threads.deferToThread(common.readStreams, self.cluster,
                                                        projects)
        self.report(chains, projects, shards, result, loadgen.readTimeline(timeline), streams,
                    counters, started, ended, plan)
        consumer.report(self.tally, streams)
        common.checkDaemon(self.tally, stack)
        return self.tally

    def shardsOf(self, projects):
        """``{first slot of a primary's ranges: [its projects]}`` for today's primaries."""
        slotMap = self.cluster.slotMap()
        shards = collections.defaultdict(list)
        for project in projects:
            slot = keySlot(streamKey(project))
            for (start, end), node in slotMap.items():
                if start <= slot <= end:
                    shards[(start, end)].append(project)
        byNode = collections.defaultdict(list)
        for (start, end), members in shards.items():
            byNode[slotMap[(start, end)].address].append(((start, end), members))
        # one entry per primary: its first range and all its projects
        return {ranges[0][0][0]: [p for _, members in ranges for p in members]
                for ranges in (sorted(v) for v in byNode.values())}

    def chaos(self, plan, base, count):
        from twisted.internet import defer
        return defer.ensureDeferred(self._chaos(plan, base, count))

    async def _chaos(self, plan, base, count):
        """Kill shard ``k``'s primary once ``(k+1)/(len(plan)+1)`` of the Presents
        succeeded and the previous failover is over."""
        for k, slot in enumerate(plan):
            threshold = base + (k + 1) * count / (len(plan) + 1)
            while not self.loadOver:
                done = (await self.stack.metrics()).value(
                    "kibaship_dns01_solver_requests_total", **PRESENT_SUCCESS) or 0
                if done >= threshold:
                    break
                await deferLater(self.reactor, 0.25, lambda: None)
            if self.loadOver:
                say("the load ended before failover %d of %d: give more --presents"
                    % (k + 1, len(plan)))
                return
            say("SIGKILL the primary of slot %d (%d Presents succeeded) ..." % (
                slot, done - base))
            record = await threads.deferToThread(failoverOnce, self.cluster, slot,
                                                 self.args.restart_after)
            record["slot"] = slot
            self.failovers.append(record)
            say("  %s killed; %s took over after %.1f s; back as a replica after %.1f s"
                % (record["node"], record["newPrimary"], record["promoted"] - record["killed"],
                   record["rejoined"] - record["killed"]))

    # -- the figures -------------------------------------------------------------
    def report(self, chains, projects, shards, result, attempts, streams, counters, started,
               ended, plan):
        t, args = self.tally, self.args
        projectOf = [c.certificate["metadata"]["labels"]["platform.kibaship.com/project-uuid"]
                     for c in chains]
        shardOfProject = {p: start for start, members in shards.items() for p in members}
        t.line("tried: %d fresh Presents (distinct Challenges) of %d projects on %d connections,"
               " daemon --valkey-min-replicas 1; retried like cert-manager (backoff %g s doubling"
               " to %g s, %g s per attempt)" % (len(chains), len(projects), args.connections,
                                                args.backoff_base, args.backoff_max,
                                                args.timeout))
        t.line("projects per shard (first slot of the primary's range: projects): %s" % ", ".join(
            "%d: %d" % (start, len(members)) for start, members in sorted(shards.items())))
        failed = [a for a in attempts if not a.ok]
        t.line("load: %.1f s, %d attempts for %d Presents (%d failed attempts), %d succeeded,"
               " %d gave up" % (ended - started, len(attempts), len(chains), len(failed),
                                result["succeeded"], result["gave_up"]))
        common.describeFailures(t, attempts)
        self.lifetimes(attempts)
        calm = [done - first for i, (first, done) in self.lives.items()
                if done is not None and not any(self.overlaps(i, r["killed"], r["rejoined"])
                                                for r in self.failovers)]
        t.line("Presents in flight during no failover: %d, first attempt to success p50 %s,"
               " p99 %s, max %s" % (len(calm), seconds(percentile(calm, 0.5)),
                                    seconds(percentile(calm, 0.99)),
                                    seconds(max(calm) if calm else None)))
        self.figures = []
        for k, record in enumerate(self.failovers):
            self.reportFailover(k, record, projectOf, shardOfProject)
        t.figures["failovers"] = self.figures
        t.figures["load"] = {"seconds": ended - started, "attempts": len(attempts),
                             "failed_attempts": len(failed), "succeeded": result["succeeded"]}
        t.check("every Present eventually succeeded", result["succeeded"] == len(chains)
                and result["gave_up"] == 0, "%d of %d" % (result["succeeded"], len(chains)))
        killed = {r["slot"] for r in self.failovers}
        t.check("each primary SIGKILLed at least once during the load",
                len(self.failovers) == len(plan) and killed == set(shards),
                "%d of %d failovers" % (len(self.failovers), len(plan)))
        common.StreamCheck(streams, counters, common.expectedOf(chains)).report(t)

    def lifetimes(self, attempts):
        """Each Present's (first attempt sent, successful answer) and its attempts."""
        self.byIndex = collections.defaultdict(list)
        for a in attempts:
            self.byIndex[a.index].append(a)
        self.lives = {}
        for index, tries in self.byIndex.items():
            ok = [a.done for a in tries if a.ok]
            self.lives[index] = (min(a.sent for a in tries), ok[0] if ok else None)

    def overlaps(self, index, start, end):
        first, done = self.lives[index]
        return first < end and (done is None or done > start)

    def reportFailover(self, k, record, projectOf, shardOfProject):
        """The Presents in flight at any time from the kill until the killed node
        is back as a replica: their stall (first attempt to success); and the
        shard's blackout (from the kill to the first success of an attempt sent
        after it, for the shard's projects)."""
        killed, slot = record["killed"], record["slot"]
        caught = [i for i in self.lives if self.overlaps(i, killed, record["rejoined"])]
        own = [i for i in caught if shardOfProject[projectOf[i]] == slot]
        failed = [i for i in caught if any(not a.ok for a in self.byIndex[i])]
        firstOk = min((a.done for i, tries in self.byIndex.items()
                       if shardOfProject[projectOf[i]] == slot
                       for a in tries if a.ok and a.sent >= killed), default=None)
        values = [self.lives[i][1] - self.lives[i][0] for i in caught
                  if self.lives[i][1] is not None]
        figure = {"node": record["node"], "slot": slot,
                  "promoted_s": record["promoted"] - killed,
                  "restarted_s": record["restarted"] - killed,
                  "rejoined_s": record["rejoined"] - killed,
                  "blackout_s": firstOk - killed if firstOk is not None else None,
                  "in_flight": len(caught), "own_shard": len(own), "failed_once": len(failed),
                  "stall_p99_s": percentile(values, 0.99),
                  "stall_max_s": max(values) if values else None}
        self.figures.append(figure)
        self.tally.line(
            "failover %d: SIGKILL %s (primary of slot %d...); replica %s took over after %s;"
            " killed node restarted after %s, back as a replica after %s; its projects got no"
            " Present through for %s; %d Presents in flight meanwhile (%d of its projects, %d"
            " failed at least once): stall p99 %s, max %s" % (
                k + 1, record["node"], slot, record["newPrimary"], seconds(figure["promoted_s"]),
                seconds(figure["restarted_s"]), seconds(figure["rejoined_s"]),
                seconds(figure["blackout_s"]), len(caught), len(own), len(failed),
                seconds(figure["stall_p99_s"]), seconds(figure["stall_max_s"])))


async def drill(reactor, args, stack):
    return await FailoverDrill(reactor, args, stack).run()


if __name__ == "__main__":
    common.main(parseArgs(sys.argv[1:]), drill, daemonArgs=("--valkey-min-replicas", "1"),
                script="bench/drills/failover.py")
