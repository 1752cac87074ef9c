"""OpenVINO recipes: FP32 IR, FP16 IR, INT8 static (NNCF) and INT8 weight-only (NNCF).

The IR is made by ``openvino.convert_model`` and written by ``openvino.save_model``
as ``model.xml`` + ``model.bin``; INT8 is done by NNCF (``nncf.quantize`` with the
same calibration data the ONNX Runtime recipe reads, ``nncf.compress_weights``
for weight-only).  This module chooses NNCF's settings from the user's knobs,
feeds it the calibration samples, and records what it chose and why.

Both frameworks come in through :func:`edgeinfer.lazy.require`: openvino from the
``[openvino]`` extra, nncf from ``[convert]``.
"""

import contextlib
import inspect
import io
import logging
import os
import re

from ..errors import ConversionError, UsageError
from ..lazy import require
from ..runtime.backends.openvino import record_specs, weights_name
from . import KNOB_FLAGS as FLAGS
from .ort import op_balance, op_counts
from .recipe import Result, recipe_step, run_calibration

# The knobs of :class:`~edgeinfer.conversion.Settings` this recipe takes (the pipeline
# refuses them for targets whose recipe does not list them), and which of them only
# static INT8 (nncf.quantize) reads.
KNOBS = ("preset", "model_type", "fast_bias_correction", "subset_size", "ignored_names",
         "ignored_types")
STATIC_KNOBS = ("preset", "model_type", "fast_bias_correction", "subset_size")

# ONNX op types as the OpenVINO ops they become, so --ignore-op-type takes either name.
ONNX_TO_OPENVINO_TYPES = {
    "Conv": ("Convolution", "GroupConvolution"),
    "ConvTranspose": ("ConvolutionBackpropData", "GroupConvolutionBackpropData"),
    "Gemm": ("MatMul",), "Mul": ("Multiply",), "Sub": ("Subtract",), "Div": ("Divide",),
    "Pow": ("Power",), "LayerNormalization": ("MVN",), "Relu": ("ReLU",),
    "AveragePool": ("AvgPool",), "GlobalAveragePool": ("ReduceMean",),
    "GlobalMaxPool": ("ReduceMax",), "Sum": ("Add",),
}

# The OpenVINO release that introduced each operation set (OpenVINO's "Available
# Operation Sets" table).  An IR is read by any release that knows every op version
# in it; save_model writes IR v11, read since 2022.1 (OpenVINO API 2.0).
OPSET_RELEASES = {1: "2020.1", 2: "2020.2", 3: "2020.4", 4: "2021.1", 5: "2021.2",
                  6: "2021.3", 7: "2021.4", 8: "2022.1", 9: "2022.2", 10: "2022.3",
                  11: "2023.0", 12: "2023.1", 13: "2023.2", 14: "2024.0", 15: "2024.5"}
IR_V11_RELEASE = "2022.1"

# On CPUs without VNNI or AMX, OpenVINO's INT8 MatMul kernels are no faster than FP32 on
# transformers.  Measured on the AVX2 EPYC of docs/BENCHMARKS.md ("OpenVINO recipes",
# the 2-layer transformer at batch 1, 11 interleaved measurements: three benchmark runs
# and eight rounds of 300-400 shuffled, paired calls): static INT8 with model type
# transformer 0.91-1.08x the OpenVINO FP32 latency (median 1.02x; cosine 0.99982),
# weight-only 1.00-1.06x (cosine 0.99999, 0.31x the size); neither is reliably faster than
# FP32, nor static than weight-only.  So --method auto gives MatMul-heavy graphs weight-only
# INT8 (more accurate, smaller, no calibration needed) unless the CPU has VNNI/AMX.
INT8_MATMUL_FEATURES = ("vnni", "amx")


def _version_key(version):
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


def release_of(version):
    """``"2026.4.1-22982-..."`` -> ``"2026.4"``."""
    return ".".join(re.findall(r"\d+", version)[:2])


