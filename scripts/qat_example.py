#!/usr/bin/env python3
"""Worked example of quantization-aware training (issue 10): FP32 vs PTQ vs QAT on the digits.

1. Train the demo digits CNN in FP32 exactly as ``build_demo_model.py`` does (same
   split, augmentation, 40 epochs) and export it the same way.
2. For each weight setting below, quantize it twice with :mod:`edgeinfer.qat`:
   *PTQ* calibrates the scales (min/max over the 300 calibration images, the
   demo's calibration set) and exports at once; *QAT* starts from the same
   calibration, then fine-tunes for a few epochs with the demo's own training
   loop (``digits_training.train``, learning rate / 10) and exports.
   Settings: 8-bit per-channel weights (what ships by default), 7-bit (what
   OpenVINO needs on x86 CPUs without VNNI, whose INT8 kernels saturate with
   full-range weights), 4-bit weights with one scale per tensor, and 3-bit
   per-channel weights: narrower grids on which post-training rounding loses
   accuracy.
3. Convert every model with ``edgeinfer.convert``: the FP32 model with
   ``--precision fp32``, each Q/DQ model with ``--method qat`` (its scales kept),
   for ONNX Runtime (``cpu``) and OpenVINO (``intel-cpu``); the QAT models also
   for TensorRT (``jetson-orin``: the Q/DQ ONNX, its rules checked, validated
   with ONNX Runtime), plus edgeinfer's own static INT8 PTQ of the FP32 model for
   reference.  Top-1 is each bundle's validation on the 500 evaluation PNGs,
   run by the bundle's backend.
4. Print FP32 / PTQ / QAT side by side, check that QAT recovers at least half of
   the points PTQ loses wherever PTQ loses a point or more, and write the
   "Quantization-aware training (issue 10)" section of docs/BENCHMARKS.md.

Usage::

    flock /tmp/edgeinfer-bench.lock .venv/bin/python scripts/qat_example.py --md docs/BENCHMARKS.md

About half a minute on one core (FP32 training 7 s, QAT under 1 s per setting, the
rest conversions).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import edgeinfer  # noqa: E402
from edgeinfer import qat  # noqa: E402
from bench_core import write_section  # noqa: E402
from build_demo_model import (  # noqa: E402
    CLASSES, LEARNING_RATE, PREPROCESS, WEIGHT_DECAY, export_onnx, load_pixels, normalize,
    split_indices, train)
from digits_training import train as train_digits  # noqa: E402

EVAL = os.path.join(ROOT, "calibration", "digits-eval")
CALIB = os.path.join(ROOT, "calibration", "digits")
TITLE = "Quantization-aware training (issue 10)"
COMMAND = ("flock /tmp/edgeinfer-bench.lock .venv/bin/python scripts/qat_example.py "
           "--md docs/BENCHMARKS.md")
# name -> (description, qat.prepare keywords)
SETTINGS = [
    ("w8-per-channel", "8-bit weights per channel (the default)", {"weight_bits": 8}),
    ("w7-per-channel", "7-bit weights per channel (OpenVINO without VNNI)", {"weight_bits": 7}),
    ("w4-per-tensor", "4-bit weights, one scale per tensor", {"weight_bits": 4,
                                                              "per_channel": False}),
    ("w3-per-channel", "3-bit weights per channel", {"weight_bits": 3}),
]
TARGETS = ("cpu", "intel-cpu")
# A setting where PTQ loses at least this many top-1 points must be half recovered by QAT.
LOSS_THRESHOLD = 1.0


def top1(bundle):
    return 100.0 * bundle.manifest["validation"]["outputs"]["logits"]["top1"]


def convert(path, target, folder, **options):
    """edgeinfer.convert on the eval PNGs; the bundle."""
    name = "{}-{}-{}.eib".format(os.path.splitext(os.path.basename(path))[0], target,
                                 options.get("method", options.get("precision", "int8")))
    return edgeinfer.convert(path, target=target, eval=EVAL, output=os.path.join(folder, name),
                             measure_speed=False, overwrite=True, **options)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--md", help="write the section into this Markdown report")
    parser.add_argument("--qat-epochs", type=int, default=3, help="QAT epochs (default 3)")
    parser.add_argument("--epochs", type=int, default=40, help="FP32 epochs (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the ONNX models and bundles in this folder "
                                          "(default: a temporary one, removed at the end)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    # One thread: the machine is shared, and float reductions depend on the count.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    pixels, labels = load_pixels()
    train_idx, _, calib_idx = split_indices(labels, args.seed)
    model = train(pixels[train_idx], labels[train_idx], args.epochs, args.seed)
    calibration = torch.from_numpy(normalize(pixels[calib_idx]))
    batches = [calibration[i:i + 64] for i in range(0, len(calibration), 64)]
    example = (calibration[:1],)
    metadata = {"edgeinfer.preprocess": PREPROCESS, "edgeinfer.classes": CLASSES}
    folder = args.workdir or tempfile.mkdtemp(prefix="edgeinfer-qat-")
    os.makedirs(folder, exist_ok=True)
    try:
        return run(args, model, batches, example, metadata, folder, pixels, labels, train_idx,
                   started)
    finally:
        if not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)


def run(args, model, batches, example, metadata, folder, pixels, labels, train_idx, started):
    """Export, convert and measure every model; print and write the report."""
    fp32_path = os.path.join(folder, "digits_fp32.onnx")
    with open(fp32_path, "wb") as handle:
        handle.write(export_onnx(model).SerializeToString())
    fp32 = dict((t, top1(convert(fp32_path, t, folder, precision="fp32"))) for t in TARGETS)
    stock = dict((t, top1(convert(fp32_path, t, folder, calibration=CALIB))) for t in TARGETS)
    rows, failures, timings = [], [], {}
    for name, description, options in SETTINGS:
        paths = {}
        for kind in ("ptq", "qat"):
            qmodel = qat.prepare(model, example, calibration=batches, **options)
            if kind == "qat":
                tic = time.perf_counter()
                qmodel = train_digits(
                    lambda gen: qmodel, lambda m: [{"params": list(m.parameters()),
                                                    "weight_decay": WEIGHT_DECAY}],
                    pixels[train_idx], labels[train_idx], args.qat_epochs, args.seed,
                    LEARNING_RATE / 10)
                timings[name] = time.perf_counter() - tic
            paths[kind] = qat.export(qmodel, example, os.path.join(
                folder, "digits_{}_{}.qdq.onnx".format(name.replace("-", "_"), kind)),
                input_names=["input"], output_names=["logits"], metadata=metadata)
        for target in TARGETS:
            ptq = top1(convert(paths["ptq"], target, folder, method="qat"))
            trained = top1(convert(paths["qat"], target, folder, method="qat"))
            rows.append((description, target, fp32[target], ptq, trained))
            lost = fp32[target] - ptq
            if lost >= LOSS_THRESHOLD and trained - ptq < lost / 2:
                failures.append("{} on {}: PTQ lost {:.1f} points, QAT recovered {:.1f}".format(
                    name, target, lost, trained - ptq))
        orin = convert(paths["qat"], "jetson-orin", folder, method="qat")
        rows.append((description, "jetson-orin", fp32["cpu"], None, top1(orin)))
    total = time.perf_counter() - started
    text = report(rows, stock, args, timings, total)
    print(text)
    if args.md:
        write_section(args.md, TITLE, text)
    if failures:
        print("QAT recovered less than half of what PTQ lost: " + "; ".join(failures),
              file=sys.stderr)
        return 1
    return 0


def report(rows, stock, args, timings, total):
    lines = ["## " + TITLE, "",
             "Command: `{}` (about {:.0f} s on one core of the AMD EPYC, 2-core machine; "
             "torch {}).".format(COMMAND, total, torch.__version__), "",
             "The demo digits CNN (scripts/build_demo_model.py's network, split and training, "
             "{} epochs) in FP32, quantized by `edgeinfer.qat` with the weight grid of each row: "
             "**PTQ** = scales calibrated on the 300 calibration images and exported without "
             "training; **QAT** = the same start, then {} epochs of fake-quant fine-tuning with "
             "the demo's training loop (learning rate / 10). Activations are INT8 per tensor, "
             "symmetric, in every row; BatchNorm is folded first. Each model is converted with "
             "`edgeinfer convert` (`--precision fp32`, or `--method qat`: the Q/DQ scales kept) "
             "and its top-1 is the bundle's validation on the 500 evaluation PNGs, run by the "
             "target's backend (jetson-orin: the TensorRT Q/DQ ONNX, its rules checked, run by "
             "ONNX Runtime; the engine is built on the device).".format(
                 args.epochs, args.qat_epochs), "",
             "| weights | target | FP32 top-1 | PTQ top-1 | QAT top-1 | PTQ loss (points) "
             "| recovered by QAT |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for description, target, fp32, ptq, trained in rows:
        if ptq is None:
            lines.append("| {} | {} | {:.1f} | - | {:.1f} | - | - |".format(
                description, target, fp32, trained))
            continue
        lost = fp32 - ptq
        recovered = "{:.0f}%".format(100.0 * (trained - ptq) / lost) if lost >= 0.5 else "-"
        lines.append("| {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {} |".format(
            description, target, fp32, ptq, trained, lost, recovered))
    lines += ["", "Each Q/DQ model is validated against an FP32 reference: by default the same "
                  "model with its Q/DQ nodes removed (the trained network computing in FP32), "
                  "or the FP32 ONNX given with `--fp32-reference` (the FP32 column here is the "
                  "FP32 model's own bundle). The manifests record `method: qat`, no calibration, "
                  "and `quantization.scales`: \"from quantization-aware training, kept as "
                  "trained\"; the Q/DQ scales in the ORT and TensorRT bundles are the exported "
                  "ones bit for bit (tests/test_qat.py).",
              "", "For reference, edgeinfer's own static INT8 PTQ of the FP32 model (8-bit "
                  "per-channel weights, calibrated by `edgeinfer convert --calibration "
                  "calibration/digits`): {}.".format(", ".join(
                      "{:.1f} on {}".format(v, t) for t, v in sorted(stock.items()))),
              "",
              "OpenVINO on this CPU (no VNNI) adds pairs of u8 x s8 products in 16 bits, which "
              "full-range 8-bit weights can saturate: its 8-bit rows may lose an image or two "
              "more than ONNX Runtime's, whose INT8 results match torch's fake quantization. "
              "7-bit weights fit (|w| <= 64); `convert` notes it for 8-bit Q/DQ models on such "
              "CPUs, and tests/test_qat.py checks both on an MLP.",
              "",
              "QAT fine-tuning took {} (one thread).".format(", ".join(
                  "{:.1f} s for {}".format(s, n) for n, s in timings.items())),
              "",
              "Recovered = (QAT - PTQ) / (FP32 - PTQ), where PTQ loses half a point or more; "
              "the script fails when QAT recovers less than half of a loss of {:.0f} point "
              "or more.".format(LOSS_THRESHOLD)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
