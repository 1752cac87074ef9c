#!/usr/bin/env python3
"""Study: latency of ONNX Runtime INT8 (and FP16) variants against FP32 on this CPU.

For each model (built by ``build_bench_models.build``, random seeded weights)
this script makes, with ONNX Runtime's own tooling:

* static INT8 models: ``quant_pre_process`` then ``quantize_static`` (MinMax
  calibration) in QDQ format as S8S8 per-channel, S8S8 per-tensor, U8S8
  per-channel with and without ``reduce_range``, U8U8 per-channel, and in
  QOperator format (QLinearConv) as U8S8 per-channel with ``reduce_range``;
* dynamic INT8 models: ``quantize_dynamic`` with QInt8 and QUInt8 weights;
* FP16: ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)``;

then times every (model variant, session config) pair interleaved: each round
runs every session once, in a freshly shuffled order, with a sleep (60 ms by
default) before each call. The sleep matters: after a run, the worker threads
of a multi-threaded session spin for about 40 ms (ORT's default
``allow_spinning``); with a shorter gap the spinners of earlier sessions
steal one of the two cores from the next measurement, which made single-
threaded runs up to 2x slower in early trials of this script. The
report gives the median latency, its interquartile range, the median of the
per-round latency ratios against FP32 under the same thread count (a paired
estimate, robust to drifts of a shared machine), the file size ratio, and the
agreement of the logits with FP32 on held-out inputs. With random weights the
agreement says nothing about real accuracy; it only flags numerically broken
variants (for example U8S8 saturation on CPUs without VNNI).

Session configs (batch 1): 2 and 1 intra-op threads at ``ORT_ENABLE_ALL``;
2 threads at ``ORT_ENABLE_EXTENDED`` (no NCHWc / NHWC layout transforms);
2 threads with ``session.x64quantprecision=1`` (U8U8 kernels instead of
possibly saturating U8S8) on variants with int8 weights; 2 threads with
``session.qdqisint8allowed=1`` (keep int8 activations instead of ORT's x86
S8->U8 rewrite) on S8S8 variants. ``--no-knobs`` keeps only the first two;
at batch > 1 only the first one is run.

Calibration and held-out inputs are crops of scikit-image's bundled sample
images, preprocessed as the model's ``edgeinfer.preprocess`` metadata says;
without scikit-image they are random normal tensors.

Usage::

    python scripts/bench_ort_int8_variants.py --cases resnet50:1 mobilenetv2:1 resnet50:8 \\
        --md build/bench_int8/results.md
"""

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_bench_models import ARCHS, build, preprocess_metadata  # noqa: E402

# ------------------------------------------------------------------------ inputs

# Bundled with scikit-image (no download). Held-out images are never calibrated on.
CALIB_IMAGES = ["astronaut", "chelsea", "immunohistochemistry", "hubble_deep_field",
                "retina", "colorwheel", "camera", "coins", "moon", "brick", "grass", "gravel"]
HOLDOUT_IMAGES = ["coffee", "rocket"]


def _load_images(names: Sequence[str]) -> List[np.ndarray]:
    """scikit-image sample images as HxWx3 uint8 RGB arrays."""
    import skimage.data

    images = []
    for name in names:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        images.append(img[:, :, :3].astype(np.uint8))
    return images


def _normalize(rgb: np.ndarray, meta: Dict) -> np.ndarray:
    """HxWx3 float image in [0, 255] -> 3xHxW float32, per the preprocess metadata."""
    x = rgb * meta["scale"]
    x = (x - np.array(meta["mean"])) / np.array(meta["std"])
    return x.transpose(2, 0, 1).astype(np.float32)


