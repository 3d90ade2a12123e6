"""The Valkey cluster publisher (SPEC §7, §9).

Other modules use only what is exported here:

* :class:`ValkeyTarget` - which cluster and how (seeds, user, TLS, timeouts,
  ``minReplicas``, idempotency window, credentials provider);
* :class:`ValkeyPublisher` - the ``IStreamPublisher`` and ``Service``;
* :class:`AppendResult`, :data:`SEQUENCE_TOKEN`/:data:`SEQUENCE_PLACEHOLDER`
  (how ``event_data`` receives the sequence number), :func:`streamKey`;
* the errors, all subclasses of :class:`ValkeyError`;
* :data:`REQUIRED_ACL_RULES`, what an ACL user of the publisher needs.

Layers, bottom up: ``slots`` (key → slot), ``target`` (the config value),
``replies`` (error lines, redirects, slot map), ``node`` (connections to one
node on txredisapi's protocol), ``cluster`` (routing and retries),
``script`` (the idempotent append), ``publisher`` (the service).
"""
from kibaship_dns01.valkey.errors import (
    ValkeyAuthError, ValkeyCommandError, ValkeyDurabilityError, ValkeyError, ValkeyTLSError,
    ValkeyUnavailable)
from kibaship_dns01.valkey.publisher import AppendResult, ValkeyPublisher
from kibaship_dns01.valkey.script import SEQUENCE_PLACEHOLDER, SEQUENCE_TOKEN, streamKey
from kibaship_dns01.valkey.target import REQUIRED_ACL_RULES, ValkeyTarget

__all__ = [
    "AppendResult", "REQUIRED_ACL_RULES", "SEQUENCE_PLACEHOLDER", "SEQUENCE_TOKEN",
    "ValkeyAuthError",
    "ValkeyCommandError", "ValkeyDurabilityError", "ValkeyError", "ValkeyPublisher",
    "ValkeyTLSError", "ValkeyTarget", "ValkeyUnavailable", "streamKey",
]
