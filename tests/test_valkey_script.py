"""The idempotent append script: argument building, and the Lua itself run
on the shared cluster (including the checks the client normally does first)."""
import json
import uuid

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.valkeysupport import SharedClusterCase
from kibaship_dns01.valkey import ValkeyCommandError
from kibaship_dns01.valkey.replies import ServerError
from kibaship_dns01.valkey.script import (
    APPEND_SCRIPT, APPEND_SHA, DUPLICATE, MISSING, SEQUENCE_PLACEHOLDER, SEQUENCE_TOKEN,
    flattenFields, idempotencyKey, probeArguments, runAppend, runProbe, scriptArguments,
    sequenceKey, streamKey, validateProject)


class ArgumentTests(SynchronousTestCase):
    def test_placeholderIsTheJSONEncodedToken(self):
        self.assertIn(SEQUENCE_PLACEHOLDER, json.dumps({"sequence_number": SEQUENCE_TOKEN}))

    def test_flattenKeepsOrderAndStringifies(self):
        self.assertEqual(flattenFields([("b", "1"), ("a", 2)]), ["b", "1", "a", "2"])
        self.assertEqual(flattenFields({"x": b"raw"}), ["x", b"raw"])

    def test_flattenRefusals(self):
        for fields, seqField in (({}, None), ({"sequence": "1"}, None), ({"a": None}, None),
                                 ({"a": "1"}, "b"), ({"a": "no token"}, "a"),
                                 ({"a": SEQUENCE_PLACEHOLDER * 2}, "a")):
            self.assertRaises(ValueError, flattenFields, fields, seqField)

    def test_keysShareTheProjectTag(self):
        keys, args = scriptArguments("p1", "idem", ["a", "1"], 86400, False, None)
        self.assertEqual(keys, ["{project:p1}:events", "{project:p1}:sequence",
                                "{project:p1}:idempotency:idem"])
        self.assertEqual(args, ["86400000", "0", "", SEQUENCE_PLACEHOLDER, "a", "1"])
        self.assertEqual(scriptArguments("p", "k", [], 0.0001, True, "f")[1][:3],
                         ["1", "1", "f"])

    def test_validateProject(self):
        validateProject("0b7c1e7e-8a3c-4c55-9a77-1f2e3d4c5b6a")
        for bad in ("", "a}b", "{x", None, 5):
            self.assertRaises(ValueError, validateProject, bad)

    def test_shaMatchesScript(self):
        import hashlib
        self.assertEqual(APPEND_SHA, hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest())


class PipelinedConnection:
    """Records what is sent; the test answers each command when it wants."""

    address = ("127.0.0.1", 7000)

    def __init__(self):
        self.sent = []

    def send(self, *command):
        d = defer.Deferred()
        self.sent.append((command[0], d))
        return d

    def names(self):
        return [name for name, _ in self.sent]


class RoundTripTests(SynchronousTestCase):
    """An append with a durability check is one round trip (issue 11)."""

    def append(self, conn):
        keys, args = scriptArguments("p", "k", ["a", "1"], 60, True, None)
        return defer.ensureDeferred(runAppend(conn, keys, args, after=("WAIT", 1, 1500)))

    def test_waitIsPipelinedBehindTheScript(self):
        conn = PipelinedConnection()
        d = self.append(conn)
        self.assertEqual(conn.names(), ["EVALSHA", "WAIT"], "both sent before any reply")
        conn.sent[0][1].callback(["1-0", 7, 0])
        conn.sent[1][1].callback(1)
        self.assertEqual(self.successResultOf(d), ("1-0", 7, 0, 1))

    def test_afterNOSCRIPTTheWaitFollowsTheRetriedWrite(self):
        conn = PipelinedConnection()
        d = self.append(conn)
        conn.sent[0][1].errback(ServerError("NOSCRIPT No matching script.", conn.address))
        conn.sent[1][1].callback(0)  # WAIT after nothing written: its answer is dropped
        self.assertEqual(conn.names(), ["EVALSHA", "WAIT", "SCRIPT", "EVALSHA", "WAIT"])
        conn.sent[2][1].callback(APPEND_SHA)
        conn.sent[3][1].callback(["2-0", 8, 0])
        conn.sent[4][1].callback(1)
        self.assertEqual(self.successResultOf(d), ("2-0", 8, 0, 1))

    def test_aFailedScriptDropsTheWaitReply(self):
        conn = PipelinedConnection()
        d = self.append(conn)
        conn.sent[0][1].errback(ServerError("ERR something", conn.address))
        conn.sent[1][1].errback(ServerError("ERR connection state", conn.address))
        self.assertIsInstance(self.failureResultOf(d, ServerError).value.message, str)
        self.assertEqual(conn.names(), ["EVALSHA", "WAIT"])


