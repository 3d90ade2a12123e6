"""Where the API server is and how to authenticate to it.

Two sources, as for every Kubernetes client: the pod's service account
(in-cluster, when no ``--kubeconfig`` is given) or a kubeconfig file's current
context.  The ``kubernetes`` package parses both (its ``InClusterConfigLoader``,
``KubeConfigLoader``, ``ConfigNode`` and ``FileOrData``); we only take the
parsed values and never use its blocking HTTP client.  Auth methods that would
run commands or talk to identity providers (``exec``, ``auth-provider``) are
refused with a clear error rather than half-supported.

Service-account tokens are bound tokens that the kubelet rotates (they expire
after about an hour), so the token is a provider that re-reads its file
periodically instead of a string read once at start.
"""
import base64
import os

import attr
import yaml

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_TOKEN = SA_DIR + "/token"
SA_CA = SA_DIR + "/ca.crt"
SA_NAMESPACE = SA_DIR + "/namespace"

TOKEN_REFRESH_SECONDS = 60.0


class KubeConfigError(Exception):
    """The Kubernetes client configuration is missing, malformed or unsupported."""


class StaticToken:
    """A bearer token that never changes (a kubeconfig's inline ``token``)."""

    def __init__(self, token):
        self._token = token

    def token(self):
        return self._token

    def invalidate(self):
        """Nothing to re-read."""


class FileToken:
    """A bearer token read from a file and re-read every ``period`` seconds.

    The kubelet rewrites projected service-account tokens well before they
    expire; client-go re-reads the file every minute and so do we.  After a
    401 the client calls :meth:`invalidate` so the next request re-reads at
    once.  A failed re-read keeps the previous token (the kubelet swaps the
    file atomically, but a read may still race a volume remount).

    :param clock: an ``IReactorTime`` (``Clock`` in tests).
    """

    def __init__(self, path, clock, period=TOKEN_REFRESH_SECONDS):
        self.path = path
        self._clock = clock
        self._period = period
        self._token = None
        self._readAt = None
        self.reads = 0

    def token(self):
        now = self._clock.seconds()
        if self._readAt is None or now - self._readAt >= self._period:
            self._reload(now)
        return self._token

    def invalidate(self):
        self._readAt = None

    def _reload(self, now):
        try:
            with open(self.path, "rb") as f:
                value = f.read().decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            if self._token is None:
                raise KubeConfigError("cannot read the bearer token file %s: %s" % (self.path, e))
            return
        self.reads += 1
        if not value:
            if self._token is None:
                raise KubeConfigError("the bearer token file %s is empty" % (self.path,))
            return
        self._token, self._readAt = value, now


@attr.s(frozen=True, auto_attribs=True)
class KubeConfig:
    """Everything :class:`~kibaship_dns01.kube.client.KubeClient` needs.

    :ivar server: base URL, ``https://host:port`` (no trailing slash).
    :ivar caPEM: PEM bytes of the CA bundle to verify the server, or ``None``
        for the platform's trust store.
    :ivar insecure: skip server verification (kubeconfig
        ``insecure-skip-tls-verify``; never in-cluster).
    :ivar tlsServerName: name to verify instead of the URL's host.
    :ivar clientCertPEM / clientKeyPEM: client certificate authentication.
    :ivar tokenProvider: object with ``token() -> str`` and ``invalidate()``, or ``None``.
    :ivar namespace: the context's / pod's namespace, if known.
    :ivar source: where this came from, for error messages.
    """

    server: str
    caPEM: bytes = None
    insecure: bool = False
    tlsServerName: str = None
    clientCertPEM: bytes = None
    clientKeyPEM: bytes = None
    tokenProvider: object = None
    namespace: str = None
    source: str = ""


def loadConfig(kubeconfigPath=None, clock=None, context=None):
    """The kubeconfig's context when a path is given, else in-cluster."""
    clock = clock or _defaultClock()
    if kubeconfigPath:
        return loadKubeConfig(kubeconfigPath, clock=clock, context=context)
    return loadInCluster(clock=clock)


def _defaultClock():
    from twisted.internet import reactor
    return reactor


# --- in-cluster --------------------------------------------------------------

def loadInCluster(environ=None, tokenPath=SA_TOKEN, caPath=SA_CA, namespacePath=SA_NAMESPACE,
                  clock=None):
    """The pod's service account: ``KUBERNETES_SERVICE_HOST/PORT``, token and CA files."""
    from kubernetes.client import Configuration
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.incluster_config import InClusterConfigLoader

    environ = os.environ if environ is None else environ
    loader = InClusterConfigLoader(token_filename=tokenPath, cert_filename=caPath,
                                   try_refresh_token=False, environ=environ)
    conf = Configuration()
    try:
        loader.load_and_set(conf)
    except ConfigException as e:
        raise KubeConfigError(
            "in-cluster configuration failed: %s (not running in a pod? pass --kubeconfig)" % (e,))
    tokens = FileToken(tokenPath, clock or _defaultClock())
    tokens.token()
    return KubeConfig(server=conf.host, caPEM=_readFile(caPath, "service-account CA"),
                      tokenProvider=tokens, namespace=_readOptional(namespacePath),
                      source="in-cluster service account")


