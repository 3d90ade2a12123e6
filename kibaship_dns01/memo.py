"""A bounded least-recently-used map, for what the outside world can make many of."""
import collections


class BoundedMemo:
    """A small LRU map for values derived from what issuers send (configs, targets):
    the few distinct values a cluster has stay, a flood of distinct ones cannot grow it."""

    def __init__(self, size=256):
        self.size = size
        self._entries = collections.OrderedDict()

    def get(self, key):
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key, value):
        """Remember ``value``; :return: it."""
        self._entries[key] = value
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value
