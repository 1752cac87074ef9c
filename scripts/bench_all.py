#!/usr/bin/env python3
"""Regenerate docs/BENCHMARKS.md on this machine in one command (issue 9, requirement 5).

Steps:

1. Build the trained demo models the benchmarks read, where missing (or all of
   them with ``--rebuild-models``): ``scripts/build_demo_model.py`` (the digits
   CNN and its calibration/evaluation images), ``build_mobilenet_digits.py``,
   ``build_transformer_digits.py``.  The random-weight ResNet-50 and MobileNetV2
   are built by each benchmark itself (``build_bench_models.build``).
2. Run every ``scripts/bench_*.py`` section this machine can run, one after the
   other, each holding the benchmark lock (``--lock``) so no other benchmark runs
   beside it.  A section whose parts are missing here (OpenVINO, NNCF, TensorRT,
   wrk, an MLServer command, ...) is skipped and the reason written down; one
   that fails is reported with the last line of its log, and the others still run.
3. ``edgeinfer bench`` of the demo bundles: FP32 and INT8 (ONNX Runtime), INT8
   (OpenVINO) and FP16 (TensorRT) where those backends are here, with its PNG.

Without ``--only``/``--skip`` the report is written from scratch: a new file
that replaces ``--md`` at the end, headed by the command and the machine, with a
"Not measured on this machine" section listing what was skipped and why.  With
them, only the sections run are replaced in the existing file and the others kept
(``--fresh`` writes a new file anyway).

Benchmark scripts not in :data:`SECTIONS` are listed as skipped ("not in
bench_all's list"), so a new one is noticed rather than silently left out.

Usage::

    python scripts/bench_all.py                          # everything, docs/BENCHMARKS.md
    python scripts/bench_all.py --only edgeinfer-bench cache --md /tmp/b.md
    python scripts/bench_all.py --skip serve equalization --mlserver ~/mlserver/bin/mlserver

Do not wrap it in ``flock`` on the same lock file: it takes the lock itself per
section (``--lock none`` turns that off).
"""

import argparse
import collections
import datetime
import fcntl
import glob
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from bench_core import write_section  # noqa: E402

LOCK = "/tmp/edgeinfer-bench.lock"
EDGEINFER = [sys.executable, "-m", "edgeinfer"]  # shown as `edgeinfer` in the report
BENCH_TITLE = "edgeinfer bench (issue 9)"
SKIPPED_TITLE = "Not measured on this machine"

# A benchmark section: its name (for --only/--skip), the script, extra arguments, what it
# needs (see REQUIREMENTS), and whether the script writes a whole file instead of its section.
Section = collections.namedtuple("Section", "name script args needs whole_file")

SECTIONS = (
    Section("core", "bench_core.py", [], ["sklearn"], False),
    Section("ort-int8-variants", "bench_ort_int8_variants.py",
            ["--cases", "resnet50:1", "mobilenetv2:1", "resnet50:8", "--iters", "40"], [], True),
    Section("openvino", "bench_openvino.py", [], ["openvino", "nncf"], False),
    Section("openvino-runtime", "bench_openvino_runtime.py", [], ["openvino"], False),
    Section("equalization", "bench_equalization.py", [], ["openvino", "nncf"], False),
    Section("budget", "bench_budget.py", [], [], False),
    Section("accuracy-control", "bench_accuracy_control.py", [], [], True),
    Section("cache", "bench_cache.py", [], ["xxhash"], False),
    Section("shards", "bench_shards.py", [], [], False),
    Section("serve", "bench_serve.py", [], ["wrk", "mlserver"], False),
    Section("loadtest", "bench_loadtest.py", ["--users", "2,8"], ["wrk", "aiohttp"], False),
    Section("qat", "qat_example.py", [], ["torch"], False),
    Section("edgeinfer-bench", None, [], ["matplotlib"], False),
)

# Trained models the sections read: (script, the file it writes).
MODEL_BUILDS = (
    ("build_demo_model.py", os.path.join("models", "digits_cnn.onnx")),
    ("build_mobilenet_digits.py", os.path.join("models", "mobilenet_digits.onnx")),
    ("build_transformer_digits.py", os.path.join("models", "transformer_digits.onnx")),
)


