"""Connections to one node (txredisapi protocol, our pool) with a Clock and
in-memory transports: AUTH, timeouts, single-flight connects, closing."""
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.internet.error import ConnectionDone

from kibaship_dns01.testing import pki
from kibaship_dns01.valkey.errors import ConnectionLost, ValkeyAuthError, ValkeyTLSError
from kibaship_dns01.valkey.node import Node, makeEndpoint, trustRoot
from kibaship_dns01.valkey.replies import ServerError
from kibaship_dns01.valkey.target import ValkeyTarget

ADDRESS = ("10.0.0.1", 7000)


class FakeEndpoint:
    """Connects instantly to a StringTransport, or hangs when ``hang``."""

    def __init__(self, hang=False):
        self.hang = hang
        self.protocols = []
        self.pending = []

    def connect(self, factory):
        if self.hang:
            d = defer.Deferred(lambda d: self.pending.remove(d))
            self.pending.append(d)
            return d
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return defer.succeed(protocol)


class NodeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.passwords = ["s3cret"]
        self.credentialCalls = 0
        self.target = ValkeyTarget(seeds=["10.0.0.1:7000"], username="app",
                                   connectTimeout=5.0, readTimeout=3.0,
                                   credentialsSource="Secret valkey/creds key password")

    def credentials(self):
        self.credentialCalls += 1
        return defer.succeed(self.passwords[-1])

    def node(self, size=2):
        return Node(self.clock, ADDRESS, self.target, self.credentials, size=size,
                    endpointFactory=lambda reactor, address, target: self.endpoint)

    def reply(self, protocol, data):
        protocol.dataReceived(data)

    def test_authWithUsernameThenCommands(self):
        node = self.node()
        d = node.acquire()
        proto = self.endpoint.protocols[0]
        self.assertEqual(proto.transport.value(),
                         b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$6\r\ns3cret\r\n")
        self.assertNoResult(d)
        self.reply(proto, b"+OK\r\n")
        conn = self.successResultOf(d)
        proto.transport.clear()
        ping = conn.send("PING")
        self.assertEqual(proto.transport.value(), b"*1\r\n$4\r\nPING\r\n")
        self.reply(proto, b"+PONG\r\n")
        self.assertEqual(self.successResultOf(ping), "PONG")

    def test_numbersStayStrings(self):
        """convertNumbers=False: a stream id must not become a float."""
        self.passwords = [None]
        conn = self.successResultOf(self.node().acquire())
        d = conn.send("GET", "k")
        self.reply(conn.protocol, b"$3\r\n1.5\r\n")
        self.assertEqual(self.successResultOf(d), "1.5")

    def test_nestedBulkRepliesParsedAtOnce(self):
        """Bulk strings followed by more data are parsed in the same call
        (txredisapi would defer each remainder to the next reactor turn)."""
        self.passwords = [None]
        conn = self.successResultOf(self.node().acquire())
        first = conn.send("XRANGE", "s", "-", "+")
        second = conn.send("PING")
        self.reply(conn.protocol, b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n"
                                  b"*2\r\n$3\r\n2-0\r\n*0\r\n+PONG\r\n")
        self.assertEqual(self.successResultOf(first), [["1-0", ["a", "b"]], ["2-0", []]])
        self.assertEqual(self.successResultOf(second), "PONG")
        # nothing deferred to a later reactor turn (only the connection's reply watchdog)
        self.assertEqual([c.func.__name__ for c in self.clock.getDelayedCalls()],
                         ["_checkReplies"])

    def test_noPasswordNoAuth(self):
        self.passwords = [None]
        self.successResultOf(self.node().acquire())
        self.assertEqual(self.endpoint.protocols[0].transport.value(), b"")

    def test_wrongPassword(self):
        node = self.node()
        d = node.acquire()
        proto = self.endpoint.protocols[0]
        self.reply(proto, b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        err = self.failureResultOf(d, ValkeyAuthError).value
        self.assertEqual(str(err), "Valkey at 10.0.0.1:7000 rejected the credentials for user app:"
                         " WRONGPASS invalid username-password pair or user is disabled.; "
                         "check Secret valkey/creds key password")
        self.assertNotIn("s3cret", str(err))
        self.assertTrue(proto.transport.disconnecting)

    def test_credentialsProviderFails(self):
        """A missing Secret is reported as an auth problem naming its source."""
        self.credentials = lambda: defer.fail(KeyError("secret valkey/creds not found"))
        d = self.node().acquire()
        err = self.failureResultOf(d, ValkeyAuthError).value
        self.assertIn("could not read the password for Valkey at 10.0.0.1:7000 from "
                      "Secret valkey/creds key password", str(err))
        self.assertIn("not found", str(err))
        self.assertTrue(self.endpoint.protocols[0].transport.disconnecting)

    def test_rebuildReadsCredentialsAgain(self):
        """After a rejection the next attempt asks the provider again."""
        node = self.node()
        d = node.acquire()
        self.reply(self.endpoint.protocols[0], b"-WRONGPASS nope\r\n")
        self.failureResultOf(d, ValkeyAuthError)
        self.passwords.append("rotated")
        d = node.acquire()
        proto = self.endpoint.protocols[1]
        self.assertIn(b"rotated", proto.transport.value())
        self.reply(proto, b"+OK\r\n")
        self.successResultOf(d)
        self.assertEqual(self.credentialCalls, 2)

    def test_connectTimeout(self):
        """A black-holed node: the attempt ends after connectTimeout."""
        self.endpoint.hang = True
        d = self.node().acquire()
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        err = self.failureResultOf(d, ConnectionLost).value
        self.assertEqual(str(err), "could not connect to Valkey node 10.0.0.1:7000 within 5s")
        self.assertEqual(self.endpoint.pending, [], "the attempt was cancelled")

    def test_singleFlightConnect(self):
        self.endpoint.hang = True
        node = self.node()
        waiters = [node.acquire() for _ in range(10)]
        self.assertEqual(len(self.endpoint.pending), 1)
        self.clock.advance(5)
        for d in waiters:
            self.failureResultOf(d, ConnectionLost)

    def test_secondConnectionInBackground(self):
        self.passwords = [None]
        node = self.node(size=2)
        first = self.successResultOf(node.acquire())
        self.assertEqual(len(self.endpoint.protocols), 1)
        second = self.successResultOf(node.acquire())
        self.assertIs(second, first, "the live one is used while the next one connects")
        self.assertEqual(len(self.endpoint.protocols), 2)
        node.acquire()
        self.assertEqual(len(self.endpoint.protocols), 2, "never more than size")

    def test_oneWatchdogPerConnectionNotPerCommand(self):
        self.passwords = [None]
        conn = self.successResultOf(self.node().acquire())
        sent = [conn.send("PING") for _ in range(50)]
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.reply(conn.protocol, b"+PONG\r\n" * 50)
        self.assertEqual([self.successResultOf(d) for d in sent], ["PONG"] * 50)

    def test_aLateReplyAfterACancelledCommandIsNotTakenByTheNext(self):
        self.passwords = [None]
        conn = self.successResultOf(self.node().acquire())
        first = conn.send("GET", "a")
        second = conn.send("GET", "b")
        first.cancel()
        self.failureResultOf(first)
        self.reply(conn.protocol, b"$1\r\nA\r\n$1\r\nB\r\n")
        self.assertEqual(self.successResultOf(second), "B")

    def test_theWatchdogWaitsForTheOldestCommand(self):
        """A command sent later does not extend the deadline of an earlier one."""
        self.passwords = [None]
        conn = self.successResultOf(self.node().acquire())
        first = conn.send("PING")
        self.clock.advance(2.9)
        second = conn.send("PING")
        self.reply(conn.protocol, b"+PONG\r\n")
        self.assertEqual(self.successResultOf(first), "PONG")
        self.clock.advance(0.2)  # the first's deadline passes: the second is young
        self.assertNoResult(second)
        self.clock.advance(2.8)
        self.failureResultOf(second, ConnectionLost)

    def test_replyTimeoutAbortsConnection(self):
        self.passwords = [None]
        conn = self.successResultOf(self.node(size=1).acquire())
        d = conn.send("EVALSHA", "x", 0)
        self.clock.advance(3.1)
        err = self.failureResultOf(d, ConnectionLost).value
        self.assertEqual(str(err), "Valkey node 10.0.0.1:7000 sent no reply within 3s")
        self.assertTrue(conn.protocol.transport.disconnecting)

    def test_oneWaitInFlightOthersShareTheNext(self):
        """WAIT blocks its connection until it returns: while one runs, later
        callers are not queued behind it one WAIT each, they share the next
        WAIT, sent when the running one answers (so it covers their writes)."""
        self.passwords = [None]
        conn = self.successResultOf(self.node(size=1).acquire())
        proto = conn.protocol
        first = conn.send("WAIT", 1, 1500)
        writes = [conn.send("EVALSHA", "x", 0), conn.send("EVALSHA", "y", 0)]
        second, third = conn.send("WAIT", 1, 1500), conn.send("WAIT", 1, 1500)
        self.assertEqual(proto.transport.value().count(b"WAIT"), 1)
        proto.transport.clear()
        self.reply(proto, b":0\r\n")
        self.assertEqual(self.successResultOf(first), 0)
        self.assertNoResult(second)
        self.assertEqual(proto.transport.value(), b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$4\r\n1500\r\n")
        proto.transport.clear()
        self.reply(proto, b"+OK\r\n+OK\r\n:1\r\n")
        self.assertEqual([self.successResultOf(d) for d in writes + [second, third]],
                         ["OK", "OK", 1, 1])
        self.assertEqual(proto.transport.value(), b"", "no WAIT left to send")

    def test_lostConnectionFailsEveryWaitingCaller(self):
        self.passwords = [None]
        conn = self.successResultOf(self.node(size=1).acquire())
        waits = [conn.send("WAIT", 1, 1500) for _ in range(3)]
        conn.protocol.connectionLost(Failure(ConnectionDone("gone")))
        for d in waits:
            self.failureResultOf(d, ConnectionLost)

    def test_errorReplyIsServerError(self):
        self.passwords = [None]
        conn = self.successResultOf(self.node().acquire())
        d = conn.send("EVALSHA", "x", 0)
        self.reply(conn.protocol, b"-MOVED 1 10.0.0.2:7001\r\n")
        err = self.failureResultOf(d, ServerError).value
        self.assertEqual((err.message, err.address), ("MOVED 1 10.0.0.2:7001", ADDRESS))

    def test_lostConnectionFailsPendingAndReconnects(self):
        self.passwords = [None]
        node = self.node(size=1)
        conn = self.successResultOf(node.acquire())
        d = conn.send("PING")
        conn.protocol.connectionLost(Failure(ConnectionDone("gone")))
        err = self.failureResultOf(d, ConnectionLost).value
        self.assertIn("connection to Valkey node 10.0.0.1:7000 lost", str(err))
        self.assertFalse(node.connected)
        again = self.successResultOf(node.acquire())
        self.assertIsNot(again, conn)
        self.assertEqual(len(self.endpoint.protocols), 2)

    def test_closeEndsAttemptInProgress(self):
        self.endpoint.hang = True
        node = self.node()
        d = node.acquire()
        node.close()
        self.failureResultOf(d, ConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.failureResultOf(node.acquire(), ConnectionLost)

    def test_resetClosesConnections(self):
        self.passwords = [None]
        node = self.node(size=1)
        conn = self.successResultOf(node.acquire())
        node.reset()
        self.assertTrue(conn.protocol.transport.disconnecting)


class EndpointTests(SynchronousTestCase):
    def test_kinds(self):
        clock = MemoryReactorClock()
        t = ValkeyTarget(seeds="a:1")
        self.assertIsInstance(makeEndpoint(clock, ("10.0.0.1", 1), t), TCP4ClientEndpoint)
        self.assertIsInstance(makeEndpoint(clock, ("fd00::1", 1), t), TCP6ClientEndpoint)
        self.assertIsInstance(makeEndpoint(clock, ("valkey.svc", 1), t), HostnameEndpoint)
        tls = makeEndpoint(clock, ("valkey.svc", 1), ValkeyTarget(
            seeds="a:1", tls=True, caPEM=pki.makeCA().certPEM))
        self.assertNotIsInstance(tls, HostnameEndpoint)   # wrapped in TLS

    def test_trustRootBundle(self):
        bundle = pki.makeCA("one").certPEM + pki.makeCA("two").certPEM
        self.assertIsNotNone(trustRoot(bundle))

    def test_trustRootGarbage(self):
        err = self.assertRaises(ValkeyTLSError, trustRoot, b"not a certificate")
        self.assertIn("caSecretRef", str(err))
