"""TLS towards the API server: verify it against the configured CA bundle.

Agent asks an ``IPolicyForHTTPS`` for a connection creator per host; ours
trusts exactly the kubeconfig / service-account CA (not the platform store,
unless no CA was configured), presents the client certificate when one is
configured, and checks the name in ``tls-server-name`` when set — the same
rules client-go applies.
"""
from twisted.internet import ssl
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from kibaship_dns01.kube.config import KubeConfigError
from kibaship_dns01.pem import certificateOptions, trustRootFromPEM


def _loadCABundle(caPEM, source):
    """Every certificate of a PEM bundle (CA rotation puts old and new in one file)."""
    try:
        return trustRootFromPEM(caPEM)
    except ValueError as e:
        raise KubeConfigError("%s: the certificate authority is not valid PEM: %s" % (source, e))


def _loadClientCertificate(certPEM, keyPEM, source):
    """``CertificateOptions`` keywords presenting the client certificate (and its chain)."""
    try:
        return certificateOptions(certPEM, keyPEM)
    except ValueError as e:
        raise KubeConfigError("%s: the client certificate or key is not valid PEM: %s" % (source, e))


@implementer(IPolicyForHTTPS)
class APIServerTLSPolicy:
    """Connection creators for the API server named in a :class:`KubeConfig`.

    Certificates are parsed once, here, so a bad kubeconfig fails at start
    with :class:`KubeConfigError` instead of on the first request.
    """

    def __init__(self, config):
        self._serverName = config.tlsServerName
        self._insecure = config.insecure
        self._trust = _loadCABundle(config.caPEM, config.source) if config.caPEM else None
        self._client = {}
        if config.clientCertPEM:
            self._client = _loadClientCertificate(config.clientCertPEM, config.clientKeyPEM,
                                                  config.source)
        self._creators = {}

    def creatorForNetloc(self, hostname, port):
        key = (hostname, port)
        if key not in self._creators:
            self._creators[key] = self._makeCreator(hostname)
        return self._creators[key]

    def _makeCreator(self, hostname):
        if self._insecure:
            return ssl.CertificateOptions(verify=False, **self._client)
        name = self._serverName or hostname.decode("ascii")
        return ssl.optionsForClientTLS(name, trustRoot=self._trust,
                                       extraCertificateOptions=dict(self._client))
