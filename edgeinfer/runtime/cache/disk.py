"""L2: results on local disk (diskcache), bounded in bytes, shared by the device's processes.

diskcache gives the hard parts: one SQLite database (WAL) plus value files, safe
for many threads and processes at once, surviving restarts.  What this module
changes about it (issue 6, requirement 5):

* Bytes only.  diskcache unpickles any entry stored as an object, so a cache
  directory writable by someone else is a code-execution hole (CVE-2025-69872).
  :class:`BytesDisk` stores ``bytes`` and str keys only, and on reading refuses
  every entry that is not plain bytes, whatever wrote it; a refused entry is
  dropped and counted like a corrupt one.  It also refuses value file names that
  are not diskcache's own ``xx/yy/<hex>.val`` (a planted row naming
  ``/etc/passwd`` is neither read nor, when dropped, deleted).
* A private directory: created 0700; one owned by another user or writable by
  group or others is not used (the tier is off, with a warning in the stats).
* One size limit for the whole directory, evicting least recently used entries
  (diskcache's ``FanoutCache`` splits its limit per shard, so one large entry can
  be evicted the moment it is written: not used).  diskcache's own culling on
  ``set`` is turned off (``cull_limit=0``) and :meth:`DiskTier.set` culls itself,
  so that evictions can be counted.
"""

import os
import re
import sqlite3
import stat
import time

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from .counters import Counters
from .diskindex import MASK, KeyIndex
from .values import CorruptEntry

# diskcache's own value file names (Disk.filename): two folder levels, 28 hex + ".val".
_VALUE_FILE = re.compile(r"^[0-9a-f]{2}[/\\][0-9a-f]{2}[/\\][0-9a-f]{28}\.val$")

# diskcache's Cache table (diskcache 4 and 5).  DiskTier inserts new small entries
# itself, row for row as diskcache's set() would, only into a table with exactly
# these columns; any other layout gets diskcache's set().
_COLUMNS = ("rowid", "key", "raw", "store_time", "expire_time", "access_time",
            "access_count", "tag", "size", "mode", "filename", "value")
_INSERT = ("INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
           " tag, size, mode, filename, value) VALUES (?, 1, ?, ?, ?, 0, NULL, 0, ?, NULL, ?)")
# Keys per "IN (...)" query: under SQLite's 999 variables before 3.32.
_KEYS_PER_QUERY = 500

# What a broken disk tier raises: SQLite (locked, full, damaged), the OS (no
# space, read-only, gone), diskcache's lock timeout.
DISK_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)


class BytesDisk(diskcache.Disk):
    """A diskcache ``Disk`` that stores and returns bytes only: nothing is ever unpickled."""

    def put(self, key):
        if type(key) is not str:
            raise TypeError("edgeinfer cache keys are str, not {}".format(type(key).__name__))
        return key, True

    def get(self, key, raw):
        # A key column stored pickled (raw=0) was not written by edgeinfer; listing
        # it as None keeps iteration going without unpickling it.
        return key if raw and type(key) is str else None

    def store(self, value, read, key=UNKNOWN):
        if read or type(value) is not bytes:
            raise TypeError("edgeinfer stores bytes in its disk cache, not {}".format(
                type(value).__name__))
        return super(BytesDisk, self).store(value, False, key)

    def fetch(self, mode, filename, value, read):
        if not read:
            if mode == MODE_RAW and filename is None and type(value) is bytes:
                return value
            if mode == MODE_BINARY and value is None and _own_file(filename):
                with open(os.path.join(self._directory, filename), "rb") as handle:
                    return handle.read()
        raise CorruptEntry("disk entry stored as mode {} {!r}, not plain bytes: refused".format(
            mode, filename))

    def remove(self, file_path):
        if _own_file(file_path):
            super(BytesDisk, self).remove(file_path)


def _own_file(filename):
    return isinstance(filename, str) and _VALUE_FILE.match(filename) is not None


class UnsafeDirectory(Exception):
    """A cache directory other users could write entries into."""


def prepare_directory(directory):
    """Create ``directory`` (mode 0700) or check that an existing one is private.

    Raises:
        UnsafeDirectory: owned by another user, or writable by group or others.
        OSError: it cannot be created.
    """
    # exist_ok: processes starting together race to create it.
    os.makedirs(directory, 0o700, exist_ok=True)
    info = os.stat(directory)
    owner = getattr(os, "geteuid", lambda: info.st_uid)()
    if info.st_uid != owner:
        raise UnsafeDirectory("it belongs to user id {}, not this process's {}".format(
            info.st_uid, owner))
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory("it is writable by {} (mode {:o})".format(
            "others" if info.st_mode & stat.S_IWOTH else "its group",
            stat.S_IMODE(info.st_mode)))