def _random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (15-100 % of the short side), resized to ``size``."""
    from skimage.transform import resize

    short = min(img.shape[:2])
    side = int(short * rng.uniform(0.15, 1.0))
    top = rng.integers(0, img.shape[0] - side + 1)
    left = rng.integers(0, img.shape[1] - side + 1)
    crop = img[top:top + side, left:left + side].astype(np.float64)
    return resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True)


def make_inputs(meta: Dict, n_calib: int, n_holdout: int,
                seed: int) -> Tuple[np.ndarray, np.ndarray, str]:
    """Calibration and held-out batches [n, 3, S, S] float32, and their source.

    Crops of scikit-image sample images when it is installed, else random normal.
    """
    size = meta["center_crop"][0]
    rng = np.random.default_rng(seed)
    try:
        calib_imgs, held_imgs = _load_images(CALIB_IMAGES), _load_images(HOLDOUT_IMAGES)
    except ImportError:
        normal = lambda n: rng.standard_normal((n, 3, size, size)).astype(np.float32)  # noqa: E731
        return normal(n_calib), normal(n_holdout), "random normal (scikit-image missing)"

    def crops(images: List[np.ndarray], n: int) -> np.ndarray:
        return np.stack([_normalize(_random_crop(images[i % len(images)], size, rng), meta)
                         for i in range(n)])

    source = (f"random crops of scikit-image samples (calibration: {', '.join(CALIB_IMAGES)}; "
              f"held-out: {', '.join(HOLDOUT_IMAGES)})")
    return crops(calib_imgs, n_calib), crops(held_imgs, n_holdout), source


class ArrayReader(CalibrationDataReader):
    """Feeds a [n, ...] array to the calibrator one sample (batch 1) at a time."""

    def __init__(self, input_name: str, data: np.ndarray):
        self._feeds = iter([{input_name: data[i:i + 1]} for i in range(len(data))])

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._feeds, None)


# ---------------------------------------------------------------------- variants

@dataclass(frozen=True)
class Variant:
    """One model variant: how to make it from the FP32 model.

    ``kind`` is ``"fp32"``, ``"static"``, ``"dynamic"`` or ``"fp16"``;
    ``options`` are keyword arguments of the quantizer; ``int8_weights`` and
    ``int8_activations`` select which session knobs apply to it.
    """

    name: str
    kind: str
    options: Dict = field(default_factory=dict, hash=False, compare=False)
    int8_weights: bool = False
    int8_activations: bool = False


def _static(name: str, fmt: QuantFormat, act: QuantType, weight: QuantType,
            per_channel: bool, reduce_range: bool = False) -> Variant:
    options = dict(quant_format=fmt, activation_type=act, weight_type=weight,
                   per_channel=per_channel, reduce_range=reduce_range)
    return Variant(name, "static", options, int8_weights=weight == QuantType.QInt8,
                   int8_activations=act == QuantType.QInt8)


QDQ, QOP, S8, U8 = QuantFormat.QDQ, QuantFormat.QOperator, QuantType.QInt8, QuantType.QUInt8

VARIANTS = [
    Variant("FP32", "fp32"),
    _static("QDQ S8S8 per-channel", QDQ, S8, S8, per_channel=True),
    _static("QDQ S8S8 per-tensor", QDQ, S8, S8, per_channel=False),
    _static("QDQ U8S8 per-channel rr", QDQ, U8, S8, per_channel=True, reduce_range=True),
    _static("QDQ U8S8 per-channel", QDQ, U8, S8, per_channel=True),
    _static("QDQ U8U8 per-channel", QDQ, U8, U8, per_channel=True),
    _static("QOp U8S8 per-channel rr", QOP, U8, S8, per_channel=True, reduce_range=True),
    Variant("dynamic QInt8", "dynamic", dict(weight_type=S8), int8_weights=True),
    Variant("dynamic QUInt8", "dynamic", dict(weight_type=U8)),
    Variant("FP16 (keep_io_types)", "fp16"),
]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def make_variant(variant: Variant, fp32_path: str, pre_path: str, workdir: str,
                 calib: np.ndarray, reuse: bool) -> str:
    """Write ``variant`` of the model next to ``fp32_path``; return its path."""
    if variant.kind == "fp32":
        return fp32_path
    path = os.path.join(workdir, f"{_slug(variant.name)}.onnx")
    if reuse and os.path.exists(path):
        return path
    if variant.kind == "static":
        quantize_static(pre_path, path, ArrayReader("input", calib), **variant.options)
    elif variant.kind == "dynamic":
        quantize_dynamic(pre_path, path, **variant.options)
    elif variant.kind == "fp16":
        from onnxconverter_common import float16

        onnx.save(float16.convert_float_to_float16(onnx.load(fp32_path), keep_io_types=True), path)
    else:
        raise ValueError(variant.kind)
    return path


def prepare_model(arch: str, workdir: str, seed: int, calib: np.ndarray,
                  reuse: bool) -> Dict[str, str]:
    """Build ``arch``, pre-process it, and make every variant; name -> path."""
    os.makedirs(workdir, exist_ok=True)
    fp32_path = os.path.join(workdir, "fp32.onnx")
    pre_path = os.path.join(workdir, "fp32_preprocessed.onnx")
    if not (reuse and os.path.exists(fp32_path)):
        onnx.save(build(arch, seed=seed), fp32_path)
    if not (reuse and os.path.exists(pre_path)):
        quant_pre_process(fp32_path, pre_path)
    paths = {}
    for variant in VARIANTS:
        start = time.perf_counter()
        paths[variant.name] = make_variant(variant, fp32_path, pre_path, workdir, calib, reuse)
        log(f"  {arch}: {variant.name} ready ({time.perf_counter() - start:.1f} s)")
    return paths


# ------------------------------------------------------------------------ knobs

@dataclass(frozen=True)
class SessionConfig:
    """Session options for one measurement, and which variants it applies to."""

    label: str
    threads: int
    opt_level: str = "ALL"
    entries: Tuple[Tuple[str, str], ...] = ()
    applies: Callable[[Variant], bool] = field(default=lambda v: True, hash=False, compare=False)

    def options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{self.opt_level}")
        so.log_severity_level = 3
        for key, value in self.entries:
            so.add_session_config_entry(key, value)
        return so


DEFAULT_CONFIGS = [SessionConfig("2 thr", 2), SessionConfig("1 thr", 1)]
KNOB_CONFIGS = [
    SessionConfig("2 thr, EXTENDED", 2, "EXTENDED", applies=lambda v: v.kind in ("fp32", "static")),
    SessionConfig("2 thr, x64quantprecision=1", 2, entries=(("session.x64quantprecision", "1"),),
                  applies=lambda v: v.int8_weights),
    SessionConfig("2 thr, qdqisint8allowed=1", 2, entries=(("session.qdqisint8allowed", "1"),),
                  applies=lambda v: v.int8_activations),
]


# ------------------------------------------------------------------- measurement

@dataclass
class Case:
    """One (variant, config) pair with its session and results."""

    variant: Variant
    config: SessionConfig
    path: str
    session: Optional[ort.InferenceSession] = None
    error: str = ""
    times_ms: List[float] = field(default_factory=list)
    logits: Optional[np.ndarray] = None
    convs: str = ""


CONV_OPS = ("QLinearConv", "ConvInteger", "Conv", "FusedConv")


def conv_kernels(path: str, config: SessionConfig) -> str:
    """The conv ops ORT runs after optimizing ``path`` under ``config``.

    E.g. ``"QLinearConv 37, Conv 15"``. "Conv" counts float convs (NCHWc and
    fused ones included): in a quantized model they are QDQ groups that ORT
    did not fuse into an integer kernel.
    """
    with tempfile.TemporaryDirectory() as tmp:
        so = config.options()
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    counts: Counter = Counter()
    for op in CONV_OPS:
        counts["Conv" if op == "FusedConv" else op] += ops.get(op, 0)
    return ", ".join(f"{op} {n}" for op, n in counts.items() if n)


def open_cases(paths: Dict[str, str], configs: Sequence[SessionConfig]) -> List[Case]:
    """A session for every applicable (variant, config); failures are kept as errors."""
    cases = []
    for config in configs:
        for variant in VARIANTS:
            if not config.applies(variant):
                continue
            case = Case(variant, config, paths[variant.name])
            try:
                case.session = ort.InferenceSession(case.path, config.options(),
                                                    providers=["CPUExecutionProvider"])
                case.convs = conv_kernels(case.path, config)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                case.error = str(exc).splitlines()[0][:160]
                log(f"  {variant.name} [{config.label}] failed: {case.error}")
            cases.append(case)
    return cases


def measure(cases: List[Case], x: np.ndarray, iters: int, warmup: int, gap_s: float,
            seed: int) -> None:
    """Time ``iters`` rounds; each round runs every live case once, shuffled."""
    live = [c for c in cases if c.session is not None]
    feeds = {"input": x}
    for case in live:
        for _ in range(warmup):
            case.session.run(None, feeds)
    order = random.Random(seed)
    for i in range(iters):
        order.shuffle(live)
        for case in live:
            time.sleep(gap_s)
            start = time.perf_counter()
            case.session.run(None, feeds)
            case.times_ms.append((time.perf_counter() - start) * 1e3)
        if (i + 1) % 10 == 0:
            log(f"  round {i + 1}/{iters}")


def collect_logits(cases: List[Case], held_out: np.ndarray) -> None:
    """Run the held-out inputs through every live case."""
    for case in cases:
        if case.session is not None:
            case.logits = case.session.run(["logits"], {"input": held_out})[0]


# ----------------------------------------------------------------------- metrics

def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def agreement(logits: np.ndarray, ref: np.ndarray) -> Tuple[float, float, float]:
    """(min cosine, min cosine after removing FP32's mean logits, top-1 match rate).

    Random-weight nets give logits dominated by an input-independent offset,
    so the raw cosine is near 1 for anything sane; the centred cosine compares
    only the input-dependent part and is the more sensitive of the two.
    """
    center = ref.mean(axis=0, keepdims=True)
    return (float(_cosines(logits, ref).min()),
            float(_cosines(logits - center, ref - center).min()),
            float(np.mean(logits.argmax(1) == ref.argmax(1))))


def _reference(cases: List[Case], case: Case) -> Case:
    """The FP32 case timed with the same thread count at the default optimization level."""
    for c in cases:
        if c.variant.kind == "fp32" and c.config.threads == case.config.threads \
                and c.config.opt_level == "ALL" and not c.config.entries:
            return c
    raise LookupError("no FP32 reference")


def table(cases: List[Case], title: str) -> str:
    """Markdown table of one (model, batch) measurement."""
    fp32_size = os.path.getsize(_reference(cases, cases[0]).path)
    ref_logits = _reference(cases, cases[0]).logits
    lines = [f"### {title}", "",
             "| variant | session | median ms | IQR ms | p10 ms | x FP32 paired median [IQR] "
             "| x FP32 by p10 | size x FP32 | cos min | centred cos min | top-1 = FP32 | convs as run |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for case in cases:
        size = os.path.getsize(case.path) / fp32_size
        if case.session is None:
            lines.append(f"| {case.variant.name} | {case.config.label} | fails | | | | | {size:.3f} "
                         f"| | | | `{case.error}` |")
            continue
        t = np.array(case.times_ms)
        ref = np.array(_reference(cases, case).times_ms)
        p10, q25, q50, q75 = np.percentile(t, [10, 25, 50, 75])
        r25, r50, r75 = np.percentile(t / ref, [25, 50, 75])
        cos, ccos, top1 = agreement(case.logits, ref_logits)
        lines.append(f"| {case.variant.name} | {case.config.label} | {q50:.2f} | {q25:.2f}-{q75:.2f} "
                     f"| {p10:.2f} | {r50:.3f} [{r25:.3f}-{r75:.3f}] "
                     f"| {p10 / np.percentile(ref, 10):.3f} | {size:.3f} | {cos:.5f} | {ccos:.4f} "
                     f"| {top1:.2f} | {case.convs} |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- main

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def environment(args: argparse.Namespace, source: str, load_before: float) -> str:
    """Markdown header describing the machine and the method."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"## ONNX Runtime INT8 variants vs FP32\n\n"
            f"- CPU: {cpu}, {os.cpu_count()} logical cores; onnxruntime {ort.__version__}, "
            f"onnx {onnx.__version__}, CPUExecutionProvider\n"
            f"- 1-min load average: {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after\n"
            f"- {args.iters} interleaved rounds after {args.warmup} warm-up runs per session; "
            f"each round runs every session once in shuffled order with a {args.gap_ms:g} ms sleep "
            f"between calls\n"
            f"- x FP32 paired: median over rounds of (this session's time / FP32's time in the same "
            f"round, same thread count); x FP32 by p10: ratio of the 10th percentiles (interference "
            f"only adds time, so low percentiles are the steadier estimate); < 1 is faster than FP32\n"
            f"- calibration: {args.calib} inputs; held-out: {args.holdout} inputs; {source}\n"
            f"- weights are random (seed {args.seed}): the cosines only flag numerically broken "
            f"variants, they say nothing about accuracy\n")


