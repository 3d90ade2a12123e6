"""Reading what a cluster node said: error replies, redirects, the slot map.

Pure functions over reply values, so the routing state machine's inputs can be
unit tested without sockets.  txredisapi hands error replies over as
``ResponseError(line)``; :class:`ServerError` is the same line plus the
address of the node that said it (a ``MOVED`` may omit the host, meaning
"the node you are talking to").
"""
import attr

from kibaship_dns01.valkey.slots import SLOT_COUNT
from kibaship_dns01.valkey.target import ANNOUNCED, formatAddress

# error-reply classes (first word of the line)
MOVED, ASK = "moved", "ask"
TRYAGAIN, CLUSTERDOWN, NOSCRIPT, AUTH, NOPERM, OTHER = (
    "tryagain", "clusterdown", "noscript", "auth", "noperm", "other")

_BY_PREFIX = {
    "TRYAGAIN": TRYAGAIN,
    # the slot's owner is in flux or still loading its data: wait and retry
    "CLUSTERDOWN": CLUSTERDOWN, "LOADING": CLUSTERDOWN, "MASTERDOWN": CLUSTERDOWN,
    # a write reached a replica: our map is stale (the old primary came back
    # as a replica after a failover); refresh and retry
    "READONLY": CLUSTERDOWN,
    "NOSCRIPT": NOSCRIPT,
    "WRONGPASS": AUTH, "NOAUTH": AUTH,
    "NOPERM": NOPERM,
}


class ServerError(Exception):
    """An error reply from the node at ``address`` (``(host, port)``)."""

    def __init__(self, message, address):
        super().__init__(message)
        self.message = message
        self.address = address

    def __str__(self):
        return "%s (from %s)" % (self.message, formatAddress(self.address))


@attr.s(frozen=True, auto_attribs=True)
class Redirect:
    """A parsed ``MOVED``/``ASK``: ``slot`` now lives at ``address``."""

    kind: str
    slot: int
    address: tuple


def _stripErr(message):
    return message[4:] if message.startswith("ERR ") else message


def classify(message):
    """The class of an error line: one of the constants above."""
    message = _stripErr(message)
    word = message.split(" ", 1)[0]
    if word in ("MOVED", "ASK"):
        return word.lower()
    if word in _BY_PREFIX:
        return _BY_PREFIX[word]
    if word.startswith("invalid") and "password" in message:  # old "ERR invalid password"
        return AUTH
    if "no permissions to run" in message:  # "ACL failure in script: User u has no ..."
        return NOPERM
    return OTHER


def parseRedirect(message, replier):
    """``"MOVED 3999 10.0.0.5:6379"`` → :class:`Redirect`; ``None`` if not one.

    An empty host (``"MOVED 3999 :6380"``) means the host of ``replier``.
    """
    parts = _stripErr(message).split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK") or not parts[1].isdigit():
        return None
    host, sep, port = parts[2].rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host.strip("[]") or replier[0]
    return Redirect(parts[0].lower(), int(parts[1]), (host, int(port)))


def rewriteHost(address, replier, policy):
    """Apply the announced-address policy to one announced address."""
    host, port = address
    if policy == ANNOUNCED and host:
        return (host, port)
    return (replier[0], port)


def _decode(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _nodeAddress(node, replier, policy):
    """The address of one ``[host, port, id, ...]`` entry, or None if unknown."""
    host, port = _decode(node[0]), int(node[1])
    if host == "?":
        # the node does not know its own endpoint yet; it cannot be used
        return None
    return rewriteHost((host or "", port), replier, policy)


@attr.s(frozen=True)
class SlotMap:
    """Which primary serves each slot, and every node address (replicas too)."""

    primaries = attr.ib()   # tuple of SLOT_COUNT addresses-or-None
    nodes = attr.ib()       # frozenset of addresses

    @classmethod
    def empty(cls):
        return cls((None,) * SLOT_COUNT, frozenset())

    @classmethod
    def fromClusterSlots(cls, reply, replier, policy=ANNOUNCED):
        """Build from a ``CLUSTER SLOTS`` reply read from ``replier``."""
        primaries = [None] * SLOT_COUNT
        nodes = set()
        for entry in reply:
            start, end = int(entry[0]), int(entry[1])
            addresses = [_nodeAddress(n, replier, policy) for n in entry[2:]]
            nodes.update(a for a in addresses if a is not None)
            if addresses and addresses[0] is not None:
                primaries[start:end + 1] = [addresses[0]] * (end - start + 1)
        return cls(tuple(primaries), frozenset(nodes))

    def primaryFor(self, slot):
        return self.primaries[slot]

    def withSlot(self, slot, address):
        """A copy where ``slot`` is served by ``address`` (after a ``MOVED``)."""
        primaries = list(self.primaries)
        primaries[slot] = address
        return SlotMap(tuple(primaries), self.nodes | {address})

    def primaryAddresses(self):
        return sorted({a for a in self.primaries if a is not None})

    @property
    def covered(self):
        """True when every slot has a primary."""
        return all(a is not None for a in self.primaries)
