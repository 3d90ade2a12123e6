"""Progress events: follow each challenge to the end (issue 13).

Between ``present`` and ``cleanup`` the frontend used to be blind.  This
package watches what cert-manager writes and appends, to the same project
stream, ``status`` events (a Challenge's state changed, or its reason moved
to another :mod:`~kibaship_dns01.progress.phases` phase) and, for Kibaship
Certificates issued through this solver's Challenges, ``issued`` and
``failed``.

Modules, in the order data flows:

* :mod:`.phases` - cert-manager's ``state`` + ``reason`` -> a phase word;
* :mod:`.jobs` - per-object work queue: latest wins, bounded concurrency and retries;
* :mod:`.challenges` - the Challenge follower (``status``);
* :mod:`.certificates` - the Certificate watcher (``issued``/``failed``);
* :mod:`.service` - the service that owns them.

Every replica runs all of it; the idempotent append makes each transition
land once (see ``docs/events.md``, "Progress events").
"""
