"""TensorRT recipe (issue 5): a TensorRT-ready ONNX and the build settings a Jetson needs.

A TensorRT engine is specific to the GPU and to the TensorRT version, so it is
not built here: the bundle carries an ONNX model that TensorRT's parser takes,
and the manifest's ``engine`` record says how the device builds it (once, then
cached).  What each precision ships:

* **FP32** — the prepared FP32 graph (:func:`edgeinfer.conversion.ort.prepare`:
  opset >= 13, constants folded, BatchNorm folded, every node named).
* **FP16** — the same FP32 graph and the ``fp16`` builder flag: TensorRT
  converts weights and picks FP16 kernels itself when it builds, so weights are
  not converted here.  Layers the user keeps in FP32 (``--ignore-node``,
  ``--ignore-op-type``) are listed in ``fp32_layers``.
* **INT8** — explicit quantization: a Q/DQ graph that obeys TensorRT's rules
  (:mod:`edgeinfer.conversion.qdq_rules`, checked before the bundle is written),
  and the ``int8`` flag.  ONNX Runtime's quantizer makes it from this recipe's
  own calibration (``ort.prepare`` and ``ort.calibrate``, the ONNX Runtime
  recipe's functions) with TensorRT's settings (:func:`tensorrt_options`:
  symmetric INT8, FP32 weights under Q/DQ, per-channel weights on the
  output-channel axis, Q/DQ on op inputs only, biases left FP32); then
  :func:`place_for_tensorrt` fixes where ONNX Runtime's placement differs from
  TensorRT's: ops TensorRT does not fuse with Q/DQ read FP32 tensors again
  (ONNX Runtime rewires every reader of a quantized tensor), a residual Add gets
  Q/DQ on its residual input (TensorRT fuses the add into the convolution that
  feeds its other input), and unused opset imports are dropped.  With an
  accuracy budget the search of :func:`edgeinfer.conversion.control.search_ort`
  keeps the most sensitive ops out of Q/DQ; they are ``fp32_layers``.
  ``calibration.cache`` holds the same calibration as TensorRT's own cache
  (:mod:`edgeinfer.calibration_cache`) for TensorRT 8.x builds with implicit
  quantization.

Validation runs ``model.onnx`` with ONNX Runtime's CPU provider
(``validation_backend``): for INT8 the Q/DQ arithmetic (the same scales and
rounding) approximates TensorRT's INT8 kernels, which accumulate in INT32 and
fuse differently; FP16 rounding is not simulated (the FP32 graph is run).

The manifest's ``engine`` record (key ``engine``)::

    {
      "builder": "tensorrt",
      "flags": ["int8"] | ["fp16"] | [],   # BuilderFlag names to set
      "quantization": "explicit" | null,   # explicit: Q/DQ nodes in model.onnx
      "fp32_layers": [{"name": ..., "op_type": ...}],  # pin to FP32 (layer precision
                                           # + OBEY_PRECISION_CONSTRAINTS); TensorRT
                                           # names layers after ONNX nodes
      "profiles": [{"input": name, "min": [...], "opt": [...], "max": [...]}],
                                           # one optimization profile, for the inputs
                                           # with dynamic dims ([] when all are fixed)
      "workspace_mb": int | null,          # builder workspace cap from the profile
      "min_tensorrt": "8.0",               # oldest TensorRT that builds it
      "target_tensorrt": "8.5.2",          # the TensorRT of the target profile
      "implicit": null | {                 # INT8 only: implicit quantization (8.x)
          "calibration_cache": "calibration.cache",
          "algorithm": "MinMaxCalibration" | "EntropyCalibration2",
          "header": "TRT-8502-MinMaxCalibration",
          "graph": "model.onnx without its QuantizeLinear/DequantizeLinear pairs"}
    }

Workstation side: onnx and onnxruntime are imported when a model is converted;
TensorRT is never imported here.
"""

import os
import shutil
from typing import NamedTuple, Optional

from ..errors import ConversionError, UsageError
from ..lazy import require
# workspace_mb is imported for this module's users: the recipe's suggestion is the profile's.
from ..profiles import resolve_target, workspace_mb  # noqa: F401
from . import ort as ort_recipe
from .recipe import Result, recipe_step, run_calibration
from .source import default_opset

