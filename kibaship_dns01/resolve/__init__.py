"""From a cert-manager challenge request to its Kibaship project (SPEC §6).

cert-manager's request names no Challenge (SPEC §2), only ``dnsName``, ``key``
and ``resourceNamespace``.  So the resolver

1. keeps a cluster-wide, watch-backed cache of Challenges indexed by
   ``spec.key`` and picks the one whose key, ``dnsName`` and webhook
   group/solver match (preferring ``resourceNamespace``, which is the
   Challenge's namespace for an ``Issuer`` but cert-manager's own namespace for
   a ``ClusterIssuer``);
2. on a cache miss (a Challenge created a moment ago, or a cache still
   syncing) LISTs ``resourceNamespace``, gives a live watch ``watchGrace``
   seconds to deliver the Challenge, then LISTs every namespace, once
   (concurrent misses share these LISTs);
3. walks the controller ``ownerReferences`` Challenge -> Order ->
   CertificateRequest -> Certificate, stopping at the first object that
   carries a valid project label (cert-manager copies the Certificate's
   labels to the CertificateRequest and the Order, so one GET usually does);
4. caches the walked chain by Challenge UID until the Informer reports the
   Challenge deleted, so CleanUp (which runs while cert-manager's finalizer
   keeps the Challenge alive) and retried Presents cost no API call.

The whole lookup is bounded by ``lookupTimeout``: cert-manager gives up on a
request after 60 s and retries it anyway.
"""

from kibaship_dns01.resolve.challenges import (
    CHALLENGES_PATH, KEY_INDEX, ChallengeQuery, challengeKeys, trimChallenge)
from kibaship_dns01.resolve.errors import ChallengeGone, ResolutionError, TransientResolutionError
from kibaship_dns01.resolve.ownerchain import ChainWalker
from kibaship_dns01.resolve.resolver import ChallengeResolver

__all__ = [
    "CHALLENGES_PATH", "KEY_INDEX", "ChainWalker", "ChallengeGone", "ChallengeQuery",
    "ChallengeResolver", "ResolutionError", "TransientResolutionError", "challengeKeys",
    "trimChallenge",
]
