"""A verified in-memory :class:`IKubernetesClient` for unit tests.

It serves a :class:`~kibaship_dns01.testing.kubestore.KubeStore`, so it has
the real resourceVersion, paging, selector and watch semantics; the
Deferreds it returns have already fired (no reactor needed) and watch events
arrive synchronously when a test changes the store.  Every API round trip is
recorded in :attr:`FakeKubernetesClient.calls` so tests can assert how many
requests a code path costs (e.g. a cache miss).
"""
import attr
from twisted.internet import defer
from zope.interface import implementer

from kibaship_dns01.interfaces import IKubernetesClient
from kibaship_dns01.kube.client import collectPages, pagedList
from kibaship_dns01.kube.errors import KubeError, errorFromStatus
from kibaship_dns01.testing.kubestore import KubeStore

#: as many pages as the real client follows by default
MAX_PAGES = 10000


def _likeTheClient(failure, what):
    """Store errors carry the server's Status; name the request like KubeClient does."""
    error = failure.value
    if isinstance(error, KubeError) and error.status is not None:
        raise errorFromStatus(error.code, error.status, what)
    return failure


@attr.s(frozen=True, auto_attribs=True)
class Call:
    """One recorded round trip: ``verb`` is get/list/watch/post."""

    verb: str
    path: str
    params: dict
    body: object = None


@implementer(IKubernetesClient)
class FakeKubernetesClient:
    """:class:`IKubernetesClient` on top of a :class:`KubeStore`.

    :param store: the store to serve; a fresh one when ``None``.
    """

    def __init__(self, store=None):
        self.store = store if store is not None else KubeStore()
        self.calls = []
        self.activeWatches = []

    # --- programming --------------------------------------------------------

    def injectError(self, error, verb=None, path=None, times=1):
        """Fail the next ``times`` matching calls; see :meth:`KubeStore.injectError`."""
        self.store.injectError(error, verb=verb, path=path, times=times)

    def setSubjectAccessReviewHandler(self, fn):
        self.store.setSubjectAccessReviewHandler(fn)

    def setTokenReviewHandler(self, fn):
        self.store.setTokenReviewHandler(fn)

    def countCalls(self, verb=None, path=None):
        """How many round trips matched ``verb`` and (prefix) ``path``."""
        return sum(1 for c in self.calls
                   if (verb is None or c.verb == verb) and (path is None or c.path.startswith(path)))

    # --- IKubernetesClient ---------------------------------------------------

    def _call(self, verb, path, params, fn, body=None):
        self.calls.append(Call(verb, path, dict(params or {}), body))
        what = "%s %s" % ("POST" if verb == "post" else "GET", path)
        return defer.maybeDeferred(fn).addErrback(_likeTheClient, what)

    def get(self, path, params=None):
        return self._call("get", path, params, lambda: self.store.getPath(path, params))

    def list(self, path, params=None, pageItems=None):
        return defer.ensureDeferred(collectPages(self.listPages, path, params,
                                                 pageItems or (lambda page: page["items"])))

    def listPages(self, path, params, onPage):
        """Follow ``continue`` tokens like the real client: one call per page,
        a 410 on a continue page restarts the LIST."""
        def fetch(p):
            return self._call("list", path, p, lambda: self.store.listPath(path, p))
        return defer.ensureDeferred(pagedList(fetch, path, dict(params or {}), onPage,
                                              MAX_PAGES))

    def watch(self, path, resourceVersion, onEvent, params=None):
        params = dict(params or {})
        params.update(watch="1", resourceVersion=str(resourceVersion or ""),
                      allowWatchBookmarks="true")
        handle = {}

        def cancel(d):
            w = handle.get("w")
            if w is not None:
                w.stop()
                self._forget(w)

        done = defer.Deferred(cancel)

        def onEnd():
            self._forget(handle.get("w"))
            if not done.called:
                done.callback(None)

        def start():
            handle["w"] = self.store.watchPath(path, params, onEvent, onEnd)
            if handle["w"].active:
                self.activeWatches.append(handle["w"])

        started = self._call("watch", path, params, start)
        started.addErrback(lambda f: done.called or done.errback(f))
        return done

    def _forget(self, w):
        if w in self.activeWatches:
            self.activeWatches.remove(w)

    def post(self, path, body):
        return self._call("post", path, None, lambda: self.store.postPath(path, body), body)
