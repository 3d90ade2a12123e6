"""Go-style durations (``5s``, ``1m30s``, ``250ms``, ``24h``).

Kubernetes users write durations the Go way in flags and issuer configs, so
both parse them with this one function.
"""
import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parseDuration(text):
    """Seconds (float) for a Go duration string; ``ValueError`` says what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string such as \"5s\", not {text!r}")
    s = text.strip()
    if s in ("0", ""):
        if s == "":
            raise ValueError("duration is empty; use a value such as \"5s\"")
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}; use a number with a unit "
                             f"(ns, us, ms, s, m, h), e.g. \"5s\" or \"1m30s\"")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def formatDuration(seconds):
    """A compact Go-style rendering, for messages and ``--help`` defaults."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"