# Ops TensorRT runs as INT8 kernels when their inputs come through Q/DQ.
INT8_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# An Add fused into one of these may take its residual input in INT8.
RESIDUAL_PRODUCERS = ("Conv", "ConvTranspose")
# Q/DQ (explicit quantization) came with TensorRT 8.0; edgeinfer's TensorRT backend
# is written for the 8.x and 10.x Python APIs.
MIN_TENSORRT = "8.0"
# The calibrator TensorRT reads the cache with, per calibration method; percentile
# ranges have no TensorRT calibrator of their own, and the header only names the class.
CACHE_ALGORITHMS = {"minmax": "MinMaxCalibration", "entropy": "EntropyCalibration2",
                    "percentile": "EntropyCalibration2"}
# The newest ONNX opset each TensorRT's parser documents (onnx-tensorrt
# docs/operators.md of the release): newer opsets still import op by op.
PARSER_OPSETS = (((8, 2), 13), ((8, 5), 17), ((9, 2), 19))


class JetsonGpu(NamedTuple):
    """What the recipe needs to know of a target's GPU and software.

    Attributes:
        arch: the GPU architecture, e.g. ``"Maxwell"``.
        compute: its compute capability, e.g. ``"5.3"``.
        tensorrt: the TensorRT of the JetPack the profile stands for.
        jetpack: that JetPack.
    """

    arch: Optional[str]
    compute: Optional[str]
    tensorrt: str
    jetpack: Optional[str]


# For a profile without GPU data (a CPU profile): TensorRT of the generic jetson-orin.
DEFAULT_GPU = JetsonGpu(None, None, "8.5.2", None)


def target_gpu(profile):
    """The :class:`JetsonGpu` of a profile, from its data (:mod:`edgeinfer.profiles`)."""
    return JetsonGpu(getattr(profile, "gpu_arch", None) or DEFAULT_GPU.arch,
                     getattr(profile, "compute_capability", None) or DEFAULT_GPU.compute,
                     getattr(profile, "tensorrt", None) or DEFAULT_GPU.tensorrt,
                     getattr(profile, "jetpack", None) or DEFAULT_GPU.jetpack)


def _version(text):
    return tuple(int(p) for p in str(text).split(".")[:2])


def parser_max_opset(version):
    """The newest opset the parser of this TensorRT version documents, or None (unknown)."""
    found = None
    for release, opset in PARSER_OPSETS:
        if _version(version) >= release:
            found = opset
    return found


def tensorrt_options(model):
    """ONNX Runtime ``quantize_static`` ``extra_options`` that make TensorRT's Q/DQ.

    Args:
        model: the prepared ``onnx.ModelProto`` (its op types).

    Returns:
        the options dict.
    """
    return {
        # TensorRT quantizes symmetrically: INT8 with zero point 0 everywhere.
        "ActivationSymmetric": True, "WeightSymmetric": True,
        # TensorRT has no INT32 DequantizeLinear; it folds FP32 biases into the kernel.
        "QuantizeBias": False,
        # FP32 weights under Q -> DQ: TensorRT 8.x quantizes weights itself.
        "AddQDQPairToWeight": True,
        # Q/DQ on op inputs only: TensorRT fuses an op's output quantization from the
        # next op's input Q/DQ, and a Q/DQ on an output nobody quantizes is a reformat.
        "OpTypesToExcludeOutputQuantization": sorted(set(n.op_type for n in model.graph.node)),
        # Weight scales per output channel (Gemm: ONNX Runtime picks 0 with transB, else 1).
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1, "MatMul": -1},
        "DedicatedQDQPair": False,
    }


def load_ranges(cache):
    """The calibrated ranges in ONNX Runtime's JSON cache: dict tensor -> (low, high)."""
    calibrate_mod = require("onnxruntime.quantization.calibrate", "INT8 calibration")
    data = calibrate_mod.load_tensors_data(cache)
    ranges = {}
    for name, tensor in data.data.items():
        low, high = tensor.range_value
        ranges[name] = (float(min(low.ravel())), float(max(high.ravel())))
    return ranges


def _quantized(node, producer):
    """Whether ``node`` reads its first input through a DequantizeLinear (runs in INT8)."""
    parent = producer.get(node.input[0]) if node.input else None
    return parent is not None and parent.op_type == "DequantizeLinear"


