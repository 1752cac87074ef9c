"""Per-layer sensitivity of an ONNX Runtime QDQ model: which quantized ops cost accuracy.

Method: **quantize it alone**.  For each group of quantized ops, one model is
built with only that group in INT8 and everything else in FP32, and its outputs
are compared with FP32 on the evaluation set; the groups are ranked by the
output SQNR of their model, lowest (most error added) first.

Why not the other way round ("keep it alone in FP32, all others INT8")?  In
ONNX Runtime's QDQ format a tensor between two quantized ops is quantized for
both: the producer gets a QuantizeLinear on its output and the consumer reads
it through a DequantizeLinear.  Keeping one of the two in FP32 leaves that
tensor quantized by the other, so when the damage is a tensor's range (an
activation with outliers, the common case) neither op alone shows any gain and
the ranking is noise.  Measured (``scripts/bench_accuracy_control.py``): on
``tests/models.py:outlier_convnet`` (conv2's output has one channel 1000x
larger), quantize-alone ranks conv3 and conv2 first and keeping those two in
FP32 brings cosine from 0.79 to 0.9999, while the keep-alone-FP32 ranking
needed all 6 groups in FP32 (the whole model) to reach 0.99.  On the demo
model with S8S8 (1.6 top-1 points lost to U8S8 saturation on AVX2 without
VNNI) both methods name the first Conv and keeping it alone meets a 0.5-point
budget.  Cost: the same N builds either way; a quantize-alone build quantizes
one group so it is quicker (demo: 0.09 s vs 0.15 s a pass), but its model runs
mostly in FP32, so on large nets its evaluations are slower, up to the
FP32/INT8 latency ratio (about 2x for ResNet-50 here).  Interactions between
groups (errors that only add up when both are INT8) are not seen by either
single-group method; the budget search (:mod:`edgeinfer.conversion.budget`)
re-validates every combination it tries, so it is not misled by them.

Groups follow what ONNX Runtime's quantizer does, read from the all-INT8 model
it built rather than re-derived: every op that reads a DequantizeLinear output
is quantized, and an op of the FP32 graph that is missing from the QDQ graph
(a Relu or Clip after a Conv, which the QDQ quantizer folds into the Conv's
output range) joins the op that feeds it, so ``Conv + Relu`` is one group.  A
group is excluded or quantized as a whole (``nodes_to_exclude`` /
``nodes_to_quantize`` of ``quantize_static``), since quantizing a Relu alone
is not what ORT ever ships.

Every variant is quantized from one calibration range cache (the JSON that
:func:`edgeinfer.conversion.ort.calibrate` wrote), so calibration never runs
again, and is compared with FP32 outputs computed once
(:class:`~edgeinfer.conversion.metrics.ReferenceOutputs`).  Variants run in an
ordinary ONNX Runtime session with all graph optimizations, i.e. with the
QLinearConv / QGemm kernels a device runs: on x86 without VNNI those kernels
can saturate (U8S8) where the arithmetic of the QDQ graph itself would not,
and only measuring the real kernels sees that.

For ``compare --per-layer`` the table also shows, per group, how far its
output tensor has drifted from FP32 and how much that tensor's own Q/DQ
rounds it, from ONNX Runtime's ``qdq_loss_debug`` (its graph augmentation and
activation matching), streamed over a few batches.  Those numbers come from
running the QDQ graph unfused (``qdq_loss_debug`` disables graph optimization
and extra graph outputs prevent the INT8 fusions anyway), so they show the
quantization grid, not kernel saturation; the table's header prints both
output SQNRs so a gap between them is visible.

The workstation side only: imports onnx and onnxruntime when called.
"""

import contextlib
import hashlib
import io
import logging
import math
import os
import time
from typing import NamedTuple, Optional

import numpy as np

from ..errors import ConversionError
from ..lazy import available, require
from . import metrics as metrics_mod

log = logging.getLogger("edgeinfer.conversion")

