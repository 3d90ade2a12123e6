"""What ``bench/present.py`` runs and drives: the local environment, the real
daemon under ``twistd``, the floor site, and load generator runs.

The environment is the one ``python -m kibaship_dns01.testing.localrun`` uses
(:class:`~kibaship_dns01.testing.environment.LocalEnvironment`: six-node
password-protected Valkey cluster, the stand-in API with Kibaship chains, the
PKI); the stand-in API server runs in this process, which does nothing else
while a load runs, so the CPU this process uses during a run is the stand-in's
(measured and reported per run).  Every other piece is its own process: the
daemon, the floor, each load generator run, py-spy.
"""
import datetime
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.internet.task import deferLater

from bench import loadgen
from kibaship_dns01.challenge import CLEANUP, PRESENT
from kibaship_dns01.testing.daemon import ChildOutput, DaemonProcess
from kibaship_dns01.testing.environment import LocalEnvironment
from kibaship_dns01.testing.ports import freePort
from kibaship_dns01.testing.valkeycluster import ValkeyCluster, requireValkey

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHALLENGES = {"cache": "challenges"}
ORDERS = {"cache": "orders"}
SUCCESS = '"success":true'


# --- running a bench or drill ---------------------------------------------------

def fillSizes(args, sizes):
    """Give every option of ``sizes`` (``{dest: (default, --quick default)}``) the
    command line left unset its full or its ``--quick`` value; :return: ``args``."""
    for name, (full, quick) in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def commitDescription():
    """The checked-out commit, ``+uncommitted changes`` when tracked files differ."""
    def git(*argv):
        return subprocess.run(["git", "-C", ROOT, *argv], capture_output=True, text=True).stdout
    dirty = "+uncommitted changes" if git("status", "--porcelain", "--untracked-files=no").strip() \
        else ""
    return git("rev-parse", "--short", "HEAD").strip() + dirty


def runHeader(script, loadBefore):
    """The first line of a bench's output: what ran, when, on which commit, and the
    load average at its start (``loadBefore``) and now."""
    return ("%s %s | %s | commit %s | %d cores | load average %.2f at start, %.2f at end" % (
        script, " ".join(sys.argv[1:]) or "(defaults)",
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        commitDescription(), os.cpu_count(), loadBefore, os.getloadavg()[0]))


def writeResults(path, header, args, rows, profile):
    """Every figure of a run as JSON (``--json``)."""
    with open(path, "w") as f:
        json.dump({"header": header, "args": vars(args), "rows": rows, "profile": profile},
                  f, indent=1, default=str)


def runWithCluster(workdir, prefix, body):
    """Start a fresh six-node password-protected Valkey cluster and a work
    directory (``workdir``, kept; else a temporary one, removed), then run
    ``body(reactor, cluster, workdir)`` (a coroutine) in the reactor; the
    process exits with its status (``task.react``)."""
    requireValkey()
    keep = workdir is not None
    workdir = os.path.abspath(workdir) if keep else tempfile.mkdtemp(prefix=prefix)
    os.makedirs(workdir, exist_ok=True)
    print("starting a 6-node Valkey cluster ...", file=sys.stderr, flush=True)
    cluster = ValkeyCluster(password=secrets.token_urlsafe(16)).start()
    try:
        task.react(lambda reactor: defer.ensureDeferred(body(reactor, cluster, workdir)))
    finally:
        cluster.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# --- /proc probes ------------------------------------------------------------

def cpuSeconds(pid):
    """User + system CPU seconds of a live process, from ``/proc/<pid>/stat``."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rssMiB(pid):
    """``VmRSS`` of a live process in MiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS for pid %d" % pid)


def ownCPU():
    t = os.times()
    return t.user + t.system


class Metrics:
    """One scrape of the daemon's ``/metrics``: ``value(name, **labels)``."""

    def __init__(self, text):
        self._samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self._samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name, **labels):
        return self._samples.get((name, frozenset(labels.items())))

    def labelValues(self, name, label):
        """The values ``label`` takes among the samples of ``name``, sorted."""
        return sorted({dict(labels).get(label) for (n, labels) in self._samples if n == name}
                      - {None})

    def total(self, name):
        """Sum over every label set of ``name``."""
        return sum(v for (n, _), v in self._samples.items() if n == name)


# --- child processes -----------------------------------------------------------

class ChildServer:
    """A server in a child process that prints one JSON line once listening
    (``{"port": N, ...}``, kept as :attr:`info`); stopped with SIGTERM."""

    def __init__(self, reactor, argv, cwd):
        self.reactor, self.argv, self.cwd = reactor, argv, cwd
        self.proto = ChildOutput()
        self.transport = None
        self.info = None

    async def start(self, timeout=30):
        self.transport = self.reactor.spawnProcess(self.proto, self.argv[0], self.argv,
                                                   env=dict(os.environ), path=self.cwd)
        self.info = json.loads(await self.proto.firstLine().addTimeout(timeout, self.reactor))
        return self.info

    @property
    def port(self):
        return self.info["port"] if self.info else None

    @property
    def pid(self):
        return self.transport.pid

    async def stop(self):
        if self.transport is None:
            return
        if not self.proto.ended.called:
            self.transport.signalProcess("TERM")
        await self.proto.ended


