"""The Kibaship project behind a challenge, and the label rules (SPEC §6).

The Kibaship operator stamps ApplicationDomain Certificates with
``platform.kibaship.com/*`` labels; cert-manager copies them verbatim to the
CertificateRequest and the Order.  This module turns such a label set into a
validated :class:`ProjectLabels` and, together with the cert-manager object
names found on the way, into the immutable :class:`ProjectContext` the solver
publishes events for.  Nothing here does I/O: :mod:`kibaship_dns01.resolve`
finds the objects, this module decides what their labels mean.

Why the asymmetric validation: ``project-uuid`` names the Valkey stream, so a
malformed value must stop the Present (publishing to a stream nobody reads
would silently lose the user's instructions).  The other labels only enrich
the event, so a malformed one is dropped with a warning rather than failing a
certificate over a cosmetic field.
"""
import re

import attr
from twisted.logger import Logger

LABEL_PREFIX = "platform.kibaship.com/"
PROJECT_LABEL = LABEL_PREFIX + "project-uuid"
WORKSPACE_LABEL = LABEL_PREFIX + "workspace-uuid"
APPLICATION_LABEL = LABEL_PREFIX + "application-uuid"
DOMAIN_LABEL = LABEL_PREFIX + "uuid"
SLUG_LABEL = LABEL_PREFIX + "slug"
NAME_ANNOTATION = LABEL_PREFIX + "name"

# Used with fullmatch: ``$`` alone would accept a trailing newline.
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SLUG_PATTERN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
#: Kubernetes label values are at most 63 characters; a longer slug cannot be real.
SLUG_MAX = 63
#: The display name is a hint for a UI; anything longer is not a name.
DISPLAY_NAME_MAX = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_log = Logger()


class InvalidProjectLabel(ValueError):
    """The ``project-uuid`` label is present but is not a lower-case UUID."""

    def __init__(self, value):
        super().__init__("label %s=%r is not a lower-case UUID" % (PROJECT_LABEL, value))
        self.value = value


def isProjectUUID(value):
    """``True`` when ``value`` is a lower-case, hyphenated UUID (SPEC §6)."""
    return isinstance(value, str) and UUID_PATTERN.fullmatch(value) is not None


def _validSlug(value):
    return len(value) <= SLUG_MAX and SLUG_PATTERN.fullmatch(value) is not None


def _validDisplayName(value):
    return 0 < len(value.strip()) <= DISPLAY_NAME_MAX and not _CONTROL.search(value)


#: label -> (ProjectLabels field, validator) for the optional labels.
_OPTIONAL_LABELS = (
    (WORKSPACE_LABEL, "workspaceUUID", isProjectUUID),
    (APPLICATION_LABEL, "applicationUUID", isProjectUUID),
    (DOMAIN_LABEL, "domainUUID", isProjectUUID),
    (SLUG_LABEL, "slug", _validSlug),
)


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class ProjectLabels:
    """The validated Kibaship labels of one object.

    ``projectUUID`` is ``None`` when the object has no project label at all;
    an invalid one never gets here (:func:`parseProjectLabels` raises).
    """

    projectUUID: object = None
    workspaceUUID: object = None
    applicationUUID: object = None
    domainUUID: object = None
    slug: object = None
    displayName: object = None


def hasProjectLabel(labels):
    """Whether ``labels`` carry a *valid* project label, i.e. a walk may stop here."""
    return isProjectUUID((labels or {}).get(PROJECT_LABEL))


def parseProjectLabels(labels, annotations=None, where="object"):
    """Validate the Kibaship labels (and name annotation) of one object.

    :param where: names the object in warnings, e.g. ``Certificate certificates/ad-x``.
    :raises InvalidProjectLabel: ``project-uuid`` is present but malformed.
    :return: :class:`ProjectLabels`; malformed optional values are dropped
        with a logged warning naming the object and the label.
    """
    labels = labels or {}
    annotations = annotations or {}
    project = labels.get(PROJECT_LABEL)
    if project is not None and not isProjectUUID(project):
        raise InvalidProjectLabel(project)
    values = {"projectUUID": project}
    for label, field, valid in _OPTIONAL_LABELS:
        values[field] = _optional(labels, label, valid, where)
    values["displayName"] = _optional(annotations, NAME_ANNOTATION, _validDisplayName, where,
                                      kind="annotation")
    return ProjectLabels(**values)


