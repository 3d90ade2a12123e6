"""The pieces ``bench/drills/dns.py`` and ``bench/bench_dns.py`` stand on say what they
claim (no timings here):

- ``bench/dnsload.py`` reads dnsperf's report (counts, rcodes, every query's latency,
  lost queries in ``-v`` output) and builds its command line;
- the drill's judges of rcodes (the mix) and the hostile-packet sender's pieces
  (ids carried, bit flips, the amplification judge it applies).
"""
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from bench import dnsload
from bench.drills import dns as drill
from bench.drills import dnspackets
from kibaship_dns01.testing.dnsmessages import queryBytes, readAnswer
from kibaship_dns01.testing.hostiledns import amplifies

#: dnsperf 2.10's report, as printed with -v (three answered queries, one lost)
REPORT = """DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 5353 -d q.txt -l 1 -Q 4 -v
[Status] Sending queries (to 127.0.0.1:5353)
> NOERROR x.acme.example TXT 0.000300
> NXDOMAIN y.acme.example TXT 0.000100
> T z.acme.example TXT
> NOERROR x.acme.example TXT 0.002000
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         4
  Queries completed:    3 (75.00%)
  Queries lost:         1 (25.00%)

  Response codes:       NOERROR 2 (66.67%), NXDOMAIN 1 (33.33%)
  Average packet size:  request 32, response 88
  Run time (s):         1.000168
  Queries per second:   2.999496

  Average Latency (s):  0.000800 (min 0.000100, max 0.002000)
  Latency StdDev (s):   0.000800
"""

NOTHING_ANSWERED = """Statistics:

  Queries sent:         3
  Queries completed:    0 (0.00%)
  Queries lost:         3 (100.00%)

  Response codes:       
  Average packet size:  request 27, response 0
  Run time (s):         1.000208
  Queries per second:   0.000000
"""


class DnsperfTests(SynchronousTestCase):
    def test_report(self):
        figures = dnsload.parseDnsperf(REPORT)
        self.assertEqual({k: figures[k] for k in ("sent", "completed", "lost", "rcodes")},
                         {"sent": 4, "completed": 3, "lost": 1,
                          "rcodes": {"NOERROR": 2, "NXDOMAIN": 1}})
        self.assertAlmostEqual(figures["qps"], 2.999496)
        self.assertAlmostEqual(figures["runtime"], 1.000168)
        self.assertNotIn("p99", figures)

    def test_verboseLatenciesSkipLostQueries(self):
        figures = dnsload.parseDnsperf(REPORT, verbose=True)
        self.assertEqual(figures["latencies"], 3)
        self.assertEqual((figures["p50"], figures["p99"]), (0.0003, 0.002))

    def test_noAnswerAtAll(self):
        figures = dnsload.parseDnsperf(NOTHING_ANSWERED, verbose=True)
        self.assertEqual((figures["completed"], figures["rcodes"], figures["latencies"]),
                         (0, {}, 0))
        self.assertNotEqual(figures["p99"], figures["p99"])  # NaN: nothing to rank

    def test_noReportIsAnError(self):
        error = self.assertRaises(dnsload.DnsperfError, dnsload.parseDnsperf,
                                  "dnsperf: unable to open q.txt")
        self.assertIn("'sent'", str(error))

    def test_commandLine(self):
        self.patch(dnsload, "findDnsperf", lambda: "/usr/bin/dnsperf")
        args = dnsload.dnsperfArgs(5353, "q.txt", 10, rate=500, verbose=True, outstanding=7,
                                   source="127.0.1.10", clients=4, timeout=1)
        self.assertEqual(args, ["/usr/bin/dnsperf", "-s", "127.0.0.1", "-p", "5353", "-d",
                                "q.txt", "-l", "10", "-q", "7", "-t", "1", "-c", "4", "-a",
                                "127.0.1.10", "-Q", "500", "-v"])
        self.assertNotIn("-Q", dnsload.dnsperfArgs(53, "q.txt", 1))

    def test_percentile(self):
        self.assertEqual(dnsload.percentile(list(range(1, 101)), 99), 100)
        self.assertEqual(dnsload.percentile([1, 2, 3], 50), 2)


class DrillJudgeTests(SynchronousTestCase):
    def test_theMixMatchesOnlyItsShares(self):
        self.assertTrue(drill.mixMatches({"NOERROR": 800, "NXDOMAIN": 200}))
        self.assertTrue(drill.mixMatches({"NOERROR": 8010, "NXDOMAIN": 1990}))
        self.assertFalse(drill.mixMatches({"NOERROR": 800, "NXDOMAIN": 199, "SERVFAIL": 1}))
        self.assertFalse(drill.mixMatches({"NOERROR": 1000}))  # the NXDOMAINs went missing
        self.assertFalse(drill.mixMatches({}))

    def test_theMixIsWhatItSays(self):
        self.assertEqual(drill.mixLabel(),
                         "60% TXT key, 20% TXT NXDOMAIN, 10% SOA apex, 10% NS apex")
        expected = drill.mixRcodes()
        self.assertEqual(sorted(expected), ["NOERROR", "NXDOMAIN"])
        self.assertAlmostEqual(expected["NOERROR"], 0.8)
        self.assertAlmostEqual(expected["NXDOMAIN"], 0.2)

    def test_describeRcodes(self):
        self.assertEqual(drill.describeRcodes({"NXDOMAIN": 1, "NOERROR": 3}),
                         "NOERROR 75.0%, NXDOMAIN 25.0%")
        self.assertEqual(drill.describeRcodes({}), "no answer")


class PacketSenderTests(SynchronousTestCase):
    def test_idCarriesTheSequenceNumber(self):
        query = queryBytes("a.example", id=0x1234)
        numbered = dnspackets.withID(query, 70000)
        self.assertEqual((numbered[:2], numbered[2:]), ((70000 % 65536).to_bytes(2, "big"),
                                                        query[2:]))
        self.assertEqual(dnspackets.withID(b"\x07", 5), b"\x07")  # too short for an id

    def test_flipsOneToFourBits(self):
        import random
        rng = random.Random(1)
        packet = bytes(64)
        for _ in range(200):
            bits = sum(bin(b).count("1") for b in dnspackets.flipped(rng, packet))
            self.assertIn(bits, range(1, 5))
        self.assertEqual(dnspackets.flipped(rng, b""), b"")

    def test_amplificationJudge(self):
        keyed = "k.acme.example"
        query = queryBytes("x.acme.example", dns.SOA)
        message = dns.Message(id=1, answer=1)
        message.queries = [dns.Query(b"x.acme.example", dns.SOA)]
        message.answers = [dns.RRHeader(b"x.acme.example", dns.HINFO, payload=dns.Record_HINFO(
            b"x" * 200, b""))]
        big = message.toStr()
        self.assertTrue(amplifies(query, big, readAnswer(big), [keyed]))
        message.answers = [dns.RRHeader(keyed.encode(), dns.TXT, payload=dns.Record_TXT(
            b"k" * 200))]
        txt = message.toStr()
        self.assertFalse(amplifies(query, txt, readAnswer(txt), [keyed]))
        self.assertTrue(amplifies(query, txt, readAnswer(txt), ["other.acme.example"]))
