"""TensorRT's rules for explicitly quantized (Q/DQ) ONNX models, checked on a graph.

TensorRT builds an INT8 engine from QuantizeLinear/DequantizeLinear nodes
("explicit quantization"); a model that breaks its rules fails to parse, or
parses and then runs Q/DQ layers as slow unfused INT8 reformats.
:func:`check_trt_qdq` lists every break, each as the node, the rule and what
was found.  The rules and where they come from:

``opset``
    The default opset is 13 or newer: per-channel scales (the ``axis``
    attribute of QuantizeLinear/DequantizeLinear) exist from opset 13.
``int8``
    Every Q/DQ is INT8.  onnx-tensorrt's Q/DQ importer refuses UINT8 data and
    has no INT32 DequantizeLinear (ONNX Runtime's quantized bias); a
    QuantizeLinear without a zero point outputs UINT8 by the ONNX spec.
``zero-point``
    Zero points are constant and all 0: TensorRT quantizes symmetrically (the
    importer asserts "TensorRT only supports symmetric quantization").
``scale``
    Scales are constants, positive and finite (the importer asserts "Scale
    coefficients must all be positive"), and as long as their zero point.
``per-channel`` / ``axis``
    A weight's scales are per output channel, on that channel's axis, one scale
    per channel: Conv weights ``[K, C, kh, kw]`` axis 0, ConvTranspose
    ``[C, K/g, kh, kw]`` axis 1, Gemm ``B`` axis 0 with ``transB=1`` (``[N, K]``)
    else 1, MatMul's constant ``B`` ``[..., K, N]`` its last axis.  The
    importer checks that the scale count equals the size of ``axis``; the
    output-channel axes are TensorRT's (its importer comments "weight
    quantization with dimensions KCRS (K is # output channels)") and NVIDIA's
    pytorch-quantization (Linear weights ``[out, in]`` per row) and TensorRT
    Model Optimizer (Conv 0, ConvTranspose 1).  ``per-channel`` is only asked
    for when the caller wants per-channel weights (the default).
``per-tensor``
    Activation scales are one value: TensorRT's importer supports per-axis
    scales for weights only.
``fp32-weights``
    A weight is an FP32 constant under a QuantizeLinear, not an INT8 constant:
    TensorRT 8.x quantizes weights itself with the QuantizeLinear's scale (the
    form pytorch-quantization exports); INT8 weights under a bare
    DequantizeLinear need TensorRT 10.  Asked for by default.
``pair``
    A QuantizeLinear feeds DequantizeLinear nodes only.
``placement``
    Q/DQ sits where TensorRT fuses it, per its Q/DQ placement recommendations
    ("quantize all inputs of weighted operations", quantize the residual input
    of an element-wise add): a DequantizeLinear feeds Conv, ConvTranspose,
    MatMul or Gemm, or the residual input of an Add whose other input is a
    Conv/ConvTranspose output (TensorRT fuses the add into that convolution).
    Anywhere else TensorRT would run an INT8 layer on its own (or a
    reformat), which is slower than FP16; a weight's DequantizeLinear feeds
    the weight input of such an op.

The checker reads constants from initializers and Constant nodes; it needs
only ``onnx`` (imported when called).
"""

from typing import NamedTuple

import numpy as np

from ..lazy import require
from .source import default_opset

MIN_OPSET = 13
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops whose quantized inputs TensorRT fuses into one INT8 kernel.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Producers an Add can be fused into, so that its other input is the residual.
RESIDUAL_PRODUCERS = ("Conv", "ConvTranspose")

# What each rule asks, for messages.
RULES = {
    "opset": "opset 13 or newer (per-channel Q/DQ)",
    "int8": "INT8 quantization (TensorRT has no UINT8 or INT32 Q/DQ)",
    "zero-point": "zero point 0 (TensorRT is symmetric)",
    "scale": "constant, positive, finite scales",
    "per-channel": "weight scales per output channel",
    "axis": "weight scales on the output-channel axis",
    "per-tensor": "activation scales per tensor (one value)",
    "fp32-weights": "FP32 weights under a QuantizeLinear (TensorRT 8.x)",
    "pair": "QuantizeLinear feeding DequantizeLinear only",
    "placement": "Q/DQ only on inputs TensorRT fuses",
}

# ONNX element types by number (TensorProto), for messages.
_INT8, _UINT8 = 3, 2
_TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 10: "float16"}


class Violation(NamedTuple):
    """One broken rule.

    Attributes:
        node: the node's name (``"(model)"`` for model-wide rules).
        rule: the rule's key in :data:`RULES`, e.g. ``"zero-point"``.
        found: what was found, e.g. ``"zero point 128"``.
    """

    node: str
    rule: str
    found: str

    def __str__(self):
        return "{}: needs {}; found {}".format(self.node, RULES[self.rule], self.found)


