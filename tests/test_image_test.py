"""The pieces of ``scripts/image-test`` that decide something, without root or podman.

CI runs the script itself (it builds and runs the image, as root); these tests prove its
checks fail on an image that breaks a rule, and that the build sees the machine's pip
settings without baking them in.
"""
import configparser
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support import tempDir
from tests.test_deploy import _loadScript

imageTest = _loadScript("image-test")


def touch(path, data=b""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def cleanImageTree(root):
    """The shape of a good image's root: a virtualenv with the compiled package and a
    plugin cache."""
    site = root / "opt" / "kibaship-dns01" / "lib" / "python3.11" / "site-packages"
    for module in ("kibaship_dns01/__init__.py", "kibaship_dns01/api/site.py"):
        path = touch(site / module)
        touch(path.parent / "__pycache__" / f"{path.stem}.cpython-311.pyc")
    touch(site / "twisted" / "plugins" / "dropin.cache")
    touch(root / "etc" / "passwd", b"kibaship:x:65532:65532::/nonexistent:/usr/sbin/nologin\n")
    return site


class ContentTests(SynchronousTestCase):
    def setUp(self):
        self.root = Path(tempDir(self))
        self.site = cleanImageTree(self.root)

    def test_cleanTreePasses(self):
        self.assertEqual(imageTest.contentProblems(self.root), [])

    def test_everyLeakNamed(self):
        touch(self.site / "pip" / "__init__.py")
        touch(self.site / "kibaship_dns01" / "testing" / "pki.py")
        touch(self.root / "etc" / "pip.conf")
        touch(self.root / "src" / "setup.py")
        touch(self.root / "srv" / "repo" / ".git" / "HEAD")
        touch(self.root / "home" / "x" / ".cache" / "pip" / "http" / "a")
        touch(self.site / "kibaship_dns01" / "late.py")
        (self.site / "twisted" / "plugins" / "dropin.cache").unlink()
        problems = "\n".join(imageTest.contentProblems(self.root))
        for expected in ("site-packages/pip must not ship",
                         "site-packages/kibaship_dns01/testing must not ship",
                         "/etc/pip.conf must not ship", "/src must not ship",
                         "/srv/repo/.git must not ship", "/home/x/.cache/pip must not ship",
                         "dropin.cache is missing", "not byte-compiled at build time: "
                         "kibaship_dns01/late.py"):
            self.assertIn(expected, problems)

    def test_noVirtualenvIsAFailure(self):
        e = self.assertRaises(imageTest.Failure, imageTest.contentProblems, Path(tempDir(self)))
        self.assertIn("expected one virtualenv with kibaship_dns01 under /opt", str(e))


class PluginProbeTests(SynchronousTestCase):
    def test_probeReportsAPluginCacheWrite(self):
        """A plugin directory without a fresh dropin.cache makes twisted write one: the
        probe the script runs in the image must see that attempt."""
        extra = Path(tempDir(self))
        touch(extra / "twisted" / "plugins" / "extra_plugin.py", b"")
        env = dict(os.environ, PYTHONPATH=str(extra))
        out = subprocess.run([sys.executable, "-c", imageTest._PROBE], capture_output=True,
                             text=True, env=env, cwd=str(extra), timeout=120, check=True).stdout
        found = imageTest.json.loads(out.strip().splitlines()[-1])
        self.assertIn(str(extra / "twisted" / "plugins" / "dropin.cache"), found["cacheWrites"])
        self.assertIn("kibaship-dns01", found["plugins"])
        self.assertEqual(found["importFailures"], {})


class PipSettingsTests(SynchronousTestCase):
    def test_parseConfigListEnvironmentWins(self):
        out = textwrap.dedent("""\
            :env:.cert='/env/ca.crt'
            :env:.default-timeout='180'
            global.cert='/etc/ssl/certs/ca-certificates.crt'
            global.extra-index-url='file:///opt/pypi/simple https://example.org/simple'
            install.no-compile='yes'
        """)
        self.assertEqual(imageTest.parsePipConfigList(out), {
            "global": {"cert": "/env/ca.crt", "default-timeout": "180",
                       "extra-index-url": "file:///opt/pypi/simple https://example.org/simple"},
            "install": {"no-compile": "yes"}})

    def test_buildHomeCopiesFilesAndMountsLocalIndexes(self):
        host = Path(tempDir(self))
        ca = touch(host / "ca.crt", b"CA")
        constraints = touch(host / "constraints.txt", b"torch<3\n")
        (host / "pypi" / "simple").mkdir(parents=True)
        (host / "wheels").mkdir()
        home = imageTest.BuildHome(Path(tempDir(self)) / "home").write({
            "global": {"cert": str(ca), "constraint": str(constraints),
                       "find-links": f"{host}/wheels {host}/missing",
                       "extra-index-url": f"file://{host}/pypi/simple https://example.org/s",
                       "timeout": "60"}})
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(home.config / "pip.conf")
        conf = dict(parser["global"])
        self.assertEqual(conf["find-links"], "/root/.pip-local/0")
        self.assertEqual(conf["extra-index-url"],
                         "file:///root/.pip-local/1/simple https://example.org/s")
        self.assertEqual(conf["timeout"], "60")
        self.assertEqual(home.volumes, [(str(host / "wheels"), "/root/.pip-local/0"),
                                        (str(host / "pypi"), "/root/.pip-local/1")])
        for key, data in (("cert", b"CA"), ("constraint", b"torch<3\n")):
            self.assertTrue(conf[key].startswith("/root/.config/pip/"), conf[key])
            self.assertEqual((home.directory / conf[key][len("/root/"):]).read_bytes(), data)
        # the mount points exist in the volume, so the build creates none in the image
        for _, inside in home.volumes:
            self.assertTrue((home.directory / inside[len("/root/"):]).is_dir())
        self.assertEqual(home.podmanArgs(), [
            "--volume", f"{home.directory}:/root",
            "--volume", f"{host / 'wheels'}:/root/.pip-local/0:ro",
            "--volume", f"{host / 'pypi'}:/root/.pip-local/1:ro"])

    def test_machineCABundleWhenPipHasNone(self):
        home = imageTest.BuildHome(Path(tempDir(self)) / "home").write({})
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(home.config / "pip.conf")
        copied = home.directory / parser["global"]["cert"][len("/root/"):]
        with open(imageTest.defaultCABundle(), "rb") as f:
            self.assertEqual(copied.read_bytes(), f.read())


class DeploymentRunTests(SynchronousTestCase):
    def test_readsHowTheDeploymentRunsTheContainer(self):
        d = imageTest.DeploymentRun()
        self.assertEqual((d.uid, d.gid, d.fsGroup), (65532, 65532, 65532))
        self.assertEqual(d.servingDir, "/var/run/kibaship-dns01/serving-cert")
        self.assertEqual(d.servingMode, 0o440)
        self.assertIn(f"--tls-cert-file={d.servingDir}/tls.crt", d.args)
        args = imageTest.daemonArgs(d, 1234, 5678)
        self.assertEqual(args[:len(d.args)], d.args)
        self.assertIn("--secure-port=1234", args[len(d.args):])

    def test_secretVolumeLaidOutAsTheKubeletDoes(self):
        if os.geteuid() != 0:
            raise SkipTest("giving the files to the fsGroup needs root (CI runs as root)")
        root = Path(tempDir(self))
        cleanImageTree(root)
        runner = imageTest.ImageRunner(root, {"Env": ["PATH=/opt/x/bin"]},
                                       imageTest.DeploymentRun(), Path(tempDir(self)))
        runner.addSecretVolume("/var/run/kibaship-dns01/serving-cert", {"tls.crt": b"C"}, 0o440)
        where = runner.files / "kibaship-dns01" / "serving-cert"
        self.assertEqual(os.readlink(where / "tls.crt"), "..data/tls.crt")
        self.assertEqual((where / "tls.crt").read_bytes(), b"C")
        stat = os.stat(where / "tls.crt")
        self.assertEqual((stat.st_mode & 0o777, stat.st_gid), (0o440, 65532))
        self.assertEqual(runner.home, "/nonexistent")
        command = runner.command(["twistd"], {"KUBERNETES_SERVICE_HOST": "127.0.0.1"})
        self.assertEqual(command[:2], ["unshare", "--mount"])
        tail = command[command.index("env"):]
        self.assertEqual(tail[:5], ["env", "-i", "PATH=/opt/x/bin", "HOME=/nonexistent",
                                    "KUBERNETES_SERVICE_HOST=127.0.0.1"])
        self.assertEqual(tail[-4:], ["--userspec=65532:65532", "--groups=65532",
                                     str(runner.root), "twistd"])
