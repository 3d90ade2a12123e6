"""CPU per request of the daemon's own request path, in memory.

``bench/present.py`` measures the product end to end, but on this shared
two-core machine its figures move by tens of percent with the load of other
processes.  This benchmark takes the network, TLS and Valkey out: the real
site, channel, authenticator (front proxy, one client-certificate verification
per connection), authorizer (a cached SubjectAccessReview), decoder, solver,
resolver (the fake API holding Kibaship chains), the real Valkey publisher and
cluster client over an in-memory RESP server (``bench/memvalkey.py``: command
encoding, reply parsing and routing are the daemon's own) and the daemon's JSON
log observer (writing to ``/dev/null``), driven with the exact bytes the
kube-aggregator sends over one kept-alive connection.  It prints CPU microseconds per request
(``time.process_time``), which is stable enough to compare one change with the
next, for retries, fresh Presents and a bare ``twisted.web`` floor that only
parses the body and answers 201.

    python bench/bench_hotpath.py [--requests 20000] [--profile out.prof [--profile-kind fresh]]
"""
import argparse
import cProfile
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402
from twisted.web import resource, server  # noqa: E402

from kibaship_dns01.api.discovery import APIIdentity  # noqa: E402
from kibaship_dns01.api.site import APIResource, APISite  # noqa: E402
from kibaship_dns01.auth.authconfig import makeAuthenticationConfigMap, parseAuthenticationConfig  # noqa: E402
from kibaship_dns01.auth.authn import DelegatingAuthenticator, TokenReviewAuthenticator  # noqa: E402
from kibaship_dns01.auth.authz import DelegatingAuthorizer  # noqa: E402
from kibaship_dns01.auth.peer import PeerCertificates  # noqa: E402
from kibaship_dns01.config import Defaults  # noqa: E402
from kibaship_dns01.credentials import SecretReader  # noqa: E402
from kibaship_dns01.resolve import ChallengeResolver  # noqa: E402
from kibaship_dns01.solver import Solver, TargetFactory  # noqa: E402
from kibaship_dns01.testing import pki  # noqa: E402
from kibaship_dns01.testing.certmanager import numberedChains, projectUUIDs  # noqa: E402
from kibaship_dns01.testing.environment import CERT_MANAGER_USER  # noqa: E402
from kibaship_dns01.testing.fakekube import FakeKubernetesClient  # noqa: E402
from kibaship_dns01.logs import buildObserver  # noqa: E402
from kibaship_dns01.testing.inmemory import MemoryClient, parseResponse, postRequest  # noqa: E402
from kibaship_dns01.valkey.cluster import ClusterClient  # noqa: E402
from kibaship_dns01.valkey.node import Node  # noqa: E402
from kibaship_dns01.valkey.publisher import ValkeyPublisher  # noqa: E402

from bench.memvalkey import MemoryValkey  # noqa: E402

GROUP, SOLVER = "dns.kibaship.com", "kibaship"
PATH = f"/apis/{GROUP}/v1alpha1/{SOLVER}"
CONFIG = {"valkey": {"addr": "valkey.bench.svc:6379"}, "uiHints": {"tenant": "bench"}}
HEADERS = (b"X-Remote-User: " + CERT_MANAGER_USER.encode(),
           b"X-Remote-Group: system:serviceaccounts",
           b"X-Remote-Group: system:serviceaccounts:cert-manager",
           b"X-Remote-Group: system:authenticated",
           b"X-Remote-Extra-Authentication.kubernetes.io%2fpod-name: cert-manager-7d9f-x",
           b"X-Remote-Extra-Authentication.kubernetes.io%2fpod-uid: 5c1d4e8f-0000",
           b"User-Agent: cert-manager-challenges/v1.16.2 (linux/amd64) cert-manager/abc",
           b"Accept: application/json, */*", b"Accept-Encoding: gzip")


class _Floor(resource.Resource):
    isLeaf = True
    ANSWER = b'{"kind":"ChallengePayload","response":{"uid":"","success":true}}'

    def render_POST(self, request):
        json.loads(request.content.read())
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/json")
        return self.ANSWER


def _publisher(clock, valkey):
    """The daemon's publisher, its cluster clients' nodes connected to ``valkey``."""
    def clientFactory(target):
        def node(address):
            return Node(clock, address, client.target,
                        lambda: defer.maybeDeferred(client.target.credentials),
                        endpointFactory=valkey.endpoint)
        client = ClusterClient(clock, target, nodeFactory=node)
        return client
    publisher = ValkeyPublisher(clock, clientFactory=clientFactory)
    publisher.startService()
    return publisher


