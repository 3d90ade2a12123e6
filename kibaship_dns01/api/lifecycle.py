"""Graceful shutdown of the API: stop being routed to, finish what was asked, then go.

A rolling update sends SIGTERM while cert-manager may be waiting for a
Present.  kube-apiserver's answer, which we follow:

1. ``/readyz`` fails at once (the ``shutdown`` condition), so the Service's
   endpoints drop the pod; responses from now on carry ``Connection: close``
   so kept-alive clients reconnect to another replica;
2. after ``--shutdown-delay`` (time for the endpoints to propagate) the
   listener stops accepting;
3. requests already in flight are answered: they finish normally, or, when
   ``--shutdown-grace-period`` runs out, their solver calls are cancelled and
   they are answered ``success: false`` with a message saying cert-manager
   will retry (it does: Present is retried until it succeeds);
4. whatever connection is still open is dropped and the other services stop.

:class:`Lifecycle` is the API's part of that: the readiness condition, the
count of requests in flight and the solver calls it may cancel.
"""
from twisted.internet import defer
from zope.interface import implementer

from kibaship_dns01.interfaces import IReadiness

DEFAULT_SHUTDOWN_DELAY = 0.0
DEFAULT_GRACE_PERIOD = 45.0
#: after cancelling, how long answers may take to be written before we stop waiting
CANCEL_SETTLE = 5.0
#: how often the solver deadlines are looked at
SWEEP_INTERVAL = 1.0

SHUTTING_DOWN = ("kibaship-dns01 is shutting down (rolling update or node drain) and could not "
                 "finish this {action} in time; cert-manager will retry it on another replica")


@implementer(IReadiness)
class Lifecycle:
    """See the module docstring."""

    name = "shutdown"

    def __init__(self, clock=None):
        self.stopping = False
        self._clock = clock
        self._inFlight = 0
        self._idle = []
        self._solving = {}  # solver call -> deadline (POSIX seconds) or None
        self._expired = set()
        self._sweep = None

    def isReady(self):
        return not self.stopping

    @property
    def inFlight(self):
        """Requests received and not yet answered (or abandoned by their client)."""
        return self._inFlight

    def requestStarted(self, request):
        """Count ``request`` until it finishes or its connection is lost."""
        self._inFlight += 1
        request.notifyFinish().addBoth(self._requestEnded)

    def _requestEnded(self, _):
        self._inFlight -= 1
        if not self._inFlight:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def solving(self, d, deadline=None):
        """``d`` is a solver call a shutdown may cancel, and that is cancelled (see
        :meth:`expired`) once the clock passes ``deadline``; :return: ``d``.

        The deadlines share one timer that looks every ``SWEEP_INTERVAL`` while calls
        are in flight, instead of a timer armed and cancelled for each request: an
        expiry is at most that late, on cert-manager's minute.
        """
        self._solving[d] = deadline
        d.addBoth(self._solved, d)
        if deadline is not None and self._sweep is None and not d.called:
            self._sweep = self._clock.callLater(SWEEP_INTERVAL, self._expire)
        return d

    def _solved(self, result, d):
        self._solving.pop(d, None)
        if not self._solving and self._sweep is not None:
            self._sweep.cancel()  # idle: no timer left behind
            self._sweep = None
        return result

    def expired(self, d):
        """Whether ``d`` was cancelled because its deadline passed."""
        return d in self._expired

    def _expire(self):
        self._sweep = None
        now = self._clock.seconds()
        for d, deadline in list(self._solving.items()):
            if deadline is not None and deadline <= now:
                self._expired.add(d)
                d.cancel()
                self._expired.discard(d)
        if any(deadline is not None for deadline in self._solving.values()):
            self._sweep = self._clock.callLater(SWEEP_INTERVAL, self._expire)

    def whenIdle(self):
        """A Deferred firing once no request is in flight."""
        if not self._inFlight:
            return defer.succeed(None)
        d = defer.Deferred(lambda d: self._idle.remove(d) if d in self._idle else None)
        self._idle.append(d)
        return d

    async def drain(self, clock, grace):
        """Wait for the requests in flight; after ``grace`` seconds cancel their solver
        calls (they are then answered with :data:`SHUTTING_DOWN`) and wait a little more.

        :return: how many requests were still unanswered at the end (normally 0).
        """
        if await _within(self.whenIdle(), grace, clock):
            return 0
        for d in list(self._solving):
            d.cancel()
        await _within(self.whenIdle(), CANCEL_SETTLE, clock)
        return self._inFlight


async def _within(d, seconds, clock):
    """Whether ``d`` fired within ``seconds`` (it is cancelled otherwise)."""
    d.addTimeout(seconds, clock)
    try:
        await d
    except defer.TimeoutError:
        return False
    return True
