"""The in-memory API store and the verified fake client built on it."""
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kibaship_dns01.interfaces import IKubernetesClient
from kibaship_dns01.kube import errors
from kibaship_dns01.testing.fakekube import FakeKubernetesClient
from kibaship_dns01.testing.kubestore import KubeStore, parseLabelSelector

CHALLENGES = "/apis/acme.cert-manager.io/v1/challenges"


def challenge(name, ns="ns", key=None, labels=None):
    md = {"name": name, "namespace": ns}
    if labels:
        md["labels"] = labels
    return {"apiVersion": "acme.cert-manager.io/v1", "kind": "Challenge", "metadata": md,
            "spec": {"key": key or "key-" + name}}


def configmap(name, ns="kube-system"):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": {"a": "b"}}


def names(listResult):
    return [i["metadata"]["name"] for i in listResult["items"]]


class MutationTests(SynchronousTestCase):
    def setUp(self):
        self.store = KubeStore()

    def test_everyChangeBumpsTheGlobalVersion(self):
        rv0 = self.store.resourceVersion
        a = self.store.add(challenge("a"))
        b = self.store.add(configmap("b"))
        self.assertEqual(int(a["metadata"]["resourceVersion"]), rv0 + 1)
        self.assertEqual(int(b["metadata"]["resourceVersion"]), rv0 + 2)
        a2 = self.store.update(a)
        self.assertEqual(int(a2["metadata"]["resourceVersion"]), rv0 + 3)
        self.assertEqual(a2["metadata"]["uid"], a["metadata"]["uid"])
        gone = self.store.delete(a2)
        self.assertEqual(int(gone["metadata"]["resourceVersion"]), rv0 + 4)
        self.assertIsNone(self.store.getObject("acme.cert-manager.io/v1", "Challenge", "ns", "a"))

    def test_addExistingIsAlreadyExists(self):
        self.store.add(challenge("a"))
        e = self.assertRaises(errors.Conflict, self.store.add, challenge("a"))
        self.assertEqual(e.reason, "AlreadyExists")

    def test_staleUpdateConflicts(self):
        a = self.store.add(challenge("a"))
        self.store.update(a)
        e = self.assertRaises(errors.Conflict, self.store.update, a)
        self.assertIn("has been modified", e.message)

    def test_deleteMissingIsNotFound(self):
        e = self.assertRaises(errors.NotFound, self.store.delete,
                              "acme.cert-manager.io/v1", "Challenge", "ns", "nope")
        self.assertEqual(e.status["details"], {"name": "nope", "group": "acme.cert-manager.io",
                                               "kind": "challenges"})

    def test_unknownKindAndMissingNamespaceAreRefused(self):
        self.assertRaises(ValueError, self.store.add, {"apiVersion": "v1", "kind": "Pod",
                                                       "metadata": {"name": "p", "namespace": "x"}})
        self.assertRaises(ValueError, self.store.add, {"apiVersion": "v1", "kind": "Secret",
                                                       "metadata": {"name": "s"}})

    def test_everyRequiredKindIsServed(self):
        for apiVersion, kind, path in [
                ("v1", "ConfigMap", "/api/v1/namespaces/n/configmaps/o"),
                ("v1", "Secret", "/api/v1/namespaces/n/secrets/o"),
                ("acme.cert-manager.io/v1", "Challenge", "/apis/acme.cert-manager.io/v1/namespaces/n/challenges/o"),
                ("acme.cert-manager.io/v1", "Order", "/apis/acme.cert-manager.io/v1/namespaces/n/orders/o"),
                ("cert-manager.io/v1", "CertificateRequest", "/apis/cert-manager.io/v1/namespaces/n/certificaterequests/o"),
                ("cert-manager.io/v1", "Certificate", "/apis/cert-manager.io/v1/namespaces/n/certificates/o")]:
            self.store.add({"apiVersion": apiVersion, "kind": kind,
                            "metadata": {"name": "o", "namespace": "n"}})
            self.assertEqual(self.store.getPath(path)["kind"], kind)


