"""Broken HTTP/1.1: one hypothesis generator for the suite and the fuzz drill (issue 12).

``tests/test_hostile_http.py`` feeds it to the real site in memory;
``bench/drills/fuzz.py`` sends it to the live daemon over TLS.  Like
:mod:`~kibaship_dns01.testing.hostile` it starts from a *valid* request (the
exact bytes the kube-aggregator forwards) and breaks one thing, so the damage
reaches the layer that has to cope with it rather than dying at the first byte.

Classes (the label's first part): ``chunked`` (bad chunk sizes, missing
CRLFs, endless or absent last chunk, ``Transfer-Encoding`` variants and
``Content-Length`` beside it), ``headers`` (floods of headers, huge values,
lines without a colon, NUL and bare CR, obsolete line folding, duplicated
framing headers), ``length`` (absurd, negative, non-decimal ``Content-Length``;
longer or shorter than the body), ``line`` (garbage request lines, unknown
methods and versions, huge or hostile targets, HTTP/0.9), ``pipelined``
(valid requests followed by junk or by half a request) and ``expect``
(``100-continue`` and unknown expectations).

Every case is ``(label, bytes)``; some end mid-request on purpose (the server
must time them out, not wait forever).
"""
from hypothesis import strategies as st

CRLF = b"\r\n"


def split(request):
    """``(request line, [header lines], body)`` of a complete request."""
    head, _, body = request.partition(CRLF + CRLF)
    lines = head.split(CRLF)
    return lines[0], lines[1:], body


def join(requestLine, headers, body=b""):
    return CRLF.join([requestLine, *headers]) + CRLF + CRLF + body


def without(headers, *names):
    """``headers`` minus every line whose name is one of ``names`` (any case)."""
    lowered = {n.lower() for n in names}
    return [h for h in headers if h.split(b":", 1)[0].strip().lower() not in lowered]


def chunk(data, extension=b""):
    return b"%x%s\r\n%s\r\n" % (len(data), extension, data)


def chunked(body, sizes):
    """``body`` in chunks of the given sizes (the rest in one), then the last chunk."""
    out, at = b"", 0
    for size in sizes:
        if at >= len(body):
            break
        out += chunk(body[at:at + size])
        at += size
    if at < len(body):
        out += chunk(body[at:])
    return out + b"0\r\n\r\n"


def _chunkedCases(line, headers, body):
    plain = without(headers, b"content-length")

    def te(value, framing, extra=()):
        return join(line, plain + [b"Transfer-Encoding: " + value, *extra], framing)

    good = chunked(body, [7, 100, 1])
    return st.one_of(
        st.builds(lambda sizes: ("chunked/valid", te(b"chunked", chunked(body, sizes))),
                  st.lists(st.integers(1, 400), max_size=8)),
        st.sampled_from([
            ("chunked/size-not-hex", te(b"chunked", b"zz\r\n" + body + b"\r\n0\r\n\r\n")),
            ("chunked/size-negative", te(b"chunked", b"-5\r\nabcde\r\n0\r\n\r\n")),
            ("chunked/size-huge", te(b"chunked", b"f" * 40 + b"\r\n" + body)),
            ("chunked/size-over-limit", te(b"chunked", b"200000\r\n" + body)),
            ("chunked/size-line-long", te(b"chunked", b"0" * 70000 + b"5\r\nabcde\r\n0\r\n\r\n")),
            ("chunked/size-with-space", te(b"chunked", b"5 \r\nabcde\r\n0\r\n\r\n")),
            ("chunked/data-longer", te(b"chunked", b"5\r\nabcdefghij\r\n0\r\n\r\n")),
            ("chunked/no-crlf-after-data", te(b"chunked", b"5\r\nabcde0\r\n\r\n")),
            ("chunked/extension-junk", te(b"chunked", chunk(body, b";\x00\xff=" + b"x" * 100)
                                          + b"0\r\n\r\n")),
            ("chunked/no-last-chunk", te(b"chunked", chunk(body))),
            ("chunked/trailer-junk", te(b"chunked", chunk(body) + b"0\r\nX-T: y\r\nno colon\r\n"
                                        b"\r\n")),
            ("chunked/trailer-flood", te(b"chunked", chunk(body) + b"0\r\n"
                                         + b"X-T: y\r\n" * 2000 + b"\r\n")),
            ("chunked/and-content-length", te(b"chunked", good,
                                              [b"Content-Length: %d" % len(body)])),
            ("chunked/and-content-length-0", te(b"chunked", good, [b"Content-Length: 0"])),
            ("chunked/gzip-chunked", te(b"gzip, chunked", good)),
            ("chunked/chunked-gzip", te(b"chunked, gzip", good)),
            ("chunked/identity", te(b"identity", body)),
            ("chunked/xchunked", te(b"xchunked", good)),
            ("chunked/upper-case", te(b"CHUNKED", good)),
            ("chunked/twice", te(b"chunked", good, [b"Transfer-Encoding: chunked"])),
            ("chunked/http-1.0", join(line.replace(b"HTTP/1.1", b"HTTP/1.0"),
                                      plain + [b"Transfer-Encoding: chunked"], good)),
        ]))


