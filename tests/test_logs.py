"""The log observers: one JSON object per line, structured fields as keys, levels filtered."""
import io
import json

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.logs import buildObserver, eventAsJSON


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