class ListTests(SynchronousTestCase):
    def setUp(self):
        self.store = KubeStore()
        for i in range(5):
            self.store.add(challenge("c%d" % i, ns="a" if i % 2 else "b", labels={"n": str(i)}))

    def test_clusterWideAndNamespaced(self):
        self.assertEqual(len(self.store.listPath(CHALLENGES)["items"]), 5)
        ns = self.store.listPath("/apis/acme.cert-manager.io/v1/namespaces/a/challenges")
        self.assertEqual(names(ns), ["c1", "c3"])
        self.assertEqual(ns["kind"], "ChallengeList")
        self.assertEqual(ns["metadata"]["resourceVersion"], str(self.store.resourceVersion))

    def test_pagingIsAConsistentSnapshot(self):
        first = self.store.listPath(CHALLENGES, {"limit": "2"})
        self.assertEqual(len(first["items"]), 2)
        self.assertEqual(first["metadata"]["remainingItemCount"], 3)
        self.store.add(challenge("zz", ns="z"))
        self.store.delete(challenge("c4", ns="b"))
        rest = self.store.listPath(CHALLENGES, {"limit": "10", "continue": first["metadata"]["continue"]})
        self.assertNotIn("continue", rest["metadata"])
        self.assertEqual(rest["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"])
        self.assertEqual(sorted(names(first) + names(rest)), ["c0", "c1", "c2", "c3", "c4"])

    def test_newListSeesChangesAPagedOneDoesNot(self):
        """Continue pages share their first page's snapshot; a new LIST, after a
        change, is a new snapshot."""
        first = self.store.listPath(CHALLENGES, {"limit": "3"})
        self.store.delete(challenge("c0", ns="b"))
        self.store.add(challenge("c9", ns="a"))
        rest = self.store.listPath(CHALLENGES, {"limit": "3",
                                                "continue": first["metadata"]["continue"]})
        self.assertEqual(sorted(names(first) + names(rest)), ["c0", "c1", "c2", "c3", "c4"])
        self.assertEqual(sorted(names(self.store.listPath(CHALLENGES))),
                         ["c1", "c2", "c3", "c4", "c9"])

    def test_continueWithOtherSelectorFiltersItsOwnSnapshot(self):
        first = self.store.listPath(CHALLENGES, {"limit": "2"})
        rest = self.store.listPath(CHALLENGES, {"labelSelector": "n in (3,4)",
                                                "continue": first["metadata"]["continue"]})
        self.assertEqual(names(rest), ["c4"])

    def test_itemsAreCopiesUnlessAskedNot(self):
        listed = self.store.listPath(CHALLENGES)
        listed["items"][0]["spec"]["key"] = "changed"
        self.assertNotEqual(self.store.listPath(CHALLENGES)["items"][0]["spec"]["key"], "changed")
        shared = self.store.listPath(CHALLENGES, copies=False)
        self.assertEqual(shared, self.store.listPath(CHALLENGES))
        self.store.add(configmap("cm"))
        self.assertNotIn("kind", self.store.listPath("/api/v1/configmaps",
                                                     copies=False)["items"][0])
        self.assertEqual(self.store.getObject("v1", "ConfigMap", "kube-system", "cm")["kind"],
                         "ConfigMap")

    def test_expiredContinueIsGone(self):
        first = self.store.listPath(CHALLENGES, {"limit": "2"})
        self.store.add(challenge("x"))
        self.store.compact()
        e = self.assertRaises(errors.Gone, self.store.listPath, CHALLENGES,
                              {"continue": first["metadata"]["continue"]})
        self.assertEqual(e.reason, "Expired")

    def test_garbageContinueIsBadRequest(self):
        e = self.assertRaises(errors.KubeError, self.store.listPath, CHALLENGES, {"continue": "%%%"})
        self.assertEqual(e.code, 400)

    def test_selectors(self):
        self.assertEqual(names(self.store.listPath(CHALLENGES, {"labelSelector": "n in (1,2)"})),
                         ["c1", "c2"])
        self.assertEqual(names(self.store.listPath(CHALLENGES, {"labelSelector": "n!=0,n"})),
                         ["c1", "c3", "c2", "c4"])
        self.assertEqual(names(self.store.listPath(CHALLENGES, {"fieldSelector": "metadata.name=c3"})),
                         ["c3"])
        self.assertEqual(names(self.store.listPath(
            CHALLENGES, {"fieldSelector": "metadata.namespace=a,metadata.name!=c1"})), ["c3"])

    def test_unsupportedFieldLabel(self):
        e = self.assertRaises(errors.KubeError, self.store.listPath, CHALLENGES,
                              {"fieldSelector": "spec.key=x"})
        self.assertEqual((e.code, e.message), (400, "field label not supported: spec.key"))

    def test_coreListItemsHaveNoKind(self):
        """Typed lists (ConfigMapList) omit kind/apiVersion per item; CRD lists keep them."""
        self.store.add(configmap("cm"))
        cms = self.store.listPath("/api/v1/configmaps")
        self.assertEqual(cms["kind"], "ConfigMapList")
        self.assertNotIn("kind", cms["items"][0])
        self.assertIn("kind", self.store.listPath(CHALLENGES)["items"][0])

    def test_unknownPath(self):
        e = self.assertRaises(errors.NotFound, self.store.listPath, "/apis/x/v1/things")
        self.assertEqual(e.message, "the server could not find the requested resource")

    @settings(max_examples=40, deadline=None)
    @given(st.integers(min_value=1, max_value=6),
           st.lists(st.tuples(st.sampled_from(["add", "delete", "update"]), st.integers(0, 9)),
                    max_size=8))
    def test_pagesEqualSnapshotDespiteChanges(self, limit, changes):
        store = KubeStore()
        for i in range(0, 10, 2):
            store.add(challenge("c%d" % i, ns="n%d" % (i % 3)))
        expected = sorted(names(store.listPath(CHALLENGES)))
        got, token = [], None
        while True:
            params = {"limit": str(limit)}
            if token:
                params["continue"] = token
            page = store.listPath(CHALLENGES, params)
            got += names(page)
            token = page["metadata"].get("continue")
            if not token:
                break
            for op, i in changes:
                obj = challenge("c%d" % i, ns="n%d" % (i % 3))
                exists = store.getObject("acme.cert-manager.io/v1", "Challenge", obj["metadata"]["namespace"],
                                         obj["metadata"]["name"])
                if op == "add" and not exists:
                    store.add(obj)
                elif op == "delete" and exists:
                    store.delete(obj)
                elif op == "update" and exists:
                    store.put(obj)
        self.assertEqual(sorted(got), expected)


