"""A load-test report as Markdown and a PNG timeline (JSON: ``bench.reports.write_json``).

Files are written under a temporary name and renamed (the bench reports' writer);
matplotlib is optional (``edgeinfer[report]``) and imported only for the plot.
"""

from ..bench.reports import (_atomic_write, load_pyplot, machine_line, save_figure,
                             write_json)

__all__ = ["markdown", "write_json", "write_markdown", "write_plot"]

MISSING = "-"


def _num(value, digits=1):
    return MISSING if value is None else "{:.{}f}".format(value, digits)


def _stage_name(stage):
    return "{} {:g} -> {:g}".format(stage["kind"], stage["from"], stage["to"])


def headline(report):
    """One line: the verdict, throughput, p95/p99 and errors, and the generator's CPU."""
    summary, generator, slo = report["summary"], report["generator"], report["slo"]
    latency = summary["latency_ms"] or {}
    verdict = {True: "SLO met", False: "SLO NOT met", None: "no SLO"}[slo["passed"]]
    return ("{}: {} requests, {:.1f} ok/s, p95 {} ms, p99 {} ms, errors {} ({}); load "
            "generator CPU {}% of a core (busiest second {}%)".format(
                verdict, summary["requests"], summary["rps"], _num(latency.get("p95_ms"), 2),
                _num(latency.get("p99_ms"), 2), summary["errors"],
                _percent(summary["error_rate"]), _num(generator["cpu_percent"], 0),
                _num(generator["cpu_percent_max"], 0)))


def _percent(rate):
    return MISSING if rate is None else "{:.3g}%".format(100.0 * rate)


def markdown(report):
    """The report as Markdown: verdict and criteria, totals, stages, generator notes."""
    settings, summary, generator = report["settings"], report["summary"], report["generator"]
    target, slo = report["target"], report["slo"]
    latency = summary["latency_ms"] or {}
    unit = "req/s" if settings["workload"] == "open" else "users"
    server = target.get("server") or {}
    lines = ["# edgeinfer loadtest", "",
             "Target: `{}` model `{}` ({} {}). Machine: {}.".format(
                 target["infer_url"], target["model"], server.get("name", "unknown server"),
                 server.get("version", ""), machine_line(report)),
             "Load: {} workload, stages `{}` ({}), {:g} s; {} bodies of {} bytes, inputs {} "
             "(pool {}), batch {}. Client: {} on {}.".format(
                 settings["workload"], settings["stages_text"], unit, settings["duration_s"],
                 settings["body"], settings["body_bytes"], settings["inputs"], settings["pool"],
                 settings["batch"], report["client"]["library"], report["client"]["event_loop"]),
             "", "**{}**".format(headline(report)), ""]
    if slo["criteria"]:
        lines += ["| criterion | goal | measured | result |", "| --- | --- | --- | --- |"]
        for row in slo["criteria"]:
            lines.append("| {} | {} | {} | {} |".format(
                row["key"], row["text"].split("=", 1)[1], _measured(row),
                "pass" if row["passed"] else "**FAIL**"))
        lines.append("")
    lines += ["| requests | ok | errors | error kinds | ok/s | p50 ms | p90 ms | p95 ms "
              "| p99 ms | max ms | generator CPU % (max) | machine CPU % |",
              "|" + " --- |" * 12,
              "| {} | {} | {} | {} | {:.1f} | {} | {} | {} | {} | {} | {} ({}) | {} |".format(
                  summary["requests"], summary["ok"], summary["errors"],
                  ", ".join("{} x{}".format(k, v) for k, v in sorted(
                      summary["errors_by_kind"].items())) or MISSING, summary["rps"],
                  _num(latency.get("p50_ms"), 2), _num(latency.get("p90_ms"), 2),
                  _num(latency.get("p95_ms"), 2), _num(latency.get("p99_ms"), 2),
                  _num(latency.get("max_ms"), 2), _num(generator["cpu_percent"], 0),
                  _num(generator["cpu_percent_max"], 0), _num(generator["machine_cpu_percent"],
                                                               0)), ""]
    for kind, text in sorted(summary.get("error_examples", {}).items()):
        lines.append("- first {} answer: {}".format(kind, text))
    if summary.get("error_examples"):
        lines.append("")
    lines += ["| stage | seconds | requests | ok/s | p50 ms | p95 ms | p99 ms | errors "
              "| generator CPU % |", "|" + " --- |" * 9]
    for stage in report["stages"]:
        lines.append("| {}. {} | {:g} | {} | {:.1f} | {} | {} | {} | {} | {} |".format(
            stage["index"], _stage_name(stage), stage["duration_s"], stage["requests"],
            stage["rps"], _num(stage["p50_ms"], 2), _num(stage["p95_ms"], 2),
            _num(stage["p99_ms"], 2), stage["errors"], _num(stage["generator_cpu_percent"], 0)))
    opened = summary.get("open")
    if opened:
        lag = opened["lag_ms"] or {}
        lines += ["", "Open workload: {} arrivals scheduled, {} sent, {} dropped (at "
                  "--max-in-flight); send lag p50 {} ms, p99 {} ms.".format(
                      opened["scheduled"], opened["sent"], opened["dropped"],
                      _num(lag.get("p50"), 2), _num(lag.get("p99"), 2))]
    if generator["notes"]:
        lines += [""] + ["- {}".format(note) for note in generator["notes"]]
    return "\n".join(lines) + "\n"


