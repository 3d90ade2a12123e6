"""The owner chain Challenge -> Order -> CertificateRequest -> Certificate."""
import attr

from kibaship_dns01.kube import errors
from kibaship_dns01.project import (
    PROJECT_LABEL, InvalidProjectLabel, IssuerRef, ProjectLabels, hasProjectLabel, isProjectUUID,
    parseProjectLabels, withLabels)
from kibaship_dns01.resolve.challenges import (
    _challengeRef, _get, _shared, describe, followsCNAME)
from kibaship_dns01.resolve.errors import (
    _DEFAULT_HINT, _MISSING_LABEL_HINT, ChallengeGone, ResolutionError, TransientResolutionError)

ACME_GROUP = "acme.cert-manager.io"
CERTMANAGER_GROUP = "cert-manager.io"
CERTIFICATE_NAME_ANNOTATION = "cert-manager.io/certificate-name"
#: on CertificateRequests, and on Orders which copy the request's annotations
REVISION_ANNOTATION = "cert-manager.io/certificate-revision"


# --- the owner chain -----------------------------------------------------------

@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Kind:
    """One cert-manager kind of the chain and where its objects live."""

    kind: str
    group: str
    plural: str

    def path(self, namespace, name):
        return "/apis/%s/v1/namespaces/%s/%s/%s" % (self.group, namespace, self.plural, name)


ORDER = _Kind("Order", ACME_GROUP, "orders")
CERTIFICATE_REQUEST = _Kind("CertificateRequest", CERTMANAGER_GROUP, "certificaterequests")
CERTIFICATE = _Kind("Certificate", CERTMANAGER_GROUP, "certificates")


def controllerRef(obj, kind):
    """The controller ``ownerReference`` of ``obj`` if it points at a ``kind``."""
    for ref in _get(obj, "metadata", "ownerReferences") or ():
        if not isinstance(ref, dict) or not ref.get("controller"):
            continue
        group = (ref.get("apiVersion") or "").split("/")[0]
        if ref.get("kind") == kind.kind and group == kind.group and ref.get("name"):
            return ref
    return None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Hop:
    """The next object to fetch: its kind, name and (when known) expected UID."""

    kind: _Kind
    name: str
    uid: object = None


def nextHop(kind, obj):
    """Where the walk goes after ``obj`` (of ``kind``), or ``None`` at the end.

    The controller ownerReference is the truth; ``cert-manager.io/certificate-name``
    (on CertificateRequests, and on Orders which copy the request's annotations)
    is the fallback that skips straight to the Certificate.
    """
    owner = {ORDER: CERTIFICATE_REQUEST, CERTIFICATE_REQUEST: CERTIFICATE}.get(kind)
    if owner is None:
        return None
    ref = controllerRef(obj, owner)
    if ref is not None:
        return _Hop(owner, ref["name"], ref.get("uid"))
    name = _get(obj, "metadata", "annotations", CERTIFICATE_NAME_ANNOTATION)
    if isinstance(name, str) and name:
        return _Hop(CERTIFICATE, name)
    return None


def certificateNameOf(kind, obj):
    """The Certificate name ``obj`` knows without another GET, or ``None``.

    Orders carry ``cert-manager.io/certificate-name`` because cert-manager
    copies the CertificateRequest's annotations onto them.
    """
    if kind is CERTIFICATE:
        return _get(obj, "metadata", "name")
    ref = controllerRef(obj, CERTIFICATE)
    if ref is not None:
        return ref["name"]
    name = _get(obj, "metadata", "annotations", CERTIFICATE_NAME_ANNOTATION)
    return name if isinstance(name, str) and name else None


def _issuerRef(spec):
    """One shared :class:`IssuerRef` per issuer: every chain of an issuer has the same."""
    ref = IssuerRef.fromSpec(spec)
    return _shared(("IssuerRef", ref.name, ref.kind, ref.group), lambda: ref)


