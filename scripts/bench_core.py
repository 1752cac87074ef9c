#!/usr/bin/env python3
"""Core benchmark: FP32 vs INT8 static vs INT8 dynamic vs FP16 with edgeinfer and bare ONNX Runtime.

Everything is measured side by side in one run (this machine is shared and
noisy): models are timed interleaved, round by round, and reported as medians
and ratios against FP32 from the same run.

Sections written to the Markdown report:

1. Accuracy on the trained demo model (500 labelled eval images): FP32, the
   edgeinfer INT8 default, ONNX Runtime's stock INT8 settings, dynamic INT8, FP16.
2. Latency at batch 1 of the benchmark ResNet-50 and MobileNetV2 (seeded random
   weights, built by scripts/build_bench_models.py) for each precision, through
   an edgeinfer Session and through a bare ``onnxruntime.InferenceSession`` on
   the very same model bytes; bundle size against the FP32 source.
3. Session overhead over a bare InferenceSession (tiny model and MobileNetV2).
4. Peak RSS of calibration with 100, 250 and 500 images (each in a fresh process).

Usage::

    python scripts/bench_core.py --md docs/BENCHMARKS.md
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import edgeinfer  # noqa: E402
from edgeinfer.conversion.validate import time_interleaved  # noqa: E402
from build_bench_models import build  # noqa: E402

DEMO = os.path.join(ROOT, "models", "digits_cnn.onnx")
DEMO_CALIB = os.path.join(ROOT, "calibration", "digits")
DEMO_EVAL = os.path.join(ROOT, "calibration", "digits-eval")


def natural_images(folder, count, size=256, seed=0):
    """Write ``count`` JPEG crops of scikit-learn's two sample photos into ``folder``.

    Real photographs give calibration the activation statistics of natural
    images, which random noise does not.
    """
    from PIL import Image
    from sklearn.datasets import load_sample_images
    os.makedirs(folder, exist_ok=True)
    existing = [n for n in os.listdir(folder) if n.endswith(".jpg")]
    if len(existing) >= count:
        return folder
    photos = [Image.fromarray(img) for img in load_sample_images().images]
    rng = np.random.RandomState(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.randint(128, min(photo.size)))
        left = int(rng.randint(0, photo.size[0] - side + 1))
        top = int(rng.randint(0, photo.size[1] - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size))
        if rng.rand() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crop.save(os.path.join(folder, "{:04d}.jpg".format(i)), quality=90)
    return folder


def interleaved(runs, feeds, rounds, warmup=5, pause=0.0):
    """Median seconds per callable, timed round-robin (A B C A B C ...).

    ``pause`` seconds before each call let the previous session's spinning ONNX
    Runtime pool threads go idle, so they do not steal a core from the next one.
    Callables sharing one underlying session need no pause between them.
    """
    for _ in range(warmup):
        for run in runs.values():
            run(feeds)
    samples = time_interleaved(runs, feeds, rounds, pause)
    return dict((label, float(np.median(v))) for label, v in samples.items()), samples


def bare_session(session):
    """The InferenceSession inside an edgeinfer Session, called directly.

    Same session object, same thread pool: the difference between the two paths
    is exactly what edgeinfer adds per call.
    """
    inference = session._runner._session
    names = [o.name for o in inference.get_outputs()]
    return lambda feeds: inference.run(names, feeds)


def md_table(rows):
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)


def section_accuracy(workdir):
    """Demo model accuracy for each recipe, and ONNX Runtime's stock INT8 settings."""
    cases = [("FP32 (optimized graph)", dict(precision="fp32")),
             ("INT8 static, edgeinfer default", dict(precision="int8")),
             ("INT8 static, ORT stock S8S8 per-channel", dict(precision="int8",
                                                              int8_variant="s8s8")),
             ("INT8 static, U8S8 per-channel (no reduce-range)", dict(precision="int8",
                                                                      int8_variant="u8s8")),
             ("INT8 static, U8U8 per-channel", dict(precision="int8", int8_variant="u8u8")),
             ("INT8 dynamic (MatMul/Gemm only)", dict(precision="int8", method="dynamic")),
             ("FP16", dict(precision="fp16"))]
    rows = [("recipe", "variant", "top-1", "FP32 top-1", "drop (points)", "top-1 agreement",
             "cosine", "size vs FP32")]
    source = os.path.getsize(DEMO)
    for label, kwargs in cases:
        path = os.path.join(workdir, "demo-{}.eib".format(len(rows)))
        bundle = edgeinfer.convert(DEMO, calibration=DEMO_CALIB, eval=DEMO_EVAL, output=path,
                                   overwrite=True, measure_speed=False, **kwargs)
        m = bundle.manifest["validation"]["outputs"]["logits"]
        size = sum(e["size"] for e in bundle.manifest["files"])
        rows.append((label, bundle.manifest["quantization"].get("variant", "-"),
                     "{:.1f}%".format(100 * m["top1"]), "{:.1f}%".format(100 * m["top1_fp32"]),
                     "{:.1f}".format(m["top1_drop_points"]),
                     "{:.1f}%".format(100 * m["top1_agreement"]),
                     "{:.4f}".format(m["cosine_mean"]), "{:.2f}x".format(size / float(source))))
        print(rows[-1], flush=True)
    return md_table(rows)


