"""Benchmark of project resolution (kibaship_dns01.resolve).

Prints:

1. API round trips per lookup kind, counted on the verified fake client
   (cache hit, first lookup of a cached Challenge whose labelled Order is in
   the Order cache, the same before the watch delivered its Order, cache
   miss for an Issuer and a ClusterIssuer, unknown key, labels only on the
   Certificate);
2. lookup time with 10,000 Challenges in the cache (fake client, so this is
   the resolver's own CPU cost: index lookup, matching, chain cache), and
   the memory of the Challenge cache, the Order cache and the cached owner
   chains (tracemalloc, bytes per object);
3. the same lookups over TLS against the stand-in API server holding the
   10,000 Challenges (loopback latency, including a cluster-wide fallback
   LIST of all of them).

Run: ``python bench/bench_resolve.py [--challenges 10000]``
"""
import argparse
import gc
import statistics
import sys
import time
import tracemalloc

from twisted.internet import defer, task
from twisted.internet.testing import Clock

from kibaship_dns01.kube.client import KubeClient
from kibaship_dns01.resolve import KEY_INDEX, ChallengeQuery, ChallengeResolver
from kibaship_dns01.testing.certmanager import buildChain
from kibaship_dns01.testing.fakekube import FakeKubernetesClient
from kibaship_dns01.testing.kubeapi import StandInAPIServer
from kibaship_dns01.testing.kubestore import KubeStore

from bench_kube_cache import _WireClient  # pages pass through JSON, as from the wire

GROUP, SOLVER = "dns.kibaship.com", "kibaship"
NAMESPACES = 50


def populate(store, count):
    """``count`` Certificates with one Challenge each over ``NAMESPACES`` namespaces."""
    chains = []
    for i in range(count):
        chain = buildChain(namespace="ns-%02d" % (i % NAMESPACES),
                           certificateName="ad-site-%05d-example-com" % i,
                           dnsNames=("site-%05d.example.com" % i,))
        chains.append(chain.addTo(store))
    return chains


def fakeResolver(store):
    client = FakeKubernetesClient(store)
    resolver = ChallengeResolver(client, Clock(), GROUP, SOLVER)
    resolver.startService()
    return client, resolver


def roundTrips(client, resolver, request, default=None):
    """Round trips of one lookup; a lookup waiting for the watch gets its grace."""
    before = len(client.calls)
    d = resolver.resolve(request, default)
    if not d.called:
        resolver._clock.advance(resolver.watchGrace)
    d.addErrback(lambda f: None)
    return len(client.calls) - before, [c.verb for c in client.calls[before:]]


def countRoundTrips():
    print("== API round trips per lookup (fake client) ==")
    store = KubeStore()
    cached = buildChain(namespace="shop").addTo(store)
    onlyCert = buildChain(namespace="plain", copyLabels=False).addTo(store)
    client, resolver = fakeResolver(store)
    rows = [("first lookup, Challenge and its Order cached", cached.request()),
            ("cache hit (chain cached)", cached.request()),
            ("first lookup, labels only on the Certificate", onlyCert.request())]
    for label, request in rows:
        print("  %-56s %d  %s" % (label, *roundTrips(client, resolver, request)))
    # the Order's watch event still on the way: the walk GETs it
    resolver.orders.informer.stopService()
    late = buildChain(namespace="late").addTo(store)
    resolver.informer._upsert(store.getObject(
        "acme.cert-manager.io/v1", "Challenge", "late", late.challenges[0]["metadata"]["name"]))
    print("  %-56s %d  %s" % ("first lookup, Challenge cached, Order not delivered yet",
                              *roundTrips(client, resolver, late.request())))
    # the fake delivers watch events at once: stop the watch so new Challenges stay unseen
    resolver.informer.stopService()
    for name, ns, rns in (("miss, Issuer (resourceNamespace = Challenge's)", "lag1", "lag1"),
                          ("miss, ClusterIssuer, no watch event in time", "lag2", "cert-manager")):
        issuer = {"name": "le", "kind": "Issuer" if ns == rns else "ClusterIssuer",
                  "group": "cert-manager.io"}
        chain = buildChain(namespace=ns, issuerRef=issuer).addTo(store)
        print("  %-56s %d  %s" % ("cache " + name,
                                  *roundTrips(client, resolver, chain.request(
                                      resourceNamespace=rns))))
    unknown = buildChain(namespace="nowhere")
    print("  %-56s %d  %s" % ("unknown key, ClusterIssuer (not found anywhere)",
                              *roundTrips(client, resolver, unknown.request(
                                  resourceNamespace="cert-manager"))))


def timeIt(fn, repeat):
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]


