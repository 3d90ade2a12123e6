"""Name rules: Kubernetes object names and the DNS names of a DNS01 challenge.

Nothing here does I/O.  Two families, because they are not the same rules:

* Kubernetes (``k8s.io/apimachinery/pkg/util/validation``): a DNS-1123
  *label* (namespaces, at most 63) and *subdomain* (most object names, at
  most 253), lower case only.
* DNS names as cert-manager hands them to a webhook: any case (names
  compare case-insensitively, RFC 4343), ASCII only (an internationalised
  name arrives in its ``xn--`` form), letters, digits, hyphens and
  underscores (``_acme-challenge`` itself has one), at most 63 octets a
  label and 253 in all.  :func:`dnsNameProblem` says what is wrong with a
  name rather than just whether, because the message goes back to whoever
  sent it; it remembers recent answers (cert-manager sends the same names
  until a challenge is done).
"""
import functools
import re

MAX_NAME = 253
MAX_LABEL = 63

_K8S_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_K8S_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: one DNS label: LDH plus underscore, no hyphen at either end
_DNS_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")

#: what cert-manager prepends to the domain (``util.DNS01LookupFQDN``)
ACME_CHALLENGE_LABEL = "_acme-challenge"


def isDNS1123Label(value):
    """A Kubernetes DNS-1123 label (a namespace name)."""
    return isinstance(value, str) and len(value) <= MAX_LABEL \
        and _K8S_LABEL.fullmatch(value) is not None


def isDNS1123Subdomain(value):
    """A Kubernetes DNS-1123 subdomain (most object names, an API group)."""
    return isinstance(value, str) and len(value) <= MAX_NAME \
        and _K8S_SUBDOMAIN.fullmatch(value) is not None


@functools.lru_cache(maxsize=4096)
def dnsNameProblem(name, absolute=False, wildcard=False):
    """What is wrong with DNS name ``name``, or ``None`` when it is valid.

    :param absolute: the name must end with the root's dot (``example.com.``);
        otherwise a trailing dot is allowed but not needed.
    :param wildcard: a leading ``*.`` label is allowed.
    """
    if not name.isascii():
        return "must be ASCII (an internationalised name is sent in its xn-- form)"
    if absolute and not name.endswith("."):
        return "must be an absolute name ending with a dot"
    bare = name[:-1] if name.endswith(".") else name
    if wildcard and bare.startswith("*."):
        bare = bare[2:]
    if not bare:
        return "must have at least one label"
    if len(bare) > MAX_NAME:
        return "is %d characters long; a DNS name has at most %d" % (len(bare), MAX_NAME)
    for label in bare.split("."):
        problem = _labelProblem(label)
        if problem:
            return problem
    return None


def _labelProblem(label):
    if not label:
        return "has an empty label (two dots in a row, or a leading dot)"
    if len(label) > MAX_LABEL:
        return "has a label of %d characters; a DNS label has at most %d" % (
            len(label), MAX_LABEL)
    if _DNS_LABEL.fullmatch(label) is None:
        return ("has label %r; labels hold letters, digits, '-' and '_' and do not start or "
                "end with '-'" % (label,))
    return None


def bareName(name):
    """``name`` without the trailing dot, lower-cased: how people type it."""
    return name.rstrip(".").lower()


def isWithin(name, zone):
    """``name`` is ``zone`` or below it (both any case, dots optional)."""
    name, zone = bareName(name), bareName(zone)
    return name == zone or name.endswith("." + zone)


def challengeFQDN(dnsName):
    """The record cert-manager presents when it follows no CNAME, without the dot.

    ``dnsName`` may carry a ``*.`` prefix (cert-manager documents that form,
    though it sends the bare domain): the wildcard and the apex challenge
    share one record name.
    """
    bare = bareName(dnsName)
    if bare.startswith("*."):
        bare = bare[2:]
    return "%s.%s" % (ACME_CHALLENGE_LABEL, bare)
