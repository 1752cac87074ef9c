#!/usr/bin/env python3
"""Accuracy control (issue 4): per-layer sensitivity methods and the budget search, measured.

Sections of the Markdown it prints:

1. The two sensitivity methods side by side -- "quantize it alone" (one group
   INT8, all others FP32; what edgeinfer ships) and "keep it alone in FP32" (one
   group FP32, all others INT8) -- on the trained demo model with the S8S8 and
   the default U8S8 reduce-range variants, and on ``tests/models.py``'s
   ``outlier_convnet``: time of a pass, the ranking, and how many groups of each
   ranking must stay FP32 to meet the budget (every head of the ranking measured).
2. The budget search on the demo model from S8S8 with ``max_accuracy_drop=0.5``:
   steps, kept ops, time.

Everything is ONNX Runtime's own quantizer and CPU kernels; calibration runs once
per model (a JSON range cache) and FP32 runs over the eval set once.

Usage::

    python scripts/bench_accuracy_control.py [--md out.md]
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
sys.path.insert(0, ROOT)

import onnx  # noqa: E402
import onnxruntime  # noqa: E402

from edgeinfer.conversion import budget as budget_mod  # noqa: E402
from edgeinfer.conversion import metrics, sensitivity  # noqa: E402
from edgeinfer.conversion import ort as ort_recipe  # noqa: E402
from edgeinfer.conversion.source import load_source  # noqa: E402
from edgeinfer.datasets import open_dataset  # noqa: E402
from edgeinfer.preprocess import Preprocess  # noqa: E402
from edgeinfer.profiles import cpu_features  # noqa: E402
from tests import models  # noqa: E402

DEMO = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "calibration", "digits")
EVAL = os.path.join(ROOT, "calibration", "digits-eval")


def md_table(rows):
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def setup(source, calib_batches, eval_batches, workdir):
    start = time.perf_counter()
    prepared = ort_recipe.prepare(source, os.path.join(workdir, "prepared.onnx"), workdir)
    cache, _, kind = ort_recipe.calibrate(prepared, calib_batches, "minmax", workdir)
    prep_s = time.perf_counter() - start
    reference = metrics.ReferenceOutputs(sensitivity.ort_runner(source), eval_batches)
    start = time.perf_counter()
    reference.samples
    return prepared, cache, kind, reference, prep_s, time.perf_counter() - start


def prefix_needed(builder, reference, groups, order, budget):
    """The smallest head of ``order`` that meets the budget, measuring every head."""
    for k in range(len(order) + 1):
        excluded = [n for i in order[:k] for n in groups[i].nodes]
        path = builder.build(exclude=excluded)
        ok, value = budget.check(metrics.evaluate(reference, sensitivity.ort_runner(path)))
        if ok:
            return k, value
    return None, value


def methods(label, prepared, cache, kind, variant, reference, budget, workdir, out):
    builder = sensitivity.QdqBuilder(prepared, cache, kind, ort_recipe.INT8_VARIANTS[variant],
                                     True, workdir)
    full = builder.build()
    groups = sensitivity.quantized_groups(builder.model, onnx.load(full))
    base = metrics.evaluate(reference, sensitivity.ort_runner(full))
    part = reference.head(sensitivity.SENSITIVITY_SAMPLES)
    out.append("### {} ({} groups; all INT8: {} {:.4g}, output SQNR {:.1f} dB)\n".format(
        label, len(groups), budget.what, budget.achieved(base), sensitivity.worst_sqnr(base)))
    summary = [("method", "pass s", "builds", "build s", "ranking (most sensitive first)",
                "groups FP32 to meet " + budget.describe())]
    for how, name in (("only", "quantize-alone"), ("exclude", "keep-alone-fp32")):
        # A fresh builder per method: no variant is reused from the other method's run.
        builder = sensitivity.QdqBuilder(prepared, cache, kind,
                                         ort_recipe.INT8_VARIANTS[variant], True, workdir)
        builds, build_s = builder.builds, builder.seconds
        start = time.perf_counter()
        found = sensitivity._variant_results(builder, part, groups, how, None,
                                             sensitivity.ort_runner)
        seconds = time.perf_counter() - start
        builds, build_s = builder.builds - builds, builder.seconds - build_s
        sqnr = [sensitivity._db(sensitivity.worst_sqnr(r)) for r in found]
        order = sorted(range(len(groups)), key=lambda i: sqnr[i] if how == "only" else -sqnr[i])
        needed, value = prefix_needed(builder, reference, groups, order, budget)
        summary.append((name, "{:.2f}".format(seconds), builds, "{:.2f}".format(build_s),
                        ", ".join("{} ({:.1f} dB)".format(groups[i].name, sqnr[i])
                                  for i in order),
                        "{} ({} {:.4g})".format(needed, budget.what, value)))
    out.append(md_table(summary) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--md", help="also write the Markdown here")
    args = parser.parse_args()
    features = cpu_features()
    out = ["## Accuracy control (issue 4)\n",
           "Produced by `python scripts/bench_accuracy_control.py` on {} ({} cores; AVX2 {}, "
           "VNNI {}), onnxruntime {}, Python {}.\n".format(
               features.get("model"), features.get("cores"), features.get("avx2"),
               features.get("vnni"), onnxruntime.__version__, platform.python_version())]
    work = tempfile.mkdtemp(prefix="bench-ac-")
    source = load_source(DEMO)
    preprocess = Preprocess.from_dict(source.preprocess)
    calib = open_dataset(CALIB, source.inputs, preprocess)
    data = open_dataset(EVAL, source.inputs, preprocess)
    prepared, cache, kind, reference, prep_s, ref_s = setup(
        DEMO, (f for f, _ in calib.batches(8)), lambda: data.batches(50), work)
    out.append("Demo model: 300 calibration images (prepare + calibrate once: {:.2f} s), 500 "
               "labelled eval images (FP32 reference, once: {:.2f} s). Each group's model is "
               "measured on the first {} eval images, every head of a ranking on all 500.\n"
               .format(prep_s, ref_s, reference.head(sensitivity.SENSITIVITY_SAMPLES).samples))
    out.append("### 1. Sensitivity methods\n")
    budget = metrics.Budget(max_accuracy_drop=0.5)
    for variant in ("s8s8", "u8s8-rr"):
        folder = os.path.join(work, variant)
        os.makedirs(folder)
        methods("demo, " + variant, prepared, cache, kind, variant, reference, budget, folder,
                out)
    folder = os.path.join(work, "outlier")
    os.makedirs(folder)
    path = models.save(models.outlier_convnet(), os.path.join(folder, "outlier.onnx"))
    rng = np.random.RandomState(0)
    x_cal = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    x_eval = rng.standard_normal((128, 3, 8, 8)).astype(np.float32)
    o_prepared, o_cache, o_kind, o_reference, _, _ = setup(
        path, ({"x": x_cal[i:i + 16]} for i in range(0, 64, 16)),
        lambda: (({"x": x_eval[i:i + 32]}, None) for i in range(0, 128, 32)), folder)
    methods("outlier_convnet, u8s8-rr (128 random inputs)", o_prepared, o_cache, o_kind,
            "u8s8-rr", o_reference, metrics.Budget(min_cosine=0.99), folder, out)

    out.append("### 2. Budget search: demo model from S8S8, max_accuracy_drop=0.5\n")
    folder = os.path.join(work, "search")
    os.makedirs(folder)
    builder = sensitivity.QdqBuilder(prepared, cache, kind, ort_recipe.INT8_VARIANTS["s8s8"],
                                     True, folder)
    start = time.perf_counter()
    sens = sensitivity.analyze(builder, reference, budget)
    analyze_s = time.perf_counter() - start
    _, result = sensitivity.mixed_precision(builder, reference, budget, sensitivity=sens)
    out.append("```\n" + sensitivity.format_table(sens) + "\n```\n")
    out.append("Sensitivity pass (quantize-alone, with the qdq_loss_debug activation "
               "comparison): {:.2f} s, {} builds.\n".format(analyze_s, sens.builds))
    steps = [("step", "groups FP32", "ops FP32", "top-1 drop (points)", "meets", "s")]
    steps += [(i + 1, s.groups, s.ops, "{:.2f}".format(s.achieved), "yes" if s.ok else "no",
               "{:.3f}".format(s.seconds)) for i, s in enumerate(result.steps)]
    out.append(md_table(steps) + "\n")
    out.append("\n".join("- " + line for line in budget_mod.describe(result)) + "\n")
    text = "\n".join(out)
    print(text)
    if args.md:
        with open(args.md, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
