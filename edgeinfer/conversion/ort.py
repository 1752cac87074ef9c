"""ONNX Runtime recipes: FP32 (optimized graph), FP16, INT8 dynamic, INT8 static (QDQ).

All quantization is done by ``onnxruntime.quantization``; this module chooses its
settings, streams calibration data through it in bounded memory, and records what
it chose and why.
"""

import contextlib
import io
import os
import pathlib
import shutil
import warnings
from typing import NamedTuple

from ..errors import ConversionError, UsageError
from ..lazy import require
from .graph import normalize
from .recipe import Result, recipe_step, run_calibration
from .source import QUANT_OPSET, default_opset

# Ops that stay FP32 in an FP16 model: they are numerically unsafe in half
# precision (reductions over many elements, exp/log ranges, index math) or have
# no FP16 kernel in ONNX Runtime's CPU provider.
FP16_KEEP_FP32 = ("Resize", "Range", "TopK", "NonMaxSuppression", "RoiAlign", "CumSum",
                  "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceProd",
                  "ReduceLogSumExp", "LayerNormalization", "Exp", "Log", "Pow", "Div", "Sqrt",
                  "Erf", "InstanceNormalization", "GroupNormalization", "RandomNormalLike",
                  "RandomUniformLike", "Einsum")

CONV_OPS = ("Conv", "ConvTranspose")
LINEAR_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "MultiHeadAttention")
# Dynamic quantization of Conv (ConvInteger) runs far slower than FP32 on CPUs, so
# the dynamic recipe quantizes only MatMul-like ops.
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization")

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class Int8Variant(NamedTuple):
    """How INT8 tensors are typed: activation and weight types, and reduce-range."""

    name: str
    activations: str  # "int8" | "uint8"
    weights: str      # "int8" | "uint8"
    reduce_range: bool
    description: str


INT8_VARIANTS = {
    "s8s8": Int8Variant("s8s8", "int8", "int8", False,
                        "signed activations and weights (ORT's QDQ default; fast with VNNI "
                        "or ARM dot-product)"),
    "u8s8": Int8Variant("u8s8", "uint8", "int8", False,
                        "unsigned activations, signed weights (AVX2 VPMADDUBSW path; can "
                        "saturate without VNNI)"),
    "u8s8-rr": Int8Variant("u8s8-rr", "uint8", "int8", True,
                           "U8S8 with 7-bit weights (reduce-range), which cannot saturate "
                           "VPMADDUBSW on AVX2 CPUs without VNNI"),
    "u8u8": Int8Variant("u8u8", "uint8", "uint8", False,
                        "unsigned activations and weights (no saturation, slower kernels)"),
}


def default_int8_variant(features, profile):
    """Choose the INT8 variant ONNX Runtime runs best on the target CPU.

    Args:
        features: :func:`edgeinfer.profiles.cpu_features` of the target (None when the
            target is not this machine).
        profile: the target Profile.

    Returns:
        (variant name, reason)
    """
    if profile.arch == "aarch64":
        return "s8s8", ("ARM64: ONNX Runtime's S8S8 kernels use SDOT/UDOT where present and "
                        "never saturate")
    if features and features.get("vnni"):
        return "s8s8", "this CPU has VNNI: S8S8 runs at full INT8 speed without saturation"
    why = ("this CPU has AVX2 without VNNI" if features else
           "the target x86 CPU is unknown (it may lack VNNI)")
    return "u8s8-rr", (why + ": U8S8 with reduce-range avoids VPMADDUBSW saturation, "
                       "which otherwise costs accuracy")


def op_counts(model):
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def op_balance(model, has_calibration, without_calibration):
    """Count Conv-like and MatMul-like ops; a conv net must come with calibration data.

    Args:
        model: the source ``onnx.ModelProto``.
        has_calibration: whether calibration data was given.
        without_calibration: the hint's last sentence: why the recipe's calibration-free
            INT8 method is no answer for a conv net.

    Returns:
        (convs, linears, conv_heavy)

    Raises:
        UsageError: a conv-heavy model without calibration data.
    """
    counts = op_counts(model)
    convs = sum(counts.get(op, 0) for op in CONV_OPS)
    linears = sum(counts.get(op, 0) for op in LINEAR_OPS)
    conv_heavy = bool(convs) and convs >= linears
    if conv_heavy and not has_calibration:
        raise UsageError(
            "INT8 for this conv net ({} Conv, {} MatMul/Gemm) needs calibration data.".format(
                convs, linears),
            "Pass --calibration DIR (images, .npz or .npy files), or use --precision fp16 "
            "or fp32. " + without_calibration)
    return convs, linears, conv_heavy