class WatchTests(SynchronousTestCase):
    def setUp(self):
        self.store = KubeStore(historyLimit=5)
        self.events, self.ended = [], []

    def watch(self, path=CHALLENGES, **params):
        return self.store.watchPath(path, params, lambda t, o: self.events.append((t, o)),
                                    lambda: self.ended.append(True))

    def test_replayFromVersion(self):
        a = self.store.add(challenge("a"))
        rv = a["metadata"]["resourceVersion"]
        self.store.add(challenge("b"))
        self.store.delete(a)
        self.watch(resourceVersion=rv)
        self.assertEqual([(t, o["metadata"]["name"]) for t, o in self.events],
                         [("ADDED", "b"), ("DELETED", "a")])
        self.assertEqual(self.events[-1][1]["metadata"]["resourceVersion"], str(self.store.resourceVersion))

    def test_tooOldVersionIsExpiredErrorEvent(self):
        a = self.store.add(challenge("a"))
        for i in range(6):
            self.store.put(challenge("b%d" % i))
        self.watch(resourceVersion=a["metadata"]["resourceVersion"])
        (kind, status), = self.events
        self.assertEqual(kind, "ERROR")
        self.assertEqual((status["kind"], status["code"], status["reason"]), ("Status", 410, "Expired"))
        self.assertIn("too old resource version", status["message"])
        self.assertEqual(self.ended, [True])
        self.assertEqual(self.store.watchCount, 0)

    def test_versionZeroSendsSyntheticAdds(self):
        self.store.add(challenge("a"))
        self.watch(resourceVersion="0")
        self.store.add(challenge("b"))
        self.assertEqual([(t, o["metadata"]["name"]) for t, o in self.events], [("ADDED", "a"), ("ADDED", "b")])

    def test_namespaceAndSelectorTransitions(self):
        self.watch("/apis/acme.cert-manager.io/v1/namespaces/ns/challenges",
                   resourceVersion=str(self.store.resourceVersion), labelSelector="app=x")
        self.store.add(challenge("other", ns="elsewhere", labels={"app": "x"}))
        self.store.add(challenge("a", labels={"app": "y"}))
        self.store.put(challenge("a", labels={"app": "x"}))
        self.store.put(challenge("a", labels={"app": "x", "more": "1"}))
        self.store.put(challenge("a", labels={"app": "z"}))
        self.assertEqual([t for t, _ in self.events], ["ADDED", "MODIFIED", "DELETED"])

    def test_bookmarksOnlyWhenAsked(self):
        self.watch(resourceVersion=str(self.store.resourceVersion))
        self.watch(resourceVersion=str(self.store.resourceVersion), allowWatchBookmarks="true")
        self.store.add(configmap("c"))
        self.store.bookmark()
        self.assertEqual([t for t, _ in self.events], ["BOOKMARK"])
        self.assertEqual(self.events[0][1], {"kind": "Challenge", "apiVersion": "acme.cert-manager.io/v1",
                                             "metadata": {"resourceVersion": str(self.store.resourceVersion)}})

    def test_stopDetaches(self):
        w = self.watch(resourceVersion=str(self.store.resourceVersion))
        w.stop()
        self.store.add(challenge("a"))
        self.store.closeWatches()
        self.assertEqual((self.events, self.ended), ([], []))

    def test_expireWatches(self):
        self.watch(resourceVersion=str(self.store.resourceVersion))
        self.store.expireWatches()
        self.assertEqual(self.events[0][1]["code"], 410)
        self.assertEqual(self.ended, [True])

    def test_badVersion(self):
        self.assertRaises(errors.KubeError, self.watch, resourceVersion="abc")


