"""Reading node replies (error classes, redirects, CLUSTER SLOTS) and the
target value."""
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.valkey import replies
from kibaship_dns01.valkey.replies import Redirect, SlotMap, classify, parseRedirect
from kibaship_dns01.valkey.target import (
    ValkeyTarget, formatAddress, noCredentials, parseAddress)

REPLIER = ("10.0.0.9", 6379)


class ClassifyTests(SynchronousTestCase):
    def test_classes(self):
        cases = {
            "MOVED 3999 127.0.0.1:6381": replies.MOVED,
            "ASK 3999 127.0.0.1:6381": replies.ASK,
            "TRYAGAIN Multiple keys request during rehashing of slot": replies.TRYAGAIN,
            "CLUSTERDOWN The cluster is down": replies.CLUSTERDOWN,
            "CLUSTERDOWN Hash slot not served": replies.CLUSTERDOWN,
            "LOADING Valkey is loading the dataset in memory": replies.CLUSTERDOWN,
            "READONLY You can't write against a read only replica.": replies.CLUSTERDOWN,
            "NOSCRIPT No matching script. Please use EVAL.": replies.NOSCRIPT,
            "WRONGPASS invalid username-password pair or user is disabled.": replies.AUTH,
            "NOAUTH Authentication required.": replies.AUTH,
            "ERR invalid password": replies.AUTH,
            "NOPERM User u has no permissions to run the 'xadd' command": replies.NOPERM,
            "ERR ACL failure in script: User weak has no permissions to run the 'xadd' "
            "command script: e3fd, on @user_script:1.": replies.NOPERM,
            "ERR unknown command 'FOO'": replies.OTHER,
            "OOM command not allowed when used memory > 'maxmemory'.": replies.OTHER,
        }
        for line, kind in cases.items():
            self.assertEqual(classify(line), kind, line)


class RedirectTests(SynchronousTestCase):
    def test_moved(self):
        self.assertEqual(parseRedirect("MOVED 3999 127.0.0.1:6381", REPLIER),
                         Redirect("moved", 3999, ("127.0.0.1", 6381)))

    def test_askWithHostname(self):
        self.assertEqual(parseRedirect("ASK 12 valkey-2.valkey:6379", REPLIER),
                         Redirect("ask", 12, ("valkey-2.valkey", 6379)))

    def test_emptyHostMeansReplier(self):
        """Valkey sends ``:port`` when the endpoint is unknown: same host."""
        self.assertEqual(parseRedirect("MOVED 1 :6380", REPLIER),
                         Redirect("moved", 1, ("10.0.0.9", 6380)))

    def test_ipv6(self):
        self.assertEqual(parseRedirect("MOVED 1 [fd00::5]:6379", REPLIER).address,
                         ("fd00::5", 6379))
        self.assertEqual(parseRedirect("MOVED 1 fd00::5:6379", REPLIER).address,
                         ("fd00::5", 6379))

    def test_malformed(self):
        for line in ("MOVED", "MOVED x 1.2.3.4:5", "MOVED 1 nohostport", "ERR MOVED",
                     "MOVED 1 h:p"):
            self.assertIsNone(parseRedirect(line, REPLIER), line)

    def test_policy(self):
        self.assertEqual(replies.rewriteHost(("1.2.3.4", 7000), REPLIER, "announced"),
                         ("1.2.3.4", 7000))
        self.assertEqual(replies.rewriteHost(("1.2.3.4", 7000), REPLIER, "seed-host"),
                         ("10.0.0.9", 7000))


def _slotsReply():
    """A CLUSTER SLOTS reply as txredisapi decodes it (convertNumbers=False)."""
    return [
        [0, 5460, ["10.1.0.1", 7000, "id1", []], ["10.1.0.4", 7003, "id4", []]],
        [5461, 10922, ["", 7001, "id2"], ["10.1.0.5", 7004, "id5"]],
        [10923, 16383, ["10.1.0.3", 7002, "id3", ["hostname", "n3"]], ["?", 7005, "id6"]],
    ]


