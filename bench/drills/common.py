"""What the drills share: running one around a :class:`~bench.stack.Stack`,
reading every project's stream back and checking it, sorting failures into
kinds, and the tally they print.

A drill is ``async def drill(reactor, args, stack) -> Tally``; :func:`main`
starts a fresh password-protected six-node Valkey cluster and a work
directory (and what the drill's ``prepare`` starts around the daemon), runs
the drill inside the reactor, stops everything, and prints the tally
(``--json`` writes it too).
"""
import argparse
import collections
import datetime
import json
import os
import sys

from bench import loadgen
from bench.stack import Stack, commitDescription, logProblems, runWithCluster
from kibaship_dns01.valkey.script import sequenceKey, streamKey

def say(text=""):
    """Progress goes to stderr; the tally alone goes to stdout."""
    print(text, file=sys.stderr, flush=True)


def percentile(values, q):
    ordered = sorted(values)
    return loadgen.percentile(ordered, q) if ordered else None


def seconds(value):
    return "-" if value is None else "%.2f s" % value


# --- the tally -----------------------------------------------------------------

class Tally:
    """Lines of figures, and checks that pass or fail; printed as one block."""

    def __init__(self, name):
        self.name = name
        self.lines = []
        self.checks = []
        self.figures = {}

    def line(self, text=""):
        self.lines.append(text)

    def check(self, what, ok, detail=""):
        self.checks.append((what, bool(ok), detail))
        return ok

    @property
    def passed(self):
        return all(ok for _, ok, _ in self.checks)

    def render(self, header):
        out = [header, *self.lines, ""]
        out += ["%-4s %s%s" % ("PASS" if ok else "FAIL", what, ": " + detail if detail else "")
                for what, ok, detail in self.checks]
        failed = [what for what, ok, _ in self.checks if not ok]
        out.append("TALLY %s: %s" % (self.name, "PASS (%d checks)" % len(self.checks)
                                     if not failed else "FAIL (%s)" % "; ".join(failed)))
        return "\n".join(out)


# --- failures ------------------------------------------------------------------

#: substrings of a failed attempt's message -> the kind it is counted under
FAILURE_KINDS = (
    ("required replicas", "WAIT: too few replicas acknowledged (success:false)"),
    ("could not reach Valkey", "Valkey unreachable within the append budget (success:false)"),
    ("could not append", "other Valkey failure (success:false)"),
    ("authorization could not be checked", "SubjectAccessReview failed (HTTP error)"),
    ("could not read Secret", "Secret unreadable (success:false)"),
    ("took longer than", "Kubernetes lookup timed out (success:false)"),
    ("cannot reach the API server", "API server unreachable (success:false)"),
    ("failed: ", "Kubernetes API error (success:false)"),
    ("no Challenge with key", "Challenge not found (success:false)"),
    ("no answer within", "no answer in time (client timeout)"),
    ("connection error", "connection lost"),
)


def failureKind(attempt):
    why = attempt.why or ""
    for needle, kind in FAILURE_KINDS:
        if needle in why:
            return kind
    return "HTTP %s: %s" % (attempt.code, why[:80])


def failureKinds(attempts):
    """``{kind: (count, first message)}`` over the failed attempts."""
    kinds = collections.OrderedDict()
    for a in attempts:
        if not a.ok:
            kind = failureKind(a)
            count, sample = kinds.get(kind, (0, a.why))
            kinds[kind] = (count + 1, sample)
    return kinds


def describeFailures(tally, attempts, indent="  "):
    for kind, (count, sample) in failureKinds(attempts).items():
        tally.line("%s%6d  %s" % (indent, count, kind))
        tally.line("%s        e.g. %s" % (indent, (sample or "")[:240]))


# --- the streams -----------------------------------------------------------------

def readStreams(cluster, projects):
    """Every entry of each project's stream, and its sequence counter (blocking)."""
    streams, counters = {}, {}
    for project in projects:
        streams[project] = cluster.xrange(streamKey(project))
        value = cluster.cli(cluster.liveNodes()[0], "-c", "GET", sequenceKey(project))
        counters[project] = int(value) if value else 0
    return streams, counters


