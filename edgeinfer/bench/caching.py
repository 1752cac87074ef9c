"""Result-cache latency for ``edgeinfer bench --cache-mb/--cache-dir/--redis``: misses, and hits per tier.

The miss path runs through the cache as configured (the sizes ``edgeinfer run``
gives the same options): every call brings a new input, so it pays the key, the
lookups and storing the result on top of the model run.  Each tier's hit path is
timed on a cache holding only that tier, as ``scripts/bench_cache.py`` isolates
them: memory alone; the disk folder with no memory tier to promote hits into;
Redis alone.  The model run without the cache, the miss and the hits are timed
interleaved (A B C A B C ...), so the ratios hold on a noisy device.

A tier that is broken or unreachable turns hits into misses (the cache's
contract); such a tier is reported as not measured, with the cache's warning,
never with the misses' times.  Entries the bench wrote are deleted at the end,
so a shared disk folder or Redis keeps only what it held before.

Device side: numpy only, Python 3.6 syntax.
"""

import copy

import numpy as np

from .core import interleave, make_feeds, percentiles_ms

# Tier name in Cache.stats() -> label in the reports.
TIERS = (("memory", "L1 memory"), ("disk", "L2 disk"), ("redis", "L3 Redis"))
NO_CACHE = "model run (no cache)"
MISS = "miss (new input)"

# A key differs when the input's bytes do: the call counter's bits are written into this
# many leading elements of the first input (0/1 values stay valid indices for models
# with embedding lookups).
COUNTER_BITS = 32


def tier_settings(settings):
    """Cache keyword arguments of one single-tier cache per tier the settings have.

    Args:
        settings: keyword arguments of the configured :class:`~edgeinfer.Cache`
            (``memory_mb``, ``disk_dir``, ``disk_mb``, ``redis_url``).

    Returns:
        dict tier name -> keyword arguments, in L1, L2, L3 order.
    """
    tiers = {}
    if settings.get("memory_mb"):
        tiers["memory"] = {"memory_mb": settings["memory_mb"]}
    if settings.get("disk_dir"):
        tiers["disk"] = {"memory_mb": 0, "disk_dir": settings["disk_dir"],
                         "disk_mb": settings.get("disk_mb", 1024)}
    if settings.get("redis_url"):
        tiers["redis"] = {"memory_mb": 0, "redis_url": settings["redis_url"]}
    return tiers


class NewInputs(object):
    """Feeds whose first input changes on every call (a counter in its leading elements)."""

    def __init__(self, feeds):
        self.feeds = dict((name, np.array(value, copy=True)) for name, value in feeds.items())
        self._flat = self.feeds[sorted(self.feeds)[0]].reshape(-1)
        self._width = min(COUNTER_BITS, self._flat.size)
        self._shifts = np.arange(self._width)
        self.count = 0

    def next(self):
        self.count += 1
        self._flat[:self._width] = (self.count >> self._shifts) & 1
        return self.feeds


def _bound_run(session, inputs, cache):
    def call():
        session.run(inputs.next() if isinstance(inputs, NewInputs) else inputs, cache=cache)
    return call


def _summary(seconds, base_p50):
    summary = percentiles_ms(seconds)
    summary["vs_model_run"] = summary["p50_ms"] / base_p50 if base_p50 else None
    return summary


def measure(session, settings, runs=None, duration_s=None):
    """Time the model run, the miss and each tier's hit at batch 1, interleaved.

    Args:
        session: a loaded :class:`~edgeinfer.runtime.session.Session` (its own
            cache, if any, is left alone: copies of it get the caches measured).
        settings: the configured cache's keyword arguments (see :func:`tier_settings`).
        runs: timed calls of each path (default None: ``duration_s``).
        duration_s: seconds for the whole interleaved phase instead (default None).

    Returns:
        dict: ``tiers`` (configured tier names), ``no_cache`` and ``miss`` (latency
        summaries as in the latency table, plus ``vs_model_run``),
        ``miss_overhead_ms`` (median of the per-round miss minus model run),
        ``hits`` (tier name -> summary, or None when not measured), ``key_us``
        (the cache's key-hashing summary), ``notes`` (why a tier was not measured).
    """
    from ..runtime.cache import Cache
    result = {"tiers": [name for name, _ in TIERS if name in tier_settings(settings)],
              "no_cache": None, "miss": None, "miss_overhead_ms": None,
              "hits": dict((name, None) for name, _ in TIERS), "key_us": None, "notes": []}
    if session.manifest.get("deterministic") is False:
        result["notes"].append("the bundle says its model is not deterministic: edgeinfer "
                               "never caches it")
        return result
    for name, label in TIERS:
        if name not in result["tiers"]:
            result["notes"].append("{}: not configured".format(label))
    feeds = make_feeds(session.inputs, 1, seed=7)
    names = [spec.name for spec in session.outputs]
    configured = Cache(**settings)
    per_tier = tier_settings(settings)
    singles = [(name, label, Cache(**per_tier[name])) for name, label in TIERS
               if name in per_tier]
    misses = NewInputs(feeds)
    calls = [(NO_CACHE, _bound_run(session, NewInputs(feeds), False)),
             (MISS, _bound_run(_with_cache(session, configured), misses, True))]
    try:
        for name, label, cache in singles:
            cached = _with_cache(session, cache)
            cached.run(feeds)       # the one miss, which stores the result in this tier
            cache.flush()           # written through, not still queued for the writer
            cache.reset_stats()
            calls.append((label, _bound_run(cached, feeds, True)))
        times = interleave(calls, rounds=runs, duration_s=duration_s)
        base = percentiles_ms(times[NO_CACHE])["p50_ms"]
        result["no_cache"] = _summary(times[NO_CACHE], base)
        result["miss"] = _summary(times[MISS], base)
        result["miss_overhead_ms"] = 1000.0 * float(np.median(
            np.asarray(times[MISS]) - np.asarray(times[NO_CACHE])))
        result["key_us"] = configured.stats()["key_us"]
        for name, label, cache in singles:
            stats = cache.stats()
            calls_made = len(times[label])
            # A tier in trouble may still answer from the writer's queue (memory): not it.
            if stats["hits"] == calls_made and stats["runs"] == 0 and not stats["warnings"]:
                result["hits"][name] = _summary(times[label], base)
            else:
                # Some calls ran the model: their times are not a hit's.
                result["notes"].append("{}: not measured, {} of {} calls missed{}".format(
                    label, stats["misses"], calls_made,
                    " ({})".format("; ".join(stats["warnings"])) if stats["warnings"] else ""))
    finally:
        _forget(configured, session, names, feeds, misses.count)
        for _, _, cache in singles:
            _forget(cache, session, names, feeds, 0)
    return result


def _with_cache(session, cache):
    # A shallow copy shares the loaded model; only the cache it consults differs.
    other = copy.copy(session)
    other.cache = cache
    return other


def _forget(cache, session, names, feeds, count):
    """Delete what the bench stored (the fixed input's entry and ``count`` new inputs')."""
    try:
        cache.flush()  # a write still queued would land after its delete
        cache.delete(cache.key(session.model_hash, feeds, names))
        again = NewInputs(feeds)
        for _ in range(count):
            cache.delete(cache.key(session.model_hash, again.next(), names))
    finally:
        cache.close()
