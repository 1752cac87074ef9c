"""Looking at and clearing a cache from outside the processes using it (``edgeinfer cache``).

Hit and miss counters live in each process (``Cache.stats()``); what a cache
directory or a Redis namespace can tell afterwards is what it holds: entries,
bytes, the size limit, and which models they belong to.
"""

import os
from collections import Counter

from ...errors import CacheError, UsageError
from .disk import DISK_ERRORS, DiskTier
from .keys import key_model
from .remote import RedisTier

MB = 1024 * 1024


def _need_one(disk_dir, redis_url):
    if disk_dir is None and redis_url is None:
        raise UsageError("No cache named.", "Give --cache-dir DIR, --redis URL, or both.")


def _on_disk(disk_dir, action, what):
    """``action(tier)`` on the disk cache in ``disk_dir``, which must exist."""
    if not os.path.isdir(os.path.expanduser(disk_dir)):
        raise CacheError("No cache directory {!r}.".format(disk_dir),
                         "Check the path given to --cache-dir.")
    tier = DiskTier(disk_dir, None)
    if not tier.enabled:
        raise CacheError(tier.warning)
    try:
        return action(tier)
    except DISK_ERRORS as exc:
        raise CacheError("Cannot {} {}: {}.".format(what, tier.directory, exc),
                         "Check that it is readable and writable.")
    finally:
        tier.close()


def _on_redis(redis_url, namespace, timeout_s, action, what):
    """``action(tier)`` on the Redis namespace at ``redis_url``."""
    tier = RedisTier(redis_url, timeout_s, 0.0, namespace)
    try:
        return action(tier)
    except tier.errors as exc:
        raise CacheError("Redis at {} cannot be {}: {}.".format(tier.where, what, exc),
                         "Check that it runs and the URL is right.")
    finally:
        tier.close()


def inspect(disk_dir=None, redis_url=None, namespace="edgeinfer", timeout_s=1.0):
    """What a disk cache directory and/or a Redis namespace hold.

    Args:
        disk_dir: the cache directory (default None).
        redis_url: the Redis URL (default None).
        namespace: the Redis key prefix (default "edgeinfer").
        timeout_s: Redis connect and command timeout (default 1.0).

    Returns:
        dict with ``disk`` (directory, items, bytes, limit_bytes, models: model
        hash -> entries) and/or ``redis`` (url, namespace, keys, models).

    Raises:
        UsageError: neither given.
        CacheError: the directory does not exist or cannot be used; Redis fails.
    """
    _need_one(disk_dir, redis_url)
    report = {}
    if disk_dir is not None:
        def look(tier):
            stats = tier.stats()
            return {"directory": tier.directory, "items": stats["items"],
                    "bytes": stats["bytes"], "limit_bytes": stats["limit_bytes"],
                    "models": dict(Counter(key_model(k) for k in tier.keys()))}
        report["disk"] = _on_disk(disk_dir, look, "read")
    if redis_url is not None:
        def count(tier):
            names = tier.keys()
            return {"url": tier.where, "namespace": namespace, "keys": len(names),
                    "models": dict(Counter(key_model(k) for k in names))}
        report["redis"] = _on_redis(redis_url, namespace, timeout_s, count, "read")
    return report


def clear(disk_dir=None, redis_url=None, model=None, namespace="edgeinfer", timeout_s=1.0):
    """Remove entries from a disk cache directory and/or a Redis namespace.

    Args:
        disk_dir: the cache directory (default None).
        redis_url: the Redis URL (default None).
        model: a model hash to remove alone (default None: everything).
        namespace: the Redis key prefix (default "edgeinfer").
        timeout_s: Redis connect and command timeout (default 1.0).

    Returns:
        dict tier name -> entries removed.

    Raises:
        UsageError: neither given.
        CacheError: the directory does not exist or cannot be changed; Redis fails.
    """
    _need_one(disk_dir, redis_url)
    removed = {}
    if disk_dir is not None:
        removed["disk"] = _on_disk(disk_dir, lambda t: t.clear(model, key_model), "clear")
    if redis_url is not None:
        removed["redis"] = _on_redis(redis_url, namespace, timeout_s,
                                     lambda t: t.clear(model, key_model), "cleared")
    return removed


def describe(report):
    """:func:`inspect`'s report as a few lines of text."""
    lines = []
    disk = report.get("disk")
    if disk is not None:
        lines.append("disk cache {}: {} entries, {:.1f} MiB of {:g} MiB".format(
            disk["directory"], disk["items"], disk["bytes"] / float(MB),
            disk["limit_bytes"] / float(MB)))
        lines.extend(_models(disk["models"]))
    redis = report.get("redis")
    if redis is not None:
        lines.append("redis {} (namespace {}): {} entries".format(
            redis["url"], redis["namespace"], redis["keys"]))
        lines.extend(_models(redis["models"]))
    return "\n".join(lines)


def _models(models):
    return ["  model {}: {} entries".format(name or "(not edgeinfer's)", count)
            for name, count in sorted(models.items(), key=lambda kv: (-kv[1], kv[0] or ""))]