def _module(name, extra):
    def check(args):
        if importlib.util.find_spec(name) is None:
            return "the Python package {} is not installed (pip install {})".format(name, extra)
        return None
    return check


def _binary(name, package):
    def check(args):
        if shutil.which(name) is None:
            return "{} is not on PATH (apt-get install {})".format(name, package)
        return None
    return check


def _mlserver(args):
    if not args.mlserver or shutil.which(args.mlserver) is None:
        return ("no MLServer command (give --mlserver PATH: mlserver installed in its own "
                "virtualenv)")
    return None


REQUIREMENTS = {
    "openvino": _module("openvino", "edgeinfer[openvino]"),
    "nncf": _module("nncf", "edgeinfer[convert]"),
    "sklearn": _module("sklearn", "scikit-learn"),
    "xxhash": _module("xxhash", "xxhash"),
    "matplotlib": _module("matplotlib", "edgeinfer[report]"),
    "wrk": _binary("wrk", "wrk"),
    "aiohttp": _module("aiohttp", "edgeinfer[loadtest]"),
    "torch": _module("torch", "edgeinfer[qat]"),
    "mlserver": _mlserver,
}


def select(sections, only=None, skip=None):
    """The sections to run, in the suite's order, and those left out with why.

    Args:
        sections: the :data:`SECTIONS`.
        only: names to run (default None: all).
        skip: names not to run (default None: none).

    Returns:
        (chosen sections, list of (name, reason) left out).

    Raises:
        SystemExit: a name that is no section (with the list of names).
    """
    names = [s.name for s in sections]
    unknown = sorted(set(only or ()).union(skip or ()) - set(names))
    if unknown:
        raise SystemExit("bench_all: unknown section(s) {}; the sections are: {}".format(
            ", ".join(unknown), ", ".join(names)))
    chosen, left = [], []
    for section in sections:
        if only and section.name not in only:
            left.append((section.name, "not in --only"))
        elif skip and section.name in skip:
            left.append((section.name, "--skip"))
        else:
            chosen.append(section)
    return chosen, left


def missing(section, args, requirements=REQUIREMENTS):
    """Why this machine cannot run the section (one line), or None when it can."""
    reasons = [r for r in (requirements[need](args) for need in section.needs) if r]
    return "; ".join(reasons) or None


def unregistered(folder=HERE, sections=SECTIONS):
    """Benchmark scripts in ``folder`` that no section runs."""
    known = set(s.script for s in sections if s.script) | {"bench_all.py", "bench_core.py"}
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "bench_*.py"))
                  if os.path.basename(p) not in known)


class Lock(object):
    """The benchmark lock (``flock`` on a file), or nothing for ``--lock none``."""

    def __init__(self, path):
        self.path = None if path == "none" else path
        self.handle = None

    def __enter__(self):
        if self.path:
            self.handle = open(self.path, "a")
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()  # closing releases the lock
            self.handle = None


def run_logged(command, log_path, lock):
    """Run ``command`` under the lock, its output to the console and ``log_path``.

    Returns:
        (exit status, last non-empty line of its output).
    """
    print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
    last = ""
    with Lock(lock), open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, universal_newlines=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            if line.strip():
                last = line.strip()
        status = proc.wait()
    return status, last


def build_models(args, log_dir):
    for script, output in MODEL_BUILDS:
        if os.path.exists(os.path.join(ROOT, output)) and not args.rebuild_models:
            print("model {} is there (--rebuild-models to build it again)".format(output))
            continue
        status, last = run_logged([sys.executable, os.path.join(HERE, script)],
                                  os.path.join(log_dir, script + ".log"), "none")
        if status != 0:
            raise SystemExit("bench_all: {} failed ({}); see {}".format(
                script, last, os.path.join(log_dir, script + ".log")))


