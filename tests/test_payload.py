"""Decoding is total: any byte string yields a ChallengeRequest or a BadPayload, never a crash."""
import json

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.api.payload import BadPayload, decodeChallengeRequest, encodeResponse

jsonValues = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=20)

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

    def test_failureResponseNeverHasEmptyMessage(self):
        req = decodeChallengeRequest(json.dumps({"request": {
            "action": "Present", "dnsName": "a", "key": "k", "resourceNamespace": "n",
            "resolvedFQDN": "f.", "resolvedZone": "z."}}).encode())
        response = encodeResponse(req, "")["response"]
        self.assertFalse(response["success"])
        self.assertTrue(response["status"]["message"])
        self.assertEqual(encodeResponse(req)["response"], {"uid": "", "success": True})