class WatchListTests(SynchronousTestCase):
    """``sendInitialEvents`` answered as kube-apiserver's watch cache does."""

    def setUp(self):
        self.store = KubeStore()
        self.events, self.ended = [], []

    def watch(self, stream=False, **params):
        params.setdefault("allowWatchBookmarks", "true")
        return self.store.watchPath(CHALLENGES, params, lambda t, o: self.events.append((t, o)),
                                    lambda: self.ended.append(True), stream=stream)

    def summary(self):
        return [(t, o["metadata"].get("name") or o["metadata"].get("annotations"))
                for t, o in self.events]

    def test_initialEventsThenTheEndBookmarkThenChanges(self):
        for name in "ba":
            self.store.add(challenge(name))
        self.watch(sendInitialEvents="true", resourceVersionMatch="NotOlderThan")
        rv = self.store.resourceVersion
        self.store.add(challenge("c"))
        self.assertEqual(self.summary(), [
            ("ADDED", "b"), ("ADDED", "a"),
            ("BOOKMARK", {"k8s.io/initial-events-end": "true"}), ("ADDED", "c")])
        self.assertEqual(self.events[2][1], {
            "kind": "Challenge", "apiVersion": "acme.cert-manager.io/v1",
            "metadata": {"resourceVersion": str(rv),
                         "annotations": {"k8s.io/initial-events-end": "true"}}})

    def test_noEndBookmarkWithoutAllowWatchBookmarks(self):
        self.store.add(challenge("a"))
        self.watch(sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                   allowWatchBookmarks="false")
        self.assertEqual(self.summary(), [("ADDED", "a")])

    def test_anOldVersionStillGetsTheCurrentState(self):
        """NotOlderThan a compacted version: the current state is not older."""
        self.store.add(challenge("a"))
        self.store.compact()
        self.watch(sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                   resourceVersion="1")
        self.assertEqual([t for t, _ in self.events], ["ADDED", "BOOKMARK"])
        self.assertEqual(self.ended, [])

    def test_streamedInitialEventsGoOutAtTheConsumersPace(self):
        """``stream=True``: the consumer drains; changes meanwhile wait, in order,
        behind the bookmark (and are never sent twice)."""
        for name in "abc":
            self.store.add(challenge(name))
        w = self.watch(stream=True, sendInitialEvents="true",
                       resourceVersionMatch="NotOlderThan")
        self.assertEqual(self.events, [])
        self.store.delete(challenge("a"))               # after the snapshot
        self.assertFalse(w.drainInitial(2))
        self.assertEqual(self.summary(), [("ADDED", "a"), ("ADDED", "b")])
        self.assertFalse(w.drainInitial(2))
        self.assertEqual(self.summary()[2:], [
            ("ADDED", "c"), ("BOOKMARK", {"k8s.io/initial-events-end": "true"})])
        self.assertTrue(w.drainInitial(2))
        self.assertEqual(self.summary()[2:], [
            ("ADDED", "c"), ("BOOKMARK", {"k8s.io/initial-events-end": "true"}),
            ("DELETED", "a")])
        self.store.add(challenge("d"))
        self.assertEqual(self.summary()[-1], ("ADDED", "d"))

    def test_validatedAsListOptions(self):
        """The combinations kube-apiserver refuses, with its 422 Status."""
        cases = [
            ({"sendInitialEvents": "true"},
             "resourceVersionMatch: Forbidden: sendInitialEvents requires setting"
             " resourceVersionMatch to NotOlderThan"),
            ({"resourceVersionMatch": "NotOlderThan"},
             "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch"
             " unless sendInitialEvents is provided")]
        for params, message in cases:
            with self.assertRaises(errors.KubeError) as raised:
                self.watch(**params)
            status = raised.exception.status
            self.assertEqual((status["code"], status["reason"]), (422, "Invalid"))
            self.assertEqual(status["message"], 'ListOptions.meta.k8s.io "" is invalid: ' + message)
            self.assertEqual(status["details"]["kind"], "ListOptions")
        self.assertEqual(self.store.watchCount, 0)

    def test_featureGateOffRefusesIt(self):
        self.store.watchList = "off"
        with self.assertRaises(errors.KubeError) as raised:
            self.watch(sendInitialEvents="true", resourceVersionMatch="NotOlderThan")
        self.assertEqual(raised.exception.status["code"], 422)
        self.assertIn("sendInitialEvents is forbidden for watch unless the WatchList feature gate"
                      " is enabled", raised.exception.status["message"])

    def test_anOlderServerIgnoresTheParameters(self):
        """Before 1.27 the parameters are unknown: a plain watch, synthetic ADDED
        events for a watch from "now", and no bookmark."""
        self.store.watchList = "ignored"
        self.store.add(challenge("a"))
        self.watch(sendInitialEvents="true", resourceVersionMatch="NotOlderThan")
        self.assertEqual(self.summary(), [("ADDED", "a")])


