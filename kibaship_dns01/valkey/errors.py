"""The failures the Valkey publisher reports.

Every message names the address (and user or Secret where relevant) and says
what to fix, because the solver shows it to the user in
``kubectl describe challenge``.  ``kind`` is the label counted into
``VALKEY_ERRORS``.  Credentials never appear in a message.
"""


class ValkeyError(Exception):
    """Base class: appending to or checking a Valkey cluster failed."""

    kind = "error"

    def __init__(self, message):
        super().__init__(message)
        self.message = message

    def __str__(self):
        return self.message


class ValkeyUnavailable(ValkeyError):
    """The cluster (or the node owning the key) could not be reached or did not
    answer within the bound, or kept refusing (``CLUSTERDOWN``, ``TRYAGAIN``)."""

    kind = "unavailable"


class ValkeyAuthError(ValkeyError):
    """The server rejected the username/password (``WRONGPASS``, ``NOAUTH``),
    even after re-reading the credentials, or the user lacks a permission
    (``NOPERM``)."""

    kind = "auth"


class ValkeyTLSError(ValkeyError):
    """The TLS handshake failed, typically certificate verification."""

    kind = "tls"


class ValkeyDurabilityError(ValkeyError):
    """``WAIT`` confirmed fewer replicas than ``minReplicas`` within the bound.

    The entry may exist on the primary; retrying the append with the same
    idempotency key is safe and does not duplicate it.
    """

    kind = "durability"


class ValkeyCommandError(ValkeyError):
    """The server answered with an error that retrying cannot fix
    (a script error, ``OOM``, a wrong type ...)."""

    kind = "command"


class ConnectionLost(ValkeyError):
    """Internal: one connection failed; the cluster client retries elsewhere."""

    kind = "connection"