def _daemonSite(clock, chains, valkey):
    kube = FakeKubernetesClient()
    for chain in chains:
        chain.addTo(kube.store)
    kube.setSubjectAccessReviewHandler(lambda spec: {"allowed": True})
    resolver = ChallengeResolver(kube, clock, GROUP, SOLVER, watchGrace=0)
    resolver.startService()
    ca = pki.makeCA("front-proxy-ca")
    client = pki.clientPair(ca, "front-proxy-client")
    config = parseAuthenticationConfig(makeAuthenticationConfigMap(
        requestHeaderCAPEM=ca.certPEM, allowedNames=("front-proxy-client",)))
    peers = PeerCertificates(connectionOf=lambda r: r.channel, readChain=lambda _: [client.cert])
    authn = DelegatingAuthenticator(lambda: config, TokenReviewAuthenticator(kube, clock),
                                    clock, peers=peers)
    authz = DelegatingAuthorizer(kube, clock)
    solver = Solver(resolver, _publisher(clock, valkey),
                    TargetFactory(SecretReader(kube, clock)), clock, Defaults())
    api = APIResource(APIIdentity(group=GROUP, solver=SOLVER), solver, authenticator=authn,
                      authorizer=authz, clock=clock)
    return APISite(api, logSuccesses=False, reactor=clock)  # as the daemon at --log-level info


def _bodies(chains, action="Present"):
    for chain in chains:
        request = chain.request(resourceNamespace="cert-manager", action=action, config=CONFIG)
        yield json.dumps({"apiVersion": "webhook.acme.cert-manager.io/v1alpha1",
                          "kind": "ChallengePayload", "request": request.raw},
                         separators=(",", ":")).encode()


class _Exchange:
    """One kept-alive connection to ``site``; Valkey's answers are delivered (``pump``)
    before the response is read, as a later reactor turn would."""

    def __init__(self, site, pump):
        self.client, self.pump = MemoryClient(site), pump

    def send(self, raw):
        self.client.protocol.dataReceived(raw)
        self.pump()
        written = self.client.transport.value()
        self.client.transport.clear()
        return written


def _drive(site, requests, pump=lambda: 0, profile=None, prime=()):
    """CPU µs per request for ``requests`` (raw bytes), on one kept-alive connection,
    after ``prime`` (untimed)."""
    client = _Exchange(site, pump)
    for raw in (*prime, requests[0]):
        first = parseResponse(client.send(raw))
        assert first.code == 201 and b'"success":true' in first.body, first
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    started = time.process_time()
    for raw in requests[1:]:
        answer = client.send(raw)
    elapsed = time.process_time() - started
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    response = parseResponse(answer)
    assert response.code == 201 and b'"success":true' in response.body, response
    return elapsed * 1e6 / (len(requests) - 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--profile", help="cProfile one run into this file")
    p.add_argument("--profile-kind", choices=("retry", "fresh"), default="retry",
                   help="which run --profile covers (retry)")
    args = p.parse_args(argv)
    n = args.requests

    def profiled(kind):
        return args.profile if args.profile_kind == kind else None

    clock = MemoryReactorClock()
    clock.advance(time.time())  # certificates are judged at the clock's time
    retryChains = numberedChains("retry", 0, 100, projectUUIDs(10))
    freshChains = numberedChains("fresh", 0, n, projectUUIDs(10))
    valkey = MemoryValkey()
    site = _daemonSite(clock, retryChains + freshChains, valkey)
    # the daemon's log observer at its default level, writing where nothing is kept
    globalLogBeginner.beginLoggingTo([buildObserver(open(os.devnull, "w"), "json", "info")],
                                     redirectStandardIO=False, discardBuffer=True)
    extra = HEADERS
    retry = [postRequest(PATH, b, extraHeaders=extra) for b in _bodies(retryChains)]
    retries = [retry[i % len(retry)] for i in range(n + 1)]
    floor = server.Site(_Floor(), reactor=clock)
    rows = [("floor: twisted.web parses the body, answers 201",
             _drive(floor, retries[:n])),
            ("retry Present (duplicate of an appended challenge)",
             _drive(site, retries, valkey.pump, profiled("retry"), prime=retry)),
            ("fresh Present (first time: owner walk, full append)",
             _drive(site, [postRequest(PATH, b, extraHeaders=extra)
                           for b in _bodies(freshChains)], valkey.pump, profiled("fresh")))]
    print(f"bench_hotpath: {n} requests per row, CPU µs per request (in memory: no TLS, "
          f"no sockets; fake API, in-memory Valkey, JSON log to /dev/null)")
    for label, us in rows:
        print(f"  {label:55s} {us:8.1f} µs   ({us / rows[0][1]:.2f}x floor)")


if __name__ == "__main__":
    main()
