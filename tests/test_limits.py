"""The open-file limit is raised to what --max-connections needs (issue 12)."""
import resource

from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.limits import RESERVE, ensureOpenFiles
from tests.support import LogCapture


class Limits:
    """``getrlimit``/``setrlimit`` for RLIMIT_NOFILE, in memory."""

    def __init__(self, soft, hard, refuse=False):
        self.soft, self.hard, self.refuse = soft, hard, refuse

    def get(self, which):
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which, limits):
        if self.refuse:
            raise ValueError("not allowed")
        self.soft, self.hard = limits


class OpenFileLimitTests(SynchronousTestCase):
    def setUp(self):
        self.logs = LogCapture(self)

    def ensure(self, limits, maxConnections=2048):
        return ensureOpenFiles(maxConnections, limits.get, limits.set)

    def test_raisedFromTheRuntimesDefault(self):
        """containerd 2.0: 1024 soft, 524288 hard; the soft limit goes to what is needed."""
        limits = Limits(1024, 524288)
        self.assertEqual(self.ensure(limits), 2048 + RESERVE)
        self.assertEqual((limits.soft, limits.hard), (2048 + RESERVE, 524288))
        self.assertEqual(self.logs.ofKind("file_limit"), [])

    def test_neverLowered(self):
        limits = Limits(1048576, 1048576)
        self.assertEqual(self.ensure(limits), 1048576)
        self.assertEqual(limits.soft, 1048576)

    def test_aHardLimitTooLowIsNamed(self):
        limits = Limits(1024, 2000)
        self.assertEqual(self.ensure(limits), 2000, "as far as the hard limit allows")
        [warning] = self.logs.ofKind("file_limit")
        self.assertEqual((warning["soft"], warning["wanted"]), (2000, 2048 + RESERVE))

    def test_aRefusalIsLoggedNotRaised(self):
        limits = Limits(1024, 524288, refuse=True)
        self.assertEqual(self.ensure(limits), 1024)
        self.assertEqual(len(self.logs.ofKind("file_limit")), 1)
