"""A bench report (see :mod:`edgeinfer.bench`) as JSON, a Markdown table and a PNG.

Files are written under a temporary name and renamed, so a reader never sees half
a report.  matplotlib is optional (``edgeinfer[report]``) and imported only for
:func:`write_plot`.
"""

import io
import json
import os

from ..lazy import require
from ..runtime.engine_cache import write_atomic

MISSING = "-"


def _atomic_write(path, data):
    """Write bytes or text under a temporary name and rename (the engine cache's writer)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        os.makedirs(folder)
    path = os.path.abspath(path)
    write_atomic(path, data if isinstance(data, bytes) else data.encode("utf-8"))
    # The temporary file was created private (0600); a report is for sharing, so it gets
    # the mode any new file would get here.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_json(report, path):
    """Write the report as indented JSON."""
    _atomic_write(path, json.dumps(report, indent=2, sort_keys=True) + "\n")


def _num(value, digits=2):
    if value is None:
        return MISSING
    return "{:.{}f}".format(value, digits)


def _ratio(value):
    return MISSING if value is None else "{:.2f}x".format(value)


def _top1(entry):
    """(top-1, drop in points vs FP32) of the bundle's first classifier output, as text."""
    accuracy = entry.get("accuracy") or {}
    for _, metrics in sorted((accuracy.get("outputs") or {}).items()):
        if "top1" in metrics:
            drop = metrics.get("top1_drop_points")
            return ("{:.2f}%".format(100.0 * metrics["top1"]),
                    # -0.0 would print as "-0.00": a drop of nothing is shown as +0.00.
                    MISSING if drop is None else "{:+.2f}".format(-drop if drop else 0.0))
        if "cosine_mean" in metrics:
            return ("cos {:.4f}".format(metrics["cosine_mean"]), MISSING)
    return MISSING, MISSING


def machine_line(report):
    """One line of machine facts for the top of a report."""
    machine = report["machine"]
    cpu = machine.get("cpu") or {}
    flags = [k for k in ("avx2", "avx512", "vnni", "amx", "neon", "dotprod", "i8mm", "fp16")
             if cpu.get(k)]
    backends = ", ".join("{} {}".format(name, str(info["version"]).split("-")[0])
                         for name, info in sorted((machine.get("backends") or {}).items())
                         if info.get("available"))
    ram = machine.get("ram_mb")
    return ("{} ({} cores; {}), {} RAM, {}, Python {}, profile {}; backends: {}".format(
        cpu.get("model") or "unknown CPU", cpu.get("cores"), " ".join(flags) or "no SIMD flags",
        MISSING if ram is None else "{:.1f} GiB".format(ram / 1024.0), machine.get("os"),
        machine.get("python"), machine.get("profile"), backends or "none"))


