"""The judges the drills (``bench/drills/``) rely on say what they claim.

- :class:`~bench.drills.common.StreamCheck` finds every kind of loss a consumer
  of a project's stream could suffer: a gap or a repeat in ``sequence``, a
  counter ahead of the last entry, a challenge without its ``present`` entry,
  a challenge presented twice, an entry on another project's stream;
- :func:`~bench.stack.logProblems` picks out errors, tracebacks and lines the
  JSON logger did not write, and nothing else.
"""
import json
import os

from twisted.trial.unittest import TestCase

from bench.drills.common import StreamCheck, Tally
from bench.stack import logProblems
from tests.support import tempDir

A, B = "project-a", "project-b"


def entry(sequence, operation="present", dnsName=None, txt="k", claimed=None):
    payload = {"dnsName": dnsName or "n%d.example.com" % sequence, "txt": txt}
    data = {"metadata": {"sequence_number": sequence if claimed is None else claimed},
            "payload": payload}
    return ("%d-0" % sequence, {"operation": operation, "sequence": str(sequence),
                                "event_data": json.dumps(data)})


def expected(*pairs):
    return {("n%d.example.com" % n, "k"): project for n, project in pairs}


class StreamCheckTests(TestCase):
    def check(self, streams, counters, want):
        return StreamCheck(streams, counters, want)

    def test_cleanStreams(self):
        check = self.check({A: [entry(1), entry(2)], B: [entry(1, dnsName="n3.example.com")]},
                           {A: 2, B: 1}, expected((1, A), (2, A), (3, B)))
        self.assertEqual((check.lost, check.duplicated, check.sequenceProblems,
                          check.wrongStream, check.unexpected), ([], 0, [], 0, 0))
        tally = Tally("t")
        check.report(tally)
        self.assertTrue(tally.passed)

    def test_gapRepeatAndCounterAhead(self):
        check = self.check({A: [entry(1), entry(3), entry(3)]}, {A: 4},
                           expected((1, A), (3, A)))
        self.assertEqual(check.sequenceProblems, [
            "project-a: entry 3-0 has sequence 3 after 1",
            "project-a: entry 3-0 has sequence 3 after 3",
            "project-a: counter at 4, last entry has 3"])

    def test_eventDataDisagreesWithTheEntry(self):
        check = self.check({A: [entry(1, claimed=7)]}, {A: 1}, expected((1, A)))
        self.assertEqual(len(check.sequenceProblems), 1)
        self.assertIn("says sequence 7 in event_data", check.sequenceProblems[0])

    def test_lostDuplicatedMisplacedAndUnknown(self):
        streams = {A: [entry(1), entry(2, dnsName="n1.example.com"), entry(3)],
                   B: [entry(1, dnsName="n9.example.com"), entry(2, dnsName="n5.example.com")]}
        check = self.check(streams, {A: 3, B: 2}, expected((1, A), (3, B), (4, A), (5, B)))
        self.assertEqual(check.lost, [("n4.example.com", "k")])
        self.assertEqual(check.duplicated, 1)
        self.assertEqual((check.wrongStream, check.unexpected), (1, 1))
        tally = Tally("t")
        check.report(tally)
        self.assertEqual([ok for _, ok, _ in tally.checks], [False, False, False, True])

    def test_otherOperationsCountForTheSequenceOnly(self):
        check = self.check({A: [entry(1), entry(2, operation="status")]}, {A: 2},
                           expected((1, A)))
        self.assertEqual((check.sequenceProblems, check.duplicated, dict(check.operations)),
                         ([], 0, {"present": 1, "status": 1}))


class LogProblemsTests(TestCase):
    def test_errorsTracebacksAndForeignLinesOnly(self):
        path = os.path.join(tempDir(self), "daemon.log")
        lines = [{"level": "info", "msg": "POST 201"},
                 {"level": "warn", "msg": "cache challenges: WATCH failed; retrying"},
                 {"level": "error", "msg": "boom"},
                 {"level": "info", "msg": "x", "traceback": "Traceback ..."},
                 {"level": "critical", "msg": "Unhandled error in Deferred:"}]
        with open(path, "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
            f.write("Traceback (most recent call last):\n\n")
        problems = logProblems(path)
        self.assertEqual(len(problems), 4)
        self.assertEqual(problems[-1], "Traceback (most recent call last):")
