"""The progress service: the Challenge follower and the Certificate watcher together."""
from twisted.application import service

from kibaship_dns01.progress.certificates import CertificateWatcher
from kibaship_dns01.progress.challenges import MAX_REMINDERS, ChallengeFollower
from kibaship_dns01.progress.targets import Notes, TargetBook

#: how long marks and progress idempotency records live: longer than an ACME
#: authorization stays pending (Let's Encrypt: 7 days), see docs/events.md
DEFAULT_WINDOW = 8 * 86400.0


class ProgressService(service.MultiService):
    """Follows Challenges (through the resolver's cache) and Kibaship Certificates.

    :param resolver: the running :class:`~kibaship_dns01.resolve.ChallengeResolver`.
    :param targets: the solver's ``TargetFactory``.
    :param defaults: :class:`~kibaship_dns01.config.Defaults` (the ``--valkey-*`` flags).
    :param seenConfigs: the :class:`~kibaship_dns01.config.SeenIssuerConfigs` the
        solver fills.
    """

    name = "progress"

    def __init__(self, client, resolver, publisher, targets, clock, defaults, *, seenConfigs,
                 clusterResourceNamespace="cert-manager", window=DEFAULT_WINDOW,
                 refreshInterval=0.0, maxReminders=MAX_REMINDERS, checker=None):
        super().__init__()
        self.book = TargetBook(defaults.valkeySettings())
        self.notes = Notes()
        self.follower = ChallengeFollower(
            resolver, publisher, targets, clock, self.book, self.notes, defaults=defaults,
            seenConfigs=seenConfigs,
            clusterResourceNamespace=clusterResourceNamespace, window=window,
            refreshInterval=refreshInterval, maxReminders=maxReminders, checker=checker)
        self.certificates = CertificateWatcher(client, publisher, targets, clock, self.book,
                                               self.notes, window, self.follower,
                                               startAfter=resolver.whenReady)
        self.certificates.setServiceParent(self)

    def startService(self):
        super().startService()
        self.follower.start()

    def stopService(self):
        self.follower.stop()
        return super().stopService()
