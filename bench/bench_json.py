"""What a faster JSON codec would save where the daemon spends on JSON.

    python bench/bench_json.py [--repeat 20]

Decodes what a large sync decodes (a LIST page of 500 issued Certificates,
about 1.4 MB, and the same Certificates as WatchList event lines) and
encodes what a Present encodes (the ChallengePayload answer, an event's
fields), with the standard library's ``json`` and, when it is installed,
``orjson`` (``pip install orjson``), and prints microseconds per call and the
ratio.  Issue 22 asked for ``orjson`` "if the profile says so": compare these
with the share of JSON in the profiles (``bench/present.py --profile``,
``bench/scale.py --profile``); see bench/README.md for the decision.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kibaship_dns01.kube.listjson import decodeList  # noqa: E402
from kibaship_dns01.testing.certmanager import issuedCertificates  # noqa: E402

try:
    import orjson
except ImportError:
    orjson = None


def timed(fn, repeat):
    """Best of ``repeat`` runs, seconds (the least disturbed by other processes)."""
    best = None
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
    return best


def cases():
    certs = issuedCertificates(500, time.time())
    page = json.dumps({"kind": "CertificateList", "apiVersion": "cert-manager.io/v1",
                       "metadata": {"resourceVersion": "5", "continue": "x"}, "items": certs},
                      separators=(",", ":")).encode()
    lines = [json.dumps({"type": "ADDED", "object": c}, separators=(",", ":")).encode()
             for c in certs]
    answer = {"apiVersion": "webhook.acme.cert-manager.io/v1alpha1", "kind": "ChallengePayload",
              "response": {"uid": "", "success": True}}
    compact = {"separators": (",", ":")}
    rows = [("decode a LIST page of 500 Certificates (%d KB), per page" % (len(page) // 1024), 1,
             lambda: json.loads(page), lambda: orjson.loads(page)),
            ("  the same, item by item (kube/listjson.py), per page", 1,
             lambda: list(decodeList(page)["items"]), None),
            ("decode a WatchList event line (%d bytes), per line" % len(lines[0]), len(lines),
             lambda: [json.loads(line) for line in lines],
             lambda: [orjson.loads(line) for line in lines]),
            ("encode a ChallengePayload answer, per answer", 1000,
             lambda: [json.dumps(answer, **compact) for _ in range(1000)],
             lambda: [orjson.dumps(answer) for _ in range(1000)])]
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)
    print("bench_json: best of %d, microseconds per call; orjson %s" % (
        args.repeat, orjson.__version__ if orjson else "not installed"))
    for label, per, std, fast in cases():
        us = 1e6 * timed(std, args.repeat) / per
        text = "%-62s json %9.1f" % (label, us)
        if fast is not None and orjson is not None:
            fus = 1e6 * timed(fast, args.repeat) / per
            text += "   orjson %9.1f   (%.2fx)" % (fus, us / fus)
        print(text)


if __name__ == "__main__":
    main()