class SlotMapTests(SynchronousTestCase):
    def test_announced(self):
        m = SlotMap.fromClusterSlots(_slotsReply(), REPLIER)
        self.assertEqual(m.primaryFor(0), ("10.1.0.1", 7000))
        self.assertEqual(m.primaryFor(5460), ("10.1.0.1", 7000))
        self.assertEqual(m.primaryFor(5461), ("10.0.0.9", 7001))   # "" = replier's host
        self.assertEqual(m.primaryFor(16383), ("10.1.0.3", 7002))
        self.assertTrue(m.covered)
        # "?" (endpoint unknown) is left out; replicas are known nodes
        self.assertEqual(m.nodes, {("10.1.0.1", 7000), ("10.1.0.4", 7003), ("10.0.0.9", 7001),
                                   ("10.1.0.5", 7004), ("10.1.0.3", 7002)})

    def test_seedHost(self):
        m = SlotMap.fromClusterSlots(_slotsReply(), ("gateway.example", 30000), "seed-host")
        self.assertEqual(m.primaryAddresses(), [("gateway.example", 7000),
                                                ("gateway.example", 7001),
                                                ("gateway.example", 7002)])

    def test_partialMapAndPatch(self):
        m = SlotMap.fromClusterSlots([[0, 99, ["10.1.0.1", 7000, "id"]]], REPLIER)
        self.assertFalse(m.covered)
        self.assertIsNone(m.primaryFor(100))
        m2 = m.withSlot(100, ("10.1.0.2", 7001))
        self.assertEqual(m2.primaryFor(100), ("10.1.0.2", 7001))
        self.assertIn(("10.1.0.2", 7001), m2.nodes)
        self.assertIsNone(m.primaryFor(100))  # values are immutable

    def test_empty(self):
        self.assertEqual(SlotMap.empty().primaryAddresses(), [])


class TargetTests(SynchronousTestCase):
    def test_addresses(self):
        self.assertEqual(parseAddress("valkey.ns.svc:6379"), ("valkey.ns.svc", 6379))
        self.assertEqual(parseAddress("[::1]:7000"), ("::1", 7000))
        self.assertEqual(formatAddress(("::1", 7000)), "[::1]:7000")
        for bad in ("nohost", ":6379", "h:0", "h:70000", "h:x", 6379):
            self.assertRaises(ValueError, parseAddress, bad)

    def test_seeds(self):
        t = ValkeyTarget(seeds="a:1")
        self.assertEqual(t.seeds, ("a:1",))
        self.assertEqual(t.seedAddresses, (("a", 1),))
        self.assertRaises(ValueError, ValkeyTarget, seeds=())
        self.assertRaises(ValueError, ValkeyTarget, seeds=["a:1", "b"])

    def test_validation(self):
        self.assertRaises(ValueError, ValkeyTarget, seeds="a:1", connectTimeout=0)
        self.assertRaises(ValueError, ValkeyTarget, seeds="a:1", announcedAddressPolicy="nat")

    def test_equalityIgnoresCredentialsCallables(self):
        """Clients are keyed by target: the provider is not part of the key,
        but where the password comes from is."""
        a = ValkeyTarget(seeds=["a:1"], credentials=lambda: defer.succeed("x"),
                         invalidateCredentials=lambda: None, credentialsSource="Secret a/b")
        b = ValkeyTarget(seeds=("a:1",), credentials=lambda: defer.succeed("y"),
                         credentialsSource="Secret a/b")
        c = ValkeyTarget(seeds=("a:1",), credentialsSource="Secret a/c")
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertNotEqual(a, c)
        self.assertEqual(len({a, b, c}), 2)

    def test_caPEMText(self):
        self.assertEqual(ValkeyTarget(seeds="a:1", caPEM="PEM").caPEM, b"PEM")

    def test_defaults(self):
        t = ValkeyTarget(seeds="a:1")
        self.assertEqual((t.username, t.tls, t.minReplicas, t.idempotencyWindow),
                         ("", False, 0, 86400.0))
        self.assertIs(t.credentials, noCredentials)
        self.assertIsNone(self.successResultOf(t.credentials()))
        self.assertEqual(t.describeUser(), "default")