class Floor(ChildServer):
    """``bench/floor.py`` as a child process, serving the daemon's certificate."""

    def __init__(self, reactor, env):
        caFile = os.path.join(env.workdir, "front-proxy-ca.crt")
        super().__init__(reactor, [
            sys.executable, os.path.join(HERE, "floor.py"), "--port", "0", "--tls-cert-file",
            env.certFile, "--tls-private-key-file", env.keyFile, "--client-ca-file", caFile],
            env.workdir)
        self.env = env

    async def start(self):
        with open(self.argv[-1], "wb") as f:
            f.write(self.env.frontProxyCA.certPEM)
        return await super().start()


# --- the stack -----------------------------------------------------------------

def logProblems(path):
    """Lines of a daemon's JSON log that say something went wrong inside it: level
    ``error`` or ``critical``, a traceback, or Twisted's "Unhandled" reports.
    (``warn`` lines are expected under faults: they say what failed and why.)"""
    problems = []
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                if line.strip():  # not JSON: twistd or Python itself wrote it
                    problems.append(line)
                continue
            if (event.get("level") in ("error", "critical") or "traceback" in event
                    or "Unhandled" in str(event.get("msg", ""))):
                problems.append(line)
    return problems


class Stack:
    """The environment, the daemon and (when asked) the floor; see the module docstring.

    :param daemonArgs: extra ``twistd kibaship-dns01`` flags (e.g.
        ``("--valkey-min-replicas", "1")``).
    """

    def __init__(self, reactor, workdir, cluster, daemonArgs=()):
        self.reactor = reactor
        self.workdir = workdir
        self.cluster = cluster
        self.daemonArgs = tuple(daemonArgs)
        self.env = LocalEnvironment(reactor, workdir, cluster)
        self.port = freePort()
        self.metricsPort = freePort()
        self.host = "localhost:%d" % self.port
        self.daemon = None
        self.floor = None
        self._files = 0

    async def start(self):
        await self.env.start()

    async def startDaemon(self, onSpawn=None):
        """Start ``twistd kibaship-dns01``; :return: (seconds from spawn to ``/readyz``
        200, the daemon's CPU seconds by then, this process's CPU seconds meanwhile:
        the stand-in serving the daemon's LISTs plus the ``/readyz`` polling).

        :param onSpawn: called with the daemon's pid right after it is spawned
            (a profiler attaching)."""
        self.daemon = DaemonProcess(self.reactor, self.env.daemonArgs(self.port, self.metricsPort,
                                                                      self.daemonArgs),
                                    cwd=self.workdir,
                                    logPath=os.path.join(self.workdir, "daemon.log"))
        started, ownBefore = time.monotonic(), ownCPU()
        self.daemon.start()
        if onSpawn is not None:
            onSpawn(self.daemon.pid)
        await self.daemon.waitReady("https://localhost:%d" % self.port,
                                    self.env.servingCA.certPEM, timeout=60, interval=0.02)
        return (time.monotonic() - started, cpuSeconds(self.daemon.pid), ownCPU() - ownBefore)

    async def stopDaemon(self):
        if self.daemon is not None:
            await self.daemon.stop()
            os.replace(self.daemon.logPath, self.daemon.logPath + ".%d" % self.daemon.pid)
            self.daemon = None

    async def startFloor(self):
        self.floor = Floor(self.reactor, self.env)
        await self.floor.start()

    async def stop(self):
        if self.floor is not None:
            await self.floor.stop()
        await self.stopDaemon()
        await self.env.stop()

    # -- observing the daemon ---------------------------------------------------
    async def metrics(self):
        resp = await treq.get("http://127.0.0.1:%d/metrics" % self.metricsPort, timeout=10)
        return Metrics((await treq.text_content(resp)))

    async def cachedChallenges(self):
        return (await self.metrics()).value("kibaship_dns01_cache_objects", **CHALLENGES)

    async def cachedOrders(self):
        return (await self.metrics()).value("kibaship_dns01_cache_objects", **ORDERS)

    async def waitCachedChallenges(self, expected, timeout=120.0, orders=None):
        """Until the daemon's Challenge cache holds ``expected`` objects (and its
        Order cache ``orders``, when given), bounded."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = await self.metrics()
            have = metrics.value("kibaship_dns01_cache_objects", **CHALLENGES)
            haveOrders = metrics.value("kibaship_dns01_cache_objects", **ORDERS)
            if have == expected and orders in (None, haveOrders):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon's Challenge cache holds %s objects and its Order"
                                   " cache %s after %gs, expected %d and %s"
                                   % (have, haveOrders, timeout, expected, orders))
            await deferLater(self.reactor, 0.05, lambda: None)

    async def settle(self, seconds=1.0):
        await deferLater(self.reactor, seconds, lambda: None)

    # -- Challenges ---------------------------------------------------------
    async def addChains(self, chains):
        """Create ``chains`` in the stand-in and wait until the daemon's caches have
        them: cert-manager creates an Order well before its Challenges (it asks
        the ACME server for the authorizations in between), so a Present finds
        both in a real cluster."""
        before, orders = await self.cachedChallenges(), await self.cachedOrders()
        self.env.addChains(chains)
        await self.waitCachedChallenges(before + sum(len(c.challenges) for c in chains),
                                        orders=orders + len(chains))

    async def removeChains(self, chains):
        before, orders = await self.cachedChallenges(), await self.cachedOrders()
        self.env.removeChains(chains)
        await self.waitCachedChallenges(before - sum(len(c.challenges) for c in chains),
                                        orders=orders - len(chains))

    def requests(self, chains, action=PRESENT):
        return [self.env.aggregatorRequest(self.host, action, c.challenges[0]) for c in chains]

    def cleanups(self, chains):
        return self.requests(chains, CLEANUP)

    # -- driving --------------------------------------------------------------
    def _cpu(self, serverPid):
        return {"server": cpuSeconds(serverPid),
                "valkey": sum(cpuSeconds(n.process.pid) for n in self.cluster.nodes if n.alive),
                "api": ownCPU()}

    async def drive(self, requests, count, connections, rate=None, floor=False, timeout=30,
                    **spec):
        """One load generator run against the daemon (or the floor); :return: its
        result plus the CPU each party used, in % of one core over the run.
        ``spec`` adds keys of ``loadgen.py``'s spec (``retry``, ``timeline``, ``deadline``)."""
        run = dict(spec, requests=requests, count=count, connections=connections, rate=rate,
                   timeout=timeout)
        return (await self.driveMany([run], floor=floor))[0]

    async def driveMany(self, runs, floor=False, onGo=None):
        """Several load generators at once, all let go at the same moment (after every
        one has its connections up); ``runs`` are :meth:`drive`'s arguments as dicts;
        ``onGo()`` is called right then.  :return: their results, in order; the CPU
        figures cover the whole window (they are shared, not per generator)."""
        serverPid = self.floor.pid if floor else self.daemon.pid
        specs = [self._writeSpec(run, floor) for run in runs]
        children = [self._spawnGenerator(specPath) for _, specPath in specs]
        killer = self.reactor.callLater(1900, lambda: [
            t.signalProcess("KILL") for _, t in children if t.pid is not None])
        try:
            for proto, _ in children:
                await proto.firstLine()
            before = self._cpu(serverPid)
            for _, transport in children:
                transport.write(b"go\n")
            if onGo is not None:
                onGo()
            codes = [await proto.ended for proto, _ in children]
            after = self._cpu(serverPid)
        finally:
            if killer.active():
                killer.cancel()
        results = []
        for (path, specPath), (proto, _), code in zip(specs, children, codes):
            os.unlink(path)
            os.unlink(specPath)
            if code != 0:
                raise RuntimeError("load generator failed (%s):\n%s" % (
                    code, bytes(proto.output).decode()))
            results.append(self._withCPU(json.loads(bytes(proto.stdout).splitlines()[-1]),
                                         before, after))
        return results

    def _writeSpec(self, run, floor):
        run = dict(run)
        self._files += 1
        path = os.path.join(self.workdir, "requests-%d.bin" % self._files)
        loadgen.writeRequests(path, run.pop("requests"))
        spec = {"host": "127.0.0.1", "port": self.floor.port if floor else self.port,
                "serverName": "localhost", "caFile": os.path.join(self.workdir, "ca.crt"),
                "certFile": os.path.join(self.workdir, "front-proxy.crt"),
                "keyFile": os.path.join(self.workdir, "front-proxy.key"),
                "requestsFile": path, "expectStatus": 201, "expectBody": SUCCESS,
                "deadline": 1800, "gate": True}
        spec.update(run)
        specPath = path + ".json"
        with open(specPath, "w") as f:
            json.dump(spec, f)
        return path, specPath

    def _spawnGenerator(self, specPath):
        """``loadgen.py`` with its gate: CPU counters are read once every
        connection is up and again once it has finished, so handshakes and
        process start-up stay out of the figures."""
        argv = [sys.executable, os.path.join(HERE, "loadgen.py"), specPath]
        proto = ChildOutput()
        transport = self.reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ),
                                              path=self.workdir)
        return proto, transport

    @staticmethod
    def _withCPU(result, before, after):
        result["cpu_s"] = {k: after[k] - before[k] for k in after}
        result["cpu_pct"] = {k: 100 * used / result["elapsed"] for k, used in
                             result["cpu_s"].items()} if result["elapsed"] > 0 else {}
        result["cpu_pct"]["generator"] = 100 * result["cpu"] / max(result["elapsed"], 1e-9)
        done = max(1, result["ok"] + result["bad"])
        result["server_cpu_ms_per_request"] = 1000 * (after["server"] - before["server"]) / done
        return result