def quantize_residual_adds(model, ranges, excluded=()):
    """Put Q/DQ on the residual input of each Add that TensorRT fuses into a convolution.

    ONNX Runtime leaves an Add alone when it is not asked to quantize Adds, and
    quantizes both of its inputs when it is.  TensorRT fuses ``Conv -> Add`` into
    the convolution when the Add's other input (the residual) is INT8, so that
    input, and only it, gets a Q/DQ.  An Add is changed when one input comes
    straight from a Conv/ConvTranspose that is itself quantized (with two, the
    later one in graph order, the deeper branch, is fused); the residual reuses
    a Q/DQ already on that tensor, else gets one with its calibrated range.

    Args:
        model: the Q/DQ ``onnx.ModelProto``, changed in place.
        ranges: dict tensor -> (low, high) from the calibration.
        excluded: names of Add nodes to leave alone (kept in FP32).

    Returns:
        the number of Adds changed.
    """
    onnx = require("onnx", "INT8 conversion")
    from ..calibration_cache import scale_for_range
    graph = model.graph
    constants = set(t.name for t in graph.initializer)
    constants.update(n.output[0] for n in graph.node if n.op_type == "Constant")
    producer, order, dequantized = {}, {}, {}
    for index, node in enumerate(graph.node):
        order[id(node)] = index
        for name in node.output:
            producer[name] = node
    for node in graph.node:
        parent = producer.get(node.input[0]) if node.input else None
        if (node.op_type == "DequantizeLinear" and parent is not None
                and parent.op_type == "QuantizeLinear" and parent.input[0] not in constants):
            dequantized.setdefault(parent.input[0], node.output[0])
    inserts, changed = {}, 0
    for node in graph.node:
        if (node.op_type != "Add" or node.name in excluded or len(node.input) != 2
                or node.input[0] == node.input[1] or set(node.input) & constants):
            continue
        fused = [producer.get(name) for name in node.input]
        fusible = [p for p in fused if p is not None and p.op_type in RESIDUAL_PRODUCERS
                   and _quantized(p, producer)]
        if not fusible:
            continue
        main = max(fusible, key=lambda p: order[id(p)])
        slot = 1 if fused[0] is main else 0
        residual = node.input[slot]
        if residual not in dequantized:
            if residual not in ranges:
                continue
            base = residual.replace("/", "_").strip("_") + "_residual"
            scale = onnx.helper.make_tensor(base + "_scale", onnx.TensorProto.FLOAT, [],
                                            [scale_for_range(*ranges[residual])])
            zero = onnx.helper.make_tensor(base + "_zero_point", onnx.TensorProto.INT8, [], [0])
            graph.initializer.extend([scale, zero])
            inserts[id(node)] = [
                onnx.helper.make_node("QuantizeLinear", [residual, scale.name, zero.name],
                                      [base + "_q"], name=base + "_QuantizeLinear"),
                onnx.helper.make_node("DequantizeLinear", [base + "_q", scale.name, zero.name],
                                      [base + "_dq"], name=base + "_DequantizeLinear")]
            dequantized[residual] = base + "_dq"
        node.input[slot] = dequantized[residual]
        changed += 1
    if inserts:
        nodes = []
        for node in graph.node:
            nodes.extend(inserts.get(id(node), ()))
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
    return changed


def release_unfused(model, excluded=()):
    """Give ops TensorRT does not fuse with Q/DQ, and ops kept in FP32, their FP32 input back.

    ONNX Runtime's quantizer, once it quantizes a tensor for one op, rewires every
    reader of the tensor to the DequantizeLinear output (``DedicatedQDQPair`` only
    changes that when several quantized ops read it): a LayerNormalization or a
    transformer's residual Add next to a quantized MatMul then reads INT8-rounded
    values through a Q/DQ that TensorRT cannot fuse into it.  Those readers get
    the original tensor back; a Q/DQ pair left with no reader is removed.

    Args:
        model: the Q/DQ ``onnx.ModelProto``, changed in place.
        excluded: names of nodes kept in FP32, which read FP32 whatever their type.

    Returns:
        the number of inputs given back.
    """
    graph = model.graph
    constants = set(t.name for t in graph.initializer)
    producer = dict((out, node) for node in graph.node for out in node.output)
    source = {}
    for node in graph.node:
        parent = producer.get(node.input[0]) if node.input else None
        if (node.op_type == "DequantizeLinear" and parent is not None
                and parent.op_type == "QuantizeLinear" and parent.input[0] not in constants):
            source[node.output[0]] = parent.input[0]
    released = 0
    for node in graph.node:
        if node.op_type in INT8_OPS and node.name not in excluded:
            continue
        for slot, name in enumerate(node.input):
            if name in source:
                node.input[slot] = source[name]
                released += 1
    # Drop pairs nobody reads any more (DequantizeLinear first, then its QuantizeLinear).
    outputs = set(o.name for o in graph.output)
    for kind in ("DequantizeLinear", "QuantizeLinear"):
        read = set(name for node in graph.node for name in node.input) | outputs
        dead = [node for node in graph.node if node.op_type == kind and node.output[0] not in read]
        for node in dead:
            graph.node.remove(node)
    return released


