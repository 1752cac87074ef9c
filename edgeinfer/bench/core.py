"""The measurements behind ``edgeinfer bench``: load, first inference, latency, throughput.

Latency is timed interleaved across bundles (A B C A B C ...) so that drift (heat,
clocks, neighbours) hits every bundle alike and the ratios between them hold even
when single times wander.  Throughput goes through :meth:`Session.run_many`, so
each backend keeps requests in flight its own way (OpenVINO's AsyncInferQueue,
a thread pool for the others), never a Python loop that runs one call at a time.

The report is the dict described in :mod:`edgeinfer.bench`.
"""

import datetime
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from .. import __version__
from ..errors import EdgeInferError, UsageError
from ..memory import peak_rss_mb, reset_peak, rss_mb
from . import sensors

SCHEMA = "edgeinfer-bench/1"

PERCENTILES = (50, 90, 95, 99)

# Backend option that sets the number of inference threads, per backend.
THREAD_OPTIONS = {"onnxruntime": "intra_op_threads", "openvino": "inference_threads"}

# Backends with a cache of compiled models, and the option naming its folder: bench points
# it at an empty folder so that the cold load compiles (or builds) for real.
BUILD_CACHE_OPTIONS = {"openvino": "cache_dir", "tensorrt": "cache_dir"}

# What the load of each backend includes when the runner does not time a build step.
BUILD_NOTES = {
    "onnxruntime": "onnxruntime has no separate compile step: creating its session "
                   "(graph optimisation included) is the load",
    "tensorrt": "the bundle ran through ONNX Runtime (no TensorRT Python package): any "
                "engine build happened inside its session creation, not separable",
}

# A throughput measurement lasts at least this long (requests are added to --runs when
# the measured latency says it would be shorter): os.times() ticks every 10 ms, so CPU
# use over a few milliseconds would be noise.
MIN_PHASE_S = 0.5

# In --duration mode, throughput requests are sized from the measured latency; this
# caps one run_many call so a microsecond model does not build a million feed dicts.
MAX_REQUESTS = 20000


def check_settings(runs=None, duration_s=None, warmup=0, batches=(1,), concurrency=(1,),
                   threads=None, cores=None):
    """Refuse settings that cannot be measured (raises UsageError, exit status 2)."""
    if runs is not None and duration_s is not None:
        raise UsageError("Give --runs or --duration, not both.",
                         "--runs counts timed calls per bundle; --duration is seconds per phase.")
    if runs is not None and (isinstance(runs, bool) or not isinstance(runs, int) or runs < 1):
        raise UsageError("--runs must be a whole number >= 1, not {!r}.".format(runs),
                         "Example: --runs 200.")
    if duration_s is not None and not duration_s > 0:
        raise UsageError("--duration must be more than 0 seconds, not {!r}.".format(duration_s),
                         "Example: --duration 10.")
    if warmup is None or warmup < 0:
        raise UsageError("--warmup must be 0 or more, not {!r}.".format(warmup),
                         "Example: --warmup 10.")
    for what, values in (("--batch", batches), ("--concurrency", concurrency)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                             for v in values):
            raise UsageError("{} must list whole numbers >= 1, not {!r}.".format(
                what, list(values or [])), "Example: {} 1,4.".format(what))
    if threads is not None and threads < 1:
        raise UsageError("--threads must be 1 or more, not {!r}.".format(threads),
                         "Leave it out for the backend's own choice.")
    if cores is not None:
        if not hasattr(os, "sched_setaffinity"):
            raise UsageError("--pin-cores needs Linux (os.sched_setaffinity).",
                             "Leave it out on this system.")
        have = os.cpu_count() or 1
        bad = [c for c in cores if c < 0 or c >= have]
        if not cores or bad:
            raise UsageError("--pin-cores lists cores this machine lacks: {}.".format(bad),
                             "Cores here: 0-{}.".format(have - 1))


