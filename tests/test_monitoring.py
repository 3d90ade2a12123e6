"""The alerting rules and the Grafana dashboard (deploy/monitoring): promtool checks and
unit-tests the rules, every alert has a test and a runbook section, the chart's and the
component's copies are current, and every metric a rule or a panel names is one a running
daemon exports.

promtool comes from Debian's ``prometheus`` package (``.ci/run`` installs it). Without it
the promtool tests fail when ``CI`` is set and are skipped, with the reason, otherwise.
"""
import json
import os
import re
import shutil
import subprocess

import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from kibaship_dns01.testing.httpclient import request
from kibaship_dns01.testing.valkeycluster import inThread, sharedCluster
from tests.support import startDaemon, tempDir
from tests.test_deploy import REPO, _loadScript, checkDeploy

MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "kibaship-dns01.rules.yaml"
RULE_TESTS = MONITORING / "kibaship-dns01.rules.test.yaml"
DASHBOARD = MONITORING / "kibaship-dns01.dashboard.json"
RUNBOOK = REPO / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/kibamail/kibaship-dns01/blob/main/docs/runbook.md#"
SEVERITIES = ("critical", "warning", "info")

COMPONENT = REPO / "deploy" / "components" / "monitoring"

syncMonitoring = _loadScript("sync-monitoring")


def requirePromtool(testCase, environ=os.environ):
    exe = shutil.which("promtool")
    if exe is None:
        message = "promtool is not installed: apt-get install prometheus (Debian)"
        if environ.get("CI"):
            testCase.fail(f"CI must run the alert tests: {message}")
        raise SkipTest(f"not in CI, so skipped: {message}")
    return exe


def promtool(testCase, *args):
    result = subprocess.run([requirePromtool(testCase), *map(str, args)], capture_output=True,
                            text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr


def alertRules():
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
            if "alert" in r]


def dashboard():
    return json.loads(DASHBOARD.read_text())


def panelQueries(board):
    """Every PromQL query of the dashboard: panel targets and template variables."""
    queries = []
    for panel in board["panels"]:
        queries += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            queries.append((f"variable {variable['name']}", query["query"]))
    return queries


# --- PromQL: which metrics and labels a query names -----------------------------------

#: words of PromQL that are not metric names (functions are recognised by their "(")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and",
                       "or", "unless", "bool", "offset", "inf", "nan", "atan2"})
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
#: a label-matcher list (skipped whole: its label names are no metric names) or a name
_TOKEN = re.compile(r"\{(?P<matchers>[^}]*)\}|(?<![\w.:$])(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)")


def _plain(expr):
    """``expr`` with strings emptied, Grafana's $variables and the contents of label lists
    and ranges removed, so only metric names, functions and keywords remain as words."""
    expr = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r"\1", expr)
    expr = _STRING.sub('""', expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)


def selectors(expr):
    """[(metric name, {label names matched})] for every metric a PromQL query selects."""
    text = _plain(expr)
    found = []
    for match in _TOKEN.finditer(text):
        name, rest = match.group("name"), text[match.end():]
        if name is None or name in _KEYWORDS or rest.lstrip().startswith("("):
            continue
        labels = set()
        matchers = re.match(r"\s*\{([^}]*)\}", rest)
        if matchers:
            labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers.group(1)))
        found.append((name, labels))
    return found


def exposed(text):
    """{sample name: label names seen (None: the family had no samples yet)} from /metrics."""
    names = {}
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created")}
    for family in text_string_to_metric_families(text):
        labels = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le", "quantile"}
        for suffix in suffixes.get(family.type, ("",)):
            names[family.name + suffix] = labels if family.samples else None
    return names


#: labels Prometheus or a ServiceMonitor add to every series of a target
TARGET_LABELS = frozenset({"namespace", "pod", "job", "instance", "service", "endpoint",
                           "container"})


def unexported(queries, metrics):
    """What the queries name that the daemon does not export, one line each."""
    problems = []
    for where, expr in queries:
        for name, labels in selectors(expr):
            if name not in metrics:
                problems.append(f"{where}: {name} is not exported by the daemon")
                continue
            known = metrics[name]
            unknown = labels - TARGET_LABELS - (known if known is not None else labels)
            if unknown:
                problems.append(f"{where}: {name} has no label {', '.join(sorted(unknown))} "
                                f"(it has {', '.join(sorted(known)) or 'none'})")
    return problems


