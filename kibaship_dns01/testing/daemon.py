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


class _Collect(protocol.ProcessProtocol):
    def __init__(self):
        self.output = bytearray()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode if reason.value.exitCode is not None else -reason.value.signal)


class DaemonProcess:
    """One ``twistd -n kibaship-dns01`` child with the given flags."""

    def __init__(self, reactor, args, cwd, env=None):
        self.reactor = reactor
        self.args = list(args)
        self.cwd = cwd
        self.env = env
        self.proto = _Collect()
        self.transport = None

    def start(self):
        argv = TWISTD + ["-n", "--pidfile=", "kibaship-dns01"] + self.args
        env = dict(os.environ, **(self.env or {}))
        # the repository must not be importable from cwd; the installed package is used
        self.transport = self.reactor.spawnProcess(self.proto, argv[0], argv, env=env,
                                                   path=self.cwd)

    @property
    def output(self):
        return bytes(self.proto.output)

    async def waitReady(self, url, caPEM, timeout=20.0, path="/readyz"):
        """Poll ``path`` until it answers 200 or the process exits or ``timeout`` passes."""
        for _ in range(int(timeout / 0.1)):
            if self.proto.ended.called:
                raise RuntimeError(f"daemon exited early:\n{self.output.decode()}")
            try:
                resp = await request(self.reactor, "GET", url + path, caPEM=caPEM, timeout=2)
                if resp.code == 200:
                    return
            except Exception:
                pass
            await deferLater(self.reactor, 0.1, lambda: None)
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
