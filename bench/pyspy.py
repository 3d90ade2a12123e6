"""Profiling the daemon with py-spy during one scenario, and summarising it.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... N``,
root first), which flamegraph tools read; the summary counts, per function,
the samples where it was running itself (self) and where it was anywhere on
the stack (total), as a share of all samples.  ``--nonblocking`` samples
without pausing the daemon, so the profile costs the daemon almost nothing
(py-spy itself needs CPU, on the other core).
"""
import collections
import os
import re
import shutil
import signal

from twisted.internet import defer

from kibaship_dns01.testing.daemon import ChildOutput


def findPySpy():
    path = shutil.which("py-spy")
    if path is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return path


class Recording:
    """``py-spy record`` attached to ``pid`` until :meth:`stop`."""

    def __init__(self, reactor, pid, out, rate=200):
        self.reactor, self.out = reactor, out
        self.proto = ChildOutput()
        argv = [findPySpy(), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                "--function", "--nonblocking", "--output", out]
        self.transport = reactor.spawnProcess(self.proto, argv[0], argv, env=dict(os.environ))

    async def waitAttached(self, timeout=10.0):
        """Until py-spy says it is sampling (its first line), bounded."""
        await self.proto.firstLine().addTimeout(timeout, self.reactor)

    async def stop(self, timeout=30.0):
        """SIGINT (py-spy then writes the file); :return: py-spy's output."""
        if not self.proto.ended.called:
            self.transport.signalProcess(signal.SIGINT)
        try:
            await self.proto.ended.addTimeout(timeout, self.reactor)
        except defer.TimeoutError:
            self.transport.signalProcess(signal.SIGKILL)
            raise
        return self.proto.output.decode(errors="replace")


_PREFIXES = re.compile(r"^.*(?:/site-packages/|/lib/python3\.\d+/|/(?=kibaship_dns01/))")


def _shorten(frame):
    """``fn (/long/path/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py:12)``."""
    name, sep, where = frame.partition(" (")
    return name + sep + _PREFIXES.sub("", where, count=1)


def summarise(path, top=25):
    """``(samples, [(frame, self), ...], [(frame, total), ...])`` from a raw profile."""
    selfCounts, totalCounts, samples = collections.Counter(), collections.Counter(), 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = [_shorten(fr) for fr in stack.split(";") if " (" in fr]
            if not frames:
                continue
            n = int(count)
            samples += n
            selfCounts[frames[-1]] += n
            for frame in set(frames):
                totalCounts[frame] += n
    return samples, selfCounts.most_common(top), totalCounts.most_common(top)


#: frames on (nearly) every stack, such as twistd's and the reactor's loop, say nothing
LOOP_SHARE = 0.7


def formatSummary(path, top=25, title=""):
    samples, selfTop, allTotals = summarise(path, 100000)
    loop = [frame for frame, n in allTotals if n > LOOP_SHARE * samples]
    totalTop = [(frame, n) for frame, n in allTotals if frame not in loop][:top]
    product = [(frame, n) for frame, n in allTotals if "(kibaship_dns01/" in frame][:top]
    lines = [title, "%d samples (CPU only: idle waits in epoll are not sampled)" % samples]
    if loop:
        lines.append("by total time leaves out the %d frames on more than %d%% of the stacks"
                     " (twistd, the reactor loop)" % (len(loop), 100 * LOOP_SHARE))
    for label, rows in (("by self time", selfTop[:top]), ("by total time", totalTop),
                        ("of kibaship_dns01 by total time", product)):
        lines.append("")
        lines.append("top %d functions %s:" % (len(rows), label))
        for frame, n in rows:
            lines.append("  %5.1f%%  %s" % (100.0 * n / max(1, samples), frame))
    return "\n".join(lines) + "\n"
