"""The one table ``bench/present.py`` prints, with issue 11's targets beside the figures.

A *load row* is one load generator run (``kind``: fresh, retry, cleanup or
floor; ``mode``: saturation or offered rate); a *value row* is one figure
(cold path, ready time, RSS).  :func:`attachTargets` marks the rows a target
applies to; :func:`render` lays everything out as fixed-width text.
"""
LABELS = {"fresh": "fresh Present", "retry": "retry Present", "cleanup": "CleanUp",
          "floor": "floor (bare Twisted TLS)"}
TARGETS = {
    "fresh": (">= 1000/s and /floor >= 0.5",
              lambda row: row["rate"] >= 1000 and (row.get("vs_floor") or 0) >= 0.5),
    "retry": (">= 1500/s", lambda row: row["rate"] >= 1500),
    "open": ("p99 <= 10 ms", lambda row: row["p99_ms"] is not None and row["p99_ms"] <= 10),
    "ready": ("<= 2 s", lambda row: row["value"] <= 2.0),
    "rss_cached": ("<= 120 MiB", lambda row: row["value"] <= 120),
    "rss_flat": ("within 5 % of run 1", lambda row: abs(row["growth_pct"]) <= 5),
}


def loadRow(kind, mode, result):
    row = dict(result, kind=kind, mode=mode)
    row["what"] = "%s, %s" % (LABELS[kind], mode)
    return row


def valueRow(key, what, value, text, **extra):
    return dict(extra, kind="value", key=key, what=what, value=value, text=text)


def addFloorRatios(rows):
    """``vs_floor``: product rate / floor rate at the same connections (saturation)."""
    floor = {r["connections"]: r["rate"] for r in rows
             if r["kind"] == "floor" and r["mode"] == "saturation"}
    for r in rows:
        if r["kind"] in ("fresh", "retry", "cleanup") and r["mode"] == "saturation":
            base = floor.get(r["connections"])
            r["vs_floor"] = r["rate"] / base if base else None


def _mark(row, key):
    text, check = TARGETS[key]
    row["target"], row["pass"] = text, bool(check(row))


def attachTargets(rows):
    for kind in ("fresh", "retry"):
        saturated = [r for r in rows if r["kind"] == kind and r["mode"] == "saturation"]
        if saturated:
            _mark(max(saturated, key=lambda r: r["rate"]), kind)
    for r in rows:
        if r["kind"] in ("fresh", "retry", "cleanup") and r["mode"] != "saturation":
            _mark(r, "open")
        elif r["kind"] == "value" and r["key"] in TARGETS:
            _mark(r, r["key"])


def _num(value, fmt):
    return "-" if value is None else fmt % value


HEAD = ("%-50s %5s %7s %7s %7s %8s %6s %7s %5s %5s %6s %5s %6s  %-27s %s"
        % ("", "conns", "req/s", "p50 ms", "p99 ms", "max ms", "/floor", "srv ms", "srv%",
           "gen%", "valkey", "api%", "errors", "target", "result"))
_NUMERIC = len("%5s %7s %7s %7s %8s %6s %7s %5s %5s %6s %5s %6s" % (("",) * 12))


def _loadLine(r):
    cpu = r.get("cpu_pct") or {}
    errors = r["bad"] + r["errors"]
    return ("%-50s %5d %7s %7s %7s %8s %6s %7s %5s %5s %6s %5s %6d"
            % (r["what"], r["connections"], _num(r["rate"], "%.0f"), _num(r["p50_ms"], "%.2f"),
               _num(r["p99_ms"], "%.2f"), _num(r["max_ms"], "%.1f"),
               _num(r.get("vs_floor"), "%.2f"), _num(r.get("server_cpu_ms_per_request"), "%.2f"),
               _num(cpu.get("server"), "%.0f"), _num(cpu.get("generator"), "%.0f"),
               _num(cpu.get("valkey"), "%.0f"), _num(cpu.get("api"), "%.0f"), errors))


def _valueLine(r):
    return "%-50s %-*s" % (r["what"], _NUMERIC, r["text"])


def render(rows):
    lines = [HEAD, "-" * len(HEAD)]
    for r in rows:
        line = _loadLine(r) if r["kind"] != "value" else _valueLine(r)
        if "target" in r:
            line += "  %-27s %s" % (r["target"], "PASS" if r["pass"] else "FAIL")
        lines.append(line.rstrip())
    return "\n".join(lines)


LEGEND = """\
req/s: answered requests per second (closed loop: at saturation; offered rows: what was achieved).
p50/p99/max: latency in ms; offered rows count from each request's scheduled send time.
/floor: req/s of the product / req/s of the floor at the same connections, same run, same generator.
srv ms: CPU ms the server process (daemon or floor) spent per answered request.
srv% gen% valkey% api%: CPU in % of one core during the run: the server, the load generator,
  the six Valkey nodes together, this process (the stand-in API server; it does nothing else then).
errors: wrong status/body plus connection errors and timeouts (every answer is checked)."""
