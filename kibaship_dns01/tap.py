"""``twistd kibaship-dns01`` options and service construction.

Flags follow Kubernetes naming (``--secure-port``, ``--tls-cert-file`` ...).
Every flag may also come from ``KIBASHIP_DNS01_<FLAG>`` in the environment
(e.g. ``KIBASHIP_DNS01_SECURE_PORT``); an explicit flag wins.  Values are
validated here so a typo stops the daemon with a usage error naming the flag,
instead of a traceback minutes later.
"""
import functools
import ipaddress
import os

import attr
from twisted.python import usage

from kibaship_dns01.durations import parseDuration
from kibaship_dns01.logs import LEVELS
from kibaship_dns01.names import bareName, isDNS1123Label, isDNS1123Subdomain

ENV_PREFIX = "KIBASHIP_DNS01_"

def _envName(flag):
    return ENV_PREFIX + flag.upper().replace("-", "_")


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Settings:
    """The validated daemon settings, as typed values."""

    securePort: int
    bindAddress: str
    tlsCertFile: str
    tlsPrivateKeyFile: str
    groupName: str
    solverName: str
    kubeconfig: object
    metricsPort: int
    metricsBindAddress: str
    dryRun: bool
    logFormat: str
    logLevel: str
    maxBodyBytes: int
    requestHeaderTimeout: float
    requestBodyTimeout: float
    idleTimeout: float
    maxConnections: int
    shutdownDelay: float
    shutdownGracePeriod: float
    valkeyNamespace: str
    valkeyService: str
    valkeyPort: int
    valkeySecret: str
    valkeyConnectTimeout: float
    valkeyReadTimeout: float
    valkeyMinReplicas: int
    idempotencyWindow: float
    valkeyAddress: object = None
    progressEvents: bool = True
    progressRefreshInterval: float = 0.0
    progressWindow: float = 8 * 86400.0
    clusterResourceNamespace: str = "cert-manager"
    # delegated renewals (issue 21): off while delegationZone is empty
    delegationZone: str = ""
    delegationSecretFile: object = None
    delegationNameservers: tuple = ()
    delegationNameserverAddresses: tuple = ()
    delegationNamespaces: tuple = ("certificates",)
    dnsPort: int = 5353
    dnsBindAddress: str = ""
    dnsResolvers: tuple = ()
    dnsRateLimit: float = 100.0
    dnsRateLimitSlip: int = 2
    tlsMinVersion: str = "VersionTLS12"
    tlsCipherSuites: tuple = ()

    @property
    def delegationOn(self):
        return bool(self.delegationZone)


def _port(flag, value, allowZero=False):
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{flag}: {value!r} is not a port number")
    if not (0 if allowZero else 1) <= port <= 65535:
        raise usage.UsageError(f"--{flag}: {port} is outside 1-65535")
    return port


def _number(flag, value, minimum=0, kind=float):
    """A number of ``kind`` (``int`` or ``float``), finite and at least ``minimum``."""
    try:
        n = kind(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{flag}: {value!r} is not "
                               f"{'an integer' if kind is int else 'a number'}")
    if not n >= minimum or n == float("inf"):
        raise usage.UsageError(f"--{flag}: must be at least {minimum:g}, got {value}")
    return n


_integer = functools.partial(_number, kind=int)


def _parsed(flag, parse, value, errors=ValueError):
    """``parse(value)``; its ``errors`` become a usage error naming ``--flag``."""
    try:
        return parse(value)
    except errors as e:
        raise usage.UsageError(f"--{flag}: {e}")


def _duration(flag, value, allowZero=False):
    seconds = _parsed(flag, parseDuration, value)
    if seconds < 0 or (seconds == 0 and not allowZero):
        raise usage.UsageError(f"--{flag}: must be greater than zero, got {value!r}")
    return seconds


def _optionalDuration(flag, value, minimum=0.0):
    """A duration where ``0`` means off; otherwise at least ``minimum`` seconds."""
    seconds = _parsed(flag, parseDuration, value)
    if seconds < 0 or 0 < seconds < minimum:
        raise usage.UsageError(f"--{flag}: must be 0 (off) or at least {minimum:g}s, "
                               f"got {value!r}")
    return seconds


def _switch(flag, value):
    if value not in ("on", "off"):
        raise usage.UsageError(f"--{flag}: {value!r} is not on or off")
    return value == "on"