def _optional(source, key, valid, where, kind="label"):
    value = source.get(key)
    if value is None:
        return None
    if isinstance(value, str) and valid(value):
        return value
    _log.warn("Ignoring malformed {kind} {key}={value!r} on {where}; fix it on the Certificate"
              " (the Kibaship operator sets it on ApplicationDomain certificates)",
              kind=kind, key=key, value=value, where=where)
    return None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class IssuerRef:
    """The Challenge's ``spec.issuerRef`` (cert-manager's ``ObjectReference``)."""

    name: str
    kind: str = "Issuer"
    group: str = "cert-manager.io"

    @classmethod
    def fromSpec(cls, ref):
        """From the JSON object; cert-manager defaults empty kind/group as here."""
        ref = ref or {}
        return cls(name=ref.get("name") or "", kind=ref.get("kind") or "Issuer",
                   group=ref.get("group") or "cert-manager.io")

    def asDict(self):
        return {"name": self.name, "kind": self.kind, "group": self.group}


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class ProjectContext:
    """Everything the solver needs to know about the project of one challenge.

    ``certificateNamespace``/``certificateName`` are ``None`` only for a
    CertificateRequest created by hand (no Certificate behind it).
    ``projectFromDefault`` is ``True`` when ``projectUUID`` came from the
    issuer's ``defaultProjectUUID`` because the Certificate had no label.
    """

    projectUUID: str
    challengeNamespace: str
    challengeName: str
    challengeUID: str = ""
    orderName: object = None
    certificateNamespace: object = None
    certificateName: object = None
    issuerRef: IssuerRef = attr.ib(factory=lambda: IssuerRef(name=""))
    wildcard: bool = False
    workspaceUUID: object = None
    applicationUUID: object = None
    domainUUID: object = None
    slug: object = None
    displayName: object = None
    projectFromDefault: bool = False
    #: the Certificate revision this challenge's issuance will produce
    #: (``cert-manager.io/certificate-revision``), when known
    certificateRevision: object = None
    #: the Challenge's solver has ``cnameStrategy: Follow`` (see ``ChallengeRequest.delegated``)
    followsCNAME: bool = False


def contextFromLabels(labels, annotations=None, *, challengeNamespace="certificates",
                      challengeName="challenge", defaultProjectUUID=None, **names):
    """Build a :class:`ProjectContext` straight from a label dict.

    The solver's tests (and anything that already holds the labels) use this
    instead of a cluster.  ``names`` are the remaining :class:`ProjectContext`
    fields (``certificateName``, ``issuerRef``, ``wildcard`` ...).

    :raises InvalidProjectLabel: the project label is malformed.
    :raises ValueError: no project label and no valid ``defaultProjectUUID``.
    """
    parsed = parseProjectLabels(labels, annotations)
    return withLabels(parsed, defaultProjectUUID, challengeNamespace=challengeNamespace,
                      challengeName=challengeName, **names)


def withLabels(parsed, defaultProjectUUID=None, **names):
    """A :class:`ProjectContext` from parsed labels, applying the default project.

    :raises ValueError: no project label and no valid ``defaultProjectUUID``.
    """
    project, fromDefault = parsed.projectUUID, False
    if project is None:
        if not isProjectUUID(defaultProjectUUID):
            raise ValueError("no %s label and no valid defaultProjectUUID" % (PROJECT_LABEL,))
        project, fromDefault = defaultProjectUUID, True
    return ProjectContext(
        projectUUID=project, projectFromDefault=fromDefault,
        workspaceUUID=parsed.workspaceUUID, applicationUUID=parsed.applicationUUID,
        domainUUID=parsed.domainUUID, slug=parsed.slug, displayName=parsed.displayName,
        **names)
