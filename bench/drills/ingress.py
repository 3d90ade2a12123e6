"""What the ingress drills (fuzz, slow clients, shutdown) share beyond ``common``.

Each drill runs through :func:`bench.drills.common.main` (a fresh Valkey
cluster, ``bench/stack.py``'s environment and real ``twistd`` daemon), attacks
the daemon from client processes or its own reactor, and then asks what the
daemon did:

* client certificates a drill presents (:func:`writeIdentities`);
* ``/proc`` probes: open file descriptors by kind (sockets, files, deleted
  temporary files), the TCP connections accepted on the daemon's port, the
  process's fd limit, the datagrams the kernel dropped at a UDP port, beside
  ``bench/stack.py``'s RSS; :class:`Sampler`
  records their peaks while a drill runs;
* :func:`streamEntries`: every stream on every Valkey primary, for "nothing
  was appended for anything refused";
* :func:`section`: a heading and aligned rows in a :class:`~bench.drills.common.Tally`.
"""
import collections
import json
import os
import sys
import time

from twisted.internet import task

from bench.drills.common import Tally
from bench.drills.wire import identityFiles
from bench.stack import rssMiB
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.daemon import ChildOutput
from kibaship_dns01.testing.valkeycluster import inThread, streamEntries as _parseXRange

HERE = os.path.dirname(os.path.abspath(__file__))


# --- identities ----------------------------------------------------------------

def writeIdentities(stack):
    """Client certificates the drills present, as PEM files in the work directory:
    ``front-proxy`` (the kube-aggregator's, written by the environment), ``wrong-cn``
    (the front-proxy CA, a CN not in allowed-names) and ``unknown-ca`` (the right CN
    from a CA nobody trusts); :return: ``{name: (cert file, key file)}``."""
    stranger = pki.makeCA("intruder-ca")
    pairs = {"wrong-cn": pki.clientPair(stack.env.frontProxyCA, "not-the-front-proxy"),
             "unknown-ca": pki.clientPair(stranger, "front-proxy-client")}
    for name, pair in pairs.items():
        pair.writeTo(*identityFiles(stack.workdir, name))
    return {name: identityFiles(stack.workdir, name) for name in ("front-proxy", *pairs)}


# --- client processes --------------------------------------------------------------

def spawnClient(reactor, stack, script, name, spec):
    """Run ``bench/drills/<script>`` in its own process with ``spec`` (written as
    ``<name>.json`` in the work directory); :return: ``(ChildOutput, transport)``."""
    path = os.path.join(stack.workdir, name + ".json")
    with open(path, "w") as f:
        json.dump(spec, f)
    proto = ChildOutput()
    argv = [sys.executable, os.path.join(HERE, script), path]
    transport = reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ),
                                     path=stack.workdir)
    return proto, transport


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


def udpDrops(port):
    """Datagrams the kernel dropped at the UDP sockets bound to local ``port`` (their
    receive buffer was full: the process did not read fast enough), from the ``drops``
    column of ``/proc/net/udp`` and ``udp6``; counted over each socket's life."""
    drops = 0
    for name in ("udp", "udp6"):
        try:
            with open("/proc/net/%s" % (name,)) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                drops += int(fields[-1])
    return drops


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


# --- the daemon's log ---------------------------------------------------------------

def logCount(path, needle):
    """Lines of a log holding ``needle``."""
    with open(path, "rb") as f:
        return sum(needle.encode() in line for line in f)


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

def section(tally, heading, rows):
    """``heading``, then ``(label, value)`` rows aligned under it."""
    tally.line()
    tally.line(heading)
    width = max((len(label) for label, _ in rows), default=0)
    for label, value in rows:
        tally.line("  %-*s  %s" % (width, label, value))


def tallyOf(name, sections, verdicts, figures=None):
    """A :class:`~bench.drills.common.Tally` of ``sections`` (``[(heading, rows)]``) and
    ``verdicts`` (``[(what, passed, detail)]``)."""
    tally = Tally(name)
    for heading, rows in sections:
        section(tally, heading, rows)
    for what, passed, detail in verdicts:
        tally.check(what, passed, detail)
    tally.figures.update(figures or {})
    return tally


def mib(value):
    return "%.1f MiB" % value if value is not None else "-"
