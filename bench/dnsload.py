"""What ``bench/bench_dns.py`` and ``bench/drills/dns.py`` share: ``dnsperf`` and the floor.

    python bench/dnsload.py --floor KEY     # the floor; prints {"port": N} once listening

* **The floor**: ``twisted.names.server.DNSServerFactory`` with one authority
  answering one fixed TXT (``KEY``) for every name, on Twisted's own UDP
  port: what Twisted Names costs without any of the product's checks (no
  zone, no rate limiting, no EDNS or 0x20 handling, no store, no metrics).
  It runs in a process of its own (this script), on a loopback port.
* **dnsperf** (Debian package ``dnsperf``): :func:`dnsperfArgs` builds its
  command line, :func:`parseDnsperf` reads its report (and, with ``-v``, the
  latency of every query).  Running it is the caller's business: the bench
  blocks on it, the drill spawns it from its reactor.

Nothing here imports Twisted at module level: a driver stays light.
"""
import json
import re
import shutil
import sys

#: the floor's TTL, the product's TXT TTL (docs/dns.md)
FLOOR_TTL = 10

_STATISTIC = {"sent": (r"Queries sent:\s+(\d+)", int),
              "completed": (r"Queries completed:\s+(\d+)", int),
              "lost": (r"Queries lost:\s+(\d+)", int),
              "qps": (r"Queries per second:\s+([\d.]+)", float),
              "runtime": (r"Run time \(s\):\s+([\d.]+)", float)}
_RCODES = re.compile(r"Response codes:[ \t]*(.*)")
_RCODE = re.compile(r"([A-Z0-9]+) (\d+) \(")


class DnsperfError(RuntimeError):
    """dnsperf failed or printed no report."""


def findDnsperf():
    path = shutil.which("dnsperf")
    if path is None:
        raise SystemExit("dnsperf is not installed (Debian package dnsperf)")
    return path


def dnsperfArgs(port, queryFile, seconds, rate=None, verbose=False, outstanding=100,
                server="127.0.0.1", source=None, clients=1, timeout=2):
    """dnsperf's command line: ``queryFile`` (``name type`` lines, cycled) for ``seconds``
    against ``server:port``, at most ``outstanding`` queries waiting for an answer
    (closed loop at that concurrency), at most ``rate`` queries/s when given (open
    loop), from ``source`` (a local address: which network the server sees),
    over ``clients`` sockets; a query unanswered after ``timeout`` s is lost."""
    args = [findDnsperf(), "-s", server, "-p", str(port), "-d", queryFile, "-l", str(seconds),
            "-q", str(outstanding), "-t", str(timeout), "-c", str(clients)]
    if source:
        args += ["-a", source]
    if rate:
        args += ["-Q", str(rate)]
    if verbose:
        args.append("-v")
    return args


def parseDnsperf(out, verbose=False):
    """dnsperf's report as ``{"sent", "completed", "lost", "qps", "runtime", "rcodes"}``
    (``rcodes``: ``{"NOERROR": n, ...}``); with ``verbose``, also ``p50``/``p99`` (seconds)
    and ``latencies`` (how many answered lines carried one)."""
    figures = {}
    for name, (pattern, kind) in _STATISTIC.items():
        found = re.search(pattern, out)
        if found is None:
            raise DnsperfError("no %r in dnsperf's output:\n%s" % (name, out[-2000:]))
        figures[name] = kind(found.group(1))
    codes = _RCODES.search(out)
    figures["rcodes"] = {code: int(n) for code, n in _RCODE.findall(codes.group(1))} \
        if codes else {}
    if verbose:
        latencies = sorted(_latencies(out))
        figures.update(p50=percentile(latencies, 50), p99=percentile(latencies, 99),
                       latencies=len(latencies))
    return figures


def _latencies(out):
    """The seconds at the end of ``-v``'s ``> RCODE name type seconds`` lines (a lost
    query's line, ``> T name type``, carries none)."""
    for line in out.splitlines():
        if line.startswith("> "):
            try:
                yield float(line.rsplit(None, 1)[-1])
            except ValueError:
                continue


def percentile(values, p):
    """The ``p``-th percentile (0-100) of sorted ``values``; NaN when there are none."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p / 100))]


# --- the floor ------------------------------------------------------------------

def floorArgv(key):
    """The command that runs the floor answering ``key``."""
    return [sys.executable, __file__, "--floor", key]


def serveFloor(key, interface="127.0.0.1"):
    """Listen; :return: ``(reactor, {"port": N})``."""
    from twisted.internet import defer, reactor
    from twisted.names import common, dns, server

    class FixedTXT(common.ResolverBase):
        """Answers every query with the one TXT, as an authority would."""

        def _lookup(self, name, cls, type, timeout):
            record = dns.RRHeader(name, dns.TXT, dns.IN, FLOOR_TTL,
                                  dns.Record_TXT(key.encode(), ttl=FLOOR_TTL), auth=True)
            return defer.succeed(([record], [], []))

    factory = server.DNSServerFactory(authorities=[FixedTXT()])
    factory.noisy = False
    udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface=interface)
    return reactor, {"port": udp.getHost().port}


def main(argv):
    if len(argv) != 2 or argv[0] != "--floor":
        raise SystemExit("usage: python bench/dnsload.py --floor KEY")
    reactor, info = serveFloor(argv[1])
    print(json.dumps(info), flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