def auto_method(model, has_calibration):
    """Pick ``static`` or ``dynamic`` INT8 for ``--method auto``, with the reason.

    Conv nets get static (dynamic ConvInteger is several times slower than FP32);
    MatMul-heavy graphs (transformers, RNNs) get dynamic.

    Raises:
        UsageError: a conv-heavy model without calibration data.
    """
    convs, linears, conv_heavy = op_balance(
        model, has_calibration, "Dynamic INT8 is not offered: it runs conv nets slower than FP32.")
    if conv_heavy:
        return "static", "conv-heavy graph ({} Conv vs {} MatMul/Gemm): static INT8".format(
            convs, linears)
    return "dynamic", ("MatMul-heavy graph ({} MatMul/Gemm vs {} Conv): dynamic INT8 quantizes "
                       "weights, activations at run time".format(linears, convs))


class ListReader(object):
    """An ONNX Runtime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds):
        self._feeds = list(feeds)
        self._index = 0

    def get_next(self):
        if self._index >= len(self._feeds):
            return None
        self._index += 1
        return self._feeds[self._index - 1]


def prepare(source_path, out_path, workdir, report=None):
    """Prepare an FP32 model for ONNX Runtime's quantizer.

    First :func:`edgeinfer.conversion.graph.normalize`: opset upgraded to 13 when
    older (per-channel Q/DQ needs it), Constant and Identity weights made plain
    initializers, nodes named, shapes inferred (symbolic, else ONNX, else none).
    Then ONNX Runtime's ``quant_pre_process`` without its symbolic step (done
    above, with fallbacks): graph optimization (fold BatchNorm, fuse constants)
    and ONNX shape inference over the optimized graph.

    Args:
        source_path: the FP32 ONNX model.
        out_path: where the prepared model is written.
        workdir: folder for intermediate files.
        report: a dict to fill with what was changed, for the manifest's
            ``quantization.graph_preparation`` (default None: not reported).

    Returns:
        out_path

    Raises:
        ConversionError: the opset cannot be upgraded to 13.
    """
    onnx = require("onnx", "INT8 conversion")
    shape_inference = require("onnxruntime.quantization.shape_inference", "INT8 conversion")
    normalized = normalize(onnx.load(source_path), QUANT_OPSET)
    if report is not None:
        report.update(normalized.record)
    graph_path = os.path.join(workdir, "normalized.onnx")
    onnx.save(normalized.model, graph_path)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            shape_inference.quant_pre_process(graph_path, out_path, skip_symbolic_shape=True)
        except Exception:
            # ONNX shape inference can fail on the optimized graph where it passed on
            # the source; the shapes normalize() inferred are still in the model.
            shape_inference.quant_pre_process(graph_path, out_path, skip_symbolic_shape=True,
                                              skip_onnx_shape=True)
    return out_path


def optimize_fp32(source_path, out_path):
    """FP32 with ONNX Runtime's basic graph optimizations applied offline.

    Only *basic* (constant folding, redundant node removal) is saved: it uses
    standard ONNX ops, so the file runs on any ONNX Runtime; the device applies
    the hardware-specific levels itself when it loads the model.
    """
    ort = require("onnxruntime", "FP32 optimization")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = out_path
    ort.InferenceSession(source_path, options, providers=["CPUExecutionProvider"])
    return out_path, {"graph_optimization": "basic (offline); the device applies the rest"}


def convert_fp16(source_path, out_path):
    """FP16 weights and compute, FP32 inputs and outputs, unsafe ops kept FP32."""
    onnx = require("onnx", "FP16 conversion")
    float16 = require("onnxconverter_common.float16", "FP16 conversion")
    model = onnx.load(source_path)
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32))
    try:
        # It warns once per tiny weight it rounds to FP16's smallest normal; that is the
        # expected cost of FP16, and the validation table measures its effect.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model16 = float16.convert_float_to_float16(model, keep_io_types=True,
                                                       op_block_list=block)
    except Exception as exc:
        raise ConversionError("FP16 conversion failed: {}".format(str(exc).splitlines()[0]),
                              "Try --precision fp32 or int8.")
    onnx.save(model16, out_path)
    kept = sorted(set(n.op_type for n in model.graph.node) & set(block))
    return out_path, {"io_types": "float32 (kept)", "ops_kept_fp32": kept}


def quantize_dynamic(prepared_path, out_path, model, variant, per_channel):
    """INT8 weights, activations quantized at run time (MatMul-like ops only)."""
    quantization = require("onnxruntime.quantization", "INT8 conversion")
    present = set(op_counts(model))
    ops = [op for op in DYNAMIC_OPS if op in present]
    if not ops:
        raise ConversionError("Dynamic INT8 found nothing to quantize: the model has no "
                              "MatMul, Gemm, Attention, LSTM or GRU op.",
                              "Use --method static with --calibration for conv nets.")
    weight = quantization.QuantType.QUInt8 if variant.weights == "uint8" else (
        quantization.QuantType.QInt8)
    quantization.quantize_dynamic(prepared_path, out_path, op_types_to_quantize=ops,
                                  per_channel=per_channel, reduce_range=variant.reduce_range,
                                  weight_type=weight)
    return out_path, {"ops_quantized": ops, "weights": variant.weights,
                      "reduce_range": variant.reduce_range, "per_channel": per_channel,
                      "skipped_conv": bool(present & set(CONV_OPS))}


def calibrate(prepared_path, batches, method, workdir, percentile=99.999):
    """Collect activation ranges with ONNX Runtime's calibrator, in bounded memory.

    ONNX Runtime's ``quantize_static`` keeps every intermediate output of every
    sample until the end (histogram methods), which is what runs calibration out of
    memory.  Here each batch is handed to the calibrator on its own, so it folds
    the batch into its ranges or histograms and drops it: peak memory is one
    batch's activations, whatever the number of samples.

    Args:
        prepared_path: the pre-processed FP32 model.
        batches: iterable of feed dicts.
        method: ``minmax`` | ``entropy`` | ``percentile``.
        workdir: where the augmented model and the range cache go.
        percentile: for ``percentile`` (default 99.999).

    Returns:
        (path of the JSON range cache, number of batches)
    """
    calibrate_mod = require("onnxruntime.quantization.calibrate", "INT8 calibration")
    kind = {"minmax": calibrate_mod.CalibrationMethod.MinMax,
            "entropy": calibrate_mod.CalibrationMethod.Entropy,
            "percentile": calibrate_mod.CalibrationMethod.Percentile}[method]
    extra = {"percentile": percentile} if method == "percentile" else {}
    calibrator = calibrate_mod.create_calibrator(
        pathlib.Path(prepared_path), augmented_model_path=os.path.join(workdir, "augmented.onnx"),
        calibrate_method=kind, extra_options=extra)
    count = 0
    # The histogram calibrators print progress lines per call; keep them off stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        for feeds in batches:
            calibrator.collect_data(ListReader([feeds]))
            count += 1
        if not count:
            raise ConversionError("Calibration received no data.", "Check --calibration.")
        ranges = calibrator.compute_data()
    cache = os.path.join(workdir, "calibration-{}.json".format(method))
    calibrate_mod.save_tensors_data(ranges, cache)
    del calibrator
    return cache, count, kind


def quantize_static(prepared_path, out_path, cache, kind, variant, per_channel, exclude=()):
    """Static INT8 in QDQ format from calibrated ranges (``quantize_static``)."""
    quantization = require("onnxruntime.quantization", "INT8 conversion")
    types = {"int8": quantization.QuantType.QInt8, "uint8": quantization.QuantType.QUInt8}
    quantization.quantize_static(
        prepared_path, out_path, calibration_data_reader=None,
        quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
        reduce_range=variant.reduce_range, activation_type=types[variant.activations],
        weight_type=types[variant.weights], calibrate_method=kind,
        nodes_to_exclude=list(exclude) or None, calibration_cache_path=cache)
    return out_path


def check_calibrate_method(name):
    if name not in CALIBRATION_METHODS:
        raise UsageError("Unknown calibration method {!r}.".format(name),
                         "Use one of: {}.".format(", ".join(CALIBRATION_METHODS)))


# The oldest ONNX Runtime that runs each opset (its release notes' opset table).
ORT_FOR_OPSET = {13: "1.7", 14: "1.10", 15: "1.11", 16: "1.12", 17: "1.13", 18: "1.14",
                 19: "1.16", 20: "1.17", 21: "1.18", 22: "1.20", 23: "1.22"}
# Static QDQ models need the QDQ fusions of 1.11 to run as INT8 kernels.
ORT_FOR_QDQ = "1.11"


def min_ort_version(opset, precision):
    """The oldest ONNX Runtime that runs a model of this opset and precision."""
    known = sorted(ORT_FOR_OPSET)
    version = ORT_FOR_OPSET.get(opset) or ORT_FOR_OPSET[known[-1] if opset > known[-1]
                                                        else known[0]]
    if precision == "int8":
        version = max(version, ORT_FOR_QDQ, key=lambda v: tuple(int(p) for p in v.split(".")))
    return version


def correct_chosen(job, prepared, out, cache, kind, variant, control):
    """Bias correction of the model the budget search chose, kept only if it measures better.

    The search compares uncorrected variants (correcting each would cost a pass
    over the calibration data per step); the chosen one is corrected afterwards,
    with the ops it keeps in FP32 still excluded, and replaces it only when the
    budget's quantity is at least as good, so the search's guarantee holds.

    Returns:
        the manifest's ``quantization.bias_correction`` report.
    """
    from .equalize import bias_correction_file
    from .metrics import evaluate
    from .sensitivity import ort_runner
    budget = job.budget
    folder = os.path.join(job.workdir, "accuracy-control")
    corrected, report = bias_correction_file(prepared, out, job.calibration_batches(),
                                             os.path.join(folder, "bias-corrected.onnx"))
    candidate = os.path.join(folder, "chosen-corrected.onnx")
    quantize_static(corrected, candidate, cache, kind, variant, job.settings.per_channel,
                    exclude=[op["name"] for op in control["kept"]])
    metric = budget.metric if budget.kind == "metric" else None
    ok, value = budget.check(evaluate(job.reference, ort_runner(candidate), metric))
    before = control["achieved"]
    better = value >= before if budget.higher_is_better else value <= before
    report["after_budget_search"] = {"achieved": value, "without": before,
                                     "kept": bool(ok and better)}
    if ok and better:
        shutil.copyfile(candidate, out)
        control["achieved"] = value
    return report


class OrtRecipe(object):
    """ONNX Runtime bundles: FP32, FP16, INT8 dynamic and INT8 static (QDQ)."""

    backend = "onnxruntime"
    # Said when INT8 is no faster than FP32 here: the alternative that is.
    slow_int8_hint = ("Ship --precision fp32 for this CPU, or run INT8 with OpenVINO (NNCF), "
                      "whose INT8 kernels are faster on x86 CPUs without VNNI (edgeinfer's "
                      "intel-cpu target).")

    def check(self, settings):
        """Refuse settings this recipe cannot honour, before any work."""
        check_calibrate_method(settings.calibrate_method)
        if settings.int8_variant != "auto" and settings.int8_variant not in INT8_VARIANTS:
            raise UsageError("Unknown INT8 variant {!r}.".format(settings.int8_variant),
                             "Use auto or one of: {}.".format(", ".join(INT8_VARIANTS)))

    def build(self, job):
        """Convert ``job.source`` as ``job.settings`` ask; return a :class:`Result`."""
        settings, source = job.settings, job.source
        out = os.path.join(job.workdir, "model.onnx")
        notes, calibration, method = [], None, "none"
        self._control = None  # the budget search's record, when a budget is given
        if settings.precision == "fp32":
            with recipe_step("FP32 graph optimization"):
                _, quant = optimize_fp32(source.path, out)
        elif settings.precision == "fp16":
            with recipe_step("FP16 conversion"):
                _, quant = convert_fp16(source.path, out)
            if job.features is not None and not job.features.get("fp16"):
                notes.append("This CPU has no native FP16 arithmetic, so FP16 halves the "
                             "model's size but does not speed it up here. FP16 is for GPUs "
                             "(Jetson) and ARM CPUs with FP16 arithmetic (ARMv8.2+).")
        elif settings.method == "qat":
            from .prequantized import normalize_file, quantization_record
            graph = {}
            with recipe_step("Preparing the Q/DQ model"):
                normalize_file(source.path, out, report=graph)
            method = "qat"
            quant = quantization_record(source.model, "QDQ (the source's Q/DQ nodes, run by "
                                                      "ONNX Runtime's QDQ fusions)")
            quant["graph_preparation"] = graph
        else:
            method, quant, calibration = self._int8(job, out, notes)
        onnx = require("onnx")
        opset = default_opset(onnx.load(out, load_external_data=False))
        return Result({"model.onnx": out}, "model.onnx", method, quant, calibration,
                      require("onnxruntime").__version__,
                      min_ort_version(opset, settings.precision), notes, self._control)

    def _int8(self, job, out, notes):
        settings, source = job.settings, job.source
        method, why = settings.method, "--method {} (asked for)".format(settings.method)
        if method == "auto":
            method, why = auto_method(source.model, job.calibration is not None)
        elif method == "dynamic" and op_counts(source.model).get("Conv"):
            notes.append("Dynamic INT8 leaves Conv ops in FP32: dynamic ConvInteger runs "
                         "several times slower than FP32. Use --method static with "
                         "--calibration to quantize them.")
        if method == "static" and job.calibration is None:
            raise UsageError("Static INT8 needs calibration data.",
                             "Pass --calibration DIR (images, .npz or .npy files).")
        name, name_why = settings.int8_variant, "--int8-variant {} (asked for)".format(
            settings.int8_variant)
        if name == "auto":
            name, name_why = default_int8_variant(job.features, job.profile)
        variant = INT8_VARIANTS[name]
        graph = {}
        with recipe_step("Pre-processing for quantization"):
            prepared = prepare(source.path, os.path.join(job.workdir, "prepared.onnx"),
                               job.workdir, report=graph)
        quant = {"method_reason": why, "variant": name, "variant_reason": name_why,
                 "activations": variant.activations, "weights": variant.weights,
                 "reduce_range": variant.reduce_range, "per_channel": settings.per_channel,
                 "format": "QDQ" if method == "static" else "QOperator (dynamic)",
                 "preprocessing": "onnxruntime quant_pre_process", "graph_preparation": graph}
        if method == "dynamic":
            with recipe_step("Dynamic INT8 quantization"):
                _, extra = quantize_dynamic(prepared, out, source.model, variant,
                                            settings.per_channel)
            quant.update(extra)
            if job.budget is not None:
                from .control import check_whole
                from .sensitivity import ort_runner
                self._control = check_whole(
                    job, out, ort_runner, "Dynamic",
                    "Use --method static with --calibration: edgeinfer then keeps the most "
                    "sensitive ops in FP32 until the budget holds.")
            return method, quant, None
        from .equalize import bias_correction_file, equalize_file
        with recipe_step("Cross-layer equalisation"):
            # Issue 4, req. 6: BN-folded depthwise weights spread too far for one
            # per-tensor scale; equalising first makes them fit (exact in FP32).
            prepared, quant["equalization"] = equalize_file(
                prepared, os.path.join(job.workdir, "equalized.onnx"), settings.per_channel)
        with recipe_step("Calibration"):
            (cache, _, kind), summary = run_calibration(
                job, lambda batches: calibrate(prepared, batches, settings.calibrate_method,
                                               job.workdir))
        if job.budget is not None:
            from .control import search_ort
            with recipe_step("Accuracy control"):
                self._control = search_ort(job, prepared, cache, kind, variant, out)
            with recipe_step("Bias correction"):
                quant["bias_correction"] = correct_chosen(job, prepared, out, cache, kind,
                                                          variant, self._control)
        else:
            with recipe_step("Static INT8 quantization"):
                quantize_static(prepared, out, cache, kind, variant, settings.per_channel)
            with recipe_step("Bias correction"):
                # ONNX Runtime has none (NNCF does it by default): remove the mean shift
                # the INT8 weights add, then quantize the corrected model with the same ranges.
                corrected, quant["bias_correction"] = bias_correction_file(
                    prepared, out, job.calibration_batches(),
                    os.path.join(job.workdir, "bias-corrected.onnx"))
                quantize_static(corrected, out, cache, kind, variant, settings.per_channel)
        quant["calibration_method"] = settings.calibrate_method
        return method, quant, summary
