"""Single-flight: one call per key, per-caller cancellation."""
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.flight import SharedCalls, SingleFlight


class SharedCallsTests(SynchronousTestCase):
    def test_concurrentCallersShareOneCall(self):
        calls, shared = [], defer.Deferred()
        flight = SharedCalls()
        a = flight.call("k", lambda: calls.append(1) or shared)
        b = flight.call("k", lambda: calls.append(2) or shared)
        other = flight.call("other", lambda: "x")
        self.assertEqual((calls, len(flight)), ([1], 1))
        self.assertEqual(self.successResultOf(other), "x")
        shared.callback("answer")
        self.assertEqual((self.successResultOf(a), self.successResultOf(b)), ("answer", "answer"))
        self.assertFalse(flight.inFlight("k"))

    def test_failureReachesEveryCaller(self):
        shared = defer.Deferred()
        flight = SharedCalls()
        a, b = flight.call("k", lambda: shared), flight.call("k", lambda: shared)
        shared.errback(ValueError("boom"))
        self.failureResultOf(a, ValueError)
        self.failureResultOf(b, ValueError)

    def test_oneCallerGivingUpLeavesTheOthers(self):
        shared = defer.Deferred()
        flight = SharedCalls()
        a, b = flight.call("k", lambda: shared), flight.call("k", lambda: shared)
        a.cancel()
        self.failureResultOf(a, defer.CancelledError)
        self.assertFalse(shared.called)
        shared.callback(1)
        self.assertEqual(self.successResultOf(b), 1)

    def test_abandonedCallIsCancelledOnlyWhenAsked(self):
        cancelled = []
        for cancelWhenAbandoned in (True, False):
            shared = defer.Deferred(lambda d, c=cancelWhenAbandoned: cancelled.append(c))
            flight = SharedCalls(cancelWhenAbandoned=cancelWhenAbandoned)
            waiter = flight.call("k", lambda: shared)
            waiter.cancel()
            self.failureResultOf(waiter, defer.CancelledError)
            self.assertEqual(flight.inFlight("k"), not cancelWhenAbandoned)
        self.assertEqual(cancelled, [True])

    def test_cancelAll(self):
        flight = SharedCalls()
        a, b = flight.call("a", defer.Deferred), flight.call("b", defer.Deferred)
        flight.cancelAll()
        self.failureResultOf(a, defer.CancelledError)
        self.failureResultOf(b, defer.CancelledError)
        self.assertEqual(len(flight), 0)

    def test_synchronousResult(self):
        flight = SharedCalls()
        self.assertEqual(self.successResultOf(flight.call("k", lambda: 5)), 5)
        self.assertEqual(len(flight), 0)


class SingleFlightTests(SynchronousTestCase):
    def test_oneRunAtATimeAndCancel(self):
        runs = []

        def operation():
            runs.append(defer.Deferred())
            return runs[-1]

        flight = SingleFlight(operation)
        a, b = flight(), flight()
        self.assertTrue(flight.running)
        self.assertEqual(len(runs), 1)
        flight.cancel()
        self.failureResultOf(a, defer.CancelledError)
        self.failureResultOf(b, defer.CancelledError)
        self.assertFalse(flight.running)
        flight()
        self.assertEqual(len(runs), 2)