def markdown(report):
    """The report as Markdown: machine facts, a comparison table, a throughput table."""
    settings = report["settings"]
    sensors = report["sensors"]
    first = settings["batches"][0]
    how = ("{} runs".format(settings["runs"]) if settings["runs"] is not None
           else "{:g} s".format(settings["duration_s"]))
    lines = ["# edgeinfer bench", "",
             "Machine: {}.".format(machine_line(report)),
             "Settings: {}, warmup {}, batch {}, concurrency {}, device {}, threads {}{}. "
             "Latency interleaved across bundles; ratios vs {}.".format(
                 how, settings["warmup"], ",".join(map(str, settings["batches"])),
                 ",".join(map(str, settings["concurrency"])), settings["device"] or "default",
                 settings["threads"] or "default",
                 ", pinned to cores {}".format(settings["pinned_cores"])
                 if settings["pinned_cores"] else "", report["baseline"] or MISSING),
             "Energy: {}. Temperature: {}.{}".format(
                 sensors["energy"] or sensors["energy_note"],
                 "{} -> {} C".format(_num(sensors["temperature_c_start"], 1),
                                     _num(sensors.get("temperature_c_end"), 1))
                 if sensors["temperature_c_start"] is not None else sensors["temperature_note"],
                 _jetson_line(report)),
             ""]
    lines.append("| bundle | precision | backend | top-1 | vs FP32 (pts) | load cold ms "
                 "| load warm ms | first ms | p50 ms | p90 ms | p99 ms | max ms | p50 ratio "
                 "| best samples/s | peak RSS MiB |")
    lines.append("|" + " --- |" * 15)
    for entry in report["bundles"]:
        if not entry["ok"]:
            continue
        lat = next((r for r in entry["latency"] if r["batch"] == first), {})
        ratio = next((r["ratio"] for r in entry["ratios"]["latency_p50"]
                      if r["batch"] == first), None)
        best = max([r["samples_per_s"] for r in entry["throughput"]] or [None],
                   key=lambda v: -1 if v is None else v)
        top1, drop = _top1(entry)
        lines.append("| {} | {} | {} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} "
                     "| {} |".format(
                         entry["label"], entry["precision"], entry["backend"],
                         # "2026.4.1-22982-e213a...-releases/2026/4": the release is enough.
                         (entry["backend_version"] or "").split("-")[0], top1, drop,
                         _num(1000.0 * entry["load"]["cold_s"], 1),
                         _num(1000.0 * entry["load"]["warm_s"], 1),
                         _num(entry["first_inference_ms"], 2), _num(lat.get("p50_ms"), 3),
                         _num(lat.get("p90_ms"), 3), _num(lat.get("p99_ms"), 3),
                         _num(lat.get("max_ms"), 3), _ratio(ratio), _num(best, 0),
                         _num(entry["memory"]["peak_rss_mb"], 1)))
    lines.append("")
    lines.append("Latency at batch {}. Throughput:".format(first))
    lines.append("")
    gpu = bool(sensors.get("tegrastats"))
    lines.append("| bundle | batch | concurrency | inferences/s | samples/s | ratio | CPU % "
                 "| energy mJ/inference |" + (" GPU % | EMC % |" if gpu else ""))
    lines.append("|" + " --- |" * (10 if gpu else 8))
    for entry in report["bundles"]:
        if not entry["ok"]:
            continue
        ratios = dict(((r["batch"], r["concurrency"]), r["ratio"])
                      for r in entry["ratios"]["throughput"])
        for row in entry["throughput"]:
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                entry["label"], row["batch"], row["concurrency"], _num(row["inferences_per_s"], 0),
                _num(row["samples_per_s"], 0), _ratio(ratios.get((row["batch"],
                                                                  row["concurrency"]))),
                _num(row["cpu_percent"], 0),
                _num(row["energy_per_inference_mj"], 3) if row["energy_j"] is not None
                else "not available here") + (" {} | {} |".format(
                    _num(row.get("gpu_percent"), 0), _num(row.get("emc_percent"), 0))
                    if gpu else ""))
    lines.extend(_build_table(report))
    lines.extend(_cache_table(report))
    failed = [e for e in report["bundles"] if not e["ok"]]
    if failed:
        lines.extend(["", "Not measured:", ""])
        lines.extend("- {}: {}".format(e["path"], e["error"]) for e in failed)
    return "\n".join(lines) + "\n"


def _jetson_line(report):
    """" Jetson: power mode ..., jetson_clocks ..." (empty on other machines)."""
    machine = report["machine"]
    mode, clocks = machine.get("power_mode"), machine.get("clocks")
    if not mode and not clocks:
        return ""
    parts = []
    if mode:
        parts.append("power mode {} ({})".format(mode.get("name") or MISSING, mode.get("id")))
    if clocks:
        parts.append("jetson_clocks {}".format(clocks.get("jetson_clocks")))
        if clocks.get("gpu_mhz") is not None:
            parts.append("GPU at {:.0f} MHz".format(clocks["gpu_mhz"]))
    return " Jetson: {}.".format(", ".join(parts))


def _seconds(value, state):
    if value is None:
        return MISSING
    return "{:.3f}{}".format(value, " ({})".format(state) if state else "")


def _build_table(report):
    """Compile / engine build time of the cold and warm loads, per bundle."""
    rows = [e for e in report["bundles"] if e["ok"] and e["load"].get("build")]
    if not rows:
        return []
    lines = ["", "Engine build / compile on a cold start (inside the load times above; "
                 "model cache state in brackets):", "",
             "| bundle | step | cold s | warm s | without model cache s | note |",
             "|" + " --- |" * 6]
    for entry in rows:
        build = entry["load"]["build"]
        lines.append("| {} | {} | {} | {} | {} | {} |".format(
            entry["label"], build.get("step") or MISSING,
            _seconds(build.get("cold_s"), build.get("cold_cache")),
            _seconds(build.get("warm_s"), build.get("warm_cache")),
            _seconds(build.get("uncached_s"), None), build.get("note") or ""))
    return lines


def _hit(cache, tier):
    hit = (cache.get("hits") or {}).get(tier)
    if hit is None:
        return MISSING
    return "{:.3f} ({:.3f}x)".format(hit["p50_ms"], hit["vs_model_run"])