def parse_int_list(text, what):
    """``"1,4"`` -> ``[1, 4]``; raises UsageError naming ``what`` for anything else."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UsageError("{} must be whole numbers separated by commas, not {!r}.".format(
            what, text), "Example: {} 1,4.".format(what))
    if not values:
        raise UsageError("{} is empty.".format(what), "Example: {} 1,4.".format(what))
    return values


def percentiles_ms(seconds):
    """Latency summary of a list of seconds: p50/p90/p95/p99/max/min/mean in ms."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    summary = dict(("p{}_ms".format(p), float(np.percentile(ms, p))) for p in PERCENTILES)
    summary.update(max_ms=float(ms.max()), min_ms=float(ms.min()), mean_ms=float(ms.mean()),
                   runs=int(ms.size))
    return summary


def interleave(runs, rounds=None, duration_s=None, clock=time.perf_counter):
    """Time callables round-robin (A B C A B C ...) for ``rounds`` or ``duration_s``.

    Args:
        runs: list of (label, callable()) pairs, called in this order each round.
        rounds: rounds to run (default None: use ``duration_s``).
        duration_s: seconds the whole interleaved phase lasts, shared by all
            callables (default None: use ``rounds``); at least one round runs.
        clock: the timer (default ``time.perf_counter``).

    Returns:
        dict label -> list of seconds, one per round.
    """
    times = dict((label, []) for label, _ in runs)
    end = None if duration_s is None else clock() + duration_s
    done = 0
    while True:
        for label, run in runs:
            begin = clock()
            run()
            times[label].append(clock() - begin)
        done += 1
        if rounds is not None and done >= rounds:
            break
        if end is not None and clock() >= end:
            break
        if rounds is None and end is None:
            break
    return times


