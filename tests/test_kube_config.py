"""Loading in-cluster and kubeconfig configuration (kibaship_dns01.kube.config)."""
import base64
import os

import yaml
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.kube import config
from kibaship_dns01.kube.config import KubeConfigError
from kibaship_dns01.kube.tls import APIServerTLSPolicy
from kibaship_dns01.testing import pki
from tests.support import tempDir


def b64(data):
    return base64.standard_b64encode(data).decode()


class KubeconfigTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempDir(self)
        self.ca = pki.makeCA()
        self.client = pki.clientPair(self.ca, "admin", ["system:masters"])
        self.clock = Clock()

    def write(self, name, data, mode="w"):
        path = os.path.join(self.dir, name)
        with open(path, mode) as f:
            f.write(data)
        return path

    def kubeconfig(self, cluster=None, user=None, extra=None, current="main"):
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": current,
               "clusters": [{"name": "c", "cluster": dict({"server": "https://10.0.0.1:6443"},
                                                          **(cluster or {}))}],
               "users": [{"name": "u", "user": user if user is not None else {"token": "abc"}}],
               "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u", "namespace": "dev"}}]}
        doc.update(extra or {})
        return self.write("kubeconfig", yaml.safe_dump(doc))

    def load(self, path, **kw):
        return config.loadKubeConfig(path, clock=self.clock, **kw)

    def test_inlineTokenAndCAData(self):
        cfg = self.load(self.kubeconfig({"certificate-authority-data": b64(self.ca.certPEM)},
                                         {"token": "abc"}))
        self.assertEqual(cfg.server, "https://10.0.0.1:6443")
        self.assertEqual(cfg.caPEM, self.ca.certPEM)
        self.assertEqual(cfg.tokenProvider.token(), "abc")
        self.assertEqual(cfg.namespace, "dev")
        self.assertIsNone(cfg.clientCertPEM)
        self.assertFalse(cfg.insecure)
        APIServerTLSPolicy(cfg)  # the CA parses

    def test_caFileRelativeToKubeconfig(self):
        self.write("ca.crt", self.ca.certPEM, "wb")
        cfg = self.load(self.kubeconfig({"certificate-authority": "ca.crt"}))
        self.assertEqual(cfg.caPEM, self.ca.certPEM)

    def test_clientCertificateFiles(self):
        self.write("c.crt", self.client.certPEM, "wb")
        keyPath = os.path.abspath(self.write("c.key", self.client.keyPEM, "wb"))
        cfg = self.load(self.kubeconfig({}, {"client-certificate": "c.crt", "client-key": keyPath}))
        self.assertEqual((cfg.clientCertPEM, cfg.clientKeyPEM), (self.client.certPEM, self.client.keyPEM))
        self.assertIsNone(cfg.tokenProvider)
        APIServerTLSPolicy(cfg)

    def test_clientCertificateData(self):
        cfg = self.load(self.kubeconfig({}, {"client-certificate-data": b64(self.client.certPEM),
                                             "client-key-data": b64(self.client.keyPEM)}))
        self.assertEqual(cfg.clientKeyPEM, self.client.keyPEM)

    def test_insecureAndServerName(self):
        cfg = self.load(self.kubeconfig({"insecure-skip-tls-verify": True, "tls-server-name": "kubernetes"}))
        self.assertTrue(cfg.insecure)
        self.assertEqual(cfg.tlsServerName, "kubernetes")

    def test_tokenFileIsReReadAfterPeriod(self):
        self.write("tok", "one\n")
        cfg = self.load(self.kubeconfig({}, {"tokenFile": "tok"}))
        self.assertEqual(cfg.tokenProvider.token(), "one")
        self.write("tok", "two")
        self.assertEqual(cfg.tokenProvider.token(), "one")
        self.clock.advance(config.TOKEN_REFRESH_SECONDS)
        self.assertEqual(cfg.tokenProvider.token(), "two")

    def test_namedContext(self):
        path = self.kubeconfig(extra={"contexts": [
            {"name": "main", "context": {"cluster": "c", "user": "u"}},
            {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "o"}}]})
        self.assertEqual(self.load(path, context="other").namespace, "o")

    def assertConfigError(self, path, *fragments):
        e = self.assertRaises(KubeConfigError, self.load, path)
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        return e

    def test_missingFile(self):
        self.assertConfigError(os.path.join(self.dir, "nope"), "does not exist", "nope")

    def test_malformedYAML(self):
        self.assertConfigError(self.write("bad", "clusters: [unclosed\n"), "not valid YAML")

    def test_notAMapping(self):
        self.assertConfigError(self.write("list", "- a\n- b\n"), "malformed")

    def test_missingCurrentContext(self):
        self.assertConfigError(self.write("k", yaml.safe_dump({"clusters": []})), "malformed",
                               "current-context")

    def test_contextNamesMissingCluster(self):
        self.assertConfigError(self.kubeconfig(extra={"contexts": [
            {"name": "main", "context": {"cluster": "ghost", "user": "u"}}]}), "malformed", "ghost")

    def test_execPluginRefused(self):
        self.assertConfigError(self.kubeconfig(user={"exec": {"command": "aws", "apiVersion":
                                                              "client.authentication.k8s.io/v1"}}),
                               "exec credential plugin", "token", "main")

    def test_authProviderRefused(self):
        self.assertConfigError(self.kubeconfig(user={"auth-provider": {"name": "oidc"}}), "auth-provider")

    def test_basicAuthRefused(self):
        self.assertConfigError(self.kubeconfig(user={"username": "a", "password": "b"}), "basic")

    def test_plainHTTPRefused(self):
        self.assertConfigError(self.kubeconfig({"server": "http://127.0.0.1:8080"}), "https://")

    def test_certWithoutKey(self):
        self.assertConfigError(self.kubeconfig({}, {"client-certificate-data": b64(self.client.certPEM)}),
                               "together")

    def test_missingCAFile(self):
        self.assertConfigError(self.kubeconfig({"certificate-authority": "missing.crt"}), "missing.crt")

    def test_badCAPEMFailsWhenBuildingTLS(self):
        cfg = self.load(self.kubeconfig({"certificate-authority-data": b64(b"not a cert")}))
        e = self.assertRaises(KubeConfigError, APIServerTLSPolicy, cfg)
        self.assertIn("certificate authority", str(e))


class InClusterTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempDir(self)
        self.ca = pki.makeCA()
        self.paths = {k: os.path.join(self.dir, k) for k in ("token", "ca.crt", "namespace")}
        self.put("token", "t1")
        self.put("ca.crt", self.ca.certPEM.decode())
        self.put("namespace", "kibaship-dns01\n")
        self.env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
        self.clock = Clock()

    def put(self, name, text):
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def load(self):
        return config.loadInCluster(environ=self.env, tokenPath=self.paths["token"],
                                    caPath=self.paths["ca.crt"], namespacePath=self.paths["namespace"],
                                    clock=self.clock)

    def test_loads(self):
        cfg = self.load()
        self.assertEqual(cfg.server, "https://10.96.0.1:443")
        self.assertEqual(cfg.caPEM, self.ca.certPEM)
        self.assertEqual(cfg.namespace, "kibaship-dns01")
        self.assertEqual(cfg.tokenProvider.token(), "t1")
        self.assertFalse(cfg.insecure)

    def test_ipv6Host(self):
        self.env["KUBERNETES_SERVICE_HOST"] = "fd00::1"
        self.assertEqual(self.load().server, "https://[fd00::1]:443")

    def test_rotatedTokenPickedUp(self):
        tokens = self.load().tokenProvider
        self.assertEqual(tokens.token(), "t1")
        self.put("token", "t2")
        self.clock.advance(59)
        self.assertEqual(tokens.token(), "t1")
        self.clock.advance(1)
        self.assertEqual(tokens.token(), "t2")

    def test_invalidateRereadsAtOnce(self):
        tokens = self.load().tokenProvider
        self.put("token", "t2")
        tokens.invalidate()
        self.assertEqual(tokens.token(), "t2")

    def test_failedRereadKeepsOldToken(self):
        tokens = self.load().tokenProvider
        os.remove(self.paths["token"])
        self.clock.advance(60)
        self.assertEqual(tokens.token(), "t1")
        self.put("token", "")
        tokens.invalidate()
        self.assertEqual(tokens.token(), "t1")

    def test_notInAPod(self):
        self.env = {}
        e = self.assertRaises(KubeConfigError, self.load)
        self.assertIn("--kubeconfig", str(e))

    def test_missingTokenFile(self):
        os.remove(self.paths["token"])
        e = self.assertRaises(KubeConfigError, self.load)
        self.assertIn("token", str(e).lower())

    def test_loadConfigChoosesKubeconfigWhenGiven(self):
        self.assertRaises(KubeConfigError, config.loadConfig, os.path.join(self.dir, "nope"), clock=self.clock)
