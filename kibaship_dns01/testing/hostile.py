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
byte damage (truncation, inserted bytes).  Added for the fuzz drill (issue 12):
the issuer ``config`` and its ``valkey`` object bent the same way, look-alike
Unicode (homoglyphs, full-width letters and dots that NFKC or IDNA would fold
into the real name), bodies that are not UTF-8 (BOM, UTF-16, raw invalid
bytes), objects nested deep, big bodies (long strings, many keys, long
arrays, up to just under 1 MiB), key names in another case (Go's decoder
matches them, ours does not), and the top level bent (``request`` twice, the
wrong types for ``apiVersion``/``kind``).

:func:`payloadCases` labels each body with the class it came from, for a
drill's tally; :func:`payloadBodies` is the same strategy without labels.
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
JUNK_NUMBER_TEXTS = ("1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" * 5000, "0x10",
                     "-0", "1e-400", "9007199254740993", "1.7976931348623157e308",
                     "1" * 100000, "01", "+1", ".5", "1.", "1e", "--1")
FIELDS = ("uid", "action", "type", "dnsName", "key", "resourceNamespace", "resolvedFQDN",
          "resolvedZone", "allowAmbientCredentials", "config")
#: fields of the issuer config (SPEC §8) and of its ``valkey`` object
CONFIG_FIELDS = ("valkey", "uiHints", "defaultProjectUUID", "ttl")
VALKEY_FIELDS = ("addr", "username", "passwordSecretRef", "tls", "caSecretRef",
                 "connectTimeout", "readTimeout", "writeTimeout", "minReplicas", "namespace")
#: values an issuer config must refuse (or survive) without a traceback
JUNK_CONFIG_VALUES = (
    "", "-1s", "0s", "1e400s", "99999h", "5", "5 s", "NaN", -1, 0, 10 ** 30, 1e308, 2 ** 63,
    "127.0.0.1:1", "[::1]:0", "host:99999", "a" * 300 + ":6379", "localhost", ":6379",
    {"name": "x"}, {"name": "../x", "key": "k"},
    {"name": "x", "key": "k", "namespace": "kube-system"},
    "00000000-0000-0000-0000-000000000000", "NOT-A-UUID",
)


def lookalikes(name):
    """Look-alikes of ``name`` that Unicode folding (NFKC, IDNA) would turn into it."""
    out = []
    if "a" in name:
        out.append(name.replace("a", "\u0430", 1))         # Cyrillic a
    if "e" in name:
        out.append(name.replace("e", "\u0435", 1))         # Cyrillic ie
    if "." in name:
        out.append(name.replace(".", "\uff0e", 1))         # full-width full stop
        out.append(name.replace(".", "\u3002", 1))         # ideographic full stop (IDNA dot)
    out.append("".join(chr(ord(c) + 0xFEE0) if "a" <= c <= "z" else c for c in name))  # full-width
    out.append(name + "\u200b")                            # zero-width space
    out.append("\ufeff" + name)                            # BOM inside the string
    out.append(name + "\u0301")                            # combining accent on the last letter
    return [look for look in out if look != name]


def typos(name):
    """Every one-letter change of ``name`` that keeps its length: neighbours of the truth."""
    out = []
    for i, ch in enumerate(name):
        if ch.isalpha():
            out.append(name[:i] + ("a" if ch != "a" else "b") + name[i + 1:])
    return out


def _nested(depth, leaf="x"):
    return "[" * depth + json.dumps(leaf) + "]" * depth


def _nestedObject(depth):
    return '{"a":' * depth + "1" + "}" * depth


def _copy(payload):
    return json.loads(json.dumps(payload))


def _replaceField(payload, name, value):
    changed = _copy(payload)
    changed["request"][name] = value
    return changed


def _dropField(payload, name):
    changed = _copy(payload)
    changed["request"].pop(name, None)
    return changed


def _bendConfig(payload, path, value):
    """``request.config.<path...>`` set to ``value`` (the objects on the way created)."""
    changed = _copy(payload)
    where = changed["request"].setdefault("config", {})
    for step in path[:-1]:
        if not isinstance(where.get(step), dict):
            where[step] = {}
        where = where[step]
    where[path[-1]] = value
    return changed


def _encode(doc):
    # ensure_ascii keeps lone surrogates encodable: they travel as \udxxx escapes
    return json.dumps(doc).encode("ascii")


def _utf8(doc):
    """Unicode as UTF-8 bytes, not escapes (what a Go client sends)."""
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


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


def _duplicateRequest(payload, junk, junkFirst):
    """The whole ``request`` given twice, the valid one first or last."""
    outer = [(k, _encode(v)) for k, v in payload.items() if k != "request"]
    pair = [("request", _encode(payload["request"])), ("request", _encode(junk))]
    return _objectText(outer + (pair[::-1] if junkFirst else pair))


def _recase(payload, name, how):
    changed = _copy(payload)
    value = changed["request"].pop(name)
    changed["request"][{"upper": name.upper(), "title": name[:1].upper() + name[1:],
                        "lower": name.lower()}[how]] = value
    return changed


