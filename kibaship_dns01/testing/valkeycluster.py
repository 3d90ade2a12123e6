"""Start and drive a real local Valkey cluster for tests and benchmarks (SPEC §11).

``ValkeyCluster`` runs ``valkey-server --cluster-enabled yes`` processes on
free loopback ports in a temporary directory, joins them with
``valkey-cli --cluster create``, waits until every node reports
``cluster_state:ok`` (and every replica's link is up), and can then kill a
node, migrate a slot or wait for a failover.  Options: ``password``
(``requirepass`` + ``masterauth``), ``aclUsers`` (``user`` lines in the
config) and ``tls`` (``--tls-port`` only, TLS on the cluster bus and on
replication, certificates from :mod:`kibaship_dns01.testing.pki`).

Everything here is *blocking* (``subprocess``): call ``start()``/``stop()``
outside a running reactor (a bench script's ``main``) or, from a test,
through :func:`inThread` (the reactor's thread pool).  The short helpers
used during a test (``cli``, ``slotOwner``, ``kill``) take a few
milliseconds; long waits inside a test go through :func:`~kibaship_dns01.testing.polling.pollUntil`, which
polls from the reactor instead of sleeping in it.

:func:`sharedCluster` hands out one plain six-node cluster per process,
started on first use and torn down at interpreter exit, so every test module
(and the solver's integration tests) can reuse it; a test that kills nodes or
changes passwords starts its own cluster (:func:`namedCluster` for one per
module, or ``ValkeyCluster(...).start()`` for one per test).

``valkey-server`` missing is an error (:class:`ValkeyNotInstalled`), never a
skip: CI installs ``valkey-server`` and ``valkey-tools``.
"""
import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import attr
from twisted.internet import defer

from kibaship_dns01.testing.ports import freePort

from kibaship_dns01.valkey.target import REQUIRED_ACL_RULES, ValkeyTarget

CLUSTER_SLOTS = 16384

#: the rules of an ACL user with exactly what the publisher needs
PUBLISHER_ACL_RULES = "resetkeys resetchannels -@all " + REQUIRED_ACL_RULES


class ValkeyNotInstalled(RuntimeError):
    """``valkey-server``/``valkey-cli`` are not on ``PATH``."""


class ClusterError(RuntimeError):
    """The local cluster did not reach the state a test needs."""


def requireValkey():
    """Fail clearly when the Valkey binaries are missing (tests must not skip)."""
    missing = [b for b in ("valkey-server", "valkey-cli") if shutil.which(b) is None]
    if missing:
        raise ValkeyNotInstalled(
            "%s not found on PATH: install the Debian bookworm-backports packages "
            "valkey-server and valkey-tools (.ci/run does this in CI)" % ", ".join(missing))


@attr.s(frozen=True, auto_attribs=True)
class TLSFiles:
    """PEM files a TLS cluster serves with; ``caPEM`` is what clients trust."""

    certFile: str
    keyFile: str
    caFile: str
    caPEM: bytes

    @classmethod
    def create(cls, directory, names=("localhost", "127.0.0.1")):
        """A fresh CA and one serving certificate for ``names`` under ``directory``."""
        from kibaship_dns01.testing import pki
        ca = pki.makeCA("valkey-test-ca")
        # The cluster bus always demands a client certificate (whatever
        # tls-auth-clients says) and nodes present their serving one, so it
        # carries both usages.
        pair = pki.issue(ca, names[0], sans=names, server=True, client=True)
        paths = [os.path.join(directory, n) for n in ("server.crt", "server.key", "ca.crt")]
        pair.writeTo(paths[0], paths[1])
        with open(paths[2], "wb") as f:
            f.write(ca.certPEM)
        return cls(paths[0], paths[1], paths[2], ca.certPEM)


@attr.s(eq=False)
class ValkeyNode:
    """One ``valkey-server`` process."""

    port = attr.ib()
    busPort = attr.ib()
    directory = attr.ib()
    process = attr.ib(default=None)

    @property
    def address(self):
        return "127.0.0.1:%d" % (self.port,)

    @property
    def alive(self):
        return self.process is not None and self.process.poll() is None


def _aclLine(user):
    """A config-file ``user`` directive from ``(name, password, rules)``."""
    name, password, rules = user
    return "user %s on >%s %s" % (name, password, rules)


