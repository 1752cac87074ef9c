#!/usr/bin/env python3
"""OpenVINO recipes benchmark (issue 3): NNCF INT8 against FP32, OpenVINO against ONNX Runtime.

Everything is measured in one run, side by side (this machine is shared and
noisy): the models of a section are timed interleaved, round by round, with a
pause before each call so the previous model's spinning pool threads (OpenVINO's
and ONNX Runtime's) go idle first, and reported as medians and ratios from the
same run.

Sections written to the Markdown report:

1. ResNet-50 (seeded random weights, scripts/build_bench_models.py) at batch 1:
   OpenVINO FP32 and INT8 (NNCF, calibrated on natural-image crops), and ONNX
   Runtime FP32 and INT8 (edgeinfer's default static recipe, same images), all
   through edgeinfer Sessions; the OpenVINO ones also through a bare
   ``compiled_model`` infer request on the same IR.  Issue bar: OpenVINO INT8 /
   FP32 <= 0.55; the OpenVINO INT8 / ONNX Runtime INT8 ratio says which backend
   to pick on this CPU.
2. The trained demo model (500 labelled eval images): top-1 of the OpenVINO FP32,
   FP16 and INT8 bundles (and ONNX Runtime INT8 beside them) against FP32.
3. The small transformer (``--arch transformer``; random weights, random normal
   embeddings as inputs): cosine against FP32 and latency of OpenVINO static INT8
   (NNCF default and model type transformer) and INT8 weight-only, with ONNX
   Runtime FP32 and dynamic INT8 beside them; and what ``--method auto`` chose.

"Paired ratio" is the median over rounds of a model's time divided by its FP32's
time in the same round: robust to the drifts of a shared machine.

Usage::

    python scripts/bench_openvino.py --md docs/BENCHMARKS.md
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import nncf  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import openvino as ov  # noqa: E402

import edgeinfer  # noqa: E402
from bench_core import (DEMO, DEMO_CALIB, DEMO_EVAL, interleaved, md_table,  # noqa: E402
                        natural_images, write_section)
from build_bench_models import build  # noqa: E402
TITLE = "OpenVINO recipes (issue 3)"
PAUSE = 0.06  # seconds before each timed call: pool threads spin ~40 ms after a run


def convert(source, path, **kwargs):
    """edgeinfer.convert with the speed check off (this script times things itself)."""
    start = time.perf_counter()
    bundle = edgeinfer.convert(source, output=path, overwrite=True, measure_speed=False, **kwargs)
    print("converted {} in {:.1f} s".format(os.path.basename(path), time.perf_counter() - start),
          flush=True)
    return bundle


def bare_openvino(bundle, core):
    """The bundle's IR compiled by a plain ``openvino.Core`` (LATENCY hint), one request."""
    model = core.read_model(bundle.read("model.xml"), bundle.read("model.bin"))
    compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds, share_inputs=True)


def paired(samples, label, reference):
    """Median over rounds of this model's time / the reference's time in the same round."""
    return float(np.median(np.array(samples[label]) / np.array(samples[reference])))


def size_of(bundle):
    return sum(e["size"] for e in bundle.manifest["files"])


def pct(value):
    return "{:.1f}%".format(100 * value)


