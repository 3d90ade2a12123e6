"""The zope.interface seams of the daemon.

Each step of the request flow (authenticate -> authorize -> decode -> resolve
project -> build event -> publish -> respond) that talks to the outside world
sits behind one of these, so tests substitute the verified fakes in
``kibaship_dns01.testing`` and the fakes cannot drift from the real thing
(``verifyObject`` checks both).
"""
from zope.interface import Attribute, Interface


class ISolver(Interface):
    """What cert-manager's two actions do (SPEC §2)."""

    def present(request):
        """Handle a ``Present`` :class:`~kibaship_dns01.challenge.ChallengeRequest`.

        :return: a Deferred firing ``None`` on success, or failing with
            :class:`~kibaship_dns01.challenge.SolverError` whose message is shown
            to the user.  Any other failure is reported as an internal error.
        """

    def cleanUp(request):
        """Handle a ``CleanUp`` request; same contract as :meth:`present`."""


class IKubernetesClient(Interface):
    """Non-blocking access to the Kubernetes API server (JSON over HTTPS).

    Paths are absolute API paths such as ``/api/v1/namespaces/x/secrets/y``.
    Failures are the typed exceptions of ``kibaship_dns01.kube.errors``.
    """

    def get(path, params=None):
        """GET one object. :return: Deferred firing the decoded JSON object."""

    def list(path, params=None, pageItems=None):
        """LIST a collection, following ``continue`` tokens.

        :param pageItems: ``fn(page) -> items``, called on each page (a List
            object) as it arrives; its result is what the merged List keeps
            of that page.  A cache passes its trim, so a large LIST never
            holds more than one page of whole objects (the high-water mark
            of a restart would otherwise stay in the process's memory).
        :return: Deferred firing a List object whose ``items`` hold every page
            and whose ``metadata.resourceVersion`` is that of the first page.
        """

    def listPages(path, params, onPage):
        """LIST a collection page by page, for a consumer that must not hold it all.

        ``onPage(page, first)`` gets each page (a List object) as it arrives;
        the next page is asked for once a Deferred it returns has fired.  A
        continue token that expired (410) restarts the LIST from its first
        page (a bounded number of times): ``first`` is true for each first
        page, and what the consumer took from an abandoned pass is stale.

        :return: Deferred firing the List's ``metadata`` (the resourceVersion
            of the last pass's first page).
        """

    def watch(path, resourceVersion, onEvent, params=None):
        """WATCH a collection from ``resourceVersion``.

        ``onEvent(type, object)`` is called for every event line (including
        ``BOOKMARK`` and ``ERROR``).

        :return: a cancellable Deferred firing ``None`` when the server ends
            the stream.
        """

    def post(path, body):
        """POST ``body`` (a dict). :return: Deferred firing the decoded response."""


class IStreamPublisher(Interface):
    """Appends events to a project's stream on a Valkey cluster (SPEC §7, §9)."""

    def append(target, projectUUID, fields, idempotencyKey):
        """Append ``fields`` to ``{project:<projectUUID>}:events`` exactly once.

        ``target`` says which cluster and how to reach it.  A second call with
        the same ``idempotencyKey`` within the idempotency window appends
        nothing and returns the first entry's id.

        :return: Deferred firing the stream entry id (``str``).
        """

    def appendEvent(target, projectUUID, fields, idempotencyKey, sequenceField=None, mark=None,
                    window=None):
        """Like :meth:`append`, firing an ``AppendResult`` (entry id, sequence,
        whether it was a duplicate or skipped).  ``sequenceField`` names the
        field whose value carries the sequence placeholder the server
        replaces; ``mark`` (a ``MarkOp``) sets or requires a field of the
        Certificate's mark hash in the same atomic step; ``window`` overrides
        the target's idempotency window (seconds)."""

    def confirm(target, projectUUID, idempotencyKey):
        """Whether ``idempotencyKey`` is still recorded (a retry the caller saw appended):
        a Deferred firing the first append's ``AppendResult`` (``duplicate=True``), or
        ``None`` when it is not recorded and the caller must append in full."""

    def readFields(target, projectUUID, key, fields):
        """Read ``fields`` of the hash ``key`` (a key of the project's hash tag).

        :return: Deferred firing a list of ``str`` or ``None``, one per field.
        """

    def check(target):
        """A cheap health check of ``target``. :return: Deferred firing ``None``."""


class IAuthenticator(Interface):
    """Who is calling (SPEC §5, delegated authentication)."""

    def authenticate(request):
        """Identify the caller of a ``twisted.web`` request.

        :return: Deferred firing a :class:`~kibaship_dns01.auth.types.UserInfo`;
            a credential that was presented but fails verification fails the
            Deferred with :class:`~kibaship_dns01.auth.types.Unauthenticated`.
        """


class IAuthorizer(Interface):
    """May the caller do this (SPEC §5, delegated authorization)."""

    def authorize(attributes):
        """Decide on :class:`~kibaship_dns01.auth.types.RequestAttributes`.

        :return: Deferred firing a :class:`~kibaship_dns01.auth.types.Decision`.
            Never allows on error.
        """


class IProjectResolver(Interface):
    """Turns a challenge request into the Kibaship project behind it (SPEC §6)."""

    def resolve(request, defaultProjectUUID=None):
        """:return: Deferred firing a ``ProjectContext``; fails with
        ``ResolutionError`` whose message tells the operator what to fix."""


class IReadiness(Interface):
    """Something ``/readyz`` waits for (serving cert, auth ConfigMap, caches)."""

    name = Attribute("Short name shown in /readyz?verbose output.")

    def isReady():
        """:return: ``True`` once loaded and current."""


class IDelegationStore(Interface):
    """The challenge keys served at delegation labels (SPEC §13, issue 21).

    Every replica reads the same store, so a key added before a Present is
    answered is served by all of them.  Labels are those of
    :mod:`kibaship_dns01.delegation.names`; keys are the ACME key
    authorization digests cert-manager sends (43 base64url characters).
    """

    def add(label, key, ttl):
        """Serve ``key`` at ``label`` for ``ttl`` seconds from now (idempotent: adding
        a key again only renews its expiry). :return: Deferred firing ``None``
        once every replica would serve it."""

    def withdraw(label, key):
        """Stop serving ``key`` at ``label`` (idempotent). :return: Deferred firing ``None``."""

    def keys(label):
        """The keys now served at ``label``.

        :return: Deferred firing a sequence of ``str`` (empty: nothing served);
            it fails when the store cannot answer (the DNS responder then says
            SERVFAIL, never a wrong NXDOMAIN).
        """


class ICNAMEChecker(Interface):
    """Whether a user's ``_acme-challenge`` name already delegates (issue 21)."""

    def check(name, target):
        """Does ``name`` resolve, through the recursive resolvers, to a CNAME whose
        target is ``target`` (both without the trailing dot)?

        :return: Deferred firing ``True``, ``False``, or ``None`` when the resolvers
            did not answer in time; it never fails.
        """
