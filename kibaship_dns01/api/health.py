"""``/healthz``, ``/livez`` and ``/readyz``, answered as ``k8s.io/apiserver`` answers them.

Operators and the runbook use ``curl .../readyz?verbose`` and
``?exclude=<check>`` the way they would on any Kubernetes API server, so the
answers follow ``handleRootHealth`` in ``k8s.io/apiserver/pkg/server/healthz/healthz.go``
line for line:

- every check, in order: ``[+]<name> ok``, ``[-]<name> failed: reason withheld``
  (the endpoint needs no authentication, so the reason stays in the logs), or
  ``[+]<name> excluded: ok`` when ``?exclude=<name>`` (repeatable) names it;
- exclusions that name no check: ``warn: some health checks cannot be excluded:
  no matches for "a","b"`` (sorted, quoted);
- a failing check: HTTP 500 and every line, then ``<endpoint> check failed``
  (whether or not ``verbose`` was asked: Go's handler is always verbose on failure);
- all passing: ``ok``, or with ``?verbose`` (any value, or none) the lines and
  ``<endpoint> check passed``;
- one check, ``/<endpoint>/<check>`` (as ``InstallPathHandler`` adds a path per
  check): ``ok``, or HTTP 500 ``internal server error: reason withheld``.  Unlike the
  three root paths these are not always allowed: they are authenticated and
  authorized like any other non-resource path (``get`` on ``/readyz/<check>``), as in
  ``k8s.io/apiserver``, whose always-allow list names the three paths exactly.

The query is read from the raw request URI: Twisted's parser drops a parameter
without ``=``, and ``?verbose`` has none (Go's ``url.ParseQuery`` keeps it).
"""
import functools
import urllib.parse

import attr

_CONTENT_TYPE = b"text/plain; charset=utf-8"


@attr.s(frozen=True, slots=True)
class _Ping:
    """k8s.io/apiserver's ``ping`` check: the server answers, so it passes."""

    name = "ping"

    def isReady(self):
        return True


PING = _Ping()


def queryOf(uri):
    """The parameters of a raw request URI as Go's ``url.ParseQuery`` reads them: a
    parameter without ``=`` is kept with an empty value."""
    _, _, query = uri.partition(b"?")
    return urllib.parse.parse_qs(query.decode("utf-8", "replace"), keep_blank_values=True)


def _quoted(names):
    return ",".join('"%s"' % name.replace("\\", "\\\\").replace('"', '\\"') for name in names)


@attr.s(frozen=True)
class HealthEndpoint:
    """One of the three endpoints: ``name`` (``readyz``) over ``checks``, each with a
    ``name`` and ``isReady()`` (:class:`~kibaship_dns01.interfaces.IReadiness`)."""

    name = attr.ib()
    checks = attr.ib(converter=tuple)

    def subPaths(self):
        """``{"/<endpoint>/<check>": render}`` for each check."""
        return {f"/{self.name}/{check.name}": functools.partial(_renderOne, check)
                for check in self.checks}

    def render(self, request):
        """Answer ``request`` (status and headers set); return the body."""
        query = queryOf(request.uri)
        excluded = set(query.get("exclude", ()))
        lines, failed = [], False
        for check in self.checks:
            if check.name in excluded:
                excluded.discard(check.name)
                lines.append(f"[+]{check.name} excluded: ok")
            elif check.isReady():
                lines.append(f"[+]{check.name} ok")
            else:
                failed = True
                lines.append(f"[-]{check.name} failed: reason withheld")
        if excluded:
            lines.append("warn: some health checks cannot be excluded: no matches for "
                         + _quoted(sorted(excluded)))
        _plainText(request)
        if failed:
            request.setResponseCode(500)
        elif "verbose" not in query:
            return b"ok"
        verdict = "failed" if failed else "passed"
        return "".join(f"{line}\n" for line in [*lines, f"{self.name} check {verdict}"]).encode()


def _plainText(request):
    request.setHeader(b"content-type", _CONTENT_TYPE)
    request.setHeader(b"x-content-type-options", b"nosniff")


def _renderOne(check, request):
    """``/<endpoint>/<check>``: Go's ``adaptCheckToHandler``."""
    _plainText(request)
    if check.isReady():
        return b"ok"
    request.setResponseCode(500)
    return b"internal server error: reason withheld\n"
