"""The DNS responder beside a bare Twisted Names server, driven by ``dnsperf``.

    python bench/bench_dns.py                  # 10 s runs, 2 rounds
    python bench/bench_dns.py --quick          # 3 s runs, 1 round
    python bench/bench_dns.py --profile out    # then py-spy on the product at saturation

Each server runs in its own process (this script with ``--serve``), with its
own reactor, on a loopback port, and prints one JSON line once listening:

* **product**: :class:`~kibaship_dns01.dns.service.DNSService` over the
  :class:`~kibaship_dns01.testing.fakedelegation.FakeDelegationStore` holding
  one key at one label, with the rate limiter on (at a rate it never reaches:
  its bookkeeping is paid, nothing is dropped); plus a plain HTTP site on the
  same reactor for the flood figure below;
* **floor**: ``twisted.names.server.DNSServerFactory`` with one authority
  answering one fixed TXT for every name, over Twisted's own UDP port: what
  Twisted Names costs without any of the product's checks.

The floor and the ``dnsperf`` driving are ``bench/dnsload.py``, shared with
``bench/drills/dns.py``.  ``dnsperf`` (Debian) asks both for the same TXT name, interleaved, in the
same run: closed loop at saturation (answers/s) and open loop at
``--rate`` queries/s (p50/p99 from ``dnsperf -v``'s per-query latencies).
The ratio product/floor is the figure to quote (target >= 0.5).

**HTTP under a DNS flood** (``--no-flood`` skips it): the product again,
once with its :class:`~kibaship_dns01.dns.udp.BoundedUDPPort` (16 datagrams
per reactor turn, and 8, 32 and 128 beside it) and once on Twisted's stock ``udp.Port`` (256 KiB per
turn), each saturated by ``dnsperf`` while this script GETs the HTTP site on
the same reactor one request at a time: the GET latency says how long the
DNS flood holds the reactor from other sockets (the HTTPS Presents, in the
daemon).
"""
import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import dnsload  # bench/ (this script's directory) is on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET_RATIO = 0.5
#: kibaship_dns01.dns.udp.DEFAULT_PACKETS_PER_READ (not imported: the driver stays light)
DEFAULT_PACKETS_PER_READ = 16


# --- the servers (run with --serve, in their own process) -------------------
def _fixture():
    sys.path.insert(0, ROOT)
    from tests.dnssupport import KEY, LABEL, ZONE
    return ZONE, LABEL, KEY


def serveProduct(udpKind):
    """``udpKind``: ``stock`` (Twisted's udp.Port) or the datagrams per read of ours."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from kibaship_dns01.dns.answers import Responder
    from kibaship_dns01.dns.ratelimit import ResponseRateLimiter
    from kibaship_dns01.dns.service import DNSService
    from kibaship_dns01.dns.udp import DNSDatagramProtocol
    from kibaship_dns01.testing.fakedelegation import FakeDelegationStore

    zone, label, key = _fixture()
    store = FakeDelegationStore(reactor)
    store.calls = collections.deque(maxlen=0)  # a test's call log would grow for ever here
    store.add(label, key, 10 ** 9)
    responder = Responder(zone, store, reactor)
    limiter = ResponseRateLimiter(reactor, rate=10 ** 9, burst=10 ** 9)
    if udpKind == "stock":  # the same protocol on Twisted's own udp.Port
        udp = reactor.listenUDP(0, DNSDatagramProtocol(responder, reactor, limiter),
                                interface="127.0.0.1")
        port = udp.getHost().port
    else:
        service = DNSService(responder, "127.0.0.1", 0, reactor, limiter=limiter,
                             packetsPerRead=int(udpKind))
        service.startService()
        port = service.port

    class OK(Resource):
        isLeaf = True

        def render_GET(self, request):
            return b"ok"

    site = Site(OK())
    site.log = lambda request: None
    http = reactor.listenTCP(0, site, interface="127.0.0.1")
    return reactor, {"port": port, "http": http.getHost().port,
                     "name": "%s.%s" % (label, zone.name)}


def serveFloor():
    zone, label, key = _fixture()
    reactor, info = dnsload.serveFloor(key)
    return reactor, dict(info, name="%s.%s" % (label, zone.name))


def serve(kind):
    reactor, info = serveProduct(kind.partition("-")[2] or DEFAULT_PACKETS_PER_READ) \
        if kind.startswith("product") else serveFloor()
    print(json.dumps(info), flush=True)
    reactor.run()


# --- the driver ---------------------------------------------------------------
class Server:
    """One ``--serve`` process, stopped (by its pid) on exit."""

    def __init__(self, kind):
        self.kind = kind
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", kind],
                                        stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.info = json.loads(self.process.stdout.readline())

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


def dnsperf(server, queryFile, seconds, rate=None, verbose=False, outstanding=100):
    args = dnsload.dnsperfArgs(server.info["port"], queryFile, seconds, rate=rate,
                               verbose=verbose, outstanding=outstanding)
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return dnsload.parseDnsperf(out, verbose)


def httpUnderFlood(server, queryFile, seconds):
    """GET the server's HTTP site one request at a time while dnsperf floods it."""
    url = "http://127.0.0.1:%d/" % (server.info["http"],)
    latencies, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            started = time.perf_counter()
            urllib.request.urlopen(url, timeout=10).read()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        flood = dnsperf(server, queryFile, seconds, outstanding=500)
    finally:
        stop.set()
        thread.join()
    latencies.sort()
    return {"qps": flood["qps"], "gets": len(latencies),
            "p50": dnsload.percentile(latencies, 50), "p99": dnsload.percentile(latencies, 99),
            "max": latencies[-1] if latencies else None}