def section_resnet(workdir, images, rounds, calibration_size):
    """ResNet-50 latency at batch 1: OpenVINO FP32/INT8 vs ONNX Runtime FP32/INT8."""
    source = os.path.join(workdir, "resnet50.onnx")
    onnx.save(build("resnet50"), source)
    cases = [("OpenVINO FP32", "ov-fp32", dict(target="openvino", precision="fp32")),
             ("OpenVINO INT8 (NNCF defaults)", "ov-int8", dict(target="openvino",
                                                                precision="int8")),
             ("ONNX Runtime FP32", "ort-fp32", dict(target="cpu", precision="fp32")),
             ("ONNX Runtime INT8 (edgeinfer default)", "ort-int8", dict(target="cpu",
                                                                         precision="int8"))]
    core = ov.Core()
    runs, bundles = {}, {}
    for _, key, kwargs in cases:
        bundle = convert(source, os.path.join(workdir, "resnet50-{}.eib".format(key)),
                         calibration=images, calibration_size=calibration_size, **kwargs)
        bundles[key] = bundle
        runs["ei:" + key] = edgeinfer.load(bundle.path).run
        if kwargs["target"] == "openvino":
            runs["bare:" + key] = bare_openvino(bundle, core)
    x = {"input": np.random.RandomState(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    med, samples = interleaved(runs, x, rounds, pause=PAUSE)
    rows = [("backend / precision", "method", "calibration", "bundle size vs ONNX FP32",
             "edgeinfer ms (p50)", "bare OpenVINO ms (p50)", "ratio vs same backend's FP32",
             "paired ratio", "top-1 = FP32 (held-out)")]
    source_size = float(os.path.getsize(source))
    for label, key, _ in cases:
        m = bundles[key].manifest
        calib = m["calibration"]
        fp32 = "ei:" + key.split("-")[0] + "-fp32"
        agreement = m["validation"]["outputs"]["logits"].get("top1_agreement")
        rows.append((label, m["method"],
                     "{} images, {:.0f} s, peak {:.0f} MiB".format(
                         calib["samples"], calib["seconds"], calib["peak_rss_mb"] or 0)
                     if calib else "-",
                     "{:.3f}x".format(size_of(bundles[key]) / source_size),
                     "{:.2f}".format(1000 * med["ei:" + key]),
                     "{:.2f}".format(1000 * med["bare:" + key]) if "bare:" + key in med else "-",
                     "{:.2f}x".format(med["ei:" + key] / med[fp32]),
                     "{:.2f}x".format(paired(samples, "ei:" + key, fp32)),
                     pct(agreement) if agreement is not None else "-"))
    ratios = {
        "ov_int8_vs_fp32": med["ei:ov-int8"] / med["ei:ov-fp32"],
        "ov_int8_vs_fp32_bare": med["bare:ov-int8"] / med["bare:ov-fp32"],
        "ov_int8_vs_ort_int8": med["ei:ov-int8"] / med["ei:ort-int8"],
        "ov_fp32_vs_ort_fp32": med["ei:ov-fp32"] / med["ei:ort-fp32"],
        "ort_int8_vs_fp32": med["ei:ort-int8"] / med["ei:ort-fp32"],
    }
    print(md_table(rows), ratios, flush=True)
    return md_table(rows), ratios


def section_demo(workdir):
    """Demo model accuracy: OpenVINO FP32/FP16/INT8 and ONNX Runtime INT8, against FP32."""
    cases = [("OpenVINO FP32", dict(target="openvino", precision="fp32")),
             ("OpenVINO FP16", dict(target="openvino", precision="fp16")),
             ("OpenVINO INT8 static (NNCF defaults)", dict(target="openvino", precision="int8")),
             ("ONNX Runtime INT8 static (edgeinfer default)", dict(target="cpu",
                                                                   precision="int8"))]
    rows = [("bundle", "method", "top-1", "FP32 top-1", "drop (points)", "top-1 agreement",
             "cosine (mean)", "size vs ONNX FP32")]
    drops = {}
    source = float(os.path.getsize(DEMO))
    for label, kwargs in cases:
        path = os.path.join(workdir, "demo-{}.eib".format(len(rows)))
        bundle = convert(DEMO, path, calibration=DEMO_CALIB, eval=DEMO_EVAL, **kwargs)
        m = bundle.manifest["validation"]["outputs"]["logits"]
        drops[label] = m["top1_drop_points"]
        rows.append((label, bundle.manifest["method"], pct(m["top1"]), pct(m["top1_fp32"]),
                     "{:.1f}".format(m["top1_drop_points"]), pct(m["top1_agreement"]),
                     "{:.4f}".format(m["cosine_mean"]), "{:.2f}x".format(size_of(bundle) / source)))
    print(md_table(rows), flush=True)
    return md_table(rows), drops


def transformer_data(workdir, count, seed):
    """``count`` seeded random normal inputs for the transformer, as one .npz."""
    path = os.path.join(workdir, "transformer-{}-{}.npz".format(count, seed))
    x = np.random.RandomState(seed).standard_normal((count, 64, 128)).astype(np.float32)
    np.savez(path, input=x)
    return path


def section_transformer(workdir, rounds, calibration_size):
    """The small transformer: INT8 static / weight-only cosine and latency against FP32."""
    source = os.path.join(workdir, "transformer.onnx")
    onnx.save(build("transformer"), source)
    calib = transformer_data(workdir, calibration_size, seed=0)
    evaluation = transformer_data(workdir, 64, seed=1)
    cases = [("OpenVINO FP32", "ov-fp32", dict(target="openvino", precision="fp32")),
             ("OpenVINO INT8 static (NNCF defaults)", "ov-static",
              dict(target="openvino", precision="int8", method="static")),
             ("OpenVINO INT8 static, model type transformer", "ov-static-tr",
              dict(target="openvino", precision="int8", method="static",
                   model_type="transformer")),
             ("OpenVINO INT8 weight-only", "ov-weights", dict(target="openvino", precision="int8",
                                                              method="weights-only")),
             ("ONNX Runtime FP32", "ort-fp32", dict(target="cpu", precision="fp32")),
             ("ONNX Runtime INT8 dynamic (edgeinfer auto)", "ort-dynamic",
              dict(target="cpu", precision="int8"))]
    runs, bundles = {}, {}
    for _, key, kwargs in cases:
        bundle = convert(source, os.path.join(workdir, "transformer-{}.eib".format(key)),
                         calibration=calib, eval=evaluation, **kwargs)
        bundles[key] = bundle
        runs[key] = edgeinfer.load(bundle.path).run
    auto = convert(source, os.path.join(workdir, "transformer-auto.eib"), target="openvino",
                   precision="int8", calibration=calib, eval=evaluation)
    x = {"input": np.random.RandomState(2).standard_normal((1, 64, 128)).astype(np.float32)}
    med, samples = interleaved(runs, x, rounds, pause=PAUSE)
    rows = [("bundle", "method", "cosine vs FP32 (min / mean)", "size vs ONNX FP32",
             "edgeinfer ms (p50)", "ratio vs same backend's FP32", "paired ratio")]
    source_size = float(os.path.getsize(source))
    results = {}
    for label, key, _ in cases:
        m = bundles[key].manifest
        out = m["validation"]["outputs"]["hidden"]
        fp32 = key.split("-")[0] + "-fp32"
        ratio = med[key] / med[fp32]
        results[key] = (out["cosine_min"], ratio)
        rows.append((label, m["method"], "{:.5f} / {:.5f}".format(out["cosine_min"],
                                                                   out["cosine_mean"]),
                     "{:.3f}x".format(size_of(bundles[key]) / source_size),
                     "{:.3f}".format(1000 * med[key]), "{:.2f}x".format(ratio),
                     "{:.2f}x".format(paired(samples, key, fp32))))
    results["ort-dynamic-vs-ov-fp32"] = med["ort-dynamic"] / med["ov-fp32"]
    results["ov-fp32-vs-ort-fp32"] = med["ov-fp32"] / med["ort-fp32"]
    chosen = (auto.manifest["method"], auto.manifest["quantization"]["method_reason"])
    print(md_table(rows), chosen, flush=True)
    return md_table(rows), results, chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--md", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "bench_openvino"))
    parser.add_argument("--rounds", type=int, default=60, help="timed rounds (ResNet-50)")
    parser.add_argument("--transformer-rounds", type=int, default=200)
    parser.add_argument("--images", type=int, default=300,
                        help="natural-image crops for ResNet-50 calibration (20%% held out)")
    parser.add_argument("--sections", default="resnet50,demo,transformer")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    sections = args.sections.split(",")
    command = "python scripts/bench_openvino.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    cpu = edgeinfer.profiles.cpu_features()
    load_before = os.getloadavg()[0]
    parts = ["## " + TITLE, "",
             "Produced by `{}` on {} ({} cores; AVX2 {}, VNNI {}, AMX {}), openvino {}, nncf {}, "
             "onnxruntime {}, Python {}, {}. Latencies are medians of interleaved rounds with a "
             "{:.0f} ms pause before each call; every ratio is from the same run (paired ratio: "
             "median over rounds of time / the same backend's FP32 time in that round).".format(
                 command.strip(), cpu["model"], cpu["cores"], cpu["avx2"], cpu["vnni"],
                 cpu["amx"], ov.__version__.split("-")[0], nncf.__version__, ort.__version__,
                 platform.python_version(), time.strftime("%Y-%m-%d"), 1000 * PAUSE), ""]
    summary = []
    if "resnet50" in sections:
        images = natural_images(os.path.join(args.work, "images"), args.images)
        table, r = section_resnet(args.work, images, args.rounds, args.images)
        parts += ["### ResNet-50 at batch 1 ({} interleaved rounds)".format(args.rounds), "",
                  "Random seeded weights; calibration on {} crops of scikit-learn's sample "
                  "photos, of which edgeinfer holds 20% out for validation (no eval set given)."
                  " Both backends read the same images through the same preprocessing.".format(
                      args.images), "", table, ""]
        summary += [
            "- ResNet-50 OpenVINO INT8 / OpenVINO FP32 at batch 1: **{:.2f}x** through "
            "edgeinfer, {:.2f}x bare (issue bar <= 0.55: {}).".format(
                r["ov_int8_vs_fp32"], r["ov_int8_vs_fp32_bare"],
                "met" if r["ov_int8_vs_fp32"] <= 0.55 else "NOT met"),
            "- edgeinfer OpenVINO INT8 / edgeinfer ONNX Runtime INT8 (same model, same "
            "calibration images): **{:.2f}x** (FP32: {:.2f}x; ONNX Runtime INT8 / FP32 "
            "{:.2f}x).".format(r["ov_int8_vs_ort_int8"], r["ov_fp32_vs_ort_fp32"],
                               r["ort_int8_vs_fp32"])]
    if "demo" in sections:
        table, drops = section_demo(args.work)
        parts += ["### Demo model accuracy (500 labelled eval images)", "",
                  "FP32 is the source model in ONNX Runtime for every row (the validation "
                  "reference).", "", table, ""]
        drop = drops["OpenVINO INT8 static (NNCF defaults)"]
        summary.append("- Demo model OpenVINO INT8 top-1 drop: **{:.1f} points** (bar <= 1: "
                       "{}).".format(drop, "met" if drop <= 1.0 else "NOT met"))
    if "transformer" in sections:
        calibration_size = 300
        table, results, chosen = section_transformer(args.work, args.transformer_rounds,
                                                     calibration_size)
        parts += ["### Small transformer at batch 1 ({} interleaved rounds)".format(
            args.transformer_rounds), "",
            "`build_bench_models.py --arch transformer`: 2 post-LN encoder layers, hidden 128, "
            "4 heads, FFN 512, sequence 64, random seeded weights; calibration on {} and "
            "validation on 64 seeded random normal inputs (every value of the last hidden "
            "state is compared).".format(calibration_size), "", table, "",
            "`--method auto` with calibration data chose **{}**: {}.".format(*chosen), ""]
        worst = min(results[k][0] for k in ("ov-static", "ov-static-tr", "ov-weights"))
        summary.append(
            "- Transformer cosine vs FP32 (min over 64 inputs): static {:.5f}, static "
            "transformer {:.5f}, weight-only {:.5f} (bar >= 0.99: {}); latency vs OpenVINO "
            "FP32: static {:.2f}x, static transformer {:.2f}x, weight-only {:.2f}x.".format(
                results["ov-static"][0], results["ov-static-tr"][0], results["ov-weights"][0],
                "met" if worst >= 0.99 else "NOT met", results["ov-static"][1],
                results["ov-static-tr"][1], results["ov-weights"][1]))
        summary.append(
            "- Transformer across backends: OpenVINO FP32 runs at {:.2f}x the ONNX Runtime FP32 "
            "latency, and ONNX Runtime dynamic INT8 at {:.2f}x the OpenVINO FP32 latency; "
            "`--method auto` chose {} for OpenVINO.".format(
                results["ov-fp32-vs-ort-fp32"], results["ort-dynamic-vs-ov-fp32"], chosen[0]))
    parts[2] += " 1-min load average {:.2f} before the run, {:.2f} after.".format(
        load_before, os.getloadavg()[0])
    parts += ["### Summary", ""] + summary + [""]
    text = "\n".join(parts)
    print(text)
    write_section(args.md, TITLE, text)


if __name__ == "__main__":
    main()
