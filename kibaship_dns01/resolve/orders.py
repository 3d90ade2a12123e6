"""A watch-backed cache of Kibaship Orders: the first hop of the owner-chain walk.

Every new Challenge's walk starts with its Order (SPEC §6), and cert-manager
copies the Certificate's labels onto the Order, so for a Kibaship
Certificate the Order alone names the project.  A controller reads it from
an informer rather than GETting it per Challenge: so does this, with the
watch restricted on the server to Orders labelled
``platform.kibaship.com/project-uuid`` (other Orders are never walked from
the cache: platform certificates using ``defaultProjectUUID`` have none) and
each Order trimmed to what the walk reads.

The walk takes the cached Order only when its UID is the one the
Challenge's ownerReference names; otherwise (not labelled, not delivered by
the watch yet, deleted and re-created) it GETs the Order as before, so every
error the GET reports (gone, replaced, forbidden, unavailable) still reaches
the caller.
"""
import sys

import attr

from kibaship_dns01.kube.informer import Informer
from kibaship_dns01.project import (
    APPLICATION_LABEL, DOMAIN_LABEL, NAME_ANNOTATION, PROJECT_LABEL, SLUG_LABEL, WORKSPACE_LABEL,
    isProjectUUID)
from kibaship_dns01.resolve.challenges import _sharedStr, _trimOwner
from kibaship_dns01.resolve.ownerchain import CERTIFICATE_NAME_ANNOTATION, REVISION_ANNOTATION

ORDERS_PATH = "/apis/acme.cert-manager.io/v1/orders"
#: the annotations the walk reads on an Order (copied there from the CertificateRequest)
ORDER_ANNOTATIONS = tuple(sys.intern(key) for key in (
    CERTIFICATE_NAME_ANNOTATION, REVISION_ANNOTATION, NAME_ANNOTATION))
#: cert-manager's final Order states.  Such an Order's Challenges are finished (a
#: CleanUp may still come, usually answered from the chain cache); the cache
#: leaves them out, so it holds the Orders being issued rather than every Order
#: the CertificateRequests' revision history keeps.
FINAL_STATES = frozenset(("valid", "invalid", "expired", "errored"))


def _keptString(value):
    return sys.intern(value) if isinstance(value, str) else value


#: the labels the walk reads (see :func:`~kibaship_dns01.project.parseProjectLabels`)
WALKED_LABELS = (PROJECT_LABEL, WORKSPACE_LABEL, APPLICATION_LABEL, DOMAIN_LABEL, SLUG_LABEL)


@attr.s(slots=True, frozen=True, auto_attribs=True, kw_only=True)
class CachedOrder:
    """An Order being issued, as the cache keeps it.

    One slotted object per Order and only the strings that differ between
    Orders (the label and annotation values are interned: a project's UUIDs
    and an issuer's names repeat): a dict per Order and per label set cost
    twice as much, for as many Orders as there are Challenges.
    """

    name: str
    namespace: str
    uid: str
    resourceVersion: str
    #: the values of :data:`WALKED_LABELS` (``None``: no such label)
    labels: tuple
    #: the values of :data:`ORDER_ANNOTATIONS` (``None``: no such annotation)
    annotations: tuple
    #: the trimmed controller ownerReferences, only when the walk may need them
    owners: tuple = ()

    def asObject(self):
        """The Order as the walk reads it (built per lookup, not kept)."""
        meta = {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                "resourceVersion": self.resourceVersion}
        labels = {k: v for k, v in zip(WALKED_LABELS, self.labels) if v is not None}
        if labels:
            meta["labels"] = labels
        annotations = {k: v for k, v in zip(ORDER_ANNOTATIONS, self.annotations)
                       if v is not None}
        if annotations:
            meta["annotations"] = annotations
        if self.owners:
            meta["ownerReferences"] = [dict(owner) for owner in self.owners]
        return {"metadata": meta}


def trimOrder(obj):
    """The :class:`CachedOrder` of an Order being issued, or ``None`` for one in
    a final state.

    Kept: identity, what :class:`~kibaship_dns01.resolve.ownerchain.ChainWalker`
    reads (the Kibaship labels, the certificate-name, revision and display-name
    annotations), and the controller ownerReference only when the walk may go
    on past the Order (no valid project label or no certificate-name
    annotation).  ``bench/bench_kube_cache.py`` prints the bytes per Order.
    """
    if (obj.get("status") or {}).get("state") in FINAL_STATES:
        return None
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    project = labels.get(PROJECT_LABEL)
    certificateName = annotations.get(CERTIFICATE_NAME_ANNOTATION)
    owners = ()
    if not (isProjectUUID(project) and isinstance(certificateName, str) and certificateName):
        owners = tuple(_trimOwner(ref) for ref in meta.get("ownerReferences") or ()
                       if isinstance(ref, dict) and ref.get("controller"))
    return CachedOrder(
        name=meta.get("name"), namespace=_sharedStr(meta.get("namespace")), uid=meta.get("uid"),
        resourceVersion=meta.get("resourceVersion"),
        labels=tuple(_keptString(labels.get(key)) for key in WALKED_LABELS),
        annotations=tuple(_keptString(annotations.get(key)) for key in ORDER_ANNOTATIONS),
        owners=owners)


class OrderCache:
    """The Informer of labelled Orders and the one lookup the walk makes.

    :ivar informer: the :class:`~kibaship_dns01.kube.informer.Informer`
        (cache name ``orders``) of :class:`CachedOrder`, started and stopped by
        its owner.
    """

    def __init__(self, client, clock):
        self.informer = Informer(client, ORDERS_PATH, clock, "orders", trim=trimOrder,
                                 params={"labelSelector": PROJECT_LABEL},
                                 version=lambda order: order.resourceVersion)

    def lookup(self, namespace, name, uid):
        """The cached Order ``namespace/name`` (as the walk reads it) if it is the
        one with ``uid``, else ``None``.

        Without a UID to compare (ownerReferences always carry one) the
        cache is not trusted: the GET decides.
        """
        order = self.informer.get(namespace, name)
        if order is None or not uid or order.uid != uid:
            return None
        return order.asObject()