def profile(server, queryFile, seconds, out):
    """py-spy on the product while dnsperf saturates it; the summary of bench/pyspy.py."""
    from pyspy import findPySpy, formatSummary
    spy = subprocess.Popen([findPySpy(), "record", "--nonblocking", "--function", "--format",
                            "raw", "--rate", "200", "-o", out, "--pid", str(server.process.pid),
                            "--duration", str(seconds)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    dnsperf(server, queryFile, seconds - 1)
    spy.wait(seconds + 30)
    summary = formatSummary(out, title="the product at saturation (py-spy, %d s)" % seconds)
    with open(out + ".summary.txt", "w") as f:
        f.write(summary)
    print(summary)


def _ms(value):
    return "%.2f" % (value * 1000)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="3 s runs, one round")
    parser.add_argument("--no-flood", action="store_true", help="skip HTTP under a DNS flood")
    parser.add_argument("--profile", metavar="OUT", help="py-spy the product at saturation")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve)
    if args.quick:
        args.seconds, args.rounds = 3, 1
    sys.stdout.reconfigure(line_buffering=True)  # a full run takes minutes: show rows as they come
    servers = {kind: Server(kind) for kind in ("product", "floor")}
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("%s TXT\n" % (servers["product"].info["name"],))
        queryFile = f.name
        load = os.getloadavg()[0]
        results = {kind: {"sat": [], "rate": []} for kind in servers}
        for _ in range(args.rounds):
            for kind, server in servers.items():
                results[kind]["sat"].append(dnsperf(server, queryFile, args.seconds))
            for kind, server in servers.items():
                results[kind]["rate"].append(dnsperf(server, queryFile, args.seconds,
                                                     rate=args.rate, verbose=True))
        report(results, args, load)
        if args.profile:
            profile(servers["product"], queryFile, args.seconds, args.profile)
    finally:
        for server in servers.values():
            server.stop()
    if not args.no_flood:
        floodReport(queryFile, args.seconds)
    os.unlink(queryFile)


def report(results, args, load):
    print("DNS responder vs bare Twisted Names, dnsperf over UDP loopback, %d s runs x %d "
          "rounds (load average %.2f at the start)" % (args.seconds, args.rounds, load))
    print("%-30s %12s %8s %10s %10s %8s" % ("server", "answers/s", "lost", "p50 ms",
                                           "p99 ms", "lost"))
    print("%-30s %12s %8s %21s" % ("", "(saturation)", "", "(at %d queries/s)" % args.rate))
    best = {}
    for kind, label in (("product", "product (DNSService)"), ("floor", "floor (twisted.names)")):
        sat, rate = results[kind]["sat"], results[kind]["rate"]
        best[kind] = max(r["qps"] for r in sat)
        print("%-30s %12.0f %8d %10s %10s %8d" % (
            label, best[kind], sum(r["lost"] for r in sat),
            _ms(statistics.median(r["p50"] for r in rate)),
            _ms(statistics.median(r["p99"] for r in rate)), sum(r["lost"] for r in rate)))
    ratio = best["product"] / best["floor"]
    print("product/floor at saturation: %.2f (target >= %.1f: %s)" % (
        ratio, TARGET_RATIO, "met" if ratio >= TARGET_RATIO else "NOT MET"))


def _floodRuns():
    """``(server kind, label)`` of each flood run: our port at several budgets, Twisted's."""
    runs = [("product-%d" % n, "BoundedUDPPort, %d per turn%s" % (
        n, " (default)" if n == DEFAULT_PACKETS_PER_READ else ""))
        for n in sorted({8, DEFAULT_PACKETS_PER_READ, 32, 128})]
    return runs + [("product-stock", "Twisted udp.Port, 256 KiB per turn")]


def floodReport(queryFile, seconds):
    print("HTTP GET on the same reactor while dnsperf saturates the product's UDP port:")
    print("%-40s %10s %6s %8s %8s %8s" % ("UDP port", "answers/s", "GETs", "p50 ms", "p99 ms",
                                          "max ms"))
    for kind, label in _floodRuns():
        server = Server(kind)
        try:
            figures = httpUnderFlood(server, queryFile, seconds)
        finally:
            server.stop()
        print("%-40s %10.0f %6d %8s %8s %8s" % (
            label, figures["qps"], figures["gets"], _ms(figures["p50"]), _ms(figures["p99"]),
            _ms(figures["max"])))


if __name__ == "__main__":
    main()