def min_openvino_version(xml_path, installed):
    """The oldest OpenVINO that reads the IR at ``xml_path``.

    The newest operation set any layer uses decides it (each opset shipped with one
    release; see :data:`OPSET_RELEASES`), never older than IR v11's 2022.1.  A layer
    of an opset newer than the table, or of no public opset, is only known to be read
    by the ``installed`` release, so that is the answer then.
    """
    with open(xml_path) as handle:
        head = handle.read(4096)
        handle.seek(0)
        versions = set(re.findall(r'<layer [^>]*\bversion="([^"]+)"', handle.read()))
    net = re.search(r'<net [^>]*\bversion="(\d+)"', head)
    if net is None or net.group(1) != "11":
        return release_of(installed)
    oldest = IR_V11_RELEASE
    for version in versions:
        match = re.match(r"opset(\d+)$", version)
        release = OPSET_RELEASES.get(int(match.group(1))) if match else None
        if release is None:
            return release_of(installed)
        oldest = max(oldest, release, key=_version_key)
    return oldest


def _sequence(value):
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def is_set(settings, knob):
    """True when the user gave ``knob`` (its default means "NNCF's default")."""
    value = getattr(settings, knob)
    return bool(_sequence(value)) if knob in ("ignored_names", "ignored_types") else (
        value is not None)


def auto_method(model, has_calibration, features, static_knobs):
    """Pick ``static`` or ``weights-only`` INT8 for ``--method auto``, with the reason.

    Conv nets get static INT8 (NNCF's strength: ResNet-50 runs at about half the FP32
    latency).  MatMul-heavy graphs get weight-only INT8 unless calibration data is
    given *and* the CPU has INT8 MatMul instructions (VNNI/AMX) or the user set a
    static-only knob; then static INT8 with model type transformer.

    Returns:
        (method, reason, model_type to apply or None)

    Raises:
        UsageError: a conv net without calibration data, or a static-only knob without it.
    """
    convs, linears, conv_heavy = op_balance(
        model, has_calibration, "Weight-only INT8 (--method weights-only) shrinks a conv net "
        "but does not speed it up.")
    if conv_heavy:
        return "static", "conv-heavy graph ({} Conv vs {} MatMul/Gemm): static INT8 (NNCF)".format(
            convs, linears), None
    what = "MatMul-heavy graph ({} MatMul/Gemm vs {} Conv)".format(linears, convs)
    if static_knobs:
        if not has_calibration:
            raise UsageError("{} applies to static INT8, which needs calibration data.".format(
                FLAGS[static_knobs[0]]), "Pass --calibration, or drop {}.".format(
                    FLAGS[static_knobs[0]]))
        return "static", "{}: static INT8 with model type transformer, since {} applies to " \
            "static INT8".format(what, FLAGS[static_knobs[0]]), "transformer"
    if not has_calibration:
        return "weights-only", what + (": INT8 weight-only compression (no calibration data "
                                       "given; activations stay FP32)"), None
    if features is not None and not any(features.get(f) for f in INT8_MATMUL_FEATURES):
        return "weights-only", what + (
            ": INT8 weight-only compression. This CPU has no VNNI/AMX: there OpenVINO's "
            "static INT8 ran a benchmark transformer no faster than FP32 (0.91-1.08x, median "
            "1.02x, in 11 measurements), and weight-only INT8 keeps about FP32 speed and "
            "accuracy at 0.3x the size"), None
    if features is None:
        return "weights-only", what + (
            ": INT8 weight-only compression. The target CPU is unknown; static INT8 speeds "
            "transformers up only on CPUs with VNNI/AMX"), None
    return "static", what + (": static INT8 with model type transformer, since this CPU has "
                             "VNNI/AMX INT8 MatMul instructions"), "transformer"


class SampleFeeds(object):
    """Calibration samples one at a time (batch 1), readable again and again.

    NNCF counts ``subset_size`` in items and reads the data more than once
    (statistics, then bias correction), so it gets single samples from a fresh
    pass over the dataset each time it iterates.  A model whose batch dim is fixed
    at N > 1 takes only batches of N: then an item is a batch of N samples.
    """

    def __init__(self, dataset, indices, batch=1):
        self.dataset = dataset
        self.indices = list(indices)
        self.batch = batch
        self.reads = 0

    def __len__(self):
        return len(self.indices) // self.batch

    def __iter__(self):
        for feeds, _ in self.dataset.batches(self.batch, drop_last=True, indices=self.indices):
            self.reads += 1
            yield feeds


def item_batch(source, batch):
    """Samples per NNCF item: 1, unless an input's first dim is fixed (the job's batch then)."""
    first = [s.shape[0] if s.shape else None for s in source.inputs]
    return batch if any(isinstance(d, int) and d > 0 for d in first) else 1


