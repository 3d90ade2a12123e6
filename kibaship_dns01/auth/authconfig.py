"""The ``kube-system/extension-apiserver-authentication`` ConfigMap, kept current.

kube-apiserver publishes there what an aggregated API server needs to trust
it: the front-proxy (request-header) CA, the CNs allowed to use it, the names
of the identity headers, and the client CA.  ``k8s.io/apiserver`` watches the
ConfigMap because both CAs rotate; so do we, through an
:class:`~kibaship_dns01.kube.informer.Informer` on that single object.

Until the ConfigMap is loaded nobody's certificate can be verified, so the
watcher is an :class:`IReadiness` the daemon's ``/readyz`` waits for.  When
the set of CA certificates changes, listeners (the TLS layer, which names the
CAs in its CertificateRequest) are told.  A ConfigMap that cannot be parsed
keeps the previous good configuration and is logged with the key to fix.
"""
import json

import attr
from cryptography.hazmat.primitives import serialization
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from kibaship_dns01.auth.x509verify import loadPEMBundle
from kibaship_dns01.interfaces import IReadiness

log = Logger()

NAMESPACE = "kube-system"
NAME = "extension-apiserver-authentication"
CONFIGMAPS_PATH = "/api/v1/namespaces/%s/configmaps" % (NAMESPACE,)
WHERE = "ConfigMap %s/%s" % (NAMESPACE, NAME)

# The keys kube-apiserver writes (k8s.io/apiserver pkg/server/options).
CLIENT_CA_KEY = "client-ca-file"
REQUEST_HEADER_CA_KEY = "requestheader-client-ca-file"
ALLOWED_NAMES_KEY = "requestheader-allowed-names"
USERNAME_HEADERS_KEY = "requestheader-username-headers"
UID_HEADERS_KEY = "requestheader-uid-headers"
GROUP_HEADERS_KEY = "requestheader-group-headers"
EXTRA_PREFIXES_KEY = "requestheader-extra-headers-prefix"


class AuthenticationConfigError(ValueError):
    """The ConfigMap holds a value we cannot use; the message names the key."""


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


@attr.s(frozen=True, auto_attribs=True)
class AuthenticationConfig:
    """What the ConfigMap says, parsed.  Lists are tuples so the value is hashable."""

    requestHeaderCAs: tuple = ()
    allowedNames: tuple = ()
    usernameHeaders: tuple = ()
    uidHeaders: tuple = ()
    groupHeaders: tuple = ()
    extraHeaderPrefixes: tuple = ()
    clientCAs: tuple = ()
    resourceVersion: str = attr.ib(default="", eq=False)

    def caPEMs(self):
        """Every CA certificate (request-header first), one PEM each, no duplicates.

        This is what the TLS layer's ``setClientCAs`` takes.
        """
        seen, out = set(), []
        for cert in self.requestHeaderCAs + self.clientCAs:
            pem = _pem(cert)
            if pem not in seen:
                seen.add(pem)
                out.append(pem)
        return out

    def identityHeaders(self):
        """Header names and prefixes that carry identity: stripped from every request."""
        return self.usernameHeaders + self.uidHeaders + self.groupHeaders


def _stringList(data, key, isHeader):
    """A JSON array of strings, as kube-apiserver serialises list flags.

    Header names are trimmed and must not be empty (``headerrequest``'s
    ``trimHeaders``); allowed names are compared verbatim.
    """
    raw = data.get(key) or ""
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise AuthenticationConfigError(
            "%s key %r is not a JSON array of strings (%s): %r" % (WHERE, key, e, raw[:200]))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthenticationConfigError(
            "%s key %r must be a JSON array of strings such as [\"X-Remote-User\"], not %r"
            % (WHERE, key, raw[:200]))
    if not isHeader:
        return tuple(value)
    trimmed = tuple(v.strip() for v in value)
    if any(not v for v in trimmed):
        raise AuthenticationConfigError("%s key %r names an empty header: %r" % (WHERE, key, raw))
    return trimmed


def _bundle(data, key):
    try:
        return loadPEMBundle(data.get(key) or "", "%s key %r" % (WHERE, key))
    except ValueError as e:
        raise AuthenticationConfigError(str(e))


def parseAuthenticationConfig(configMap):
    """The :class:`AuthenticationConfig` of a ConfigMap object (a dict).

    :raise AuthenticationConfigError: naming the malformed key.
    """
    data = configMap.get("data") or {}
    return AuthenticationConfig(
        requestHeaderCAs=_bundle(data, REQUEST_HEADER_CA_KEY),
        allowedNames=_stringList(data, ALLOWED_NAMES_KEY, isHeader=False),
        usernameHeaders=_stringList(data, USERNAME_HEADERS_KEY, isHeader=True),
        uidHeaders=_stringList(data, UID_HEADERS_KEY, isHeader=True),
        groupHeaders=_stringList(data, GROUP_HEADERS_KEY, isHeader=True),
        extraHeaderPrefixes=_stringList(data, EXTRA_PREFIXES_KEY, isHeader=True),
        clientCAs=_bundle(data, CLIENT_CA_KEY),
        resourceVersion=(configMap.get("metadata") or {}).get("resourceVersion", ""),
    )


