"""The floor: a bare Twisted TLS site answering a canned 201 ChallengePayload.

    python bench/floor.py --port P --tls-cert-file tls.crt --tls-private-key-file tls.key \\
        --client-ca-file front-proxy-ca.crt

``bench/present.py`` drives it with the same load generator, in the same run,
as the product: whatever rate the floor reaches is what Twisted, TLS and the
generator allow on this machine, so product/floor says how much of the
machine the product's own work takes.  It is served exactly as the daemon
serves (the same :class:`~kibaship_dns01.api.tls.ReloadingServerTLS`, so the
same TLS options, requesting a client certificate against the same CA names,
behind the same ``TLSMemoryBIOFactory`` listener service), reads the body and
``json.loads`` it, then answers a constant body; no authentication, no access
log, no solver.  It prints one JSON line (``{"port": P}``) once listening.
"""
import argparse
import json
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Site

from kibaship_dns01.api.tls import ReloadingServerTLS
from kibaship_dns01.service import TLSSiteService

CANNED = json.dumps({
    "kind": "ChallengePayload", "apiVersion": "webhook.acme.cert-manager.io/v1alpha1",
    "request": {"uid": "", "action": "Present", "type": "dns-01", "dnsName": "example.com",
                "key": "dDlzkoMWZo5NLYFs8-XpPvEmEGdikSbIOfVu3WNJW84",
                "resourceNamespace": "cert-manager",
                "resolvedFQDN": "_acme-challenge.example.com.", "resolvedZone": "example.com.",
                "allowAmbientCredentials": True},
    "response": {"uid": "", "success": True}}, separators=(",", ":")).encode()


class FloorResource(Resource):
    isLeaf = True

    def render_POST(self, request):
        json.loads(request.content.read())
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/json")
        return CANNED


class QuietSite(Site):
    noisy = False

    def log(self, request):
        """No access log: the floor is the framework's minimum."""


def floorService(reactor, port, certFile, keyFile, clientCAPEM, interface="127.0.0.1"):
    """The floor as a listening service (not started)."""
    tls = ReloadingServerTLS(certFile, keyFile, reactor)
    tls.load()
    tls.setClientCAs([clientCAPEM])
    return TLSSiteService(TCP4ServerEndpoint(reactor, port, interface=interface),
                          QuietSite(FloorResource()), tls)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls-cert-file", required=True)
    p.add_argument("--tls-private-key-file", required=True)
    p.add_argument("--client-ca-file", required=True)
    args = p.parse_args(argv)
    with open(args.client_ca_file, "rb") as f:
        clientCA = f.read()
    svc = floorService(reactor, args.port, args.tls_cert_file, args.tls_private_key_file,
                       clientCA)
    d = svc.startService()
    d.addCallback(lambda _: print(json.dumps({"port": svc.port.getHost().port}), flush=True))
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
