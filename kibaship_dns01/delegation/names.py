"""The delegation name of a (project, domain): ``<label>.<zone>``.

The label is a keyed hash (HMAC-SHA-256 with the operator's delegation
secret) of the project UUID and the domain, truncated to 160 bits and
written in lower-case base32 without padding: 32 characters, one DNS label.

Why each property:

* **bound to the project** - a second tenant that adds the same domain gets
  another label, so nothing it presents is ever served under the label the
  domain's owner pointed their CNAME at (otherwise that tenant could obtain
  certificates for the owner's domain);
* **keyed** - without the secret nobody can compute a project's label, so a
  label cannot be guessed from a project UUID and a domain seen elsewhere;
* **the same for the apex and the wildcard** - cert-manager sends both as the
  same ``dnsName`` (``*.example.com`` arrives as ``example.com``) and both
  are checked at ``_acme-challenge.example.com``: one CNAME covers both;
* **stable** - derived, not stored: the same on every replica, across
  restarts and after the loss of every byte in Valkey.  Only a new secret
  changes it (then every user must re-add the CNAME: see
  docs/configuration.md, "Rotating the delegation secret").

160 bits keep labels collision-free for any number of domains a platform
will ever host while staying well inside the 63-octet label limit.
"""
import base64
import hashlib
import hmac
import re

import attr

from kibaship_dns01.names import bareName

#: the context string: a future derivation (v2) can never produce a v1 label
_CONTEXT = b"kibaship-dns01 delegation label v1\x00"
_DIGEST_BYTES = 20
#: what every label looks like: 32 characters of RFC 4648 base32, lower case
LABEL_LENGTH = 32
LABEL_PATTERN = re.compile(r"[a-z2-7]{%d}" % (LABEL_LENGTH,))


def normalDomain(dnsName):
    """The domain a delegation is for: lower case, no trailing dot, no ``*.``."""
    name = bareName(dnsName)
    return name[2:] if name.startswith("*.") else name


def delegationLabel(secret, projectUUID, dnsName):
    """The label of (``projectUUID``, ``dnsName``) under ``secret`` (bytes)."""
    message = b"%s%s\x00%s" % (_CONTEXT, projectUUID.lower().encode("ascii"),
                               normalDomain(dnsName).encode("ascii"))
    digest = hmac.new(secret, message, hashlib.sha256).digest()[:_DIGEST_BYTES]
    return base64.b32encode(digest).decode("ascii").lower()


def isDelegationLabel(label):
    """Whether ``label`` (str) has the shape of a delegation label; anything else
    can never hold a key, so it is answered without asking the store."""
    return isinstance(label, str) and LABEL_PATTERN.fullmatch(label) is not None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Delegation:
    """One (project, domain)'s delegation: the CNAME the user adds, once."""

    #: the label under the zone (what the store is keyed by)
    label: str
    #: ``_acme-challenge.<domain>`` (no trailing dot): where the user adds the CNAME
    name: str
    #: ``<label>.<zone>`` (no trailing dot): the CNAME's target
    value: str

    def asPayload(self, active):
        """The ``delegation`` object of a ``present`` payload (schema v1)."""
        return {"type": "CNAME", "name": self.name, "value": self.value, "active": active}


@attr.s(frozen=True, slots=True)
class DelegationNamer:
    """Names delegations in one zone with one secret."""

    secret = attr.ib(repr=False)
    #: the delegated zone, lower case, without the trailing dot
    zone = attr.ib(converter=bareName)

    def delegationFor(self, projectUUID, dnsName):
        label = delegationLabel(self.secret, projectUUID, dnsName)
        return Delegation(label=label, name="_acme-challenge." + normalDomain(dnsName),
                          value="%s.%s" % (label, self.zone))
