"""L3: results in Redis, shared by a fleet of devices or an edge gateway.

The ``redis`` client is imported only when a Redis URL is given (the
``edgeinfer[redis]`` extra).  Keys are ``<namespace>:<cache key>``, and a cache
key starts with the model's content hash, so every model has its own key space
(``<namespace>:v1:<model hash>:*``) and can be cleared alone.

Redis is the one tier across a network, so it is the one that can hang.  Three
rules keep a down or slow Redis from hurting callers (issue 6, requirement 3):

* every socket operation has the configured timeout, for connecting too, and the
  client never retries (redis-py 6+ retries 3 times with backoff by default,
  which would multiply the stall);
* any Redis or socket error is a miss, counted under ``errors`` with the reason
  in ``warning``, logged once when Redis goes away and once when it is back;
* after a failure Redis is skipped (a miss, counted under ``skipped``) for
  ``retry_s`` seconds, then one call probes it while the others keep skipping: a
  dead Redis costs one timeout per ``retry_s``, not one per request.
"""

import logging
import threading
import time

from ...errors import UsageError
from ...lazy import require
from .counters import Counters

LOG = logging.getLogger("edgeinfer.cache")


class RedisTier(object):
    """Frames (bytes) in Redis; every failure becomes a miss.

    Args:
        url: ``redis://[:password@]host:port/db``, ``rediss://...`` or
            ``unix:///path/to/socket``.
        timeout_s: longest a connect or a command may take.
        retry_s: how long Redis is skipped after a failure.
        namespace: prefix of every key.

    Raises:
        MissingDependency: the ``redis`` package is not installed.
        UsageError: a URL the redis client cannot read.
    """

    name = "redis"
    enabled = True

    def __init__(self, url, timeout_s=0.1, retry_s=5.0, namespace="edgeinfer"):
        redis = require("redis", "the Redis cache tier")
        retry = require("redis.retry", "the Redis cache tier")
        backoff = require("redis.backoff", "the Redis cache tier")
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.prefix = namespace + ":"
        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=retry.Retry(backoff.NoBackoff(), 0), health_check_interval=0)
        except ValueError as exc:
            raise UsageError("Cannot use Redis URL {!r}: {}.".format(url, str(exc).rstrip(".")),
                             "Expected redis://host:6379/0, rediss://... or unix:///path.")
        self.where = _describe(self._client)
        # Connection and protocol errors are RedisError; a socket failing inside
        # the client can surface as OSError.
        self.errors = (redis.RedisError, OSError)
        self._lock = threading.Lock()
        self._down_until = None
        self.warning = None
        self.counts = Counters(("hits", "misses", "sets", "expired", "corrupt", "errors",
                                "skipped"))

    @property
    def state(self):
        """"up" after a success (or before any call), "down" while being skipped."""
        return "up" if self._down_until is None else "down"

    def _skip(self):
        until = self._down_until
        if until is None:
            return False
        now = time.monotonic()
        if now < until:
            return True
        with self._lock:
            if self._down_until != until:
                return True  # another thread took this probe
            self._down_until = now + self.retry_s
        return False

    def _failed(self, what, exc):
        self.counts.add("errors")
        first = self._down_until is None
        self._down_until = time.monotonic() + self.retry_s
        self.warning = ("Redis at {}: {} failed ({}: {}); Redis lookups are misses, retried every "
                        "{:g} s.".format(self.where, what, type(exc).__name__,
                                         str(exc).rstrip("."), self.retry_s))
        if first:
            LOG.warning("cache: %s", self.warning)

    def _answered(self):
        if self._down_until is not None:
            self._down_until = None
            LOG.warning("cache: Redis at %s answers again.", self.where)

    def get(self, key):
        """Return the stored bytes for ``key``, or None (miss, skipped or failed).

        Bytes returned are not yet a hit: the caller decodes them, then counts
        ``hits`` or calls :meth:`dropped`.
        """
        if self._skip():
            self.counts.add("skipped")
            return None
        try:
            data = self._client.get(self.prefix + key)
        except self.errors as exc:
            self._failed("a read", exc)
            return None
        self._answered()
        if data is None:
            self.counts.add("misses")
        return data

    def dropped(self, key, reason):
        """Forget an entry found corrupt, counting it."""
        self.counts.add("corrupt")
        self.counts.add("misses")
        self.warning = "Redis at {}: dropped a bad entry ({}).".format(self.where, reason)
        self.delete(key)

    def set(self, key, data, expire_s=None):
        """Store ``data`` for ``expire_s`` seconds (None: no expiry); True when stored."""
        return self.set_many([(key, data, expire_s)]) == 1

    def set_many(self, items):
        """Store ``(key, data, expire_s)`` items in one round trip (a pipeline).

        Returns:
            how many were stored (0 when skipped or failed: counted, with a warning).
        """
        if self._skip():
            self.counts.add("skipped", len(items))
            return 0
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, data, expire_s in items:
                if expire_s is None:
                    pipe.set(self.prefix + key, data)
                else:
                    pipe.set(self.prefix + key, data, px=max(1, int(expire_s * 1000)))
            pipe.execute()
        except self.errors as exc:
            self._failed("a write", exc)
            return 0
        self._answered()
        self.counts.add("sets", len(items))
        return len(items)

    def delete(self, key):
        """Remove ``key``; True when it was there (False also when Redis failed)."""
        if self._skip():
            return False
        try:
            return bool(self._client.delete(self.prefix + key))
        except self.errors as exc:
            self._failed("a delete", exc)
            return False

    def clear(self, model=None, key_model=None):
        """Remove this namespace's keys, or one model's.

        Returns:
            the number of keys removed.

        Raises:
            redis.RedisError, OSError: Redis failed (clearing is asked for
            explicitly, so it is not turned into a silent no-op).
        """
        pattern = self.prefix + ("v1:{}:*".format(model) if model else "*")
        count, batch = 0, []
        for name in self._client.scan_iter(match=pattern, count=500):
            batch.append(name)
            if len(batch) == 500:
                count += self._client.delete(*batch)
                batch = []
        if batch:
            count += self._client.delete(*batch)
        self._answered()
        return count

    def keys(self):
        """Every cache key in this namespace (without the namespace), by SCAN.

        Raises:
            redis.RedisError, OSError: Redis failed.
        """
        start = len(self.prefix)
        return [name[start:].decode("utf-8", "replace")
                for name in self._client.scan_iter(match=self.prefix + "*", count=500)]

    def stats(self):
        """Counters plus ``state``, ``url`` (no password) and ``timeout_s``."""
        data = self.counts.snapshot()
        data.update(state=self.state, url=self.where, timeout_s=self.timeout_s)
        return data

    def close(self):
        """Close the connection pool (shared by all threads; reopened on next use)."""
        close = getattr(self._client, "close", None)
        if close is not None:
            close()

    def release_thread(self):
        """Nothing per thread: the pool is shared, and closing it would cut others off."""


def _describe(client):
    """Where the client connects, without the password."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return "unix://{}".format(kwargs["path"])
    return "{}:{}/{}".format(kwargs.get("host", "?"), kwargs.get("port", "?"), kwargs.get("db", 0))