def section_latency(workdir, images, rounds):
    """Per-precision latency at batch 1, edgeinfer Session vs bare InferenceSession."""
    rows = [("model", "precision", "method / variant", "bundle size vs FP32",
             "edgeinfer ms (p50)", "bare ORT ms (p50)", "ratio vs FP32 (edgeinfer)",
             "ratio vs FP32 (bare ORT)")]
    for arch in ("resnet50", "mobilenetv2"):
        source = os.path.join(workdir, arch + ".onnx")
        onnx.save(build(arch), source)
        variants = [("fp32", {}), ("int8", {"method": "static"}), ("int8", {"method": "dynamic"}),
                    ("fp16", {})]
        runs, meta = {}, {}
        for precision, extra in variants:
            label = precision + "-" + extra.get("method", "none")
            path = os.path.join(workdir, "{}-{}.eib".format(arch, label))
            bundle = edgeinfer.convert(source, precision=precision, calibration=images,
                                       calibration_size=64, output=path, overwrite=True,
                                       measure_speed=False, **extra)
            session = edgeinfer.load(path)
            runs["ei:" + label] = session.run
            runs["ort:" + label] = bare_session(session)
            q = bundle.manifest["quantization"]
            meta[label] = (precision, "{} / {}".format(bundle.manifest["method"],
                                                       q.get("variant", "-")),
                           sum(e["size"] for e in bundle.manifest["files"]) /
                           float(os.path.getsize(source)))
            print("converted", arch, label, flush=True)
        x = {"input": np.random.RandomState(0).standard_normal((1, 3, 224, 224)).astype(
            np.float32)}
        med, samples = interleaved(runs, x, rounds, pause=0.06)
        for label, (precision, how, size) in meta.items():
            rows.append((arch, precision, how, "{:.3f}x".format(size),
                         "{:.2f}".format(1000 * med["ei:" + label]),
                         "{:.2f}".format(1000 * med["ort:" + label]),
                         "{:.2f}x".format(med["ei:" + label] / med["ei:fp32-none"]),
                         "{:.2f}x".format(med["ort:" + label] / med["ort:fp32-none"])))
        print(rows[-4:], flush=True)
    return md_table(rows)


def paired_overhead(session, feeds, calls, warmup):
    """Per-call cost of ``session.run`` over its own InferenceSession called directly.

    The two paths alternate A B B A so neither always runs first; the overhead is
    the median of the per-pair differences, which cancels the machine's drift.
    """
    bare = bare_session(session)
    for _ in range(warmup):
        session.run(feeds)
        bare(feeds)
    ours, theirs = [], []
    for i in range(calls):
        order = ((session.run, ours), (bare, theirs)) if i % 2 == 0 else (
            (bare, theirs), (session.run, ours))
        for run, sink in order:
            start = time.perf_counter()
            run(feeds)
            sink.append(time.perf_counter() - start)
    ours, theirs = np.array(ours), np.array(theirs)
    return float(np.median(theirs)), float(np.median(ours)), float(np.median(ours - theirs))