# How each variant is built; see the module docstring for the choice.
METHOD = "quantize-alone"
METHOD_TEXT = "each group alone in INT8, all other ops FP32"

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Each group's model is measured on this many evaluation samples (whole batches):
# output SQNR ranks groups steadily on a few dozen samples, and a ResNet-50 pass
# (73 groups) must stay within minutes on 2 cores.  The all-INT8 model and every
# step of the budget search use the whole evaluation set.
SENSITIVITY_SAMPLES = 64
# Intermediate tensors are compared on at most this many samples (they are large).
ACTIVATION_SAMPLES = 64


class Group(NamedTuple):
    """Ops ONNX Runtime quantizes as one unit.

    Attributes:
        name: the first op's node name (the group's name in tables).
        op_type: the first op's type, e.g. ``Conv``.
        nodes: node names in graph order, e.g. ``("/conv1/Conv", "/relu1/Relu")``.
        op_types: their op types.
        output: the group's output tensor (its last node's first output).
    """

    name: str
    op_type: str
    nodes: tuple
    op_types: tuple
    output: str

    @property
    def label(self):
        """``Conv+Relu``-style op types of the group."""
        return "+".join(self.op_types)


class LayerSensitivity(NamedTuple):
    """What one group costs.

    Attributes:
        name / op_type / nodes / op_types / output: the :class:`Group`'s.
        sqnr_db: output SQNR against FP32 of the model with only this group in
            INT8 (worst output; None: identical to FP32).
        error_db: the error the group adds, ``-sqnr_db`` (higher = more sensitive;
            ``-inf`` when it adds none).
        achieved: the budget's quantity (without a budget, the worst output's
            cosine) measured on that model.
        results: its full :class:`~edgeinfer.conversion.metrics.Results`.
        activation_sqnr_db: SQNR against FP32 of the group's output tensor in the
            all-INT8 model (the error accumulated up to it; unfused QDQ), or None.
        activation_loss_db: SQNR lost between the group's worst input tensor and
            its output tensor in that model (the part this group adds), or None.
    """

    name: str
    op_type: str
    nodes: tuple
    op_types: tuple
    output: str
    sqnr_db: Optional[float]
    error_db: float
    achieved: float
    results: object
    activation_sqnr_db: Optional[float] = None
    activation_loss_db: Optional[float] = None

    @property
    def label(self):
        """``Conv+Relu``-style op types of the group."""
        return "+".join(self.op_types)

    def to_dict(self):
        """JSON-ready row (for a report or the manifest)."""
        return {"name": self.name, "op_type": self.op_type, "nodes": list(self.nodes),
                "op_types": list(self.op_types), "sqnr_db": _json_db(self.sqnr_db),
                "achieved": self.achieved,
                "activation_sqnr_db": _json_db(self.activation_sqnr_db),
                "activation_loss_db": _json_db(self.activation_loss_db)}


class Sensitivity(NamedTuple):
    """A sensitivity pass: the groups ranked, most sensitive first.

    Attributes:
        method: how groups were measured: :data:`METHOD` (``quantize-alone``).
        layers: list of :class:`LayerSensitivity`, most sensitive first.
        baseline: :class:`~edgeinfer.conversion.metrics.Results` of the all-INT8 model.
        baseline_model: its path.
        what: the quantity in each layer's ``achieved``, e.g. ``"cosine"``.
        achieved: that quantity measured on the all-INT8 model.
        samples: evaluation samples each group's model was measured on.
        simulated_sqnr_db: output SQNR of the all-INT8 model run unfused (as
            ``qdq_loss_debug`` runs it), or None when activations were not compared.
        seconds: wall time of the pass.
        builds: quantized models built.
    """

    method: str
    layers: list
    baseline: object
    baseline_model: str
    what: str
    achieved: float
    samples: int
    simulated_sqnr_db: Optional[float]
    seconds: float
    builds: int

    def to_dict(self):
        """JSON-ready form (for a report or the manifest)."""
        return {"method": self.method, "what": self.what, "achieved": self.achieved,
                "samples": self.samples, "baseline_samples": self.baseline.samples,
                "sqnr_db": _json_db(worst_sqnr(self.baseline)),
                "simulated_sqnr_db": _json_db(self.simulated_sqnr_db),
                "seconds": round(self.seconds, 3),
                "builds": self.builds, "layers": [layer.to_dict() for layer in self.layers]}


def _json_db(value):
    if value is None or math.isinf(value):
        return None if value is None or value > 0 else "-inf"
    return round(value, 3)