def describe(violations, limit=3):
    """The first ``limit`` violations in one line, and how many more there are."""
    shown = "; ".join(str(v) for v in violations[:limit])
    if len(violations) > limit:
        shown += " (and {} more)".format(len(violations) - limit)
    return shown


def expected_weight_axis(node, rank):
    """The output-channel axis of ``node``'s weight (input 1) of this rank, or None."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = [a.i for a in node.attribute if a.name == "transB"]
        return 0 if trans_b and trans_b[0] else 1
    if node.op_type == "MatMul" and rank >= 2:
        return rank - 1
    return None


class _Graph(object):
    """Constants, producers and consumers of one graph, looked up by tensor name."""

    def __init__(self, onnx, model):
        numpy_helper = onnx.numpy_helper
        self.model = model
        self.constants, self.types = {}, {}
        for value in list(model.graph.input) + list(model.graph.value_info):
            if value.type.HasField("tensor_type"):
                self.types[value.name] = value.type.tensor_type.elem_type
        for tensor in model.graph.initializer:
            self.constants[tensor.name] = numpy_helper.to_array(tensor)
            self.types[tensor.name] = tensor.data_type
        self.producer, self.consumers, self.names = {}, {}, {}
        for index, node in enumerate(model.graph.node):
            # Unnamed nodes are named as edgeinfer's preparation would name them.
            self.names[id(node)] = node.name or "{}_{}".format(node.op_type, index)
            for name in node.output:
                self.producer[name] = node
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, slot))
            if node.op_type == "Constant" and node.output:
                value = [a.t for a in node.attribute if a.name == "value"]
                if value:
                    self.constants[node.output[0]] = numpy_helper.to_array(value[0])
                    self.types[node.output[0]] = value[0].data_type
        self.outputs = set(o.name for o in model.graph.output)

    def name(self, node):
        """A node's name (unnamed nodes get ``<op_type>_<index>``)."""
        return self.names[id(node)]

    def label(self, node):
        """``<op_type> <name>``, for messages."""
        return "{} {}".format(node.op_type, self.name(node))

    def is_weight(self, node):
        """Whether a Q/DQ node quantizes a constant (a weight), not an activation."""
        source = node.input[0]
        if source in self.constants:
            return True
        parent = self.producer.get(source)
        return (node.op_type == "DequantizeLinear" and parent is not None
                and parent.op_type == "QuantizeLinear" and parent.input[0] in self.constants)

    def weight_dqs(self, node):
        """The DequantizeLinear nodes that carry a weight Q/DQ node's value onward."""
        if node.op_type == "DequantizeLinear":
            return [node]
        return [c for c, _ in self.consumers.get(node.output[0], ())
                if c.op_type == "DequantizeLinear"]


def check_trt_qdq(model, per_channel=True, fp32_weights=True):
    """List how a Q/DQ model breaks TensorRT's explicit-quantization rules.

    Args:
        model: an ``onnx.ModelProto`` or the path of one.
        per_channel: ask for per-channel weight scales (default True).
        fp32_weights: ask for FP32 weights under a QuantizeLinear, as TensorRT
            8.x needs (default True; TensorRT 10 also takes INT8 weights).

    Returns:
        list of :class:`Violation` in graph order (empty: the model obeys every
        rule in the module docstring).
    """
    onnx = require("onnx", "the TensorRT Q/DQ check")
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    graph = _Graph(onnx, model)
    found = []
    opset = default_opset(model)
    if opset < MIN_OPSET:
        found.append(Violation("(model)", "opset", "opset {}".format(opset)))
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            found.extend(_check_node(graph, node, per_channel, fp32_weights))
    return found