def lookupTimes(count, repeat):
    print("\n== lookup time, %d Challenges cached (fake client) ==" % count)
    store = KubeStore(historyLimit=10)
    start = time.perf_counter()
    chains = populate(store, count)
    print("  populate store: %.1fs" % (time.perf_counter() - start))
    start = time.perf_counter()
    client, resolver = fakeResolver(store)
    print("  cache sync (LIST + trim + index): %.3fs, %d objects"
          % (time.perf_counter() - start, len(resolver.informer)))
    requests = [chains[(i * 7919) % count].request(resourceNamespace="cert-manager")
                for i in range(repeat)]
    for label in ("first lookup (index + Order cache + walk)",
                  "cache hit (index + chain cache)"):
        it = iter(requests)
        med, p99 = timeIt(lambda: resolver.resolve(next(it)), repeat)
        print("  %-42s median %6.1f us, p99 %6.1f us" % (label + ":", med * 1e6, p99 * 1e6))
    queries = iter([ChallengeQuery(r.key, r.dnsName, r.resourceNamespace, GROUP, SOLVER)
                    for r in requests])

    def findOnly():
        query = next(queries)
        return query.pick(resolver.informer.byIndex(KEY_INDEX, query.key))
    med, p99 = timeIt(findOnly, repeat)
    print("  %-42s median %6.1f us, p99 %6.1f us" % ("index lookup + match only:", med * 1e6,
                                                     p99 * 1e6))
    resolver.stopService()
    measureMemory(store, chains)
    return store, chains


def _allocated(before):
    gc.collect()
    return sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))


def measureMemory(store, chains):
    """What the resolver keeps: each cache after its sync (pages pass through
    JSON, as from the wire, so no string is shared with the store), then the
    chains of a first lookup of every Challenge."""
    client = _WireClient(store)
    measured = ChallengeResolver(client, Clock(), GROUP, SOLVER)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    measured.informer.startService()
    challenges = _allocated(before)
    before = tracemalloc.take_snapshot()
    measured.orders.informer.startService()
    orders = _allocated(before)
    before = tracemalloc.take_snapshot()
    for chain in chains:
        measured.resolve(chain.request(resourceNamespace="cert-manager"))
    walked = _allocated(before)
    tracemalloc.stop()
    measured.stopService()
    for what, size, count in (("Challenge cache (trimmed objects + index)", challenges,
                               len(measured.informer)),
                              ("Order cache (CachedOrder per labelled Order)", orders,
                               len(measured.orders.informer)),
                              ("owner chains cached by first lookups", walked,
                               measured.cachedChains)):
        print("  %-46s %5.1f MiB, %4d bytes each (%d)" % (what + ":", size / 2**20,
                                                          size // max(1, count), count))


async def overTheWire(reactor, store, chains, repeat):
    print("\n== over TLS, stand-in API server holding %d Challenges ==" % len(chains))
    server = StandInAPIServer(store=store, reactor=reactor)
    server.start()
    client = KubeClient(server.clientConfig(), reactor)
    resolver = ChallengeResolver(client, reactor, GROUP, SOLVER, lookupTimeout=30.0)
    try:
        start = reactor.seconds()
        resolver.startService()
        await resolver.whenReady()
        print("  cache sync (Challenges and Orders): %.2fs" % (reactor.seconds() - start))
        picks = [chains[(i * 104729) % len(chains)] for i in range(repeat)]

        async def measure(label, requests):
            samples, trips = [], []
            for request in requests:
                mark = len(store.requests)
                t0 = time.perf_counter()
                await resolver.resolve(request)
                samples.append(time.perf_counter() - t0)
                trips.append(sum(1 for verb, _, _ in store.requests[mark:] if verb != "watch"))
            print("  %-42s median %7.2f ms  max %7.2f ms  round trips %s"
                  % (label, statistics.median(samples) * 1e3, max(samples) * 1e3,
                     sorted(set(trips))))

        await measure("first lookup (Order from its cache)", [c.request() for c in picks])
        await measure("cache hit", [c.request() for c in picks])

        def fresh(prefix, n=5, kind="ClusterIssuer"):
            """New chains, each resolved in the reactor turn that created it:
            the watch cannot have delivered it yet."""
            issuer = {"name": "le", "kind": kind, "group": "cert-manager.io"}
            return [buildChain(namespace="%s-%d" % (prefix, i), certificateName="fresh-%d" % i,
                               issuerRef=issuer) for i in range(n)]

        def created(chains, rns=None):
            for chain in chains:
                chain.addTo(store)
                yield chain.request(resourceNamespace=rns)

        await measure("miss, Issuer (namespace LIST)", created(fresh("iss", kind="Issuer")))
        await measure("miss, ClusterIssuer, watch live",
                      created(fresh("live"), "cert-manager"))
        await resolver.informer.stopService()
        await measure("miss, ClusterIssuer, watch down (1s grace)",
                      created(fresh("down", n=3), "cert-manager"))
    finally:
        await resolver.stopService()
        await client.close()
        await server.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--challenges", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--wire-repeat", type=int, default=50)
    args = parser.parse_args(argv)
    countRoundTrips()
    store, chains = lookupTimes(args.challenges, args.repeat)
    task.react(lambda reactor: defer.ensureDeferred(
        overTheWire(reactor, store, chains, args.wire_repeat)))


if __name__ == "__main__":
    sys.exit(main())