def _db(value):
    """dB with None (identical) as +inf, for sorting and differences."""
    return float("inf") if value is None else value


def worst_sqnr(results):
    """The lowest output SQNR in ``results`` (None when every output equals FP32)."""
    values = [m["sqnr_db"] for m in results.outputs.values() if m["sqnr_db"] is not None]
    return min(values) if values else None


# -- building variants ----------------------------------------------------------------------

def name_nodes(model):
    """Give every unnamed (or repeated) node a unique name, in place.

    ``quantize_static`` selects nodes by name, so a graph exported without node
    names could not have a single op excluded.

    Returns:
        how many nodes were renamed.
    """
    seen = set(n.name for n in model.graph.node if n.name)
    taken, renamed = set(), 0
    for index, node in enumerate(model.graph.node):
        if node.name and node.name not in taken:
            taken.add(node.name)
            continue
        candidate = "{}_{}".format(node.op_type, index)
        while candidate in seen or candidate in taken:
            candidate += "_"
        node.name = candidate
        taken.add(candidate)
        renamed += 1
    return renamed


class QdqBuilder(object):
    """Builds QDQ variants of one prepared FP32 model from one calibration range cache.

    Args:
        prepared: the pre-processed FP32 model (:func:`edgeinfer.conversion.ort.prepare`).
        cache: the JSON range cache :func:`edgeinfer.conversion.ort.calibrate` wrote.
        kind: the ``CalibrationMethod`` it returned.
        variant: an :class:`edgeinfer.conversion.ort.Int8Variant`.
        per_channel: per-channel weight scales.
        workdir: where variants are written.
        exclude: nodes every variant keeps in FP32 (default none).
        extra_options: ``quantize_static``'s ``extra_options`` for every variant
            (default None: the ONNX Runtime recipe's call, none).
        op_types: the op types to quantize (default None: ONNX Runtime's list).
        finish: callable (path, excluded node names) that rewrites each built
            variant in place, e.g. the TensorRT recipe's Q/DQ placement (default None).

    Attributes:
        model_path: the prepared model the variants come from (a copy with unique
            node names when the original lacked them).
        builds: how many models were quantized; a variant asked for again is not
            rebuilt.
        seconds: time spent quantizing.
    """

    def __init__(self, prepared, cache, kind, variant, per_channel, workdir, exclude=(),
                 extra_options=None, op_types=None, finish=None):
        onnx = require("onnx", "accuracy control")
        self.cache, self.kind, self.variant = cache, kind, variant
        self.per_channel, self.workdir = per_channel, workdir
        self.exclude = tuple(exclude)
        self.extra_options, self.op_types, self.finish = extra_options, op_types, finish
        self.builds, self.seconds = 0, 0.0
        self._paths = {}
        model = onnx.load(prepared)
        if name_nodes(model):
            self.model_path = os.path.join(workdir, "prepared-named.onnx")
            onnx.save(model, self.model_path)
        else:
            self.model_path = prepared
        self.model = model

    def build(self, exclude=(), only=None):
        """Quantize with ``exclude`` kept in FP32 (and, with ``only``, nothing else quantized).

        Args:
            exclude: node names to keep in FP32 (default none).
            only: node names to quantize, all others FP32 (default None: all).

        Returns:
            the path of the QDQ model.
        """
        from .ort import quantize_static  # the recipe's own call, one implementation
        excluded = tuple(sorted(set(self.exclude) | set(exclude)))
        chosen = None if only is None else tuple(sorted(set(only) - set(excluded)))
        key = (excluded, chosen)
        if key in self._paths:
            return self._paths[key]
        digest = hashlib.sha256(repr(key).encode("utf-8")).hexdigest()[:12]
        path = os.path.join(self.workdir, "variant-{}.onnx".format(digest))
        start = time.perf_counter()
        if chosen is not None or self.extra_options is not None or self.op_types is not None:
            self._quantize_only(path, excluded, chosen)
        else:
            with _quiet():
                quantize_static(self.model_path, path, self.cache, self.kind, self.variant,
                                self.per_channel, exclude=excluded)
        if self.finish is not None:
            self.finish(path, excluded)
        self.seconds += time.perf_counter() - start
        self.builds += 1
        self._paths[key] = path
        return path

    def discard(self, path):
        """Delete a variant that is no longer needed (a ResNet-50 variant is 25 MB or more)."""
        for key, known in list(self._paths.items()):
            if known == path:
                del self._paths[key]
        if os.path.exists(path):
            os.remove(path)

    def _quantize_only(self, path, excluded, chosen):
        quantization = require("onnxruntime.quantization", "accuracy control")
        if chosen is not None and not chosen:
            # Nothing to quantize: ORT would read an empty list as "everything".
            require("onnx").save(self.model, path)
            return
        types = {"int8": quantization.QuantType.QInt8, "uint8": quantization.QuantType.QUInt8}
        with _quiet():
            quantization.quantize_static(
                self.model_path, path, calibration_data_reader=None,
                quant_format=quantization.QuantFormat.QDQ, per_channel=self.per_channel,
                reduce_range=self.variant.reduce_range,
                activation_type=types[self.variant.activations],
                weight_type=types[self.variant.weights], calibrate_method=self.kind,
                nodes_to_quantize=list(chosen) if chosen else None,
                nodes_to_exclude=list(excluded) or None, calibration_cache_path=self.cache,
                op_types_to_quantize=self.op_types, extra_options=self.extra_options)