class StreamCheck:
    """What the streams say about the challenges a drill presented.

    ``expected`` maps ``(dnsName, key)`` to its project.  A consumer reads a
    project's stream in entry order and trusts ``sequence`` to tell it
    whether it missed something, so the check is: in entry order the
    sequences are consecutive (each one more than the one before, from 1 on a
    fresh cluster), every ``event_data`` carries the same number, and the
    project's counter equals the last one (else the next event would leave a
    gap).  Each expected challenge has exactly one ``present`` entry, on its
    own project's stream.
    """

    def __init__(self, streams, counters, expected):
        self.expected = expected
        self.presents = collections.Counter()
        self.operations = collections.Counter()
        self.entries = 0
        self.wrongStream = 0
        self.unexpected = 0
        self.sequenceProblems = []
        for project, entries in streams.items():
            self._project(project, entries, counters.get(project, 0))
        self.lost = [k for k in expected if self.presents[k] == 0]
        self.duplicated = sum(n - 1 for k, n in self.presents.items() if n > 1)

    def _project(self, project, entries, counter):
        last = 0
        for entryId, fields in entries:
            self.entries += 1
            self.operations[fields.get("operation")] += 1
            sequence = int(fields["sequence"])
            data = json.loads(fields["event_data"])
            if sequence != last + 1:
                self.sequenceProblems.append("%s: entry %s has sequence %d after %d" % (
                    project, entryId, sequence, last))
            if data["metadata"]["sequence_number"] != sequence:
                self.sequenceProblems.append("%s: entry %s says sequence %s in event_data but"
                                             " %d on the entry" % (
                                                 project, entryId,
                                                 data["metadata"]["sequence_number"], sequence))
            last = sequence
            if fields.get("operation") == "present":
                self._present(project, data["payload"])
        if counter != last:
            self.sequenceProblems.append("%s: counter at %d, last entry has %d" % (
                project, counter, last))

    def _present(self, project, payload):
        key = (payload["dnsName"], payload["txt"])
        if key not in self.expected:
            self.unexpected += 1
            return
        self.presents[key] += 1
        if self.expected[key] != project:
            self.wrongStream += 1

    def report(self, tally):
        tally.line("streams: %d entries over %d projects (%s); %d expected challenges"
                   % (self.entries, len({p for p in self.expected.values()}),
                      ", ".join("%s %d" % kv for kv in sorted(self.operations.items())),
                      len(self.expected)))
        tally.check("every challenge has its present entry (0 lost)", not self.lost,
                    "%d lost, e.g. %s" % (len(self.lost), self.lost[:3]) if self.lost
                    else "0 lost")
        tally.check("no challenge presented twice (0 duplicated)", self.duplicated == 0,
                    "%d duplicated" % self.duplicated)
        tally.check("each present entry on its own project's stream",
                    self.wrongStream == 0 and self.unexpected == 0,
                    "%d on another project's stream, %d unknown" % (self.wrongStream,
                                                                     self.unexpected))
        tally.check("per-project sequence consecutive, counter at the last entry",
                    not self.sequenceProblems,
                    "; ".join(self.sequenceProblems[:5]) or "no gap, no repeat")


def challengeIdentity(chain):
    spec = chain.challenges[0]["spec"]
    return spec["dnsName"], spec["key"]


def expectedOf(chains):
    """``{(dnsName, key): project}`` of one-Challenge chains."""
    from kibaship_dns01.project import PROJECT_LABEL
    return {challengeIdentity(c): c.certificate["metadata"]["labels"][PROJECT_LABEL]
            for c in chains}


def checkDaemon(tally, stack):
    """No crash, nothing unexpected in the log."""
    alive = stack.daemon is not None and not stack.daemon.proto.ended.called
    tally.check("daemon still running (no crash)", alive)
    tally.check(*logVerdict(stack.daemon.logPath))


def logVerdict(path):
    """``(what, passed, detail)``: :func:`~bench.stack.logProblems` (errors,
    tracebacks, unhandled failures) found nothing in the daemon's log at ``path``."""
    problems = logProblems(path)
    return ("no error, traceback or unhandled failure in the daemon's log", not problems,
            "%d line(s), first: %s" % (len(problems), problems[0][:300]) if problems
            else "%s clean" % os.path.basename(path))


# --- running ---------------------------------------------------------------------

def baseParser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workdir", help="keep the work directory (logs, timelines) here")
    p.add_argument("--json", help="also write the tally and figures to this file")
    return p


def header(script, loadBefore):
    return ("%s %s | %s | commit %s | %d cores | load average %.2f at start, %.2f at end" % (
        script, " ".join(sys.argv[1:]) or "(defaults)",
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        commitDescription(), os.cpu_count(), loadBefore, os.getloadavg()[0]))


async def _run(reactor, args, cluster, workdir, drill, daemonArgs, script, prepare):
    loadBefore = os.getloadavg()[0]
    stack = Stack(reactor, workdir, cluster, daemonArgs)
    teardown = None
    try:
        await stack.start()
        if prepare is not None:
            teardown = await prepare(reactor, args, stack)
        await stack.startDaemon()
        tally = await drill(reactor, args, stack)
    finally:
        try:
            await stack.stop()
        finally:
            if teardown is not None:
                await teardown()
    text = tally.render(header(script, loadBefore))
    print(text, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"text": text, "passed": tally.passed, "figures": tally.figures,
                       "checks": tally.checks, "args": vars(args)}, f, indent=1, default=str)
    if not tally.passed:
        raise SystemExit(1)


def main(args, drill, daemonArgs=(), script=None, prepare=None):
    """Run ``drill`` (see the module docstring); exit status 1 when a check failed.

    :param prepare: ``async prepare(reactor, args, stack)``, run once the environment
        is up and before the daemon starts (it may start more around the daemon and
        set ``stack.daemonArgs``); it returns ``None`` or an ``async`` function that
        stops what it started, called after the stack has stopped."""
    runWithCluster(args.workdir, "kibaship-drill-", lambda reactor, cluster, workdir: _run(
        reactor, args, cluster, workdir, drill, daemonArgs, script or sys.argv[0], prepare))
