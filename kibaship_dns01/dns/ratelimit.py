"""Response rate limiting (RRL) per source network, as BIND and Knot do it.

A UDP source address can be forged, so an open authoritative server is a
reflector: an attacker sends queries "from" a victim and the answers flood
the victim.  Every network (IPv4 /24, IPv6 /56: what one site holds) gets a
token bucket on the injected clock: ``rate`` answers a second, ``burst`` at
once.  A query over its network's budget is, every ``slip``-th time, given a
"slip": an empty answer with TC set (:func:`.wire.slipAnswer`, never larger
than the query), so a real resolver behind that network falls back to TCP,
which cannot be forged, and is still answered; the others are dropped.
``slip=0`` drops them all, ``slip=1`` slips them all.

The decision is made from the source address alone, before the packet is
parsed, so a flood costs one dictionary look-up a packet.  The table of
networks is bounded (``maxNetworks``, least recently seen evicted first): a
forged-source flood over millions of networks cannot grow it; an evicted
network starts again with a full bucket, which is what a network not seen for
a while would have anyway.  TCP is not limited here (its source is real; the
TCP listener caps connections instead).
"""
import collections
import socket

ANSWER, SLIP, DROP = "answer", "slip", "drop"

DEFAULT_RATE = 100.0
DEFAULT_BURST = 200.0
DEFAULT_SLIP = 2
DEFAULT_MAX_NETWORKS = 65536
_MAPPED_V4 = bytes(10) + b"\xff\xff"


def networkOf(host):
    """The network ``host`` (an address string) is limited with: the first 3 octets of
    an IPv4 address (also when mapped into IPv6), the first 7 of an IPv6 one."""
    try:
        if ":" not in host:
            return socket.inet_pton(socket.AF_INET, host)[:3]
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        return host
    return packed[12:15] if packed[:12] == _MAPPED_V4 else packed[:7]


class _Bucket:
    __slots__ = ("tokens", "stamp", "limited")

    def __init__(self, tokens, stamp):
        self.tokens = tokens
        self.stamp = stamp
        self.limited = 0


class ResponseRateLimiter:
    """Decides, per source address, whether to answer, slip or drop."""

    def __init__(self, clock, rate=DEFAULT_RATE, burst=DEFAULT_BURST, slip=DEFAULT_SLIP,
                 maxNetworks=DEFAULT_MAX_NETWORKS):
        for name, value, low in (("rate", rate, 0), ("burst", burst, 1), ("slip", slip, 0),
                                 ("maxNetworks", maxNetworks, 1)):
            if not value >= low:
                raise ValueError("DNS rate limit: %s must be at least %s, not %r" %
                                 (name, low, value))
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(burst)
        self.slip = int(slip)
        self.maxNetworks = int(maxNetworks)
        self._buckets = collections.OrderedDict()

    def __len__(self):
        return len(self._buckets)

    def decide(self, host):
        """:data:`ANSWER`, :data:`SLIP` or :data:`DROP` for a query from ``host``."""
        network = networkOf(host)
        now = self.clock.seconds()
        bucket = self._buckets.get(network)
        if bucket is None:
            bucket = self._add(network, now)
        else:
            self._buckets.move_to_end(network)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return ANSWER
        bucket.limited += 1
        return SLIP if self.slip and bucket.limited % self.slip == 0 else DROP

    def _add(self, network, now):
        if len(self._buckets) >= self.maxNetworks:
            self._buckets.popitem(last=False)
        bucket = self._buckets[network] = _Bucket(self.burst, now)
        return bucket