@contextlib.contextmanager
def _quiet():
    # quantize_static prints and logs progress per call; a pass makes dozens of calls.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def ort_runner(path, optimize=True):
    """A callable feeds -> dict of outputs over an ONNX Runtime CPU session.

    Args:
        path: the model.
        optimize: all graph optimizations, i.e. the fused INT8 kernels a device
            runs (default True); False runs the graph op by op, as
            ``qdq_loss_debug`` does.
    """
    ort = require("onnxruntime", "accuracy control")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds)))


# -- groups ---------------------------------------------------------------------------------

def quantized_groups(float_model, qdq_model):
    """The groups ONNX Runtime quantized, in graph order (see the module docstring).

    Args:
        float_model: the prepared FP32 ``ModelProto`` (node names unique).
        qdq_model: the all-INT8 QDQ ``ModelProto`` quantized from it.

    Returns:
        list of :class:`Group`.
    """
    producers = {}
    for node in qdq_model.graph.node:
        for out in node.output:
            producers[out] = node
    in_qdq = dict((n.name, n) for n in qdq_model.graph.node)
    float_producer = {}
    for node in float_model.graph.node:
        for out in node.output:
            float_producer[out] = node.name
    members, order = {}, []
    owner = {}
    for node in float_model.graph.node:
        twin = in_qdq.get(node.name)
        if twin is not None and twin.op_type == node.op_type and node.op_type not in QDQ_OPS:
            if any(producers.get(t) is not None and producers[t].op_type == "DequantizeLinear"
                   for t in twin.input):
                members[node.name] = [node]
                order.append(node.name)
                owner[node.name] = node.name
            continue
        if twin is None and node.input:
            # Removed by the quantizer (e.g. a Relu folded into a Conv's output range).
            source = owner.get(float_producer.get(node.input[0]))
            if source is not None:
                members[source].append(node)
                owner[node.name] = source
    groups = []
    for name in order:
        nodes = members[name]
        groups.append(Group(name, nodes[0].op_type, tuple(n.name for n in nodes),
                            tuple(n.op_type for n in nodes), nodes[-1].output[0]))
    return groups


# -- intermediate tensors -------------------------------------------------------------------

