"""The extension-apiserver-authentication ConfigMap: parsing and keeping it current."""
import copy
import json

from twisted.internet.testing import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kibaship_dns01.auth import authconfig as ac
from kibaship_dns01.interfaces import IReadiness
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.fakekube import FakeKubernetesClient


def configMap(**kw):
    return ac.makeAuthenticationConfigMap(**kw)


class ParseTests(SynchronousTestCase):
    def setUp(self):
        self.frontProxyCA = pki.makeCA("front-proxy-ca")
        self.clientCA = pki.makeCA("kubernetes")

    def test_everyKey(self):
        obj = configMap(requestHeaderCAPEM=self.frontProxyCA.certPEM,
                        clientCAPEM=self.clientCA.certPEM, uidHeaders=("X-Remote-Uid",))
        config = ac.parseAuthenticationConfig(obj)
        self.assertEqual(config.requestHeaderCAs, (self.frontProxyCA.cert,))
        self.assertEqual(config.clientCAs, (self.clientCA.cert,))
        self.assertEqual(config.allowedNames, ("front-proxy-client",))
        self.assertEqual(config.usernameHeaders, ("X-Remote-User",))
        self.assertEqual(config.uidHeaders, ("X-Remote-Uid",))
        self.assertEqual(config.groupHeaders, ("X-Remote-Group",))
        self.assertEqual(config.extraHeaderPrefixes, ("X-Remote-Extra-",))

    def test_missingKeysAreEmpty(self):
        config = ac.parseAuthenticationConfig({"data": {}})
        self.assertEqual(config, ac.AuthenticationConfig())
        self.assertEqual(ac.parseAuthenticationConfig({}), ac.AuthenticationConfig())

    def test_emptyArray(self):
        obj = configMap(requestHeaderCAPEM=self.frontProxyCA.certPEM)
        obj["data"][ac.ALLOWED_NAMES_KEY] = "[]"
        self.assertEqual(ac.parseAuthenticationConfig(obj).allowedNames, ())

    def test_headerNamesTrimmedAllowedNamesVerbatim(self):
        obj = configMap(requestHeaderCAPEM=self.frontProxyCA.certPEM,
                        usernameHeaders=(" X-Remote-User ",), allowedNames=(" spaced ",))
        config = ac.parseAuthenticationConfig(obj)
        self.assertEqual(config.usernameHeaders, ("X-Remote-User",))
        self.assertEqual(config.allowedNames, (" spaced ",))

    def assertConfigError(self, data, *fragments):
        e = self.assertRaises(ac.AuthenticationConfigError, ac.parseAuthenticationConfig,
                              {"data": data})
        for fragment in fragments:
            self.assertIn(fragment, str(e))

    def test_malformedJSONNamesTheKey(self):
        self.assertConfigError({ac.GROUP_HEADERS_KEY: "X-Remote-Group"},
                               ac.GROUP_HEADERS_KEY, ac.WHERE, "JSON array")

    def test_notAListOfStrings(self):
        self.assertConfigError({ac.ALLOWED_NAMES_KEY: '{"a": 1}'}, ac.ALLOWED_NAMES_KEY)
        self.assertConfigError({ac.ALLOWED_NAMES_KEY: "[1]"}, ac.ALLOWED_NAMES_KEY)

    def test_emptyHeaderName(self):
        self.assertConfigError({ac.USERNAME_HEADERS_KEY: '["  "]'}, "empty header")

    def test_badPEMNamesTheKey(self):
        self.assertConfigError({ac.CLIENT_CA_KEY: "garbage"}, ac.CLIENT_CA_KEY, "PEM")

    def test_caPEMsDeduplicated(self):
        both = configMap(requestHeaderCAPEM=self.clientCA.certPEM + self.frontProxyCA.certPEM,
                         clientCAPEM=self.clientCA.certPEM)
        pems = ac.parseAuthenticationConfig(both).caPEMs()
        self.assertEqual(pems, [self.clientCA.certPEM, self.frontProxyCA.certPEM])

    def test_resourceVersionDoesNotMakeConfigsDifferent(self):
        a = configMap(clientCAPEM=self.clientCA.certPEM)
        b = copy.deepcopy(a)
        a["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"] = "1", "2"
        self.assertEqual(ac.parseAuthenticationConfig(a), ac.parseAuthenticationConfig(b))


class WatcherTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.kube = FakeKubernetesClient()
        self.store = self.kube.store
        self.caA, self.caB = pki.makeCA("front-proxy-ca-a"), pki.makeCA("front-proxy-ca-b")
        self.clientCA = pki.makeCA("kubernetes")
        self.watcher = ac.AuthConfigWatcher(self.kube, self.clock)
        self.notified = []
        self.watcher.addListener(self.notified.append)

    def start(self):
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)

    def put(self, **kw):
        kw.setdefault("clientCAPEM", self.clientCA.certPEM)
        self.store.put(configMap(**kw))

    def test_interface(self):
        verifyObject(IReadiness, self.watcher)
        self.assertEqual(self.watcher.name, "extension-apiserver-authentication")

    def test_notReadyUntilLoaded(self):
        self.assertFalse(self.watcher.isReady())
        loaded = self.watcher.whenLoaded()
        self.assertNoResult(loaded)
        self.put(requestHeaderCAPEM=self.caA.certPEM)
        self.start()
        config = self.successResultOf(loaded)
        self.assertTrue(self.watcher.isReady())
        self.assertIs(self.watcher.current, config)
        self.assertEqual(config.requestHeaderCAs, (self.caA.cert,))
        self.assertIsNone(self.watcher.lastError)
        self.assertEqual(self.notified, [config])

    def test_watchesOnlyThatConfigMap(self):
        self.start()
        lists = [c for c in self.kube.calls if c.verb == "list"]
        self.assertEqual(lists[0].path, "/api/v1/namespaces/kube-system/configmaps")
        self.assertEqual(lists[0].params["fieldSelector"],
                         "metadata.name=extension-apiserver-authentication")

    def test_missingConfigMapExplained(self):
        with capturedLogs() as events:
            self.start()
        self.assertFalse(self.watcher.isReady())
        self.assertIn("extension-apiserver-authentication-reader", self.watcher.lastError)
        self.assertTrue(any("does not exist" in formatEvent(e) for e in events))
        self.put(requestHeaderCAPEM=self.caA.certPEM)
        self.assertTrue(self.watcher.isReady())

    def test_rotationNotifiesListeners(self):
        self.put(requestHeaderCAPEM=self.caA.certPEM)
        self.start()
        self.put(requestHeaderCAPEM=self.caA.certPEM + self.caB.certPEM)
        self.put(requestHeaderCAPEM=self.caB.certPEM)
        self.assertEqual([c.requestHeaderCAs for c in self.notified],
                         [(self.caA.cert,), (self.caA.cert, self.caB.cert), (self.caB.cert,)])
        self.assertEqual(self.watcher.current.requestHeaderCAs, (self.caB.cert,))

    def test_nonCAChangeAppliedWithoutNotifying(self):
        self.put(requestHeaderCAPEM=self.caA.certPEM)
        self.start()
        self.put(requestHeaderCAPEM=self.caA.certPEM, allowedNames=("aggregator",))
        self.assertEqual(self.watcher.current.allowedNames, ("aggregator",))
        self.assertEqual(len(self.notified), 1)

    def test_malformedUpdateKeepsPreviousConfig(self):
        self.put(requestHeaderCAPEM=self.caA.certPEM)
        self.start()
        good = self.watcher.current
        bad = configMap(requestHeaderCAPEM=self.caB.certPEM)
        bad["data"][ac.GROUP_HEADERS_KEY] = "not json"
        with capturedLogs() as events:
            self.store.put(bad)
        self.assertIs(self.watcher.current, good)
        self.assertIn(ac.GROUP_HEADERS_KEY, self.watcher.lastError)
        self.assertIn("keeping the previous configuration", self.watcher.lastError)
        self.assertEqual(len([e for e in events if e.get("log_level").name == "error"]), 1)
        self.put(requestHeaderCAPEM=self.caB.certPEM)
        self.assertEqual(self.watcher.current.requestHeaderCAs, (self.caB.cert,))
        self.assertIsNone(self.watcher.lastError)

    def test_deletionKeepsLastConfig(self):
        self.put(requestHeaderCAPEM=self.caA.certPEM)
        self.start()
        good = self.watcher.current
        self.store.delete(configMap())
        self.assertIs(self.watcher.current, good)
        self.assertTrue(self.watcher.isReady())

    def test_lateListenerGetsCurrentConfig(self):
        self.put(requestHeaderCAPEM=self.caA.certPEM)
        self.start()
        late = []
        self.watcher.addListener(late.append)
        self.assertEqual(late, [self.watcher.current])

    def test_stopEndsTheWatch(self):
        self.put(requestHeaderCAPEM=self.caA.certPEM)
        self.watcher.startService()
        self.assertEqual(len(self.kube.activeWatches), 1)
        self.successResultOf(self.watcher.stopService())
        self.assertEqual(self.kube.activeWatches, [])

    def test_tlsListenerGetsEveryCAPEM(self):
        received = []
        self.watcher.addListener(ac.tlsClientCAListener(received.append))
        self.put(requestHeaderCAPEM=self.caA.certPEM)
        self.start()
        self.assertEqual(received, [[self.caA.certPEM, self.clientCA.certPEM]])


class ConfigMapFormatTests(SynchronousTestCase):
    def test_listsAreJSONArrays(self):
        ca = pki.makeCA()
        data = configMap(requestHeaderCAPEM=ca.certPEM)["data"]
        self.assertEqual(json.loads(data[ac.USERNAME_HEADERS_KEY]), ["X-Remote-User"])
        self.assertEqual(data[ac.REQUEST_HEADER_CA_KEY], ca.certPEM.decode())
        self.assertNotIn(ac.CLIENT_CA_KEY, data)
