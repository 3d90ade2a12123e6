"""Hostile ChallengePayload bodies: one hypothesis generator for the suite and the fuzz drill.

``tests/test_hostile_payloads.py`` runs it for a few hundred examples against
the whole request path in memory; ``bench/drills/fuzz.py`` runs the same
strategy for a budget of 100,000+ against the live daemon over TLS.  Starting
from a *valid* payload for a Challenge that exists matters: random bytes are
refused by the first ``json.loads`` and never reach the checks that guard the
stream, while a good body with one field bent does.

What it bends (each from the defects a fuzzer found, see issue 14): field
values replaced by junk names (``../../etc/passwd``, NUL, ``*.``, empty labels,
5,000 ``x``, 300 ``é``, one-letter typos of the real name), lone surrogates,
wrong JSON types, huge and non-finite numbers, deep nesting, missing and
unknown fields, duplicate keys (only expressible in the JSON text), and raw
byte damage (truncation, inserted bytes).
"""
import json

from hypothesis import strategies as st

#: strings a person must never be shown as a record name or value
JUNK_STRINGS = (
    "", " ", "\n", "\x00", "\u0000abc", "*.", "*", ".", "..", "_acme-challenge..",
    "../../etc/passwd", "x" * 5000, "é" * 300, "\ud800", "a\udfffb", "\U0001f600",
    "exa mple.com", "-bad-.example.com.", "a" * 64 + ".example.com.", "UPPER.EXAMPLE.COM.",
    "xn--bcher-kva.example.", "%2e%2e/", "\u202eevil", "<script>alert(1)</script>",
)
JUNK_VALUES = (None, True, False, 0, -1, 1.5, 10 ** 30, [], {}, ["a"], {"a": "b"})
#: raw JSON number texts json.dumps cannot produce
JUNK_NUMBER_TEXTS = ("1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" * 5000, "0x10")
FIELDS = ("uid", "action", "type", "dnsName", "key", "resourceNamespace", "resolvedFQDN",
          "resolvedZone", "allowAmbientCredentials", "config")


def typos(name):
    """Every one-letter change of ``name`` that keeps its length: neighbours of the truth."""
    out = []
    for i, ch in enumerate(name):
        if ch.isalpha():
            out.append(name[:i] + ("a" if ch != "a" else "b") + name[i + 1:])
    return out


def _nested(depth, leaf="x"):
    return "[" * depth + json.dumps(leaf) + "]" * depth


def _replaceField(payload, name, value):
    changed = json.loads(json.dumps(payload))
    changed["request"][name] = value
    return changed


def _dropField(payload, name):
    changed = json.loads(json.dumps(payload))
    changed["request"].pop(name, None)
    return changed


def _encode(doc):
    # ensure_ascii keeps lone surrogates encodable: they travel as \udxxx escapes
    return json.dumps(doc).encode("ascii")


def _withRawValue(payload, name, text):
    """The body with ``request.<name>`` set to raw JSON ``text`` (numbers json cannot write)."""
    marker = "__hostile_raw__"
    return _encode(_replaceField(payload, name, marker)).replace(
        json.dumps(marker).encode(), text.encode("ascii"))


def _objectText(pairs):
    """A JSON object from ``(key, already-encoded value)`` pairs; keys may repeat."""
    return b"{" + b", ".join(_encode(k) + b": " + v for k, v in pairs) + b"}"


def _duplicateKey(payload, name, value):
    """``request.<name>`` given twice; the second (hostile) one wins under Go and Python."""
    pairs = [(k, _encode(v)) for k, v in payload["request"].items()] + [(name, _encode(value))]
    outer = [(k, _encode(v)) for k, v in payload.items() if k != "request"]
    return _objectText(outer + [("request", _objectText(pairs))])


def payloadBodies(payload):
    """A strategy of request bodies (bytes) derived from the valid ``payload`` dict."""
    request = payload["request"]
    names = [request.get("resolvedFQDN", ""), request.get("dnsName", ""),
             request.get("resolvedZone", "")]
    strings = st.sampled_from(JUNK_STRINGS + tuple(t for n in names for t in typos(n)))
    values = strings | st.sampled_from(JUNK_VALUES) | st.text(max_size=40) | st.integers()
    field = st.sampled_from(FIELDS)
    valid = st.just(_encode(payload))
    replaced = st.builds(lambda n, v: _encode(_replaceField(payload, n, v)), field, values)
    dropped = st.builds(lambda n: _encode(_dropField(payload, n)), field)
    unknown = st.builds(lambda k, v: _encode(_replaceField(payload, k, v)),
                        st.text(min_size=1, max_size=12), values)
    rawNumbers = st.builds(lambda n, t: _withRawValue(payload, n, t), field,
                           st.sampled_from(JUNK_NUMBER_TEXTS))
    nested = st.builds(lambda n, d: _withRawValue(payload, n, _nested(d)), field,
                       st.sampled_from((2, 31, 33, 500, 5000)))
    duplicated = st.builds(lambda n, v: _duplicateKey(payload, n, v), field, strings)
    damaged = st.builds(_damage, valid, st.integers(0, 10 ** 6), st.binary(max_size=8))
    wholeBody = st.sampled_from((b"", b"null", b"[]", b'"x"', b"{}", b'{"request": null}',
                                 _nested(5000).encode(), b"\xff\xfe", b"{" * 100000))
    return st.one_of(valid, replaced, dropped, unknown, rawNumbers, nested, duplicated,
                     damaged, wholeBody)


def _damage(body, where, insert):
    """Cut the body at a point, or splice bytes into it."""
    where %= len(body) + 1
    return body[:where] + insert + (body[where:] if insert else b"")
