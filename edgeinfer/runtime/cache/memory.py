"""L1: results in this process's memory, least recently used first out, bounded in bytes."""

import threading
import time
from collections import OrderedDict

from .counters import Counters

# Bookkeeping per entry beyond its frame (the key string, the dict slot, the
# array objects): counted so that a budget of many tiny entries still holds.
ENTRY_OVERHEAD = 256


class MemoryTier(object):
    """An LRU map key -> (outputs, expires, nbytes), bounded by the bytes it holds.

    Thread-safe: one lock guards the map and the counters; nothing slow happens
    under it (values are stored and returned as they are, copies are made by
    the caller outside the lock).

    Args:
        limit_bytes: most bytes held; an entry larger than half of it is not
            stored, because it would push out everything else.
    """

    name = "memory"
    enabled = True
    warning = None

    def __init__(self, limit_bytes):
        self.limit_bytes = int(limit_bytes)
        self._items = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.counts = Counters(("hits", "misses", "sets", "evictions", "expired", "too_large"),
                               self._lock)

    def get(self, key, now=None):
        """Return ``(outputs, expires)`` for ``key``, or None (a miss or an expired entry).

        ``outputs`` are the stored read-only arrays: copy them before handing out.
        """
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.counts.values["misses"] += 1
                return None
            outputs, expires, nbytes = entry
            if expires is not None and expires <= (now or time.time()):
                del self._items[key]
                self._bytes -= nbytes
                self.counts.values["expired"] += 1
                self.counts.values["misses"] += 1
                return None
            self._items.move_to_end(key)
            self.counts.values["hits"] += 1
            return outputs, expires

    def peek(self, key):
        """The stored outputs of a fresh ``key``, or None; counts nothing, changes no order."""
        with self._lock:
            entry = self._items.get(key)
        if entry is None or (entry[1] is not None and entry[1] <= time.time()):
            return None
        return entry[0]

    def set(self, key, outputs, nbytes, expires=None):
        """Store read-only ``outputs`` (dict name -> array) taking ``nbytes``.

        Returns:
            True when stored, False when the entry is larger than half the budget.
        """
        nbytes = int(nbytes) + len(key) + ENTRY_OVERHEAD
        if nbytes * 2 > self.limit_bytes:
            self.counts.add("too_large")
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._items[key] = (outputs, expires, nbytes)
            self._bytes += nbytes
            self.counts.values["sets"] += 1
            while self._bytes > self.limit_bytes:
                _, (_, _, size) = self._items.popitem(last=False)
                self._bytes -= size
                self.counts.values["evictions"] += 1
        return True

    def delete(self, key):
        """Remove ``key``; True when it was there."""
        with self._lock:
            entry = self._items.pop(key, None)
            if entry is not None:
                self._bytes -= entry[2]
        return entry is not None

    def clear(self, model=None, key_model=None):
        """Remove every entry, or only those whose ``key_model(key) == model``.

        Returns:
            the number of entries removed.
        """
        with self._lock:
            if model is None:
                count = len(self._items)
                self._items.clear()
                self._bytes = 0
                return count
            doomed = [k for k in self._items if key_model(k) == model]
            for key in doomed:
                self._bytes -= self._items.pop(key)[2]
            return len(doomed)

    def stats(self):
        """Counters plus ``items``, ``bytes`` and ``limit_bytes``."""
        data = self.counts.snapshot()
        with self._lock:
            data.update(items=len(self._items), bytes=self._bytes, limit_bytes=self.limit_bytes)
        return data

    def __len__(self):
        return len(self._items)