@contextlib.contextmanager
def quiet_nncf(nncf):
    """Keep NNCF's progress bars off stdout and its INFO lines out of the user's way.

    NNCF logs to its own stdout handler and draws rich progress bars on stdout; the
    CLI prints results there.  Its warnings go to Python's root logger instead (stderr
    under the CLI); its INFO lines are dropped.
    """
    logger = logging.getLogger("nncf")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = True
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.propagate = propagate
        logger.setLevel(level)
        for handler in handlers:
            logger.addHandler(handler)


def _unconverted_ops(message):
    """Op names from OpenVINO's "Model wasn't fully converted" summary."""
    names = []
    for line in message.splitlines():
        for marker in ("No conversion rule found for operations:", "Conversion is failed for:"):
            if marker in line:
                for token in line.split(marker, 1)[1].split(","):
                    token = re.sub(r"-\d+$", "", token.strip())
                    if token and token not in names:
                        names.append(token)
    return names


def _nodes_of(model, op_name):
    """ONNX nodes whose op type, domain-qualified as OpenVINO prints it, is ``op_name``."""
    found = []
    for node in model.graph.node:
        qualified = node.op_type if node.domain in ("", "ai.onnx") else "{}.{}".format(
            node.domain, node.op_type)
        if op_name in (qualified, node.op_type):
            found.append(node)
    return found


def _describe(op_name, nodes):
    if not nodes:
        return "op {}".format(op_name)
    first = nodes[0]
    kind = first.op_type if first.domain in ("", "ai.onnx") else "{} (domain {})".format(
        first.op_type, first.domain)
    names = ["'{}'".format(n.name) if n.name else "(unnamed, output '{}')".format(
        n.output[0] if n.output else "?") for n in nodes[:3]]
    more = " and {} more".format(len(nodes) - 3) if len(nodes) > 3 else ""
    return "op {} at node {}{}".format(kind, ", ".join(names), more)


def convert_to_ir(ov, source):
    """``openvino.convert_model`` on the ONNX file; an op it lacks -> ConversionError."""
    # The export goes in as it is, without edgeinfer.conversion.graph.normalize: the ONNX
    # frontend folds Constant and Identity weights into OpenVINO Constants (NNCF gave the
    # same FakeQuantize and INT8-weight counts as for initializers) and reads opsets below
    # 13 itself (an opset-11 conv net got per-channel INT8 weights), so there is nothing
    # to fix.
    try:
        return ov.convert_model(source.path)
    except Exception as exc:
        message = str(exc)
        ops = _unconverted_ops(message)
        if not ops:
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            raise ConversionError("OpenVINO cannot convert the model: {}".format(
                lines[-1] if lines else type(exc).__name__),
                "Run with --debug for the full error; --target cpu runs it with ONNX Runtime.")
        found = [(op, _nodes_of(source.model, op)) for op in ops]
        custom = any(n.domain not in ("", "ai.onnx") for _, nodes in found for n in nodes)
        raise ConversionError(
            "OpenVINO {} cannot convert {}: its ONNX frontend has no conversion for it.".format(
                release_of(ov.__version__), "; ".join(_describe(op, n) for op, n in found)),
            "A custom-domain op needs an OpenVINO extension, which edgeinfer does not load: "
            "re-export the model with standard ONNX ops." if custom else
            "Re-export the model without that op, or build for ONNX Runtime (--target cpu).")


def ignored_scope(nncf, ov_model, source, names, types):
    """An ``nncf.IgnoredScope`` from ONNX node names and ONNX or OpenVINO op types.

    OpenVINO keeps an ONNX node's name on the op it becomes, or on several ops named
    ``<name>/...`` (a Conv with bias becomes ``<name>/WithoutBiases`` + ``<name>``),
    so a name selects all of them.

    Returns:
        (IgnoredScope or None, what was resolved, for the manifest)

    Raises:
        UsageError: a name or type that is not in the model.
    """
    if not names and not types:
        return None, None
    ops = ov_model.get_ordered_ops()
    present = sorted(set(op.get_type_name() for op in ops))
    resolved_names = []
    for name in names:
        matched = resolve_names(ov_model, [name])
        if not matched:
            onnx_names = [n.name for n in source.model.graph.node if n.name]
            raise UsageError("--ignore-node {!r}: no node of that name in the model.".format(name),
                             "Node names look like: {}.".format(", ".join(
                                 repr(n) for n in onnx_names[:5]) or "(the model's nodes are "
                                 "unnamed)"))
        resolved_names.extend(m for m in matched if m not in resolved_names)
    resolved_types = []
    for kind in types:
        candidates = [kind] if kind in present else [
            t for t in ONNX_TO_OPENVINO_TYPES.get(kind, ()) if t in present]
        if not candidates:
            raise UsageError("--ignore-op-type {!r}: no op of that type in the model.".format(kind),
                             "Op types here (OpenVINO names): {}.".format(", ".join(
                                 t for t in present if t not in ("Constant", "Parameter",
                                                                 "Result"))))
        resolved_types.extend(c for c in candidates if c not in resolved_types)
    scope = nncf.IgnoredScope(names=resolved_names, types=resolved_types)
    return scope, {"names": list(names), "types": list(types), "openvino_names": resolved_names,
                   "openvino_types": resolved_types}