class ReviewTests(SynchronousTestCase):
    def setUp(self):
        self.store = KubeStore()

    def test_subjectAccessReview(self):
        self.store.setSubjectAccessReviewHandler(lambda spec: {"allowed": spec["user"] == "alice"})
        spec = {"user": "alice", "groups": ["g"], "resourceAttributes": {"verb": "create"}}
        out = self.store.postPath("/apis/authorization.k8s.io/v1/subjectaccessreviews", {"spec": spec})
        self.assertEqual(out["kind"], "SubjectAccessReview")
        self.assertEqual(out["apiVersion"], "authorization.k8s.io/v1")
        self.assertEqual(out["status"], {"allowed": True})
        self.assertEqual(self.store.subjectAccessReviews, [spec])

    def test_invalidSubjectAccessReview(self):
        e = self.assertRaises(errors.KubeError, self.store.postPath,
                              "/apis/authorization.k8s.io/v1/subjectaccessreviews", {"spec": {"user": "a"}})
        self.assertEqual((e.code, e.reason), (422, "Invalid"))

    def test_tokenReview(self):
        self.store.setTokenReviewHandler(
            lambda t: {"authenticated": True, "user": {"username": "u"}} if t == "good" else
            {"authenticated": False})
        path = "/apis/authentication.k8s.io/v1/tokenreviews"
        self.assertTrue(self.store.postPath(path, {"spec": {"token": "good"}})["status"]["authenticated"])
        self.assertFalse(self.store.postPath(path, {"spec": {"token": "bad"}})["status"]["authenticated"])
        self.assertEqual(self.store.tokenReviews, ["good", "bad"])
        e = self.assertRaises(errors.KubeError, self.store.postPath, path, {"spec": {}})
        self.assertEqual(e.code, 400)

    def test_handlerErrorsPropagate(self):
        def deny(spec):
            raise errors.Forbidden("nope", status=errors.makeStatus(403, "Forbidden", "nope"))
        self.store.setTokenReviewHandler(deny)
        self.assertRaises(errors.Forbidden, self.store.postPath,
                          "/apis/authentication.k8s.io/v1/tokenreviews", {"spec": {"token": "t"}})

    def test_injectedErrorsMatchVerbAndPath(self):
        self.store.injectError(503, verb="get", path="/api/v1", times=2)
        self.store.add(configmap("c"))
        path = "/api/v1/namespaces/kube-system/configmaps/c"
        self.store.listPath("/api/v1/configmaps")
        self.assertRaises(errors.Unavailable, self.store.getPath, path)
        self.assertRaises(errors.Unavailable, self.store.getPath, path)
        self.assertEqual(self.store.getPath(path)["metadata"]["name"], "c")


