"""The operator's delegation secret: what the labels are keyed with.

Read once at start-up from ``--delegation-secret-file`` (in a cluster, a
mounted Secret).  Trailing whitespace is not part of it, so a file written
with ``echo`` and one written with ``printf`` give the same labels: every
replica and every restart must derive exactly the same names.
"""

#: at least this many bytes: a label must not be computable without the secret
MIN_SECRET_BYTES = 32


class DelegationSecretError(ValueError):
    """The secret file cannot be used; the message says why and what to do."""


def loadSecret(path):
    """The secret in ``path`` (bytes, trailing whitespace removed)."""
    try:
        with open(path, "rb") as f:
            secret = f.read(1 << 16).rstrip(b" \t\r\n")
    except OSError as e:
        raise DelegationSecretError(f"{path} cannot be read: {e.strerror}")
    if len(secret) < MIN_SECRET_BYTES:
        raise DelegationSecretError(
            f"{path} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES} random bytes are "
            f"needed (e.g. openssl rand -hex 32 > {path})")
    return secret
