"""The real daemon, started by ``twistd`` from outside the repository, spoken to over TLS
the way the kube-aggregator does, appending to a real Valkey cluster."""
import json
import os
import socket

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from kibaship_dns01.testing.daemon import TWISTD, DaemonProcess
from kibaship_dns01.testing.environment import (
    CERT_MANAGER_NS, CERT_MANAGER_USER, PASSWORD_SECRET, secret)
from kibaship_dns01.testing.eventschema import validateEntry
from kibaship_dns01.testing.httpclient import request
from kibaship_dns01.testing.kubeapi import StandInAPIServer
from kibaship_dns01.testing.valkeycluster import ValkeyCluster
from kibaship_dns01.valkey import streamKey
from tests.support import startDaemon, tempDir, writeServingFiles


class CommandLineTests(TestCase):
    def setUp(self):
        self.cwd = tempDir(self, "kibaship-daemon-")

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


class ListenFailureTests(TestCase):
    def test_portInUseStopsTheDaemon(self):
        """A secure port that cannot be bound ends twistd with the error (no silent zombie)."""
        async def go():
            cwd = tempDir(self)
            _, cert, key = writeServingFiles(cwd)
            kubeconfig = StandInAPIServer().writeKubeconfig(os.path.join(cwd, "kubeconfig"))
            taken = socket.socket()
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            self.addCleanup(taken.close)
            daemon = DaemonProcess(reactor, [
                "--tls-cert-file", cert, "--tls-private-key-file", key, "--kubeconfig",
                kubeconfig, "--bind-address", "127.0.0.1",
                "--secure-port", str(taken.getsockname()[1])], cwd=cwd)
            daemon.start()
            code = await daemon.proto.ended
            self.assertNotEqual(code, 0)
            self.assertIn(b"Address already in use", daemon.output)
        return defer.ensureDeferred(go())


class EndToEndTests(TestCase):
    """Present/CleanUp through the running daemon land on the real cluster (issue 6's proof)."""

    timeout = 120

    def setUp(self):
        # trial has no setUpClass: the cluster lives for this test only
        self.cluster = ValkeyCluster(password="e2e-secret-password").start()
        self.addCleanup(self.cluster.stop)

    async def startDaemon(self):
        """The environment and the real daemon, ready; stopped at cleanup."""
        return await startDaemon(self, self.cluster)

    def test_rotatedValkeyPasswordIsPickedUpWithoutRestart(self):
        """The Secret and the server change password; the next call re-reads the Secret."""
        async def go():
            env, daemon, base, _ = await self.startDaemon()
            first = await env.post(base)
            self.assertTrue(first.json()["response"]["success"], first.body)
            for node in self.cluster.nodes:
                self.cluster.cli(node, "CONFIG", "SET", "requirepass", "rotated-password")
            self.cluster.password = "rotated-password"
            env.api.store.put(secret(CERT_MANAGER_NS, PASSWORD_SECRET,
                                     {"password": "rotated-password"}))
            for node in self.cluster.nodes:  # what a rolling restart does to open connections
                self.cluster.cli(node, "CLIENT", "KILL", "TYPE", "normal")
            cleanup = await env.post(base, action="CleanUp")
            self.assertEqual(cleanup.json()["response"], {"uid": "", "success": True})
            self.assertNotIn(b"rotated-password", daemon.output)
        return defer.ensureDeferred(go())

    def test_presentAndCleanUpOverTLS(self):
        async def go():
            env, daemon, base, metricsPort = await self.startDaemon()

            present = await env.post(base)
            self.assertEqual(present.code, 201, present.body)
            self.assertEqual(present.json()["response"], {"uid": "", "success": True})
            again = await env.post(base)  # cert-manager retries Present
            self.assertEqual(again.json()["response"]["success"], True)
            cleanup = await env.post(base, action="CleanUp")
            self.assertEqual(cleanup.json()["response"]["success"], True)

            # a caller RBAC does not allow is refused before anything happens
            denied = await env.post(base, user="system:serviceaccount:team:intruder",
                                    groups=())
            self.assertEqual(denied.code, 403)
            self.assertIn('User "system:serviceaccount:team:intruder" cannot create resource '
                          '"kibaship" in API group "dns.kibaship.com" at the cluster scope',
                          denied.json()["message"])

            key = streamKey(env.chain.certificate["metadata"]["labels"][
                "platform.kibaship.com/project-uuid"])
            entries = self.cluster.xrange(key)
            self.assertEqual([f["operation"] for _, f in entries], ["present", "cleanup"])
            datas = [validateEntry(f) for _, f in entries]
            self.assertEqual([int(f["sequence"]) for _, f in entries], [1, 2])
            self.assertEqual(datas[0]["payload"]["txt"],
                             env.chain.challenges[0]["spec"]["key"])
            self.assertEqual(datas[0]["payload"]["certificate"], "ad-shop-example-com")

            metricsBody = (await request(
                reactor, "GET", f"http://127.0.0.1:{metricsPort}/metrics")).body.decode()
            self.assertIn('kibaship_dns01_solver_requests_total{action="Present",'
                          'outcome="success"} 2.0', metricsBody)
            self.assertIn('kibaship_dns01_valkey_appends_total{result="duplicate"} 1.0',
                          metricsBody)

            self.assertEqual(await daemon.stop(), 0, "a drained shutdown exits 0")
            self.assertIn(b"Server Shut Down.", daemon.output)
            lines = [json.loads(l) for l in daemon.output.splitlines() if l.startswith(b"{")]
            decisions = [l for l in lines if l.get("log_kind") == "challenge_decision"]
            self.assertEqual([(d["action"], d["outcome"], d.get("duplicate")) for d in decisions],
                             [("Present", "success", False), ("Present", "success", True),
                              ("CleanUp", "success", False)])
            for d in decisions:
                self.assertEqual((d["stream"], d["fqdn"]), (key, "_acme-challenge.shop.example.com."))
                self.assertIn("entry_id", d)
            # at info: one line per refused request, with who was refused; successes
            # are the challenge_decision lines above
            posts = [l for l in lines if l.get("log_kind") == "http_request"
                     and l["method"] == "POST"]
            self.assertEqual([(p["code"], p["user"], p["level"]) for p in posts],
                             [(403, "system:serviceaccount:team:intruder", "info")])
            self.assertNotIn(b"e2e-secret-password", daemon.output)
        return defer.ensureDeferred(go())