def _revisionOf(obj):
    value = _get(obj, "metadata", "annotations", REVISION_ANNOTATION)
    return value if isinstance(value, str) and value.isdigit() else None


@attr.s(frozen=True, slots=True, auto_attribs=True, kw_only=True)
class Chain:
    """What a walk found, before the issuer's default project is applied.

    Cached by Challenge UID only when it has a project label: a missing
    label may be fixed by the operator while cert-manager retries.
    """

    challengeNamespace: str
    challengeName: str
    challengeUID: str
    orderName: object
    certificateName: object
    issuerRef: IssuerRef
    wildcard: bool
    #: ``cnameStrategy: Follow`` on the Challenge's solver
    followsCNAME: bool
    #: the kind and name of the object whose labels count (in the Challenge's
    #: namespace, like the whole chain); see :attr:`labelsFrom`
    labelsKind: str
    labelsName: str
    #: its validated labels
    project: ProjectLabels
    #: the Certificate revision being issued (the Order's or request's
    #: ``cert-manager.io/certificate-revision``), when known
    certificateRevision: object = None

    @property
    def labelsFrom(self):
        """The object whose labels count, e.g. ``Certificate certificates/ad-x``.

        Built when asked (error messages): one per cached chain would be the
        largest thing the chain holds that no other cache shares."""
        return "%s %s/%s" % (self.labelsKind, self.challengeNamespace, self.labelsName)

    @property
    def certificateNamespace(self):
        """cert-manager keeps the whole chain in the Challenge's namespace."""
        return self.challengeNamespace if self.certificateName is not None else None

    @property
    def challengeRef(self):
        return (self.challengeNamespace, self.challengeName, self.challengeUID)

    def context(self, defaultProjectUUID=None):
        """The :class:`~kibaship_dns01.project.ProjectContext` of this chain.

        :raises ResolutionError: no project label and no (valid) default.
        """
        if self.project.projectUUID is None and defaultProjectUUID is not None \
                and not isProjectUUID(defaultProjectUUID):
            raise ResolutionError(
                "%s has no label %s and the issuer's defaultProjectUUID %r is not a lower-case"
                " UUID; fix defaultProjectUUID in the issuer's webhook config"
                % (self.labelsFrom, PROJECT_LABEL, defaultProjectUUID),
                "default_invalid", self.challengeRef)
        try:
            return withLabels(
                self.project, defaultProjectUUID,
                challengeNamespace=self.challengeNamespace, challengeName=self.challengeName,
                challengeUID=self.challengeUID, orderName=self.orderName,
                certificateNamespace=self.certificateNamespace,
                certificateName=self.certificateName, issuerRef=self.issuerRef,
                wildcard=self.wildcard, followsCNAME=self.followsCNAME,
                certificateRevision=self.certificateRevision)
        except ValueError:
            raise ResolutionError(
                "%s has no label %s; %s (%s)"
                % (self.labelsFrom, PROJECT_LABEL, _MISSING_LABEL_HINT, _DEFAULT_HINT),
                "label_missing", self.challengeRef) from None


