"""Memory of the Challenge and Order caches and API round trips of a cache miss.

Run: ``python bench/bench_kube_cache.py [--counts 1000,10000]``

1. Memory: an :class:`Informer` syncs N realistic Challenges (cert-manager's
   fields, finalizer, ownerReference and the two ``managedFields`` entries
   the API server adds) and holds them indexed by ``spec.key``; tracemalloc
   measures what stays allocated after the sync (objects + index), without
   trim and with the trim the resolver needs.  Objects come through a JSON
   round trip, as from the wire, so no string is shared with the store.
   The same for the resolver's cache of N Kibaship Orders
   (:class:`~kibaship_dns01.resolve.orders.OrderCache`: label selector,
   :func:`~kibaship_dns01.resolve.orders.trimOrder`), Orders as cert-manager
   writes them (a 2 KiB CSR in ``spec.request``, status with the
   authorization, ``managedFields``).
2. Round trips: what a miss costs when the cache has not seen a Challenge
   yet and the caller falls back to direct reads (SPEC §6): LIST the
   request's namespace, then all namespaces (ClusterIssuer case), then GET
   Order, CertificateRequest and Certificate — counted at the stand-in API
   server over real TLS with :class:`KubeClient` (500 items per page).
"""
import argparse
import gc
import json
import sys
import tracemalloc

from twisted.internet import defer, task
from twisted.internet.task import Clock

from kibaship_dns01.kube.client import KubeClient
from kibaship_dns01.kube.informer import Informer
from kibaship_dns01.kube.trim import keepFields
from kibaship_dns01.project import PROJECT_LABEL
from kibaship_dns01.resolve.orders import ORDERS_PATH, OrderCache, trimOrder
from kibaship_dns01.testing.certmanager import buildChain
from kibaship_dns01.testing.fakekube import FakeKubernetesClient
from kibaship_dns01.testing.kubeapi import StandInAPIServer
from kibaship_dns01.testing.kubestore import KubeStore

CHALLENGES = "/apis/acme.cert-manager.io/v1/challenges"

RESOLVER_TRIM = keepFields(
    "metadata.uid", "metadata.ownerReferences", "spec.key", "spec.dnsName", "spec.wildcard",
    "spec.solver.dns01.webhook.groupName", "spec.solver.dns01.webhook.solverName",
    "spec.issuerRef")


def _managedFields(obj):
    """The two entries kube-apiserver records for cert-manager's writes."""
    owner = obj["metadata"]["ownerReferences"][0]["uid"]
    spec = {"f:%s" % k: {} for k in obj["spec"]}
    spec["."] = {}
    return [
        {"apiVersion": "acme.cert-manager.io/v1", "fieldsType": "FieldsV1", "manager": "cert-manager-challenges",
         "operation": "Update", "time": "2024-05-01T10:00:00Z",
         "fieldsV1": {"f:metadata": {"f:finalizers": {".": {}, 'v:"finalizer.acme.cert-manager.io"': {}},
                                     "f:ownerReferences": {".": {}, 'k:{"uid":"%s"}' % owner: {}}},
                      "f:spec": spec}},
        {"apiVersion": "acme.cert-manager.io/v1", "fieldsType": "FieldsV1", "manager": "cert-manager-challenges",
         "operation": "Update", "subresource": "status", "time": "2024-05-01T10:00:05Z",
         "fieldsV1": {"f:status": {".": {}, "f:presented": {}, "f:processing": {}, "f:reason": {},
                                   "f:state": {}}}}]


def _realisticOrder(order, challenge):
    """What cert-manager's Order holds beyond the test chain's: the CSR, the
    ACME URLs and authorization in the status, the API server's managedFields."""
    meta, spec = order["metadata"], order["spec"]
    spec["request"] = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0K" + "QUJD" * 512
    spec["commonName"] = challenge["spec"]["dnsName"]
    order["status"] = {
        "state": "pending", "url": "https://acme-v02.api.letsencrypt.org/acme/order/1/2",
        "finalizeURL": "https://acme-v02.api.letsencrypt.org/acme/finalize/1/2",
        "authorizations": [{
            "url": challenge["spec"]["authorizationURL"], "identifier": spec["commonName"],
            "initialState": "pending", "wildcard": False,
            "challenges": [{"type": t, "token": challenge["spec"]["token"],
                            "url": challenge["spec"]["url"]} for t in ("dns-01", "http-01")]}]}
    meta["managedFields"] = [
        {"apiVersion": "acme.cert-manager.io/v1", "fieldsType": "FieldsV1",
         "manager": "cert-manager-certificaterequests-issuer-acme", "operation": "Update",
         "time": "2024-05-01T10:00:00Z",
         "fieldsV1": {"f:metadata": {"f:annotations": {".": {}}, "f:labels": {".": {}},
                                     "f:ownerReferences": {".": {}}},
                      "f:spec": {".": {}, "f:commonName": {}, "f:dnsNames": {},
                                 "f:issuerRef": {".": {}, "f:group": {}, "f:kind": {},
                                                 "f:name": {}}, "f:request": {}}}},
        {"apiVersion": "acme.cert-manager.io/v1", "fieldsType": "FieldsV1",
         "manager": "cert-manager-orders", "operation": "Update", "subresource": "status",
         "time": "2024-05-01T10:00:02Z",
         "fieldsV1": {"f:status": {".": {}, "f:authorizations": {}, "f:finalizeURL": {},
                                   "f:state": {}, "f:url": {}}}}]


