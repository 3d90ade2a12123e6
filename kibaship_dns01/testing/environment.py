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


def secret(namespace, name, data):
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"namespace": namespace, "name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


class LocalEnvironment:
    """The daemon's surroundings; see the module docstring.

    :param cluster: a started :class:`~kibaship_dns01.testing.valkeycluster.ValkeyCluster`.
    """

    def __init__(self, reactor, workdir, cluster, groupName="dns.kibaship.com",
                 solverName="kibaship"):
        self.reactor = reactor
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
        self.chain.addTo(store)
        self.api.setSubjectAccessReviewHandler(self._review)
        await self.api.start()
        self.api.writeKubeconfig(self.kubeconfig)

    def _writePEM(self, name, data):
        with open(os.path.join(self.workdir, name), "wb") as f:
            f.write(data)

    def _review(self, spec):
        """RBAC of the stand-in: cert-manager may create on the solver resource."""
        attrs = spec.get("resourceAttributes") or {}
        allowed = (spec.get("user") == CERT_MANAGER_USER and attrs.get("verb") == "create"
                   and attrs.get("group") == self.groupName
                   and attrs.get("resource") == self.solverName)
        return {"allowed": allowed, "reason": "" if allowed else "no RBAC rule allows it"}

    async def stop(self):
        await self.api.stop()

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
                "--solver-name", self.solverName, *extra]

    def challengeRequest(self, action=PRESENT, challenge=None):
        return self.chain.request(challenge, resourceNamespace=CERT_MANAGER_NS, action=action,
                                  config=self.issuerConfig())

    def payload(self, action=PRESENT, challenge=None):
        """The body cert-manager POSTs."""
        return {"apiVersion": "webhook.acme.cert-manager.io/v1alpha1",
                "kind": "ChallengePayload",
                "request": self.challengeRequest(action, challenge).raw}

    async def post(self, baseURL, action=PRESENT, challenge=None, user=CERT_MANAGER_USER,
                   groups=CERT_MANAGER_GROUPS):
        """Send a Present/CleanUp as the kube-aggregator forwards cert-manager's call."""
        path = f"/apis/{self.groupName}/v1alpha1/{self.solverName}"
        headers = {"Content-Type": ["application/json"], "X-Remote-User": [user],
                   "X-Remote-Group": list(groups)}
        return await request(self.reactor, "POST", baseURL + path,
                             caPEM=self.servingCA.certPEM, clientPair=self.frontProxy,
                             headers=headers, body=json.dumps(self.payload(action, challenge))
                             .encode())
