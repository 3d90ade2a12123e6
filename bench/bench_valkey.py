"""Benchmark the Valkey publisher against a local six-node cluster it starts.

Measures idempotent appends (``ValkeyPublisher.appendEvent``: EVALSHA of the
append script, every call a new idempotency key, projects spread over all
primaries) sequentially and with N concurrent callers, with p50/p99 latency,
optionally with ``minReplicas=1`` (each append also WAITs for a replica).
Then, on the same cluster in the same run, ``valkey-benchmark --cluster``
with a plain ``XADD {tag}:events * f v`` (valkey-benchmark gives each client
a tag owned by its node, so it too spreads over all primaries), and prints
the ratio of the two rates.  The append script does GET + INCR + XADD + SET
per call, so a ratio well below 1 is expected; the number to watch is how
it moves over time.

    /work/venv/bin/python bench/bench_valkey.py [--sequential 2000]
        [--concurrent 10000] [--clients 50] [--projects 30] [--no-durable]
"""
import argparse
import csv
import io
import subprocess
import sys
import time
import uuid

from twisted.internet import defer, task

from kibaship_dns01.testing.valkeycluster import ValkeyCluster, inThread
from kibaship_dns01.valkey import ValkeyPublisher


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Run:
    """Counts appends and per-call latencies for one scenario."""

    def __init__(self, publisher, target, projects):
        self.publisher, self.target, self.projects = publisher, target, projects
        self.latencies = []
        self.next = 0

    async def one(self):
        i, self.next = self.next, self.next + 1
        project = self.projects[i % len(self.projects)]
        started = time.perf_counter()
        await self.publisher.appendEvent(self.target, project, {
            "event_id": str(uuid.uuid4()), "operation": "present",
            "event_data": '{"bench":%d}' % i}, "bench-%s" % uuid.uuid4())
        self.latencies.append(time.perf_counter() - started)

    async def worker(self, count):
        for _ in range(count):
            await self.one()

    async def measure(self, total, clients):
        started = time.perf_counter()
        per = total // clients
        await defer.gatherResults([
            defer.ensureDeferred(self.worker(per)) for _ in range(clients)])
        elapsed = time.perf_counter() - started
        return {"appends": per * clients, "rate": per * clients / elapsed,
                "p50_ms": percentile(self.latencies, 0.50) * 1000,
                "p99_ms": percentile(self.latencies, 0.99) * 1000}


def valkeyBenchmark(cluster, clients, requests):
    """valkey-benchmark's XADD rate (requests/s) on ``cluster``."""
    node = cluster.nodes[0]
    out = subprocess.run(
        ["valkey-benchmark", "-h", "127.0.0.1", "-p", str(node.port), "--cluster",
         "-c", str(clients), "-n", str(requests), "--csv",
         "XADD", "{tag}:events", "*", "f", "v"], capture_output=True, text=True, check=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith('"')]
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    if not rows:
        raise RuntimeError("valkey-benchmark printed no result: %s %s" % (out.stdout, out.stderr))
    return {"rate": float(rows[0]["rps"]), "p50_ms": float(rows[0]["p50_latency_ms"]),
            "p99_ms": float(rows[0]["p99_latency_ms"])}


async def scenarios(reactor, cluster, args):
    publisher = ValkeyPublisher(reactor)
    publisher.startService()
    try:
        projects = [str(uuid.uuid4()) for _ in range(args.projects)]
        results = {}
        for durable in ((0, 1) if args.durable else (0,)):
            target = cluster.target(minReplicas=durable)
            warm = Run(publisher, target, projects)
            await warm.measure(len(projects) * 2, len(projects))   # connect + SCRIPT LOAD
            suffix = " minReplicas=1" if durable else ""
            results["sequential" + suffix] = await Run(publisher, target, projects).measure(
                args.sequential, 1)
            results["%d concurrent%s" % (args.clients, suffix)] = await Run(
                publisher, target, projects).measure(args.concurrent, args.clients)
        return results
    finally:
        await publisher.stopService()


def report(results, benchmark, clients):
    print("%-28s %10s %12s %9s %9s" % ("scenario", "appends", "appends/s", "p50 ms", "p99 ms"))
    for name, r in results.items():
        print("%-28s %10d %12.0f %9.2f %9.2f" % (
            name, r["appends"], r["rate"], r["p50_ms"], r["p99_ms"]))
    for name, r in benchmark.items():
        print("%-28s %10s %12.0f %9.2f %9.2f" % (name, "", r["rate"], r["p50_ms"], r["p99_ms"]))
    print()
    print("ratio sequential / valkey-benchmark XADD -c 1:  %.3f" % (
        results["sequential"]["rate"] / benchmark["valkey-benchmark XADD -c 1"]["rate"]))
    print("ratio %d concurrent / valkey-benchmark XADD -c %d: %.3f" % (
        clients, clients, results["%d concurrent" % clients]["rate"]
        / benchmark["valkey-benchmark XADD -c %d" % clients]["rate"]))


async def main(reactor, args):
    cluster = ValkeyCluster()
    await inThread(cluster.start)
    try:
        results = await scenarios(reactor, cluster, args)
        benchmark = {}
        for clients, requests in ((1, 20000), (args.clients, 100000)):
            benchmark["valkey-benchmark XADD -c %d" % clients] = await inThread(
                valkeyBenchmark, cluster, clients, requests)
        report(results, benchmark, args.clients)
    finally:
        await inThread(cluster.stop)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequential", type=int, default=2000)
    p.add_argument("--concurrent", type=int, default=10000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--projects", type=int, default=30)
    p.add_argument("--no-durable", dest="durable", action="store_false",
                   help="skip the minReplicas=1 scenarios")
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