class ChainWalker:
    """Walks Challenge -> Order -> CertificateRequest -> Certificate.

    Stateless apart from the client and the Order cache: :class:`ChallengeResolver`
    owns caching and the overall deadline.

    :param orders: an :class:`~kibaship_dns01.resolve.orders.OrderCache` (or
        ``None``): the Order comes from it when it holds the one the
        Challenge names, so a labelled chain costs no API round trip.
    """

    def __init__(self, client, orders=None):
        self._client = client
        self._orders = orders

    async def walk(self, challenge):
        """:return: the :class:`Chain` of ``challenge`` (a Challenge object)."""
        orderRef = controllerRef(challenge, ORDER)
        if orderRef is None:
            raise self._broken(challenge, describe("Challenge", challenge),
                               "controller ownerReference to an Order")
        kind, child = ORDER, describe("Challenge", challenge)
        hop = _Hop(ORDER, orderRef["name"], orderRef.get("uid"))
        obj = self._cachedOrder(challenge, hop) or await self._fetch(challenge, child, hop)
        orderName, certificateName, revision = obj["metadata"]["name"], None, None
        while True:
            certificateName = certificateNameOf(kind, obj) or certificateName
            revision = revision or _revisionOf(obj)
            labelled = hasProjectLabel(_get(obj, "metadata", "labels"))
            hop = nextHop(kind, obj)
            if hop is None or (labelled and certificateName is not None):
                break
            child = describe(kind.kind, obj)
            obj, kind = await self._fetch(challenge, child, hop), hop.kind
        if hop is None and kind is ORDER and not labelled:
            raise self._broken(challenge, describe("Order", obj),
                               "controller ownerReference to a CertificateRequest and no %s"
                               " annotation" % (CERTIFICATE_NAME_ANNOTATION,))
        return self._chain(challenge, orderName, certificateName, kind, obj, revision)

    @staticmethod
    def _chain(challenge, orderName, certificateName, kind, obj, revision=None):
        """The :class:`Chain` ending at ``obj``, whose labels are validated here.

        :raises ResolutionError: the project label is invalid (a
            ``defaultProjectUUID`` never hides an invalid label).
        """
        meta, spec = challenge["metadata"], challenge.get("spec") or {}
        labelsFrom = describe(kind.kind, obj)
        try:
            project = parseProjectLabels(_get(obj, "metadata", "labels"),
                                         _get(obj, "metadata", "annotations"), labelsFrom)
        except InvalidProjectLabel as e:
            raise ResolutionError(
                "%s has label %s=%r, which is not a lower-case UUID; fix the label (%s)"
                % (labelsFrom, PROJECT_LABEL, e.value, _MISSING_LABEL_HINT),
                "label_invalid", _challengeRef(challenge)) from None
        return Chain(
            challengeNamespace=meta["namespace"], challengeName=meta["name"],
            challengeUID=meta.get("uid") or "", orderName=orderName,
            certificateName=certificateName, issuerRef=_issuerRef(spec.get("issuerRef")),
            wildcard=bool(spec.get("wildcard")), followsCNAME=followsCNAME(challenge),
            labelsKind=kind.kind, labelsName=_get(obj, "metadata", "name"), project=project,
            certificateRevision=revision)

    def _cachedOrder(self, challenge, hop):
        if self._orders is None:
            return None
        return self._orders.lookup(challenge["metadata"]["namespace"], hop.name, hop.uid)

    async def _fetch(self, challenge, child, hop):
        """GET the next object; a deleted or replaced owner means the chain is gone."""
        namespace = challenge["metadata"]["namespace"]
        what = "%s %s/%s" % (hop.kind.kind, namespace, hop.name)
        ref = _challengeRef(challenge)
        try:
            obj = await self._client.get(hop.kind.path(namespace, hop.name))
        except errors.NotFound:
            raise ChallengeGone("%s (owner of %s) no longer exists" % (what, child),
                                "gone", ref)
        except errors.Forbidden as e:
            raise ResolutionError(
                "cannot read %s (owner of %s): %s; the daemon's ClusterRole needs get on %s.%s"
                % (what, child, e.message, hop.kind.plural, hop.kind.group), "forbidden", ref)
        except errors.KubeError as e:
            raise TransientResolutionError(
                "reading %s (owner of %s) failed: %s" % (what, child, e.message), "api_error", ref)
        if hop.uid and _get(obj, "metadata", "uid") != hop.uid:
            raise ChallengeGone("%s (owner of %s) was deleted and re-created; the owner this %s"
                                " belonged to no longer exists" % (what, child, child.split()[0]),
                                "gone", ref)
        return obj

    @staticmethod
    def _broken(challenge, what, missing):
        return ResolutionError(
            "%s has no %s, so its Certificate cannot be found; cert-manager sets it on the objects"
            " it creates: was this object created or edited by hand?" % (what, missing),
            "owner_missing", _challengeRef(challenge))