def activation_errors(float_path, qdq_path, batches, workdir, max_samples=ACTIVATION_SAMPLES):
    """SQNR of every quantized activation: FP32 vs QDQ, via ``qdq_loss_debug``.

    The models are augmented with ``modify_model_output_intermediate_tensors`` and
    paired with ``create_activation_matching``; the tensors are reduced to sums
    of squares batch by batch, so memory holds one batch's activations.

    Args:
        float_path / qdq_path: the prepared FP32 model and a QDQ model made from it.
        batches: iterable of feed dicts.
        workdir: where the augmented models go.
        max_samples: compare at most this many samples (default 64).

    Returns:
        (errors, simulated): dict quantized tensor name -> SQNR in dB of its
        dequantized value against FP32 (the error accumulated up to it), and dict
        output name -> output SQNR in dB, all run unfused (None: identical).
    """
    debug = require("onnxruntime.quantization.qdq_loss_debug", "per-layer comparison")
    onnx = require("onnx", "per-layer comparison")
    postfix = getattr(debug, "_TENSOR_SAVE_POSTFIX", "_ReshapedSavedOutput")
    paths = {}
    for label, path in (("float", float_path), ("qdq", qdq_path)):
        paths[label] = os.path.join(workdir, "activations-{}.onnx".format(label))
        with _quiet():
            debug.modify_model_output_intermediate_tensors(path, paths[label])
    outputs = [o.name for o in onnx.load(float_path, load_external_data=False).graph.output]
    runs = dict((label, ort_runner(path, optimize=False)) for label, path in paths.items())
    sums, final, seen = {}, dict((name, [0.0, 0.0]) for name in outputs), 0
    for feeds in batches:
        if seen >= max_samples:
            break
        count = len(next(iter(feeds.values())))
        take = min(count, max_samples - seen)
        if take < count:
            feeds = dict((k, v[:take]) for k, v in feeds.items())
        seen += take
        out = dict((label, run(feeds)) for label, run in runs.items())
        for name in outputs:
            final[name][0] += _sq(out["float"][name])
            final[name][1] += _sq(out["float"][name] - out["qdq"][name])
        tensors = dict((label, dict((k[:-len(postfix)], [v]) for k, v in values.items()
                                    if k.endswith(postfix)))
                       for label, values in out.items())
        matched = debug.create_activation_matching(tensors["qdq"], tensors["float"])
        for name, match in matched.items():
            if "float" in match:
                entry = sums.setdefault(name, [0.0, 0.0])
                entry[0] += _sq(match["float"][0])
                entry[1] += _sq(match["float"][0] - match["post_qdq"][0])
    errors = dict((name, metrics_mod.sqnr_db(signal, noise))
                  for name, (signal, noise) in sums.items())
    simulated = dict((name, metrics_mod.sqnr_db(signal, noise))
                     for name, (signal, noise) in final.items())
    return errors, simulated


def _sq(array):
    array = np.asarray(array, dtype=np.float64)
    return float((array * array).sum())


# -- the pass -------------------------------------------------------------------------------

def _variant_results(builder, reference, groups, how, metric, runner):
    """Results of each group's model: ``how`` is ``only`` (quantize it alone, the method).

    ``exclude`` (keep it alone in FP32) is the alternative the module docstring
    weighs; ``scripts/bench_accuracy_control.py`` measures it.
    """
    found = []
    for group in groups:
        if how == "only":
            path = builder.build(only=group.nodes)
        else:
            path = builder.build(exclude=group.nodes)
        found.append(metrics_mod.evaluate(reference, runner(path), metric))
        builder.discard(path)
    return found


