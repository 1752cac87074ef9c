"""On-device benchmarks (``edgeinfer bench``): how fast, how big, how hungry, which to ship.

:func:`bench` measures one or more bundles in one run and returns a report dict;
:mod:`~edgeinfer.bench.reports` writes it as JSON, Markdown and a PNG.  Device
side: numpy at import; matplotlib only for the plot.

JSON schema ``edgeinfer-bench/1``
---------------------------------
Fields are only ever added under this schema name; a renamed or removed field
gets a new one.  Times are seconds (``*_s``) or milliseconds (``*_ms``); a value
the device cannot give is ``null`` beside a ``*_note`` that says so, never a guess.

- ``schema``: ``"edgeinfer-bench/1"``; ``created``: UTC ISO time; ``edgeinfer``: version.
- ``settings``: ``runs`` (timed calls per bundle and batch; null in duration mode),
  ``duration_s``, ``warmup``, ``batches`` and ``concurrency`` (lists of ints),
  ``device``, ``threads``, ``pinned_cores`` (list or null); added: ``cache`` (the
  result cache's ``memory_mb``, ``disk_dir``, ``disk_mb``, ``redis_url`` (password
  masked), or null) and ``fresh_build_cache`` (true: OpenVINO/TensorRT got an empty
  compiled-model folder, so cold loads compiled or built).
- ``machine``: what ``edgeinfer doctor --json`` reports (``python``, ``platform``,
  ``arch``, ``cpu`` with ``model``, ``cores`` and feature flags, ``jetson``,
  ``backends`` with versions), plus ``ram_mb``, ``os``, ``profile`` (device
  profile) and ``power_mode`` (a Jetson's nvpmodel mode, else null); added:
  ``clocks`` (a Jetson's ``{"jetson_clocks": "on"|"off", "cpu_pinned", "gpu_pinned",
  "gpu_mhz"}`` read from sysfs, else null).
- ``sensors``: ``energy`` (``"rapl"``, ``"jetson-ina3221"``, added:
  ``"jetson-tegrastats"`` (its power rails, sampled), or null) and ``energy_note``;
  added: ``tegrastats`` (bool: sampled during throughput runs) and ``tegrastats_note``; ``temperature_c_start`` / ``temperature_c_end`` (hottest
  thermal zone, or null) and ``temperature_note``; ``cpu_clock_start`` /
  ``cpu_clock_end`` (cpu0 ``{"cur_khz", "max_khz"}``: a current clock below the
  maximum means power mode, governor or heat held it back; null if unreadable).
- ``baseline``: the label of the first bundle that loaded (the ratios' 1.0), or null.
- ``bundles``: one object per bundle, in the order given:

  - ``path``, ``label`` (file name without ``.eib``), ``ok``, ``error`` (one line
    when the bundle could not be loaded or run, else null); ``name``,
    ``backend``, ``backend_version``, ``precision``, ``profile`` from its manifest.
  - ``load``: ``backend_import_s`` (importing the backend, done before the
    timed loads: a once-per-process cost, near 0 after the first bundle of a
    backend), ``cold_s`` (first load in this process, engine build or compile
    included; the first bundle of each backend also pays that backend's one-time
    initialisation, so compare cold loads of later bundles, or warm loads) and
    ``warm_s`` (a second load, finding the backend's caches warm).  Added: ``build``,
    the compile or engine build inside those loads, as the backend's runner timed
    it: ``step`` (``"OpenVINO compile_model"``, ``"TensorRT engine build"``, or null
    where the backend has none), ``cold_s`` / ``warm_s`` with ``cold_cache`` /
    ``warm_cache`` (``"miss"``: compiled or built; ``"hit"``: imported from the
    model/engine cache; ``"off"``; null: unknown), ``uncached_s`` (OpenVINO: a third
    load with its model cache off), ``deserialize_s`` (TensorRT), ``note`` (why a
    value is null).
  - ``first_inference_ms``: the first call after the cold load (batch 1).
  - ``latency``: per batch, ``{"batch", "runs", "p50_ms", "p90_ms", "p95_ms",
    "p99_ms", "max_ms", "min_ms", "mean_ms", "samples_ms"}``; calls were timed
    interleaved across bundles (A B C A B C ...).
  - ``throughput``: per batch and concurrency, through ``Session.run_many`` with
    ``requests`` = at least ``runs`` and at least enough to last about
    ``max(duration_s, 0.5)`` seconds at the measured latency:
    ``{"batch", "concurrency", "requests", "seconds", "inferences_per_s",
    "samples_per_s", "cpu_percent" (this process's CPU time over wall time: 200 =
    two cores busy), "energy_j", "energy_per_inference_mj" (null without a
    sensor), "temperature_c", "peak_rss_mb"}``; added: ``"gpu_percent"`` and
    ``"emc_percent"`` (mean GR3D and memory-controller load from tegrastats, else null).
  - ``memory``: ``rss_after_load_mb``, ``peak_rss_mb`` (highest resident set seen
    while this bundle loaded or ran alone).
  - ``accuracy``: the manifest's validation (``data``, ``samples``, ``outputs``
    with e.g. ``top1``, ``top1_fp32``, ``top1_drop_points``, ``cosine_mean``), or
    null; ``accuracy_control``: the manifest's, or null.
  - ``ratios`` (null when not measured): vs the baseline, ``load_cold``,
    ``first_inference``, ``latency_p50`` (list of ``{"batch", "ratio"}``: below
    1 is faster), ``throughput`` (list of ``{"batch", "concurrency", "ratio"}``:
    above 1 is faster), ``peak_rss``.
  - ``cache`` (added; null unless ``settings.cache``): at batch 1, timed interleaved
    (see :mod:`edgeinfer.bench.caching`): ``tiers`` configured, ``no_cache`` (the model
    run), ``miss`` (a new input each call, through the configured cache) and ``hits``
    (``memory``, ``disk``, ``redis``: a cache of that tier alone answering), each a
    latency summary as above without samples, plus ``vs_model_run`` (p50 over the
    model run's p50), or null when not measured; ``miss_overhead_ms`` (median per
    round of miss minus model run); ``key_us`` (key hashing: mean, p50, p99 µs);
    ``notes`` (a tier not configured, or not measured and why).
- ``totals``: ``wall_s``, ``process_cpu_percent`` over the whole run, ``failed``
  (labels of the bundles not measured).
"""

from .core import SCHEMA, Progress, bench, interleave, parse_int_list
from .reports import markdown, write_json, write_markdown, write_plot

__all__ = ["SCHEMA", "Progress", "bench", "interleave", "parse_int_list", "markdown",
           "write_json", "write_markdown", "write_plot"]