def _headerCases(line, headers, body):
    rest = without(headers, b"content-length")
    length = b"Content-Length: %d" % len(body)
    return st.one_of(
        st.builds(lambda n: ("headers/flood", join(line, headers + [b"X-Junk-%d: v" % i
                                                                    for i in range(n)], body)),
                  st.sampled_from((400, 499, 501, 2000))),
        st.builds(lambda kib: ("headers/huge-value", join(line, headers + [
            b"X-Junk: " + b"v" * (kib * 1024)], body)), st.sampled_from((8, 15, 17, 64, 1024))),
        st.builds(lambda n: ("headers/groups-flood", join(line, headers + [
            b"X-Remote-Group: group-%d" % i for i in range(n)], body)),
            st.sampled_from((50, 450, 600))),
        st.builds(lambda n: ("headers/extra-flood", join(line, headers + [
            b"X-Remote-Extra-Key%d: v%d" % (i, i) for i in range(n)], body)),
            st.sampled_from((50, 450))),
        st.builds(lambda value: ("headers/random-value", join(line, headers + [
            b"X-Junk: " + value], body)), st.binary(max_size=64)),
        st.builds(lambda name: ("headers/random-name", join(line, headers + [
            name + b": v"], body)), st.binary(min_size=1, max_size=32)),
        st.sampled_from([
            ("headers/no-colon", join(line, headers + [b"NoColonHere"], body)),
            ("headers/space-before-colon", join(line, rest + [length.replace(b":", b" :")],
                                                body)),
            ("headers/nul-in-value", join(line, headers + [b"X-Junk: a\x00b"], body)),
            ("headers/bare-cr", join(line, headers + [b"X-Junk: a\rb"], body)),
            ("headers/obs-fold", join(line, headers + [b"X-Junk: a", b" folded"], body)),
            ("headers/fold-first", join(line, [b" folded"] + headers, body)),
            ("headers/length-twice-same", join(line, headers + [length], body)),
            ("headers/length-twice-differ", join(line, headers + [b"Content-Length: 1"], body)),
            ("headers/length-list", join(line, rest + [b"Content-Length: %d, %d" % (
                len(body), len(body))], body)),
            ("headers/no-host", join(line, without(headers, b"host"), body)),
            ("headers/two-hosts", join(line, headers + [b"Host: evil.example"], body)),
            ("headers/content-type-junk", join(line, without(headers, b"content-type") + [
                b"Content-Type: application/json; charset=\xff\x00"], body)),
            ("headers/content-type-missing", join(line, without(headers, b"content-type"),
                                                  body)),
            ("headers/content-encoding-gzip", join(line, headers + [
                b"Content-Encoding: gzip"], body)),
            ("headers/connection-junk", join(line, headers + [b"Connection: upgrade, \xff"],
                                             body)),
            ("headers/upgrade-h2c", join(line, headers + [b"Connection: Upgrade, HTTP2-Settings",
                                                          b"Upgrade: h2c",
                                                          b"HTTP2-Settings: AAMAAABkAAQAAP__"],
                                         body)),
            ("headers/empty-name", join(line, headers + [b": v"], body)),
        ]))


