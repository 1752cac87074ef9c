"""Which keys the disk tier may hold, so that a miss costs no SQLite query.

On a stream of new inputs every request misses, and asking SQLite "is this key
there?" right after a model run costs 25-80 µs on a 2-core device (the model
evicted SQLite's code and pages from the CPU caches): about 1% of a 5 ms model,
of the 5% a cache may cost on misses (issue 6).  A long-lived process therefore
keeps a small in-memory filter of the keys on disk, and answers "not there"
from it alone.

The filter is a 1 MiB bitmap with two bits per key (a Bloom filter): it may say
"maybe" for a key that is not there (about 0.3% of the time at 250,000 entries;
SQLite then answers, as before), never "not there" for a key it was told of.
It learns of:

* this process's own writes, as they land (:meth:`KeyIndex.add`);
* everything already in the database, read once when the process has asked
  :data:`WARM_LOOKUPS` times (a one-shot ``edgeinfer run`` never pays for it);
* rows other processes add, read incrementally (``rowid`` above the last seen)
  at most ``refresh_s`` after the previous read.

So a result another process wrote less than ``refresh_s`` ago can read as a
miss here and be computed once more: it costs one model run, never a wrong
answer.  Deleted and evicted rows leave their bits set (they read as "maybe");
the filter is rebuilt when it fills, or when the newest row it read is gone
(a clear or an eviction: SQLite may give its rowid out again).
"""

import threading
import time

# 2**23 bits = 1 MiB.
BITS = 1 << 23
MASK = BITS - 1
# Keys added before a rebuild: past this the filter's "maybe" rate passes ~1%.
CAPACITY = 400000
# Lookups in this process before the filter is built.
WARM_LOOKUPS = 64


class KeyIndex(object):
    """A Bloom filter over the keys of one diskcache database.

    A key's two bits are ``hash(key) & MASK`` and ``(hash(key) >> 23) & MASK``.
    The tier tests them itself while ``bits`` is fresh (``time.monotonic() <
    fresh_until``): a miss makes no call here, since every Python call on a
    miss costs microseconds once the model run has emptied the CPU caches.
    Otherwise it asks :meth:`ready`.

    Args:
        refresh_s: longest time before rows other processes added are read.
    """

    def __init__(self, refresh_s):
        self.refresh_s = refresh_s
        self.bits = None
        self.fresh_until = 0.0
        self._added = 0
        self._last_rowid = 0
        self._last_key = None
        self._lookups = 0
        self._lock = threading.Lock()

    def _set(self, key):
        h = hash(key)
        bits = self.bits
        a, b = h & MASK, (h >> 23) & MASK
        bits[a >> 3] |= 1 << (a & 7)
        bits[b >> 3] |= 1 << (b & 7)

    def add(self, keys):
        """Record keys this process has just written."""
        with self._lock:
            if self.bits is None:
                return
            # Counted towards CAPACITY when the next refresh reads their rows.
            for key in keys:
                self._set(key)

    def ready(self, sql):
        """The filter's bits, read up to date; None before this process has looked
        up :data:`WARM_LOOKUPS` keys (until then every lookup asks SQLite).

        Args:
            sql: a function returning diskcache's ``_sql`` of the calling thread
                (to read new rows; called only when they are due).

        Raises:
            sqlite3.Error, OSError: reading new rows failed (the caller's tier
                counts it as it counts a failed lookup).
        """
        with self._lock:
            self._lookups += 1
            if self._lookups < WARM_LOOKUPS:
                return None
            if time.monotonic() >= self.fresh_until:
                self._refresh(sql())
            return self.bits

    def _refresh(self, sql):
        """Read the rows added since the last read (all of them the first time)."""
        if self.bits is not None and self._last_rowid:
            # New rows get rowids above the newest one seen, unless that row went
            # (a clear, an eviction) and its rowid was given out again: start over.
            row = sql("SELECT key FROM Cache WHERE rowid = ?", (self._last_rowid,)).fetchone()
            if row is None or row[0] != self._last_key:
                self.bits = None
        if self.bits is None or self._added > CAPACITY:
            self.bits, self._added, self._last_rowid = bytearray(BITS // 8), 0, 0
        rows = sql("SELECT rowid, key FROM Cache WHERE rowid > ? ORDER BY rowid",
                   (self._last_rowid,))
        for rowid, key in rows:
            if type(key) is str:
                self._set(key)
                self._added += 1
            self._last_rowid, self._last_key = rowid, key
        self.fresh_until = time.monotonic() + self.refresh_s

    def reset(self):
        """Forget everything (after this process cleared the database)."""
        with self._lock:
            self.bits, self._added, self._last_rowid, self.fresh_until = None, 0, 0, 0.0
