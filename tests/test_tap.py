"""Command-line options: Kubernetes-style flags, environment defaults, usage errors."""
import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.durations import parseDuration
from kibaship_dns01.tap import Options
from kibaship_dns01.testing.kubeapi import StandInAPIServer
from tests.support import tempDir, writeServingFiles


class OptionsCase(SynchronousTestCase):
    """Parses flags over a valid serving pair and kubeconfig, with a clean environment."""

    def setUp(self):
        self.dir = tempDir(self)
        _, self.cert, self.key = writeServingFiles(self.dir)
        self.kubeconfig = os.path.join(self.dir, "kubeconfig")
        StandInAPIServer().writeKubeconfig(self.kubeconfig)
        self.base = ["--tls-cert-file", self.cert, "--tls-private-key-file", self.key,
                     "--kubeconfig", self.kubeconfig]
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if not k.startswith("KIBASHIP_DNS01_")})

    def parse(self, *args):
        opts = Options()
        opts.parseOptions(self.base + list(args))
        return opts.settings


class OptionsTests(OptionsCase):

    def test_defaults(self):
        s = self.parse()
        self.assertEqual(
            (s.securePort, s.bindAddress, s.groupName, s.solverName, s.metricsPort,
             s.dryRun, s.logFormat, s.logLevel, s.maxBodyBytes, s.valkeyNamespace,
             s.valkeyService, s.valkeyPort, s.valkeySecret, s.valkeyConnectTimeout,
             s.valkeyReadTimeout, s.valkeyMinReplicas, s.idempotencyWindow),
            (8443, "0.0.0.0", "dns.kibaship.com", "kibaship", 0, False, "json", "info",
             1048576, "kibaship-operator", "kibaship-valkey-cluster-kibaship-com", 6379,
             "kibaship-valkey-cluster-kibaship-com", 5.0, 3.0, 0, 86400.0))

    def test_flagsOverride(self):
        s = self.parse("--secure-port", "9443", "--group-name", "acme.example.org",
                       "--solver-name", "other", "--dry-run", "--log-format", "text",
                       "--valkey-read-timeout", "1500ms", "--bind-address", "::1")
        self.assertEqual((s.securePort, s.groupName, s.solverName, s.dryRun, s.logFormat,
                          s.valkeyReadTimeout, s.bindAddress),
                         (9443, "acme.example.org", "other", True, "text", 1.5, "::1"))

    def test_progressFlags(self):
        s = self.parse()
        self.assertEqual((s.progressEvents, s.progressRefreshInterval, s.progressWindow,
                          s.clusterResourceNamespace), (True, 0.0, 8 * 86400.0, "cert-manager"))
        s = self.parse("--progress-events", "off", "--progress-refresh-interval", "10m",
                       "--progress-window", "48h", "--cluster-resource-namespace", "cm")
        self.assertEqual((s.progressEvents, s.progressRefreshInterval, s.progressWindow,
                          s.clusterResourceNamespace), (False, 600.0, 48 * 3600.0, "cm"))

    def test_environmentSuppliesDefaultsAndFlagsWin(self):
        env = dict(os.environ, KIBASHIP_DNS01_SECURE_PORT="7443",
                   KIBASHIP_DNS01_LOG_LEVEL="debug", KIBASHIP_DNS01_DRY_RUN="true")
        self.patch(os, "environ", env)
        s = self.parse("--log-level", "warn")
        self.assertEqual((s.securePort, s.logLevel, s.dryRun), (7443, "warn", True))

    def test_badValuesNameTheFlag(self):
        cases = [
            (["--secure-port", "http"], "--secure-port"),
            (["--secure-port", "70000"], "--secure-port"),
            (["--metrics-port", "-1"], "--metrics-port"),
            (["--secure-port", "-1"], "--secure-port"),
            (["--bind-address", "localhost"], "--bind-address"),
            (["--group-name", "Not_A_DNS"], "--group-name"),
            (["--solver-name", ""], "--solver-name"),
            (["--log-format", "xml"], "--log-format"),
            (["--log-level", "loud"], "--log-level"),
            (["--valkey-connect-timeout", "5"], "--valkey-connect-timeout"),
            (["--valkey-connect-timeout", "0s"], "--valkey-connect-timeout"),
            (["--idempotency-window", "soon"], "--idempotency-window"),
            (["--valkey-min-replicas", "-2"], "--valkey-min-replicas"),
            (["--max-body-bytes", "10"], "--max-body-bytes"),
            (["--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig"),
            (["--progress-events", "yes"], "--progress-events"),
            (["--progress-refresh-interval", "30s"], "--progress-refresh-interval"),
            (["--progress-refresh-interval", "later"], "--progress-refresh-interval"),
            (["--progress-window", "0"], "--progress-window"),
            (["--cluster-resource-namespace", "Bad_NS"], "--cluster-resource-namespace"),
        ]
        for args, flag in cases:
            e = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertTrue(str(e).startswith(flag), (args, str(e)))

    def test_tlsPolicyFlags(self):
        s = self.parse()
        self.assertEqual((s.tlsMinVersion, s.tlsCipherSuites), ("VersionTLS12", ()))
        s = self.parse("--tls-min-version", "VersionTLS13", "--tls-cipher-suites",
                       "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "
                       "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,TLS_AES_128_GCM_SHA256")
        self.assertEqual((s.tlsMinVersion, s.tlsCipherSuites), ("VersionTLS13", (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256")))
        self.patch(os, "environ", dict(
            os.environ, KIBASHIP_DNS01_TLS_CIPHER_SUITES="TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
            KIBASHIP_DNS01_TLS_MIN_VERSION="VersionTLS13"))
        s = self.parse("--tls-min-version", "VersionTLS12")
        self.assertEqual((s.tlsMinVersion, s.tlsCipherSuites),
                         ("VersionTLS12", ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",)))

    def test_tlsPolicyUsageErrors(self):
        """Each names the flag, what is wrong and what is accepted."""
        cases = [
            (["--tls-min-version", "VersionTLS10"], "--tls-min-version: VersionTLS10 is not "
             "accepted: TLS 1.0 is deprecated (RFC 8996); use VersionTLS12 or VersionTLS13"),
            (["--tls-min-version", "VersionTLS11"], "--tls-min-version: VersionTLS11 is not "
             "accepted: TLS 1.1 is deprecated (RFC 8996); use VersionTLS12 or VersionTLS13"),
            (["--tls-min-version", "1.3"],
             "--tls-min-version: '1.3' is not one of VersionTLS12, VersionTLS13"),
            (["--tls-cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,"
              "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"],
             "--tls-cipher-suites: TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256 is insecure (Go "
             "lists it in crypto/tls InsecureCipherSuites) and is refused"),
            (["--tls-cipher-suites", "TLS_RSA_WITH_AES_128_GCM_SHA256"],
             "--tls-cipher-suites: TLS_RSA_WITH_AES_128_GCM_SHA256 is insecure (Go lists it in "
             "crypto/tls InsecureCipherSuites) and is refused"),
            (["--tls-cipher-suites", "TLS_AES_128_GCM_SHA256"],
             "--tls-cipher-suites names TLS 1.3 suites only, which cannot be configured, so "
             "TLS 1.2 clients could not connect: add TLS 1.2 suites or set --tls-min-version "
             "VersionTLS13"),
            (["--tls-cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
             "--tls-cert-file/--tls-private-key-file: the certificate's ECDSA key can use none "
             "of the TLS 1.2 cipher suites allowed by --tls-cipher-suites "
             "(TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"),
        ]
        for args, message in cases:
            e = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertEqual(str(e), message, args)
        e = self.assertRaises(usage.UsageError, self.parse, "--tls-cipher-suites",
                              "ECDHE-ECDSA-AES128-GCM-SHA256")
        self.assertTrue(str(e).startswith(
            "--tls-cipher-suites: 'ECDHE-ECDSA-AES128-GCM-SHA256' is not a cipher suite name Go "
            "knows; accepted: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "), str(e))
        # TLS 1.3 only needs no TLS 1.2 suite
        self.parse("--tls-min-version", "VersionTLS13", "--tls-cipher-suites",
                   "TLS_AES_128_GCM_SHA256")

    def test_kubeconfigProblemsAreUsageErrors(self):
        with open(self.kubeconfig, "w") as f:
            f.write("users: [")
        e = self.assertRaises(usage.UsageError, self.parse)
        self.assertTrue(str(e).startswith("--kubeconfig: "), str(e))
        opts = Options()
        e = self.assertRaises(usage.UsageError, opts.parseOptions, self.base[:4])
        self.assertIn("no --kubeconfig given and the in-cluster configuration", str(e))

    def test_missingOrBadServingPair(self):
        e = self.assertRaises(usage.UsageError, Options().parseOptions, [])
        self.assertIn("--tls-cert-file is required", str(e))
        with open(self.key, "wb") as f:
            f.write(b"not a key")
        e = self.assertRaises(usage.UsageError, self.parse)
        self.assertIn("--tls-cert-file/--tls-private-key-file", str(e))


class DelegationFlagsTests(OptionsCase):
    """--delegation-* and --dns-*: off by default, complete when on, clear when wrong."""

    def setUp(self):
        super().setUp()
        self.secret = os.path.join(self.dir, "delegation-secret")
        with open(self.secret, "w") as f:
            f.write("0123456789abcdef0123456789abcdef\n")

    def on(self, *args):
        return self.parse("--delegation-zone", "ACME.Kibaship.test.", "--delegation-secret-file",
                          self.secret, "--dns-resolvers", "10.0.0.10", *args)

    def test_offByDefault(self):
        s = self.parse()
        self.assertFalse(s.delegationOn)
        self.assertEqual((s.delegationZone, s.dnsPort, s.delegationNamespaces),
                         ("", 5353, ("certificates",)))

    def test_onWithDefaults(self):
        s = self.on("--bind-address", "127.0.0.1")
        self.assertTrue(s.delegationOn)
        self.assertEqual(
            (s.delegationZone, s.delegationSecretFile, s.delegationNameservers,
             s.delegationNameserverAddresses, s.dnsBindAddress, s.dnsResolvers, s.dnsRateLimit,
             s.dnsRateLimitSlip),
            ("acme.kibaship.test", self.secret, ("ns1.acme.kibaship.test",), (), "127.0.0.1",
             (("10.0.0.10", 53),), 100.0, 2))

    def test_everyFlag(self):
        s = self.on("--delegation-nameservers", "ns1.acme.kibaship.test, ns2.kibaship.test",
                    "--delegation-nameserver-addresses", "203.0.113.10,2001:db8::53",
                    "--delegation-namespaces", "certificates,platform", "--dns-port", "53",
                    "--dns-bind-address", "::", "--dns-resolvers", "1.1.1.1:5353,[2001:db8::1]:53",
                    "--dns-rate-limit", "20.5", "--dns-rate-limit-slip", "0")
        self.assertEqual(
            (s.delegationNameservers, s.delegationNameserverAddresses, s.delegationNamespaces,
             s.dnsPort, s.dnsBindAddress, s.dnsResolvers, s.dnsRateLimit, s.dnsRateLimitSlip),
            (("ns1.acme.kibaship.test", "ns2.kibaship.test"), ("203.0.113.10", "2001:db8::53"),
             ("certificates", "platform"), 53, "::", (("1.1.1.1", 5353), ("2001:db8::1", 53)),
             20.5, 0))

    def test_valkeyAddressReplacesTheServiceName(self):
        from kibaship_dns01.config import Defaults

        self.assertEqual(Defaults.fromSettings(self.parse()).addr,
                         "kibaship-valkey-cluster-kibaship-com.kibaship-operator.svc.cluster.local"
                         ":6379")
        defaults = Defaults.fromSettings(self.parse("--valkey-address", "127.0.0.1:7000"))
        self.assertEqual((defaults.addr, defaults.valkeySettings().addr,
                          defaults.valkeySettings().passwordSecret.name),
                         ("127.0.0.1:7000", "127.0.0.1:7000",
                          "kibaship-valkey-cluster-kibaship-com"))

    def test_environment(self):
        env = dict(os.environ, KIBASHIP_DNS01_DELEGATION_ZONE="acme.kibaship.test",
                   KIBASHIP_DNS01_DELEGATION_SECRET_FILE=self.secret,
                   KIBASHIP_DNS01_DNS_RESOLVERS="10.0.0.10", KIBASHIP_DNS01_DNS_PORT="1053")
        self.patch(os, "environ", env)
        s = self.parse()
        self.assertEqual((s.delegationZone, s.dnsPort), ("acme.kibaship.test", 1053))

    def test_resolversDefaultToResolvConf(self):
        from kibaship_dns01.delegation import check
        self.patch(check, "resolversFromResolvConf", lambda: [("10.96.0.10", 53)])
        s = self.parse("--delegation-zone", "acme.kibaship.test", "--delegation-secret-file",
                       self.secret)
        self.assertEqual(s.dnsResolvers, (("10.96.0.10", 53),))
        self.patch(check, "resolversFromResolvConf", lambda: [])
        e = self.assertRaises(usage.UsageError, self.parse, "--delegation-zone",
                              "acme.kibaship.test", "--delegation-secret-file", self.secret)
        self.assertIn("/etc/resolv.conf lists no nameserver", str(e))

    def test_badValues(self):
        short = os.path.join(self.dir, "short")
        with open(short, "w") as f:
            f.write("too short")
        for args, message in [
                (("--delegation-zone", "acme.kibaship.test"),
                 "--delegation-secret-file is required with --delegation-zone"),
                (("--delegation-zone", "acme_kibaship.test", "--delegation-secret-file",
                  self.secret), "--delegation-zone: 'acme_kibaship.test' is not"),
                (("--delegation-zone", "a.test", "--delegation-secret-file", short),
                 "--delegation-secret-file: %s holds 9 bytes" % short),
                (("--delegation-secret-file", "/nonexistent"),
                 "--delegation-secret-file: /nonexistent does not exist"),
                (("--delegation-nameserver-addresses", "ns1.example"),
                 "--delegation-nameserver-addresses: 'ns1.example' is not an IP address"),
                (("--delegation-namespaces", "Certificates"),
                 "--delegation-namespaces: 'Certificates' is neither a namespace name nor *"),
                (("--dns-port", "70000"), "--dns-port: 70000 is outside 1-65535"),
                (("--dns-resolvers", "dns.google"), "--dns-resolvers: 'dns.google' is not an IP"),
                (("--dns-resolvers", "1.1.1.1:x"), "--dns-resolvers: 'x' is not a port"),
                (("--dns-rate-limit", "-1"), "--dns-rate-limit: must be at least 0"),
                (("--dns-rate-limit", "nan"), "--dns-rate-limit: must be at least 0"),
                (("--dns-rate-limit-slip", "x"), "--dns-rate-limit-slip: 'x' is not an integer"),
                (("--valkey-address", "valkey"), "--valkey-address: Valkey address 'valkey' is not")]:
            e = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(message, str(e))


class DurationTests(SynchronousTestCase):
    def test_goStyle(self):
        for text, seconds in [("5s", 5), ("1m30s", 90), ("250ms", 0.25), ("24h", 86400),
                              ("1.5h", 5400), ("0", 0), ("100us", 0.0001)]:
            self.assertAlmostEqual(parseDuration(text), seconds)

    def test_invalid(self):
        for text in ["", "5", "s", "5x", "-5s", "5 s", 5, None]:
            self.assertRaises(ValueError, parseDuration, text)