@dataclass
class Prepared:
    """A model's inputs and variant files, made once per run and shared by its batches."""

    calib: np.ndarray
    held_out: np.ndarray
    source: str
    paths: Dict[str, str]


def prepare(arch: str, args: argparse.Namespace) -> Prepared:
    """Make the inputs and every variant of ``arch``."""
    meta = preprocess_metadata(ARCHS[arch][1])
    calib, held_out, source = make_inputs(meta, args.calib, args.holdout, args.seed)
    paths = prepare_model(arch, os.path.join(args.work, arch), args.seed, calib, args.reuse)
    return Prepared(calib, held_out, source, paths)


def run_case(arch: str, batch: int, args: argparse.Namespace, prepared: Prepared) -> str:
    """Measure and tabulate one (model, batch)."""
    held_out, paths = prepared.held_out, prepared.paths
    if batch > 1:
        configs = DEFAULT_CONFIGS[:1]
    else:
        configs = DEFAULT_CONFIGS + ([] if args.no_knobs else KNOB_CONFIGS)
    cases = open_cases(paths, configs)
    x = np.concatenate([held_out] * (batch // len(held_out) + 1))[:batch]
    log(f"{arch} batch {batch}: timing {sum(c.session is not None for c in cases)} sessions")
    measure(cases, x, args.iters, args.warmup, args.gap_ms / 1e3, args.seed)
    collect_logits(cases, held_out)
    return table(cases, f"{arch}, batch {batch}")


def parse_case(text: str) -> Tuple[str, int]:
    arch, _, batch = text.partition(":")
    return arch, int(batch or 1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", type=parse_case,
                        default=[("resnet50", 1), ("mobilenetv2", 1)],
                        help="arch:batch pairs, e.g. resnet50:1 mobilenetv2:1 resnet50:8")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=60.0,
                        help="sleep before each timed call; must outlast ORT's ~40 ms pool-thread spin")
    parser.add_argument("--calib", type=int, default=32, help="calibration inputs")
    parser.add_argument("--holdout", type=int, default=8, help="held-out inputs for the cosines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=os.path.join("build", "bench_int8"),
                        help="folder for the model variants")
    parser.add_argument("--no-knobs", action="store_true",
                        help="time only the 2- and 1-thread default sessions (fewer sessions per round)")
    parser.add_argument("--reuse", action="store_true", help="reuse variants already in --work")
    parser.add_argument("--md", help="also write the Markdown report here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    prepared: Dict[str, Prepared] = {}
    sections = []
    for arch, batch in args.cases:
        if arch not in prepared:
            prepared[arch] = prepare(arch, args)
        sections.append(run_case(arch, batch, args, prepared[arch]))
        log(sections[-1])  # shown as soon as it is ready; the full report goes to stdout
    report = environment(args, next(iter(prepared.values())).source, load_before) + "\n" + "\n".join(sections)
    print(report)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        with open(args.md, "w") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
