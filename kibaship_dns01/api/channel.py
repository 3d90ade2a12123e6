"""The HTTP/1.1 connection, with the read limits a production API server has.

Twisted's ``HTTPChannel`` has one timer, an idle timeout reset by *every*
byte received, so a client that trickles one byte every few seconds
(slowloris) holds a connection, a file descriptor and TLS state for as long
as it likes.  kube-apiserver bounds the request head (``ReadHeaderTimeout``)
and keep-alive idleness (``IdleTimeout``) separately; so do we:

* **head**: from the connection's first byte (the TLS handshake included) or,
  on a kept-alive connection, from the first byte of the next request, until
  the blank line ending the headers: ``--request-header-timeout``;
* **body**: from the end of the headers until the last byte of the body:
  ``--request-body-timeout``; a body announced (``Content-Length``) over
  ``--max-body-bytes`` is not waited for at all: ``413`` at once;
* **idle**: between requests (no byte at all): Twisted's own timeout,
  ``--idle-timeout``.

A request that runs out of time is answered ``408`` with a ``Status`` body
(when the client can still read it) and the connection is closed; a client
that does not let go is aborted ``ABORT_TIMEOUT`` seconds later.  Once the
request is in, no read timer runs: handling it is bounded by the solver's
own deadline.
"""
import json

from twisted.logger import Logger
from twisted.web import http

from kibaship_dns01 import metrics
from kibaship_dns01.api.status import statusBody

log = Logger()

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 90.0
#: seconds a timed-out client gets to close before the connection is aborted
ABORT_TIMEOUT = 2.0

_IDLE, _HEAD, _BODY, _HANDLING = "idle", "header", "body", "handling"
_OVER = "over"  # the body of a refused request has ended


def _closingResponse(code, message, reason):
    """A whole ``Status`` response that ends the connection, written by the channel
    itself (the request never reaches the site)."""
    body = json.dumps(statusBody(code, message, reason=reason)).encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (code, http.RESPONSES[code], len(body), body))


def _timeoutResponse(phase, seconds):
    return _closingResponse(408, f"the request {phase} did not arrive within {seconds:g}s",
                            "Timeout")


class GuardedHTTPChannel(http.HTTPChannel):
    """``HTTPChannel`` with head and body deadlines; the limits come from ``self.site``
    (``headerTimeout``, ``bodyTimeout``), the idle timeout from the factory's ``timeOut``."""

    abortTimeout = ABORT_TIMEOUT
    _phase = _IDLE
    _readTimer = None
    _refused = False

    def connectionMade(self):
        super().connectionMade()
        self._startPhase(_HEAD)

    def dataReceived(self, data):
        if self._phase == _IDLE and data:
            self._startPhase(_HEAD)
        elif self._refused == _OVER:
            return  # sent after a body we refused (a client that did not wait): never parsed
        super().dataReceived(data)

    def allHeadersReceived(self):
        super().allHeadersReceived()
        self._startPhase(_BODY)
        if self.length and self.length > self.site.maxBodyBytes:
            self._refuseBody()

    def _refuseBody(self):
        """A body announced over the limit: answer 413 now rather than after reading it.

        The body is still read, and dropped (``BoundedRequest`` keeps none of it), until
        it ends or the body deadline runs out, and only then is the connection closed:
        closing on a client that is still sending makes the kernel reset the connection,
        and the client would lose this answer with it (Go's server lingers the same way).
        The request never reaches the site, so what follows it is never parsed.
        """
        self._refused = True
        self.persistent = False
        limit = self.site.maxBodyBytes
        metrics.labelled(metrics.HTTP_REQUESTS, "solver" if self._command == b"POST"
                         else "other", "413").inc()
        self.transport.write(_closingResponse(
            413, f"request body of {self.length} bytes is larger than the limit of {limit} "
            f"bytes; a ChallengePayload is a few kilobytes", "RequestEntityTooLarge"))

    def allContentReceived(self):
        if self._refused:  # the body of a request answered 413 is over
            self._refused = _OVER
            self._close()
            return
        self._startPhase(_HANDLING)
        super().allContentReceived()

    def requestDone(self, request):
        super().requestDone(request)
        if self._phase == _HANDLING:
            self._startPhase(_IDLE)

    def connectionLost(self, reason):
        self._cancelReadTimer()
        super().connectionLost(reason)

    def _limit(self, phase):
        if phase == _HEAD:
            return self.site.headerTimeout
        return self.site.bodyTimeout if phase == _BODY else None

    def _startPhase(self, phase):
        """Enter ``phase``; a phase with a limit (re)arms the one read timer.

        The timer is moved (``reset``) rather than cancelled and made again, and
        left armed while a request is handled or the connection idles: when it
        fires then, there is nothing to time out.
        """
        self._phase = phase
        limit = self._limit(phase)
        if not limit:
            return
        if self._readTimer is not None and self._readTimer.active():
            self._readTimer.reset(limit)
        else:
            self._readTimer = self.callLater(limit, self._readTimedOut)

    def _cancelReadTimer(self):
        if self._readTimer is not None and self._readTimer.active():
            self._readTimer.cancel()
        self._readTimer = None

    def _readTimedOut(self):
        self._readTimer = None
        phase = self._phase
        limit = self._limit(phase)
        if not limit:
            return  # armed for a request that has since arrived
        if self.transport.disconnecting or self._refused:
            # answered already (Twisted's 400 to a malformed head, our 413): say nothing
            # more, only make sure a client that does not read lets go
            self._close()
            return
        metrics.labelled(metrics.HTTP_TIMEOUTS, phase).inc()
        log.debug("closing a connection from {peer}: request {phase} not received within "
                  "{limit}s", peer=str(self.transport.getPeer()), phase=phase, limit=limit)
        self.transport.write(_timeoutResponse(phase, limit))
        self._close()

    def timeoutConnection(self):
        """The idle timeout (Twisted's ``TimeoutMixin``): nothing arrived for ``timeOut``."""
        if not self.transport.disconnecting:
            metrics.labelled(metrics.HTTP_TIMEOUTS, _IDLE).inc()
        self._close()

    def _close(self):
        """Close (once); abort if the client does not let go (it may not read at all)."""
        if self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        if not self.transport.disconnecting:
            self.loseConnection()
