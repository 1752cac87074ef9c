"""Cross-layer equalisation and bias correction: recipe steps ONNX Runtime lacks (issue 4).

MobileNet-style networks lose most of their accuracy under per-tensor INT8 weights:
folding BatchNorm into a depthwise convolution multiplies each output channel by
``gamma / sqrt(var + eps)``, and a channel whose input is (nearly) constant, a dead
ReLU6 unit, gets a gain of up to ``1 / sqrt(eps)``.  One scale then serves weight
ranges 20-300x apart and the small channels round to zero.

**Cross-layer equalisation** (Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction") rescales pairs ``Conv -> act -> Conv``
without changing what the FP32 model computes: output channel ``i`` of the first
conv (weights and bias) is divided by ``s_i`` and input channel ``i`` of the second
multiplied by it, with ``s_i = sqrt(r1_i * r2_i) / r2_i`` (``r`` the channels'
weight ranges), so both ranges become ``sqrt(r1_i * r2_i)``.  It is exact through
activations with ``f(x / s) = f(x) / s`` for ``s > 0``: none, ReLU, and ``Clip``
with a lower bound of 0 once its upper bound is divided by ``s_i`` too.  ONNX
``Clip`` takes one scalar bound, so a ReLU6 between rescaled convs becomes ``Relu``
followed by ``Min`` with a per-channel cap ``6 / s_i``: exact for every input, at
the cost of one elementwise op (it stays FP32 between the INT8 convs; see
:func:`equalize`).  A chain (pointwise -> depthwise -> pointwise) shares its middle
layer between two pairs, so sweeps repeat until the scales stop changing.

**Bias correction** removes the mean shift that quantized weights add to a layer's
output: ``E[(W_q - W) x] = (W_q - W) E[x]``.  It is measured, not assumed: the
INT8 model runs over the calibration data, every quantized Conv's (and Gemm's)
dequantized input is averaged per channel and kernel offset (so zero padding and
strides are accounted exactly), and the mean error each layer's own weights add is
subtracted from its FP32 bias; the recipe then quantizes the corrected model
again with the same activation ranges.  Correcting each layer for its own weights
(rather than for the whole upstream drift) needs one pass over the data whatever
the depth, like NNCF's fast bias correction.

Where the recipes use them (docs/BENCHMARKS.md, "Equalisation and bias correction
(issue 4)", has the measurements): the ONNX Runtime recipe corrects biases in every
static INT8 conversion, and both recipes equalise when a conv's ranges are spread
and the weights are quantized per tensor (:func:`equalize_file`); per-channel
weight scales absorb the spread by themselves.  NNCF (the OpenVINO recipe) already
corrects biases (fast bias correction, on by default); its ``ChannelAlignment``
equalises only ``Conv -> Conv`` pairs with no activation in between, and is off by
default, so the OpenVINO recipe equalises the ONNX model before conversion.

Workstation side: numpy here, onnx and onnxruntime imported lazily.
"""

import math
from typing import NamedTuple, Optional

import numpy as np

from ..errors import ConversionError
from ..lazy import require

# Per-output-channel weight ranges of one conv further apart than this (largest over
# median) call for equalisation: the median channel then keeps fewer than 8 of a
# per-tensor INT8 scale's 127 steps (4 of 63 with reduce-range).  Trained conv nets
# without the BatchNorm-folding problem stay below 5 (the demo CNN: 1.6).
SPREAD_THRESHOLD = 16.0
# Sweeps over all pairs; equalisation stops early once no scale moves by more than
# SCALE_TOLERANCE (relative).  The shipped MobileNet-style net (6 pairs in a chain)
# settles in 38 sweeps, a few milliseconds.
MAX_SWEEPS = 50
SCALE_TOLERANCE = 1e-4
# Activations through which rescaling is exact (see the module docstring).
HOMOGENEOUS = ("Relu",)