class SelectorParsingTests(SynchronousTestCase):
    """The check can fail: it finds metric names and their label names in real PromQL."""

    def test_namesAndLabels(self):
        expr = ('sum without (instance, pod, outcome) (rate(kibaship_dns01_a_total'
                '{action="Present", outcome=~"fail.*"}[15m])) / on (job) group_left(x) '
                'max by (le) (b_bucket{namespace=~"$namespace"}[$__rate_interval]) offset 5m '
                '> bool 6 * 3600 and time() - c_seconds > 1e3 or vector(0)')
        self.assertEqual(selectors(expr), [("kibaship_dns01_a_total", {"action", "outcome"}),
                                           ("b_bucket", {"namespace"}), ("c_seconds", set())])

    def test_grafanaLabelValues(self):
        self.assertEqual(selectors("label_values(kibaship_dns01_ready, namespace)"),
                         [("kibaship_dns01_ready", set())])

    def test_unexportedNamesAndLabels(self):
        metrics = {"x_total": {"kind"}, "y": None}
        self.assertEqual(unexported([("rule A", 'rate(x_total{kind="a",pod="p"}[5m]) > 0'),
                                     ("rule B", 'rate(x_total{knd="a"}[5m]) + y{any="1"}'),
                                     ("panel C", "z_count")], metrics),
                         ["rule B: x_total has no label knd (it has kind)",
                          "panel C: z_count is not exported by the daemon"])

    def test_exposedSuffixes(self):
        text = ("# HELP a_total A.\n# TYPE a_total counter\na_total{kind=\"x\"} 1.0\n"
                "# HELP h H.\n# TYPE h histogram\n"
                "# HELP g G.\n# TYPE g gauge\ng 2.0\n")
        names = exposed(text)
        self.assertEqual(names["a_total"], {"kind"})
        self.assertIsNone(names["h_bucket"])
        self.assertEqual(sorted(n for n in names if n.startswith("h")),
                         ["h_bucket", "h_count", "h_created", "h_sum"])
        self.assertEqual(names["g"], set())
        self.assertNotIn("a", names)


# --- the rules ----------------------------------------------------------------------------

