"""The serving TLS policy, as kube-apiserver offers it: ``--tls-min-version`` and
``--tls-cipher-suites``, with Go's names and Go's defaults.

Every Go webhook and ``k8s.io/apiserver`` serve with Go's ``crypto/tls``
defaults, so the kube-aggregator (and a scanner) should find the same here.
Sources, in golang/go:

- ``src/crypto/tls/defaults.go``, ``defaultCipherSuites()``: the TLS 1.0–1.2
  default is ``cipherSuitesPreferenceOrder`` minus ``disabledCipherSuites``
  (CBC-SHA256 and RC4), minus the RSA key exchange suites (off by default since
  Go 1.22, GODEBUG ``tlsrsakex``) and 3DES (since Go 1.23, GODEBUG ``tls3des``).
- ``src/crypto/tls/cipher_suites.go``: ``cipherSuitesPreferenceOrder``,
  ``CipherSuites()`` and ``InsecureCipherSuites()`` (which, in current Go, lists
  the RSA key exchange, RC4, CBC-SHA256 and 3DES suites).

So the default is ECDHE with AES-GCM and ChaCha20-Poly1305, *and* ECDHE with
AES-CBC and a SHA-1 HMAC, which Go still serves by default (those have Lucky13
countermeasures in Go; the CBC-SHA256 ones do not, which is why Go turned
those off).  An operator who wants AEAD only lists the six AEAD suites.

The order of ``--tls-cipher-suites`` does not matter: since Go 1.17 crypto/tls
picks by its own preference order, and so does this module.

TLS 1.3 suites cannot be configured, in Go as here: OpenSSL's TLS 1.3 defaults
(AES-256-GCM, ChaCha20-Poly1305, AES-128-GCM) are Go's set.  Their names are
accepted in ``--tls-cipher-suites`` as kube-apiserver accepts them, and change
nothing.
"""
import attr
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from OpenSSL import SSL

TLS12, TLS13 = "VersionTLS12", "VersionTLS13"
VERSIONS = {TLS12: SSL.TLS1_2_VERSION, TLS13: SSL.TLS1_3_VERSION}
#: versions kube-apiserver accepts that this daemon refuses
REFUSED_VERSIONS = {"VersionTLS10": "TLS 1.0", "VersionTLS11": "TLS 1.1"}


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Suite:
    """One TLS 1.2 cipher suite: Go's (IANA) name, its IANA id, OpenSSL's name and the
    key its certificate must hold (``ECDSA`` suites also serve Ed25519, as in Go)."""

    name: str
    id: int
    openssl: str
    key: str


#: Go's ``cipherSuitesPreferenceOrder``, secure TLS 1.2 suites only
SUITES = (
    Suite("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 0xC02B, "ECDHE-ECDSA-AES128-GCM-SHA256",
          "ECDSA"),
    Suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xC02F, "ECDHE-RSA-AES128-GCM-SHA256", "RSA"),
    Suite("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", 0xC02C, "ECDHE-ECDSA-AES256-GCM-SHA384",
          "ECDSA"),
    Suite("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", 0xC030, "ECDHE-RSA-AES256-GCM-SHA384", "RSA"),
    Suite("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", 0xCCA9,
          "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDSA"),
    Suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", 0xCCA8, "ECDHE-RSA-CHACHA20-POLY1305",
          "RSA"),
    Suite("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", 0xC009, "ECDHE-ECDSA-AES128-SHA", "ECDSA"),
    Suite("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", 0xC013, "ECDHE-RSA-AES128-SHA", "RSA"),
    Suite("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", 0xC00A, "ECDHE-ECDSA-AES256-SHA", "ECDSA"),
    Suite("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", 0xC014, "ECDHE-RSA-AES256-SHA", "RSA"),
)
#: the names k8s.io/component-base keeps for backward compatibility
ALIASES = {
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
}
#: accepted, without effect (see the module docstring)
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256")
#: Go's ``InsecureCipherSuites()``
INSECURE = (
    "TLS_RSA_WITH_RC4_128_SHA", "TLS_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA", "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
)
#: every name ``--tls-cipher-suites`` accepts
ACCEPTED = tuple(s.name for s in SUITES) + tuple(ALIASES) + TLS13_SUITES