def run_section(section, args, md, log_dir):
    """Run one script section; returns None when it wrote its section, else why not."""
    log = os.path.join(log_dir, section.name + ".log")
    script = os.path.join(HERE, section.script)
    extra = list(section.args)
    if section.name == "serve":
        extra += ["--mlserver", args.mlserver]
    if not section.whole_file:
        status, last = run_logged([sys.executable, script, "--md", md] + extra, log, args.lock)
        return None if status == 0 else "failed (exit {}: {}); log {}".format(status, last, log)
    # These scripts write a file of their own holding one "## title" section.
    own = os.path.join(args.out, section.name + ".md")
    status, last = run_logged([sys.executable, script, "--md", own] + extra, log, args.lock)
    if status != 0:
        return "failed (exit {}: {}); log {}".format(status, last, log)
    with open(own) as handle:
        text = handle.read()
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    if not first.startswith("## "):
        return "{} wrote no '## title' section to {}".format(section.script, own)
    write_section(md, first[3:].strip(), text)
    return None


def shown(path):
    """A path as the report shows it: from the repository root when inside it."""
    path = os.path.abspath(path)
    inside = path.startswith(ROOT + os.sep)
    return os.path.relpath(path, ROOT) if inside else path


def demo_bundles(out, log_dir):
    """Convert the demo model for each backend here: [(path, how it was made)], skipped."""
    from edgeinfer.runtime.backends import get_backend
    folder = os.path.join(out, "bundles")
    os.makedirs(folder, exist_ok=True)
    demo = os.path.join("models", "digits_cnn.onnx")
    data = ["-c", os.path.join("calibration", "digits"), "-e",
            os.path.join("calibration", "digits-eval")]
    jetson = _jetson_profile()
    wanted = [("digits-fp32", "onnxruntime", ["-p", "fp32"]),
              ("digits-int8", "onnxruntime", ["-p", "int8", "-m", "static"]),
              ("digits-int8-openvino", "openvino", ["-t", "intel-cpu", "-p", "int8"]),
              ("digits-fp16-tensorrt", "tensorrt", ["-t", jetson or "jetson", "-p", "fp16"])]
    made, skipped = [], []
    for label, backend, options in wanted:
        ok, why = get_backend(backend).available()
        if ok and backend == "tensorrt" and jetson is None:
            ok, why = False, "is here, but this is no Jetson (no device profile to build for)"
        if not ok:
            skipped.append(("edgeinfer-bench: {}".format(label), "{}: {}".format(backend, why)))
            continue
        path = os.path.join(folder, label + ".eib")
        command = ["edgeinfer", "-q", "convert", demo] + options + data + [
            "-o", shown(path), "--overwrite", "--no-speed-check"]
        status, last = run_logged(EDGEINFER + command[1:], os.path.join(log_dir, label + ".log"),
                                  "none")
        if status != 0:
            skipped.append(("edgeinfer-bench: {}".format(label),
                            "convert failed (exit {}: {})".format(status, last)))
            continue
        made.append((path, " ".join(command)))
    return made, skipped


def _jetson_profile():
    from edgeinfer.jetson import read_jetson
    info = read_jetson()
    return info.profile if info else None


def edgeinfer_bench(args, md, log_dir):
    """Section ``edgeinfer bench (issue 9)``; returns (failure or None, skipped parts)."""
    made, skipped = demo_bundles(args.out, log_dir)
    if not made:
        return "no demo bundle could be made", skipped
    folder = os.path.dirname(os.path.abspath(md))
    plot = os.path.join(folder, "edgeinfer-bench.png")
    table = os.path.join(args.out, "edgeinfer-bench.md")
    report = os.path.join(args.out, "edgeinfer-bench.json")
    options = ["--runs", str(args.bench_runs), "--batch", "1,8", "--concurrency", "1,2"]
    command = ["edgeinfer", "-q", "bench"] + [shown(p) for p, _ in made] + options + [
        "--json", shown(report), "--md", shown(table), "--plot", shown(plot)]
    status, last = run_logged(EDGEINFER + command[1:],
                              os.path.join(log_dir, "edgeinfer-bench.log"), args.lock)
    if status != 0:
        return "failed (exit {}: {})".format(status, last), skipped
    with open(table) as handle:
        body = handle.read().split("\n", 1)[1].strip()  # its "# edgeinfer bench" title goes
    text = "\n".join(
        ["## " + BENCH_TITLE, "",
         "Produced by `python scripts/bench_all.py {}`, which made the bundles with".format(
             " ".join(args.argv)), ""]
        + ["    {}".format(how) for _, how in made]
        + ["", "and measured them with", "", "    " + " ".join(command), "",
           "All bundles in one run, latency interleaved (A B C A B C ...); ratios are against "
           "the first. `load cold` had an empty OpenVINO/TensorRT model cache; the build table "
           "splits out the compile. Plot: [{0}]({0}).".format(os.path.basename(plot))]
        + ["Not included: {} ({}).".format(name.split(": ", 1)[1], why) for name, why in skipped]
        + ["", body])
    write_section(md, BENCH_TITLE, text)
    return None, skipped