def fillStore(store, count, namespaces=50):
    """``count`` Challenges (one chain per Challenge) spread over ``namespaces``."""
    chains = []
    for i in range(count):
        chain = buildChain(certificateName="ad-shop-%05d-example-com" % i,
                           namespace="tenant-%02d" % (i % namespaces),
                           dnsNames=("shop-%05d.example.com" % i,))
        for obj in chain.objects():
            if obj["kind"] == "Challenge":
                obj["metadata"]["managedFields"] = _managedFields(obj)
            elif obj["kind"] == "Order":
                _realisticOrder(obj, chain.challenges[0])
            store.add(obj)
        chains.append(chain)
    return chains


class _WireClient(FakeKubernetesClient):
    """Pages pass through JSON, like objects decoded from the wire."""

    def list(self, path, params=None, pageItems=None):
        keep = pageItems or (lambda page: page["items"])
        return super().list(path, params, lambda page: keep(json.loads(json.dumps(page))))

    def listPages(self, path, params, onPage):
        return super().listPages(path, params, lambda page, first: onPage(
            json.loads(json.dumps(page)), first))


def _retained(store, makeInformer, count):
    """Bytes an informer made by ``makeInformer(client)`` keeps after syncing ``count`` objects."""
    client = _WireClient(store)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    informer = makeInformer(client)
    informer.startService()
    assert informer.hasSynced and len(informer) == count, (len(informer), count)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    retained = sum(s.size_diff for s in after.compare_to(before, "filename"))
    informer.stopService()
    return retained


def measureCache(store, count, trim):
    return _retained(store, lambda client: Informer(
        client, CHALLENGES, Clock(), "bench", trim=trim,
        indexers={"byKey": lambda o: [o["spec"]["key"]]}), count)


def measureOrders(store, count, trimmed=True):
    """The resolver's Order cache (label selector, trim), or the same Orders untrimmed."""
    def make(client):
        if trimmed:
            return OrderCache(client, Clock()).informer
        return Informer(client, ORDERS_PATH, Clock(), "bench", params={
            "labelSelector": PROJECT_LABEL})
    return _retained(store, make, count)


async def measureMiss(reactor, count):
    """Round trips of the direct-read fallback, at the stand-in API server."""
    server = StandInAPIServer(reactor=reactor)
    chains = fillStore(server.store, count)
    await server.start()
    client = KubeClient(server.clientConfig(), reactor=reactor, pageSize=500)
    try:
        chain = chains[-1]
        challenge = chain.challenges[0]
        results = {}
        start = len(server.store.requests)
        ns = challenge["metadata"]["namespace"]
        found = await client.list("/apis/acme.cert-manager.io/v1/namespaces/%s/challenges" % ns)
        assert any(c["spec"]["key"] == challenge["spec"]["key"] for c in found["items"])
        results["LIST resourceNamespace (Issuer case)"] = len(server.store.requests) - start
        mark = len(server.store.requests)
        everything = await client.list(CHALLENGES)
        assert len(everything["items"]) == count
        results["LIST all namespaces (ClusterIssuer case)"] = len(server.store.requests) - mark
        mark = len(server.store.requests)
        order = chain.order["metadata"]
        await client.get("/apis/acme.cert-manager.io/v1/namespaces/%s/orders/%s" % (ns, order["name"]))
        req = chain.certificateRequest["metadata"]
        await client.get("/apis/cert-manager.io/v1/namespaces/%s/certificaterequests/%s" % (ns, req["name"]))
        cert = chain.certificate["metadata"]
        await client.get("/apis/cert-manager.io/v1/namespaces/%s/certificates/%s" % (ns, cert["name"]))
        results["GET Order + CertificateRequest + Certificate"] = len(server.store.requests) - mark
        return results
    finally:
        await client.close()
        await server.stop()


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="1000,10000")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    sample = fillStore(KubeStore(), 1)[0]
    print("one Challenge as JSON: %d bytes untrimmed, %d bytes trimmed"
          % (len(json.dumps(sample.challenges[0])),
             len(json.dumps(RESOLVER_TRIM(sample.challenges[0])))))
    print("one Order as JSON: %d bytes untrimmed, %d bytes trimmed"
          % (len(json.dumps(sample.order)), len(json.dumps(trimOrder(sample.order).asObject()))))
    for count in counts:
        store = KubeStore(historyLimit=10)
        fillStore(store, count)
        for what, full, trimmed in (
                ("Challenges", measureCache(store, count, None),
                 measureCache(store, count, RESOLVER_TRIM)),
                ("Orders", measureOrders(store, count, trimmed=False),
                 measureOrders(store, count))):
            print("cache of %6d %-10s: untrimmed %6.0f B/object = %7.1f KiB per 1,000 | "
                  "trimmed %6.0f B/object = %7.1f KiB per 1,000"
                  % (count, what, full / count, full / count * 1000 / 1024,
                     trimmed / count, trimmed / count * 1000 / 1024))
    task.react(lambda reactor: defer.ensureDeferred(_misses(reactor, counts)))


async def _misses(reactor, counts):
    for count in counts:
        results = await measureMiss(reactor, count)
        for what, trips in results.items():
            print("cache miss with %6d Challenges: %-45s %d round trip(s)" % (count, what, trips))


if __name__ == "__main__":
    main(sys.argv[1:])