class ConvPair(NamedTuple):
    """Two convs that equalisation rescales together.

    Attributes:
        first: the Conv whose output channels are divided by the scales.
        activation: the node between them (``Relu`` or ``Clip``), or None.
        clip_max: the Clip's upper bound, or None (no bound: ReLU or nothing).
        second: the Conv whose input channels are multiplied by the scales.
    """

    first: object
    activation: object
    clip_max: Optional[float]
    second: object


class Graph(object):
    """Lookups over one ``onnx.GraphProto``: producers, consumers, initializers."""

    def __init__(self, graph):
        numpy_helper = require("onnx.numpy_helper", "equalisation")
        self.graph = graph
        self.initializers = dict((t.name, t) for t in graph.initializer)
        self.consumers, self.producer, self.uses = {}, {}, {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
                    self.uses[name] = self.uses.get(name, 0) + 1
            for name in node.output:
                self.producer[name] = node
        self.outputs = set(o.name for o in graph.output)
        self._to_array = numpy_helper.to_array

    def array(self, name):
        """An initializer as a numpy array, or None when ``name`` is not one."""
        tensor = self.initializers.get(name)
        if tensor is not None:
            return self._to_array(tensor)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    return self._to_array(attribute.t)
        return None

    def own_weight(self, name):
        """A float32 initializer used by exactly one node input (safe to rewrite), or None."""
        if not name or name not in self.initializers or self.uses.get(name, 0) != 1:
            return None
        value = self.array(name)
        return value if value.dtype == np.float32 else None

    def rewritable_conv(self, node):
        """Whether ``node`` is a Conv whose weight (and bias, if any) may be rewritten."""
        if node.op_type != "Conv" or self.own_weight(node.input[1]) is None:
            return False
        bias = _bias_name(node)
        return not bias or self.own_weight(bias) is not None

    def only_consumer(self, tensor):
        """The one node reading ``tensor``, or None (several readers, or a graph output)."""
        readers = self.consumers.get(tensor, [])
        if len(readers) != 1 or tensor in self.outputs:
            return None
        return readers[0]


def _bias_name(node):
    """The bias input of a Conv or Gemm, or "" when it has none."""
    return node.input[2] if len(node.input) > 2 else ""


def _bias_values(graph, node, size):
    """A Conv's or Gemm's bias as float64, zeros when it has none."""
    name = _bias_name(node)
    return graph.array(name).astype(np.float64) if name else np.zeros(size)


def _set_bias(model, graph, node, values, suffix):
    """Make ``values`` the bias of ``node`` (a node of ``model``), adding an input if needed."""
    numpy_helper = require("onnx.numpy_helper", "equalisation")
    name = _bias_name(node)
    if name:
        graph.initializers[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32),
                                                                  name))
        return
    name = _unique(graph, (node.name or node.output[0]) + suffix)
    model.graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), name))
    del node.input[2:]
    node.input.append(name)


def _attribute(node, name, default=None):
    helper = require("onnx.helper", "equalisation")
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def channel_ranges(weight):
    """Per-output-channel weight ranges, ``max |w|`` (symmetric INT8 weights use that)."""
    return np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)