def _measured(row):
    if row["value"] is None:
        return "not measured"
    if row["key"] == "errors":
        return _percent(row["value"])
    if row["key"] == "rps":
        return "{:.1f} req/s".format(row["value"])
    return "{:.2f} ms".format(row["value"])


def write_markdown(report, path):
    """Write :func:`markdown` to ``path``."""
    _atomic_write(path, markdown(report))


def write_plot(report, path):
    """Write a PNG timeline: throughput and load level, latency with the SLO, CPU use.

    Raises:
        MissingDependency: matplotlib is not installed (``pip install edgeinfer[report]``).
    """
    pyplot = load_pyplot("load-test plots (--plot)")
    rows = report["timeline"]
    t = [r["t"] + 0.5 * r["span_s"] for r in rows]
    figure, (top, middle, bottom) = pyplot.subplots(3, 1, figsize=(10, 9), sharex=True)
    top.plot(t, [r["rps"] for r in rows], marker=".", label="ok / s")
    top.plot(t, [r["errors"] / r["span_s"] if r["span_s"] else None for r in rows],
             marker=".", color="tab:red", label="errors / s")
    top.set_ylabel("answers per second")
    level = top.twinx()
    level.plot(t, [r["level"] for r in rows], color="tab:gray", linestyle="--",
               label="users" if report["settings"]["workload"] == "closed" else "offered req/s")
    level.set_ylabel("users" if report["settings"]["workload"] == "closed"
                     else "offered requests/s")
    handles = top.get_legend_handles_labels()
    more = level.get_legend_handles_labels()
    top.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper left")
    top.set_title("Throughput and load ({} workload)".format(report["settings"]["workload"]))
    top.grid(alpha=0.3)
    for key, style in (("p50_ms", "-"), ("p95_ms", "-"), ("p99_ms", "-")):
        middle.plot(t, [r[key] for r in rows], linestyle=style, marker=".", label=key[:3])
    for row in report["slo"]["criteria"]:
        if row["unit"] == "ms":
            middle.axhline(row["limit"], color="tab:red", linestyle=":", linewidth=1)
            middle.annotate("SLO {}".format(row["text"]), (0.99, row["limit"]), fontsize=7,
                            xycoords=("axes fraction", "data"), color="tab:red", va="bottom",
                            ha="right")
    middle.set_yscale("log")
    middle.set_ylabel("latency (ms, log)")
    middle.legend(fontsize=8, loc="upper left")
    middle.grid(alpha=0.3)
    bottom.plot(t, [r["generator_cpu_percent"] for r in rows], marker=".",
                label="load generator (100 = one core)")
    bottom.plot(t, [r["machine_cpu_percent"] for r in rows], marker=".",
                label="whole machine ({} cores)".format(report["generator"]["cores"]))
    bottom.set_ylabel("CPU %")
    bottom.set_xlabel("seconds since start")
    bottom.legend(fontsize=8, loc="upper left")
    bottom.grid(alpha=0.3)
    figure.suptitle("edgeinfer loadtest {}: {}".format(report["target"]["model"],
                                                        headline(report)), fontsize=8)
    save_figure(pyplot, figure, path)