def streamEntries(reply):
    """An XRANGE reply (``[[id, [field, value, ...]], ...]``) as ``[(id, {field: value})]``."""
    return [(entryId, dict(zip(flat[::2], flat[1::2]))) for entryId, flat in reply]


class ValkeyCluster:
    """A local Valkey cluster; see the module docstring."""

    def __init__(self, primaries=3, replicasPerPrimary=1, password=None, aclUsers=(),
                 tls=False, nodeTimeoutMs=2000, extraConfig=()):
        self.primaryCount = primaries
        self.replicasPerPrimary = replicasPerPrimary
        self.password = password
        self.aclUsers = tuple(aclUsers)
        self.useTLS = tls
        self.nodeTimeoutMs = nodeTimeoutMs
        self.extraConfig = tuple(extraConfig)
        self.tls = None
        self.nodes = []
        self.directory = None

    # --- lifecycle ---------------------------------------------------------

    def start(self, timeout=30.0):
        """Start every node, create the cluster, wait until it is fully up."""
        requireValkey()
        self.directory = tempfile.mkdtemp(prefix="kibaship-valkey-")
        try:
            if self.useTLS:
                self.tls = TLSFiles.create(self.directory)
            count = self.primaryCount * (1 + self.replicasPerPrimary)
            self.nodes = [self._spawn(i) for i in range(count)]
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                self._waitUntil(lambda n=node: self._pings(n), deadline, "%s to answer PING" % (
                    node.address,))
            self._create()
            self.waitHealthy(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Kill every node and remove the temporary directory."""
        for node in self.nodes:
            if node.alive:
                node.process.kill()
            if node.process is not None:
                node.process.wait()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _config(self, node):
        lines = [
            "bind 127.0.0.1", "daemonize no", "cluster-enabled yes",
            "cluster-config-file nodes.conf", "cluster-node-timeout %d" % self.nodeTimeoutMs,
            "cluster-port %d" % node.busPort, "cluster-replica-validity-factor 0",
            "dir %s" % node.directory, 'save ""', "appendonly no", "protected-mode no",
            "repl-diskless-sync yes", "repl-diskless-sync-delay 0",
        ]
        if self.useTLS:
            lines += ["port 0", "tls-port %d" % node.port,
                      "tls-cert-file %s" % self.tls.certFile, "tls-key-file %s" % self.tls.keyFile,
                      "tls-ca-cert-file %s" % self.tls.caFile, "tls-auth-clients no",
                      "tls-cluster yes", "tls-replication yes"]
        else:
            lines.append("port %d" % node.port)
        if self.password is not None:
            lines += ["requirepass %s" % self.password, "masterauth %s" % self.password]
        lines += [_aclLine(u) for u in self.aclUsers]
        return "\n".join(lines + list(self.extraConfig)) + "\n"

    def _spawn(self, index):
        directory = os.path.join(self.directory, "node%d" % index)
        os.mkdir(directory)
        node = ValkeyNode(freePort(), freePort(), directory)
        conf = os.path.join(directory, "valkey.conf")
        with open(conf, "w") as f:
            f.write(self._config(node))
        log = open(os.path.join(directory, "valkey.log"), "wb")
        node.process = subprocess.Popen(["valkey-server", conf], stdout=log,
                                        stderr=subprocess.STDOUT, cwd=directory)
        log.close()
        return node

    def _create(self):
        args = ["--cluster", "create"] + [n.address for n in self.nodes] + [
            "--cluster-replicas", str(self.replicasPerPrimary), "--cluster-yes"]
        out = subprocess.run(self._cliBase() + args, capture_output=True, timeout=60)
        if out.returncode != 0 or b"[OK] All 16384 slots covered" not in out.stdout:
            raise ClusterError("valkey-cli --cluster create failed: %s %s" % (
                out.stdout.decode(errors="replace")[-2000:], out.stderr.decode(errors="replace")))

    def restart(self, node, timeout=10.0):
        """Start a killed node again with its config and ``nodes.conf``; it
        rejoins the cluster (as a replica if it was failed over)."""
        if node.alive:
            raise ClusterError("%s is still running" % (node.address,))
        log = open(os.path.join(node.directory, "valkey.log"), "ab")
        node.process = subprocess.Popen(
            ["valkey-server", os.path.join(node.directory, "valkey.conf")],
            stdout=log, stderr=subprocess.STDOUT, cwd=node.directory)
        log.close()
        self._waitUntil(lambda: self._pings(node), time.monotonic() + timeout,
                        "%s to answer PING" % (node.address,))

    @property
    def seeds(self):
        """Two node addresses, as a daemon's config would list them."""
        return tuple(n.address for n in self.nodes[:2])

    def target(self, **kw):
        """A :class:`~kibaship_dns01.valkey.target.ValkeyTarget` for this
        cluster: its seeds, its CA when TLS, its password when set."""
        kw.setdefault("seeds", self.seeds)
        if self.useTLS:
            kw.setdefault("tls", True)
            kw.setdefault("caPEM", self.tls.caPEM)
        if self.password is not None:
            kw.setdefault("credentials", lambda: defer.succeed(self.password))
        return ValkeyTarget(**kw)

    # --- talking to nodes (blocking, short) ----------------------------------

    def _cliBase(self):
        base = ["valkey-cli", "--no-auth-warning"]
        if self.useTLS:
            base += ["--tls", "--cacert", self.tls.caFile]
        if self.password is not None:
            base += ["-a", self.password]
        return base

    def cli(self, node, *args, json_=False):
        """Run one command on ``node`` with ``valkey-cli``; returns stdout as str.

        ``json_=True`` parses ``valkey-cli --json`` output.
        """
        cmd = self._cliBase() + ["-h", "127.0.0.1", "-p", str(node.port)]
        if json_:
            cmd.append("--json")
        out = subprocess.run(cmd + [str(a) for a in args], capture_output=True, timeout=10)
        text = out.stdout.decode(errors="replace")
        if out.returncode != 0:
            raise ClusterError("valkey-cli %s on %s failed: %s %s" % (
                " ".join(map(str, args)), node.address, text, out.stderr.decode(errors="replace")))
        return json.loads(text) if json_ else text.strip()

    def _pings(self, node):
        try:
            return self.cli(node, "PING") == "PONG"
        except (ClusterError, subprocess.TimeoutExpired):
            return False

    def info(self, node, section):
        """``INFO section`` / ``CLUSTER INFO`` as a dict of strings."""
        text = self.cli(node, "CLUSTER", "INFO") if section == "cluster" else self.cli(
            node, "INFO", section)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def nodeByPort(self, port):
        for node in self.nodes:
            if node.port == int(port):
                return node
        raise KeyError(port)

    def nodeId(self, node):
        return self.cli(node, "CLUSTER", "MYID")

    def slotMap(self, via=None):
        """``{(start, end): primary ValkeyNode}`` as ``via`` (default: any live node) sees it."""
        via = via or self.liveNodes()[0]
        out = {}
        for entry in self.cli(via, "CLUSTER", "SLOTS", json_=True):
            out[(entry[0], entry[1])] = self.nodeByPort(entry[2][1])
        return out

    def xrange(self, key, node=None):
        """A stream's entries ``[(id, {field: value})]`` read with ``valkey-cli``:
        straight from ``node`` when given (proving where it lives), else in
        cluster mode (``-c`` follows the redirect)."""
        if node is None:
            reply = self.cli(self.nodes[0], "-c", "XRANGE", key, "-", "+", json_=True)
        else:
            reply = self.cli(node, "XRANGE", key, "-", "+", json_=True)
        return streamEntries(reply)

    def slotOwner(self, slot, via=None):
        """The primary serving ``slot``."""
        for (start, end), node in self.slotMap(via).items():
            if start <= slot <= end:
                return node
        raise ClusterError("slot %d is not served" % (slot,))

    def liveNodes(self):
        return [n for n in self.nodes if n.alive]

    def primaries(self):
        """Live nodes whose role is ``master``."""
        return [n for n in self.liveNodes() if self.info(n, "replication").get("role") == "master"]

    def replicasOf(self, primary):
        pid = self.nodeId(primary)
        return [n for n in self.liveNodes()
                if n is not primary and self.info(n, "replication").get("role") == "slave"
                and self._primaryIdOf(n) == pid]

    def _primaryIdOf(self, replica):
        for line in self.cli(replica, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if "myself" in parts[2]:
                return parts[3]
        return None

    # --- health --------------------------------------------------------------

    def healthy(self):
        """Every live node says ``cluster_state:ok``, knows the same slot map,
        and every live replica's link to its primary is up."""
        maps = []
        for node in self.liveNodes():
            try:
                if self.info(node, "cluster").get("cluster_state") != "ok":
                    return False
                repl = self.info(node, "replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return False
                maps.append({k: v.port for k, v in self.slotMap(node).items()})
            except ClusterError:
                return False
        return all(m == maps[0] for m in maps)

    def waitHealthy(self, timeout=30.0):
        """Block until :meth:`healthy` (for use outside the reactor)."""
        self._waitUntil(self.healthy, time.monotonic() + timeout, "the cluster to be healthy")

    @staticmethod
    def _waitUntil(predicate, deadline, what):
        while not predicate():
            if time.monotonic() > deadline:
                raise ClusterError("timed out waiting for %s" % (what,))
            time.sleep(0.05)

    # --- faults and topology changes ----------------------------------------

    def kill(self, node):
        """SIGKILL ``node`` (no shutdown, no save: a crash)."""
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()

    def failedOver(self, oldPrimary):
        """True once a live node serves every slot ``oldPrimary`` served and all is ok."""
        return oldPrimary.alive is False and self.healthy() and all(
            node is not oldPrimary for node in self.slotMap().values())

    def waitForFailover(self, oldPrimary, timeout=30.0):
        """Block until :meth:`failedOver` (outside the reactor, or via
        :func:`inThread`; from a running reactor prefer :func:`~kibaship_dns01.testing.polling.pollUntil`)."""
        self._waitUntil(lambda: self.failedOver(oldPrimary), time.monotonic() + timeout,
                        "a replica of %s to take over" % (oldPrimary.address,))

    def beginMigration(self, slot, target):
        """Mark ``slot`` IMPORTING on ``target`` and MIGRATING on its owner.

        Returns the source node.  Until :meth:`finishMigration`, keys already
        moved answer ``ASK`` on the source.
        """
        source = self.slotOwner(slot)
        if source is target:
            raise ClusterError("slot %d already lives on %s" % (slot, target.address))
        self.cli(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.nodeId(source))
        self.cli(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.nodeId(target))
        return source

    def moveKeys(self, slot, source, target):
        """MIGRATE every key of ``slot`` from ``source`` to ``target``."""
        while True:
            keys = self.cli(source, "CLUSTER", "GETKEYSINSLOT", slot, 100).split()
            if not keys:
                return
            auth = ["AUTH", self.password] if self.password is not None else []
            self.cli(source, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, *auth,
                     "KEYS", *keys)

    def finishMigration(self, slot, source, target):
        """Assign ``slot`` to ``target`` on every node (``SETSLOT ... NODE``)."""
        self.moveKeys(slot, source, target)
        tid = self.nodeId(target)
        for node in [target, source] + [n for n in self.primaries() if n not in (target, source)]:
            self.cli(node, "CLUSTER", "SETSLOT", slot, "NODE", tid)

    def migrateSlot(self, slot, target):
        """Move ``slot`` (with its keys) to ``target`` in one go."""
        source = self.beginMigration(slot, target)
        self.finishMigration(slot, source, target)
        return source


_clusters = {}
_lock = threading.Lock()


def namedCluster(name, **options):
    """A cluster started once per process under ``name`` and stopped at
    interpreter exit (thread-safe, blocking on first use)."""
    with _lock:
        cluster = _clusters.get(name)
        if cluster is None:
            cluster = ValkeyCluster(**options).start()
            atexit.register(cluster.stop)
            _clusters[name] = cluster
        return cluster


def sharedCluster():
    """The process-wide plain cluster (3 primaries, 3 replicas), started once.

    Tests must not break it (no kills, no password changes); migrating a slot
    is fine because the cluster stays healthy.  Torn down at interpreter exit.
    Blocking on first use: from a test, call it through :func:`inThread`.
    """
    return namedCluster("shared")


def inThread(function, *args, **kwargs):
    """Run a blocking harness call in the reactor's thread pool, so starting a
    cluster (seconds) never blocks a running reactor.  Returns a Deferred."""
    from twisted.internet import threads
    return threads.deferToThread(function, *args, **kwargs)
