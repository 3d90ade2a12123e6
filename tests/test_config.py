"""Issuer config validation (SPEC §8): every field, defaults from flags, the Secret namespace rule."""
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.config import ConfigError, Defaults, SecretRef, parseIssuerConfig

NS = "cert-manager"
PROJECT = "0b6a1a3e-1111-4222-8333-444455556666"


class IssuerConfigTests(SynchronousTestCase):
    def test_emptyConfigUsesTheOperatorsValkey(self):
        defaults = Defaults(valkeyNamespace="kibaship", valkeyPort=6380, connectTimeout=2.0,
                            readTimeout=1.0, minReplicas=1)
        for config in (None, {}):
            c = parseIssuerConfig(config, NS, defaults)
            self.assertEqual(c.valkey.addr, "kibaship-valkey-cluster-kibaship-com.kibaship"
                                            ".svc.cluster.local:6380")
            self.assertEqual(c.valkey.passwordSecret,
                             SecretRef("kibaship", "kibaship-valkey-cluster-kibaship-com", None))
            self.assertEqual((c.valkey.connectTimeout, c.valkey.readTimeout, c.valkey.minReplicas,
                              c.valkey.isDefault, c.ttl, c.uiHints, c.defaultProjectUUID),
                             (2.0, 1.0, 1, True, 60, (), None))

    def test_everyField(self):
        c = parseIssuerConfig({
            "valkey": {"addr": "valkey.team.svc:6379", "username": "dns01",
                       "passwordSecretRef": {"name": "valkey-auth", "key": "password"},
                       "tls": True, "caSecretRef": {"name": "valkey-ca"},
                       "connectTimeout": "2s", "readTimeout": "1500ms", "writeTimeout": "1s",
                       "minReplicas": 1},
            "uiHints": {"tenant": "acme", "docs": "https://x"},
            "defaultProjectUUID": PROJECT, "ttl": 300}, NS)
        v = c.valkey
        self.assertEqual((v.addr, v.username, v.tls, v.connectTimeout, v.readTimeout,
                          v.writeTimeout, v.minReplicas, v.isDefault),
                         ("valkey.team.svc:6379", "dns01", True, 2.0, 1.5, 1.0, 1, False))
        self.assertEqual(v.passwordSecret, SecretRef(NS, "valkey-auth", "password"))
        self.assertEqual(v.caSecret, SecretRef(NS, "valkey-ca", "ca.crt"))
        self.assertEqual(c.uiHintsDict, {"tenant": "acme", "docs": "https://x"})
        self.assertEqual((c.defaultProjectUUID, c.ttl), (PROJECT, 300))

    def test_customAddressNeverGetsTheOperatorsPassword(self):
        c = parseIssuerConfig({"valkey": {"addr": "attacker.example:6379"}}, NS)
        self.assertIsNone(c.valkey.passwordSecret)

    def test_secretRefNamespaceMustBeTheRequests(self):
        ok = parseIssuerConfig({"valkey": {"passwordSecretRef": {
            "name": "s", "namespace": NS}}}, NS)
        self.assertEqual(ok.valkey.passwordSecret, SecretRef(NS, "s", None))
        for field in ("passwordSecretRef", "caSecretRef"):
            e = self.assertRaises(ConfigError, parseIssuerConfig, {"valkey": {
                "addr": "valkey.team.svc:6379", field: {"name": "s", "namespace": "kube-system"}}},
                NS)
            self.assertIn(f"config.valkey.{field}.namespace is 'kube-system'", str(e))
            self.assertIn("read only from the challenge's resourceNamespace", str(e))

    def test_errorsNameTheField(self):
        cases = [
            ([], "config must be an object"),
            ({"valky": {}}, "config has unknown field(s) valky"),
            ({"valkey": {"adr": "x:1"}}, "config.valkey has unknown field(s) adr"),
            ({"valkey": []}, "config.valkey must be an object"),
            ({"valkey": {"addr": "no-port"}}, "config.valkey.addr"),
            ({"valkey": {"addr": 6379}}, "config.valkey.addr must be a string"),
            ({"valkey": {"addr": "valkey.te`]st.svc:6379"}},
             "host 'valkey.te`]st.svc' is neither an IP address nor a DNS name"),
            ({"valkey": {"addr": "a b:6379"}}, "is neither an IP address nor a DNS name"),
            ({"valkey": {"addr": "v:1", "tls": "true"}}, "config.valkey.tls must be a boolean"),
            ({"valkey": {"addr": "v:1", "username": 1}},
             "config.valkey.username must be a string"),
            ({"valkey": {"connectTimeout": "soon"}}, "config.valkey.connectTimeout: invalid"),
            ({"valkey": {"readTimeout": 3}}, "config.valkey.readTimeout must be a string"),
            ({"valkey": {"writeTimeout": "2m"}}, "config.valkey.writeTimeout must be between"),
            ({"valkey": {"minReplicas": "1"}}, "config.valkey.minReplicas must be an integer"),
            ({"valkey": {"minReplicas": 9}}, "config.valkey.minReplicas must be between"),
            ({"valkey": {"passwordSecretRef": {"key": "p"}}},
             "config.valkey.passwordSecretRef.name is required"),
            ({"valkey": {"passwordSecretRef": {"name": "s", "optional": True}}},
             "config.valkey.passwordSecretRef has unknown field(s) optional"),
            ({"uiHints": {"n": 1}}, "config.uiHints.n must be a string"),
            ({"uiHints": "x"}, "config.uiHints must be an object"),
            ({"defaultProjectUUID": "0B6A1A3E-1111-4222-8333-444455556666"},
             "is not a lower-case UUID"),
            ({"defaultProjectUUID": 5}, "config.defaultProjectUUID must be a string"),
            ({"ttl": 0}, "config.ttl must be between 1 and 86400"),
            ({"ttl": "60"}, "config.ttl must be an integer"),
            ({"ttl": True}, "config.ttl must be an integer"),
            ({"valkey": {"passwordSecretRef": {
                "name": "../../kibaship-operator/secrets/kibaship-valkey-cluster-kibaship-com"}}},
             "is not a valid Secret name"),
            ({"valkey": {"passwordSecretRef": {"name": "Upper"}}}, "is not a valid Secret name"),
            ({"valkey": {"passwordSecretRef": {"name": "s", "key": "a/b"}}},
             "is not a valid Secret key"),
            ({"valkey": {"tls": True}}, "config.valkey.tls needs config.valkey.addr"),
            ({"valkey": {"username": "u"}}, "config.valkey.username needs config.valkey.addr"),
            ({"valkey": {"caSecretRef": {"name": "ca"}}},
             "config.valkey.caSecretRef needs config.valkey.addr"),
        ]
        for config, message in cases:
            e = self.assertRaises(ConfigError, parseIssuerConfig, config, NS)
            self.assertIn(message, str(e), config)