def analyze(builder, reference, budget=None, metric=None, activations=True, runner=ort_runner,
            samples=SENSITIVITY_SAMPLES):
    """Rank the quantized groups of a QDQ model by the error each adds (see the module doc).

    Args:
        builder: a :class:`QdqBuilder` (one prepared model, one range cache).
        reference: the :class:`~edgeinfer.conversion.metrics.ReferenceOutputs` of
            the evaluation set (FP32 runs once, whatever the number of variants).
        budget: a :class:`~edgeinfer.conversion.metrics.Budget`; its quantity is
            reported per layer (default None: the worst output's cosine).
        metric: a user metric, measured on every variant (default None; a budget
            on a custom metric brings its own).
        activations: also compare intermediate tensors with ``qdq_loss_debug``
            (default True).
        runner: callable path -> (feeds -> outputs) (default :func:`ort_runner`).
        samples: evaluation samples each group's model is measured on (default
            :data:`SENSITIVITY_SAMPLES`, 64; None: all); the all-INT8 model is
            measured on all of them.

    Returns:
        :class:`Sensitivity`, layers most sensitive first.

    Raises:
        ConversionError: ONNX Runtime quantized nothing in this model.
        UsageError: the budget cannot be measured on this data.
    """
    onnx = require("onnx", "accuracy control")
    start = time.perf_counter()
    builds = builder.builds
    if budget is not None and budget.kind == "metric":
        metric = budget.metric
    full = builder.build()
    groups = quantized_groups(builder.model, onnx.load(full))
    if not groups:
        raise ConversionError("ONNX Runtime quantized no op of this model, so there is no "
                              "per-layer sensitivity to measure.",
                              "Check that the model has Conv, MatMul or Gemm ops.")
    baseline = metrics_mod.evaluate(reference, runner(full), metric)

    def quantity(results):
        if budget is not None:
            return budget.achieved(results)
        return min(m["cosine_mean"] for m in results.outputs.values())

    achieved = quantity(baseline)  # a budget that cannot be measured fails here, early
    part = reference.head(samples)
    found = _variant_results(builder, part, groups, "only", metric, runner)
    errors, simulated = ({}, None)
    if activations:
        batches = (feeds for feeds, _, _ in reference.items())
        errors, outputs = activation_errors(builder.model_path, full, batches, builder.workdir)
        simulated = min((_db(v) for v in outputs.values()), default=None)
        simulated = None if simulated is None or math.isinf(simulated) else simulated
    inputs_of = dict((n.name, list(n.input)) for n in builder.model.graph.node)
    layers = []
    for group, results in zip(groups, found):
        sqnr = worst_sqnr(results)
        layers.append(LayerSensitivity(
            group.name, group.op_type, group.nodes, group.op_types, group.output, sqnr,
            _error_db(sqnr), quantity(results), results,
            errors.get(group.output), _drop(errors, inputs_of[group.name], group.output)))
    layers.sort(key=lambda layer: -layer.error_db)
    return Sensitivity(METHOD, layers, baseline, full, budget.what if budget else "cosine",
                       achieved, part.samples, simulated, time.perf_counter() - start,
                       builder.builds - builds)


def _error_db(sqnr):
    # Noise-to-signal of the output with only this group in INT8: higher is worse.
    return float("-inf") if sqnr is None else -sqnr


def _drop(errors, inputs, output):
    """dB of SQNR lost between a group's worst input and its output (unfused QDQ)."""
    before = [_db(errors[name]) for name in inputs if name in errors]
    if output not in errors or not before:
        return None
    loss = min(before) - _db(errors[output])
    return None if math.isnan(loss) or math.isinf(loss) else loss


# -- reporting ------------------------------------------------------------------------------

def _format_quantity(what, value):
    if value is None:
        return "-"
    if what == "cosine":
        return "{:.5f}".format(value)
    if what.startswith("top-1"):
        return "{:.2f}".format(value)
    return "{:.4g}".format(value)


def _format_db(value):
    if value is None:
        return "inf"
    return "{:.1f}".format(value)


def format_table(sensitivity, limit=None):
    """The ranking as text, what ``compare --per-layer`` prints.

    Args:
        sensitivity: a :class:`Sensitivity`.
        limit: show at most this many layers (default None: all).

    Returns:
        the header lines and an aligned table, most sensitive layer first.
    """
    from ..report import table
    base = sensitivity.baseline
    what = sensitivity.what
    real = worst_sqnr(base)
    header = ["Per-layer sensitivity ({}: {}) on {} samples; all INT8 on {}.".format(
        sensitivity.method, METHOD_TEXT, sensitivity.samples, base.samples)]
    line = "All INT8: output SQNR {} dB".format(_format_db(real))
    if sensitivity.simulated_sqnr_db is not None:
        line += " (unfused QDQ arithmetic: {} dB)".format(
            _format_db(sensitivity.simulated_sqnr_db))
    header.append(line + ", {} {}.".format(what, _format_quantity(what, sensitivity.achieved)))
    if (sensitivity.simulated_sqnr_db is not None and real is not None
            and sensitivity.simulated_sqnr_db - real > 3.0):
        header.append("Note: the INT8 kernels lose {:.1f} dB more than the QDQ arithmetic: the "
                      "loss comes from the kernels (e.g. U8S8 saturation on x86 without VNNI), "
                      "not from the ranges; the activation columns cannot show it.".format(
                          sensitivity.simulated_sqnr_db - real))
    rows = [("rank", "layer", "ops", "SQNR dB alone", "{} alone".format(what),
             "act. SQNR dB", "act. loss dB")]
    layers = sensitivity.layers if limit is None else sensitivity.layers[:limit]
    for rank, layer in enumerate(layers, 1):
        rows.append((str(rank), layer.name, layer.label, _format_db(layer.sqnr_db),
                     _format_quantity(what, layer.achieved),
                     "-" if layer.activation_sqnr_db is None and layer.activation_loss_db is None
                     else _format_db(layer.activation_sqnr_db),
                     "-" if layer.activation_loss_db is None
                     else "{:.1f}".format(layer.activation_loss_db)))
    lines = header + [table(rows)]
    if limit is not None and len(sensitivity.layers) > limit:
        lines.append("({} more layers add less error.)".format(len(sensitivity.layers) - limit))
    return "\n".join(lines)


