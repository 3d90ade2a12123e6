"""What progress events cost: cache memory and extra API watch traffic.

Run: ``python bench/bench_progress.py [--certificates 1000] [--challenges 10000]``

1. Challenge cache: bytes per Challenge held by the resolver's cache with the
   trim that keeps what progress events read (status, issuer config, times)
   against the same objects trimmed to what the resolver alone needs (what
   the trim kept before progress events).  Realistic objects: cert-manager's
   fields, managedFields, a status with a propagation reason, an issuer config.
2. Certificate cache: bytes per 1,000 labelled Certificates held by the
   watcher's cache (tracemalloc, objects decoded from JSON as from the wire):
   the records it keeps since issue 22, and the trimmed dicts it kept before.
3. Watch traffic (new): bytes the API server sends for the Certificate LIST
   and for one issuance of every Certificate (cert-manager's status writes:
   Issuing, then Ready with the new revision), with the label selector -
   unlabelled Certificates cost nothing.
"""
import argparse
import gc
import json
import sys
import tracemalloc

from twisted.internet.task import Clock

from kibaship_dns01.kube.informer import Informer
from kibaship_dns01.progress.certificates import (
    CERTIFICATES_PATH, certificateRecord, trimCertificate)
from kibaship_dns01.project import PROJECT_LABEL
from kibaship_dns01.resolve import CHALLENGES_PATH, challenges, trimChallenge
from kibaship_dns01.testing import certmanager as cm
from kibaship_dns01.testing.kubestore import KubeStore

from bench_kube_cache import _WireClient  # lists pass through JSON, as from the wire

CONFIG = {"valkey": {"addr": "valkey.kibaship-operator.svc:6379",
                     "passwordSecretRef": {"name": "valkey-auth", "key": "password"}},
          "uiHints": {"audience": "application-domain", "provider": "kibaship"}}


def _managed(manager, subresource=None):
    entry = {"apiVersion": "v1", "fieldsType": "FieldsV1", "manager": manager,
             "operation": "Update", "time": "2026-01-01T00:00:00Z",
             "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}, "f:spec": {".": {}}}}
    if subresource:
        entry["subresource"] = subresource
        entry["fieldsV1"] = {"f:status": {".": {}, "f:conditions": {}, "f:revision": {}}}
    return entry


def resolverOnly(obj):
    """What the trim kept before progress events: no status, config or times."""
    trimmed = trimChallenge(obj)
    trimmed.pop("status", None)
    trimmed["metadata"].pop("creationTimestamp", None)
    webhook = trimmed["spec"].get("solver", {}).get("dns01", {}).get("webhook")
    if webhook and "config" in webhook:
        trimmed["spec"]["solver"] = challenges._sharedWebhook(
            {k: v for k, v in webhook.items() if k != "config"})
    return trimmed


def fill(store, count, labelled=True):
    chains = []
    prefix = "ad-site" if labelled else "platform"
    for i in range(count):
        chain = cm.buildChain(certificateName="%s-%05d-example-com" % (prefix, i),
                              namespace="tenant-%02d" % (i % 50), config=CONFIG,
                              dnsNames=("site-%05d.example.com" % i,),
                              labels=None if labelled else {})
        for obj in chain.objects():
            obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
            obj["metadata"]["managedFields"] = [_managed("cert-manager")]
        challenge = chain.challenges[0]
        challenge["status"].update(presented=True, reason=cm.propagationReason(
            challenge["spec"]["dnsName"]))
        challenge["metadata"]["managedFields"].append(_managed("cert-manager", "status"))
        cert = chain.certificate
        cert["metadata"]["managedFields"].append(_managed("cert-manager", "status"))
        cert["status"] = {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                                          "message": "Certificate is up to date and has not"
                                                     " expired",
                                          "lastTransitionTime": "2026-01-01T00:00:00Z",
                                          "observedGeneration": 1}],
                          "revision": 1, "notBefore": "2026-01-01T00:00:00Z",
                          "notAfter": "2026-04-01T00:00:00Z",
                          "renewalTime": "2026-03-02T00:00:00Z"}
        chain.addTo(store)
        chains.append(chain)
    return chains