def section_overhead(workdir, calls):
    """Per-call cost of an edgeinfer Session over a bare InferenceSession."""
    rows = [("model", "calls", "bare ORT p50", "edgeinfer p50",
             "overhead (median of paired diffs)", "overhead %")]
    for arch, count in (("tiny", calls), ("mobilenetv2", max(200, calls // 15))):
        source = os.path.join(workdir, arch + ".onnx")
        if not os.path.exists(source):
            onnx.save(build(arch), source)
        path = os.path.join(workdir, arch + "-overhead.eib")
        bundle = edgeinfer.convert(source, precision="fp32", output=path, overwrite=True,
                                   measure_speed=False)
        session = edgeinfer.load(path)
        shape = bundle.inputs[0].concrete_shape(batch=1)
        x = {"input": np.random.RandomState(0).standard_normal(shape).astype(np.float32)}
        base, ours, diff = paired_overhead(session, x, count, warmup=min(200, count))
        unit, scale = ("µs", 1e6) if base < 1e-3 else ("ms", 1e3)
        rows.append(("{} FP32, batch 1".format(arch), count,
                     "{:.2f} {}".format(scale * base, unit), "{:.2f} {}".format(scale * ours, unit),
                     "{:.1f} µs".format(1e6 * diff), "{:.2f}%".format(100 * diff / base)))
        print(rows[-1], flush=True)
    return md_table(rows)


# With an eval set given, no calibration sample is held out for validation.
CALIB_CHILD = r"""
import json, sys, edgeinfer
bundle = edgeinfer.convert(sys.argv[1], precision="int8", calibration=sys.argv[2],
                           calibration_size=int(sys.argv[3]), calibrate_method=sys.argv[4],
                           output=sys.argv[5], overwrite=True, measure_speed=False,
                           eval=sys.argv[2], eval_size=8)
print(json.dumps(bundle.manifest["calibration"]))
"""


def section_calibration_memory(workdir, images, counts, arch):
    """Peak RSS while calibrating, by number of images, each in a fresh process."""
    source = os.path.join(workdir, arch + ".onnx")
    if not os.path.exists(source):
        onnx.save(build(arch), source)
    rows = [("model", "calibration method", "images", "batches", "calibration s",
             "RSS before MiB", "peak RSS during calibration MiB")]
    for method in ("minmax", "entropy"):
        for count in counts:
            out = subprocess.run(
                [sys.executable, "-c", CALIB_CHILD, source, images, str(count), method,
                 os.path.join(workdir, "calib.eib")],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True,
                universal_newlines=True)
            c = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((arch, method, c["samples"], c["batches"], "{:.1f}".format(c["seconds"]),
                         "{:.0f}".format(c["rss_before_mb"]), "{:.0f}".format(c["peak_rss_mb"])))
            print(rows[-1], flush=True)
    return md_table(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--md", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "bench_core"))
    parser.add_argument("--rounds", type=int, default=60, help="timed rounds per model")
    parser.add_argument("--calls", type=int, default=3000, help="calls for the overhead test")
    parser.add_argument("--calibration-counts", default="100,250,500")
    parser.add_argument("--calibration-arch", default="resnet50")
    parser.add_argument("--sections", default="accuracy,latency,overhead,memory")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    counts = [int(c) for c in args.calibration_counts.split(",")]
    images = natural_images(os.path.join(args.work, "images"), max(counts))
    sections = args.sections.split(",")
    command = "python scripts/bench_core.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cpu = edgeinfer.profiles.cpu_features()
    parts = ["## Core: ONNX Runtime recipes (issue 2)", "",
             "Produced by `{}` on {} ({} cores; AVX2 {}, VNNI {}), onnxruntime {}, Python {}, "
             "{}.".format(command.strip(), cpu["model"], cpu["cores"], cpu["avx2"], cpu["vnni"],
                          ort.__version__, platform.python_version(),
                          time.strftime("%Y-%m-%d")), ""]
    if "accuracy" in sections:
        parts += ["### Accuracy on the trained demo model (500 labelled eval images)", "",
                  section_accuracy(args.work), ""]
    if "latency" in sections:
        table = section_latency(args.work, images, args.rounds)
        parts += ["### Latency at batch 1 (median of {} interleaved rounds)".format(args.rounds),
                  "", "Random seeded weights (speed only; accuracy is section 1). Ratios are "
                  "against FP32 in the same run.", "", table, ""]
    if "overhead" in sections:
        parts += ["### edgeinfer Session overhead over a bare InferenceSession", "",
                  "Both paths call the same InferenceSession (same thread pool), alternating "
                  "A B B A; the overhead is the median of the per-pair differences.", "",
                  section_overhead(args.work, args.calls), ""]
    if "memory" in sections:
        parts += ["### Calibration peak memory by number of images", "",
                  "Each row is a fresh process converting {} to INT8 static; peak RSS is the "
                  "process high-water mark during calibration (reset before it).".format(
                      args.calibration_arch), "",
                  section_calibration_memory(args.work, images, counts, args.calibration_arch),
                  ""]
    text = "\n".join(parts)
    print(text)
    write_section(args.md, "Core: ONNX Runtime recipes (issue 2)", text)


def write_section(path, title, text):
    """Replace (or append) the ``## title`` section of the report, atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = open(path).read() if os.path.exists(path) else "# edgeinfer benchmarks\n"
    marker = "## " + title
    if marker in old:
        head, _, rest = old.partition(marker)
        tail = rest.split("\n## ", 1)
        old = head.rstrip() + "\n\n" + text.rstrip() + "\n" + (
            "\n## " + tail[1] if len(tail) > 1 else "")
    else:
        old = old.rstrip() + "\n\n" + text.rstrip() + "\n"
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as handle:
        handle.write(old)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
