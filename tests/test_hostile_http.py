"""Broken HTTP through the whole request path (issue 12's hostile-input drill, in small).

The generator of ``bench/drills/fuzz.py`` (:mod:`kibaship_dns01.testing.hostilehttp`)
against the real site, channel and solver in memory, on a fake clock moved
past every read deadline: each input is answered below 500 or closed, nothing
is logged as a failure, and the stream only ever holds the one true record.
"""
import json

from hypothesis import HealthCheck, given, settings
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.api.channel import ABORT_TIMEOUT
from kibaship_dns01.testing.hostilehttp import brokenRequests
from kibaship_dns01.testing.inmemory import MemoryClient, postRequest
from tests.support import SOLVER_PATH, LogCapture
from tests.test_hostile_payloads import Stack, _payload
from kibaship_dns01.testing.certmanager import buildChain

CHAIN = buildChain()
VALID = postRequest(SOLVER_PATH, json.dumps(_payload(CHAIN)).encode())
#: past the header/body deadline (10 s) and the abort that follows it (2 s)
PAST_EVERY_DEADLINE = 10 + ABORT_TIMEOUT + 1


def statuses(data):
    """The status of every response in ``data`` (framed by ``Content-Length``; a
    response without one, like Twisted's bare 400, runs to the end)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"HTTP/1."):
            raise AssertionError("not an HTTP response: %r" % data[:80])
        out.append(int(head.split(b" ", 2)[1]))
        length = [line.split(b":", 1)[1] for line in head.split(b"\r\n")[1:]
                  if line.lower().startswith(b"content-length:")]
        if 100 <= out[-1] < 200:
            data = rest
        elif length:
            data = rest[int(length[0]):]
        else:
            data = b""
    return out


class BrokenHTTPTests(SynchronousTestCase):
    def setUp(self):
        self.logs = LogCapture(self)
        self.stack = Stack(self, CHAIN)

    def failuresLogged(self, since=0):
        return [e for e in self.logs.events[since:] if e.get("log_failure") is not None
                or e.get("log_level") is not None and e["log_level"].name in ("error", "critical")]

    def exchange(self, data):
        client = MemoryClient(self.stack.site)
        written = client.send(data)
        self.stack.clock.advance(PAST_EVERY_DEADLINE)
        written += client.transport.value()
        return client, written

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=brokenRequests(VALID))
    def test_brokenRequests(self, case):
        label, data = case
        mark = len(self.logs.events)
        client, written = self.exchange(data)
        codes = statuses(written)
        self.assertTrue(all(c < 500 for c in codes), (label, codes))
        self.assertEqual(self.failuresLogged(mark), [], label)
        if not client.transport.disconnecting:
            self.assertTrue(codes, (label, "left open without an answer"))
        client.close()
        for fields in self.stack.entries():
            record = json.loads(fields["event_data"])["payload"]["record"]
            self.assertEqual(record["value"], CHAIN.challenges[0]["spec"]["key"], label)
        self.assertLessEqual(len(self.stack.entries()), 1, label)

    def test_aMalformedHeadIsAnsweredOnce(self):
        """Twisted answers 400 and closes; the head's deadline must not then write a
        408 into the closing connection (it only makes sure the client lets go)."""
        flood = VALID.replace(b"\r\n\r\n", b"\r\n" + b"X-Junk: v\r\n" * 501 + b"\r\n", 1)
        client = MemoryClient(self.stack.site)
        self.assertEqual(statuses(client.send(flood)), [400])
        self.assertTrue(client.transport.disconnecting)
        self.stack.clock.advance(10)
        self.assertEqual(client.transport.value(), b"", "nothing after the 400")
        self.assertFalse(client.transport.disconnected)
        self.stack.clock.advance(ABORT_TIMEOUT)
        self.assertTrue(client.transport.disconnected, "aborted: the client never let go")
