"""Everything around the daemon for end-to-end runs: a stand-in Kubernetes API
holding a Kibaship certificate chain, a real Valkey cluster, and the PKI the
kube-aggregator would use.

Used by the end-to-end tests and by ``python -m kibaship_dns01.testing.localrun``
so both exercise the same setup: a ClusterIssuer challenge (resourceNamespace
``cert-manager``, Challenge in ``certificates``), issuer config naming the
Valkey cluster and a password Secret in ``cert-manager``, and cert-manager's
ServiceAccount calling through the front proxy.
"""
import base64
import json
import os
import urllib.parse

from kibaship_dns01.auth.authconfig import makeAuthenticationConfigMap
from kibaship_dns01.challenge import PRESENT
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.certmanager import buildChain
from kibaship_dns01.testing.httpclient import request
from kibaship_dns01.testing.kubeapi import StandInAPIServer

CERT_MANAGER_NS = "cert-manager"
CERT_MANAGER_USER = "system:serviceaccount:cert-manager:cert-manager"
CERT_MANAGER_GROUPS = ("system:serviceaccounts", "system:serviceaccounts:cert-manager")
FRONT_PROXY_CN = "front-proxy-client"
PASSWORD_SECRET = "valkey-auth"
#: the daemon's default Valkey Secret (--valkey-namespace / --valkey-secret defaults)
DEFAULT_VALKEY_NS = "kibaship-operator"
DEFAULT_VALKEY_SECRET = "kibaship-valkey-cluster-kibaship-com"
#: what kube-apiserver's authenticator adds for a bound ServiceAccount token
#: (Kubernetes 1.30+), which the kube-aggregator forwards as ``X-Remote-Extra-*``
CERT_MANAGER_EXTRA = {
    "authentication.kubernetes.io/credential-id": "JTI=3c1b6d0e-5f4a-4d2e-9b8c-7a6f5e4d3c2b",
    "authentication.kubernetes.io/node-name": "worker-1",
    "authentication.kubernetes.io/node-uid": "6a0e2f1d-3c4b-4a59-8e7d-1f2a3b4c5d6e",
    "authentication.kubernetes.io/pod-name": "cert-manager-6d8f7c9b5-x2x7q",
    "authentication.kubernetes.io/pod-uid": "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
}


#: the nonResourceURLs of kube-apiserver's system:discovery and system:public-info-viewer
#: ClusterRoles, both bound to system:authenticated (plugin/pkg/auth/authorizer/rbac/bootstrappolicy)
DISCOVERY_PATHS = ("/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi",
                   "/openapi/*", "/readyz", "/version", "/version/")


def _discoveryAllows(spec):
    """Whether system:discovery lets this SubjectAccessReview through: a GET by an
    authenticated user of a discovery path (a trailing ``*`` matches any suffix, as RBAC's
    ``NonResourceURLMatches``)."""
    attrs = spec.get("nonResourceAttributes") or {}
    path = attrs.get("path", "")
    return (attrs.get("verb") == "get" and "system:authenticated" in (spec.get("groups") or ())
            and any(path == rule or (rule.endswith("*") and path.startswith(rule[:-1]))
                    for rule in DISCOVERY_PATHS))


def secret(namespace, name, data):
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"namespace": namespace, "name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


