"""Secret values for Valkey connections, read through the Kubernetes layer.

Values are cached briefly (a Present burst for many challenges reads a Secret
once) and dropped when Valkey rejects them, so a rotated password is picked up
at the next connection.  While the API server cannot be asked (unreachable,
5xx, 429, no answer in time) a value read less than ``staleTTL`` ago stands
in: Valkey itself says when a password is no longer valid, and Presents keep
working through an API server restart (found by ``bench/drills/apifaults.py``).  No value is ever logged or put in a message: errors
name the Secret and the key, never the content.
"""
import base64

from twisted.internet import defer

from kibaship_dns01.challenge import SolverError
from kibaship_dns01.kube.errors import APITimeout, Forbidden, KubeError, NotFound, Unavailable

DEFAULT_TTL = 30.0
#: one Secret GET may take this long before the request fails with a clear message
DEFAULT_TIMEOUT = 10.0
#: how old a value may be to stand in while the API server cannot be asked
DEFAULT_STALE_TTL = 600.0


class SecretError(SolverError):
    """A Secret needed for this challenge is missing, unreadable or malformed."""

    def __init__(self, message, transient=False):
        super().__init__(message, reason="secret")
        self.transient = transient


def _secretPath(ref):
    return f"/api/v1/namespaces/{ref.namespace}/secrets/{ref.name}"


def _pickKey(ref, data):
    if ref.key is not None:
        if ref.key not in data:
            keys = ", ".join(sorted(data)) or "none"
            raise SecretError(f"{ref.describe()} does not exist in the Secret (its keys: {keys});"
                              f" fix the key in the issuer config or add it to the Secret")
        return data[ref.key]
    if len(data) != 1:
        raise SecretError(
            f"Secret {ref.namespace}/{ref.name} must hold exactly one key (the Valkey password) "
            f"but holds {len(data)}; name the key with passwordSecretRef.key or fix the Secret")
    return next(iter(data.values()))


def _decode(ref, encoded):
    try:
        return base64.b64decode(encoded, validate=True)
    except (ValueError, TypeError):
        raise SecretError(f"{ref.describe()} is not valid base64 data")


class SecretReader:
    """Reads (and briefly caches) single Secret values via an ``IKubernetesClient``."""

    def __init__(self, client, clock, ttl=DEFAULT_TTL, timeout=DEFAULT_TIMEOUT,
                 staleTTL=DEFAULT_STALE_TTL):
        self._client = client
        self._clock = clock
        self._ttl = ttl
        self._timeout = timeout
        self._staleTTL = staleTTL
        self._cache = {}  # SecretRef -> (expires, bytes); expired entries pruned on read
        self._last = {}  # SecretRef -> (read at, bytes): stands in while the API is away

    def invalidate(self, ref):
        """Forget ``ref``'s value, e.g. after Valkey rejected it."""
        self._cache.pop(ref, None)
        self._last.pop(ref, None)

    def _standIn(self, ref, error):
        """The last value of ``ref`` if recent enough, else raise ``error``."""
        readAt, value = self._last.get(ref, (None, None))
        if readAt is None or self._clock.seconds() - readAt >= self._staleTTL:
            raise error
        return value

    @defer.inlineCallbacks
    def read(self, ref):
        """The value (``bytes``) of ``ref``; fails with :class:`SecretError`."""
        now = self._clock.seconds()
        self._prune(now)
        cached = self._cache.get(ref)
        if cached is not None:
            return cached[1]
        try:
            secret = yield self._client.get(_secretPath(ref)).addTimeout(
                self._timeout, self._clock)
        except defer.TimeoutError:
            return self._standIn(ref, SecretError(
                f"reading Secret {ref.namespace}/{ref.name} took longer than "
                f"{self._timeout:g}s; the API server is slow or unreachable", transient=True))
        except NotFound:
            raise SecretError(f"Secret {ref.namespace}/{ref.name} not found; create it in "
                              f"namespace {ref.namespace} or fix the issuer config")
        except Forbidden:
            raise SecretError(f"kibaship-dns01 is not allowed to read Secret "
                              f"{ref.namespace}/{ref.name}; grant its ServiceAccount get on "
                              f"secrets in namespace {ref.namespace}")
        except (Unavailable, APITimeout) as e:
            return self._standIn(ref, SecretError(
                f"could not read Secret {ref.namespace}/{ref.name}: {e}", transient=True))
        except KubeError as e:
            raise SecretError(f"could not read Secret {ref.namespace}/{ref.name}: {e}")
        value = _decode(ref, _pickKey(ref, secret.get("data") or {}))
        self._cache[ref] = (self._clock.seconds() + self._ttl, value)
        self._last[ref] = (self._clock.seconds(), value)
        return value

    def _prune(self, now):
        for ref in [r for r, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[ref]
        for ref in [r for r, (readAt, _) in self._last.items() if now - readAt >= self._staleTTL]:
            del self._last[ref]

    def readText(self, ref):
        """The value as text (a password)."""
        def text(value):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise SecretError(f"{ref.describe()} is not UTF-8 text")
        return self.read(ref).addCallback(text)
