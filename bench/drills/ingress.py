"""The daemon's side of the ingress drills (fuzz, slow clients, shutdown).

Each drill starts :class:`DrillStack` (``bench/stack.py``'s environment and
real ``twistd`` daemon, with the flags the drill needs), attacks it from
client processes or its own reactor, and then asks what the daemon did:

* ``/proc`` probes: open file descriptors by kind (sockets, files, deleted
  temporary files) and the process's fd limit, beside ``bench/stack.py``'s
  RSS; :class:`Sampler` records their peaks while a drill runs;
* :class:`LogScan`: the daemon's JSON log read from an offset, with every
  traceback, ``error``/``critical`` line and unhandled-error report;
* :func:`streamEntries`: every stream on every Valkey primary, for "nothing
  was appended for anything refused";
* :func:`printTally`: the one tally each drill prints.
"""
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task

from bench.stack import Stack, rssMiB
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.environment import LocalEnvironment
from kibaship_dns01.testing.valkeycluster import ValkeyCluster, inThread, requireValkey, \
    streamEntries as _parseXRange

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def say(text=""):
    print(text, file=sys.stderr, flush=True)


# --- the stack -------------------------------------------------------------------

class _FlaggedEnvironment(LocalEnvironment):
    """The local environment, starting the daemon with extra flags."""

    def __init__(self, reactor, workdir, cluster, flags):
        super().__init__(reactor, workdir, cluster)
        self.flags = tuple(flags)

    def daemonArgs(self, port, metricsPort=0, extra=()):
        return super().daemonArgs(port, metricsPort, (*self.flags, *extra))


class DrillStack(Stack):
    """``bench/stack.py``'s stack with daemon ``flags`` (e.g. ``--shutdown-delay 2s``)."""

    def __init__(self, reactor, workdir, cluster, flags=()):
        super().__init__(reactor, workdir, cluster)
        self.env = _FlaggedEnvironment(reactor, workdir, cluster, flags)

    def writeIdentities(self):
        """Client certificates the drills present, as PEM files in the work directory:
        ``front-proxy`` (the kube-aggregator's), ``wrong-cn`` (the front-proxy CA, a CN
        not in allowed-names) and ``unknown-ca`` (the right CN from a CA nobody trusts)."""
        stranger = pki.makeCA("intruder-ca")
        pairs = {"wrong-cn": pki.clientPair(self.env.frontProxyCA, "not-the-front-proxy"),
                 "unknown-ca": pki.clientPair(stranger, "front-proxy-client")}
        for name, pair in pairs.items():
            pair.writeTo(*self.identityFiles(name))
        return {"front-proxy": self.identityFiles("front-proxy"),
                **{name: self.identityFiles(name) for name in pairs}}

    def identityFiles(self, name):
        return (os.path.join(self.workdir, name + ".crt"),
                os.path.join(self.workdir, name + ".key"))


def startCluster():
    requireValkey()
    say("starting a 6-node Valkey cluster ...")
    return ValkeyCluster(password="drill-" + os.urandom(6).hex()).start()


# --- /proc probes ----------------------------------------------------------------

def openFiles(pid):
    """The process's open file descriptors by kind: ``sockets``, ``deleted`` (files
    unlinked but open: Twisted's temporary request bodies), ``files``, ``other``."""
    kinds = {"total": 0, "sockets": 0, "deleted": 0, "files": 0, "other": 0}
    base = "/proc/%d/fd" % pid
    for fd in os.listdir(base):
        try:
            target = os.readlink(os.path.join(base, fd))
        except OSError:
            continue  # closed meanwhile
        kinds["total"] += 1
        if target.startswith("socket:"):
            kinds["sockets"] += 1
        elif target.endswith(" (deleted)"):
            kinds["deleted"] += 1
        elif target.startswith("/"):
            kinds["files"] += 1
        else:
            kinds["other"] += 1
    return kinds


def _tcpTable(pid):
    """``{inode: (local port, remote port, state)}`` from the process's TCP tables."""
    table = {}
    for name in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, name)) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16),
                            state)
    return table


def sockets(pid, port):
    """The process's TCP sockets: ``listening``, ``clients`` (connections accepted on
    ``port``) and ``outbound`` (to the API server, Valkey, ...)."""
    table, out = _tcpTable(pid), {"listening": 0, "clients": 0, "outbound": 0}
    base = "/proc/%d/fd" % pid
    for fd in os.listdir(base):
        try:
            target = os.readlink(os.path.join(base, fd))
        except OSError:
            continue
        if not target.startswith("socket:["):
            continue
        row = table.get(target[8:-1])
        if row is None:
            continue
        local, _, state = row
        if state == "0A":
            out["listening"] += 1
        elif local == port:
            out["clients"] += 1
        else:
            out["outbound"] += 1
    return out


def deletedBytes(pid):
    """Bytes held in unlinked-but-open files (what a full ``/tmp`` would be made of)."""
    total, base = 0, "/proc/%d/fd" % pid
    for fd in os.listdir(base):
        try:
            if os.readlink(os.path.join(base, fd)).endswith(" (deleted)"):
                total += os.stat(os.path.join(base, fd)).st_size
        except OSError:
            continue
    return total