class LocalEnvironment:
    """The daemon's surroundings; see the module docstring.

    :param cluster: a started :class:`~kibaship_dns01.testing.valkeycluster.ValkeyCluster`.
    """

    def __init__(self, reactor, workdir, cluster, groupName="dns.kibaship.com",
                 solverName="kibaship", discovery=False):
        self.reactor = reactor
        #: also grant what kube-apiserver's system:discovery ClusterRoleBinding grants every
        #: authenticated user (GET on the discovery paths), as a real client such as kubectl
        #: needs; off by default so the drills' refused identities are refused everywhere
        self.discovery = discovery
        self._tokens = {}
        self.workdir = workdir
        self.cluster = cluster
        self.groupName = groupName
        self.solverName = solverName
        self.api = StandInAPIServer(reactor=reactor)
        self.frontProxyCA = pki.makeCA("front-proxy-ca")
        self.frontProxy = pki.clientPair(self.frontProxyCA, FRONT_PROXY_CN)
        self.servingCA = pki.makeCA("kibaship-dns01-serving-ca")
        # cert-manager copies the issuer's solver, config included, into each Challenge
        self.chain = buildChain(groupName=groupName, solverName=solverName,
                                config=self.issuerConfig())
        self.kubeconfig = os.path.join(workdir, "kubeconfig")
        self.certFile = os.path.join(workdir, "tls.crt")
        self.keyFile = os.path.join(workdir, "tls.key")

    # -- setup --------------------------------------------------------------
    async def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        pki.serverPair(self.servingCA).writeTo(self.certFile, self.keyFile)
        self._writePEM("ca.crt", self.servingCA.certPEM)
        self.frontProxy.writeTo(os.path.join(self.workdir, "front-proxy.crt"),
                                os.path.join(self.workdir, "front-proxy.key"))
        store = self.api.store
        store.add(makeAuthenticationConfigMap(requestHeaderCAPEM=self.frontProxyCA.certPEM,
                                              allowedNames=(FRONT_PROXY_CN,)))
        if self.cluster.password is not None:
            store.add(secret(CERT_MANAGER_NS, PASSWORD_SECRET,
                             {"password": self.cluster.password}))
            # the daemon's own Valkey (--valkey-address, below): the operator's Secret
            store.add(secret(DEFAULT_VALKEY_NS, DEFAULT_VALKEY_SECRET,
                             {"password": self.cluster.password}))
        self.chain.addTo(store)
        self.api.setSubjectAccessReviewHandler(self._review)
        self.api.setTokenReviewHandler(self._tokenReview)
        await self.api.start()
        self.api.writeKubeconfig(self.kubeconfig)

    def _writePEM(self, name, data):
        with open(os.path.join(self.workdir, name), "wb") as f:
            f.write(data)

    def _review(self, spec):
        """RBAC of the stand-in: cert-manager may create on the solver resource (and, with
        ``discovery``, every authenticated user may get the discovery paths)."""
        attrs = spec.get("resourceAttributes") or {}
        allowed = (spec.get("user") == CERT_MANAGER_USER and attrs.get("verb") == "create"
                   and attrs.get("group") == self.groupName
                   and attrs.get("resource") == self.solverName) or (
            self.discovery and _discoveryAllows(spec))
        return {"allowed": allowed, "reason": "" if allowed else "no RBAC rule allows it"}

    def addToken(self, token, user=CERT_MANAGER_USER,
                 groups=CERT_MANAGER_GROUPS + ("system:authenticated",)):
        """Make the stand-in's TokenReview authenticate ``token`` as ``user`` in ``groups``
        (what kube-apiserver answers for a ServiceAccount token)."""
        self._tokens[token] = {"username": user, "groups": list(groups)}

    def _tokenReview(self, token):
        user = self._tokens.get(token)
        if user is None:
            return {"authenticated": False, "error": "invalid bearer token"}
        return {"authenticated": True, "user": user,
                "audiences": ["https://kubernetes.default.svc.cluster.local"]}

    async def stop(self):
        await self.api.stop()

    def addChains(self, chains):
        """Create more cert-manager objects in the stand-in (as cert-manager does
        before it presents); the daemon's watch sees them."""
        for chain in chains:
            chain.addTo(self.api.store)

    def removeChains(self, chains):
        for chain in chains:
            chain.removeFrom(self.api.store)

    # -- what the daemon and cert-manager need ---------------------------------
    def issuerConfig(self):
        """The ClusterIssuer's ``dns01.webhook.config`` pointing at the local cluster."""
        valkey = {"addr": self.cluster.seeds[0], "connectTimeout": "2s", "readTimeout": "2s"}
        if self.cluster.password is not None:
            valkey["passwordSecretRef"] = {"name": PASSWORD_SECRET, "key": "password"}
        return {"valkey": valkey, "uiHints": {"tenant": "local"}}

    def daemonArgs(self, port, metricsPort=0, extra=()):
        return ["--tls-cert-file", self.certFile, "--tls-private-key-file", self.keyFile,
                "--kubeconfig", self.kubeconfig, "--secure-port", str(port),
                "--bind-address", "127.0.0.1", "--metrics-port", str(metricsPort),
                "--metrics-bind-address", "127.0.0.1", "--group-name", self.groupName,
                "--solver-name", self.solverName, "--valkey-address", self.cluster.seeds[0],
                *extra]

    def delegationArgs(self, zone, dnsPort, resolvers=(), namespaces="certificates"):
        """The flags of delegated renewals (issue 21): the secret file is written into
        the work directory once and shared by every daemon of this environment."""
        secretFile = os.path.join(self.workdir, "delegation-secret")
        if not os.path.exists(secretFile):
            with open(secretFile, "w") as f:
                f.write(base64.b32encode(os.urandom(40)).decode() + "\n")
        args = ["--delegation-zone", zone, "--delegation-secret-file", secretFile,
                "--dns-port", str(dnsPort), "--delegation-namespaces", namespaces]
        if resolvers:
            args += ["--dns-resolvers", ",".join("%s:%d" % r for r in resolvers)]
        return args

    def delegationSecret(self):
        with open(os.path.join(self.workdir, "delegation-secret"), "rb") as f:
            return f.read().rstrip()

    def challengeRequest(self, action=PRESENT, challenge=None):
        return self.chain.request(challenge, resourceNamespace=CERT_MANAGER_NS, action=action,
                                  config=self.issuerConfig())

    def payload(self, action=PRESENT, challenge=None, request=None):
        """The body cert-manager POSTs (``request``: its ``request`` object as given)."""
        return {"apiVersion": "webhook.acme.cert-manager.io/v1alpha1",
                "kind": "ChallengePayload",
                "request": request or self.challengeRequest(action, challenge).raw}

    def solverPath(self):
        return f"/apis/{self.groupName}/v1alpha1/{self.solverName}"

    def aggregatorRequest(self, host, action=PRESENT, challenge=None, user=CERT_MANAGER_USER,
                          groups=CERT_MANAGER_GROUPS + ("system:authenticated",),
                          extra=CERT_MANAGER_EXTRA):
        """The whole HTTP/1.1 request the kube-aggregator forwards for cert-manager's
        Present/CleanUp (bytes, for load generators that write it as is).

        The body is encoded as Go's ``encoding/json`` does (compact); the
        identity headers as ``transport.SetAuthProxyHeaders`` sets them: one
        ``X-Remote-Group`` per group, ``X-Remote-Extra-<path-escaped key>``
        per extra value.
        """
        body = json.dumps(self.payload(action, challenge), separators=(",", ":")).encode()
        headers = [("Host", host), ("User-Agent", "cert-manager-challenges/v1.16.2 "
                                    "(linux/amd64) cert-manager/bench"),
                   ("Content-Length", str(len(body))), ("Accept", "application/json, */*"),
                   ("Content-Type", "application/json"), ("Accept-Encoding", "gzip"),
                   ("X-Forwarded-For", "10.244.1.17"), ("X-Remote-User", user)]
        headers += [("X-Remote-Group", group) for group in groups]
        headers += [("X-Remote-Extra-" + urllib.parse.quote(key, safe=""), value)
                    for key, value in sorted(extra.items())]
        head = "".join("%s: %s\r\n" % pair for pair in headers)
        return ("POST %s HTTP/1.1\r\n%s\r\n" % (self.solverPath(), head)).encode() + body

    async def post(self, baseURL, action=PRESENT, challenge=None, user=CERT_MANAGER_USER,
                   groups=CERT_MANAGER_GROUPS, requestObject=None):
        """Send a Present/CleanUp as the kube-aggregator forwards cert-manager's call
        (``requestObject``: a ``request`` object to send as is instead)."""
        path = self.solverPath()
        headers = {"Content-Type": ["application/json"], "X-Remote-User": [user],
                   "X-Remote-Group": list(groups)}
        return await request(self.reactor, "POST", baseURL + path,
                             caPEM=self.servingCA.certPEM, clientPair=self.frontProxy,
                             headers=headers, body=json.dumps(
                                 self.payload(action, challenge, requestObject)).encode())
