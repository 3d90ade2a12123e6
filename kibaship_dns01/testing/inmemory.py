"""Drive a ``twisted.web`` site with raw HTTP bytes in memory (no sockets, no TLS).

For tests that must control the bytes on the wire exactly (hostile bodies,
broken framing, a client that stops half-way) and run thousands of requests
in a second: the site's protocol is connected to a ``StringTransport``, the
bytes go in through ``dataReceived``, and the response is whatever the site
wrote.  With the fakes' synchronous Deferreds the whole request path has
finished when :meth:`MemoryClient.send` returns.
"""
import attr
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport


@attr.s(frozen=True, auto_attribs=True)
class RawResponse:
    """What the site wrote: the status code, the headers (lower-cased names), the body."""

    code: int
    headers: dict
    body: bytes


def parseResponse(data):
    """The first HTTP/1.1 response in ``data`` (``Content-Length`` or chunked framing)."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    code = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        return RawResponse(code, headers, _unchunk(rest))
    length = int(headers.get(b"content-length", len(rest)))
    return RawResponse(code, headers, rest[:length])


def _unchunk(data):
    body = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        size = int(size.split(b";")[0], 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2:]


def postRequest(path, body, contentType=b"application/json", extraHeaders=()):
    """A complete ``POST`` with ``Content-Length``, as the kube-aggregator forwards it."""
    lines = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: localhost",
             b"Content-Type: " + contentType, b"Content-Length: %d" % len(body),
             *extraHeaders]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class MemoryClient:
    """One connection to ``site``; :meth:`send` writes bytes and returns what came back."""

    def __init__(self, site):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol = site.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def send(self, data):
        """Feed ``data``; :return: the bytes written in answer (and forget them)."""
        self.protocol.dataReceived(data)
        written = self.transport.value()
        self.transport.clear()
        return written

    def close(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))
