"""The identity headers of one request (``X-Remote-*``), read in one pass.

Which headers carry identity comes from the authentication ConfigMap
(``requestheader-username-headers`` and friends) plus kube-apiserver's
defaults, which are stripped even before the ConfigMap is loaded.
:class:`HeaderNames` turns one configuration into lower-cased byte names
once; :class:`IdentityHeaders` walks a request's headers once, keeps only
the identity ones (decoded), answers the authenticator's questions from
them, and removes them from the request: read only when the front-proxy
certificate verified, and never left behind for later code to trust.
"""
import functools
import re
import urllib.parse

DEFAULT_IDENTITY_HEADERS = ("X-Remote-User", "X-Remote-Uid", "X-Remote-Group")
DEFAULT_EXTRA_PREFIXES = ("X-Remote-Extra-",)

_MALFORMED_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@functools.lru_cache(maxsize=1024)
def unescapeExtraKey(key):
    """Go's ``url.PathUnescape``; a malformed key is kept as it came."""
    if _MALFORMED_ESCAPE.search(key):
        return key
    return urllib.parse.unquote(key, errors="replace")


def _lower(names):
    return tuple(name.lower().encode("latin-1") for name in names)


class HeaderNames:
    """One configuration's identity header names, lower-cased bytes."""

    def __init__(self, config):
        self.user = _lower(config.usernameHeaders) if config else ()
        self.uid = _lower(config.uidHeaders) if config else ()
        self.group = _lower(config.groupHeaders) if config else ()
        #: prefixes whose headers make the user's extra (the configured ones only)
        self.extra = _lower(config.extraHeaderPrefixes) if config else ()
        identity = DEFAULT_IDENTITY_HEADERS + (config.identityHeaders() if config else ())
        self.identity = frozenset(_lower(identity))
        self.prefixes = _lower(DEFAULT_EXTRA_PREFIXES) + self.extra


_last = [None, HeaderNames(None)]


def headerNames(config):
    """The :class:`HeaderNames` of ``config``, computed once per configuration (the
    configuration changes when the ConfigMap does; by identity, not by value, because
    hashing its certificates would cost more than the names)."""
    if config is not _last[0]:
        _last[:] = [config, HeaderNames(config)]
    return _last[1]


def _decode(raw):
    return raw.decode("utf-8", "replace")


class IdentityHeaders:
    """The identity headers of ``request`` under ``names``, lower-cased, decoded."""

    def __init__(self, request, names):
        self._names = names
        self._found = {}
        for rawName, values in request.requestHeaders.getAllRawHeaders():
            name = rawName.lower()
            if name in names.identity or name.startswith(names.prefixes):
                self._found[name] = [_decode(v) for v in values]

    def first(self, names):
        """The first non-empty value among ``names``, in order (``headerValue`` in Go)."""
        for name in names:
            values = self._found.get(name)
            if values and values[0]:
                return values[0]
        return ""

    def every(self, names):
        """Every non-empty value of every header in ``names`` (group headers)."""
        return [v for name in names for v in self._found.get(name, ()) if v]

    def username(self):
        return self.first(self._names.user)

    def uid(self):
        return self.first(self._names.uid)

    def groups(self):
        return tuple(self.every(self._names.group))

    def extra(self):
        """The user's extra from ``<prefix><key>`` headers: key lower-cased, then
        unescaped; values keep their order, prefix by prefix (``newExtra`` in Go)."""
        extra = {}
        for prefix in self._names.extra:
            for name, values in self._found.items():
                if name.startswith(prefix):
                    key = unescapeExtraKey(_decode(name[len(prefix):]))
                    extra.setdefault(key, []).extend(values)
        return tuple(sorted((k, tuple(v)) for k, v in extra.items()))

    def strip(self, request):
        """Remove every identity header this request carried."""
        for name in self._found:
            request.requestHeaders.removeHeader(name)