def _address(flag, value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise usage.UsageError(f"--{flag}: {value!r} is not an IP address")
    return value


def _dnsName(flag, value):
    if not isDNS1123Subdomain(value):
        raise usage.UsageError(f"--{flag}: {value!r} is not a lower-case DNS name")
    return value


def _zone(flag, value):
    """A delegation zone: a DNS name, any case, trailing dot optional; ``""``: off."""
    if not value:
        return ""
    return _dnsName(flag, bareName(value))


def _list(flag, value, item):
    """A comma-separated list, each element checked by ``item(flag, element)``."""
    return tuple(item(flag, v.strip()) for v in (value or "").split(",") if v.strip())


def _namespaceOrAll(flag, value):
    if value != "*" and not isDNS1123Label(value):
        raise usage.UsageError(f"--{flag}: {value!r} is neither a namespace name nor *")
    return value


def _hostPort(flag, value, defaultPort=53):
    """``ip``, ``ip:port`` or ``[ipv6]:port`` -> ``(ip, port)``."""
    host, port = value, defaultPort
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            port = _port(flag, rest.lstrip(":"))
    elif value.count(":") == 1:
        host, port = value.split(":")
        port = _port(flag, port)
    return _address(flag, host), port


def _valkeyAddress(flag, value):
    from kibaship_dns01.valkey.target import parseAddress

    _parsed(flag, parseAddress, value)
    return value


def _secretFile(flag, value):
    """The delegation secret's file, checked now (read again when the service is built)."""
    if not value:
        return None
    from kibaship_dns01.delegation.secret import DelegationSecretError, loadSecret

    _parsed(flag, loadSecret, _file(flag, value), DelegationSecretError)
    return value


def _choice(flag, value, choices=()):
    if value not in choices:
        raise usage.UsageError(f"--{flag}: {value!r} is not one of {', '.join(choices)}")
    return value


def _file(flag, value):
    if not value:
        raise usage.UsageError(f"--{flag} is required")
    if not os.path.isfile(value):
        raise usage.UsageError(f"--{flag}: {value} does not exist or is not a file")
    return value


def _optionalFile(flag, value):
    return _file(flag, value) if value else None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Flag:
    """One command-line flag: its name, default, help, Settings field and converter."""

    name: str
    default: object
    help: str
    field: str
    convert: object


def _f(name, default, help, field, convert, **kw):
    return _Flag(name, default, help, field,
                 functools.partial(convert, **kw) if kw else convert)


#: every valued flag; the defaults mirror the Kibaship operator (SPEC §8)
FLAGS = (
    _f("secure-port", "8443", "HTTPS port of the aggregated API (0: any free port, logged)",
       "securePort", _port, allowZero=True),
    _f("bind-address", "0.0.0.0", "address the HTTPS server listens on", "bindAddress",
       _address),
    _f("tls-cert-file", None, "PEM serving certificate (chain); re-read when it changes",
       "tlsCertFile", _file),
    _f("tls-private-key-file", None, "PEM private key of the serving certificate",
       "tlsPrivateKeyFile", _file),
    _f("group-name", "dns.kibaship.com", "API group (Issuer solver groupName, APIService group)",
       "groupName", _dnsName),
    _f("solver-name", "kibaship", "solver name (Issuer solverName)", "solverName", _dnsName),
    _f("kubeconfig", None, "kubeconfig file; absent means in-cluster configuration",
       "kubeconfig", _optionalFile),
    _f("metrics-port", "0", "plain-HTTP port for /metrics; 0 disables it", "metricsPort", _port,
       allowZero=True),
    _f("metrics-bind-address", "0.0.0.0", "address the metrics server listens on",
       "metricsBindAddress", _address),
    _f("log-format", "json", "json or text", "logFormat", _choice, choices=("json", "text")),
    _f("log-level", "info", "debug, info, warn or error", "logLevel", _choice,
       choices=tuple(LEVELS)),
    _f("max-body-bytes", "1048576", "largest request body accepted", "maxBodyBytes", _integer,
       minimum=1024),
    _f("request-header-timeout", "10s", "time a client has to send a request's headers (the TLS "
       "handshake included for the first request of a connection)", "requestHeaderTimeout",
       _duration),
    _f("request-body-timeout", "10s", "time a client has to send a request's body once its "
       "headers are in", "requestBodyTimeout", _duration),
    _f("idle-timeout", "90s", "how long a kept-alive connection may wait for its next request",
       "idleTimeout", _duration),
    _f("max-connections", "2048", "open connections accepted at once; more are closed at once "
       "and logged", "maxConnections", _integer, minimum=1),
    _f("shutdown-delay", "0s", "on SIGTERM, how long to keep accepting connections after "
       "/readyz starts failing (time for the Service's endpoints to drop the pod)",
       "shutdownDelay", _duration, allowZero=True),
    _f("shutdown-grace-period", "45s", "on SIGTERM, how long requests in flight may take to "
       "finish before they are answered success:false (keep shutdown-delay + this below the "
       "pod's terminationGracePeriodSeconds)", "shutdownGracePeriod", _duration),
    _f("valkey-namespace", "kibaship-operator", "namespace of the operator's Valkey cluster",
       "valkeyNamespace", _dnsName),
    _f("valkey-service", "kibaship-valkey-cluster-kibaship-com",
       "Service name of the Valkey cluster", "valkeyService", _dnsName),
    _f("valkey-port", "6379", "Valkey port", "valkeyPort", _port),
    _f("valkey-secret", "kibaship-valkey-cluster-kibaship-com",
       "Secret (in --valkey-namespace) holding the Valkey password as its only key",
       "valkeySecret", _dnsName),
    _f("valkey-address", None, "host:port of the Valkey cluster, instead of <valkey-service>."
       "<valkey-namespace>.svc.cluster.local:<valkey-port> (a Valkey outside the cluster)",
       "valkeyAddress", lambda flag, v: _valkeyAddress(flag, v) if v else None),
    _f("valkey-connect-timeout", "5s", "default Valkey connect timeout", "valkeyConnectTimeout",
       _duration),
    _f("valkey-read-timeout", "3s", "default Valkey command timeout", "valkeyReadTimeout",
       _duration),
    _f("valkey-min-replicas", "0",
       "default replicas an append must reach (WAIT) before success", "valkeyMinReplicas",
       _integer),
    _f("idempotency-window", "24h", "how long a retried Present/CleanUp is recognised",
       "idempotencyWindow", _duration),
    _f("progress-events", "on", "on or off: status/issued/failed events on the project streams"
       " while cert-manager works on a challenge (docs/events.md)", "progressEvents", _switch),
    _f("progress-refresh-interval", "0", "0 (off) or how often a challenge still in the same"
       " phase gets a reminder status event (at most 24 per phase)", "progressRefreshInterval",
       _optionalDuration, minimum=60.0),
    _f("progress-window", "192h", "how long a progress transition is recognised (its"
       " idempotency record) and a Present's mark is kept", "progressWindow", _duration),
    _f("cluster-resource-namespace", "cert-manager", "cert-manager's --cluster-resource-namespace"
       ": where Secrets named by a ClusterIssuer's webhook config are read for progress events",
       "clusterResourceNamespace", _dnsName),
) + (
    # delegated renewals (docs/configuration.md, "Delegated renewals")
    _f("delegation-zone", None, "turns delegated renewals on: the zone the platform delegated to "
       "this daemon's DNS responder (e.g. acme.kibaship.com); absent: off", "delegationZone",
       _zone),
    _f("delegation-secret-file", None, "file holding at least 32 random bytes that delegation "
       "names are derived from (required with --delegation-zone; never change it)",
       "delegationSecretFile", _secretFile),
    _f("delegation-nameservers", None, "NS names served at the zone apex, comma-separated "
       "(default: ns1.<zone>)", "delegationNameservers", _list, item=_dnsName),
    _f("delegation-nameserver-addresses", None, "IP addresses served as A/AAAA for in-zone "
       "nameserver names (the DNS Service's external address), comma-separated",
       "delegationNameserverAddresses", _list, item=_address),
    _f("delegation-namespaces", "certificates", "namespaces whose Certificates are offered "
       "delegation, comma-separated; * for all", "delegationNamespaces", _list,
       item=_namespaceOrAll),
    _f("dns-port", "5353", "UDP and TCP port of the DNS responder (with --delegation-zone; 0: "
       "any free port, logged)", "dnsPort", _port, allowZero=True),
    _f("dns-bind-address", None, "address the DNS responder listens on (default: "
       "--bind-address)", "dnsBindAddress", lambda flag, v: _address(flag, v) if v else ""),
    _f("dns-resolvers", None, "recursive resolvers (ip[:port], comma-separated) asked whether a "
       "user's CNAME is in place (default: the nameservers of /etc/resolv.conf)",
       "dnsResolvers", _list, item=_hostPort),
    _f("dns-rate-limit", "100", "DNS responses per second to one source network (IPv4 /24, "
       "IPv6 /56) before rate limiting; 0: no limit", "dnsRateLimit", _number),
    _f("dns-rate-limit-slip", "2", "of the rate-limited responses, every Nth is a truncated "
       "answer (the resolver retries over TCP) and the others are dropped; 0: drop all",
       "dnsRateLimitSlip", _integer),
)


# -- the serving TLS policy (issue 23): kube-apiserver's flags, Go's names and defaults --

def _tlsMinVersion(flag, value):
    from kibaship_dns01.api.tlspolicy import PolicyError, parseMinVersion

    return _parsed(flag, parseMinVersion, value, PolicyError)


def _tlsCipherSuites(flag, value):
    from kibaship_dns01.api.tlspolicy import PolicyError, parseCipherSuites

    return _parsed(flag, parseCipherSuites, value, PolicyError)


FLAGS += (
    _f("tls-min-version", "VersionTLS12", "lowest TLS version served: VersionTLS12 or "
       "VersionTLS13", "tlsMinVersion", _tlsMinVersion),
    _f("tls-cipher-suites", None, "comma-separated TLS 1.2 cipher suites, named as Go and "
       "kube-apiserver name them (e.g. TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); empty: Go's "
       "defaults. Insecure suites are refused; TLS 1.3 suites are not configurable",
       "tlsCipherSuites", _tlsCipherSuites),
)


def _checkServingPair(settings):
    """Refuse to start with a serving pair that cannot be served under the TLS policy
    (at start-up only; later rotations that fail keep the previous pair, see ``api.tls``)."""
    from kibaship_dns01.api.tls import CertificateLoadError
    from kibaship_dns01.api.tlspolicy import PolicyError
    from kibaship_dns01.service import buildServingTLS

    try:
        buildServingTLS(settings, clock=None).load()
    except PolicyError as e:
        raise usage.UsageError(str(e))
    except CertificateLoadError as e:
        raise usage.UsageError(f"--tls-cert-file/--tls-private-key-file: {e}")


def _loadKubeConfig(settings):
    """The API server connection, or a usage error saying what is wrong with it."""
    from kibaship_dns01.kube.config import KubeConfigError, loadConfig

    try:
        return loadConfig(settings.kubeconfig)
    except KubeConfigError as e:
        if settings.kubeconfig:
            raise usage.UsageError(f"--kubeconfig: {e}")
        raise usage.UsageError(f"no --kubeconfig given and the in-cluster configuration "
                               f"cannot be loaded: {e}")


class Options(usage.Options):
    """Command-line options of ``twistd kibaship-dns01``."""

    synopsis = "[options]"
    longdesc = ("cert-manager DNS01 webhook solver for Kibaship: asks the project's users, via "
                "its Valkey event stream, to add the TXT record. Every flag may also be set with "
                f"the environment variable {ENV_PREFIX}<FLAG> (e.g. {_envName('secure-port')}).")
    optFlags = [
        ["dry-run", None, "resolve and build events, log them, append nothing"],
    ]
    optParameters = [[f.name, None, f.default, f.help] for f in FLAGS]

    def __init__(self):
        super().__init__()
        # The environment replaces defaults; flags parsed later still override it.
        for flag in FLAGS:
            if _envName(flag.name) in os.environ:
                self[flag.name] = os.environ[_envName(flag.name)]
        if os.environ.get(_envName("dry-run"), "").lower() in ("1", "true", "yes"):
            self["dry-run"] = 1

    def postOptions(self):
        self.settings = self._validate()
        _checkServingPair(self.settings)
        self.kubeConfig = _loadKubeConfig(self.settings)

    def _validate(self):
        values = {f.field: f.convert(f.name, self[f.name]) for f in FLAGS}
        if values["delegationZone"]:
            _completeDelegation(values)
        return Settings(dryRun=bool(self["dry-run"]), **values)


def _completeDelegation(values):
    """With --delegation-zone: the secret is required, and the defaults that depend on
    other flags are filled in."""
    zone = values["delegationZone"]
    if not values["delegationSecretFile"]:
        raise usage.UsageError("--delegation-secret-file is required with --delegation-zone")
    values["delegationNameservers"] = values["delegationNameservers"] or ("ns1." + zone,)
    values["dnsBindAddress"] = values["dnsBindAddress"] or values["bindAddress"]
    if not values["dnsResolvers"]:
        from kibaship_dns01.delegation.check import resolversFromResolvConf

        values["dnsResolvers"] = tuple(resolversFromResolvConf())
        if not values["dnsResolvers"]:
            raise usage.UsageError("--dns-resolvers: none given and /etc/resolv.conf lists no "
                                   "nameserver; name the recursive resolvers to ask")


def makeService(options):
    """Build the daemon's ``MultiService`` from parsed :class:`Options`."""
    from twisted.internet import reactor

    from kibaship_dns01.limits import ensureOpenFiles
    from kibaship_dns01.service import StopOnSIGTERM, buildService

    ensureOpenFiles(options.settings.maxConnections)
    root = buildService(options.settings, reactor, options.kubeConfig)
    StopOnSIGTERM(reactor).setServiceParent(root)
    return root


