"""TLS and authentication against a TLS-only, password-protected cluster
with ACL users: verification, wrong and rotated passwords, permissions."""
import uuid

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from kibaship_dns01.testing import pki
from kibaship_dns01.testing.valkeycluster import PUBLISHER_ACL_RULES, inThread, namedCluster
from kibaship_dns01.valkey import (
    ValkeyAuthError, ValkeyPublisher, ValkeyTLSError, ValkeyUnavailable)

PASSWORD = "initial-pw"
WEAK_RULES = "~{project:* -@all +evalsha +eval +script|load +cluster|slots +ping +get +incr +set"


def tlsAuthCluster():
    return namedCluster(
        "tls-auth", primaries=3, replicasPerPrimary=0, tls=True, password=PASSWORD,
        aclUsers=[("app", "app-pw", PUBLISHER_ACL_RULES), ("weak", "weak-pw", WEAK_RULES)])


class Provider:
    """A credentials provider with a cache the client can invalidate."""

    def __init__(self, *passwords):
        self.passwords = list(passwords)   # served in order, last one sticks
        self.events = []

    @property
    def invalidations(self):
        return self.events.count("invalidate")

    def __call__(self):
        self.events.append("read")
        return defer.succeed(self.passwords[0])

    def invalidate(self):
        self.events.append("invalidate")
        if len(self.passwords) > 1:
            self.passwords.pop(0)


class TLSAuthTests(TestCase):
    def setUp(self):
        return inThread(tlsAuthCluster).addCallback(self._started)

    def _started(self, cluster):
        self.cluster = cluster
        self.publisher = ValkeyPublisher(reactor)
        self.publisher.startService()
        self.addCleanup(self.publisher.stopService)

    def target(self, provider=None, **kw):
        provider = provider or Provider(PASSWORD)
        kw.setdefault("credentialsSource", "Secret valkey/valkey-auth key password")
        kw.setdefault("operationTimeout", 3.0)
        return self.cluster.target(credentials=provider, invalidateCredentials=provider.invalidate,
                                   **kw)

    def append(self, target, key="k"):
        return self.publisher.appendEvent(target, str(uuid.uuid4()), {"a": "1"}, key)

    @defer.inlineCallbacks
    def test_trustedCA(self):
        """Verified TLS (IP SAN 127.0.0.1) plus the default user's password."""
        r = yield self.append(self.target())
        self.assertFalse(r.duplicate)
        yield self.publisher.check(self.target())

    @defer.inlineCallbacks
    def test_untrustedCA(self):
        other = pki.makeCA("somebody-else").certPEM
        err = yield self.assertFailure(self.append(self.target(caPEM=other)), ValkeyTLSError)
        self.assertIn("TLS handshake with Valkey node 127.0.0.1:", str(err))
        self.assertIn("certificate verify failed", str(err))
        self.assertIn("caSecretRef", str(err))

    @defer.inlineCallbacks
    def test_wrongServerName(self):
        err = yield self.assertFailure(
            self.append(self.target(serverName="valkey.elsewhere.example")), ValkeyTLSError)
        self.assertIn("valkey.elsewhere.example", str(err))

    @defer.inlineCallbacks
    def test_plainTextAgainstTLS(self):
        err = yield self.assertFailure(
            self.append(self.target(tls=False, operationTimeout=1.0)), ValkeyUnavailable)
        self.assertIn("could not reach Valkey cluster at 127.0.0.1:", str(err))

    @defer.inlineCallbacks
    def test_wrongPassword(self):
        """Rejected, re-read once (the cache is told), rejected again: clear error."""
        provider = Provider("not-the-password")
        err = yield self.assertFailure(self.append(self.target(provider)), ValkeyAuthError)
        self.assertIn("rejected the credentials for user default", str(err))
        self.assertIn("WRONGPASS", str(err))
        self.assertIn("check Secret valkey/valkey-auth key password", str(err))
        self.assertNotIn("not-the-password", str(err))
        self.assertEqual(provider.invalidations, 1)
        after = provider.events[provider.events.index("invalidate") + 1:]
        self.assertIn("read", after, "the password was read again after invalidation")

    @defer.inlineCallbacks
    def test_staleCachedPasswordRecovered(self):
        """The cache holds an old password: invalidated, fresh one works."""
        provider = Provider("stale", PASSWORD)
        r = yield self.append(self.target(provider))
        self.assertFalse(r.duplicate)
        self.assertEqual(provider.invalidations, 1)

    def _everywhere(self, *command):
        for node in self.cluster.nodes:
            self.cluster.cli(node, *command)

    @defer.inlineCallbacks
    def test_passwordRotatedOnServer(self):
        """requirepass changes on every node and connections are dropped
        (what a rolling restart does): the next append re-reads the Secret."""
        provider = Provider(PASSWORD)
        target = self.target(provider)
        yield self.append(target, "before")
        self._everywhere("CONFIG", "SET", "requirepass", "rotated-pw")
        self.cluster.password = "rotated-pw"
        self.addCleanup(self._restorePassword)
        self._everywhere("CLIENT", "KILL", "TYPE", "normal")
        provider.passwords.append("rotated-pw")   # the Secret now holds the new one
        r = yield self.append(target, "after")
        self.assertFalse(r.duplicate)
        self.assertEqual(provider.invalidations, 1)

    def _restorePassword(self):
        self._everywhere("CONFIG", "SET", "requirepass", PASSWORD)
        self.cluster.password = PASSWORD

    @defer.inlineCallbacks
    def test_aclUserWithDocumentedRules(self):
        """The permission list in PUBLISHER_ACL_RULES is enough, WAIT included."""
        r = yield self.append(self.target(Provider("app-pw"), username="app"))
        self.assertFalse(r.duplicate)

    @defer.inlineCallbacks
    def test_aclUserRotated(self):
        provider = Provider("app-pw")
        target = self.target(provider, username="app")
        yield self.append(target, "before")
        self._everywhere("ACL", "SETUSER", "app", "resetpass", ">app-pw-2")
        self.addCleanup(self._everywhere, "ACL", "SETUSER", "app", "resetpass", ">app-pw")
        self._everywhere("CLIENT", "KILL", "USER", "app")
        provider.passwords.append("app-pw-2")
        r = yield self.append(target, "after")
        self.assertFalse(r.duplicate)
        self.assertEqual(provider.invalidations, 1)  # the rejected password was re-read

    @defer.inlineCallbacks
    def test_aclUserLackingPermission(self):
        err = yield self.assertFailure(
            self.append(self.target(Provider("weak-pw"), username="weak")), ValkeyAuthError)
        self.assertIn("Valkey user weak at 127.0.0.1:", str(err))
        self.assertIn("'xadd'", str(err))
        self.assertIn("+xadd", str(err))
