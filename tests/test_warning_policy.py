"""The suite's warning policy: a deprecated call fails its test, under both runners.

A one-test module that makes a deprecated call is run by trial and by pytest
(with this repository's ``pytest.ini``) in a child process; both must report
the test as failed because of the DeprecationWarning.
"""
import os
import sys
import textwrap

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support import tempDir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_MODULE = textwrap.dedent('''\
    import warnings

    import tests  # noqa: F401  (the suite's policy, as every test module gets it)
    from twisted.trial.unittest import TestCase


    class Deprecated(TestCase):
        def test_deprecatedCall(self):
            warnings.warn("an old call", {category})
''')


class WarningPolicyTests(TestCase):
    timeout = 120

    def module(self, category):
        directory = tempDir(self, "kibaship-warnings-")
        with open(os.path.join(directory, "test_policy_probe.py"), "w") as f:
            f.write(_MODULE.format(category=category))
        return directory

    async def runProbe(self, directory, *args):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([directory, REPO]))
        env.pop("PYTHONWARNINGS", None)
        out, err, code = await getProcessOutputAndValue(sys.executable, args, env=env,
                                                        path=directory, reactor=reactor)
        return (out + err).decode(errors="replace"), code

    def test_trialFailsADeprecatedCall(self):
        async def go():
            for category in ("DeprecationWarning", "PendingDeprecationWarning"):
                output, code = await self.runProbe(self.module(category), "-m", "twisted.trial",
                                              "test_policy_probe")
                self.assertNotEqual(code, 0, output)
                self.assertIn(f"{category}: an old call", output)
                self.assertIn("FAILED (errors=1", output)
        return defer.ensureDeferred(go())

    def test_pytestFailsADeprecatedCall(self):
        async def go():
            for category in ("DeprecationWarning", "PendingDeprecationWarning"):
                directory = self.module(category)
                output, code = await self.runProbe(
                    directory, "-m", "pytest", "-q", "-c", os.path.join(REPO, "pytest.ini"),
                    "--rootdir", directory, "test_policy_probe.py")
                self.assertNotEqual(code, 0, output)
                self.assertRegex(output, rf"\nE +{category}: an old call\n")
                self.assertIn("1 failed", output)
        return defer.ensureDeferred(go())

    def test_aModuleWithoutDeprecatedCallsPasses(self):
        """The probe itself is sound: without the warning it passes under both runners."""
        async def go():
            directory = self.module("DeprecationWarning")
            path = os.path.join(directory, "test_policy_probe.py")
            with open(path) as f:
                text = f.read().replace('warnings.warn("an old call", DeprecationWarning)',
                                        "pass")
            with open(path, "w") as f:
                f.write(text)
            output, code = await self.runProbe(directory, "-m", "twisted.trial", "test_policy_probe")
            self.assertEqual(code, 0, output)
            output, code = await self.runProbe(
                directory, "-m", "pytest", "-q", "-c", os.path.join(REPO, "pytest.ini"),
                "--rootdir", directory, "test_policy_probe.py")
            self.assertEqual(code, 0, output)
        return defer.ensureDeferred(go())
