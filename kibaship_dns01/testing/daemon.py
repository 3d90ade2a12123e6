"""Run the real ``twistd kibaship-dns01`` as a child process (end-to-end tests, local runs).

The daemon is started exactly as operators start it, from a directory that is
not the repository, so the test also proves the installed plugin is found.
"""
import json
import os
import signal
import sys

from twisted.internet import defer, protocol
from twisted.internet.task import deferLater

from kibaship_dns01.testing.httpclient import request


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class ChildOutput(protocol.ProcessProtocol):
    """Collects a child's stdout and stderr; ``ended`` fires its exit code (or
    minus the signal), :meth:`firstLine` its first stdout line (e.g. a JSON hello)."""

    def __init__(self):
        self.output = bytearray()
        self.stdout = bytearray()
        self.ended = defer.Deferred()
        self._line = None
        self._lineWaiters = []

    def firstLine(self):
        """:return: a Deferred firing the first stdout line (bytes, no newline), or
        failing with the child's output if it exits without one."""
        if self._line is not None:
            return defer.succeed(self._line)
        if self.ended.called:
            return defer.fail(self._noLine())
        d = defer.Deferred()
        self._lineWaiters.append(d)
        return d

    def _noLine(self):
        return RuntimeError("the process exited before printing a line:\n%s"
                            % self.output.decode(errors="replace"))

    def outReceived(self, data):
        self.output += data
        self.stdout += data
        if self._line is None and b"\n" in self.stdout:
            self._line = bytes(self.stdout.split(b"\n", 1)[0])
            waiters, self._lineWaiters = self._lineWaiters, []
            for d in waiters:
                d.callback(self._line)

    def errReceived(self, data):
        self.output += data

    def processEnded(self, reason):
        code = reason.value.exitCode
        code = code if code is not None else -reason.value.signal
        waiters, self._lineWaiters = self._lineWaiters, []
        self.ended.callback(code)
        for d in waiters:
            d.errback(self._noLine())


class DaemonProcess:
    """One ``twistd -n kibaship-dns01`` child with the given flags.

    :param logPath: when given, the child's stdout and stderr go straight to
        this file instead of through a pipe into this process: a benchmark's
        daemon logs a line per request, which a pipe would make this process
        read (and hold) while it is being measured.
    :param command: what the flags follow, instead of this interpreter's
        ``twistd -n --pidfile= kibaship-dns01`` (``scripts/image-test`` runs the
        image's ENTRYPOINT in a chroot); it must exec the daemon in the process
        it starts, so signals reach it.
    """

    def __init__(self, reactor, args, cwd, env=None, logPath=None, command=None):
        self.reactor = reactor
        self.command = list(command) if command else TWISTD + ["-n", "--pidfile=",
                                                                "kibaship-dns01"]
        self.args = list(args)
        self.cwd = cwd
        self.env = env
        self.logPath = logPath
        self.proto = ChildOutput()
        self.transport = None
        self._pid = None

    def start(self):
        argv = self.command + self.args
        env = dict(os.environ, **(self.env or {}))
        childFDs = None
        if self.logPath is not None:
            logFD = os.open(self.logPath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            childFDs = {0: "w", 1: logFD, 2: logFD}
        # the repository must not be importable from cwd; the installed package is used
        try:
            self.transport = self.reactor.spawnProcess(self.proto, argv[0], argv, env=env,
                                                       path=self.cwd, childFDs=childFDs)
        finally:
            if childFDs is not None:
                os.close(logFD)  # the child holds its own copy
        self._pid = self.transport.pid  # the transport forgets it once the process ended

    @property
    def pid(self):
        """The daemon's process id (``twistd -n`` runs in the spawned process itself),
        still known once it has exited (to name its log, say)."""
        return self._pid

    @property
    def output(self):
        if self.logPath is not None:
            with open(self.logPath, "rb") as f:
                return f.read()
        return bytes(self.proto.output)

    async def waitReady(self, url, caPEM, timeout=20.0, path="/readyz", interval=0.1):
        """Poll ``path`` every ``interval`` seconds until it answers 200 or the
        process exits or ``timeout`` passes."""
        for _ in range(int(timeout / interval)):
            if self.proto.ended.called:
                raise RuntimeError(f"daemon exited early:\n{self.output.decode()}")
            try:
                resp = await request(self.reactor, "GET", url + path, caPEM=caPEM, timeout=2)
                if resp.code == 200:
                    return
            except Exception:
                pass
            await deferLater(self.reactor, interval, lambda: None)
        raise RuntimeError(f"daemon not ready after {timeout}s:\n{self.output.decode()}")

    async def listeningPort(self, name="https", timeout=20.0):
        """The port the daemon's ``name`` listener bound (from its JSON log; for
        ``--secure-port 0``)."""
        for _ in range(int(timeout / 0.05)):
            for line in self.output.splitlines():
                if line.startswith(b"{"):
                    event = json.loads(line)
                    if event.get("name") == name and "port" in event:
                        return event["port"]
            if self.proto.ended.called:
                break
            await deferLater(self.reactor, 0.05, lambda: None)
        raise RuntimeError(f"daemon never logged its {name} port:\n{self.output.decode()}")

    async def stop(self):
        """SIGTERM and wait; returns the exit code."""
        if not self.proto.ended.called:
            self.transport.signalProcess(signal.SIGTERM)
        return await self.proto.ended