class PolicyError(ValueError):
    """A TLS policy that cannot be served; ``str()`` says what to change."""


def parseMinVersion(value):
    """``VersionTLS12`` or ``VersionTLS13``; :class:`PolicyError` otherwise."""
    if value in VERSIONS:
        return value
    if value in REFUSED_VERSIONS:
        raise PolicyError(f"{value} is not accepted: {REFUSED_VERSIONS[value]} is deprecated "
                          f"(RFC 8996); use {TLS12} or {TLS13}")
    raise PolicyError(f"{value!r} is not one of {TLS12}, {TLS13}")


def parseCipherSuites(value):
    """The names a comma-separated list gives (aliases resolved, each once); ``()`` for
    an empty list, which means Go's defaults.  :class:`PolicyError` for an unknown or
    insecure name."""
    chosen = []
    for name in (n.strip() for n in (value or "").split(",")):
        if not name:
            continue
        if name in INSECURE:
            raise PolicyError(f"{name} is insecure (Go lists it in crypto/tls "
                              f"InsecureCipherSuites) and is refused")
        if name not in ACCEPTED:
            raise PolicyError(f"{name!r} is not a cipher suite name Go knows; accepted: "
                              f"{', '.join(ACCEPTED)}")
        name = ALIASES.get(name, name)
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def _keyKind(certificate):
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        return "ECDSA"
    return type(key).__name__


@attr.s(frozen=True, slots=True)
class TLSPolicy:
    """A minimum version and the suite names of ``--tls-cipher-suites`` (``()``: Go's
    defaults), checked together.

    :raise PolicyError: a bad version, a bad name, or TLS 1.2 allowed while the
        list names TLS 1.3 suites only (TLS 1.2 clients could not connect).
    """

    minVersion = attr.ib(default=TLS12, converter=parseMinVersion)
    cipherSuites = attr.ib(default=(), converter=lambda names: parseCipherSuites(
        names if isinstance(names, str) else ",".join(names)))

    def __attrs_post_init__(self):
        if self.cipherSuites and not self.tls12Suites and self.minVersion == TLS12:
            raise PolicyError(f"--tls-cipher-suites names TLS 1.3 suites only, which cannot be "
                              f"configured, so TLS 1.2 clients could not connect: add TLS 1.2 "
                              f"suites or set --tls-min-version {TLS13}")

    @property
    def tls12Suites(self):
        """The TLS 1.2 suites served, in Go's preference order."""
        if not self.cipherSuites:
            return DEFAULT_SUITES
        return tuple(s for s in SUITES if s.name in self.cipherSuites)

    def apply(self, context, certificate):
        """Set the minimum version and the TLS 1.2 suites on an ``SSL.Context`` serving
        ``certificate`` (a ``cryptography`` certificate).

        :raise PolicyError: with TLS 1.2 allowed, no listed suite suits the
            certificate's key (every TLS 1.2 handshake would fail).
        """
        context.set_min_proto_version(VERSIONS[self.minVersion])
        if self.minVersion == TLS13:
            return
        kind = _keyKind(certificate)
        suites = self.tls12Suites
        if not any(s.key == kind for s in suites):
            raise PolicyError(f"the certificate's {kind} key can use none of the TLS 1.2 "
                              f"cipher suites allowed by --tls-cipher-suites "
                              f"({', '.join(s.name for s in suites)})")
        context.set_cipher_list(":".join(s.openssl for s in suites).encode("ascii"))


#: Go's ``defaultCipherSuites()`` for TLS 1.2 (see the module docstring): in current Go
#: every secure TLS 1.2 suite of ``CipherSuites()`` is also a default one
DEFAULT_SUITES = SUITES
DEFAULT = TLSPolicy()