class OpenVinoRecipe(object):
    """OpenVINO IR bundles: FP32, FP16, INT8 static (NNCF) and INT8 weight-only (NNCF)."""

    backend = "openvino"
    knobs = KNOBS
    methods = ("auto", "static", "weights-only")

    def __init__(self):
        self._method = None

    @property
    def slow_int8_hint(self):
        """Said when INT8 is no faster than FP32 here: what is, for the method used."""
        if self._method == "weights-only":
            return ("Weight-only INT8 computes in FP32: it makes the model 3-4x smaller, "
                    "not faster. For speed on a CPU without VNNI, ONNX Runtime's dynamic INT8 "
                    "(--target cpu) runs MatMul-heavy models faster; with VNNI or AMX, use "
                    "--method static with --calibration.")
        return ("OpenVINO's INT8 kernels beat FP32 on conv nets, and on MatMul-heavy models "
                "only with VNNI or AMX. For a MatMul-heavy model, --method weights-only gives "
                "a 3-4x smaller model at FP32 speed; otherwise ship --precision fp32 for "
                "this CPU.")

    def check(self, settings):
        """Refuse settings this recipe cannot honour, before any work."""
        target = settings.target
        if settings.calibrate_method != "minmax":
            raise UsageError("--calibrate-method applies to the ONNX Runtime targets (cpu, "
                             "x86-cpu, arm64-cpu), not {} (OpenVINO).".format(target),
                             "NNCF sets its own ranges: drop --calibrate-method, or use "
                             "--preset performance | mixed.")
        if settings.int8_variant != "auto":
            raise UsageError("--int8-variant applies to the ONNX Runtime targets (cpu, x86-cpu, "
                             "arm64-cpu), not {} (OpenVINO).".format(target),
                             "NNCF chooses INT8 types for OpenVINO: drop --int8-variant, or "
                             "use --preset mixed for asymmetric activations.")
        if settings.method == "dynamic":
            raise UsageError("--method dynamic is an ONNX Runtime recipe; target {} (OpenVINO) "
                             "has none.".format(target),
                             "Use --method weights-only (INT8 weights, FP32 activations) for "
                             "MatMul-heavy models, or --method static with --calibration.")
        given = [k for k in KNOBS if is_set(settings, k)]
        if given and settings.precision != "int8":
            raise UsageError("{} applies to INT8, not {}.".format(FLAGS[given[0]],
                                                                  settings.precision),
                             "Drop it, or use --precision int8.")
        static_only = [k for k in STATIC_KNOBS if is_set(settings, k)]
        if static_only and settings.method == "weights-only":
            raise UsageError("{} applies to static INT8 (nncf.quantize), not --method "
                             "weights-only.".format(FLAGS[static_only[0]]),
                             "Drop it, or use --method static with --calibration.")

    def build(self, job):
        """Convert ``job.source`` as ``job.settings`` ask; return a :class:`Result`."""
        ov = require("openvino", "OpenVINO conversion")
        settings = job.settings
        xml = os.path.join(job.workdir, "model.xml")
        bin_path = os.path.join(job.workdir, "model.bin")
        notes, calibration, method = [], None, "none"
        self._control = None  # the budget search's record, when a budget is given
        with recipe_step("OpenVINO model conversion"):
            model = convert_to_ir(ov, job.source)
        quant = {"ir": "openvino.convert_model {}".format(release_of(ov.__version__))}
        if settings.precision == "fp16":
            quant.update({"weights": "float16 (compress_to_fp16)", "io_types": "float32 (kept)"})
            if job.features is not None and not job.features.get("fp16"):
                notes.append("This CPU has no native FP16 arithmetic: OpenVINO's CPU plugin "
                             "expands the FP16 weights to FP32 when it loads the model, so "
                             "FP16 halves the bundle but does not speed it up here. Intel GPUs "
                             "and NPUs run it in FP16.")
        elif settings.method == "qat":
            from .prequantized import quantization_record
            method = "qat"
            quant.update(quantization_record(
                job.source.model, "FakeQuantize on activations, INT8 weight constants "
                                  "(OpenVINO's ONNX frontend maps each Q/DQ pair; no NNCF, "
                                  "no calibration)"))
            # Activation pairs become FakeQuantize; weight pairs INT8 constants.
            quant["fake_quantize"] = sum(1 for op in model.get_ordered_ops()
                                         if op.get_type_name() == "FakeQuantize")
            quant["weights_int8"] = _count_int8_weights(model)
            notes.extend(_saturation_note(quant, job.features))
        elif settings.precision == "int8":
            model, method, extra, calibration = self._int8(job, ov, model, notes)
            quant.update(extra)
            self._method = method
        with recipe_step("Writing the OpenVINO IR"):
            # IR has no names for symbolic dims ("batch" becomes "?"): the backend reads
            # the ONNX specs back from the IR's rt_info, so both backends report alike.
            record_specs(model, job.source.inputs, job.source.outputs)
            ov.save_model(model, xml, compress_to_fp16=settings.precision == "fp16")
        return Result({"model.xml": xml, "model.bin": bin_path}, "model.xml", method, quant,
                      calibration, ov.__version__, min_openvino_version(xml, ov.__version__),
                      notes, self._control)

    def speed_reference(self, job):
        """The source as an FP32 IR, loaded by the OpenVINO backend: the speed check's FP32.

        An INT8-vs-FP32 latency ratio says what INT8 buys only when both run on the
        same backend; the accuracy reference stays FP32 ONNX Runtime.

        Returns:
            a runner (the caller closes it).
        """
        from ..runtime.backends import LocalFiles, get_backend
        ov = require("openvino", "OpenVINO conversion")
        folder = os.path.join(job.workdir, "fp32-reference")
        os.makedirs(folder, exist_ok=True)
        paths = {"model.xml": os.path.join(folder, "model.xml"),
                 "model.bin": os.path.join(folder, "model.bin")}
        # A Q/DQ source's FP32 is its reference model (prequantized.reference_model).
        source = job.source if job.reference_model is None else job.source._replace(
            path=job.reference_model)
        with recipe_step("OpenVINO model conversion (FP32 reference)"):
            ov.save_model(convert_to_ir(ov, source), paths["model.xml"],
                          compress_to_fp16=False)
        return get_backend(self.backend).load(LocalFiles(paths, "model.xml"))

    def _int8(self, job, ov, model, notes):
        nncf = require("nncf", "OpenVINO INT8 conversion")
        settings, source = job.settings, job.source
        method, why, model_type = settings.method, "--method {} (asked for)".format(
            settings.method), settings.model_type
        if method == "auto":
            method, why, auto_type = auto_method(
                source.model, job.calibration is not None, job.features,
                [k for k in STATIC_KNOBS if is_set(settings, k)])
            model_type = model_type or auto_type
        elif method == "weights-only" and op_counts(source.model).get("Conv"):
            notes.append("Weight-only INT8 keeps Conv activations in FP32: the model is "
                         "smaller but computes as fast as FP32. Use --method static with "
                         "--calibration to run the convolutions in INT8.")
        if method == "static" and job.calibration is None:
            raise UsageError("Static INT8 needs calibration data.",
                             "Pass --calibration DIR (images, .npz or .npy files).")
        scope, scope_info = ignored_scope(nncf, model, source,
                                          _sequence(settings.ignored_names),
                                          _sequence(settings.ignored_types))
        quant = {"method_reason": why, "tool": "nncf {}".format(nncf.__version__)}
        if scope_info:
            quant["ignored_scope"] = scope_info
        if method == "weights-only":
            if job.calibration is not None:
                notes.append("Weight-only INT8 needs no calibration data: --calibration "
                             "served only to validate the result.")
            mode = nncf.CompressWeightsMode.INT8_ASYM
            with recipe_step("INT8 weight compression (nncf.compress_weights)"), quiet_nncf(nncf):
                model = nncf.compress_weights(model, mode=mode, ignored_scope=scope)
            if job.budget is not None:
                self._control = self._check_whole(job, model)
            quant.update({"mode": mode.value, "activations": "float32",
                          "format": "INT8 weight constants with Convert/Subtract/Multiply "
                                    "decompression",
                          "weights_compressed": _count_int8_weights(model)})
            return model, method, quant, None
        from .equalize import equalize_file
        with recipe_step("Cross-layer equalisation"):
            # NNCF corrects biases itself, but its ChannelAlignment pairs only Conv -> Conv
            # with no activation between (and is off by default): MobileNets' Conv ->
            # ReLU6 -> Conv pairs are equalised here, on the ONNX model (issue 4, req. 6).
            equalized, quant["equalization"] = equalize_file(
                source.path, os.path.join(job.workdir, "equalized.onnx"), settings.per_channel)
        if equalized != source.path:
            with recipe_step("OpenVINO model conversion (equalised model)"):
                model = convert_to_ir(ov, source._replace(path=equalized))
        return self._static(job, nncf, model, model_type, scope, quant)

    def _static(self, job, nncf, model, model_type, scope, quant):
        settings = job.settings
        default_subset = inspect.signature(nncf.quantize).parameters["subset_size"].default
        subset = settings.subset_size or default_subset
        per_item = item_batch(job.source, job.batch)
        used = job.calibration_indices[:subset * per_item]
        feeds = SampleFeeds(job.calibration, used, per_item)
        if not len(feeds):
            raise UsageError("Static INT8 for this model needs at least {} calibration samples "
                             "(its batch size); {} given.".format(per_item, len(used)),
                             "Give more samples with --calibration.")
        preset = None if settings.preset is None else nncf.QuantizationPreset(settings.preset)
        kind = None if model_type is None else nncf.ModelType(model_type)
        kwargs = {"preset": preset, "model_type": kind, "subset_size": len(feeds),
                  "ignored_scope": scope}
        if settings.fast_bias_correction is not None:
            kwargs["fast_bias_correction"] = settings.fast_bias_correction
        if not settings.per_channel:
            advanced = require("nncf.quantization.advanced_parameters")
            kwargs["advanced_parameters"] = advanced.AdvancedQuantizationParameters(
                weights_quantization_params=advanced.QuantizationParameters(per_channel=False))

        def calibrate(_batches):
            # NNCF reads the samples itself, more than once; run_calibration times it
            # and measures its peak memory.
            with quiet_nncf(nncf):
                return nncf.quantize(model, nncf.Dataset(feeds), **kwargs)

        with recipe_step("Static INT8 quantization (nncf.quantize)"):
            quantized, summary = run_calibration(
                job._replace(calibration_indices=used[:len(feeds) * per_item]), calibrate)
        if job.budget is not None:
            with recipe_step("Accuracy control"):
                quantized = self._budgeted(job, nncf, model, quantized, feeds, kwargs)
        summary.update({"samples": len(feeds) * per_item, "batches": len(feeds),
                        "batch_size": per_item, "method": "nncf",
                        "samples_read": feeds.reads * per_item})
        if settings.preset is not None:
            preset_text = settings.preset
        elif model_type == "transformer":
            preset_text = "mixed (NNCF's default for transformers)"
        else:
            preset_text = "performance (NNCF's default)"
        quant.update({
            "preset": preset_text, "model_type": model_type,
            "fast_bias_correction": (settings.fast_bias_correction
                                     if settings.fast_bias_correction is not None
                                     else "true (NNCF's default)"),
            "subset_size": len(feeds) if settings.subset_size else "{} (NNCF's default {}, at "
            "most the calibration samples)".format(len(feeds), default_subset),
            "per_channel": settings.per_channel, "target_device": "ANY",
            "format": "FakeQuantize (OpenVINO IR), INT8 weight constants",
            "fake_quantize": sum(1 for op in quantized.get_ordered_ops()
                                 if op.get_type_name() == "FakeQuantize"),
        })
        return quantized, "static", quant, summary


    def _runner(self, xml):
        """``feeds -> outputs`` of an IR file, run by the OpenVINO backend."""
        from ..runtime.backends import LocalFiles, get_backend
        return get_backend(self.backend).load(
            LocalFiles({"model.xml": xml, "model.bin": weights_name(xml)}, "model.xml")).run

    def _check_whole(self, job, model):
        """A budget for weight-only INT8: measure it, refuse it when it misses."""
        from .control import check_whole
        ov = require("openvino", "OpenVINO conversion")
        xml = os.path.join(job.workdir, "accuracy-control-ir", "weights-only.xml")
        os.makedirs(os.path.dirname(xml), exist_ok=True)
        record_specs(model, job.source.inputs, job.source.outputs)
        ov.save_model(model, xml, compress_to_fp16=False)
        return check_whole(job, xml, self._runner, "Weight-only",
                           "Use --method static with --calibration: edgeinfer then keeps the "
                           "most sensitive ops in FP32 until the budget holds.")

    def _budgeted(self, job, nncf, model, quantized, feeds, kwargs):
        """Keep the fewest ops out of NNCF's INT8 that meet ``job.budget`` (issue 4).

        Each configuration the search tries is a real ``nncf.quantize`` with the
        kept ONNX nodes added to the ignored scope, saved as IR and run by the
        OpenVINO backend; see :func:`edgeinfer.conversion.control.search_openvino`.
        """
        from .control import search_openvino
        ov = require("openvino", "OpenVINO conversion")
        folder = os.path.join(job.workdir, "accuracy-control-ir")
        os.makedirs(folder, exist_ok=True)
        built = {}
        user = kwargs.get("ignored_scope")

        def save(candidate, excluded):
            xml = os.path.join(folder, "variant-{}.xml".format(len(built)))
            record_specs(candidate, job.source.inputs, job.source.outputs)
            ov.save_model(candidate, xml, compress_to_fp16=False)
            built[tuple(sorted(excluded))] = xml
            return xml

        def build(excluded):
            key = tuple(sorted(excluded))
            if key in built:
                return built[key]
            names = resolve_names(model, excluded)
            scope = nncf.IgnoredScope(
                names=sorted(set(names) | set(user.names if user else ())),
                types=list(user.types) if user else [])
            with quiet_nncf(nncf):
                candidate = nncf.quantize(model, nncf.Dataset(feeds),
                                          **dict(kwargs, ignored_scope=scope))
            return save(candidate, excluded)

        save(quantized, ())
        chosen, self._control = search_openvino(job, job.source.path, build, self._runner)
        return ov.Core().read_model(chosen)