def plot(sensitivity, path, limit=30):
    """A bar chart of the ranking as PNG, when matplotlib is installed.

    Args:
        sensitivity: a :class:`Sensitivity`.
        path: the PNG to write (written under a temporary name, then renamed).
        limit: plot at most this many layers, most sensitive first (default 30).

    Returns:
        ``path``, or None when matplotlib is not installed (nothing is written).
    """
    if not available("matplotlib"):
        return None
    figure_mod = require("matplotlib.figure")
    agg = require("matplotlib.backends.backend_agg")
    layers = [layer for layer in sensitivity.layers if layer.sqnr_db is not None][:limit]
    figure = figure_mod.Figure(figsize=(8, 1.5 + 0.3 * max(len(layers), 1)))
    agg.FigureCanvasAgg(figure)
    axes = figure.add_subplot(111)
    positions = list(range(len(layers)))
    # Noise power over signal power, log scale: the longest bar is the worst layer.
    axes.barh(positions, [10.0 ** (-layer.sqnr_db / 10.0) for layer in layers],
              color="#c0504d")
    axes.set_xscale("log")
    axes.set_yticks(positions)
    axes.set_yticklabels(["{} ({})".format(layer.name, layer.label) for layer in layers],
                         fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("output noise / signal power with only this group in INT8 (log scale)")
    axes.set_title("Per-layer sensitivity, {} samples".format(sensitivity.samples))
    figure.tight_layout()
    partial = "{}.partial-{}".format(path, os.getpid())
    try:
        with open(partial, "wb") as handle:
            figure.savefig(handle, format="png", dpi=100)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def mixed_precision(builder, reference, budget, sensitivity=None, metric=None,
                    runner=ort_runner):
    """Sensitivity pass (unless given) then budget search, for the ORT QDQ recipe.

    Args:
        builder: a :class:`QdqBuilder`.
        reference: the :class:`~edgeinfer.conversion.metrics.ReferenceOutputs`.
        budget: the :class:`~edgeinfer.conversion.metrics.Budget`.
        sensitivity: a :class:`Sensitivity` already measured with this builder
            and reference (default None: :func:`analyze` runs, without the
            activation comparison, which the search does not need).
        metric: a user metric to record on every model (default None; a budget on
            a custom metric brings its own).
        runner: callable path -> (feeds -> outputs) (default :func:`ort_runner`).

    Returns:
        (:class:`Sensitivity`, :class:`~edgeinfer.conversion.budget.SearchResult`)

    Raises:
        ConversionError: the budget cannot be met by keeping quantized ops in FP32.
        UsageError: the budget cannot be measured on this data.
    """
    from .budget import search
    if budget.kind == "metric":
        metric = budget.metric
    budget.check_data(reference.labelled > 0, reference.output_names)
    if sensitivity is None:
        sensitivity = analyze(builder, reference, budget, metric, activations=False,
                              runner=runner)
    built = []

    def build(excluded):
        built.append(builder.build(exclude=excluded))
        return built[-1]

    result = search(budget, sensitivity.layers, build,
                    lambda path: metrics_mod.evaluate(reference, runner(path), metric),
                    baseline=sensitivity.baseline)
    for path in set(built) - {result.model, sensitivity.baseline_model}:
        builder.discard(path)
    return sensitivity, result
