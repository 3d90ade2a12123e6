"""Why a challenge's project could not be resolved: operator-facing errors."""

_MISSING_LABEL_HINT = "the Kibaship operator sets it on ApplicationDomain certificates"
_DEFAULT_HINT = ("for a platform certificate without Kibaship labels set defaultProjectUUID in the"
                 " issuer's webhook config")


class ResolutionError(Exception):
    """The project of a challenge could not be determined.

    :ivar message: operator-facing text: which object, what is wrong, what to fix.
    :ivar reason: short machine label, the ``reason`` of
        ``kibaship_dns01_resolution_failures_total``.
    :ivar gone: ``True`` when the objects needed are already deleted; a
        CleanUp may then finish without a project (see :class:`ChallengeGone`).
    :ivar transient: ``True`` when retrying later may succeed (API trouble).
    :ivar challenge: the matched Challenge as ``(namespace, name, uid)``, or ``None``.
    """

    gone = False
    transient = False

    def __init__(self, message, reason, challenge=None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.challenge = challenge

    def __str__(self):
        return self.message


class ChallengeGone(ResolutionError):
    """The Challenge or an object of its owner chain no longer exists.

    For Present this is a failure like any other (cert-manager retries); for
    CleanUp there is nothing left to resolve, and failing would only keep the
    Challenge's finalizer in place forever.
    """

    gone = True


class TransientResolutionError(ResolutionError):
    """The API server failed or was too slow; a retry may succeed."""

    transient = True
