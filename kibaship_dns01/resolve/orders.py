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

from kibaship_dns01.kube.informer import Informer
from kibaship_dns01.project import LABEL_PREFIX, NAME_ANNOTATION, PROJECT_LABEL
from kibaship_dns01.resolve.challenges import _get, _sharedStr, _trimOwner
from kibaship_dns01.resolve.ownerchain import CERTIFICATE_NAME_ANNOTATION, REVISION_ANNOTATION

ORDERS_PATH = "/apis/acme.cert-manager.io/v1/orders"
#: the annotations the walk reads on an Order (copied there from the CertificateRequest)
ORDER_ANNOTATIONS = (CERTIFICATE_NAME_ANNOTATION, REVISION_ANNOTATION, NAME_ANNOTATION)


def _interned(mapping):
    """Label and annotation keys repeat in every Order, and so do the project,
    workspace and application UUIDs of one project."""
    return {sys.intern(k): sys.intern(v) if isinstance(v, str) else v
            for k, v in mapping.items()}


def trimOrder(obj):
    """Keep what :class:`~kibaship_dns01.resolve.ownerchain.ChainWalker` reads on
    an Order: identity, the Kibaship labels, the certificate-name, revision and
    display-name annotations, and the controller ownerReference (to walk on
    when the Order's project label is invalid).  ``bench/bench_kube_cache.py``
    prints the bytes per Order."""
    meta = obj.get("metadata") or {}
    trimmed = {key: meta[key] for key in ("name", "uid", "resourceVersion") if key in meta}
    if "namespace" in meta:
        trimmed["namespace"] = _sharedStr(meta["namespace"])
    labels = {k: v for k, v in (meta.get("labels") or {}).items()
              if isinstance(k, str) and k.startswith(LABEL_PREFIX)}
    if labels:
        trimmed["labels"] = _interned(labels)
    annotations = meta.get("annotations") or {}
    kept = {k: annotations[k] for k in ORDER_ANNOTATIONS if k in annotations}
    if kept:
        trimmed["annotations"] = _interned(kept)
    owners = [_trimOwner(ref) for ref in meta.get("ownerReferences") or ()
              if isinstance(ref, dict) and ref.get("controller")]
    if owners:
        trimmed["ownerReferences"] = owners
    return {"metadata": trimmed}


class OrderCache:
    """The Informer of labelled Orders and the one lookup the walk makes.

    :ivar informer: the :class:`~kibaship_dns01.kube.informer.Informer`
        (cache name ``orders``), started and stopped by its owner.
    """

    def __init__(self, client, clock):
        self.informer = Informer(client, ORDERS_PATH, clock, "orders", trim=trimOrder,
                                 params={"labelSelector": PROJECT_LABEL})

    def lookup(self, namespace, name, uid):
        """The cached Order ``namespace/name`` if it is the one with ``uid``, else ``None``.

        Without a UID to compare (ownerReferences always carry one) the
        cache is not trusted: the GET decides.
        """
        obj = self.informer.get(namespace, name)
        if obj is None or not uid or _get(obj, "metadata", "uid") != uid:
            return None
        return obj