def _cache_table(report):
    """Result cache at batch 1: model run, miss and each tier's hit, per bundle."""
    rows = [e for e in report["bundles"] if e["ok"] and e.get("cache")]
    if not rows:
        return []
    lines = ["", "Result cache at batch 1 (p50 ms; hits also as a ratio of the model run; "
                 "timed interleaved):", "",
             "| bundle | model run | miss | miss overhead | L1 memory hit | L2 disk hit "
             "| L3 Redis hit |", "|" + " --- |" * 7]
    notes = []
    for entry in rows:
        cache = entry["cache"]
        lines.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            entry["label"], _num((cache.get("no_cache") or {}).get("p50_ms"), 3),
            _num((cache.get("miss") or {}).get("p50_ms"), 3),
            _num(cache.get("miss_overhead_ms"), 3), _hit(cache, "memory"),
            _hit(cache, "disk"), _hit(cache, "redis")))
        notes.extend("- {}: {}".format(entry["label"], note) for note in cache.get("notes", ())
                     if not note.endswith("not configured"))
    if notes:
        lines.extend([""] + notes)
    return lines


def write_markdown(report, path):
    """Write :func:`markdown` to ``path``."""
    _atomic_write(path, markdown(report))


def load_pyplot(purpose):
    """matplotlib's pyplot on the Agg backend (no display on a device).

    Raises:
        MissingDependency: matplotlib is not installed (``pip install edgeinfer[report]``).
    """
    matplotlib = require("matplotlib", purpose)
    matplotlib.use("Agg")  # must precede pyplot's import
    return require("matplotlib.pyplot", purpose)


def write_plot(report, path):
    """Write a PNG: latency distribution per bundle, and throughput vs concurrency.

    Raises:
        MissingDependency: matplotlib is not installed (``pip install edgeinfer[report]``).
    """
    pyplot = load_pyplot("bench plots (--plot)")
    measured = [e for e in report["bundles"] if e["ok"]]
    batches = report["settings"]["batches"]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    # One colour per bundle in both panels; batch sizes differ by line style on the right.
    palette = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = dict((e["label"], palette[i % len(palette)]) for i, e in enumerate(measured))
    styles = ("-", "--", ":", "-.")
    data, labels, faces = [], [], []
    for entry in measured:
        for row in entry["latency"]:
            data.append(row["samples_ms"])
            faces.append(colours[entry["label"]])
            labels.append(entry["label"] if len(batches) == 1
                          else "{}\nbatch {}".format(entry["label"], row["batch"]))
    if data:
        boxes = left.boxplot(data, whis=(1, 99), showfliers=True, patch_artist=True)
        for box, colour in zip(boxes["boxes"], faces):
            box.set_facecolor(colour)
            box.set_alpha(0.6)
        for median in boxes["medians"]:
            median.set_color("black")
        left.set_xticks(range(1, len(labels) + 1))
        left.set_xticklabels(labels, rotation=20, fontsize=8)
    # Log scale: one slow outlier (a page fault, a scheduler hiccup) would otherwise
    # squash every box into a line at the bottom.
    left.set_yscale("log")
    left.set_ylabel("latency per call (ms, log scale)")
    left.set_title("Latency distribution (whiskers p1-p99)")
    left.grid(axis="y", alpha=0.3)
    rates = []
    for entry in measured:
        for index, batch in enumerate(batches):
            rows = [r for r in entry["throughput"] if r["batch"] == batch]
            if rows:
                rates.extend(r["samples_per_s"] for r in rows)
                right.plot([r["concurrency"] for r in rows], [r["samples_per_s"] for r in rows],
                           marker="o", color=colours[entry["label"]],
                           linestyle=styles[index % len(styles)],
                           label="{} (batch {})".format(entry["label"], batch))
    right.set_xlabel("requests in flight (concurrency)")
    if rates and min(rates) > 0 and max(rates) / min(rates) > 20:
        # Batch sizes far apart: on a linear axis the small batches lie flat on the floor.
        right.set_yscale("log")
        right.set_ylabel("samples / s (log scale)")
    else:
        right.set_ylabel("samples / s")
    right.set_xticks(report["settings"]["concurrency"])
    right.set_title("Throughput vs concurrency")
    right.grid(alpha=0.3)
    if measured:
        right.legend(fontsize=7, loc="best", framealpha=0.8)
    figure.suptitle("edgeinfer bench: {}".format(machine_line(report)), fontsize=7)
    save_figure(pyplot, figure, path)


def save_figure(pyplot, figure, path):
    """Lay out ``figure``, write it to ``path`` as a PNG (atomically) and free it."""
    figure.tight_layout()
    data = io.BytesIO()
    try:
        figure.savefig(data, dpi=100, format="png")
    finally:
        pyplot.close(figure)
    _atomic_write(path, data.getvalue())
