"""Which Valkey a Certificate's events go to, and saying things once.

A Certificate names no Valkey: its Challenges do, through the issuer's
``dns01.webhook.config``.  The Challenge follower tells :class:`TargetBook`
what it learnt for each Certificate; the Certificate watcher asks it.  A
Certificate this replica has not seen a Challenge of (it restarted after
cert-manager deleted them) gets the daemon's default Valkey (the
``--valkey-*`` flags): an event is only appended where a Present left its
mark, so the wrong guess appends nothing and the replica that saw the
Challenges appends it.
"""
import collections

from twisted.logger import Logger

log = Logger()

#: Certificates remembered (least recently learnt forgotten first)
MAX_CERTIFICATES = 20000


class TargetBook:
    """(namespace, name) of a Certificate -> the ``ValkeySettings`` of its issuer."""

    def __init__(self, default, maxEntries=MAX_CERTIFICATES):
        self.default = default
        self._max = maxEntries
        self._book = collections.OrderedDict()
        self._settings = {}  # one shared copy of each distinct settings value

    def learn(self, namespace, name, settings):
        settings = self._settings.setdefault(settings, settings)
        key = (namespace, name)
        self._book[key] = settings
        self._book.move_to_end(key)
        while len(self._book) > self._max:
            self._book.popitem(last=False)
        if len(self._settings) > self._max:
            self._settings = {s: s for s in self._book.values()}

    def settingsFor(self, namespace, name):
        """:return: ``(settings, learnt)``: the issuer's, or the default and ``False``."""
        settings = self._book.get((namespace, name))
        return (settings, True) if settings is not None else (self.default, False)

    def forget(self, namespace, name):
        self._book.pop((namespace, name), None)

    def __len__(self):
        return len(self._book)


class Notes:
    """Log a line once per subject (a Challenge or Certificate UID), bounded.

    "This Challenge belongs to another solver" is worth one line, not one
    per watch event.
    """

    def __init__(self, maxEntries=MAX_CERTIFICATES):
        self._max = maxEntries
        self._seen = collections.OrderedDict()

    def once(self, subject, topic, text, **fields):
        """Log ``text`` unless ``subject`` already had a line on ``topic``."""
        topics = self._seen.setdefault(subject, set())
        if topic in topics:
            return False
        topics.add(topic)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        log.info(text, log_kind="progress_skipped", topic=topic, **fields)
        return True

    def forget(self, subject):
        """The subject is gone (deleted): a new one may say the same again."""
        self._seen.pop(subject, None)
