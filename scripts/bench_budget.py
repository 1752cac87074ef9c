#!/usr/bin/env python3
"""Accuracy-budget search inside ``edgeinfer convert`` (issue 4), timed end to end.

1. The benchmark ResNet-50 (``build_bench_models.py``, random seeded weights)
   with 300 calibration and 300 evaluation images (crops of scikit-learn's
   sample photos, different seeds): a plain INT8 conversion, then the same with
   a cosine budget halfway between the plain result and 1 (so the search must
   keep ops in FP32).  Reports both wall times, the search's steps and kept ops.
   The bar of the issue: the budgeted conversion finishes in under 15 minutes
   on 2 cores.
2. The constructed case of ``tests/test_accuracy_budget.py`` (input channel
   with 1000x outliers) on both backends: plain PTQ vs the budget.
3. The trained demo model with the S8S8 variant (U8S8 saturation on AVX2
   without VNNI) and a 0.5-point top-1 budget.

Usage::

    python scripts/bench_budget.py --md docs/BENCHMARKS.md [--skip-resnet]
"""

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import onnx  # noqa: E402

import edgeinfer  # noqa: E402
from bench_core import md_table, natural_images, write_section  # noqa: E402
from build_bench_models import build  # noqa: E402
from edgeinfer.profiles import cpu_features  # noqa: E402
from tests.test_accuracy_budget import _samples, input_outlier_model  # noqa: E402

TITLE = "Accuracy budget search (issue 4)"
DEMO = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "calibration", "digits")
EVAL = os.path.join(ROOT, "calibration", "digits-eval")


def _timed(**kwargs):
    start = time.perf_counter()
    bundle = edgeinfer.convert(overwrite=True, **kwargs)
    return bundle, time.perf_counter() - start


def _kept(control):
    groups = control["groups"]
    if not groups:
        return "none"
    shown = ", ".join("`{}`".format(g) for g in groups[:6])
    return shown + (" and {} more".format(len(groups) - 6) if len(groups) > 6 else "")


def _steps(control):
    return "; ".join("{} FP32: {:.5f}{}".format(s["groups"], s["achieved"],
                                                " ok" if s["ok"] else "")
                     for s in control["steps"])


def section_resnet(workdir):
    source = os.path.join(workdir, "resnet50.onnx")
    if not os.path.exists(source):
        onnx.save(build("resnet50"), source)
    calib = natural_images(os.path.join(workdir, "calib"), 300, seed=0)
    evald = natural_images(os.path.join(workdir, "eval"), 300, seed=1)
    common = dict(model=source, calibration=calib, eval=evald, calibration_size=300,
                  measure_speed=True)
    plain, plain_s = _timed(output=os.path.join(workdir, "plain.eib"), **common)
    cos = plain.manifest["validation"]["outputs"]
    cos = min(m["cosine_mean"] for m in cos.values())
    budget = round(1.0 - (1.0 - cos) / 2.0, 6)
    print("plain INT8: cosine {:.6f} in {:.0f} s; budget {}".format(cos, plain_s, budget),
          flush=True)
    chosen, search_s = _timed(output=os.path.join(workdir, "budget.eib"), min_cosine=budget,
                              **common)
    control = chosen.manifest["accuracy_control"]
    sens = control["sensitivity"]
    latency = control.get("latency") or {}
    rows = [("conversion", "wall time", "cosine vs FP32 (eval)", "groups kept FP32",
             "kept", "search steps (groups FP32: cosine)", "latency vs all-INT8")]
    rows.append(("plain INT8 (static, default variant)", "{:.0f} s".format(plain_s),
                 "{:.5f}".format(cos), "0", "-", "-", "-"))
    rows.append(("`--min-cosine {}`".format(budget), "**{:.0f} s** ({:.1f} min)".format(
        search_s, search_s / 60.0), "{:.5f}".format(control["validated"]["achieved"]),
        "{} of {}".format(len(control["groups"]), control["candidates"]), _kept(control),
        _steps(control), "{:.2f} ms vs {:.2f} ms".format(
            latency["chosen_ms"], latency["all_int8_ms"]) if latency else "-"))
    text = ("### ResNet-50: budgeted conversion time (300 calibration + 300 eval images)\n\n"
            "`edgeinfer.convert(resnet50.onnx, calibration=300 crops, eval=300 other crops, "
            "min_cosine=...)` timed end to end (load, prepare, calibrate once, FP32 over the "
            "eval set once, sensitivity pass of {} quantize-alone builds on {} samples in "
            "{:.0f} s, search, validation, speed checks, bundle write).\n\n{}\n\n"
            "Bar: under 15 minutes on 2 cores: **{}** ({:.1f} min).\n".format(
                sens["builds"], sens["samples"], sens["seconds"], md_table(rows),
                "met" if search_s < 900 else "NOT met", search_s / 60.0))
    return text, search_s


