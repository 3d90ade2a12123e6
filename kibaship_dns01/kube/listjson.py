"""A LIST page's JSON, its items decoded one at a time as they are read.

Why: a page of 500 Certificates is about 1.4 MB of JSON, and ``json.loads``
of it holds the reactor for 35 ms and more on a busy machine, once per page,
for every page of a large relist (it showed as 100-200 ms Present latencies
while 100,000 Certificates synced by paged LISTs).  The informer applies items
in reactor-sized turns; with :func:`decodeList` the decoding happens in those
same turns, item by item (``json.JSONDecoder.raw_decode`` from where the last
one ended), and an item is never decoded before it is applied.

kube-apiserver writes a List as ``kind``, ``apiVersion``, ``metadata``,
``items`` (its Go struct's order), so the page's metadata (its ``continue``
token) is known before any item is decoded.  A List in another order is
decoded whole, as ``json.loads`` would.
"""
import json
import re

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


class ListDecodeError(ValueError):
    """The page is not the JSON object it should be (where, and what was found)."""


def _skip(text, at):
    return _SPACE.match(text, at).end()


def _expect(text, at, chars):
    at = _skip(text, at)
    if at >= len(text) or text[at] not in chars:
        found = repr(text[at:at + 20]) if at < len(text) else "the end"
        raise ListDecodeError("expected %s at offset %d, found %s"
                              % (" or ".join(repr(c) for c in chars), at, found))
    return text[at], at + 1


def decodeList(body):
    """The List object in ``body`` (bytes) with ``items`` an iterator decoding
    each item as it is read (:class:`ListDecodeError`, a ``ValueError``, for
    malformed JSON, raised then).  Anything but a JSON object: ``json.loads``."""
    text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
    at = _skip(text, 0)
    if not text.startswith("{", at):
        return json.loads(text)
    out, at = {}, at + 1
    while True:
        mark, at = _expect(text, at, '"}')
        if mark == "}":
            return out
        key, at = json.decoder.scanstring(text, at)
        _, at = _expect(text, at, ":")
        at = _skip(text, at)
        if key == "items" and "metadata" in out and text.startswith("[", at):
            out["items"] = _items(text, at + 1, out)
            return out
        out[key], at = _DECODER.raw_decode(text, at)
        _, at = _expect(text, at, ",}")
        if text[at - 1] == "}":
            return out


def _items(text, at, page):
    """Yield the array's items; then read the keys after it into ``page``."""
    mark, probe = _expect(text, at, ']{["0123456789-tfn')
    if mark == "]":
        at = probe
    else:
        while True:
            item, at = _DECODER.raw_decode(text, _skip(text, at))
            yield item
            mark, at = _expect(text, at, ",]")
            if mark == "]":
                break
    mark, at = _expect(text, at, ",}")
    if mark == ",":
        rest = json.loads("{" + text[at:])
        page.update((k, v) for k, v in rest.items() if k != "items")
