"""The issuer's ``dns01.webhook.config`` as a validated, immutable value (SPEC §8).

Validation is strict because the message ends up in ``kubectl describe
challenge``: an unknown key (a typo such as ``pasword SecretRef``) or a wrong
type is reported with the field's path and what is expected, instead of being
silently ignored and failing later with a confusing Valkey error.

Security rule: Secrets named here are read only from the request's
``resourceNamespace``.  A ``namespace`` field on a secret ref that points
elsewhere is refused; otherwise a tenant's Issuer could make this daemon read
another namespace's Secret and send it to an address of the tenant's choosing.
For the same reason the operator's default Secret is only ever sent to the
operator's default Valkey address: an issuer that sets its own ``addr``
without a ``passwordSecretRef`` connects without a password.
"""
import collections
import json
import re

import attr

from kibaship_dns01.durations import parseDuration
from kibaship_dns01.names import isDNS1123Subdomain
from kibaship_dns01.project import isProjectUUID
from kibaship_dns01.valkey.target import parseAddress

MAX_TTL = 86400
DEFAULT_TTL = 60
MAX_UI_HINTS = 32
MAX_UI_HINT_LENGTH = 1024


class ConfigError(ValueError):
    """The issuer config is invalid; ``str()`` names the field and what to fix."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class SecretRef:
    """A key of a Secret.  ``key=None`` means "the Secret's only key" (the operator's rule)."""

    namespace: str
    name: str
    key: object = None

    def describe(self):
        where = f"Secret {self.namespace}/{self.name}"
        return f"{where} key {self.key}" if self.key else where


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class ValkeySettings:
    """Where and how to append: the resolved connection settings for one request."""

    addr: str
    username: str = ""
    passwordSecret: object = None  # SecretRef or None (no AUTH)
    tls: bool = False
    caSecret: object = None  # SecretRef or None (system trust store)
    connectTimeout: float = 5.0
    readTimeout: float = 3.0
    writeTimeout: float = 3.0
    minReplicas: int = 0
    isDefault: bool = False


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class IssuerConfig:
    valkey: ValkeySettings
    uiHints: tuple = ()  # sorted (key, value) pairs: hashable and deterministic
    defaultProjectUUID: object = None
    ttl: int = DEFAULT_TTL

    @property
    def uiHintsDict(self):
        return dict(self.uiHints)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class Defaults:
    """What the daemon's flags say when the issuer config is silent."""

    valkeyNamespace: str = "kibaship-operator"
    valkeyService: str = "kibaship-valkey-cluster-kibaship-com"
    valkeyPort: int = 6379
    valkeySecret: str = "kibaship-valkey-cluster-kibaship-com"
    connectTimeout: float = 5.0
    readTimeout: float = 3.0
    minReplicas: int = 0
    #: ``--valkey-address``: replaces the Service's in-cluster name when set
    address: object = None

    @property
    def addr(self):
        if self.address:
            return self.address
        return f"{self.valkeyService}.{self.valkeyNamespace}.svc.cluster.local:{self.valkeyPort}"

    def valkeySettings(self):
        """The ``ValkeySettings`` of the daemon's own Valkey (what an issuer config
        without ``valkey`` gets)."""
        return parseIssuerConfig(None, self.valkeyNamespace, self).valkey

    @classmethod
    def fromSettings(cls, s):
        return cls(valkeyNamespace=s.valkeyNamespace, valkeyService=s.valkeyService,
                   valkeyPort=s.valkeyPort, valkeySecret=s.valkeySecret,
                   connectTimeout=s.valkeyConnectTimeout, readTimeout=s.valkeyReadTimeout,
                   minReplicas=s.valkeyMinReplicas, address=s.valkeyAddress)


_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", dict: "an object"}


def _expect(value, kind, path):
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"config.{path} must be {_TYPE_NAMES[kind]}, not {value!r}")
    return value


def _noUnknown(obj, allowed, path):
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        where = f"config.{path}" if path else "config"
        raise ConfigError(f"{where} has unknown field(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(allowed)}")


#: Secret data keys; like Secret names (DNS-1123 subdomains) checked here so a
#: name can never carry a path (``../``) into the API request.
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _secretRef(obj, path, namespace, defaultKey=None):
    _expect(obj, dict, path)
    _noUnknown(obj, ("name", "key", "namespace"), path)
    name = _expect(obj.get("name", ""), str, f"{path}.name")
    if not name:
        raise ConfigError(f"config.{path}.name is required")
    if not isDNS1123Subdomain(name):
        raise ConfigError(f"config.{path}.name {name!r} is not a valid Secret name "
                          f"(lower-case DNS subdomain)")
    key = _expect(obj.get("key", defaultKey or ""), str, f"{path}.key") or None
    if key is not None and (len(key) > 253 or not _SECRET_KEY.fullmatch(key)):
        raise ConfigError(f"config.{path}.key {key!r} is not a valid Secret key "
                          f"(letters, digits, '-', '_', '.')")
    other = obj.get("namespace")
    if other not in (None, "", namespace):
        raise ConfigError(
            f"config.{path}.namespace is {other!r}, but Secrets are read only from the "
            f"challenge's resourceNamespace {namespace!r}; copy the Secret there and drop "
            f"the namespace field")
    return SecretRef(namespace, name, key)