def makeAuthenticationConfigMap(requestHeaderCAPEM=b"", clientCAPEM=b"",
                                allowedNames=("front-proxy-client",),
                                usernameHeaders=("X-Remote-User",), uidHeaders=(),
                                groupHeaders=("X-Remote-Group",),
                                extraHeaderPrefixes=("X-Remote-Extra-",)):
    """The ConfigMap as kube-apiserver writes it (lists as JSON arrays).

    The inverse of :func:`parseAuthenticationConfig`: for tests, local runs
    against a stand-in API server, and documentation of the format.
    """
    def text(pem):
        return pem.decode("ascii") if isinstance(pem, bytes) else pem

    data = {}
    if requestHeaderCAPEM:
        data[REQUEST_HEADER_CA_KEY] = text(requestHeaderCAPEM)
        for key, value in ((ALLOWED_NAMES_KEY, allowedNames), (USERNAME_HEADERS_KEY, usernameHeaders),
                           (UID_HEADERS_KEY, uidHeaders), (GROUP_HEADERS_KEY, groupHeaders),
                           (EXTRA_PREFIXES_KEY, extraHeaderPrefixes)):
            if value:
                data[key] = json.dumps(list(value))
    if clientCAPEM:
        data[CLIENT_CA_KEY] = text(clientCAPEM)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"namespace": NAMESPACE, "name": NAME}, "data": data}


def _defaultInformer(client, clock):
    from kibaship_dns01.kube.informer import Informer

    return Informer(client, CONFIGMAPS_PATH, clock, name=NAME,
                    params={"fieldSelector": "metadata.name=" + NAME})


@implementer(IReadiness)
class AuthConfigWatcher(service.Service):
    """Keeps :attr:`current` equal to the parsed ConfigMap.

    :param informerFactory: ``(client, clock) -> Informer``; the real one by default.
    """

    name = NAME

    def __init__(self, client, clock, informerFactory=_defaultInformer):
        self.informer = informerFactory(client, clock)
        self.current = None
        self.lastError = "%s has not been loaded yet" % (WHERE,)
        self._listeners = []
        self._loaded = []
        self.informer.addListener(self._onEvent)

    # -- IReadiness ------------------------------------------------------------
    def isReady(self):
        return self.current is not None

    def whenLoaded(self):
        """A Deferred firing with the first :class:`AuthenticationConfig` loaded."""
        if self.current is not None:
            return defer.succeed(self.current)
        d = defer.Deferred()
        self._loaded.append(d)
        return d

    def addListener(self, fn):
        """Call ``fn(config)`` whenever the set of CA certificates changes.

        Called at once if a configuration is already loaded, so a late listener
        never misses the current CAs.
        """
        self._listeners.append(fn)
        if self.current is not None:
            fn(self.current)

    # -- service -----------------------------------------------------------------
    def startService(self):
        super().startService()
        self.informer.startService()
        self.informer.whenSynced().addCallback(lambda _: self.reload())

    def stopService(self):
        super().stopService()
        return self.informer.stopService()

    # -- loading -----------------------------------------------------------------
    def _onEvent(self, eventType, obj):
        self.reload()

    def reload(self):
        """Parse the informer's copy of the ConfigMap and apply it if it changed."""
        obj = self.informer.get(NAMESPACE, NAME)
        if obj is None:
            if self.current is None:
                self._fail("%s does not exist (or the daemon may not read it: bind the Role "
                           "extension-apiserver-authentication-reader in kube-system)" % (WHERE,))
            else:
                log.warn("{where} was deleted; keeping the last loaded configuration until "
                         "kube-apiserver recreates it", where=WHERE)
            return
        try:
            config = parseAuthenticationConfig(obj)
        except AuthenticationConfigError as e:
            self._fail(str(e) + "; keeping the previous configuration"
                       if self.current is not None else str(e))
            return
        self.lastError = None
        self._apply(config)

    def _fail(self, message):
        if message != self.lastError:
            log.error("{problem}", problem=message)
        self.lastError = message

    def _apply(self, config):
        if config == self.current:
            return
        previous, self.current = self.current, config
        if previous is not None and previous.caPEMs() == config.caPEMs():
            return
        log.info("{where} loaded: {n} request-header CA(s), {m} client CA(s), allowed names {names}",
                 where=WHERE, n=len(config.requestHeaderCAs), m=len(config.clientCAs),
                 names=list(config.allowedNames))
        for fn in list(self._listeners):
            fn(config)
        waiting, self._loaded = self._loaded, []
        for d in waiting:
            d.callback(config)


def tlsClientCAListener(setClientCAs):
    """An :meth:`AuthConfigWatcher.addListener` callback feeding the TLS layer.

    ``setClientCAs(listOfPEMBytes)`` is ``ReloadingServerTLS.setClientCAs``.
    """
    return lambda config: setClientCAs(config.caPEMs())