class PromtoolTests(SynchronousTestCase):
    def test_checkRules(self):
        code, out = promtool(self, "check", "rules", RULES)
        self.assertEqual(code, 0, out)
        self.assertIn(f"SUCCESS: {len(alertRules())} rules found", out)

    def test_unitTests(self):
        code, out = promtool(self, "test", "rules", RULE_TESTS)
        self.assertEqual(code, 0, out)
        self.assertIn("SUCCESS", out)

    def test_aBrokenRuleFailsItsUnitTest(self):
        """The unit tests are live: a threshold moved out of reach makes them fail."""
        scratch = tempDir(self)
        shutil.copy(RULE_TESTS, scratch)
        with open(os.path.join(scratch, RULES.name), "w") as f:
            f.write(RULES.read_text().replace("> 0.1\n", "> 0.9\n"))
        code, out = promtool(self, "test", "rules", os.path.join(scratch, RULE_TESTS.name))
        self.assertNotEqual(code, 0)
        self.assertIn("alertname: KibashipDNS01PresentsFailing", out)

    def test_dashboardQueriesParse(self):
        """Each panel's PromQL, Grafana's variables given values, is valid for promtool."""
        rules = [{"record": f"dashboard:query_{i}",
                  "expr": expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")}
                 for i, (_, expr) in enumerate(panelQueries(dashboard()))
                 if not expr.startswith("label_values(")]
        path = os.path.join(tempDir(self), "dashboard.rules.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        code, out = promtool(self, "check", "rules", path)
        self.assertEqual(code, 0, out)


class RuleContentTests(SynchronousTestCase):
    def test_everyAlertHasAFiringUnitTestForEachSeverity(self):
        tested = set()
        for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                for alert in check.get("exp_alerts") or []:
                    tested.add((check["alertname"], alert["exp_labels"]["severity"]))
        rules = {(r["alert"], r["labels"]["severity"]) for r in alertRules()}
        self.assertEqual(rules - tested, set(), "alerts without a test that makes them fire")
        self.assertEqual(tested - rules, set())

    def test_severitySummaryDescriptionRunbook(self):
        anchors = runbookAnchors()
        for rule in alertRules():
            self.assertIn(rule["labels"].get("severity"), SEVERITIES, rule["alert"])
            notes = rule["annotations"]
            self.assertTrue(notes.get("summary") and notes.get("description"), rule["alert"])
            url = notes.get("runbook_url", "")
            self.assertTrue(url.startswith(RUNBOOK_URL), url)
            self.assertIn(url[len(RUNBOOK_URL):], anchors,
                          f"{rule['alert']}: docs/runbook.md has no section #{url[len(RUNBOOK_URL):]}")

    def test_theDelegatedZonesAlertsHaveTheirGroup(self):
        groups = {g["name"]: g["rules"] for g in yaml.safe_load(RULES.read_text())["groups"]}
        self.assertEqual(sorted(groups), ["kibaship-dns01", "kibaship-dns01.dns"])
        for rule in groups["kibaship-dns01.dns"]:
            self.assertIn("kibaship_dns01_dns_", rule["expr"], rule["alert"])


def runbookAnchors():
    """GitHub's anchors of the runbook's headings."""
    anchors, fenced = set(), False
    for line in RUNBOOK.read_text().splitlines():
        fenced ^= line.startswith("```")
        heading = None if fenced else re.match(r"#+\s+(.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


class CopiesTests(SynchronousTestCase):
    def test_chartAndComponentCopiesAreCurrent(self):
        self.assertEqual([p.relative_to(REPO).as_posix() for p in syncMonitoring.stale()], [],
                         "run scripts/sync-monitoring")

    def test_prometheusRuleHoldsTheRules(self):
        rule = yaml.safe_load(syncMonitoring.prometheusRule(RULES.read_text()))
        self.assertEqual(rule["kind"], "PrometheusRule")
        self.assertEqual(rule["spec"], yaml.safe_load(RULES.read_text()))

    def test_staleCopyNamed(self):
        scratch = tempDir(self)
        original = syncMonitoring.COMPONENT
        syncMonitoring.COMPONENT = syncMonitoring.Path(scratch)
        self.addCleanup(setattr, syncMonitoring, "COMPONENT", original)
        self.assertEqual(sorted(p.name for p in syncMonitoring.stale()),
                         ["kibaship-dns01.dashboard.json", "prometheusrule.yaml"])


class DashboardTests(SynchronousTestCase):
    def test_panelsUseTheDatasourceVariableAndHaveUniqueIds(self):
        board = dashboard()
        ids = [p["id"] for p in board["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(board["uid"], "kibaship-dns01")
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])
            self.assertTrue(panel.get("description"), panel["title"])
            self.assertTrue(panel["targets"], panel["title"])


# --- against a running daemon ---------------------------------------------------------------

class ExportedMetricsTests(TestCase):
    """Every metric a rule or a panel names, the real daemon exports (with those labels
    where it has samples): a renamed metric cannot silence an alert or empty a panel."""

    timeout = 120

    def test_rulesAndPanelsNameExportedMetrics(self):
        async def go():
            metrics = await self.scrape()
            queries = [(f"alert {r['alert']}", r["expr"]) for r in alertRules()]
            queries += [(f"panel {title!r}", expr) for title, expr in panelQueries(dashboard())]
            self.assertEqual(unexported(queries, metrics), [])
            # the new freshness metrics exist from the start, with their labels
            self.assertEqual(metrics["kibaship_dns01_cache_last_sync_timestamp_seconds"],
                             {"cache"})
            self.assertIn("kibaship_dns01_serving_certificate_expiration_timestamp_seconds",
                          metrics)
        return defer.ensureDeferred(go())

    async def scrape(self):
        """/metrics of a daemon that served a Present, a CleanUp and a refused call."""
        env, _, base, metricsPort = await startDaemon(self, await inThread(sharedCluster),
                                                      "kibaship-monitoring-")
        for action in ("Present", "CleanUp"):
            self.assertEqual((await env.post(base, action=action)).code, 201)
        self.assertEqual((await env.post(base, user="system:serviceaccount:x:y")).code, 403)
        resp = await request(reactor, "GET", f"http://127.0.0.1:{metricsPort}/metrics")
        self.assertEqual(resp.code, 200)
        return exposed(resp.body.decode())


# --- the chart and the Kustomize component ----------------------------------------------------

class InstallTests(SynchronousTestCase):
    """The chart's PrometheusRule and dashboard ConfigMap are the component's, object by
    object; both are off unless asked for."""

    def monitoringObjects(self, docs):
        return [d for d in docs
                if d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
                == "monitoring"]

    def componentDocs(self):
        from tests.test_deploy import requireKubectl
        return checkDeploy.renderOnBase(COMPONENT, requireKubectl(self))

    def test_componentIsRenderedOnTheBase(self):
        self.assertEqual(checkDeploy.unusedComponents(), [COMPONENT])
        docs = self.componentDocs()
        self.assertEqual(checkDeploy.checkRendered(docs), [])
        rule, board = (checkDeploy.find(docs, kind)[0] for kind in ("PrometheusRule",
                                                                      "ConfigMap"))
        self.assertEqual(rule["spec"], yaml.safe_load(RULES.read_text()))
        self.assertEqual(board["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(json.loads(board["data"]["kibaship-dns01.json"]), dashboard())

    def test_chartRendersTheComponentsObjects(self):
        from tests.test_helm import drift, renderSources
        sources = renderSources(self, "--set", "prometheusRule.enabled=true",
                                "--set", "grafanaDashboard.enabled=true")
        charted = [(s, d) for s, d in sources if d in self.monitoringObjects([d])]
        self.assertEqual(sorted(d["kind"] for _, d in charted), ["ConfigMap", "PrometheusRule"])
        self.assertEqual(drift(self.monitoringObjects(self.componentDocs()), charted,
                               overlay="deploy/components/monitoring"), [])

    def test_chartRunbookURL(self):
        """prometheusRule.runbookURL points every alert at the operator's copy of the
        runbook, each keeping its own anchor; a value that is not a URL is refused."""
        from tests.test_helm import chart, refusal, setArgs

        def runbooks(*args):
            [rule] = checkDeploy.find(chart(self, *setArgs(prometheusRule__enabled="true"), *args),
                                      "PrometheusRule")
            return {r["alert"]: r["annotations"]["runbook_url"]
                    for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}

        default = runbooks()
        moved = runbooks(*setArgs(prometheusRule__runbookURL="https://wiki.example.net/dns01"))
        self.assertEqual(set(moved), {r["alert"] for r in alertRules()})
        self.assertEqual(moved, {alert: "https://wiki.example.net/dns01#" + url.partition("#")[2]
                                 for alert, url in default.items()})
        self.assertTrue(all(url.startswith(RUNBOOK_URL) and len(url) > len(RUNBOOK_URL)
                            for url in default.values()), default)
        self.assertIn("runbookURL", refusal(self, *setArgs(prometheusRule__enabled="true",
                                                           prometheusRule__runbookURL="wiki page")))

    def test_chartValues(self):
        from tests.test_helm import chart, setArgs
        self.assertEqual(self.monitoringObjects(chart(self)), [], "off by default")
        docs = chart(self, *setArgs(prometheusRule__enabled="true",
                                    prometheusRule__labels__release="prometheus",
                                    grafanaDashboard__enabled="true",
                                    grafanaDashboard__namespace="grafana",
                                    grafanaDashboard__annotations__grafana_folder="Kibaship"))
        rule, board = (checkDeploy.find(docs, kind)[0] for kind in ("PrometheusRule",
                                                                      "ConfigMap"))
        self.assertEqual(rule["metadata"]["labels"]["release"], "prometheus")
        self.assertEqual(checkDeploy.validateDocument(rule), [])
        self.assertEqual(board["metadata"]["namespace"], "grafana")
        self.assertEqual(board["metadata"]["annotations"], {"grafana_folder": "Kibaship"})
        rule["spec"]["groups"][0]["rules"][0]["forr"] = "5m"
        self.assertIn("unknown field spec.groups[0].rules[0].forr",
                      "\n".join(checkDeploy.validateDocument(rule)))
