"""Decode a request body as JSON without letting the body decide how much we suffer.

``json.loads`` accepts things a Go decoder (what cert-manager's webhook
library uses) refuses, and some of them crash later, far from the decoder:

* nesting a few thousand arrays deep raises ``RecursionError`` inside the C
  scanner; we measure the depth first and refuse past :data:`MAX_DEPTH`;
* ``"\\ud800"`` is valid JSON but a lone UTF-16 surrogate is no Unicode
  character: encoding it to UTF-8 (for Valkey, a log line) raises.  Go
  replaces it with U+FFFD; we refuse it, naming the field, because these
  strings end up in front of a person;
* ``NaN``/``Infinity`` and numbers beyond a double (``1e400``) would be echoed
  back as ``Infinity``, which is not JSON at all.

Every refusal is :class:`BadJSON` with a message fit for a 400 ``Status``.
The checks cost two ``bytes.count`` calls and a substring test on an
ordinary ChallengePayload; the slower paths only run for bodies that need them.
"""
import json
import math
import re
from itertools import accumulate

#: A ChallengePayload nests five deep (payload, request, config, valkey,
#: secret ref); Go's decoder allows 10,000, which no sender of ours needs.
MAX_DEPTH = 32

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # every byte but brackets
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
#: a \u escape of a code point in U+D800..U+DFFF (paired or not)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadJSON(ValueError):
    """The body is not JSON we accept; ``str()`` says why."""


def nestingDepth(body):
    """The deepest array/object nesting of ``body`` (brackets inside strings ignored)."""
    brackets = _STRING.sub(b"", body).translate(None, _BRACKETS)
    return max(accumulate(_STEP[b] for b in brackets), default=0)


def excessDepth(body):
    """``nestingDepth(body)`` when it is over :data:`MAX_DEPTH`, else ``None``.

    Counting brackets first spares an ordinary body the scan: with at most
    ``MAX_DEPTH`` opening brackets it cannot nest deeper than that.
    """
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return None
    depth = nestingDepth(body)
    return depth if depth > MAX_DEPTH else None


def _refuseConstant(name):
    raise BadJSON(f"request body contains {name}, which is not a JSON number")


def _finiteFloat(text):
    value = float(text)
    if math.isinf(value):
        raise BadJSON(f"request body contains the number {text[:40]}, which is too large "
                      f"for a double")
    return value


def loads(body):
    """``body`` (bytes) decoded, or :class:`BadJSON`."""
    depth = excessDepth(body)
    if depth is not None:
        raise BadJSON(f"request body nests arrays/objects {depth} deep; at most {MAX_DEPTH} "
                      f"levels are accepted")
    try:
        doc = json.loads(body, parse_constant=_refuseConstant, parse_float=_finiteFloat)
    except BadJSON:
        raise
    except UnicodeDecodeError:
        raise BadJSON("request body is not UTF-8 encoded JSON")
    except RecursionError:  # cannot happen below MAX_DEPTH; kept as the last guard
        raise BadJSON("request body nests too deeply")
    except ValueError as e:
        raise BadJSON(f"request body is not valid JSON: {e}")
    if _SURROGATE_ESCAPE.search(body):
        where = surrogatePath(doc)
        if where is not None:
            raise BadJSON(f"{where} contains a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
                          f"without its pair), which is not a Unicode character")
    return doc


def surrogatePath(doc, path=""):
    """The first place in ``doc`` whose string (key or value) holds a lone surrogate."""
    if isinstance(doc, str):
        return (path or "the body") if _SURROGATE.search(doc) else None
    if isinstance(doc, dict):
        for key, value in doc.items():
            here = f"{path}.{key}" if path else key
            if _SURROGATE.search(key):
                return f"a key of {path or 'the body'}"
            found = surrogatePath(value, here)
            if found is not None:
                return found
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found = surrogatePath(value, f"{path}[{i}]")
            if found is not None:
                return found
    return None
