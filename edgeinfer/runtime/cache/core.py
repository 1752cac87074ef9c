"""The tiered result cache: memory, disk, Redis, read-through, one computation per key."""

import functools
import os
import threading
import time

from ...errors import UsageError
from .counters import Counters, Latency
from .disk import DiskTier
from .keys import hasher_factory, key_model, make_key
from .memory import MemoryTier
from .remote import RedisTier
from .values import CorruptEntry, Unstorable, decode, encode, freeze
from .writer import Writer

MB = 1024 * 1024

# "Use the cache's own ttl_s" for the ttl_s arguments of set() and get_or_run().
DEFAULT = object()


class _Flight(object):
    """One computation of a key in progress; the threads asking for the same key wait on it.

    The Event they wait on is made by the first of them, under the flights
    lock: most keys have no waiter, and making and setting an Event (a
    Condition, in pure Python) costs a miss tens of µs once a model run has
    pushed that code out of the CPU caches.  No __init__ either: the class
    attributes are the defaults, so making a flight runs no Python code.
    """

    waiting = None
    result = None
    error = None


class Cache(object):
    """Model results in up to three tiers: L1 memory, L2 disk, L3 Redis.

    Read-through: :meth:`get_or_run` looks in memory, then on disk, then in
    Redis; a hit in a slower tier is copied into the faster ones; a miss runs
    the model once, however many threads ask for that key at the same time, and
    stores the result in every tier.  A tier that breaks (a full or unwritable
    disk, a down or slow Redis) turns into misses with a warning in
    :meth:`stats`; it never raises to the caller or gives a wrong answer.

    Memory holds read-only copies of the arrays; disk and Redis hold raw bytes
    in edgeinfer's own frame (a checksum, the key, dtypes and shapes; see
    :mod:`.values`), never pickled.  Arrays handed out are always fresh
    copies, so a caller changing them changes nothing stored.  One cache may
    serve many sessions: keys hold each model's hash; ``cache.key(model, feeds,
    outputs)`` makes one (:func:`.keys.make_key`, bound to this cache's hash).

    Example::

        cache = edgeinfer.Cache(memory_mb=64, disk_dir="/var/cache/edgeinfer",
                                disk_mb=2048, redis_url=None, ttl_s=900)
        session = edgeinfer.load("m.eib", cache=cache)

    Args:
        memory_mb: L1 budget in MiB (default 64; 0: no memory tier).  Counts the
            stored bytes plus a small overhead per entry.
        disk_dir: L2 folder (default None: no disk tier); created 0700.  Several
            processes may share it; a folder owned by another user or writable by
            group or others is refused (the tier is off, with a warning).
        disk_mb: L2 size limit in MiB for the whole folder (default 1024).
        redis_url: L3 Redis, e.g. ``"redis://127.0.0.1:6379/0"`` (default None:
            no Redis tier).  Needs ``pip install edgeinfer[redis]``.
        ttl_s: seconds a result stays valid in every tier (default None: until
            evicted).
        redis_timeout_s: longest a Redis connect or command may take before it
            counts as a miss (default 0.1).
        redis_retry_s: after a Redis failure, seconds during which Redis is
            skipped before one call tries it again (default 5).
        namespace: prefix of the Redis keys (default "edgeinfer").
        key_hash: "auto" (default: XXH3-128 when ``xxhash`` is installed, else
            BLAKE2b-128), "xxh3" or "blake2b" (collision-resistant; for inputs
            from untrusted parties sharing a tier).  See :mod:`.keys`.
        disk_timeout_s: longest wait for the disk cache's lock held by another
            process (default 1.0).
        write_behind: write results to disk and Redis from a background thread,
            in batches (default True), so a miss returns as soon as the result is
            in memory; results still queued are found by lookups, and are flushed
            by :meth:`flush`, :meth:`close` and at interpreter exit.  False: the
            caller writes them before returning.
        disk_index_s: a process that has looked up more than a few dozen keys
            keeps a filter of the keys on disk, so that a miss costs no SQLite
            query (:mod:`.diskindex`); results other processes wrote become
            visible to it at most this many seconds later (default 1.0; until
            then such a result is computed again, never answered wrongly).  0: no
            filter.

    Raises:
        UsageError: a negative or non-numeric size or time, no tier at all, an
            unknown ``key_hash``, or a Redis URL the client cannot read.
        MissingDependency: ``redis_url`` given without the ``redis`` package, or
            ``key_hash="xxh3"`` without ``xxhash``.
    """

    def __init__(self, memory_mb=64, disk_dir=None, disk_mb=1024, redis_url=None, ttl_s=None,
                 redis_timeout_s=0.1, redis_retry_s=5.0, namespace="edgeinfer", key_hash="auto",
                 disk_timeout_s=1.0, write_behind=True, disk_index_s=1.0):
        _number("memory_mb", memory_mb, zero=True)
        _number("disk_mb", disk_mb)
        if ttl_s is not None:
            _number("ttl_s", ttl_s)
        _number("redis_timeout_s", redis_timeout_s)
        _number("redis_retry_s", redis_retry_s, zero=True)
        _number("disk_timeout_s", disk_timeout_s)
        _number("disk_index_s", disk_index_s, zero=True)
        if disk_dir is not None and not isinstance(disk_dir, (str, os.PathLike)):
            raise UsageError("disk_dir must be a folder path, not {}.".format(
                type(disk_dir).__name__), "Leave it out (None) for no disk tier.")
        if redis_url is not None and not isinstance(redis_url, str):
            raise UsageError("redis_url must be a string, not {}.".format(
                type(redis_url).__name__), "Example: redis://127.0.0.1:6379/0.")
        if not isinstance(namespace, str) or not namespace or any(c.isspace() for c in namespace):
            raise UsageError("namespace must be a non-empty word, not {!r}.".format(namespace),
                             "The default is \"edgeinfer\".")
        if memory_mb == 0 and disk_dir is None and redis_url is None:
            raise UsageError("This cache has no tier: memory_mb is 0, and neither disk_dir nor "
                             "redis_url is given.", "Give memory_mb > 0, disk_dir or redis_url.")
        self.ttl_s = ttl_s
        self.hash_name, self._hasher = hasher_factory(key_hash)
        self._headers = {}
        self.memory = MemoryTier(int(memory_mb * MB)) if memory_mb > 0 else None
        self.disk = (DiskTier(os.fspath(disk_dir), int(disk_mb * MB), disk_timeout_s,
                              disk_index_s) if disk_dir is not None else None)
        self.redis = (RedisTier(redis_url, redis_timeout_s, redis_retry_s, namespace)
                      if redis_url is not None else None)
        # The tiers below memory, slowest last; each holds frames (bytes).  A disk
        # tier that could not open stays off for the cache's life: left out.
        self._lower = [t for t in (self.disk, self.redis) if t is not None and t.enabled]
        self._writer = Writer(self._lower) if self._lower and write_behind else None
        self._flights = {}
        self._flights_lock = threading.Lock()
        # Flights ended so far: a miss that saw no flight end before it became
        # the leader need not look again (see get_or_run).
        self._landed = 0
        # gets = hits + misses: one counter fewer on every call.  They share the
        # flights lock, under which a miss bumps them (never add() while holding it).
        self._counts = Counters(("hits", "misses", "runs", "waits", "sets", "unstorable"),
                                self._flights_lock)
        self._latency = dict((name, Latency()) for name in ("memory", "disk", "redis",
                                                            "queue"))
        self._key_time = Latency()
        self._run_time = Latency()
        # key(model, feeds, outputs): the key of one model call, ``v1:<model hash>:
        # <hash name>:<128-bit digest, hex>`` (model: Session.model_hash; feeds: dict
        # input name -> numpy array, as the model gets them; outputs: the output
        # names asked for, in order), timed into stats()["key_us"].  Raises
        # InputError for an input that is not a numeric numpy array.  It is
        # make_key bound to this cache, not a method: on a miss, right after a
        # model run has emptied the CPU caches, a wrapping call would cost µs.
        self.key = functools.partial(make_key, self._hasher, self.hash_name,
                                     headers=self._headers, record=self._key_time.add)

    # -- reading and writing ---------------------------------------------------------------

    def get(self, key, default=None):
        """Look ``key`` up in every tier, fastest first; promote a hit to faster tiers.

        Args:
            key: from :meth:`key`.
            default: returned on a miss (default None).

        Returns:
            dict output name -> a fresh numpy array (the caller's to change), or
            ``default``.
        """
        start = time.perf_counter()
        found = self._lookup(key, time.time())
        if found is None:
            self._counts.add("misses")
            return default
        return self._answer(found, start)

    def _answer(self, found, start):
        """Copies of a hit's arrays, counted and timed from ``start``."""
        tier, stored = found
        result = _copies(stored)
        self._latency[tier].add(time.perf_counter() - start)
        self._counts.add("hits")
        return result

    def _lookup(self, key, now):
        """``(tier name, stored read-only arrays)`` or None."""
        if self.memory is not None:
            found = self.memory.get(key, now)
            if found is not None:
                return "memory", found[0]
        lower = self._lower
        if not lower:
            return None
        writer = self._writer
        found = writer.held(key) if writer is not None else None
        queued = self._queued(key, now, found) if found is not None else None
        if queued is not None:
            # Still on its way to the disk/Redis: answered as the first of them that
            # is up would (a Redis that is down answers nothing, so counts nothing).
            outputs, nbytes, expires = queued
            tier = next((t for t in lower if getattr(t, "state", "up") == "up"), None)
            if tier is not None:
                tier.counts.add("hits")
            if self.memory is not None:
                self.memory.set(key, outputs, nbytes, expires)
            return tier.name if tier is not None else "queue", outputs
        for index, tier in enumerate(lower):
            data = tier.get(key)
            if data is None:
                continue
            try:
                outputs, expires = decode(key, data)
            except CorruptEntry as exc:
                tier.dropped(key, exc)
                continue
            if expires is not None and expires <= now:
                # The tier's own expiry lags (diskcache's clock, Redis's): the
                # frame's is the one that counts.
                tier.counts.add("expired")
                tier.counts.add("misses")
                tier.delete(key)
                continue
            tier.counts.add("hits")
            if self.memory is not None:
                self.memory.set(key, outputs, len(data), expires)
            if index > 0:
                self._write(lower[:index], key, data, len(data), expires)
            return tier.name, outputs
        return None

    def _queued(self, key, now, found):
        """``(outputs, nbytes, expires)`` of a fresh result the writer holds for the
        lower tiers (``found``: its entry from ``Writer.held``), or None."""
        if found is None:
            return None
        payload, nbytes, expires = found[:3]
        if expires is not None and expires <= now:
            return None
        if isinstance(payload, dict):
            return payload, nbytes, expires
        try:
            return decode(key, payload)[0], nbytes, expires
        except CorruptEntry:  # pragma: no cover - our own frame, from a tier that checked it
            return None

    def set(self, key, outputs, ttl_s=DEFAULT):
        """Store ``outputs`` under ``key`` in every tier.

        Args:
            key: from :meth:`key`.
            outputs: dict output name -> numpy array (copied; the caller keeps it).
            ttl_s: seconds it stays valid (default: the cache's ``ttl_s``; None:
                until evicted).

        Returns:
            True when stored in at least one tier; False when no tier took it
            (outputs that are not numeric arrays, or larger than every tier allows).
        """
        frozen, stored = self._store(key, outputs, ttl_s)
        if frozen is not None:
            self._counts.add("sets")
        return stored

    def _store(self, key, outputs, ttl_s=DEFAULT):
        """Copy ``outputs`` read-only and store them in every tier.

        Returns:
            (frozen, stored): the read-only arrays (None for outputs that cannot
            be stored, counted as ``unstorable``), and whether some tier took them.
            The caller counts ``sets``.
        """
        ttl_s = self.ttl_s if ttl_s is DEFAULT else ttl_s
        expires = time.time() + ttl_s if ttl_s is not None else None
        try:
            frozen, nbytes = freeze(outputs)
        except Unstorable:
            self._counts.add("unstorable")
            return None, False
        stored = False
        if self.memory is not None:
            stored = self.memory.set(key, frozen, nbytes, expires)
        if self._writer is not None:
            self._writer.put(key, frozen, nbytes, expires)      # for every lower tier
            stored = True
        elif self._lower:
            stored = self._write(self._lower, key, frozen, nbytes, expires) or stored
        return frozen, stored

    def _write(self, tiers, key, payload, nbytes, expires):
        """Write ``payload`` (arrays, or a frame) to lower ``tiers``: queued, or now.

        Returns:
            True when queued or stored by some tier.
        """
        if not tiers:
            return False
        if self._writer is not None:
            self._writer.put(key, payload, nbytes, expires,
                             None if len(tiers) == len(self._lower) else tiers)
            return True
        data = payload if isinstance(payload, bytes) else encode(key, payload, expires)
        expire_s = _remaining(expires, time.time())
        return any([tier.set(key, data, expire_s) for tier in tiers])

    def flush(self, timeout_s=None):
        """Wait until results queued for the disk and Redis tiers are written.

        Args:
            timeout_s: longest wait in seconds (default None: no limit).

        Returns:
            True when everything queued was written (always True without
            write-behind), False when ``timeout_s`` ran out first.
        """
        return self._writer.flush(timeout_s) if self._writer is not None else True

    def delete(self, key):
        """Remove ``key`` from every tier; True when some tier held it."""
        held = self._writer is not None and self._writer.discard(key)
        for tier in [self.memory] + self._lower:
            if tier is not None and tier.enabled:
                held = tier.delete(key) or held
        return held

    def get_or_run(self, key, run, ttl_s=DEFAULT):
        """The cached result for ``key``, or ``run()``'s, computed once for all waiting callers.

        When several threads miss the same key at once, the first runs the model
        and the others wait for its result (single-flight: no stampede); if the
        run raises, they all get its exception.  Processes sharing a disk or Redis
        tier do not wait for each other: two may compute the same key once each.

        Args:
            key: from :meth:`key`.
            run: a callable returning dict output name -> numpy array.
            ttl_s: seconds the result stays valid (default: the cache's ``ttl_s``).

        Returns:
            dict output name -> numpy array, never shared with the cache or with
            another caller.
        """
        landed = self._landed
        start = time.perf_counter()
        found = self._lookup(key, time.time())
        if found is not None:
            return self._answer(found, start)
        with self._flights_lock:
            self._counts.values["misses"] += 1
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
            elif flight.waiting is None:
                flight.waiting = threading.Event()
        if not leader:
            self._counts.add("waits")
            flight.waiting.wait()
            if flight.error is not None:
                raise flight.error
            return _copies(flight.result)
        run_s = frozen = None
        try:
            # A leader that finished between our miss and taking the flight has
            # already stored the result: look once more before running, if any
            # flight has ended since.
            again = self._recheck(key) if self._landed != landed else None
            if again is not None:
                self._counts.add("waits")   # answered by another caller's run after all
                flight.result = again
                return _copies(again)
            start = time.perf_counter()
            outputs = run()
            run_s = time.perf_counter() - start
            frozen, stored = self._store(key, outputs, ttl_s)
            flight.result = frozen if stored else _copies(outputs)
            return outputs
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            # One lock for the flight and the counts: after a model run every
            # further call and lock costs the miss µs.
            with self._flights_lock:
                del self._flights[key]
                self._landed += 1
                waiting = flight.waiting
                if run_s is not None:
                    self._counts.values["runs"] += 1
                    if frozen is not None:
                        self._counts.values["sets"] += 1
            if run_s is not None:
                self._run_time.add(run_s)
            if waiting is not None:
                waiting.set()

    def get_or_run_many(self, keys, run_many, ttl_s=DEFAULT):
        """Results for many keys: hits from the cache, misses computed in one batch.

        Each distinct missing key is computed once even when it appears several
        times in ``keys``.  Batches do not wait on other callers' computations
        (unlike :meth:`get_or_run`): a key missing in two concurrent batches is
        computed by both.

        Args:
            keys: list of keys from :meth:`key`.
            run_many: callable taking a list of indices into ``keys`` and returning
                one output dict per index, in that order.
            ttl_s: seconds the results stay valid (default: the cache's ``ttl_s``).

        Returns:
            list of dicts output name -> numpy array, one per key, none shared.
        """
        results = [self.get(key) for key in keys]
        first = {}
        for index, found in enumerate(results):
            if found is None:
                first.setdefault(keys[index], index)
        if not first:
            return results
        start = time.perf_counter()
        computed = run_many(list(first.values()))
        self._run_time.add((time.perf_counter() - start) / len(first))
        self._counts.add("runs", len(first))
        fresh = dict(zip(first, computed))
        for key, outputs in fresh.items():
            if self._store(key, outputs, ttl_s)[0] is not None:
                self._counts.add("sets")
        for index, found in enumerate(results):
            if found is None:
                key = keys[index]
                results[index] = fresh[key] if first[key] == index else _copies(fresh[key])
        return results

    def _recheck(self, key):
        """Stored arrays for ``key`` in memory, the write queue or on disk; counts nothing."""
        if self.memory is not None:
            return self.memory.peek(key)
        queued = self._queued(key, time.time(),
                              self._writer.held(key) if self._writer is not None else None)
        if queued is not None:
            return queued[0]
        data = self.disk.peek(key) if self.disk is not None and self.disk.enabled else None
        if data is None:
            return None
        try:
            outputs, expires = decode(key, data)
        except CorruptEntry:
            return None
        return outputs if expires is None or expires > time.time() else None

    def clear(self, model=None):
        """Remove every entry of every tier, or only one model's.

        Args:
            model: a model hash (``Session.model_hash``) to clear alone (default
                None: everything; in Redis, everything under this namespace).

        Returns:
            dict tier name -> entries removed.

        Raises:
            CacheError: a disk or Redis tier could not be cleared.
        """
        from ...errors import CacheError
        if self._writer is not None:
            # Land what is queued first, so that nothing cleared comes back after.
            self._writer.flush()
        removed = {}
        for tier in [self.memory] + self._lower:
            if tier is None or not tier.enabled:
                continue
            try:
                removed[tier.name] = tier.clear(model, key_model)
            except Exception as exc:
                raise CacheError("Could not clear the {} cache tier: {}.".format(
                    tier.name, str(exc).rstrip(".") or type(exc).__name__),
                    "Check that it is reachable and writable, then try again.")
        return removed

    # -- reporting -------------------------------------------------------------------------

    def stats(self):
        """What the cache did, since it was made or :meth:`reset_stats`.

        Returns:
            dict with ``gets``, ``hits``, ``misses``, ``hit_rate``, ``runs`` (model
            runs on a miss), ``waits`` (callers that waited for another's run),
            ``sets``, ``unstorable``, ``key_us`` and ``run_us`` (latency
            summaries), ``warnings`` (one line per tier in trouble) and ``tiers``:
            for each tier in use its hits, misses, sets, evictions, expired,
            bytes and items held, limit, ``hit_us`` (latency of a hit served
            from that tier: mean, p50, p99 in microseconds, including the copy
            handed out), and for disk/Redis ``corrupt``, ``errors`` and
            ``warning``; Redis adds ``state`` and ``skipped``.
        """
        data = self._counts.snapshot()
        data["gets"] = data["hits"] + data["misses"]
        data["hit_rate"] = round(data["hits"] / float(data["gets"]), 4) if data["gets"] else None
        data["key_us"] = self._key_time.summary()
        data["run_us"] = self._run_time.summary()
        data["key_hash"] = self.hash_name
        data["ttl_s"] = self.ttl_s
        tiers, warnings = {}, []
        for tier in (self.memory, self.disk, self.redis):
            if tier is None:
                continue
            info = tier.stats() if tier.enabled else {}
            info["enabled"] = tier.enabled
            info["hit_us"] = self._latency[tier.name].summary()
            warning = tier.warning
            if warning is not None:
                info["warning"] = warning
                warnings.append(warning)
            if tier is self.disk and not tier.enabled:
                info["directory"] = tier.directory
            tiers[tier.name] = info
        data["tiers"] = tiers
        data["warnings"] = warnings
        return data

    def reset_stats(self):
        """Zero the cache-level counters and latency samples (tier counters stay)."""
        self._counts.reset()
        for latency in list(self._latency.values()) + [self._key_time, self._run_time]:
            latency.reset()

    def close(self):
        """Write what is queued, close the disk database and the Redis connections.

        Memory entries stay; a closed cache still works (it reopens what it needs
        and writes to disk and Redis itself).
        """
        if self._writer is not None:
            self._writer.close()
        for tier in self._lower:
            tier.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        parts = []
        if self.memory is not None:
            parts.append("memory {:g} MiB".format(self.memory.limit_bytes / float(MB)))
        if self.disk is not None:
            parts.append("disk {} {:g} MiB".format(self.disk.directory,
                                                   self.disk.limit_bytes / float(MB)))
        if self.redis is not None:
            parts.append("redis {}".format(self.redis.where))
        return "<Cache {}>".format(", ".join(parts))


def _copies(outputs):
    return dict((name, value.copy()) for name, value in outputs.items())


def _remaining(expires, now):
    return None if expires is None else max(expires - now, 0.001)


def _number(name, value, zero=False):
    """Refuse a size or time that is not a number, or is negative (or zero unless allowed)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and value == value and value >= 0 and (zero or value > 0) and value != float("inf"))
    if not ok:
        raise UsageError("{} must be a number {} 0, not {!r}.".format(
            name, ">=" if zero else ">", value),
            "Sizes are in MiB and times in seconds.")