def _saturation_note(quant, features):
    """A note when a Q/DQ model's 8-bit weights can saturate this CPU's INT8 kernels.

    On x86 without VNNI/AMX the INT8 dot product (VPMADDUBSW) adds pairs of u8 x s8
    products in 16 bits, which saturate when weights use the whole INT8 range.
    Measured here (AMD EPYC, AVX2, OpenVINO 2026.4): a QAT MLP with 8-bit weights
    agreed with its fake-quant model on 96-98% of predictions run by OpenVINO (100%
    by ONNX Runtime); with 7-bit weights, 100%.  NNCF's own INT8 avoids it by
    quantizing weights to 7 bits on such CPUs (its overflow fix).
    """
    if features is None or any(features.get(f) for f in INT8_MATMUL_FEATURES):
        return []
    # Two u8 x s8 products fit in int16 while |weight| <= 64 (2 * 255 * 64 = 32640).
    if quant.get("weight_levels_max", 0) <= 64:
        return []
    return ["This CPU has no VNNI/AMX: OpenVINO's INT8 kernels add 8-bit weight products in "
            "16 bits and can saturate with this model's full-range INT8 weights (up to "
            "level {}), which costs accuracy here. Train with edgeinfer.qat.prepare(..., "
            "weight_bits=7) for such CPUs (as NNCF's overflow fix quantizes), or build with "
            "--target cpu (ONNX Runtime).".format(quant["weight_levels_max"])]


def resolve_names(ov_model, onnx_names):
    """OpenVINO op names for ONNX node names: the op of that name and its ``name/...`` parts.

    Names with no op (an ONNX Relu fused away by the frontend) select nothing.
    """
    names = []
    ops = [op.get_friendly_name() for op in ov_model.get_ordered_ops()
           if op.get_type_name() not in ("Constant", "Parameter", "Result")]
    for name in onnx_names:
        names.extend(op for op in ops if op == name or op.startswith(name + "/"))
    return names


def _count_int8_weights(model):
    """Number of 8-bit integer constants (compressed weights) in an OpenVINO model."""
    count = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in (
                "i8", "u8"):
            count += 1
    return count
