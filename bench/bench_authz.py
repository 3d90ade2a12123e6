"""Benchmark of delegated authorization: how many reviews 1,000 requests cost.

Prints:

1. SubjectAccessReview calls for 1,000 identical authorized requests made one
   after another, and for 1,000 made concurrently (all in flight before the
   API answers), on the verified fake client with a fake clock; and the
   authorizer's own cost per cached decision;
2. the same over real TLS: 1,000 identical authorized requests (bearer token
   and front-proxy certificate) through the daemon's site, its real
   authenticator and authorizer, the real Kubernetes client and the stand-in
   API server, with the real clock (so a run longer than the 10 s TTL shows
   the refreshes production would make).

Run: ``/work/venv/bin/python bench/bench_authz.py [--requests 1000] [--concurrency 20]``
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.testing import Clock  # noqa: E402

from kibaship_dns01.auth.authconfig import makeAuthenticationConfigMap, tlsClientCAListener  # noqa: E402
from kibaship_dns01.auth.authz import SAR_PATH, DelegatingAuthorizer  # noqa: E402
from kibaship_dns01.auth.factory import buildAuth  # noqa: E402
from kibaship_dns01.auth.types import AUTHENTICATED, RequestAttributes, UserInfo  # noqa: E402
from kibaship_dns01.kube.client import KubeClient  # noqa: E402
from kibaship_dns01.testing import httpclient, pki  # noqa: E402
from kibaship_dns01.testing.fakekube import FakeKubernetesClient  # noqa: E402
from kibaship_dns01.testing.fakesolver import RecordingSolver  # noqa: E402
from kibaship_dns01.testing.kubeapi import StandInAPIServer  # noqa: E402
from tests.support import startTLSSite  # noqa: E402
from tests.test_auth_authz import HeldClient  # noqa: E402

CERT_MANAGER = "system:serviceaccount:cert-manager:cert-manager"
TOKEN = "bench-token"
ATTRIBUTES = RequestAttributes(
    user=UserInfo(name=CERT_MANAGER, groups=("system:serviceaccounts", AUTHENTICATED)),
    verb="create", path="/apis/dns.kibaship.com/v1alpha1/kibaship", resourceRequest=True,
    apiGroup="dns.kibaship.com", apiVersion="v1alpha1", resource="kibaship")


def allowAll(client):
    client.setSubjectAccessReviewHandler(lambda spec: {"allowed": True})
    return client


def fakeClientNumbers(n):
    fake = allowAll(FakeKubernetesClient())
    authorizer = DelegatingAuthorizer(fake, Clock())
    for _ in range(n):
        authorizer.authorize(ATTRIBUTES)
    sequential = fake.countCalls("post", SAR_PATH)

    fake = allowAll(FakeKubernetesClient())
    held = HeldClient(fake)
    authorizer = DelegatingAuthorizer(held, Clock())
    pending = [authorizer.authorize(ATTRIBUTES) for _ in range(n)]
    inFlight = len(held.held)
    held.release()
    allowed = sum(1 for d in pending if d.result.allowed)
    concurrent = fake.countCalls("post", SAR_PATH)

    start = time.perf_counter()
    for _ in range(n * 10):
        authorizer.authorize(ATTRIBUTES)
    perCall = (time.perf_counter() - start) / (n * 10)
    print("1. fake client, fake clock (%d identical authorized requests)" % n)
    print("   sequential: %d SubjectAccessReview call(s)" % sequential)
    print("   concurrent: %d call(s) in flight, %d SubjectAccessReview call(s), %d/%d allowed"
          % (inFlight, concurrent, allowed, n))
    print("   cached decision: %.1f us per authorize()" % (perCall * 1e6))


class Harness:
    """The stand-in API server, the site and the real auth stack, on the real clock."""

    async def start(self, reactor, stack):
        self.frontProxyCA, self.clientCA = pki.makeCA("front-proxy-ca"), pki.makeCA("client-ca")
        self.api = StandInAPIServer(reactor=reactor)
        await self.api.start()
        stack.append(self.api.stop)
        self.api.store.put(makeAuthenticationConfigMap(
            requestHeaderCAPEM=self.frontProxyCA.certPEM, clientCAPEM=self.clientCA.certPEM))
        self.api.setSubjectAccessReviewHandler(lambda spec: {"allowed": True})
        self.api.setTokenReviewHandler(lambda token: {
            "authenticated": token == TOKEN, "user": {"username": CERT_MANAGER}})
        self.kube = KubeClient(self.api.clientConfig(), reactor, requestTimeout=10)
        stack.append(self.kube.close)
        self.auth = buildAuth(self.kube, reactor)
        self.auth.watcher.startService()
        stack.append(self.auth.watcher.stopService)
        await self.auth.watcher.whenLoaded()
        self.site = await startTLSSite(_Cleanups(stack), RecordingSolver(), self.auth.authenticator,
                                       self.auth.authorizer, readiness=[self.auth.watcher])
        self.auth.watcher.addListener(tlsClientCAListener(self.site.tls.setClientCAs))

    async def run(self, reactor, n, concurrency, label, **kw):
        sars, reviews = len(self.api.subjectAccessReviews), len(self.api.tokenReviews)
        codes = {}
        sem = defer.DeferredSemaphore(concurrency)

        async def one():
            r = await httpclient.request(reactor, "GET", self.site.url("/apis"),
                                         caPEM=self.site.ca.certPEM, **kw)
            codes[r.code] = codes.get(r.code, 0) + 1

        start = time.monotonic()
        await defer.gatherResults([sem.run(lambda: defer.ensureDeferred(one()))
                                   for _ in range(n)])
        elapsed = time.monotonic() - start
        print("   %-22s %d requests in %.1fs (%.0f/s, %d concurrent), codes %s: "
              "%d SubjectAccessReview(s), %d TokenReview(s)"
              % (label, n, elapsed, n / elapsed, concurrency, codes,
                 len(self.api.subjectAccessReviews) - sars, len(self.api.tokenReviews) - reviews))


class _Cleanups:
    """What ``startTLSSite`` needs of a test case: ``addCleanup``."""

    def __init__(self, stack):
        self._stack = stack

    def addCleanup(self, fn, *args):
        self._stack.append(lambda: fn(*args))


async def overTLS(reactor, n, concurrency):
    stack = []
    try:
        h = Harness()
        await h.start(reactor, stack)
        print("2. real TLS, stand-in API server, real clock")
        await h.run(reactor, n, concurrency, "bearer token:",
                    headers={"Authorization": ["Bearer " + TOKEN]})
        await h.run(reactor, n, concurrency, "front-proxy certificate:",
                    clientPair=pki.clientPair(h.frontProxyCA, "front-proxy-client"),
                    headers={"X-Remote-User": ["jane"]})
    finally:
        while stack:
            await defer.maybeDeferred(stack.pop())


def main(reactor, argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args(argv)
    fakeClientNumbers(args.requests)
    return defer.ensureDeferred(overTLS(reactor, args.requests, args.concurrency))


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