def section_constructed(workdir):
    path = os.path.join(workdir, "outlier.onnx")
    onnx.save(input_outlier_model(), path)
    calib, evald = os.path.join(workdir, "calib.npz"), os.path.join(workdir, "eval.npz")
    np.savez(calib, x=_samples(64, 1))
    np.savez(evald, x=_samples(96, 2))
    rows = [("backend", "plain INT8 cosine", "budget", "achieved (shipped)", "kept in FP32",
             "search steps", "time")]
    for target in ("cpu", "intel-cpu"):
        common = dict(model=path, target=target, calibration=calib, eval=evald,
                      measure_speed=False)
        plain, _ = _timed(output=os.path.join(workdir, target + "-plain.eib"), **common)
        cos = plain.manifest["validation"]["outputs"]["y"]["cosine_mean"]
        chosen, seconds = _timed(output=os.path.join(workdir, target + ".eib"),
                                 min_cosine=0.99, **common)
        control = chosen.manifest["accuracy_control"]
        rows.append((chosen.manifest["target"]["backend"], "{:.4f}".format(cos), "cosine >= 0.99",
                     "{:.5f}".format(control["validated"]["achieved"]),
                     ", ".join("`{}`".format(op["name"]) for op in control["kept"]),
                     _steps(control), "{:.1f} s".format(seconds)))
    return ("### Constructed case: one input channel with 1000x outliers\n\n"
            "`tests/test_accuracy_budget.py`'s model (outlier_convnet without its conv2 "
            "outlier; input channel 0 is 1000x the others and conv1's weights for it are "
            "1000x smaller): plain PTQ gives the input one per-tensor scale that rounds "
            "channels 1-2 to zero. 64 calibration and 96 eval samples.\n\n" + md_table(rows)
            + "\n")


def section_demo(workdir):
    rows = [("variant", "plain top-1 drop", "budget", "achieved drop", "kept in FP32",
             "search steps", "latency vs all-INT8")]
    chosen, _ = _timed(model=DEMO, calibration=CALIB, eval=EVAL, int8_variant="s8s8",
                       max_accuracy_drop=0.5, output=os.path.join(workdir, "demo.eib"))
    control = chosen.manifest["accuracy_control"]
    latency = control.get("latency") or {}
    rows.append(("s8s8", "{:.1f} points".format(control["steps"][0]["achieved"]),
                 "top-1 drop <= 0.5", "{:.1f} points".format(control["validated"]["achieved"]),
                 ", ".join("`{}`".format(op["name"]) for op in control["kept"]),
                 _steps(control), "{:.3f} ms vs {:.3f} ms".format(
                     latency["chosen_ms"], latency["all_int8_ms"]) if latency else "-"))
    return ("### Demo model, S8S8 on a CPU without VNNI (500 labelled eval images)\n\n"
            + md_table(rows) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--md", help="write the section into this Markdown file")
    parser.add_argument("--workdir", help="keep models and data here (default: temporary)")
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-budget-")
    os.makedirs(workdir, exist_ok=True)
    features = cpu_features()
    load = os.getloadavg()[0]
    os.makedirs(os.path.join(workdir, "outlier"), exist_ok=True)
    parts = [section_constructed(os.path.join(workdir, "outlier")), section_demo(workdir)]
    if not args.skip_resnet:
        parts.append(section_resnet(workdir)[0])
    command = "python scripts/bench_budget.py --md docs/BENCHMARKS.md" + (
        " --skip-resnet" if args.skip_resnet else "")
    text = ("## {}\n\nProduced by `{}` on {} ({} cores; AVX2 {}, VNNI {}), onnxruntime {}, "
            "Python {}, {}. 1-min load average {:.2f} before the run, {:.2f} after (other "
            "work shared the machine).\n\n{}".format(
                TITLE, command, features.get("model"), os.cpu_count(), features.get("avx2"),
                features.get("vnni"), __import__("onnxruntime").__version__,
                platform.python_version(), time.strftime("%Y-%m-%d"), load,
                os.getloadavg()[0], "\n".join(parts)))
    print(text)
    if args.md:
        write_section(args.md, TITLE, text)


if __name__ == "__main__":
    main()
