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
from kibaship_dns01.project import LABEL_PREFIX, NAME_ANNOTATION, PROJECT_LABEL, hasProjectLabel
from kibaship_dns01.resolve.challenges import _get, _sharedStr, _trimOwner
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


def trimOrder(obj):
    """Keep what :class:`~kibaship_dns01.resolve.ownerchain.ChainWalker` reads on
    an Order being issued, or ``None`` for one in a final state.

    Kept: identity, the Kibaship labels, the certificate-name, revision and
    display-name annotations, and the controller ownerReference only when the
    walk may go on past the Order (no valid project label or no
    certificate-name annotation).  Label and annotation keys, and the UUIDs
    one project's Orders share, are interned.  ``bench/bench_kube_cache.py``
    prints the bytes per Order.
    """
    if (obj.get("status") or {}).get("state") in FINAL_STATES:
        return None
    meta = obj.get("metadata") or {}
    trimmed = {"name": meta.get("name"), "namespace": _sharedStr(meta.get("namespace")),
               "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
    labels = {sys.intern(k): _keptString(v) for k, v in (meta.get("labels") or {}).items()
              if k.startswith(LABEL_PREFIX)}
    if labels:
        trimmed["labels"] = labels
    annotations = meta.get("annotations") or {}
    kept = {key: _keptString(annotations[key]) for key in ORDER_ANNOTATIONS
            if key in annotations}
    if kept:
        trimmed["annotations"] = kept
    certificateName = kept.get(CERTIFICATE_NAME_ANNOTATION)
    if not (hasProjectLabel(labels) and isinstance(certificateName, str) and certificateName):
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