def _duration(obj, key, path, default):
    if key not in obj:
        return default
    try:
        seconds = parseDuration(_expect(obj[key], str, f"{path}.{key}"))
    except ValueError as e:
        raise ConfigError(f"config.{path}.{key}: {e}")
    if not 0 < seconds <= 60:
        raise ConfigError(f"config.{path}.{key} must be between 0 and 60s, not {obj[key]!r}")
    return seconds


_VALKEY_FIELDS = ("addr", "username", "passwordSecretRef", "tls", "caSecretRef",
                  "connectTimeout", "readTimeout", "writeTimeout", "minReplicas")


#: connection settings an issuer may only give together with its own ``addr``:
#: the operator's default connection (and its password) is the daemon's to configure
_CUSTOM_ONLY = ("username", "tls", "caSecretRef")


def _valkey(obj, namespace, defaults):
    _expect(obj, dict, "valkey")
    _noUnknown(obj, _VALKEY_FIELDS, "valkey")
    custom = "addr" in obj
    for field in _CUSTOM_ONLY:
        if field in obj and not custom:
            raise ConfigError(
                f"config.valkey.{field} needs config.valkey.addr: the operator's default Valkey "
                f"connection is configured by the daemon's flags, not by issuers")
    addr = _expect(obj["addr"], str, "valkey.addr") if custom else defaults.addr
    try:
        parseAddress(addr)
    except ValueError as e:
        raise ConfigError(f"config.valkey.addr: {e}")
    if "passwordSecretRef" in obj:
        password = _secretRef(obj["passwordSecretRef"], "valkey.passwordSecretRef", namespace)
    elif custom:
        password = None  # never send the operator's password to an issuer-chosen address
    else:
        password = SecretRef(defaults.valkeyNamespace, defaults.valkeySecret)
    ca = (_secretRef(obj["caSecretRef"], "valkey.caSecretRef", namespace, defaultKey="ca.crt")
          if "caSecretRef" in obj else None)
    minReplicas = _expect(obj.get("minReplicas", defaults.minReplicas), int, "valkey.minReplicas")
    if not 0 <= minReplicas <= 5:
        raise ConfigError(f"config.valkey.minReplicas must be between 0 and 5, not {minReplicas}")
    return ValkeySettings(
        addr=addr, username=_expect(obj.get("username", ""), str, "valkey.username"),
        passwordSecret=password, tls=_expect(obj.get("tls", False), bool, "valkey.tls"),
        caSecret=ca,
        connectTimeout=_duration(obj, "connectTimeout", "valkey", defaults.connectTimeout),
        readTimeout=_duration(obj, "readTimeout", "valkey", defaults.readTimeout),
        writeTimeout=_duration(obj, "writeTimeout", "valkey", defaults.readTimeout),
        minReplicas=minReplicas, isDefault=not custom)


def _uiHints(obj):
    _expect(obj, dict, "uiHints")
    if len(obj) > MAX_UI_HINTS:
        raise ConfigError(f"config.uiHints has {len(obj)} entries; at most {MAX_UI_HINTS}")
    for key, value in obj.items():
        _expect(value, str, f"uiHints.{key}")
        if len(value) > MAX_UI_HINT_LENGTH:
            raise ConfigError(f"config.uiHints.{key} is longer than {MAX_UI_HINT_LENGTH}")
    return tuple(sorted(obj.items()))


_TOP_FIELDS = ("valkey", "uiHints", "defaultProjectUUID", "ttl")


def parseIssuerConfig(config, resourceNamespace, defaults=Defaults()):
    """Validate ``config`` (the decoded JSON, or ``None``) into an :class:`IssuerConfig`."""
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise ConfigError(f"config must be an object, not {config!r}")
    _noUnknown(config, _TOP_FIELDS, "")
    project = config.get("defaultProjectUUID")
    if project is not None and not isProjectUUID(_expect(project, str, "defaultProjectUUID")):
        raise ConfigError(f"config.defaultProjectUUID {project!r} is not a lower-case UUID")
    ttl = _expect(config.get("ttl", DEFAULT_TTL), int, "ttl")
    if not 1 <= ttl <= MAX_TTL:
        raise ConfigError(f"config.ttl must be between 1 and {MAX_TTL} seconds, not {ttl}")
    return IssuerConfig(
        valkey=_valkey(config.get("valkey", {}), resourceNamespace, defaults),
        uiHints=_uiHints(config.get("uiHints", {})), defaultProjectUUID=project, ttl=ttl)


class SeenIssuerConfigs:
    """Issuer configs that arrived in requests from cert-manager, with their
    ``resourceNamespace`` (bounded, least recently seen forgotten first).

    A request reaches the solver only after authentication and authorization,
    so its config is the issuer's.  A Challenge object is weaker evidence: a
    namespace editor may create one, naming a ClusterIssuer (whose Secrets
    live in cert-manager's namespace) and an address of their choosing.  The
    progress events therefore use the Secrets a ClusterIssuer Challenge's
    config names only once a request carried that same config.
    """

    def __init__(self, maxEntries=1024):
        self._max = maxEntries
        self._seen = collections.OrderedDict()

    @staticmethod
    def _key(config, resourceNamespace):
        return (json.dumps(config, sort_keys=True), resourceNamespace)

    def add(self, config, resourceNamespace):
        key = self._key(config, resourceNamespace)
        self._seen[key] = True
        self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)

    def __contains__(self, pair):
        return self._key(*pair) in self._seen