def _lengthCases(line, headers, body):
    rest = without(headers, b"content-length")

    def withLength(value, sent=body):
        return join(line, rest + [b"Content-Length: " + value], sent)

    return st.one_of(
        st.builds(lambda n: ("length/absurd", withLength(b"%d" % n, b"")),
                  st.sampled_from((10 ** 12, 2 ** 63, 2 ** 64, 10 ** 30, 10 ** 400))),
        # these wait for the body timeout: a few lengths, not thousands
        st.builds(lambda cut: ("length/longer-than-body", withLength(
            b"%d" % (len(body) + cut))), st.sampled_from((1, 100, 5000))),
        st.builds(lambda cut: ("length/shorter-than-body", withLength(
            b"%d" % max(0, len(body) - cut))), st.integers(1, 200)),
        st.sampled_from([
            ("length/negative", withLength(b"-1")),
            ("length/plus", withLength(b"+%d" % len(body))),
            ("length/hex", withLength(b"0x%x" % len(body))),
            ("length/spaced", withLength(b"%d %d" % (len(body), len(body)))),
            ("length/empty", withLength(b"")),
            ("length/letters", withLength(b"abc")),
            ("length/leading-zeros", withLength(b"000%d" % len(body))),
            ("length/unicode-digits", withLength("١٢".encode()))
        ]))


def _lineCases(line, headers, body):
    method, target, version = line.split(b" ")
    return st.one_of(
        st.builds(lambda junk: ("line/random", join(junk.replace(b"\r", b"").replace(b"\n", b""),
                                                   headers, body)), st.binary(max_size=120)),
        st.builds(lambda m: ("line/method", join(b" ".join((m, target, version)), headers, body)),
                  st.sampled_from((b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE",
                                   b"CONNECT", b"HEAD", b"post", b"FOO", b"P\x00ST",
                                   b"X" * 300))),
        st.builds(lambda v: ("line/version", join(b" ".join((method, target, v)), headers, body)),
                  st.sampled_from((b"HTTP/9.9", b"HTTP/1.1x", b"HTTP/1", b"http/1.1", b"HTTP/2.0",
                                   b"HTTP/1.10", b"ABC/1.1", b""))),
        st.builds(lambda t: ("line/target", join(b" ".join((method, t, version)), headers, body)),
                  st.sampled_from((
                      b"*", b"", b"//" + target, target + b"?x=1&x=2", target + b"#frag",
                      b"https://localhost" + target, target.replace(b"/", b"%2f"),
                      b"/../.." + target, target + b"/..", target + b"%00", target + b"\x00",
                      b"/" + b"a" * 20000, target + b"?" + b"q=" * 3000,
                      b"/apis/%ff%fe", "/apis/é".encode()))),
        st.sampled_from([
            ("line/extra-field", join(line + b" extra", headers, body)),
            ("line/tabs", join(line.replace(b" ", b"\t"), headers, body)),
            ("line/double-space", join(line.replace(b" ", b"  "), headers, body)),
            ("line/http-0.9", b"GET /healthz\r\n"),
            ("line/leading-blank-lines", CRLF * 3 + join(line, headers, body)),
            ("line/only-crlf", CRLF * 2),
            ("line/lf-only", join(line, headers, body).replace(CRLF, b"\n")),
            ("line/huge", b"GET /" + b"x" * 100000 + b" HTTP/1.1\r\n\r\n"),
            ("line/tls-in-tls", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64),
        ]))


def _pipelinedCases(request):
    head = request.partition(CRLF + CRLF)[0]
    return st.one_of(
        st.builds(lambda n, junk: ("pipelined/valid-then-junk", request * n + junk + CRLF * 2),
                  st.integers(1, 3), st.binary(min_size=1, max_size=200)),
        st.builds(lambda n: ("pipelined/valid", request * n), st.integers(2, 6)),
        # the half request waits for a timeout: cut it in a few telling places
        st.builds(lambda cut: ("pipelined/valid-then-half", request + request[:cut]),
                  st.sampled_from((1, 20, len(head) - 1, len(head) + 2, len(request) - 1))),
        st.just(("pipelined/many", request * 50)),
    )


def _expectCases(line, headers, body):
    return st.sampled_from([
        ("expect/100-continue", join(line, headers + [b"Expect: 100-continue"], body)),
        ("expect/100-continue-no-body", join(line, headers + [b"Expect: 100-continue"])),
        ("expect/unknown", join(line, headers + [b"Expect: the-unexpected"], body)),
    ])


def brokenRequests(request):
    """A strategy of ``(label, bytes)``: ``request`` (one complete, valid HTTP/1.1
    request with a ``Content-Length`` body) broken in one of the ways listed above."""
    line, headers, body = split(request)
    return st.one_of(_chunkedCases(line, headers, body), _headerCases(line, headers, body),
                     _lengthCases(line, headers, body), _lineCases(line, headers, body),
                     _pipelinedCases(request), _expectCases(line, headers, body))
