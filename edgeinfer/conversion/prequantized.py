"""Models that arrive quantized: Q/DQ ONNX from quantization-aware training (issue 10).

A model with QuantizeLinear/DequantizeLinear nodes already carries its INT8
scales, trained by QAT (:mod:`edgeinfer.qat`, PyTorch's fake quantization,
NVIDIA's pytorch-quantization or TensorRT Model Optimizer, NNCF).  ``convert``
keeps them: ``--method qat`` (chosen by itself under ``--method auto`` when the
source has Q/DQ nodes) skips calibration and quantization, and each recipe
takes the Q/DQ graph to its backend as it is:

* ONNX Runtime runs the Q/DQ graph (the QDQ format of its own static INT8);
* OpenVINO's ONNX frontend turns each Q/DQ pair into a FakeQuantize, which its
  CPU plugin runs as INT8, as it does NNCF's;
* TensorRT builds explicit INT8 from the Q/DQ nodes, once the model passes
  TensorRT's Q/DQ rules (:mod:`edgeinfer.conversion.qdq_rules`): asymmetric or
  UINT8 Q/DQ is refused with the reason.

The FP32 reference the result is validated against: the FP32 ONNX the user gives
(``--fp32-reference``, e.g. the model before QAT), else the source with its Q/DQ
nodes removed (:func:`strip_qdq`): the same trained network computing in FP32,
weights as the Q/DQ nodes round them.  The first measures what quantization
costs against the original model, the second what the INT8 arithmetic costs
against the very weights that were trained.
"""

import json
import os

import numpy as np

from ..errors import ModelError, UsageError
from ..lazy import require
from .graph import normalize
from .source import QUANT_OPSET, graph_specs, read_onnx

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# The metadata key edgeinfer.qat writes (kept here so this module needs no torch).
QUANTIZATION_KEY = "edgeinfer.quantization"
# Settings a pre-quantized model does not use, as users type them, with their defaults.
NOT_FOR_QAT = (("calibrate_method", "minmax", "--calibrate-method"),
               ("int8_variant", "auto", "--int8-variant"),
               ("per_channel", True, "--per-tensor"),
               ("preset", None, "--preset"), ("model_type", None, "--model-type"),
               ("fast_bias_correction", None, "--fast-bias-correction"),
               ("subset_size", None, "--subset-size"), ("ignored_names", (), "--ignore-node"),
               ("ignored_types", (), "--ignore-op-type"))
_ONNX_TYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 17: "float8e4m3fn",
               21: "uint4", 22: "int4"}


def qdq_count(model):
    """Number of QuantizeLinear/DequantizeLinear nodes (any domain) in an ONNX model."""
    return sum(1 for n in model.graph.node if n.op_type in QDQ_OPS)