def _check_node(graph, node, per_channel, fp32_weights):
    name = graph.name(node)
    found = []
    scale = graph.constants.get(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        found.append(Violation(name, "scale", "a scale computed at run time"))
    elif not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        bad = scale[~(np.isfinite(scale) & (scale > 0))].ravel()
        found.append(Violation(name, "scale", "scale {}".format(float(bad[0]))))
    found.extend(_check_zero_point(graph, node, name, scale))
    found.extend(_check_data_type(graph, node, name, fp32_weights))
    if graph.is_weight(node):
        found.extend(_check_weight(graph, node, name, scale, per_channel))
    else:
        if scale is not None and scale.size != 1:
            found.append(Violation(name, "per-tensor", "{} scales on an activation".format(
                scale.size)))
        if node.op_type == "DequantizeLinear":
            found.extend(_check_activation_placement(graph, node, name))
    if node.op_type == "QuantizeLinear":
        others = [c for c, _ in graph.consumers.get(node.output[0], ())
                  if c.op_type != "DequantizeLinear"]
        if others or node.output[0] in graph.outputs:
            found.append(Violation(name, "pair", "it feeds {}".format(
                graph.label(others[0]) if others else "a graph output")))
    return found


def _check_zero_point(graph, node, name, scale):
    if len(node.input) < 3 or not node.input[2]:
        if node.op_type == "QuantizeLinear":
            return [Violation(name, "int8", "no zero point, so ONNX's default uint8 output")]
        return []
    zero = graph.constants.get(node.input[2])
    if zero is None:
        return [Violation(name, "zero-point", "a zero point computed at run time")]
    found = []
    kind = graph.types.get(node.input[2])
    if kind != _INT8:
        found.append(Violation(name, "int8", "{} zero point".format(_type_name(kind))))
    if np.any(zero != 0):
        found.append(Violation(name, "zero-point", "zero point {}".format(
            int(zero.ravel()[np.flatnonzero(zero)[0]]))))
    if scale is not None and zero.size != scale.size:
        found.append(Violation(name, "scale", "{} scales but {} zero points".format(
            scale.size, zero.size)))
    return found


def _type_name(kind):
    return _TYPE_NAMES.get(kind, "type {}".format(kind))


def _check_data_type(graph, node, name, fp32_weights):
    """No UINT8 into a QuantizeLinear; INT8 (for TensorRT 8.x: no constant) into a DQ."""
    kind = graph.types.get(node.input[0])
    if node.op_type == "QuantizeLinear" and kind == _UINT8:
        return [Violation(name, "int8", "uint8 input")]
    if node.op_type != "DequantizeLinear" or node.input[0] not in graph.constants:
        return []
    if kind != _INT8:
        return [Violation(name, "int8", "{} data".format(_type_name(kind)))]
    if fp32_weights:
        return [Violation(name, "fp32-weights", "an INT8 constant under a bare DequantizeLinear")]
    return []


def _check_weight(graph, node, name, scale, per_channel):
    weight = graph.constants.get(node.input[0])
    if weight is None:  # a DequantizeLinear of a weight's QuantizeLinear
        weight = graph.constants.get(graph.producer[node.input[0]].input[0])
    found = []
    for dq in graph.weight_dqs(node):
        for consumer, slot in graph.consumers.get(dq.output[0], ()):
            if consumer.op_type not in WEIGHTED_OPS or slot != 1:
                found.append(Violation(name, "placement", "a weight feeding {} (input {})".format(
                    graph.label(consumer), slot)))
                continue
            axis = expected_weight_axis(consumer, weight.ndim)
            if axis is not None and scale is not None:
                found.extend(_check_weight_axis(graph, node, name, scale, weight, axis, consumer,
                                                per_channel))
    return found


def _check_weight_axis(graph, node, name, scale, weight, axis, consumer, per_channel):
    channels = weight.shape[axis]
    if scale.size == 1:
        if per_channel and channels > 1:
            return [Violation(name, "per-channel", "one scale for the {} output channels of "
                                                   "{}".format(channels, graph.label(consumer)))]
        return []
    given = [a.i for a in node.attribute if a.name == "axis"]
    # ONNX's default axis for QuantizeLinear/DequantizeLinear is 1.
    actual = given[0] if given else 1
    actual = actual + weight.ndim if actual < 0 else actual
    if actual != axis:
        size = weight.shape[actual] if 0 <= actual < weight.ndim else "?"
        return [Violation(name, "axis", "axis {} (size {}) where {}'s output channels are axis "
                                        "{}".format(actual, size, graph.label(consumer), axis))]
    if scale.size != channels:
        return [Violation(name, "per-channel", "{} scales for {} output channels".format(
            scale.size, channels))]
    return []


def _check_activation_placement(graph, node, name):
    found = []
    if node.output[0] in graph.outputs:
        found.append(Violation(name, "placement", "a graph output"))
    for consumer, slot in graph.consumers.get(node.output[0], ()):
        if consumer.op_type in WEIGHTED_OPS:
            continue
        if consumer.op_type == "Add" and len(consumer.input) == 2:
            other = graph.producer.get(consumer.input[1 - slot])
            if other is not None and other.op_type in RESIDUAL_PRODUCERS:
                continue
            found.append(Violation(name, "placement", "the input of {} whose other input comes "
                                   "from {}, not a convolution it fuses into".format(
                                       graph.label(consumer),
                                       graph.label(other) if other else "a graph input")))
            continue
        found.append(Violation(name, "placement", "it feeds {}, which TensorRT would run as a "
                                                  "separate INT8 layer".format(
                                                      graph.label(consumer))))
    return found