def _input_channel_ranges(weight, group):
    """Per-input-channel ranges of a conv weight ``[out, in / group, *kernel]``."""
    out_channels, per_group = weight.shape[0], weight.shape[1]
    grouped = np.abs(weight.reshape(group, out_channels // group, per_group, -1))
    return grouped.max(axis=(1, 3)).reshape(group * per_group)


def _spread(ranges):
    """(largest / median, largest / smallest) of the positive channel ranges.

    An all-zero channel is left out: it quantizes exactly with any scale.
    """
    positive = ranges[ranges > 0]
    if not positive.size:
        return 1.0, 1.0
    largest = positive.max()
    return float(largest / np.median(positive)), float(largest / positive.min())


def weight_spread(model):
    """How far apart each Conv's per-output-channel weight ranges are.

    Args:
        model: an ``onnx.ModelProto``.

    Returns:
        one dict per Conv with a constant float32 weight, in graph order: ``node``,
        ``depthwise`` (group == input channels > 1), ``channels``, ``max_range``,
        ``max_over_median`` and ``max_over_min``.
    """
    graph = Graph(model.graph)
    rows = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight = graph.array(node.input[1])
        if weight is None or weight.dtype != np.float32 or weight.ndim < 3:
            continue
        group = _attribute(node, "group", 1)
        ranges = channel_ranges(weight)
        over_median, over_min = _spread(ranges)
        rows.append({"node": node.name or node.output[0],
                     "depthwise": group > 1 and weight.shape[1] == 1,
                     "channels": int(weight.shape[0]), "max_range": float(ranges.max()),
                     "max_over_median": over_median, "max_over_min": over_min})
    return rows


def _clip_bounds(node, graph):
    """(min, max) of a Clip as floats (None: unbounded), or None when not constant."""
    if len(node.input) > 1 or not any(a.name in ("min", "max") for a in node.attribute):
        bounds = []
        for index in (1, 2):
            name = node.input[index] if len(node.input) > index else ""
            if not name:
                bounds.append(None)
                continue
            value = graph.array(name)
            if value is None or value.size != 1:
                return None
            bounds.append(float(value.reshape(())))
        return tuple(bounds)
    # Opset < 11: bounds are attributes.
    return _attribute(node, "min"), _attribute(node, "max")


def find_pairs(model):
    """The ``Conv -> [Relu | Clip(0, m)] -> Conv`` pairs equalisation may rescale.

    A pair qualifies when each tensor between the convs has exactly one reader and
    is no graph output, both weights are float32 initializers no other node uses,
    the first conv's bias (if any) is one too, and the channel counts match.

    Args:
        model: an ``onnx.ModelProto``.

    Returns:
        a list of :class:`ConvPair`, in graph order.
    """
    graph = Graph(model.graph)
    pairs = []
    for first in model.graph.node:
        if not graph.rewritable_conv(first):
            continue
        node = graph.only_consumer(first.output[0])
        activation, clip_max = None, None
        if node is not None and node.op_type in HOMOGENEOUS + ("Clip",):
            if node.op_type == "Clip":
                bounds = _clip_bounds(node, graph)
                # Only a lower bound of exactly 0 commutes with a positive scale.
                if bounds is None or bounds[0] != 0.0:
                    continue
                clip_max = bounds[1] if bounds[1] is not None and math.isfinite(bounds[1]) \
                    else None
            activation = node
            node = graph.only_consumer(node.output[0])
        if node is None or node.op_type != "Conv" or node.input[0] != (
                activation or first).output[0]:
            continue
        second_weight = graph.own_weight(node.input[1])
        if second_weight is None:
            continue
        channels = graph.array(first.input[1]).shape[0]
        if second_weight.shape[1] * _attribute(node, "group", 1) != channels:
            continue
        pairs.append(ConvPair(first, activation, clip_max, node))
    return pairs


def needs_equalization(model, threshold=SPREAD_THRESHOLD):
    """Whether a conv that equalisation can rescale has widely spread channel ranges.

    Args:
        model: an ``onnx.ModelProto``.
        threshold: largest over median per-output-channel weight range that calls for
            it (default :data:`SPREAD_THRESHOLD`).

    Returns:
        (bool, reason): the reason names the worst conv and its spread.
    """
    rows = weight_spread(model)
    if not rows:
        return False, "no Conv with constant weights"
    in_pairs = set()
    for pair in find_pairs(model):
        in_pairs.update((pair.first.name or pair.first.output[0],
                         pair.second.name or pair.second.output[0]))
    describe = lambda row: "{}conv {!r}: per-channel weight ranges {:.0f}x apart " \
        "(largest / median)".format("depthwise " if row["depthwise"] else "", row["node"],
                                    row["max_over_median"])  # noqa: E731
    worst = max(rows, key=lambda r: r["max_over_median"])
    if worst["max_over_median"] < threshold:
        return False, "{}, below the {:g}x that calls for equalisation".format(
            describe(worst), threshold)
    fixable = [r for r in rows if r["max_over_median"] >= threshold and r["node"] in in_pairs]
    if not fixable:
        return False, "{}, but it is in no Conv -> ReLU/ReLU6 -> Conv pair that equalisation " \
            "can rescale".format(describe(worst))
    return True, "{} (threshold {:g}x)".format(
        describe(max(fixable, key=lambda r: r["max_over_median"])), threshold)


def equalize(model, sweeps=MAX_SWEEPS, tolerance=SCALE_TOLERANCE):
    """Cross-layer equalisation of every :func:`find_pairs` pair; FP32 outputs unchanged.

    Args:
        model: an ``onnx.ModelProto`` (not modified).
        sweeps: at most this many passes over the pairs (default :data:`MAX_SWEEPS`).
        tolerance: stop once no scale of a sweep differs from 1 by more than this
            (default :data:`SCALE_TOLERANCE`).

    Returns:
        (equalised copy of the model, report dict: ``pairs``, ``sweeps``,
        ``clips_capped`` (ReLU6 units rewritten as Relu + per-channel Min), ``spread``
        (largest max/median ratio before and after), ``pair_names``).
    """
    onnx = require("onnx", "equalisation")
    numpy_helper = require("onnx.numpy_helper", "equalisation")
    model = _copy(onnx, model)
    graph = Graph(model.graph)
    pairs = find_pairs(model)
    before = max([r["max_over_median"] for r in weight_spread(model)] or [1.0])
    weights = {}
    for pair in pairs:
        for name in (pair.first.input[1], pair.second.input[1], _bias_name(pair.first)):
            if name:
                weights[name] = graph.array(name).astype(np.float64)
    totals = [np.ones(graph.array(p.first.input[1]).shape[0]) for p in pairs]
    done = 0
    for done in range(1, sweeps + 1):
        largest = 0.0
        for pair, total in zip(pairs, totals):
            scales = _equalize_pair(pair, weights)
            total *= scales
            largest = max(largest, float(np.abs(scales - 1.0).max()))
        if largest <= tolerance:
            break
    for name, value in weights.items():
        graph.initializers[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    rewrites = {}
    for pair, total in zip(pairs, totals):
        if pair.clip_max is not None and np.abs(total - 1.0).max() > 0:
            rewrites[pair.activation.output[0]] = _capped_relu(model, graph, pair, total)
    if rewrites:
        # One rebuild of the node list: messages taken from it go stale when it changes.
        nodes, bounds = [], set()
        for node in model.graph.node:
            if node.op_type == "Clip" and node.output[0] in rewrites:
                nodes.extend(rewrites[node.output[0]])
                bounds.update(node.input[1:])
            else:
                nodes.append(_copy_node(node))
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        _drop_unused(model, bounds)
    after = max([r["max_over_median"] for r in weight_spread(model)] or [1.0])
    return model, {"pairs": len(pairs), "sweeps": done,
                   "spread": {"before": round(before, 2), "after": round(after, 2)},
                   "clips_capped": len(rewrites),
                   "pair_names": [[p.first.name, p.second.name] for p in pairs]}


def _drop_unused(model, names):
    """Remove the initializers among ``names`` that no node reads any more."""
    used = set(name for node in model.graph.node for name in node.input)
    keep = [t for t in model.graph.initializer if t.name not in names or t.name in used]
    if len(keep) < len(model.graph.initializer):
        kept = [_copy_tensor(t) for t in keep]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)


def _copy_tensor(tensor):
    onnx = require("onnx", "equalisation")
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    return copy


def _copy(onnx, model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _equalize_pair(pair, weights):
    """Rescale one pair in ``weights`` (float64 arrays, in place); return the scales ``s``."""
    first = weights[pair.first.input[1]]
    second = weights[pair.second.input[1]]
    group = _attribute(pair.second, "group", 1)
    r1 = channel_ranges(first)
    r2 = _input_channel_ranges(second, group)
    scales = np.ones_like(r1)
    # A channel that is zero on either side carries nothing: leave it as it is.
    live = (r1 > 0) & (r2 > 0)
    scales[live] = np.sqrt(r1[live] / r2[live])
    shape = (-1,) + (1,) * (first.ndim - 1)
    first /= scales.reshape(shape)
    if _bias_name(pair.first):
        weights[_bias_name(pair.first)] /= scales
    out_channels, per_group = second.shape[0], second.shape[1]
    view = second.reshape(group, out_channels // group, per_group, -1)
    view *= scales.reshape(group, 1, per_group, 1)
    return scales


def _capped_relu(model, graph, pair, total):
    """``Clip(0, m)`` as ``Relu`` + ``Min(cap)``, cap_i = m / s_i (exact); returns the nodes."""
    helper = require("onnx.helper", "equalisation")
    numpy_helper = require("onnx.numpy_helper", "equalisation")
    clip = pair.activation
    name = clip.name or clip.output[0]
    rank = graph.array(pair.first.input[1]).ndim
    cap = (pair.clip_max / total).astype(np.float32).reshape((-1,) + (1,) * (rank - 2))
    cap_name = _unique(graph, name + "/equalized_cap")
    relu_out = _unique(graph, clip.output[0] + "/relu")
    model.graph.initializer.append(numpy_helper.from_array(cap, cap_name))
    # The Relu keeps the Clip's name, so a node list naming it (--ignore-node, an
    # accuracy budget's kept ops) still finds it.
    relu = helper.make_node("Relu", [clip.input[0]], [relu_out], name=name)
    minimum = helper.make_node("Min", [relu_out, cap_name], [clip.output[0]],
                               name=_unique(graph, name + "/cap"))
    return [relu, minimum]


def _copy_node(node):
    onnx = require("onnx", "equalisation")
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _unique(graph, name):
    taken = set(graph.initializers) | set(graph.producer) | set(
        n.name for n in graph.graph.node)
    candidate, index = name, 1
    while candidate in taken:
        index += 1
        candidate = "{}_{}".format(name, index)
    graph.producer[candidate] = None
    return candidate


def equalize_file(source_path, out_path, per_channel=False, threshold=SPREAD_THRESHOLD):
    """The recipe step: equalise ``source_path`` into ``out_path`` when INT8 needs it.

    Equalisation is applied when a conv's channel ranges are spread (see
    :func:`needs_equalization`) *and* the weights get one scale per tensor.  Per-channel
    weight scales absorb the spread by themselves (measured on
    ``models/mobilenet_digits.onnx``: cosine 0.9999 without equalisation, 0.9998 with),
    while equalising a ReLU6 network adds a ``Min`` per rescaled ReLU6 that costs time
    (1.45x the INT8 latency at batch 1 on that model), so with per-channel weights the
    spread is only reported.
    BatchNormalization nodes after convs are folded first, so an unfolded export is
    judged by the weights the backend will quantize.

    Args:
        source_path: an FP32 ONNX model.
        out_path: where the equalised model goes (written only when applied).
        per_channel: whether the weights will be quantized per channel (default False).
        threshold: see :func:`needs_equalization`.

    Returns:
        (path of the model to quantize: ``out_path`` or ``source_path``, report for the
        manifest: ``applied``, ``reason`` and, when applied, :func:`equalize`'s report
        plus ``max_rel_diff_fp32``, the FP32 check of :func:`check_equivalent`)

    Raises:
        ConversionError: the equalised model does not reproduce the FP32 outputs (an
            edgeinfer bug; the message says so).
    """
    onnx = require("onnx", "equalisation")
    original = onnx.load(source_path)
    model, folded = fold_batch_norms(original)
    needed, reason = needs_equalization(model, threshold)
    if needed and per_channel:
        needed, reason = False, reason + "; not applied: per-channel weight scales absorb " \
            "the spread"
    report = {"applied": needed, "reason": reason,
              "method": "cross-layer equalisation (Nagel et al. 2019)"}
    if not needed:
        return source_path, report
    equalized, details = equalize(model)
    report.update(details)
    report["batch_norms_folded"] = folded
    report["max_rel_diff_fp32"] = check_equivalent(original, equalized)
    onnx.save(equalized, out_path)
    return out_path, report


def fold_batch_norms(model):
    """Fold each ``Conv -> BatchNormalization`` (constant statistics) into the Conv.

    Returns:
        (the model, or a folded copy, and how many BatchNormalization nodes were folded)
    """
    graph = Graph(model.graph)
    folds = {}
    for conv in model.graph.node:
        if not graph.rewritable_conv(conv):
            continue
        norm = graph.only_consumer(conv.output[0])
        if norm is None or norm.op_type != "BatchNormalization" or len(norm.output) > 1 and any(
                norm.output[1:]):
            continue
        params = [graph.array(name) for name in norm.input[1:5]]
        if any(p is None for p in params):
            continue
        folds[norm.output[0]] = (conv, norm, params)
    if not folds:
        return model, 0
    onnx = require("onnx", "equalisation")
    numpy_helper = require("onnx.numpy_helper", "equalisation")
    model = _copy(onnx, model)
    graph = Graph(model.graph)
    nodes = []
    convs = dict((c.output[0], (n.output[0], n, p)) for c, n, p in folds.values())
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and node.output[0] in folds:
            continue
        node = _copy_node(node)
        if node.op_type == "Conv" and node.output[0] in convs:
            output, norm, (scale, shift, mean, var) = convs[node.output[0]]
            epsilon = _attribute(norm, "epsilon", 1e-5)
            gain = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + epsilon)
            weight = graph.array(node.input[1]).astype(np.float64)
            weight *= gain.reshape((-1,) + (1,) * (weight.ndim - 1))
            graph.initializers[node.input[1]].CopyFrom(
                numpy_helper.from_array(weight.astype(np.float32), node.input[1]))
            bias = (_bias_values(graph, node, weight.shape[0]) - mean) * gain + shift
            _set_bias(model, graph, node, bias, "/folded_bias")
            node.output[0] = output
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, len(folds)


def check_equivalent(original, equalized, samples=4, seed=0, tolerance=1e-3):
    """Run both models on seeded random inputs; the largest relative output difference.

    Equalisation is exact in real arithmetic; float32 rounding leaves about 1e-6.
    A symbolic first dim gets ``samples``, any other symbolic dim 32.

    Returns:
        the difference relative to each output's largest value, or None when the
        models cannot be run on made-up inputs (non-float inputs, or symbolic dims
        that 32 does not fit).

    Raises:
        ConversionError: a difference above ``tolerance``.
    """
    ort = require("onnxruntime", "equalisation")
    runs = []
    for model in (original, equalized):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        runs.append(ort.InferenceSession(model.SerializeToString(), options,
                                         providers=["CPUExecutionProvider"]))
    rng = np.random.RandomState(seed)
    feeds = {}
    for spec in runs[0].get_inputs():
        if spec.type != "tensor(float)":
            return None
        shape = [d if isinstance(d, int) and d > 0 else (samples if i == 0 else 32)
                 for i, d in enumerate(spec.shape)]
        feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    try:
        pairs = zip(runs[0].run(None, feeds), runs[1].run(None, feeds))
    except Exception:
        # A guessed size the graph rejects says nothing about equalisation.
        return None
    worst = 0.0
    for a, b in pairs:
        scale = max(float(np.abs(a).max()), 1e-12)
        worst = max(worst, float(np.abs(a - b).max()) / scale)
    if worst > tolerance:
        raise ConversionError("Cross-layer equalisation changed the FP32 outputs (relative "
                              "difference {:.2g}).".format(worst),
                              "This is an edgeinfer bug: please report it with --debug.")
    return worst


# -- bias correction ---------------------------------------------------------------------

CORRECTED_OPS = ("Conv", "Gemm")


class _Layer(NamedTuple):
    """A quantized layer of the INT8 model and its FP32 twin."""

    node: object        # in the INT8 (QDQ) model
    twin: object        # the same node in the FP32 model
    weight_error: object  # dequantized INT8 weight minus the FP32 weight (float64)


def _dequantize(graph, node):
    """The float weights a ``DequantizeLinear`` of constants yields, or None."""
    values = graph.array(node.input[0])
    scale = graph.array(node.input[1])
    if values is None or scale is None:
        return None
    zero = graph.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    values = values.astype(np.float64)
    scale = scale.astype(np.float64)
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float64)
    if scale.size > 1:
        axis = _attribute(node, "axis", 1) % values.ndim
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale


def _by_unique_name(model):
    """Nodes by name, for the names that are set and unique (the rest cannot be matched)."""
    seen, unique = {}, {}
    for node in model.graph.node:
        seen[node.name] = seen.get(node.name, 0) + 1
    for node in model.graph.node:
        if node.name and seen[node.name] == 1:
            unique[node.name] = node
    return unique


def _quantized_layers(float_model, qdq_model):
    """The Conv/Gemm nodes whose weights the INT8 model dequantizes from constants."""
    qdq, fp32 = Graph(qdq_model.graph), Graph(float_model.graph)
    twins = _by_unique_name(float_model)
    layers = []
    for node in qdq_model.graph.node:
        twin = twins.get(node.name)
        if node.op_type not in CORRECTED_OPS or twin is None or twin.op_type != node.op_type:
            continue
        if node.op_type == "Gemm" and _attribute(node, "transA", 0):
            continue
        source = qdq.producer.get(node.input[1])
        weight = fp32.own_weight(twin.input[1])
        if source is None or source.op_type != "DequantizeLinear" or weight is None:
            continue
        if _bias_name(twin) and fp32.own_weight(_bias_name(twin)) is None:
            continue
        quantized = _dequantize(qdq, source)
        if quantized is None or quantized.shape != weight.shape:
            continue
        layers.append(_Layer(node, twin, quantized - weight.astype(np.float64)))
    return layers


def _conv_geometry(node, spatial, kernel):
    """(pads begin, pads end, strides, dilations, output size) per spatial dim of a Conv."""
    dims = len(kernel)
    strides = list(_attribute(node, "strides", [1] * dims))
    dilations = list(_attribute(node, "dilations", [1] * dims))
    pads = list(_attribute(node, "pads", [0] * (2 * dims)))
    auto_pad = _attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    begin, end, out = pads[:dims], pads[dims:], []
    for i in range(dims):
        span = (kernel[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            size = -(-spatial[i] // strides[i])
            total = max((size - 1) * strides[i] + span - spatial[i], 0)
            small, large = total // 2, total - total // 2
            begin[i], end[i] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        elif auto_pad == "VALID":
            begin[i] = end[i] = 0
        out.append((spatial[i] + begin[i] + end[i] - span) // strides[i] + 1)
    return begin, end, strides, dilations, out


def mean_patch(x, node, kernel):
    """Sum over samples and output positions of the input patch each kernel tap sees.

    ``conv(W, x)`` averaged over positions is ``sum(W * P) / count`` with ``P`` this
    sum: zero padding, strides and dilations are counted exactly, which matters on
    small feature maps (an 8x8 map with 3x3 taps has a third of its taps on padding).

    Args:
        x: the conv's input ``[N, C, *spatial]``.
        node: the Conv node (its pads, strides, dilations, auto_pad).
        kernel: the kernel's spatial shape.

    Returns:
        (``P`` as float64 ``[C, *kernel]``, count of output positions times samples)
    """
    spatial = x.shape[2:]
    begin, end, strides, dilations, out = _conv_geometry(node, spatial, kernel)
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + list(zip(begin, end)))
    patch = np.zeros((x.shape[1],) + tuple(kernel))
    for tap in np.ndindex(*kernel):
        window = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                       for t, d, o, s in zip(tap, dilations, out, strides))
        patch[(slice(None),) + tap] = padded[(slice(None), slice(None)) + window].sum(
            axis=tuple([0] + list(range(2, x.ndim))))
    return patch, x.shape[0] * int(np.prod(out))


def _shift(layer, patch, count):
    """The mean output shift ``E[(W_q - W) x]`` per output channel of one layer."""
    error = layer.weight_error
    if layer.node.op_type == "Gemm":
        # Gemm: y = alpha * x @ B (+ beta * C); B is [K, N], or [N, K] with transB.
        matrix = error.T if _attribute(layer.node, "transB", 0) else error
        return _attribute(layer.node, "alpha", 1.0) * (patch / count) @ matrix
    group = _attribute(layer.node, "group", 1)
    out_channels, per_group = error.shape[0], error.shape[1]
    grouped = error.reshape(group, out_channels // group, per_group, -1)
    taps = (patch / count).reshape(group, per_group, -1)
    return np.einsum("gojk,gjk->go", grouped, taps).reshape(out_channels)


def bias_correction(float_model, qdq_model, batches):
    """Correct each quantized Conv/Gemm bias for the mean error its INT8 weights add.

    Runs ``qdq_model`` over ``batches`` once, averages the dequantized input every
    quantized Conv and Gemm sees, and subtracts ``(W_q - W) E[x]`` from the FP32
    bias (adding a bias where a layer has none).  Quantize the returned model again
    with the same activation ranges to ship it.

    Args:
        float_model: the FP32 ``onnx.ModelProto`` ``qdq_model`` was made from (node
            names shared).
        qdq_model: its QDQ INT8 ``onnx.ModelProto``.
        batches: iterable of feed dicts (the calibration data).

    Returns:
        (corrected copy of ``float_model``, report dict: ``layers`` corrected,
        ``samples``, ``mean_abs_shift`` and ``max_abs_shift`` of the corrections)

    Raises:
        ConversionError: no batch was given.
    """
    onnx = require("onnx", "bias correction")
    ort = require("onnxruntime", "bias correction")
    layers = _quantized_layers(float_model, qdq_model)
    corrected = _copy(onnx, float_model)
    if not layers:
        return corrected, {"layers": 0, "samples": 0}
    probe = _copy(onnx, qdq_model)
    existing = set(o.name for o in probe.graph.output)
    inputs = []
    for layer in layers:
        name = layer.node.input[0]
        inputs.append(name)
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
            existing.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Graph optimisations would fuse the QDQ pairs away and hide the probed tensors.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    wanted = sorted(set(inputs))
    sums, counts, samples = {}, {}, 0
    for feeds in batches:
        values = dict(zip(wanted, session.run(wanted, feeds)))
        samples += len(next(iter(feeds.values())))
        for layer in layers:
            x = values[layer.node.input[0]]
            if layer.node.op_type == "Gemm":
                patch, count = x.astype(np.float64).sum(axis=0), x.shape[0]
            else:
                patch, count = mean_patch(x, layer.node, layer.weight_error.shape[2:])
            key = layer.node.name
            sums[key] = sums.get(key, 0.0) + patch
            counts[key] = counts.get(key, 0) + count
    if not samples:
        raise ConversionError("Bias correction received no data.", "Check --calibration.")
    graph = Graph(corrected.graph)
    twins = _by_unique_name(corrected)
    shifts = []
    for layer in layers:
        shift = _shift(layer, sums[layer.node.name], counts[layer.node.name])
        if layer.node.op_type == "Gemm":
            shift = shift / _attribute(layer.node, "beta", 1.0)
        shifts.append(np.abs(shift))
        node = twins[layer.twin.name]
        _set_bias(corrected, graph, node, _bias_values(graph, node, len(shift)) - shift,
                  "/corrected_bias")
    every = np.concatenate(shifts)
    return corrected, {"layers": len(layers), "samples": samples,
                       "mean_abs_shift": float(every.mean()),
                       "max_abs_shift": float(every.max())}


def bias_correction_file(float_path, qdq_path, batches, out_path):
    """The recipe step: :func:`bias_correction` from files, the corrected model to ``out_path``.

    Returns:
        (``out_path``, report for the manifest's ``quantization.bias_correction``)
    """
    onnx = require("onnx", "bias correction")
    corrected, report = bias_correction(onnx.load(float_path), onnx.load(qdq_path), batches)
    onnx.save(corrected, out_path)
    report["method"] = "empirical: mean error of each layer's INT8 weights on the " \
        "calibration data, subtracted from its bias"
    return out_path, report