class LuaTests(SharedClusterCase):
    """Run the script directly, skipping the client-side validation."""

    def _started(self, cluster):
        super()._started(cluster)
        self.client = self.publisher.clientFor(self.target).client
        self.project = str(uuid.uuid4())

    def runScript(self, key, flat, window=60, touch=False, seqField=None):
        keys, args = scriptArguments(self.project, key, flat, window, touch, seqField)
        return self.client.execute(keys[0], lambda c: defer.ensureDeferred(
            runAppend(c, keys, args))).addCallback(lambda reply: reply[:3])

    def command(self, *args):
        return self.client.execute(args[1], lambda c: c.send(*args))

    @defer.inlineCallbacks
    def test_missingPlaceholderRefusedBeforeCounting(self):
        err = yield self.assertFailure(
            self.runScript("k", ["event_data", "{}"], seqField="event_data"), ValkeyCommandError)
        self.assertIn("must contain the sequence placeholder exactly once", str(err))
        err = yield self.assertFailure(
            self.runScript("k", ["a", "1"], seqField="event_data"), ValkeyCommandError)
        self.assertIn("field event_data is missing", str(err))
        self.assertIsNone((yield self.command("GET", sequenceKey(self.project))))
        self.assertEqual(int((yield self.command("XLEN", streamKey(self.project)))), 0)

    @defer.inlineCallbacks
    def test_substitutionIsPlainTextNotPattern(self):
        """Lua pattern characters in the value are left alone."""
        value = '{"pat":"%d+.*[x]","n":' + SEQUENCE_PLACEHOLDER + '}'
        entryId, seq, dup = yield self.runScript("k", ["d", value], seqField="d")
        reply = yield self.command("XRANGE", streamKey(self.project), "-", "+")
        self.assertEqual(reply[0][1], ["d", '{"pat":"%d+.*[x]","n":1}', "sequence", "1"])

    @defer.inlineCallbacks
    def test_recordHasWindowTTLAndIdAndSequence(self):
        entryId, seq, dup = yield self.runScript("k", ["a", "1"], window=120)
        record = yield self.command("GET", idempotencyKey(self.project, "k"))
        self.assertEqual(record, "%s %d" % (entryId, seq))
        ttl = int((yield self.command("PTTL", idempotencyKey(self.project, "k"))))
        self.assertTrue(110_000 < ttl <= 120_000, ttl)

    def probe(self, key, touch=False):
        keys, args = probeArguments(self.project, key, touch)
        return self.client.execute(keys[0], lambda c: defer.ensureDeferred(
            runProbe(c, keys, args))).addCallback(lambda reply: reply[:3])

    @defer.inlineCallbacks
    def test_probeFindsTheRecordOrSaysMissing(self):
        self.assertEqual((yield self.probe("k")), ("", 0, MISSING))
        entryId, seq, _ = yield self.runScript("k", ["a", "1"], window=120)
        self.assertEqual((yield self.probe("k")), (entryId, seq, DUPLICATE))
        self.assertEqual(int((yield self.command("XLEN", streamKey(self.project)))), 1)

    @defer.inlineCallbacks
    def test_probeTouchKeepsTTL(self):
        yield self.runScript("k", ["a", "1"], window=120)
        yield self.command("PEXPIRE", idempotencyKey(self.project, "k"), 50_000)
        yield self.probe("k", touch=True)
        ttl = int((yield self.command("PTTL", idempotencyKey(self.project, "k"))))
        self.assertTrue(0 < ttl <= 50_000, ttl)

    @defer.inlineCallbacks
    def test_touchOnDuplicateKeepsTTL(self):
        yield self.runScript("k", ["a", "1"], window=120)
        yield self.command("PEXPIRE", idempotencyKey(self.project, "k"), 50_000)
        first = yield self.runScript("k", ["a", "1"], window=120, touch=True)
        self.assertTrue(first[2])
        ttl = int((yield self.command("PTTL", idempotencyKey(self.project, "k"))))
        self.assertTrue(0 < ttl <= 50_000, ttl)
