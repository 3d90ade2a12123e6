"""Decoding is total: any byte string yields a ChallengeRequest or a BadPayload, never a crash."""
import json

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.api import jsonbody
from kibaship_dns01.api.payload import (
    BadPayload, decodeChallengeRequest, encodeResponse, responseBody)

jsonValues = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=20)

KEY = "dDlzkoMWZo5NLYFs8-XpPvEmEGdikSbIOfVu3WNJW84"
VALID = {"uid": "", "action": "Present", "type": "dns-01", "dnsName": "shop.example.com",
         "key": KEY, "resourceNamespace": "cert-manager",
         "resolvedFQDN": "_acme-challenge.shop.example.com.", "resolvedZone": "example.com.",
         "allowAmbientCredentials": True, "config": {"ttl": 60}}


def body(**changes):
    req = {k: v for k, v in dict(VALID, **changes).items() if v is not ...}
    return json.dumps({"request": req}).encode()


FIELDS = ["uid", "action", "type", "dnsName", "key", "resourceNamespace", "resolvedFQDN",
          "resolvedZone", "allowAmbientCredentials", "config"]


class DecodeTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(st.binary())
    def test_anyBytes(self, body):
        try:
            decoded = decodeChallengeRequest(body)
        except BadPayload as e:
            self.assertTrue(str(e), "a refusal always says why")
        else:
            self.assertIn(decoded.action, ("Present", "CleanUp"))

    @settings(max_examples=150, deadline=None)
    @given(st.dictionaries(st.sampled_from(FIELDS), jsonValues))
    def test_anyRequestObject(self, req):
        try:
            decoded = decodeChallengeRequest(json.dumps({"request": req}).encode())
        except BadPayload as e:
            self.assertTrue(str(e))
        else:
            # whatever is accepted is fully typed
            for name in ("dnsName", "key", "resourceNamespace", "resolvedFQDN", "resolvedZone"):
                self.assertIsInstance(getattr(decoded, name), str)
                self.assertTrue(getattr(decoded, name))
            self.assertIn(decoded.action, ("Present", "CleanUp"))
            self.assertIsInstance(decoded.allowAmbientCredentials, bool)

    @settings(max_examples=100, deadline=None)
    @given(uid=st.sampled_from(["", "0b6f3a2e-5c1d-4e8f-9a7b-1c2d3e4f5a6b"]),
           message=st.none() | st.text(), hints=st.dictionaries(st.text(), st.text(), max_size=3))
    def test_responseBodyIsTheEncodedResponse(self, uid, message, hints):
        req = decodeChallengeRequest(body(uid=uid, config={"uiHints": hints}))
        self.assertEqual(responseBody(req, message),
                         json.dumps(encodeResponse(req, message), separators=(",", ":")).encode())

    def test_failureResponseNeverHasEmptyMessage(self):
        req = decodeChallengeRequest(body())
        response = encodeResponse(req, "")["response"]
        self.assertFalse(response["success"])
        self.assertTrue(response["status"]["message"])
        self.assertEqual(encodeResponse(req)["response"], {"uid": "", "success": True})