def _readFile(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KubeConfigError("cannot read the %s file %s: %s" % (what, path, e.strerror or e))


def _readOptional(path):
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


# --- kubeconfig --------------------------------------------------------------

_UNSUPPORTED_USER_KEYS = {
    "exec": "an exec credential plugin",
    "auth-provider": "an auth-provider",
    "username": "basic authentication (username/password)",
    "password": "basic authentication (username/password)",
}


def loadKubeConfig(path, clock=None, context=None):
    """The current (or named) context of the kubeconfig file at ``path``."""
    where = "kubeconfig %s" % (path,)
    data = _readKubeConfigYAML(path, where)
    cluster, user, ctxName, namespace = _selectContext(data, path, context, where)
    where = "%s (context %r)" % (where, ctxName)
    base = os.path.dirname(os.path.abspath(path))
    _refuseUnsupported(user, where)
    server = _serverURL(cluster, where)
    caPEM = _fileOrData(cluster, "certificate-authority", base, where)
    certPEM = _fileOrData(user, "client-certificate", base, where)
    keyPEM = _fileOrData(user, "client-key", base, where)
    if bool(certPEM) != bool(keyPEM):
        raise KubeConfigError("%s: client-certificate and client-key must be given together" % where)
    return KubeConfig(
        server=server, caPEM=caPEM, insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tlsServerName=cluster.get("tls-server-name") or None,
        clientCertPEM=certPEM, clientKeyPEM=keyPEM,
        tokenProvider=_tokenProvider(user, base, clock, where),
        namespace=namespace, source=where)


def _readKubeConfigYAML(path, where):
    if not os.path.isfile(path):
        raise KubeConfigError("%s does not exist or is not a file; pass an existing file to "
                              "--kubeconfig or omit it to use the in-cluster service account" % where)
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise KubeConfigError("%s is not valid YAML: %s" % (where, e))
    if not isinstance(data, dict):
        raise KubeConfigError("%s is malformed: expected a mapping with clusters, users, contexts"
                              % where)
    return data


def _selectContext(data, path, context, where):
    """Resolve the context with the package's ``KubeConfigLoader``."""
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.kube_config import ConfigNode, KubeConfigLoader

    try:
        node = ConfigNode(path, data, path)
        loader = KubeConfigLoader(node, active_context=context, config_base_path=None)
        ctx = loader.current_context
        ctxBody = ctx.get("context") or {}
        cluster = node["clusters"].get_with_name(ctxBody["cluster"])["cluster"].value
        user = {}
        if ctxBody.get("user") and data.get("users"):
            found = node["users"].get_with_name(ctxBody["user"], safe=True)
            user = (found.value.get("user") if found else None) or {}
    except ConfigException as e:
        raise KubeConfigError("%s is malformed: %s" % (where, e))
    except (KeyError, TypeError, AttributeError) as e:
        raise KubeConfigError("%s is malformed: missing or invalid %s" % (where, e))
    if not isinstance(cluster, dict) or not isinstance(user, dict):
        raise KubeConfigError("%s is malformed: cluster and user entries must be mappings" % where)
    return cluster, user, ctx.get("name"), ctxBody.get("namespace")


def _refuseUnsupported(user, where):
    for key, what in _UNSUPPORTED_USER_KEYS.items():
        if key in user:
            raise KubeConfigError(
                "%s: the user uses %s, which kibaship-dns01 does not support; use a bearer token "
                "(token/tokenFile) or a client certificate (client-certificate/client-key)"
                % (where, what))


def _serverURL(cluster, where):
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise KubeConfigError("%s: cluster server must be an https:// URL, got %r" % (where, server))
    if cluster.get("proxy-url"):
        raise KubeConfigError("%s: proxy-url is not supported" % where)
    return server.rstrip("/")


def _fileOrData(obj, key, base, where):
    """``key-data`` (base64) or ``key`` (a file path), via the package's ``FileOrData``."""
    from kubernetes.config.kube_config import FileOrData

    try:
        data = FileOrData(obj, key, file_base_path=base).as_data()
    except OSError as e:
        raise KubeConfigError("%s: cannot read %s file: %s" % (where, key, e))
    if not data:
        return None
    try:
        return base64.standard_b64decode(data)
    except (ValueError, TypeError) as e:
        raise KubeConfigError("%s: %s-data is not valid base64: %s" % (where, key, e))


def _tokenProvider(user, base, clock, where):
    if user.get("token"):
        return StaticToken(str(user["token"]).strip())
    if user.get("tokenFile"):
        path = os.path.normpath(os.path.join(base, user["tokenFile"]))
        provider = FileToken(path, clock or _defaultClock())
        try:
            provider.token()
        except KubeConfigError as e:
            raise KubeConfigError("%s: %s" % (where, e))
        return provider
    return None
