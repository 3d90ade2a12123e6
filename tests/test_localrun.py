"""``python -m kibaship_dns01.testing.localrun``, as a newcomer runs it: the whole
lifecycle, then ``--keep-running`` until Ctrl-C, and a clean stop.

Ctrl-C in a terminal sends SIGINT to the whole foreground process group (the
run, its daemon and its Valkey nodes), so the test starts the run in a
session of its own and signals the group.
"""
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.testing.ports import freePort
from tests.support import tempDir

READY = b"Ctrl-C to stop."


def _outputUntil(proc, marker, timeout):
    """What ``proc`` printed up to and including the line starting with ``marker``.

    Reads the pipe's file descriptor directly: a buffered ``readline`` keeps lines
    that ``select`` no longer reports, and waits for output that never comes.
    """
    data, deadline = b"", time.monotonic() + timeout
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline and b"\n" + marker not in data:
            if selector.select(deadline - time.monotonic()):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
    if b"\n" + marker not in data:
        raise AssertionError(f"no {marker!r} within {timeout}s:\n" + data.decode(errors="replace"))
    return data


def _refused(address):
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class LocalRunTests(SynchronousTestCase):
    def start(self, workdir, port):
        proc = subprocess.Popen(
            [sys.executable, "-m", "kibaship_dns01.testing.localrun", "--keep-running",
             "--port", str(port), "--metrics-port", str(freePort()), "--workdir", workdir],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
            start_new_session=True)
        self.addCleanup(self.kill, proc)
        return proc

    @staticmethod
    def kill(proc):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()

    def test_ctrlCAfterTheRunStopsCleanly(self):
        workdir = tempDir(self, "kibaship-localrun-")
        port = freePort()
        proc = self.start(workdir, port)
        before = _outputUntil(proc, READY, timeout=120)
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C
        out, err = (b.decode(errors="replace") for b in proc.communicate(timeout=60))
        text = before.decode(errors="replace") + out

        entries = re.findall(r"stream entry (\d+): operation=(\w+)", text)
        self.assertEqual(entries, [("1", "present"), ("2", "status"), ("3", "status"),
                                   ("4", "status"), ("5", "issued"), ("6", "cleanup")], text)
        self.assertIn("stopping ...", out)
        self.assertEqual((proc.returncode, err), (0, ""), text)
        nodes = re.search(r"Valkey cluster up: (.*)", text).group(1).split(", ")
        self.assertEqual(len(nodes), 6)
        self.assertEqual([a for a in [f"127.0.0.1:{port}", *nodes] if not _refused(a)], [],
                         "the daemon and every Valkey node are gone")
        with open(os.path.join(workdir, "daemon.log"), "rb") as f:
            self.assertIn(b"Server Shut Down.", f.read(), "the daemon's log was kept")