def header(args):
    from edgeinfer.bench.core import machine_facts
    from edgeinfer.bench.reports import machine_line
    return ("# edgeinfer benchmarks\n\nRegenerated from scratch by `python scripts/bench_all.py "
            "{}` on {}, {}. Each section names the command that produced it.\n".format(
                " ".join(args.argv), machine_line({"machine": machine_facts()}),
                datetime.date.today().isoformat()))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [s.name for s in SECTIONS]
    parser.add_argument("--md", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"),
                        help="the report (default docs/BENCHMARKS.md)")
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "bench_all"),
                        help="folder for logs, bundles and JSON (default build/bench_all)")
    parser.add_argument("--only", nargs="+", metavar="SECTION", choices=names,
                        help="run only these sections: " + ", ".join(names))
    parser.add_argument("--skip", nargs="+", metavar="SECTION", choices=names,
                        help="leave these sections out")
    parser.add_argument("--mlserver", default=shutil.which("mlserver"),
                        help="the mlserver command, in its own virtualenv (section serve)")
    parser.add_argument("--bench-runs", type=int, default=200,
                        help="edgeinfer bench --runs (default 200)")
    parser.add_argument("--fresh", action="store_true",
                        help="with --only/--skip: still write a new file (default: replace "
                             "only the sections run)")
    parser.add_argument("--rebuild-models", action="store_true",
                        help="build the trained demo models again even where present")
    parser.add_argument("--lock", default=LOCK,
                        help="lock file held while each section runs ('none': no lock)")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    args.out = os.path.abspath(args.out)
    args.md = os.path.abspath(args.md)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    log_dir = os.path.join(args.out, "logs")
    os.makedirs(log_dir, exist_ok=True)
    chosen, _ = select(SECTIONS, args.only, args.skip)
    fresh = args.fresh or (not args.only and not args.skip)
    build_models(args, log_dir)
    # From scratch: a new file beside the report, renamed over it at the end.
    md = args.md
    if fresh:
        os.makedirs(os.path.dirname(md), exist_ok=True)
        handle, md = tempfile.mkstemp(prefix=".bench_all-", suffix=".md",
                                      dir=os.path.dirname(args.md))
        with os.fdopen(handle, "w") as out:
            out.write(header(args))
    skipped, failed, ran = [], [], 0
    for section in chosen:
        why = missing(section, args)
        if why:
            print("skip {}: {}".format(section.name, why), flush=True)
            skipped.append((section.name, why))
            continue
        ran += 1
        if section.script is None:
            failure, parts = edgeinfer_bench(args, md, log_dir)
            skipped.extend(parts)
        else:
            failure = run_section(section, args, md, log_dir)
        if failure:
            print("FAILED {}: {}".format(section.name, failure), flush=True)
            failed.append((section.name, failure))
    if fresh:
        skipped += [(script, "not in bench_all's list (add it to SECTIONS in "
                             "scripts/bench_all.py)") for script in unregistered()]
        if skipped or failed:
            lines = ["## " + SKIPPED_TITLE, ""]
            lines += ["- {}: skipped, {}".format(name, why) for name, why in skipped]
            lines += ["- {}: {}".format(name, why) for name, why in failed]
            write_section(md, SKIPPED_TITLE, "\n".join(lines))
        os.replace(md, args.md)
    print("bench_all: {} section(s) run ({} failed), {} left out, {:.0f} s; report {}".format(
        ran, len(failed), len(skipped), time.time() - started, args.md))
    for name, why in skipped + failed:
        print("  {}: {}".format(name, why))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
