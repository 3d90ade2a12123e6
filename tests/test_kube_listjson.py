"""A LIST page decoded item by item (kibaship_dns01.kube.listjson)."""
import json

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.kube.listjson import ListDecodeError, decodeList

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


def page(items, **extra):
    return dict({"kind": "ChallengeList", "apiVersion": "acme.cert-manager.io/v1",
                 "metadata": {"resourceVersion": "7", "continue": "abc"}, "items": items}, **extra)


class DecodeListTests(SynchronousTestCase):
    def test_itemsAreDecodedAsTheyAreRead(self):
        """The metadata is there at once; an item is decoded only when reached, so a
        malformed one fails where it stands, after the good ones before it."""
        body = (b'{"kind":"ChallengeList","metadata":{"continue":"abc"},"items":'
                b'[{"a":1}, {"b":[2]} ,{"c":oops}]}')
        decoded = decodeList(body)
        self.assertEqual(decoded["metadata"], {"continue": "abc"})
        items = decoded["items"]
        self.assertEqual(next(items), {"a": 1})
        self.assertEqual(next(items), {"b": [2]})
        self.assertRaises(ValueError, next, items)

    def test_keysAfterTheItemsArriveOnceTheyAreRead(self):
        decoded = decodeList(json.dumps(page([{"x": 1}], extra={"y": 2})).encode())
        self.assertEqual(list(decoded["items"]), [{"x": 1}])
        self.assertEqual(decoded["extra"], {"y": 2})

    def test_itemsBeforeTheMetadataAreDecodedAtOnce(self):
        body = b'{"items":[{"a":1}],"metadata":{"continue":"c"}}'
        self.assertEqual(decodeList(body), {"items": [{"a": 1}], "metadata": {"continue": "c"}})

    def test_emptyAndMissingItems(self):
        self.assertEqual(list(decodeList(b'{"metadata":{},"items":[ ]}')["items"]), [])
        self.assertEqual(decodeList(b'{"metadata":{},"items":null}'),
                         {"metadata": {}, "items": None})
        self.assertEqual(decodeList(b' {"metadata":{}} '), {"metadata": {}})

    def test_notAnObject(self):
        self.assertEqual(decodeList(b"[1, 2]"), [1, 2])
        self.assertRaises(ValueError, decodeList, b"{nope}")
        with self.assertRaises(ListDecodeError) as raised:
            decodeList(b'{"metadata":{} "items":[]}')
        self.assertIn("expected ',' or '}' at offset 15, found '\"items\":[]}'",
                      str(raised.exception))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(_JSON, max_size=5), st.dictionaries(st.text(max_size=4), _JSON, max_size=2),
           st.sampled_from([None, 0, 2]))
    def test_sameAsJSONLoads(self, items, extra, indent):
        """Whatever the List holds and however it is spaced, read whole it is what
        ``json.loads`` gives."""
        obj = page(items)
        obj.update({"x-" + k: v for k, v in extra.items()})
        decoded = decodeList(json.dumps(obj, indent=indent).encode())
        if not isinstance(decoded["items"], list):
            decoded["items"] = list(decoded["items"])
        self.assertEqual(decoded, obj)