def _bigBody(payload, kind, size):
    """Bodies that cost the decoder: a long string, many keys, a long array."""
    if kind == "string":
        return _encode(_replaceField(payload, "uid", "x" * size))
    if kind == "keys":
        changed = _copy(payload)
        changed["request"].update({"k%d" % i: i for i in range(size // 12)})
        return _encode(changed)
    return _encode(_replaceField(payload, "config", {"uiHints": {"a": [0] * (size // 3)}}))


def _encoded(payload, how):
    """The valid payload in an encoding or with bytes that are not UTF-8 JSON."""
    text = json.dumps(payload)
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if how in ("utf-16", "utf-32"):
        return text.encode(how)
    if how == "latin-1-key":
        return text.replace(payload["request"]["key"], "k\xe9y" * 14 + "k").encode("latin-1")
    if how == "overlong":
        return text.replace('"Present"', '"Pr\xc0\xaesent"').encode("latin-1")
    return text.encode() + b"\x00"  # trailing NUL


def payloadCases(payload):
    """A strategy of ``(label, body bytes)`` derived from the valid ``payload`` dict.

    The label names the class of damage (``replaced``, ``nested``, ...), so a
    drill can tally the answers per class.
    """
    request = payload["request"]
    names = [request.get("resolvedFQDN", ""), request.get("dnsName", ""),
             request.get("resolvedZone", "")]
    strings = st.sampled_from(JUNK_STRINGS + tuple(t for n in names for t in typos(n)))
    values = strings | st.sampled_from(JUNK_VALUES) | st.text(max_size=40) | st.integers()
    field = st.sampled_from(FIELDS)
    configValues = values | st.sampled_from(JUNK_CONFIG_VALUES)
    configPath = (st.sampled_from(CONFIG_FIELDS).map(lambda f: (f,))
                  | st.sampled_from(VALKEY_FIELDS).map(lambda f: ("valkey", f)))
    nameField = st.sampled_from(("dnsName", "resolvedFQDN", "resolvedZone", "key",
                                 "resourceNamespace"))

    def labelled(label, strategy):
        return strategy.map(lambda body: (label, body))

    return st.one_of(
        labelled("valid", st.just(_encode(payload))),
        labelled("replaced", st.builds(lambda n, v: _encode(_replaceField(payload, n, v)),
                                       field, values)),
        labelled("dropped", st.builds(lambda n: _encode(_dropField(payload, n)), field)),
        labelled("unknown", st.builds(lambda k, v: _encode(_replaceField(payload, k, v)),
                                      st.text(min_size=1, max_size=12), values)),
        labelled("number", st.builds(lambda n, t: _withRawValue(payload, n, t), field,
                                     st.sampled_from(JUNK_NUMBER_TEXTS))),
        labelled("nested", st.builds(lambda n, d: _withRawValue(payload, n, _nested(d)), field,
                                     st.sampled_from((2, 31, 33, 500, 5000)))),
        labelled("nested-object", st.builds(
            lambda n, d: _withRawValue(payload, n, _nestedObject(d)), field,
            st.sampled_from((3, 28, 29, 30, 31, 32, 100, 20000)))),
        labelled("duplicate", st.builds(lambda n, v: _duplicateKey(payload, n, v), field,
                                        strings)),
        labelled("duplicate-request", st.builds(
            lambda v, first: _duplicateRequest(payload, v, first),
            st.sampled_from(JUNK_VALUES) | st.builds(lambda n, v: _replaceField(
                payload, n, v)["request"], field, strings), st.booleans())),
        labelled("config", st.builds(lambda p, v: _encode(_bendConfig(payload, p, v)),
                                     configPath, configValues)),
        labelled("lookalike", st.builds(
            lambda n, i: _utf8(_replaceField(payload, n, _pick(lookalikes(request[n]), i))),
            nameField, st.integers(0, 100))),
        labelled("encoding", st.builds(lambda how: _encoded(payload, how), st.sampled_from(
            ("bom", "utf-16", "utf-32", "latin-1-key", "overlong", "nul")))),
        labelled("big", st.builds(lambda k, s: _bigBody(payload, k, s),
                                  st.sampled_from(("string", "keys", "array")),
                                  st.sampled_from((100000, 500000, 1040000)))),
        labelled("key-case", st.builds(lambda n, how: _encode(_recase(payload, n, how)),
                                       st.sampled_from(FIELDS[1:9]),
                                       st.sampled_from(("upper", "title", "lower")))),
        labelled("top-level", st.builds(lambda k, v: _encode({**payload, k: v}),
                                        st.sampled_from(("apiVersion", "kind", "response")),
                                        st.sampled_from(JUNK_VALUES + JUNK_STRINGS[:8]))),
        labelled("damaged", st.builds(_damage, st.just(_encode(payload)),
                                      st.integers(0, 10 ** 6), st.binary(max_size=8))),
        labelled("whole-body", st.sampled_from((
            b"", b"null", b"[]", b'"x"', b"{}", b'{"request": null}', _nested(5000).encode(),
            b"\xff\xfe", b"{" * 100000, b"[" * 1000000, b" " * 1000000))),
    )


def _pick(options, i):
    return options[i % len(options)]


def payloadBodies(payload):
    """A strategy of request bodies (bytes) derived from the valid ``payload`` dict."""
    return payloadCases(payload).map(lambda case: case[1])


def _damage(body, where, insert):
    """Cut the body at a point, or splice bytes into it."""
    where %= len(body) + 1
    return body[:where] + insert + (body[where:] if insert else b"")