def fdLimit(pid):
    """``(soft, hard)`` ``Max open files`` of a live process."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise RuntimeError("no fd limit for pid %d" % pid)


class Sampler:
    """The daemon's RSS, open fds and deleted-file bytes every ``interval`` seconds;
    :meth:`peak` and :attr:`samples` once stopped."""

    def __init__(self, reactor, pid, interval=0.5, port=None):
        self.pid = pid
        self.port = port  # the listener whose client connections are counted
        self.samples = []
        self._loop = task.LoopingCall(self._sample)
        self._loop.clock = reactor
        self._interval = interval
        self._t0 = None

    def _sample(self):
        try:
            files = openFiles(self.pid)
            self.samples.append({"t": time.monotonic() - self._t0, "rss": rssMiB(self.pid),
                                 "fds": files["total"], "sockets": files["sockets"],
                                 "deleted": files["deleted"],
                                 "deleted_bytes": deletedBytes(self.pid),
                                 "clients": sockets(self.pid, self.port)["clients"]
                                 if self.port else None})
        except (OSError, RuntimeError):
            self.stop()  # the process is gone

    def start(self):
        self._t0 = time.monotonic()
        self._loop.start(self._interval, now=True)
        return self

    def stop(self):
        if self._loop.running:
            self._loop.stop()

    def peak(self, key):
        return max((s[key] for s in self.samples), default=None)


def countsBy(metrics, name, label):
    """``{label value: sum}`` of every sample of ``name`` in a ``bench.stack.Metrics`` scrape."""
    out = collections.Counter()
    for (sample, labels), value in metrics._samples.items():
        if sample == name:
            out[dict(labels).get(label)] += value
    return out


# --- the daemon's log --------------------------------------------------------------

class LogScan:
    """The daemon's JSON log from the byte offset it had when created."""

    def __init__(self, path):
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0

    def lines(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace").splitlines()

    def problems(self):
        """``{"tracebacks": n, "error": n, "critical": n, "unhandled": n, "samples": [...]}``:
        every line that is a traceback, carries a failure, or is logged at
        error/critical level."""
        found = {"tracebacks": 0, "error": 0, "critical": 0, "unhandled": 0, "samples": []}
        for line in self.lines():
            event = _event(line)
            level = event.get("level") or event.get("log_level") or ""
            traceback = "Traceback (most recent call last)" in line
            unhandled = "Unhandled" in line or "unhandled error" in line
            if traceback:
                found["tracebacks"] += 1
            if unhandled:
                found["unhandled"] += 1
            if level in ("error", "critical"):
                found[level] += 1
            if (traceback or unhandled or level in ("error", "critical")) \
                    and len(found["samples"]) < 5:
                found["samples"].append(line[:600])
        return found

    def count(self, needle):
        return sum(needle in line for line in self.lines())


def _event(line):
    if line.startswith("{"):
        try:
            return json.loads(line)
        except ValueError:
            pass
    return {}


# --- Valkey streams ------------------------------------------------------------------

def _streamsOn(cluster, node):
    keys, cursor = [], "0"
    while True:
        cursor, batch = cluster.cli(node, "SCAN", cursor, "TYPE", "stream", "COUNT", "1000",
                                    json_=True)
        keys += batch
        if str(cursor) == "0":
            break
    return {key: _parseXRange(cluster.cli(node, "XRANGE", key, "-", "+", json_=True))
            for key in keys}


def streamEntries(cluster):
    """A Deferred firing ``{stream key: [(id, fields)]}`` over every primary
    (read with ``valkey-cli`` in a thread, so the stand-in API keeps serving)."""
    def read():
        out = {}
        for node in cluster.primaries():
            out.update(_streamsOn(cluster, node))
        return out
    return inThread(read)


def newEntries(before, after):
    """Entries in ``after`` that were not in ``before``: ``{key: [(id, fields)]}``."""
    out = {}
    for key, entries in after.items():
        seen = {entryId for entryId, _ in before.get(key, [])}
        fresh = [(i, f) for i, f in entries if i not in seen]
        if fresh:
            out[key] = fresh
    return out


# --- reporting ------------------------------------------------------------------------

def header(name, argv):
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return ("%s %s | %s | commit %s%s | %d cores, load average %.2f" % (
        name, " ".join(argv) or "(defaults)",
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit,
        "+uncommitted changes" if dirty else "", os.cpu_count(), os.getloadavg()[0]))


def printTally(title, sections, verdicts):
    """Print ``sections`` (``[(heading, [(label, value)])]``) and the verdicts
    (``[(what, passed, detail)]``); :return: whether every verdict passed."""
    print(title)
    for heading, rows in sections:
        print()
        print(heading)
        width = max((len(label) for label, _ in rows), default=0)
        for label, value in rows:
            print("  %-*s  %s" % (width, label, value))
    print()
    print("verdict")
    for what, passed, detail in verdicts:
        print("  %-4s %s%s" % ("PASS" if passed else "FAIL", what, (": " + detail) if detail else ""))
    return all(passed for _, passed, _ in verdicts)


def mib(value):
    return "%.1f MiB" % value if value is not None else "-"


def main(parseArgs, run, prefix, argv=None):
    """A drill's command: parse, start a Valkey cluster, ``run(reactor, args, cluster,
    workdir)`` under the reactor, clean up; exit status 0 when every verdict passed."""
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    workdir = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix=prefix)
    os.makedirs(workdir, exist_ok=True)
    cluster = startCluster()
    outcome = []
    try:
        task.react(lambda reactor: defer.ensureDeferred(
            run(reactor, args, cluster, workdir)).addCallback(outcome.append))
    except SystemExit as e:
        if e.code:
            raise
    finally:
        cluster.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if outcome and outcome[0] else 1)
