"""The real daemon, started by ``twistd`` from outside the repository, spoken to over TLS."""
import json
import os
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from kibaship_dns01.testing.daemon import TWISTD, DaemonProcess, freePort
from kibaship_dns01.testing.httpclient import request
from tests.support import SOLVER_PATH, writeServingFiles


class DaemonTests(TestCase):
    timeout = 60

    def setUp(self):
        self.cwd = tempfile.mkdtemp(prefix="kibaship-daemon-")

    def test_helpFromAnyDirectory(self):
        async def go():
            out, err, code = await getProcessOutputAndValue(
                TWISTD[0], TWISTD[1:] + ["kibaship-dns01", "--help"], env=os.environ,
                path=self.cwd)
            self.assertEqual(code, 0, err)
            for flag in (b"--secure-port", b"--tls-cert-file", b"--group-name", b"--dry-run",
                         b"--valkey-namespace", b"--log-format"):
                self.assertIn(flag, out)
        return defer.ensureDeferred(go())

    def test_badFlagIsAUsageErrorNamingTheFlag(self):
        async def go():
            out, err, code = await getProcessOutputAndValue(
                TWISTD[0], TWISTD[1:] + ["-n", "kibaship-dns01", "--secure-port", "99999"],
                env=os.environ, path=self.cwd)
            self.assertNotEqual(code, 0)
            self.assertIn(b"--secure-port: 99999 is outside 1-65535", out + err)
        return defer.ensureDeferred(go())

    def test_servesDiscoveryAndSolverOverTLSWithJSONLogs(self):
        async def go():
            ca, cert, key = writeServingFiles(self.cwd)
            port, metricsPort = freePort(), freePort()
            daemon = DaemonProcess(reactor, [
                "--tls-cert-file", cert, "--tls-private-key-file", key,
                "--secure-port", str(port), "--bind-address", "127.0.0.1",
                "--metrics-port", str(metricsPort), "--metrics-bind-address", "127.0.0.1"],
                cwd=self.cwd)
            daemon.start()
            self.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
            base = f"https://localhost:{port}"
            await daemon.waitReady(base, ca.certPEM)
            resp = await request(reactor, "GET", base + "/apis/dns.kibaship.com/v1alpha1",
                                 caPEM=ca.certPEM)
            self.assertEqual(resp.json()["groupVersion"], "dns.kibaship.com/v1alpha1")
            resp = await request(reactor, "POST", base + SOLVER_PATH, caPEM=ca.certPEM,
                                 headers={"Content-Type": ["application/json"]},
                                 body=b"{broken")
            self.assertEqual((resp.code, resp.json()["reason"]), (400, "BadRequest"))
            metricsBody = (await request(
                reactor, "GET", f"http://127.0.0.1:{metricsPort}/metrics")).body
            self.assertIn(b'kibaship_dns01_http_requests_total{code="400",route="solver"}',
                          metricsBody)
            # twistd shuts down cleanly, then re-raises SIGTERM so its exit status shows why
            self.assertIn(await daemon.stop(), (0, -15))
            self.assertIn(b"Server Shut Down.", daemon.output)
            lines = [json.loads(l) for l in daemon.output.splitlines() if l.startswith(b"{")]
            requests = [l for l in lines if l.get("log_kind") == "http_request"]
            post = [l for l in requests if l["method"] == "POST"]
            self.assertEqual([(p["path"], p["code"]) for p in post], [(SOLVER_PATH, 400)])
            self.assertIn("duration_ms", post[0])
        return defer.ensureDeferred(go())