def make_feeds(specs, batch, seed=0):
    """Random inputs shaped by the specs with every symbolic dim given ``batch``.

    Floats are standard normal, integers small non-negative, booleans random, so
    that models with embedding lookups still get valid indices.
    """
    rng = np.random.RandomState(seed)
    feeds = {}
    for spec in specs:
        shape = spec.concrete_shape(batch=batch)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            value = rng.randint(0, 2, size=shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.randint(0, 2, size=shape).astype(bool)
        else:
            value = np.zeros(shape, dtype=dtype)
        feeds[spec.name] = value
    return feeds


def one_line(exc):
    """An exception as one line of text, for a report."""
    text = str(exc).strip() or type(exc).__name__
    line = " ".join(text.split())
    if not isinstance(exc, EdgeInferError):
        line = "{}: {}".format(type(exc).__name__, line)
    return line


def machine_facts(root="/"):
    """CPU model and features, cores, RAM, OS, Python, backend versions, device profile."""
    from ..doctor import collect
    from ..profiles import resolve_target
    facts = collect(root)
    facts.pop("int8_backend", None)
    ram = None
    try:
        with open(os.path.join(root, "proc/meminfo")) as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    ram = int(line.split()[1]) / 1024.0
                    break
    except (OSError, ValueError, IndexError):
        pass
    facts["ram_mb"] = ram
    facts["os"] = "{} {}".format(platform.system(), platform.release())
    jetson = facts.get("jetson")
    facts["profile"] = (jetson or {}).get("profile") or resolve_target("cpu").name
    facts["power_mode"] = (jetson or {}).get("power_mode")
    facts["clocks"] = None
    if jetson:
        from ..jetson import read_clocks
        facts["clocks"] = read_clocks(root)
    return facts


class Progress(object):
    """Progress on stderr: a bar rewritten in place on a terminal, one line per step else.

    On a terminal: ``bench [######------] 3/7 latency batch 1 (3 bundles interleaved)``,
    cut to the terminal's width so that it never wraps (a wrapped line cannot be
    rewritten in place).  Elsewhere (a log, CI): ``bench [3/7] latency batch 1 ...``.
    """

    BAR = 12

    def __init__(self, stream=None, enabled=True):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total = 1
        self.done = 0

    def step(self, text):
        if not self.enabled:
            return
        self.done += 1
        done = min(self.done, self.total)
        if self.tty:
            filled = int(round(self.BAR * done / float(max(self.total, 1))))
            line = "bench [{}{}] {}/{} {}".format("#" * filled, "-" * (self.BAR - filled), done,
                                                 self.total, text)
            width = shutil.get_terminal_size((80, 24)).columns
            self.stream.write("\r\033[K" + line[:max(width - 1, 20)])
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write("bench [{}/{}] {}\n".format(done, self.total, text))
        self.stream.flush()

    def finish(self):
        if self.enabled and self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()


def _label(path, taken):
    base = os.path.basename(str(path))
    label = base[:-4] if base.endswith(".eib") else base
    if label in taken:
        label = "{} ({})".format(label, len(taken) + 1)
    taken.add(label)
    return label


def _accuracy(manifest):
    validation = manifest.get("validation") or {}
    if not validation.get("outputs"):
        return None
    return {"data": validation.get("data"), "samples": validation.get("samples"),
            "outputs": validation["outputs"]}


def _options(backend, threads, build_cache):
    """Backend options: the thread count, and an empty folder for compiled models."""
    options = {}
    if threads is not None:
        key = THREAD_OPTIONS.get(backend)
        if key is None:
            raise UsageError("--threads is not supported for the {} backend.".format(backend),
                             "Leave it out for {}.".format(backend))
        options[key] = int(threads)
    if build_cache is not None and backend in BUILD_CACHE_OPTIONS:
        options[BUILD_CACHE_OPTIONS[backend]] = tempfile.mkdtemp(prefix=backend + "-",
                                                                 dir=build_cache)
    return options or None


def _build_stats(session):
    """The runner's account of its compile or engine build (see the backends), or None."""
    return getattr(getattr(session, "_runner", None), "load_stats", None)


def _cache_state(stats):
    if stats is None:
        return None
    if "engine" in stats:
        return {"built": "miss", "cached": "hit"}.get(stats["engine"])
    return stats.get("model_cache")


def _record_build(entry, backend, cold, warm, uncached):
    """Fill ``entry["load"]["build"]`` from the runners' stats of the three loads."""
    build = entry["load"]["build"]
    if cold is None:
        build["note"] = BUILD_NOTES.get(
            backend, "the {} backend does not time a build step".format(backend))
        return
    build.update(step=cold["step"], cold_s=cold["seconds"], cold_cache=_cache_state(cold),
                 warm_s=None if warm is None else warm["seconds"],
                 warm_cache=_cache_state(warm),
                 uncached_s=None if uncached is None else uncached["seconds"])
    if "deserialize_s" in cold:
        build["deserialize_s"] = (warm or cold)["deserialize_s"]
    if uncached is None and backend == "tensorrt":
        build["note"] = ("without its engine cache TensorRT builds on every load: the "
                         "cold build is that time")


def _load_bundle(entry, device, threads, build_cache):
    """Cold load, first inference, warm load; fills ``entry``; returns the warm session."""
    from ..bundle import Bundle
    from ..runtime.backends import get_backend
    from ..runtime.session import load
    backend = Bundle.open(str(entry["path"]), verify=False).backend
    options = _options(backend, threads, build_cache)
    # Importing the backend is a once-per-process cost; left inside the first cold load
    # it would make the first bundle look slow to load next to the others.
    begin = time.perf_counter()
    get_backend(backend).available()
    entry["load"]["backend_import_s"] = time.perf_counter() - begin
    reset_peak()
    begin = time.perf_counter()
    session = load(str(entry["path"]), device=device, backend_options=options)
    entry["load"]["cold_s"] = time.perf_counter() - begin
    cold = _build_stats(session)
    manifest = session.manifest
    target = manifest.get("target") or {}
    entry.update(name=manifest.get("name"), backend=target.get("backend"),
                 backend_version=target.get("backend_version"),
                 precision=manifest.get("precision"), profile=target.get("profile"),
                 accuracy=_accuracy(manifest),
                 accuracy_control=manifest.get("accuracy_control"))
    feeds = make_feeds(session.inputs, 1)
    begin = time.perf_counter()
    session.run(feeds, cache=False)
    entry["first_inference_ms"] = 1000.0 * (time.perf_counter() - begin)
    entry["memory"]["rss_after_load_mb"] = rss_mb()
    entry["memory"]["peak_rss_mb"] = peak_rss_mb()
    session.close()
    # A second load finds what the first left behind: OpenVINO's model cache, TensorRT's
    # engine cache, the bundle in the OS page cache.  The gap is what a restart costs.
    begin = time.perf_counter()
    session = load(str(entry["path"]), device=device, backend_options=options)
    entry["load"]["warm_s"] = time.perf_counter() - begin
    uncached = None
    if cold is not None and backend == "openvino":
        # The same compile with OpenVINO's model cache off: what every load costs without it.
        plain = load(str(entry["path"]), device=device,
                     backend_options=dict(options or {}, cache_dir=None))
        uncached = _build_stats(plain)
        plain.close()
    _record_build(entry, backend, cold, _build_stats(session), uncached)
    return session


def _throughput(session, feeds, batch, concurrency, requests, energy, root, tegra=None):
    cpu = sensors.CpuClock()
    feed_list = [feeds] * requests
    reset_peak()
    if tegra is not None:
        tegra.start()
    energy.start()
    cpu.start()
    begin = time.perf_counter()
    session.run_many(feed_list, concurrency=concurrency, cache=False)
    seconds = time.perf_counter() - begin
    cpu_percent = cpu.stop()
    joules = energy.stop()
    jetson = tegra.stop() if tegra is not None else None
    if joules is None and jetson is not None:
        joules = jetson["energy_j"]
    return {
        "batch": batch, "concurrency": concurrency, "requests": requests, "seconds": seconds,
        "inferences_per_s": requests / seconds, "samples_per_s": requests * batch / seconds,
        "cpu_percent": cpu_percent,
        "energy_j": joules,
        "energy_per_inference_mj": None if joules is None else 1000.0 * joules / requests,
        "temperature_c": sensors.max_temperature_c(root),
        "peak_rss_mb": peak_rss_mb(),
        "gpu_percent": None if jetson is None else jetson["gr3d_percent_mean"],
        "emc_percent": None if jetson is None else jetson["emc_percent_mean"],
    }


def _ratio(value, base):
    if value is None or base is None or base == 0:
        return None
    return value / base


def _ratios(entry, base):
    lat = dict((r["batch"], r["p50_ms"]) for r in base["latency"])
    thr = dict(((r["batch"], r["concurrency"]), r["samples_per_s"]) for r in base["throughput"])
    return {
        "load_cold": _ratio(entry["load"]["cold_s"], base["load"]["cold_s"]),
        "first_inference": _ratio(entry["first_inference_ms"], base["first_inference_ms"]),
        "latency_p50": [{"batch": r["batch"], "ratio": _ratio(r["p50_ms"], lat.get(r["batch"]))}
                        for r in entry["latency"]],
        "throughput": [{"batch": r["batch"], "concurrency": r["concurrency"],
                        "ratio": _ratio(r["samples_per_s"],
                                        thr.get((r["batch"], r["concurrency"])))}
                       for r in entry["throughput"]],
        "peak_rss": _ratio(entry["memory"]["peak_rss_mb"], base["memory"]["peak_rss_mb"]),
    }


def bench(paths, runs=None, duration_s=None, warmup=5, batches=(1,), concurrency=(1,),
          device=None, threads=None, cores=None, progress=None, root="/", cache=None,
          fresh_build_cache=True):
    """Measure bundles side by side and return the report dict (schema ``edgeinfer-bench/1``).

    Args:
        paths: the ``.eib`` files; the first that loads is the baseline of the ratios.
        runs: timed calls per bundle and batch size (default None: 100 unless
            ``duration_s`` is given); throughput runs at least this many requests per
            setting, more when they would last under :data:`MIN_PHASE_S`.
        duration_s: seconds per latency phase (shared by the bundles, interleaved) and
            per throughput setting, instead of ``runs`` (default None).
        warmup: untimed calls per bundle and batch size first (default 5).
        batches: batch sizes (default ``(1,)``).
        concurrency: requests in flight for throughput (default ``(1,)``).
        device: as for :func:`edgeinfer.load` (default None: the backend's default).
        threads: inference threads for the backend (default None: its choice).
        cores: CPU cores to pin this process to (default None: no pinning).
        progress: a :class:`Progress` (default None: silent).
        root: the file-system root for the sensors (default ``/``).
        cache: keyword arguments of an :class:`~edgeinfer.Cache` (``memory_mb``,
            ``disk_dir``, ``disk_mb``, ``redis_url``) whose miss and per-tier hit
            latency to measure at batch 1 (default None: no cache phase).  Entries
            the bench writes are deleted afterwards.
        fresh_build_cache: give OpenVINO and TensorRT an empty folder for their
            compiled models, so the cold load compiles or builds (default True);
            False: their usual folders, where a cold load may find an earlier build.

    Returns:
        dict: the report, see :mod:`edgeinfer.bench`.

    Raises:
        UsageError: settings that cannot be measured (zero or negative runs, ...), or
            cache settings :class:`~edgeinfer.Cache` refuses.
        MissingDependency: ``redis_url`` without the ``redis`` package.
    """
    if runs is None and duration_s is None:
        runs = 100
    batches = list(batches)
    concurrency = list(concurrency)
    check_settings(runs, duration_s, warmup, batches, concurrency, threads, cores)
    if not paths:
        raise UsageError("No bundle to measure.", "Example: edgeinfer bench m-fp32.eib m-int8.eib.")
    progress = progress or Progress(enabled=False)
    if cache is not None:
        from ..runtime.cache import Cache
        Cache(**cache).close()  # refuse bad settings before anything is measured
    saved_cores = None
    if cores is not None:
        # Restored at the end: bench() is also a library call, and the caller's process
        # must not stay pinned after it returns.
        saved_cores = os.sched_getaffinity(0)
        os.sched_setaffinity(0, set(cores))
    build_cache = tempfile.mkdtemp(prefix="edgeinfer-bench-") if fresh_build_cache else None
    try:
        return _bench(paths, runs, duration_s, warmup, batches, concurrency, device, threads,
                      cores, progress, root, cache, build_cache)
    finally:
        if saved_cores is not None:
            os.sched_setaffinity(0, saved_cores)
        if build_cache is not None:
            shutil.rmtree(build_cache, ignore_errors=True)


def _bench(paths, runs, duration_s, warmup, batches, concurrency, device, threads, cores,
           progress, root, cache, build_cache):
    wall = sensors.CpuClock()
    wall.start()
    started = time.perf_counter()
    energy = sensors.EnergyMeter(root)
    tegra = sensors.Tegrastats()
    energy_source = energy.source or ("jetson-tegrastats" if tegra.available else None)
    report = {
        "schema": SCHEMA,
        "created": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
        "edgeinfer": __version__,
        "settings": {"runs": runs, "duration_s": duration_s, "warmup": warmup,
                     "batches": batches, "concurrency": concurrency, "device": device,
                     "threads": threads, "pinned_cores": sorted(cores) if cores else None,
                     "cache": _describe_cache(cache), "fresh_build_cache": build_cache is not None},
        "machine": machine_facts(root),
        "sensors": {"energy": energy_source,
                    "energy_note": None if energy_source else
                    "{}, and no tegrastats".format(energy.why_not),
                    "tegrastats": tegra.available, "tegrastats_note": tegra.why_not,
                    "temperature_c_start": sensors.max_temperature_c(root),
                    "temperature_note": None if sensors.temperatures_c(root) else (
                        "{}: no readable /sys/class/thermal zone".format(sensors.NOT_AVAILABLE)),
                    "cpu_clock_start": sensors.cpu_clock(root)},
        "baseline": None,
        "bundles": [],
    }
    sessions = []
    taken = set()
    steps = len(batches) + len(batches) * len(concurrency)
    progress.total = (len(paths) * (1 + len(batches) * len(concurrency) + (cache is not None))
                      + len(batches))
    for path in paths:
        entry = {"path": str(path), "label": _label(path, taken), "ok": False, "error": None,
                 "name": None, "backend": None, "backend_version": None, "precision": None,
                 "profile": None,
                 "load": {"backend_import_s": None, "cold_s": None, "warm_s": None,
                          "build": {"step": None, "cold_s": None, "cold_cache": None,
                                    "warm_s": None, "warm_cache": None, "uncached_s": None,
                                    "note": None}},
                 "first_inference_ms": None, "latency": [], "throughput": [],
                 "memory": {"rss_after_load_mb": None, "peak_rss_mb": None},
                 "accuracy": None, "accuracy_control": None, "ratios": None, "cache": None}
        report["bundles"].append(entry)
        progress.step("load {}".format(entry["label"]))
        try:
            sessions.append((entry, _load_bundle(entry, device, threads, build_cache)))
            entry["ok"] = True
        except UsageError:
            raise
        except Exception as exc:  # one broken bundle must not stop the others (issue 9)
            entry["error"] = one_line(exc)
    # Bundles that failed to load have no later steps.
    progress.total = (len(paths) + steps + len(batches) * len(concurrency) * (len(sessions) - 1)
                      + (len(sessions) if cache is not None else 0))
    try:
        for batch in batches:
            progress.step("latency batch {} ({} bundles interleaved)".format(batch, len(sessions)))
            calls = []
            for entry, session in sessions:
                feeds = make_feeds(session.inputs, batch)
                for _ in range(warmup):
                    session.run(feeds, cache=False)
                calls.append((entry["label"], _bound(session, feeds)))
            if not calls:
                continue
            times = interleave(calls, rounds=runs, duration_s=duration_s)
            for entry, _ in sessions:
                summary = {"batch": batch}
                summary.update(percentiles_ms(times[entry["label"]]))
                summary["samples_ms"] = [1000.0 * t for t in times[entry["label"]]]
                entry["latency"].append(summary)
        for batch in batches:
            for level in concurrency:
                for entry, session in sessions:
                    progress.step("throughput {} batch {} concurrency {}".format(
                        entry["label"], batch, level))
                    feeds = make_feeds(session.inputs, batch)
                    requests = _requests(entry, batch, level, runs, duration_s)
                    session.run_many([feeds] * min(requests, level * 2), concurrency=level,
                                     cache=False)  # warm the pool or the async queue
                    result = _throughput(session, feeds, batch, level, requests, energy, root,
                                         tegra if tegra.available else None)
                    entry["throughput"].append(result)
                    peak = result["peak_rss_mb"]
                    if peak is not None and (entry["memory"]["peak_rss_mb"] or 0) < peak:
                        entry["memory"]["peak_rss_mb"] = peak
        if cache is not None:
            from . import caching
            for entry, session in sessions:
                progress.step("cache {} (miss, {})".format(entry["label"], ", ".join(
                    label for name, label in caching.TIERS
                    if name in caching.tier_settings(cache))))
                entry["cache"] = caching.measure(session, cache, runs=runs,
                                                 duration_s=duration_s)
    finally:
        for _, session in sessions:
            session.close()
        progress.finish()
    measured = [entry for entry, _ in sessions]
    if measured:
        report["baseline"] = measured[0]["label"]
        for entry in measured:
            entry["ratios"] = _ratios(entry, measured[0])
    report["sensors"]["temperature_c_end"] = sensors.max_temperature_c(root)
    report["sensors"]["cpu_clock_end"] = sensors.cpu_clock(root)
    report["totals"] = {"wall_s": time.perf_counter() - started,
                        "process_cpu_percent": wall.stop(),
                        "failed": [e["label"] for e in report["bundles"] if not e["ok"]]}
    return report


def _describe_cache(cache):
    """The cache settings as the report shows them (the Redis URL without its password)."""
    if cache is None:
        return None
    shown = dict(cache)
    url = shown.get("redis_url")
    if url and "@" in url:
        scheme, _, rest = url.partition("://")
        shown["redis_url"] = "{}://***@{}".format(scheme, rest.rpartition("@")[2])
    return shown


def _bound(session, feeds):
    def call():
        session.run(feeds, cache=False)
    return call


def _requests(entry, batch, level, runs, duration_s):
    p50 = next((r["p50_ms"] for r in entry["latency"] if r["batch"] == batch), None)
    seconds = MIN_PHASE_S if duration_s is None else max(duration_s, MIN_PHASE_S)
    # Enough requests to fill about that long if the level-fold concurrency scaled
    # perfectly; a backend that scales less simply takes longer.
    fill = int(min(MAX_REQUESTS, seconds * 1000.0 / p50 * level)) if p50 else 10
    return max(level, fill, runs or 0)
