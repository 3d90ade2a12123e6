"""The log observers: one JSON object per line, structured fields as keys, levels filtered."""
import io
import json

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.logs import ThrottledLog, buildObserver, eventAsJSON


def event(fmt, level=LogLevel.info, **fields):
    return dict(fields, log_format=fmt, log_level=level, log_namespace="kibaship.test",
                log_time=1796000000.25, log_logger=Logger())


class JSONTests(SynchronousTestCase):
    def test_messageAndFields(self):
        line = json.loads(eventAsJSON(event("{action} {fqdn}: {outcome}", action="Present",
                                            fqdn="_acme-challenge.x.", outcome="success",
                                            duration_ms=1.5, log_kind="challenge_decision")))
        self.assertEqual(line["msg"], "Present _acme-challenge.x.: success")
        self.assertEqual((line["level"], line["logger"], line["ts"]),
                         ("info", "kibaship.test", "2026-11-30T00:53:20.250Z"))
        self.assertEqual((line["duration_ms"], line["log_kind"]), (1.5, "challenge_decision"))
        self.assertNotIn("log_logger", line)

    def test_reprConversionLikeFormatEvent(self):
        line = json.loads(eventAsJSON(event("reply {reply!r}", reply="PONG")))
        self.assertEqual(line["msg"], "reply 'PONG'")

    def test_whatFormatMapCannotRenderFallsBackToFormatEvent(self):
        """Twisted's own formatter: calls in the format, and a field that is missing."""
        called = json.loads(eventAsJSON(event("n={n.bit_length()}", n=5)))
        self.assertEqual(called["msg"], "n=3")
        missing = json.loads(eventAsJSON(event("{absent} here")))
        self.assertIn("Unable to format event", missing["msg"])

    def test_failureCarriesItsTraceback(self):
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        line = json.loads(eventAsJSON(event("boom", level=LogLevel.error, log_failure=failure)))
        self.assertEqual(line["error"], "division by zero")
        self.assertIn("ZeroDivisionError", line["traceback"])

    def test_levelsBelowTheSettingAreDropped(self):
        out = io.StringIO()
        observer = buildObserver(out, "json", "info")
        observer(event("hidden", level=LogLevel.debug))
        observer(event("shown", level=LogLevel.warn))
        self.assertEqual([json.loads(l)["msg"] for l in out.getvalue().splitlines()], ["shown"])


class ThrottledLogTests(SynchronousTestCase):
    def setUp(self):
        from twisted.internet.task import Clock
        self.clock = Clock()
        self.events = []
        self.log = ThrottledLog(Logger(observer=self.events.append), self.clock,
                                "{count} in {interval}s, last {what}", interval=10.0,
                                log_kind="flood")

    def test_firstThenOncePerIntervalWithTheCount(self):
        self.assertTrue(self.log.report(what="a"))
        for n in range(5):
            self.assertFalse(self.log.report(what=n))
        self.clock.advance(9.9)
        self.assertFalse(self.log.report(what="b"))
        self.clock.advance(0.1)
        self.assertTrue(self.log.report(what="c"))
        self.assertEqual([(e["count"], e["what"], e["log_kind"], e["log_level"])
                          for e in self.events],
                         [(1, "a", "flood", LogLevel.warn), (7, "c", "flood", LogLevel.warn)])

    def test_theCountFieldCanBeNamed(self):
        log = ThrottledLog(Logger(observer=self.events.append), self.clock, "{refused}",
                           countField="refused")
        log.report()
        self.assertEqual(self.events[0]["refused"], 1)
        self.assertNotIn("count", self.events[0])