def _constants(onnx, model):
    values = dict((t.name, onnx.numpy_helper.to_array(t)) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = onnx.numpy_helper.to_array(attribute.t)
    return values


def describe(model):
    """What a Q/DQ model's quantization is, for the manifest's ``quantization``.

    Returns:
        dict: ``qdq_nodes``, ``quantize_nodes``, ``types`` (the zero points' types),
        ``symmetric`` (every zero point 0), ``per_channel_weights`` /
        ``per_tensor_weights`` (weight DequantizeLinear nodes by scale count), and
        ``recorded``: what the exporter wrote in the ``edgeinfer.quantization``
        metadata (:mod:`edgeinfer.qat`), or None.
    """
    onnx = require("onnx", "converting a Q/DQ model")
    constants = _constants(onnx, model)
    producer = dict((out, n) for n in model.graph.node for out in n.output)
    types, symmetric, channel, tensor, levels = set(), True, 0, 0, 0
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None:
            types.add("uint8" if node.op_type == "QuantizeLinear" and len(node.input) < 3
                      else "unknown")
        else:
            types.add(str(zero.dtype))
            symmetric = symmetric and not np.any(zero != 0)
        if node.op_type == "DequantizeLinear":
            source = node.input[0]
            parent = producer.get(source)
            weight = source in constants or (parent is not None and parent.op_type ==
                                             "QuantizeLinear" and parent.input[0] in constants)
            scale = constants.get(node.input[1])
            if weight and scale is not None:
                if scale.size > 1:
                    channel += 1
                else:
                    tensor += 1
                quantize = parent if source not in constants else node
                levels = max(levels, _weight_levels(quantize, constants, source in constants))
    recorded = None
    for prop in model.metadata_props:
        if prop.key == QUANTIZATION_KEY:
            try:
                recorded = json.loads(prop.value)
            except ValueError:
                recorded = prop.value
    return {"qdq_nodes": qdq_count(model),
            "quantize_nodes": sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear"),
            "types": sorted(types), "symmetric": symmetric, "per_channel_weights": channel,
            "per_tensor_weights": tensor, "weight_levels_max": levels, "recorded": recorded}


def _weight_levels(node, constants, integers):
    """The largest |integer level| of a weight: its INT8 values, or round(W / scale)."""
    value = constants[node.input[0]].astype(np.float64)
    if integers:
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
        return int(np.abs(value - np.asarray(zero, np.float64).reshape(
            _axis_shape(node, value, np.asarray(zero)))).max()) if value.size else 0
    scale = constants[node.input[1]].astype(np.float64)
    levels = np.round(value / scale.reshape(_axis_shape(node, value, scale)))
    return int(np.abs(levels).max()) if levels.size else 0


def _axis_shape(node, value, per_axis):
    """The shape that broadcasts a per-axis scale or zero point over ``value``."""
    if per_axis.size <= 1:
        return per_axis.shape if per_axis.ndim == 0 else (1,) * max(value.ndim, 1)
    axis = [a.i for a in node.attribute if a.name == "axis"]
    axis = (axis[0] if axis else 1) % value.ndim
    shape = [1] * value.ndim
    shape[axis] = per_axis.size
    return shape


def quantization_record(model, backend_format):
    """The manifest's ``quantization`` for a pre-quantized model on one backend."""
    record = describe(model)
    recorded = record.get("recorded")
    came_from = "quantization-aware training" if isinstance(recorded, dict) and recorded.get(
        "source") == "qat" else "the source's Q/DQ nodes (quantization-aware training or an " \
                                "earlier quantizer)"
    record.update({
        "source": "qat",
        "scales": "from {}, kept as trained: no calibration, no re-quantization".format(
            came_from),
        "method_reason": "the source already has {} QuantizeLinear/DequantizeLinear nodes "
                         "(--method qat)".format(record["qdq_nodes"]),
        "format": backend_format})
    return record


def resolve(settings, source, precision_asked):
    """The settings for this source: ``qat`` for a Q/DQ model, refusals where they clash.

    Args:
        settings: the checked :class:`~edgeinfer.conversion.Settings`.
        source: the loaded :class:`~edgeinfer.conversion.source.SourceModel`.
        precision_asked: the precision the user gave (None: the target's default).

    Returns:
        settings, with ``method="qat"`` and ``precision="int8"`` for a Q/DQ source.

    Raises:
        UsageError: ``--method qat`` on a model without Q/DQ; a Q/DQ model with a
            quantizing method (double quantization), another precision, or a
            setting that only calibration uses.
    """
    count = qdq_count(source.model)
    name = os.path.basename(source.path)
    if not count:
        if settings.method == "qat":
            raise UsageError("--method qat keeps the INT8 scales of a Q/DQ model, but {} has no "
                             "QuantizeLinear/DequantizeLinear nodes.".format(name),
                             "Export the QAT model with edgeinfer.qat.export(), or convert this "
                             "FP32 model with --method static --calibration DIR.")
        if settings.fp32_reference is not None:
            raise UsageError("--fp32-reference is for Q/DQ (QAT) models; {} has no Q/DQ nodes "
                             "and is its own FP32 reference.".format(name),
                             "Drop --fp32-reference.")
        return settings
    if settings.method not in ("auto", "qat"):
        raise UsageError("{} is already quantized ({} QuantizeLinear/DequantizeLinear nodes): "
                         "--method {} would quantize it twice.".format(
                             name, count, settings.method),
                         "Use --method qat (or auto) to keep its scales, or convert the FP32 "
                         "model with --method {}.".format(settings.method))
    if precision_asked not in (None, "int8"):
        raise UsageError("{} carries INT8 Q/DQ nodes; it cannot be converted to {}.".format(
            name, precision_asked), "Drop --precision to keep its INT8 scales, or convert the "
                                    "FP32 model for {}.".format(precision_asked))
    for field, default, flag in NOT_FOR_QAT:
        value = getattr(settings, field)
        if value != default and value not in (None, (), []):
            raise UsageError("{} does not apply to {}: its INT8 scales come from its Q/DQ nodes "
                             "(--method qat).".format(flag, name), "Drop {}.".format(flag))
    if settings.budget() is not None:
        raise UsageError("An accuracy budget chooses how to quantize; {} is already quantized "
                         "(--method qat).".format(name), "Drop the budget; --eval with labels "
                         "still measures its accuracy against the FP32 reference.")
    return settings._replace(method="qat", precision="int8")


def strip_qdq(model):
    """The FP32 model of a Q/DQ model: every QuantizeLinear/DequantizeLinear removed.

    A Q -> DQ pair passes the Q's input through; a DequantizeLinear of a constant
    becomes the dequantized FP32 constant.

    Args:
        model: an ``onnx.ModelProto`` (not changed).

    Returns:
        a new ``onnx.ModelProto``.

    Raises:
        ModelError: a Q/DQ node that is not part of a pair or a constant (e.g. a
            QuantizeLinear whose INT8 output is the graph's output).
    """
    onnx = require("onnx", "converting a Q/DQ model")
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    constants = _constants(onnx, stripped)
    producer = dict((out, n) for n in graph.node for out in n.output)
    alias, added, removed = {}, [], set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        parent = producer.get(node.input[0])
        if parent is not None and parent.op_type == "QuantizeLinear":
            alias[node.output[0]] = parent.input[0]
            removed.update((id(node), id(parent)))
        elif node.input[0] in constants:
            added.append(onnx.numpy_helper.from_array(
                _dequantize(node, constants).astype(np.float32), node.output[0]))
            removed.add(id(node))
    left = [n for n in graph.node if n.op_type in QDQ_OPS and id(n) not in removed]
    if left:
        raise ModelError("Cannot derive the FP32 reference: {} {!r} is not part of a "
                         "QuantizeLinear -> DequantizeLinear pair.".format(
                             left[0].op_type, left[0].name or left[0].output[0]),
                         "Pass the FP32 model with --fp32-reference.")
    nodes = [n for n in graph.node if id(n) not in removed]
    for node in nodes:
        for slot, name in enumerate(node.input):
            while name in alias:
                name = alias[name]
            node.input[slot] = name
    for output in graph.output:
        if output.name in alias:
            _rename_output(graph, nodes, alias[output.name], output.name)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    _drop_unused(graph)
    return stripped


def _dequantize(node, constants):
    value = constants[node.input[0]].astype(np.float64)
    scale = constants[node.input[1]].astype(np.float64)
    zero = (constants[node.input[2]].astype(np.float64)
            if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
    shape = _axis_shape(node, value, scale)
    return (value - zero.reshape(shape)) * scale.reshape(shape)


def _rename_output(graph, nodes, inner, outer):
    """Make the node that produces ``inner`` produce the graph output ``outer``."""
    for node in nodes:
        for slot, name in enumerate(node.output):
            if name == inner:
                node.output[slot] = outer
        for slot, name in enumerate(node.input):
            if name == inner:
                node.input[slot] = outer


def _drop_unused(graph):
    used = set(name for n in graph.node for name in n.input)
    used |= set(o.name for o in graph.output)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(nodes)


def reference_model(source, given, workdir):
    """The FP32 model validation compares against, and how it was chosen.

    Args:
        source: the Q/DQ :class:`~edgeinfer.conversion.source.SourceModel`.
        given: the FP32 ONNX the user passed (``--fp32-reference``), or None.
        workdir: where a derived reference is written.

    Returns:
        (path, the manifest's ``validation.reference`` dict)

    Raises:
        ModelError: the given reference is unreadable, has Q/DQ nodes itself, or
            has other inputs or outputs than the source.
    """
    onnx = require("onnx", "converting a Q/DQ model")
    if given is None:
        path = os.path.join(workdir, "fp32-reference.onnx")
        onnx.save(strip_qdq(source.model), path)
        return path, {"model": "the source with its Q/DQ nodes removed (the trained network "
                               "in FP32; weights as its Q/DQ round them)"}
    given = os.fspath(given)
    model = read_onnx(given)
    if qdq_count(model):
        raise ModelError("--fp32-reference {!r} has Q/DQ nodes itself.".format(given),
                         "Pass the FP32 model (e.g. the one QAT started from).")
    specs = graph_specs(model)
    for kind, mine, theirs in (("inputs", source.inputs, specs[0]),
                               ("outputs", source.outputs, specs[1])):
        if [s.name for s in mine] != [s.name for s in theirs]:
            raise ModelError("--fp32-reference {!r} has {} {}, the model has {}.".format(
                given, kind, [s.name for s in theirs], [s.name for s in mine]),
                "Pass the FP32 model of this network (the same input and output names).")
    return given, {"model": os.path.basename(given), "given": True}


def normalize_file(source_path, out_path, report=None):
    """Name nodes, make Constant weights initializers, opset >= 13; keep every Q/DQ node.

    ONNX Runtime's ``quant_pre_process`` is not run on a Q/DQ model: its graph
    optimizer may fold a weight's QuantizeLinear into an INT8 constant, which
    TensorRT 8.x does not take.
    """
    onnx = require("onnx", "converting a Q/DQ model")
    normalized = normalize(source_path, QUANT_OPSET)
    if report is not None:
        report.update(normalized.record)
    onnx.save(normalized.model, out_path)
    return out_path