def tidy_opsets(model):
    """Drop opset imports of domains no node uses (ONNX Runtime's optimizer adds several)."""
    used = set(n.domain for n in model.graph.node) | {"", "ai.onnx"}
    keep = [entry for entry in model.opset_import if entry.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def place_for_tensorrt(path, ranges, excluded=()):
    """Rewrite a Q/DQ model from ONNX Runtime in place where TensorRT's rules differ.

    :func:`release_unfused`, then :func:`quantize_residual_adds`, then
    :func:`tidy_opsets`.

    Args:
        path: the model, rewritten in place.
        ranges: dict tensor -> (low, high) from the calibration.
        excluded: node names kept in FP32.

    Returns:
        the number of residual Adds given Q/DQ.
    """
    onnx = require("onnx", "INT8 conversion")
    model = onnx.load(path)
    release_unfused(model, excluded)
    changed = quantize_residual_adds(model, ranges, excluded)
    tidy_opsets(model)
    onnx.save(model, path)
    return changed


def activation_scales(model, ranges):
    """INT8 scales of the model's activations, graph order: dict tensor -> scale."""
    from ..calibration_cache import scale_for_range
    initializers = set(t.name for t in model.graph.initializer)
    names = [v.name for v in model.graph.input if v.name not in initializers]
    names += [out for node in model.graph.node for out in node.output]
    scales = {}
    for name in names:
        if name in ranges and name not in scales:
            scales[name] = scale_for_range(*ranges[name])
    return scales


def observed_dims(job):
    """Sizes seen for each dynamic input dim on the evaluation data: {(input, axis): set}."""
    dynamic = [(spec.name, axis) for spec in job.source.inputs
               for axis, dim in enumerate(spec.shape) if not (isinstance(dim, int) and dim > 0)]
    seen = dict((key, set()) for key in dynamic)
    if dynamic and job.reference is not None:
        for feeds, _, _ in job.reference.items():
            for name, axis in dynamic:
                if name in feeds:
                    seen[(name, axis)].add(int(feeds[name].shape[axis]))
    return seen


def optimization_profiles(inputs, seen, batch):
    """One TensorRT optimization profile for the inputs with dynamic dims.

    The first dim, when dynamic, is the batch: from 1 to the batch size the
    conversion used (opt = max, the size a device batches to).  Other dynamic dims
    take the range seen on the evaluation data (1 when nothing was seen).

    Args:
        inputs: the model's input :class:`~edgeinfer.tensors.TensorSpec` s.
        seen: :func:`observed_dims`'s dict.
        batch: the batch size used for calibration and validation.

    Returns:
        list of ``{"input", "min", "opt", "max"}`` (empty when every dim is fixed).
    """
    profiles = []
    for spec in inputs:
        low, opt, high, dynamic = [], [], [], False
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and dim > 0:
                sizes = (dim, dim, dim)
            else:
                dynamic = True
                seen_sizes = seen.get((spec.name, axis)) or {1}
                top = max(seen_sizes) if axis else max([batch] + list(seen_sizes))
                sizes = (1 if axis == 0 else min(seen_sizes), top, top)
            for column, size in zip((low, opt, high), sizes):
                column.append(size)
        if dynamic:
            profiles.append({"input": spec.name, "min": low, "opt": opt, "max": high})
    return profiles


def kept_layers(model, settings):
    """The nodes the user keeps in FP32 (``--ignore-node``, ``--ignore-op-type``).

    Returns:
        list of ``{"name", "op_type"}`` in graph order.

    Raises:
        UsageError: a name or op type the prepared model does not have.
    """
    # The API takes one name as a plain string too.
    names, types = [(v,) if isinstance(v, str) else tuple(v or ())
                    for v in (settings.ignored_names, settings.ignored_types)]
    present = dict((n.name, n.op_type) for n in model.graph.node)
    for flag, wanted, known in (("--ignore-node", names, present),
                                ("--ignore-op-type", types, set(present.values()))):
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise UsageError("{} {}: the prepared model has no such {}.".format(
                flag, unknown[0], "node" if flag == "--ignore-node" else "op type"),
                "It has: {}{}.".format(", ".join(sorted(known)[:12]),
                                       " ..." if len(known) > 12 else ""))
    return [{"name": n.name, "op_type": n.op_type} for n in model.graph.node
            if n.name in names or n.op_type in types]


class TensorRtRecipe(object):
    """TensorRT bundles for Jetson: FP32, FP16 (builder flag) and explicit INT8 (Q/DQ)."""

    backend = "tensorrt"
    # TensorRT needs an NVIDIA GPU: ONNX Runtime runs the same ONNX for validation.
    validation_backend = "onnxruntime"
    knobs = ("ignored_names", "ignored_types")
    methods = ("auto", "static")
    slow_int8_hint = ("That latency is ONNX Runtime's on this CPU; what counts is TensorRT's "
                      "on the Jetson's GPU: measure it there with `edgeinfer bench`.")

    def check(self, settings):
        """Refuse settings TensorRT cannot honour, before any work.

        Raises:
            UsageError: INT8 on a GPU without fast INT8 (Jetson Nano), dynamic INT8,
                an INT8 variant other than symmetric signed, or an unknown
                calibration method.
        """
        profile = resolve_target(settings.target)
        if settings.precision == "int8" and "int8" not in profile.precisions:
            why = getattr(profile, "int8_note", None) or "its GPU has no fast INT8 path"
            raise UsageError("INT8 is not fast on {}: {}.".format(profile.name, why),
                             "Use --precision {}, {}'s fast precision.".format(
                                 profile.precisions[0], profile.name))
        ort_recipe.check_calibrate_method(settings.calibrate_method)
        if settings.precision == "int8" and settings.method == "dynamic":
            raise UsageError("TensorRT has no dynamic INT8: it runs static INT8 from "
                             "calibrated scales.",
                             "Use --method static (or auto) with --calibration DIR.")
        if settings.int8_variant not in ("auto", "s8s8"):
            raise UsageError("--int8-variant {} does not apply to TensorRT, which quantizes "
                             "INT8 symmetrically (signed, zero point 0).".format(
                                 settings.int8_variant),
                             "Use --int8-variant auto or s8s8.")

    def build(self, job):
        """Convert ``job.source`` as ``job.settings`` ask; return a :class:`Result`."""
        onnx = require("onnx", "TensorRT conversion")
        settings, profile = job.settings, job.profile
        gpu = target_gpu(profile)
        out = os.path.join(job.workdir, "model.onnx")
        graph = {}
        with recipe_step("Pre-processing for TensorRT"):
            if settings.method == "qat":
                # No graph optimization: it may fold a weight's Q/DQ into INT8 constants.
                from .prequantized import normalize_file
                prepared = normalize_file(job.source.path,
                                          os.path.join(job.workdir, "prepared.onnx"), graph)
            else:
                prepared = ort_recipe.prepare(job.source.path,
                                              os.path.join(job.workdir, "prepared.onnx"),
                                              job.workdir, report=graph)
        model = onnx.load(prepared)
        kept = kept_layers(model, settings)
        notes = []
        quant = {"preprocessing": "onnxruntime quant_pre_process", "graph_preparation": graph}
        files, method = {"model.onnx": out}, "none"
        calibration = control = implicit = None
        if settings.method == "qat":
            method, implicit = "qat", None
            self._prequantized(job, model, gpu, out, quant, notes)
        elif settings.precision == "int8":
            method, calibration, control, implicit = self._int8(job, prepared, model, kept, gpu,
                                                                out, quant, files)
            searched = (control or {}).get("fp32_layers") or []
            kept = kept + [layer for layer in searched if layer not in kept]
            notes.append("Validated with ONNX Runtime's CPU provider running the Q/DQ graph: "
                         "the same scales and rounding as TensorRT's INT8, an approximation "
                         "of its kernels (INT32 accumulation, other fusions). The engine is "
                         "built and timed on the device.")
        else:
            tidy_opsets(model)
            onnx.save(model, out)
            quant["format"] = "FP32 ONNX for TensorRT's builder"
            if settings.precision == "fp16":
                quant["fp16"] = "builder flag: TensorRT converts weights and picks FP16 kernels"
                notes.append("Validated in FP32 with ONNX Runtime: TensorRT converts the model "
                             "to FP16 when it builds the engine on the device, so FP16 rounding "
                             "is not in these numbers.")
        opset = default_opset(onnx.load(out, load_external_data=False))
        newest = parser_max_opset(gpu.tensorrt)
        if newest is not None and opset > newest:
            notes.append("The model has opset {}, newer than TensorRT {}'s parser documents "
                         "(up to {}); it imports op by op and usually works. If the engine "
                         "build fails on the device, export the model with opset {}.".format(
                             opset, gpu.tensorrt, newest, newest))
        # INT8 sets the INT8 flag alone: layers outside Q/DQ run in FP32, as validated here.
        engine = {
            "builder": "tensorrt", "flags": [] if settings.precision == "fp32"
            else [settings.precision],
            "quantization": "explicit" if settings.precision == "int8" else None,
            "fp32_layers": list(kept),
            "profiles": optimization_profiles(job.source.inputs, observed_dims(job), job.batch),
            "workspace_mb": workspace_mb(profile), "min_tensorrt": MIN_TENSORRT,
            "target_tensorrt": gpu.tensorrt, "implicit": implicit}
        return Result(files, "model.onnx", method, quant, calibration, None, MIN_TENSORRT,
                      notes, control, engine)

    def _prequantized(self, job, model, gpu, out, quant, notes):
        """Explicit INT8 from the source's own Q/DQ (QAT): check TensorRT's rules, keep the scales.

        Raises:
            ConversionError: the Q/DQ breaks a rule TensorRT's parser enforces
                (asymmetric or UINT8 Q/DQ, per-channel activations, ...), explained.
        """
        from .prequantized import quantization_record
        from .qdq_rules import check_trt_qdq, describe
        onnx = require("onnx", "TensorRT conversion")
        tidy_opsets(model)
        onnx.save(model, out)
        # Per-tensor weights are the user's trained choice, which TensorRT takes; INT8
        # weight constants need TensorRT 10.
        violations = check_trt_qdq(model, per_channel=False,
                                   fp32_weights=_version(gpu.tensorrt) < (10, 0))
        slow = [v for v in violations if v.rule == "placement"]
        broken = [v for v in violations if v.rule != "placement"]
        if broken:
            rules = set(v.rule for v in broken)
            why = ("TensorRT quantizes symmetrically: signed INT8 with zero point 0, so "
                   "asymmetric or UINT8 Q/DQ (e.g. ONNX Runtime's U8 activations or "
                   "PyTorch's default affine quint8) cannot be built into an engine."
                   if rules & {"zero-point", "int8"} else
                   "TensorRT {}'s ONNX parser refuses such Q/DQ.".format(gpu.tensorrt))
            raise ConversionError("{} breaks TensorRT's Q/DQ rules: {}. {}".format(
                os.path.basename(job.source.path), describe(broken), why),
                "Export it with symmetric INT8 (edgeinfer.qat does, as does NVIDIA's "
                "pytorch-quantization), or convert it for --target cpu or intel-cpu, which "
                "run asymmetric INT8.")
        if slow:
            notes.append("TensorRT runs {} Q/DQ node(s) of this model outside a fused INT8 "
                         "kernel (slower than FP16 there): {}.".format(len(slow), describe(slow)))
        quant.update(quantization_record(job.source.model, "QDQ (TensorRT explicit "
                                                           "quantization, the source's scales)"))
        quant["rules"] = ("TensorRT Q/DQ rules checked (edgeinfer.conversion.qdq_rules): {} "
                          "violations".format(len(violations)))
        notes.append("Validated with ONNX Runtime's CPU provider running the Q/DQ graph: the "
                     "same scales and rounding as TensorRT's INT8, an approximation of its "
                     "kernels. The engine is built and timed on the device.")

    def _int8(self, job, prepared, model, kept, gpu, out, quant, files):
        """Explicit INT8: calibrate, quantize for TensorRT, check the rules, write the cache."""
        from ..calibration_cache import header, write_cache
        from .qdq_rules import check_trt_qdq, describe
        from .sensitivity import QdqBuilder
        settings = job.settings
        if not any(n.op_type in INT8_OPS for n in model.graph.node):
            raise ConversionError("TensorRT INT8 found nothing to quantize: the model has no "
                                  "Conv, ConvTranspose, MatMul or Gemm op.",
                                  "Use --precision fp16.")
        if job.calibration is None:
            raise UsageError("TensorRT INT8 needs calibration data.",
                             "Pass --calibration DIR (images, .npz or .npy files), or use "
                             "--precision fp16, which needs none.")
        with recipe_step("Calibration"):
            (cache, _, kind), summary = run_calibration(
                job, lambda batches: ort_recipe.calibrate(prepared, batches,
                                                          settings.calibrate_method, job.workdir))
        ranges = load_ranges(cache)
        excluded = [layer["name"] for layer in kept]
        options = {"exclude": excluded, "extra_options": tensorrt_options(model),
                   "op_types": list(INT8_OPS),
                   "finish": lambda path, skip: place_for_tensorrt(path, ranges, skip)}
        variant = ort_recipe.INT8_VARIANTS["s8s8"]
        control = None
        if job.budget is not None:
            from .control import search_ort
            with recipe_step("Accuracy control"):
                control = search_ort(job, prepared, cache, kind, variant, out,
                                     builder_options=options)
        else:
            folder = os.path.join(job.workdir, "tensorrt-int8")
            os.makedirs(folder, exist_ok=True)
            builder = QdqBuilder(prepared, cache, kind, variant, settings.per_channel, folder,
                                 **options)
            with recipe_step("Static INT8 quantization for TensorRT"):
                shutil.copyfile(builder.build(), out)
        qdq = require("onnx").load(out)
        violations = check_trt_qdq(qdq, per_channel=settings.per_channel)
        if violations:
            raise ConversionError("The INT8 model breaks TensorRT's Q/DQ rules: {}.".format(
                describe(violations)), "Please report it with --debug output; --precision "
                                       "fp16 needs no Q/DQ.")
        counts = ort_recipe.op_counts(qdq)
        algorithm = CACHE_ALGORITHMS[settings.calibrate_method]
        files["calibration.cache"] = write_cache(
            os.path.join(job.workdir, "calibration.cache"), activation_scales(model, ranges),
            gpu.tensorrt, algorithm)
        quant.update({
            "format": "QDQ (TensorRT explicit quantization)", "variant": "s8s8",
            "variant_reason": "TensorRT: symmetric INT8 activations and weights, zero point 0",
            "activations": "int8", "weights": "int8 (FP32 under QuantizeLinear)",
            "per_channel": settings.per_channel, "calibration_method": settings.calibrate_method,
            "method_reason": "TensorRT runs static INT8 from calibrated scales",
            "ops_quantized": sorted(op for op in INT8_OPS if op in counts),
            "qdq_nodes": counts.get("QuantizeLinear", 0) + counts.get("DequantizeLinear", 0),
            "residual_adds": _residual_adds(qdq),
            "rules": "TensorRT Q/DQ rules checked (edgeinfer.conversion.qdq_rules): 0 violations",
            "validated_with": "ONNX Runtime CPU running the Q/DQ graph: the same scales and "
                              "rounding as TensorRT's INT8, an approximation of its kernels "
                              "(INT32 accumulation, fusions)"})
        implicit = {"calibration_cache": "calibration.cache", "algorithm": algorithm,
                    "header": header(gpu.tensorrt, algorithm),
                    "graph": "model.onnx without its QuantizeLinear/DequantizeLinear pairs "
                             "(its weights are FP32, its tensor names the cache's)"}
        return "static", summary, control, implicit


def _residual_adds(model):
    producer = dict((out, n.op_type) for n in model.graph.node for out in n.output)
    return sum(1 for n in model.graph.node if n.op_type == "Add"
               and any(producer.get(name) == "DequantizeLinear" for name in n.input))
