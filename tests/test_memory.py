"""Freed heap memory goes back to the operating system (issue 12's fuzz drill)."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from kibaship_dns01.memory import MemoryTrimmer, libcTrim


class MemoryTrimmerTests(SynchronousTestCase):
    def test_trimsEveryIntervalUntilStopped(self):
        clock, calls = Clock(), []
        trimmer = MemoryTrimmer(clock, interval=30, trim=calls.append)
        trimmer.startService()
        clock.advance(29)
        self.assertEqual(calls, [], "not at start-up: nothing to give back yet")
        clock.advance(1)
        clock.advance(30)
        self.assertEqual(calls, [0, 0], "malloc_trim(0): keep no padding")
        trimmer.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_nothingToDoWithoutMallocTrim(self):
        clock = Clock()
        trimmer = MemoryTrimmer(clock)
        trimmer.trim = None  # what libcTrim() finds on a C library without it (musl, macOS)
        trimmer.startService()
        self.assertEqual(clock.getDelayedCalls(), [])
        trimmer.stopService()

    def test_glibcTrimIsCallable(self):
        trim = libcTrim()
        if trim is None:
            raise SkipTest("this C library has no malloc_trim")
        self.assertIn(trim(0), (0, 1))
