"""Log observers: one JSON object per line for machines, text for humans.

Events come from ``twisted.logger``; structured fields passed as keyword
arguments (``challenge_id``, ``fqdn``, ``project_uuid`` ...) become JSON keys,
so log pipelines can filter on them without parsing messages.
"""
import json
import time

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            formatEvent, formatEventAsClassicLogText)
from twisted.logger import ILogObserver
from zope.interface import implementer

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "warning": LogLevel.warn, "error": LogLevel.error}

#: keys twisted.logger adds for its own bookkeeping; never copied into JSON
_INTERNAL = {"log_logger", "log_source", "log_io", "log_trace", "log_legacy", "log_text",
             "log_flattened", "log_format", "log_level", "log_namespace", "log_time",
             "log_failure", "log_system", "message", "isError", "format", "system", "time"}


def _jsonable(value):
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _message(event):
    """The event's message.  ``str.format_map`` renders the plain ``{name}`` and
    ``{name!r}`` formats every line here uses, several times faster than
    ``formatEvent``'s own formatter; anything it cannot render (a call in the
    format, a missing field) goes to ``formatEvent``, which says so in the text."""
    fmt = event.get("log_format")
    if fmt is not None:
        try:
            return fmt.format_map(event)
        except Exception:
            pass
    return formatEvent(event)


def eventAsJSON(event):
    """The JSON line for one event (without the newline)."""
    level = event.get("log_level")
    out = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.get("log_time", time.time())))
        + f".{int((event.get('log_time', 0) % 1) * 1000):03d}Z",
        "level": level.name if level is not None else "info",
        "logger": event.get("log_namespace", ""),
        "msg": _message(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        out["error"] = failure.getErrorMessage()
        out["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key not in _INTERNAL and not key.startswith("_") and key not in out:
            out[key] = _jsonable(value)
    return json.dumps(out, separators=(",", ":"))


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes :func:`eventAsJSON` lines to a text stream."""

    def __init__(self, stream):
        self._stream = stream

    def __call__(self, event):
        self._stream.write(eventAsJSON(event) + "\n")
        self._stream.flush()


@implementer(ILogObserver)
class TextObserver:
    """Classic ``twistd``-style text lines with the traceback of failures."""

    def __init__(self, stream):
        self._stream = stream

    def __call__(self, event):
        text = formatEventAsClassicLogText(event)
        if text:
            self._stream.write(text)
            self._stream.flush()


def buildObserver(stream, fmt="json", level="info"):
    """An observer writing ``fmt`` (``json`` or ``text``) at ``level`` and above."""
    inner = JSONLinesObserver(stream) if fmt == "json" else TextObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    return FilteringLogObserver(inner, [predicate])


class ThrottledLog:
    """A warning that can happen thousands of times a second (a flood, an outage).

    Logged the first time, then at most once every ``interval`` seconds with how
    many times it happened since the last line (field ``countField``), so a flood
    of connections, queries or failures cannot flood the log as well.  ``fields``
    (``log_kind`` ...) go on every line; :meth:`report` adds the latest details.
    """

    def __init__(self, logger, clock, format, interval=10.0, countField="count", **fields):
        self._logger = logger
        self._clock = clock
        self._format = format
        self.interval = interval
        self._countField = countField
        self._fields = fields
        self._count = 0
        self._last = None

    def report(self, **details):
        """Count one occurrence; log it (with the count) when the interval allows.
        :return: whether a line was logged."""
        self._count += 1
        now = self._clock.seconds()
        if self._last is not None and now - self._last < self.interval:
            return False
        fields = dict(self._fields, interval=self.interval, **details)
        fields[self._countField] = self._count
        self._logger.warn(self._format, **fields)
        self._count, self._last = 0, now
        return True