class LabelSelectorTests(SynchronousTestCase):
    def test_grammar(self):
        sel = parseLabelSelector("a=1,b!=2,c,!d,e in (x, y),f notin (z)")
        self.assertTrue(sel({"a": "1", "c": "", "e": "y", "b": "3"}))
        self.assertFalse(sel({"a": "1", "c": "", "e": "y", "d": "0"}))
        self.assertFalse(sel({"a": "1", "c": "", "e": "q"}))
        self.assertFalse(sel({"a": "1", "c": "", "e": "x", "f": "z"}))

    def test_garbage(self):
        self.assertRaises(errors.KubeError, parseLabelSelector, "a in b")
        self.assertRaises(errors.KubeError, parseLabelSelector, "=b")
        self.assertRaises(errors.KubeError, parseLabelSelector, "!a=b")


class FakeClientTests(SynchronousTestCase):
    def setUp(self):
        self.fake = FakeKubernetesClient()
        self.store = self.fake.store

    def test_verified(self):
        self.assertTrue(verifyObject(IKubernetesClient, self.fake))

    def test_listFollowsPagesAndCountsRoundTrips(self):
        for i in range(5):
            self.store.add(challenge("c%d" % i))
        result = self.successResultOf(self.fake.list(CHALLENGES, {"limit": "2"}))
        self.assertEqual(len(result["items"]), 5)
        self.assertNotIn("continue", result["metadata"])
        self.assertEqual(self.fake.countCalls("list"), 3)

    def test_pageItemsSeesEachPage(self):
        for i in range(5):
            self.store.add(challenge("c%d" % i))
        pages = []
        result = self.successResultOf(self.fake.list(CHALLENGES, {"limit": "2"}, lambda page: (
            pages.append(names(page)) or [o["metadata"]["name"] for o in page["items"]])))
        self.assertEqual(pages, [["c0", "c1"], ["c2", "c3"], ["c4"]])
        self.assertEqual(result["items"], ["c0", "c1", "c2", "c3", "c4"])

    def test_errorsNameTheRequest(self):
        f = self.failureResultOf(self.fake.get(CHALLENGES.replace("/challenges", "/namespaces/n/challenges/x")),
                                 errors.NotFound)
        self.assertIn("GET /apis/acme.cert-manager.io/v1/namespaces/n/challenges/x", f.value.message)

    def test_injectedError(self):
        self.fake.injectError(errors.APITimeout("slow"), verb="post")
        self.failureResultOf(self.fake.post("/apis/authentication.k8s.io/v1/tokenreviews",
                                            {"spec": {"token": "t"}}), errors.APITimeout)

    def test_watchDeliversAndEnds(self):
        seen = []
        d = self.fake.watch(CHALLENGES, str(self.store.resourceVersion), lambda t, o: seen.append(t))
        self.store.add(challenge("a"))
        self.store.bookmark()
        self.assertNoResult(d)
        self.store.closeWatches()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(seen, ["ADDED", "BOOKMARK"])

    def test_watchCancelDetaches(self):
        d = self.fake.watch(CHALLENGES, str(self.store.resourceVersion), lambda t, o: None)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.store.watchCount, 0)

    def test_watchRequestErrorFailsDeferred(self):
        d = self.fake.watch("/apis/nothing/v1/things", "1", lambda t, o: None)
        self.failureResultOf(d, errors.NotFound)

    def test_postCreates(self):
        out = self.successResultOf(self.fake.post("/api/v1/namespaces/x/secrets",
                                                  {"metadata": {"name": "s"}, "data": {}}))
        self.assertEqual((out["kind"], out["metadata"]["namespace"]), ("Secret", "x"))