def retained(store, path, trim, params=None):
    client = _WireClient(store)
    challenges._SHARED.clear()  # each trim pays for its own shared values
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    informer = Informer(client, path, Clock(), "bench", trim=trim, params=params)
    informer.startService()
    gc.collect()
    size = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    count = len(informer)
    informer.stopService()
    return size, count


def watchBytes(store, chains):
    """Bytes of the labelled Certificate watch during one issuance of each Certificate."""
    sent = []
    store.watchPath(CERTIFICATES_PATH, {"labelSelector": PROJECT_LABEL,
                                        "resourceVersion": str(store.resourceVersion)},
                    lambda kind, obj: sent.append(len(json.dumps({"type": kind, "object": obj}))),
                    lambda: None)
    for chain in chains:
        cert = chain.certificate
        meta = cert["metadata"]
        current = store.getObject("cert-manager.io/v1", "Certificate", meta["namespace"],
                                  meta["name"])
        issuing = dict(current["status"], conditions=current["status"]["conditions"] + [
            {"type": "Issuing", "status": "True", "reason": "Renewing",
             "message": "Renewing certificate as renewal was scheduled at 2026-03-02",
             "lastTransitionTime": "2026-03-02T00:00:00Z", "observedGeneration": 1}])
        store.updateStatus("cert-manager.io/v1", "Certificate", meta["namespace"],
                           meta["name"], issuing, at="2026-03-02T00:00:00Z")
        cm.setCertificateIssued(store, cert, 2, at=1772409600)
    return sum(sent), len(sent)


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--certificates", type=int, default=1000)
    parser.add_argument("--challenges", type=int, default=5000)
    args = parser.parse_args(argv)

    store = KubeStore(historyLimit=10)
    fill(store, args.challenges)
    after, n = retained(store, CHALLENGES_PATH, trimChallenge)
    before, _ = retained(store, CHALLENGES_PATH, resolverOnly)
    print("Challenge cache, %d Challenges: %.0f B/Challenge before (resolver fields only),"
          " %.0f B/Challenge with progress fields (+%.0f B, +%.1f KiB per 1,000)"
          % (n, before / n, after / n, (after - before) / n, (after - before) / n * 1000 / 1024))

    store = KubeStore(historyLimit=10)
    chains = fill(store, args.certificates)
    fill(store, args.certificates // 10, labelled=False)  # unlabelled: never sent
    size, count = retained(store, CERTIFICATES_PATH, certificateRecord,
                           {"labelSelector": PROJECT_LABEL})
    copies, _ = retained(store, CERTIFICATES_PATH, trimCertificate,
                         {"labelSelector": PROJECT_LABEL})
    listed = store.listPath(CERTIFICATES_PATH, {"labelSelector": PROJECT_LABEL})
    listBytes = len(json.dumps(listed))
    print("Certificate cache, %d labelled Certificates: %.0f B/Certificate = %.1f KiB per 1,000"
          " as records (%.0f B/Certificate as the trimmed dicts kept before issue 22, now not"
          " interned; one object as JSON: %d B untrimmed, %d B trimmed)"
          % (count, size / count, size / count * 1000 / 1024, copies / count,
             len(json.dumps(listed["items"][0])), len(json.dumps(trimCertificate(
                 listed["items"][0])))))
    print("Certificate LIST (labelled only): %.1f KiB per 1,000 Certificates, once per relist"
          % (listBytes / count * 1000 / 1024,))
    total, events = watchBytes(store, chains)
    print("Certificate WATCH: %d events for %d issuances = %.1f events and %.1f KiB per"
          " issuance, %.1f KiB per 1,000 issuances"
          % (events, len(chains), events / len(chains), total / len(chains) / 1024,
             total / len(chains) * 1000 / 1024))


if __name__ == "__main__":
    main(sys.argv[1:])
