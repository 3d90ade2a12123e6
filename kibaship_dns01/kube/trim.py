"""Build ``trim`` functions for :class:`~kibaship_dns01.kube.informer.Informer`.

A cache holds every object of a collection for as long as it exists; real
objects carry ``managedFields``, annotations and status that the daemon never
reads and that dominate their size.  ``keepFields("metadata.name",
"spec.key", ...)`` returns a function that copies only those dotted paths
(missing ones are skipped), so the cache's memory is proportional to what is
used.  Kept strings are interned, so the many repeated values share memory.
"""
import sys


def _split(paths):
    tree = {}
    for path in paths:
        node = tree
        for part in path.split("."):
            node = node.setdefault(part, {})
    return tree


def _intern(value):
    """Share equal strings between cached objects (kinds, namespaces, issuer
    names repeat in every object; JSON decoding makes a new copy each time)."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(k): _intern(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_intern(v) for v in value]
    return value


def _copy(value, tree):
    if not tree or not isinstance(value, dict):
        return _intern(value)
    out = {}
    for key, sub in tree.items():
        if key in value:
            out[key] = _copy(value[key], sub)
    return out


def keepFields(*paths):
    """A trim function keeping only ``paths`` (dotted; a path keeps its whole subtree).

    ``kind``, ``apiVersion``, ``metadata.name``, ``metadata.namespace`` and
    ``metadata.resourceVersion`` are always kept: the informer keys and
    versions objects by them.
    """
    tree = _split(("kind", "apiVersion", "metadata.name", "metadata.namespace",
                   "metadata.resourceVersion") + tuple(paths))
    return lambda obj: _copy(obj, tree)