class FieldRulesTests(SynchronousTestCase):
    """Every known field as cert-manager's challenge controller fills it (issue 14)."""

    def refused(self, raw, *fragments):
        with self.assertRaises(BadPayload) as caught:
            decodeChallengeRequest(raw)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))

    def test_theJunkAFuzzerPublished(self):
        for junk in ("../../etc/passwd", "\u0000", "*.", "_acme-challenge..", "x" * 5000,
                     "\u00e9" * 300, "_acme-challenge.shop.example.com"):
            self.refused(body(resolvedFQDN=junk), "request.resolvedFQDN must be an absolute "
                                                  "DNS name")
        self.refused(body(resolvedFQDN="_acme-challenge.shop.exampel.com."),
                     "request.resolvedFQDN '_acme-challenge.shop.exampel.com.' is not inside "
                     "request.resolvedZone 'example.com.'")
        self.refused(body(resolvedFQDN="x" * 64 + ".example.com."), "a label of 64 characters")
        self.refused(body(resolvedFQDN="a." * 127 + "example.com."), "at most 253")
        self.refused(body(resolvedFQDN="caf\u00e9.example.com."), "must be ASCII", "xn--")

    def test_eachField(self):
        cases = [
            (dict(type=...), "request.type is missing"),
            (dict(type="http-01"), 'request.type must be "dns-01", not \'http-01\''),
            (dict(uid="abc"), "request.uid must be empty or a UUID, not 'abc'"),
            (dict(dnsName="a..b"), "request.dnsName must be a DNS name", "empty label"),
            (dict(dnsName="a.*.example.com"), "request.dnsName", "label '*'"),
            (dict(key=KEY[:-1]), "request.key must be an ACME DNS-01 value (43 base64url"),
            (dict(key=KEY[:-1] + "+"), "request.key must be an ACME DNS-01 value"),
            (dict(resourceNamespace="Cert-Manager"),
             "request.resourceNamespace must be a namespace name"),
            (dict(resolvedZone="example.com"), "request.resolvedZone must be an absolute DNS "
                                               "name; 'example.com' must be an absolute name "
                                               "ending with a dot"),
            (dict(allowAmbientCredentials="yes"),
             "request.allowAmbientCredentials must be a boolean, not a string"),
            (dict(config=[1]), "request.config must be an object, not an array"),
            (dict(key=7), "request.key must be a string, not a number"),
            (dict(action="present"), "request.action must be one of Present, CleanUp"),
        ]
        for changes, *fragments in cases:
            self.refused(body(**changes), *fragments)

    def test_whatCertManagerSendsIsAccepted(self):
        uid = "0b6f3a2e-5c1d-4e8f-9a7b-1c2d3e4f5a6b"
        for changes in (dict(), dict(uid=uid), dict(uid=uid.upper()), dict(config=...),
                        dict(config=None), dict(allowAmbientCredentials=...),
                        dict(dnsName="*.shop.example.com"),
                        dict(resolvedFQDN="_ACME-CHALLENGE.Shop.Example.COM."),
                        dict(resolvedZone="shop.example.com."),
                        dict(dnsName="xn--bcher-kva.example.com",
                             resolvedFQDN="_acme-challenge.xn--bcher-kva.example.com.")):
            req = decodeChallengeRequest(body(**changes))
            self.assertFalse(req.delegated, changes)

    def test_aFollowedCNAMEIsAcceptedAndMarkedDelegated(self):
        req = decodeChallengeRequest(body(resolvedFQDN="shop.acme.example.net.",
                                          resolvedZone="example.net."))
        self.assertTrue(req.delegated)


class HostileJSONTests(SynchronousTestCase):
    """The decoder refuses what would crash later (issue 14, defects 1 and 2)."""

    def refused(self, raw, fragment):
        with self.assertRaises(BadPayload) as caught:
            decodeChallengeRequest(raw)
        self.assertIn(fragment, str(caught.exception))

    def test_deepNestingIsABadRequestNotARecursionError(self):
        self.refused(b"[" * 5000 + b"]" * 5000, "nests arrays/objects 5000 deep; at most 32")
        self.refused(b'{"request": ' + b"[" * 100000, "nests arrays/objects")
        deep = json.dumps({"request": dict(VALID, config={"uiHints": {"a": [[[[1]]]]}})})
        self.assertEqual(jsonbody.nestingDepth(deep.encode()), 8)
        self.assertIsNone(jsonbody.excessDepth(deep.encode()))
        self.assertIsNone(jsonbody.excessDepth(b"[" * 32 + b"]" * 32))
        self.assertEqual(jsonbody.excessDepth(b"[" * 33 + b"]" * 33), 33)
        self.refused(body(config=json.loads("[" * 40 + "]" * 40)), "42 deep")

    def test_bracketsInsideStringsDoNotCount(self):
        text = json.dumps({"a": "[" * 100 + '\\"' + "{" * 100, "b": [[1]]}).encode()
        self.assertEqual(jsonbody.nestingDepth(text), 3)

    def test_loneSurrogatesNameTheField(self):
        self.refused(body(key="\ud800" * 43), "request.key contains a lone UTF-16 surrogate")
        self.refused(body(config={"uiHints": {"tenant": "a\udfff"}}),
                     "request.config.uiHints.tenant contains a lone UTF-16 surrogate")
        self.refused(body(config={"uiHints": {"\udfff": "a"}}),
                     "a key of request.config.uiHints contains a lone")
        self.refused(body(config={"list": ["ok", "\ud83d"]}), "request.config.list[1]")

    def test_pairedSurrogatesAreCharacters(self):
        req = decodeChallengeRequest(body(config={"uiHints": {"tenant": "\U0001f600"}}))
        self.assertEqual(req.config["uiHints"]["tenant"], "\U0001f600")

    def test_numbersJSONCannotCarry(self):
        for text, fragment in ((b"1e400", "too large for a double"), (b"NaN", "NaN"),
                               (b"-Infinity", "-Infinity"), (b"1" * 5000, "not valid JSON")):
            raw = body(uid="").replace(b'"uid": ""', b'"uid": ' + text)
            self.refused(raw, fragment)
