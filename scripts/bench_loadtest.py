#!/usr/bin/env python3
"""Load-test benchmark (issue 9): ``edgeinfer loadtest`` cross-checked against wrk.

One ``edgeinfer serve`` (the issue-8 512x512 MatMul+ReLU model, FP32, ONNX
Runtime) is put under the same closed load by two generators, alternating
(wrk, loadtest, wrk, loadtest, ...), on this machine over loopback:

* wrk (C, ``-t2``, N keep-alive connections posting one fixed JSON body, the
  Lua script and parser of scripts/bench_serve.py);
* ``edgeinfer loadtest --users N --inputs repeat`` with the same input, and
  with ``--inputs unique`` (its default: every body different).

Beside each result: the generator's CPU (wrk: its rusage; loadtest: its own
in-run figure) and the server's (from /proc), since on a 2-core machine the
generator takes cores the server would use.  Then the issue's example run
(``--stages 10s:8,30s:32,10s:0 --slo p95=50ms,errors=0.1%``) against the demo
digits model, whose summary is quoted.

Usage (one benchmark at a time on a shared machine)::

    flock /tmp/edgeinfer-bench.lock python scripts/bench_loadtest.py --md docs/BENCHMARKS.md
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import edgeinfer  # noqa: E402
from bench_core import DEMO, md_table, write_section  # noqa: E402
from bench_serve import (SPINNING, WRK_SCRIPT, matmul_bundle, start_edgeinfer, stop,  # noqa: E402
                         wrk, write_body)

TITLE = "Load test (issue 9)"


def children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid):
    """utime + stime of a running process, from /proc/PID/stat."""
    with open("/proc/{}/stat".format(pid)) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


def run_wrk(server, url, body, users, seconds, script):
    cpu, served = children_cpu_s(), process_cpu_s(server.pid)
    result = wrk(url, body, users, seconds, script)
    result["generator_cpu"] = 100.0 * (children_cpu_s() - cpu) / seconds
    result["server_cpu"] = 100.0 * (process_cpu_s(server.pid) - served) / seconds
    result["errors"] = result["non2xx"]
    return result


def run_loadtest(server, base, model, users, seconds, work, *options):
    out = os.path.join(work, "load.json")
    proc = subprocess.Popen([sys.executable, "-m", "edgeinfer", "loadtest", base, "--model",
                             model, "--duration", "{}s".format(seconds), "--users", str(users),
                             "--json", out] + list(options), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, universal_newlines=True)
    # The server's CPU while the load runs: between loadtest's first and last progress
    # lines (one a second), so its start-up and the check request are left out.
    marks, log = [], []
    for line in proc.stderr:
        log.append(line)
        if line.startswith("loadtest "):
            marks.append((time.perf_counter(), process_cpu_s(server.pid)))
    if proc.wait(timeout=seconds + 120) != 0:
        raise RuntimeError("loadtest failed: " + "".join(log))
    with open(out) as handle:
        report = json.load(handle)
    summary, latency = report["summary"], report["summary"]["latency_ms"]
    (t0, cpu0), (t1, cpu1) = marks[0], marks[-1]
    return {"rps": summary["completed_per_s"], "p50_ms": latency["p50_ms"],
            "p99_ms": latency["p99_ms"], "errors": summary["errors"],
            "generator_cpu": report["generator"]["cpu_percent"],
            "server_cpu": 100.0 * (cpu1 - cpu0) / (t1 - t0),
            "body_bytes": report["settings"]["body_bytes"]}


def median_of(runs):
    out = {}
    for key in ("rps", "p50_ms", "p99_ms", "generator_cpu", "server_cpu"):
        out[key] = statistics.median(r[key] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["each"] = " / ".join("{:.0f}".format(r["rps"]) for r in runs)
    return out


def row(label, users, result, base_rps):
    return (label, users, "{:.0f}".format(result["rps"]), result["each"],
            "{:.2f}".format(result["p50_ms"]), "{:.2f}".format(result["p99_ms"]),
            "{:.0f}%".format(result["generator_cpu"]), "{:.0f}%".format(result["server_cpu"]),
            result["errors"], "{:.2f}x".format(result["rps"] / base_rps))


def cross_check(args, work, script):
    bundle, x = matmul_bundle(work)
    # The same input for both: wrk's body file, and loadtest's one .npy sample.
    body = write_body(work, "matmul.json", {"inputs": [
        {"name": "x", "shape": [1, 512], "datatype": "FP32", "data": x.ravel().tolist()}]})
    data = os.path.join(work, "matmul-data")
    os.makedirs(data, exist_ok=True)
    np.save(os.path.join(data, "x.npy"), x[0])
    rows = [("server", "generator", "users (connections)", "req/s (median)", "each round",
             "p50 ms", "p99 ms", "generator CPU", "server CPU", "errors", "vs wrk")]
    seen = {}
    for setting, options in (("defaults", ()), ("`{}`".format(" ".join(SPINNING)), SPINNING)):
        proc, url = start_edgeinfer(bundle, *options)
        base = url.split("/v2/")[0]
        try:
            run_wrk(proc, url, body, 8, 2, script)   # warm up the server
            for users in args.users:
                wrk_runs, same, unique = [], [], []
                for _ in range(args.rounds):
                    wrk_runs.append(run_wrk(proc, url, body, users, args.seconds, script))
                    same.append(run_loadtest(proc, base, "matmul", users, args.seconds, work,
                                             "--data", data, "--inputs", "repeat"))
                    unique.append(run_loadtest(proc, base, "matmul", users, args.seconds, work))
                    print(setting, "users", users, "wrk", wrk_runs[-1]["rps"], "loadtest",
                          same[-1]["rps"], "unique", unique[-1]["rps"], flush=True)
                wrk_m = median_of(wrk_runs)
                for label, runs in (("wrk -t2 (same JSON body)", wrk_runs),
                                    ("edgeinfer loadtest --inputs repeat (same input)", same),
                                    ("edgeinfer loadtest (unique bodies, default)", unique)):
                    result = median_of(runs)
                    rows.append((setting,) + row(label, users, result, wrk_m["rps"]))
                    tool = "wrk" if runs is wrk_runs else "loadtest"
                    seen.setdefault((tool, setting), []).append(
                        (result["rps"] / wrk_m["rps"], result["generator_cpu"]))
        finally:
            stop(proc)
    with open(body[0], "rb") as handle:
        sizes = (len(handle.read()), same[-1]["body_bytes"])
    return md_table(rows), sizes, verdict(seen)


def verdict(seen):
    """One sentence: how close loadtest came to wrk, at what CPU, per server setting."""
    def span(values, fmt):
        low, high = min(values), max(values)
        return fmt.format(low) if fmt.format(low) == fmt.format(high) else (
            fmt.format(low) + "-" + fmt.format(high))
    parts = ["with the server at {} it reached {} of wrk's req/s".format(
        setting, span([r for r, _ in values], "{:.2f}x"))
        for (tool, setting), values in sorted(seen.items()) if tool == "loadtest"]
    cpu = [c for (tool, _), values in seen.items() if tool == "loadtest" for _, c in values]
    wrk_cpu = [c for (tool, _), values in seen.items() if tool == "wrk" for _, c in values]
    return ("edgeinfer loadtest (one Python event loop, aiohttp) used {}% of a core where wrk "
            "used {}%; {}. On this 2-core machine the generator takes CPU the server needs, "
            "so the server's peak is wrk's figure; `edgeinfer loadtest` answers whether a given load meets an SLO, and "
            "prints its own CPU so a busy generator is seen, not mistaken for a slow "
            "server.".format(span(cpu, "{:.0f}"), span(wrk_cpu, "{:.0f}"), "; ".join(parts)))


def example_run(args, work):
    """The issue's command against the demo digits model; its Markdown summary."""
    bundle = os.path.join(work, "digits.eib")
    edgeinfer.convert(DEMO, precision="fp32", output=bundle, overwrite=True, name="digits",
                      measure_speed=False)
    proc, url = start_edgeinfer(bundle)
    out = os.path.join(work, "example")
    command = ["loadtest", url.split("/v2/")[0], "--model", "digits", "--stages", args.stages,
               "--slo", "p95=50ms,errors=0.1%", "--json", os.path.join(out, "load.json"),
               "--md", os.path.join(out, "load.md"), "--plot", os.path.join(out, "load.png")]
    try:
        done = subprocess.run([sys.executable, "-m", "edgeinfer", "-q"] + command,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=3600)
    finally:
        stop(proc)
    print(done.stdout, done.stderr, flush=True)
    summary = done.stdout.split("\n", 2)[2].strip()   # drop the "# edgeinfer loadtest" title
    return "edgeinfer " + " ".join(command[:7]) + " ...", done.returncode, summary, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--md", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    parser.add_argument("--seconds", type=int, default=10, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting")
    parser.add_argument("--users", type=lambda t: [int(v) for v in t.split(",")], default=[8],
                        help="closed-load levels, e.g. 2,8")
    parser.add_argument("--stages", default="10s:8,30s:32,10s:0",
                        help="stages of the example run")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "build", "bench_loadtest"))
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    os.makedirs(args.workdir, exist_ok=True)
    script = os.path.join(args.workdir, "post.lua")
    with open(script, "w") as handle:
        handle.write(WRK_SCRIPT)
    table, sizes, finding = cross_check(args, args.workdir, script)
    example, code, summary, out = example_run(args, args.workdir)
    import aiohttp
    import onnxruntime
    command = "python scripts/bench_loadtest.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        "## " + TITLE, "",
        "Produced by `flock /tmp/edgeinfer-bench.lock {}` on {} ({} cores), Python {}, "
        "onnxruntime {}, aiohttp {}, {}.".format(
            command.strip(), edgeinfer.profiles.cpu_features()["model"], os.cpu_count(),
            platform.python_version(), onnxruntime.__version__, aiohttp.__version__,
            time.strftime("%Y-%m-%d")),
        "",
        "### Cross-check against wrk: the same closed load on the 512x512 MatMul+ReLU server",
        "",
        "One `edgeinfer serve` (FP32) at its defaults, then one with `{}` (one run at a "
        "time on every core, ONNX Runtime's threads spin-waiting: the defaults before issue "
        "8's tuning), {} s per run, the generators alternating ({} rounds; medians, each "
        "round beside). wrk posts one fixed JSON body ({} bytes); "
        "`--inputs repeat` sends the same input ({} bytes, compact JSON); the default "
        "`--inputs unique` writes a run and request number into each body. Generator CPU: "
        "wrk's rusage, loadtest's own in-run figure (100% = one core); server CPU from "
        "/proc over the run. Client and server share this machine's {} cores.".format(
            " ".join(SPINNING), args.seconds, args.rounds, sizes[0], sizes[1], os.cpu_count()),
        "",
        table, "", finding, "",
        "### The issue's example: `{}`".format(example), "",
        "Against the demo digits model (FP32); exit status {} ({}). Reports: {}/load.json, "
        "load.md, load.png.".format(code, "SLO met" if code == 0 else "SLO not met",
                                    os.path.relpath(out, ROOT)),
        "", summary, ""])
    print(text)
    write_section(args.md, TITLE, text)


if __name__ == "__main__":
    main()