class DiskTier(object):
    """Frames (bytes) in a diskcache directory; every failure becomes a miss.

    Args:
        directory: the cache folder (created 0700 when missing).
        limit_bytes: size limit of the whole directory (diskcache's volume: the
            database plus value files); entries larger than half of it are not
            stored.  None: keep the limit stored in the directory (for looking at
            a cache without changing it).
        timeout_s: longest wait for SQLite's lock held by another process
            before the call gives up (a miss, counted under ``errors``).
        index_s: keep an in-memory filter of the keys on disk so that most misses
            skip SQLite (:mod:`.diskindex`), reading rows other processes added at
            most this many seconds apart (default 1.0; 0: no filter, every
            lookup asks SQLite).

    The tier is off (``enabled`` False, ``warning`` set) when the directory cannot
    be created or opened, or is not private.
    """

    name = "disk"

    def __init__(self, directory, limit_bytes, timeout_s=1.0, index_s=1.0):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.limit_bytes = None if limit_bytes is None else int(limit_bytes)
        self.warning = None
        self.counts = Counters(("hits", "misses", "sets", "evictions", "expired", "corrupt",
                                "errors", "too_large"))
        self._cache = None
        self._index = KeyIndex(index_s) if index_s > 0 else None
        try:
            prepare_directory(self.directory)
            limit = {} if limit_bytes is None else {"size_limit": self.limit_bytes}
            self._cache = diskcache.Cache(
                self.directory, timeout=timeout_s, disk=BytesDisk, cull_limit=0,
                eviction_policy="least-recently-used", **limit)
            self.limit_bytes = self._cache.size_limit
        except UnsafeDirectory as exc:
            self.warning = ("disk cache {} is not used: {}; another user could plant entries. "
                            "Note: use a private directory (chmod 700).".format(
                                self.directory, exc))
        except DISK_ERRORS as exc:
            self.warning = "disk cache {} cannot be opened ({}); it is off.".format(
                self.directory, _reason(exc))
        # An attribute, not a property: every lookup asks.
        self.enabled = self._cache is not None
        self._direct = self.enabled and _known_layout(self._cache)

    def _sql(self):
        # diskcache's _sql of this thread; asked for only when the key filter needs it.
        return self._cache._sql

    def _failed(self, what, exc):
        self.counts.add("errors")
        self.warning = "disk cache {}: {} failed ({}).".format(self.directory, what, _reason(exc))

    def get(self, key):
        """Return the stored bytes for ``key``, or None (miss, refused entry or error).

        Bytes returned are not yet a hit: the caller decodes them, then counts
        ``hits`` or calls :meth:`dropped`.
        """
        try:
            index = self._index
            if index is not None:
                # The key filter's test, inline (see KeyIndex): a miss makes no call.
                bits = index.bits
                if bits is None or time.monotonic() >= index.fresh_until:
                    bits = index.ready(self._sql)
                if bits is not None:
                    h = hash(key)
                    a, b = h & MASK, (h >> 23) & MASK
                    if not (bits[a >> 3] >> (a & 7) & 1 and bits[b >> 3] >> (b & 7) & 1):
                        counts = self.counts
                        with counts.lock:           # add(), inline: see Counters
                            counts.values["misses"] += 1
                        return None
            # A plain SELECT first: under LRU, get() is a write transaction (it
            # records the access) even when the key is absent.
            data = self._cache.get(key) if key in self._cache else None
        except CorruptEntry as exc:
            self.dropped(key, exc)
            return None
        except DISK_ERRORS as exc:
            self._failed("a read", exc)
            return None
        if data is None:
            self.counts.add("misses")
        # A hit is counted by the caller once the frame has decoded.
        return data

    def peek(self, key):
        """The stored bytes for ``key``, or None; counts nothing (errors are misses)."""
        try:
            return self._cache.get(key)
        except (CorruptEntry,) + DISK_ERRORS:
            return None

    def dropped(self, key, reason):
        """Forget an entry found corrupt or refused, counting it."""
        self.counts.add("corrupt")
        self.counts.add("misses")
        self.warning = "disk cache {}: dropped a bad entry ({}).".format(self.directory, reason)
        self.delete(key)

    def set(self, key, data, expire_s=None):
        """Store ``data`` (bytes) for ``expire_s`` seconds (None: no expiry).

        Returns:
            True when stored.
        """
        return self.set_many([(key, data, expire_s)]) == 1

    def set_many(self, items):
        """Store ``(key, data, expire_s)`` items in one transaction, then cull to the limit.

        Returns:
            how many were stored (0 when the write failed: counted, with a warning).
        """
        fitting = [item for item in items if len(item[1]) * 2 <= self.limit_bytes]
        if len(fitting) < len(items):
            self.counts.add("too_large", len(items) - len(fitting))
        if not fitting:
            return 0
        try:
            # One transaction for the batch: SQLite's commit is most of a set's cost.
            with self._cache.transact():
                rest = self._insert_new(fitting) if self._direct else fitting
                for key, data, expire_s in rest:
                    self._cache.set(key, data, expire=expire_s)
            if self._index is not None:
                self._index.add([item[0] for item in fitting])
            self.counts.add("sets", len(fitting))
            # Measuring the volume is two queries: do it once per batch.
            if self._cache.volume() > self.limit_bytes:
                self.counts.add("expired", self._cache.expire())
                self.counts.add("evictions", self._cache.cull())
        except DISK_ERRORS as exc:
            self._failed("a write", exc)
            return 0
        return len(fitting)

    def _insert_new(self, items):
        """Insert the entries diskcache keeps in the database whose keys are new; return the rest.

        diskcache's set() costs a SELECT, an INSERT and some Python per entry;
        on a stream of unique inputs the background writer pays that for every
        request, on the cores the model needs.  So small values (under
        diskcache's ``min_file_size``, which it stores in the row) under new
        keys go in with one query for the batch's keys and one executemany,
        each row as set() writes it (the table's triggers keep diskcache's
        count).  Large values (files) and keys already there (updates, which
        may leave a file to remove) are returned for set().  Call inside a
        transaction.
        """
        limit = self._cache.disk.min_file_size
        small = dict((item[0], item) for item in items if len(item[1]) < limit)
        if not small:
            return items
        keys, there = list(small), set()
        for first in range(0, len(keys), _KEYS_PER_QUERY):
            part = keys[first:first + _KEYS_PER_QUERY]
            query = "SELECT key FROM Cache WHERE raw = 1 AND key IN ({})".format(
                ",".join("?" * len(part)))
            there.update(row[0] for row in self._cache._sql(query, part))
        now = time.time()
        self._cache._con.executemany(_INSERT, [
            (key, now, None if expire_s is None else now + expire_s, now, MODE_RAW,
             sqlite3.Binary(data))
            for key, (_, data, expire_s) in small.items() if key not in there])
        return [item for item in items if item[0] not in small or item[0] in there]

    def delete(self, key):
        """Remove ``key``; True when it was there."""
        try:
            return self._cache.delete(key)
        except DISK_ERRORS as exc:
            self._failed("a delete", exc)
            return False

    def clear(self, model=None, key_model=None):
        """Remove every entry, or those whose ``key_model(key) == model``.

        Returns:
            the number of entries removed.

        Raises:
            OSError, sqlite3.Error, diskcache.Timeout: the directory cannot be changed.
        """
        if model is None:
            if self._index is not None:
                self._index.reset()
            return self._cache.clear()
        doomed = [k for k in self.keys() if key_model(k) == model]
        return sum(1 for k in doomed if self._cache.delete(k))

    def keys(self):
        """Every key stored (a planted key that is not a str is left out).

        Raises:
            OSError, sqlite3.Error, diskcache.Timeout: the database cannot be read.
        """
        return [k for k in self._cache.iterkeys() if k is not None]

    def stats(self):
        """Counters plus ``items``, ``bytes`` (volume on disk), ``limit_bytes``, ``directory``."""
        data = self.counts.snapshot()
        data.update(directory=self.directory, limit_bytes=self.limit_bytes, items=None,
                    bytes=None)
        if self._cache is not None:
            try:
                data.update(items=len(self._cache), bytes=self._cache.volume())
            except DISK_ERRORS as exc:
                self._failed("reading its size", exc)
        return data

    def close(self):
        """Close this thread's database connection (diskcache keeps one per thread)."""
        if self._cache is not None:
            self._cache.close()

    def release_thread(self):
        """What a thread that stops using the tier must close: its own connection."""
        self.close()


def _known_layout(cache):
    """True when diskcache's Cache table has the columns :data:`_INSERT` writes."""
    try:
        columns = tuple(row[1] for row in cache._sql("PRAGMA table_info(Cache)"))
    except DISK_ERRORS:
        return False
    return columns == _COLUMNS


def _reason(exc):
    text = str(exc) or type(exc).__name__
    return text.rstrip(".")
