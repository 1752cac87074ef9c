"""Graph preparation that real ONNX exports need before INT8 quantization (issue 4, item 8).

Exports that run correctly can still quantize badly or not at all.  :func:`normalize`
fixes what was found to matter, in this order, and says what it changed:

1. **Opset below 13 → 13** (``onnx.version_converter``).  QuantizeLinear and
   DequantizeLinear take an ``axis`` (per-channel scales) only from opset 13; ONNX
   Runtime 1.32's quantizer writes the axis into an opset-11 model anyway, and the
   result does not load (INVALID_GRAPH).  The converter itself inserts Constant
   nodes (Unsqueeze axes, Resize scales), so step 2 comes after it.
2. **Constant nodes → initializers.**  Paddle, some TensorFlow exports and the
   version converter store tensors as ``Constant`` nodes.  ONNX Runtime's quantizer
   takes only initializers as weights: a Constant-fed Conv or MatMul weight is
   treated as an activation, quantized per tensor at run time, and stays FP32 in the
   file.
3. **Identity on a weight** (PyTorch writes one per tied or shared weight): the
   consumer reads the weight directly, for the same reason.
4. **Node names**: an unnamed or repeated node gets a unique name, since
   ``nodes_to_exclude`` and ``--ignore-node`` select nodes by name.
5. **Shape inference with fallbacks**: ONNX Runtime's symbolic shape inference
   first (it tracks ``batch``/``seq`` through Reshape and friends), then ONNX's
   own inference with strict mode off, then none.  Symbolic inference gives up on
   graphs whose dynamic dims are named differently but meet in one op (``seq`` and
   ``width`` broadcast together), and on ops it does not know; the quantizer then
   still needs element types, which ONNX inference provides.

Steps 2 and 3 also happen inside ONNX Runtime's graph optimizer when
``quant_pre_process`` gets to run it; doing them here keeps the model quantizing
fully when that optimizer fails (``quant_pre_process`` logs the failure and goes
on with the unoptimized graph) and lets the manifest say what was changed.

The OpenVINO recipe does not need this: its ONNX frontend folds Constant and
Identity weights into OpenVINO Constants itself, reads opsets below 13, and infers
shapes on its own graph.  Measured with OpenVINO 2026.4 and NNCF 3.4: the same
FakeQuantize and INT8-weight counts, and the same outputs, for a Constant+Identity
export and its normalized twin; per-channel INT8 weights for an opset-11 conv net.

Workstation side only: onnx and onnxruntime are imported when called.
"""

import contextlib
import logging
import re
from typing import NamedTuple

from ..errors import ConversionError, first_line
from ..lazy import require
from .sensitivity import name_nodes
from .source import QUANT_OPSET, default_opset

# Constant attributes and the tensor each makes (ONNX's Constant-13 schema).
_SCALAR_FORMS = {"value_float": ("FLOAT", "f"), "value_int": ("INT64", "i"),
                 "value_string": ("STRING", "s")}
_LIST_FORMS = {"value_floats": ("FLOAT", "floats"), "value_ints": ("INT64", "ints"),
               "value_strings": ("STRING", "strings")}

SHAPE_INFERENCE = ("symbolic", "onnx", "none")


class Normalized(NamedTuple):
    """What :func:`normalize` made and changed.

    Attributes:
        model: the normalized ``onnx.ModelProto`` (a copy; the input is not changed).
        changes: short sentences, one per change made (empty when none was needed).
        record: the same for the manifest: ``opset`` (``[from, to]`` or None),
            ``constants_to_initializers``, ``identity_weights_removed``,
            ``nodes_named``, ``shape_inference`` (one of :data:`SHAPE_INFERENCE`),
            ``shape_inference_fallback`` (why a better one failed, or None) and
            ``changes``.
    """

    model: object
    changes: list
    record: dict


def upgrade_opset(model, opset=QUANT_OPSET):
    """Convert ``model`` to ``opset`` when its default-domain opset is lower.

    Args:
        model: an ``onnx.ModelProto``.
        opset: the opset wanted (default 13, the first with per-channel Q/DQ).

    Returns:
        (model, the opset it had, or None when it was new enough)

    Raises:
        ConversionError: ONNX's version converter cannot convert it.
    """
    current = default_opset(model)
    if current >= opset:
        return model, None
    version_converter = require("onnx.version_converter", "INT8 conversion")
    try:
        return version_converter.convert_version(model, opset), current
    except Exception as exc:
        message = first_line(exc)
        # Its C++ assertions read "path/adapter.h:35: operator(): Assertion `...` failed:
        # <reason>"; the reason is what the user can act on.
        message = re.sub(r"^.*Assertion .* failed: ", "", message)
        raise ConversionError(
            "Cannot upgrade the model from opset {} to {} for INT8: ONNX's version converter "
            "failed: {}".format(current, opset, message),
            "Re-export the model with opset {} or newer (torch.onnx.export(..., "
            "opset_version={}), tf2onnx --opset {}), or build for OpenVINO (--target "
            "intel-cpu), which quantizes older opsets as they are.".format(opset, opset, opset))


def constant_tensor(node):
    """The tensor a ``Constant`` node makes, named as its output, or None (sparse)."""
    onnx = require("onnx", "INT8 conversion")
    name = node.output[0]
    for attribute in node.attribute:
        if attribute.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attribute.t)
            tensor.name = name
            return tensor
        if attribute.name in _SCALAR_FORMS:
            kind, field = _SCALAR_FORMS[attribute.name]
            return onnx.helper.make_tensor(name, getattr(onnx.TensorProto, kind), [],
                                           [getattr(attribute, field)])
        if attribute.name in _LIST_FORMS:
            kind, field = _LIST_FORMS[attribute.name]
            values = list(getattr(attribute, field))
            return onnx.helper.make_tensor(name, getattr(onnx.TensorProto, kind),
                                           [len(values)], values)
    # sparse_value: a sparse initializer would do, but no exporter was seen writing
    # one for a weight, and ORT's quantizer does not quantize sparse tensors anyway.
    return None


def constants_to_initializers(model):
    """Turn the main graph's ``Constant`` nodes into initializers of the same name, in place.

    Constants inside subgraphs (If/Loop/Scan bodies) are left alone: ONNX Runtime's
    quantizer does not quantize subgraphs unless asked (``EnableSubgraph``), and a
    body's constants are usually loop bounds, not weights.  A Constant that is a graph
    output stays a node, so the outputs keep their producer.

    Returns:
        how many Constants became initializers.
    """
    onnx = require("onnx", "INT8 conversion")
    graph = model.graph
    outputs = set(o.name for o in graph.output)
    kept, made = [], []
    for node in graph.node:
        tensor = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and (
                node.output[0] not in outputs):
            tensor = constant_tensor(node)
        if tensor is None:
            kept.append(node)
        else:
            made.append(tensor)
    if not made:
        return 0
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(made)
    if model.ir_version < 4:
        # Before IR 4 every initializer had to be listed as a graph input too.
        graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                           for t in made)
    _drop_value_info(graph, set(t.name for t in made))
    return len(made)


def _subgraphs(node):
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        for graph in attribute.graphs:
            yield graph


def _rename_inputs(nodes, alias):
    for node in nodes:
        for index, name in enumerate(node.input):
            if name in alias:
                node.input[index] = alias[name]
        # A subgraph may read outer-scope tensors by name; ONNX's SSA rule (checked
        # when the source was loaded) means it never redefines one, so renaming is safe.
        for graph in _subgraphs(node):
            _rename_inputs(graph.node, alias)


def _drop_value_info(graph, names):
    stale = [v for v in graph.value_info if v.name in names]
    for value in stale:
        graph.value_info.remove(value)


def remove_weight_identities(model):
    """Make consumers of ``Identity(initializer)`` read the initializer itself, in place.

    PyTorch writes such Identities for tied and shared weights.  An Identity whose
    output is a graph output is kept (the output needs a producer).

    Returns:
        how many Identity nodes were removed.
    """
    graph = model.graph
    weights = set(t.name for t in graph.initializer)
    outputs = set(o.name for o in graph.output)
    alias, kept = {}, []
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in alias:
                node.input[index] = alias[name]
        if (node.op_type == "Identity" and node.domain in ("", "ai.onnx") and
                node.input[0] in weights and node.output[0] not in outputs):
            # Chains (Identity of an Identity of a weight) resolve to the weight, since
            # the nodes are in topological order and inputs are renamed first.
            alias[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    if not alias:
        return 0
    del graph.node[:]
    graph.node.extend(kept)
    _rename_inputs(kept, alias)
    _drop_value_info(graph, set(alias))
    return len(alias)


class _StopWatch(logging.Handler):
    """Catches where symbolic shape inference stops: it says so only in a debug line."""

    def __init__(self):
        super(_StopWatch, self).__init__(logging.DEBUG)
        self.where = None

    def emit(self, record):
        if self.where is None and str(record.msg).startswith("Stopping at incomplete"):
            try:
                self.where = "{} node {!r}".format(*record.args)
            except (TypeError, IndexError):
                self.where = record.getMessage()


@contextlib.contextmanager
def _watch(logger):
    watch = _StopWatch()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(watch)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # its debug lines are not the user's business
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)
        logger.propagate = propagate


def _symbolic_shapes(model):
    """ONNX Runtime's symbolic shape inference: (model, None) or (None, why it failed).

    ``SymbolicShapeInference.infer_shapes`` writes ``sym_shape_infer_temp.onnx`` into
    the current directory when inference is incomplete, then raises; its loop is
    driven here instead so nothing lands outside the work directory.  An ONNX
    Runtime whose class lacks these members fails over to ONNX inference.
    """
    try:
        symbolic = require("onnxruntime.tools.symbolic_shape_infer", "shape inference")
    except Exception as exc:  # sympy missing is an ImportError inside that module
        return None, "is not available ({})".format(first_line(exc))
    with _watch(logging.getLogger(symbolic.__name__)) as watch:
        try:
            engine = symbolic.SymbolicShapeInference(int_max=2 ** 31 - 1, auto_merge=False,
                                                     guess_output_rank=False, verbose=0)
            engine._preprocess(model)
            complete = False
            while engine.run_:
                complete = engine._infer_impl()
            engine._update_output_from_vi()
        except Exception as exc:
            return None, "failed: " + first_line(exc)
    if not complete:
        # auto_merge would equate the clashing dims (seq == width) in the model's
        # value_info, which is a guess about the user's data; ONNX inference is not.
        return None, "stopped at {} (dynamic dims it cannot relate, or an op it does not " \
            "know)".format(watch.where or "a node")
    return engine.out_mp_, None


def infer_shapes(model):
    """Annotate ``model`` with shapes and types: symbolic, else ONNX, else none.

    Returns:
        (model, which of :data:`SHAPE_INFERENCE` worked, why the better ones failed or None)
    """
    inferred, why = _symbolic_shapes(model)
    if inferred is not None:
        return inferred, "symbolic", None
    why = "symbolic shape inference " + why
    onnx = require("onnx", "INT8 conversion")
    try:
        # strict_mode off: a node ONNX cannot infer is skipped, not fatal; data_prop
        # carries Shape -> Gather -> Concat values into Reshape, like symbolic does.
        return (onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True),
                "onnx", why)
    except Exception as exc:
        return model, "none", "{}; ONNX shape inference failed: {}".format(why, first_line(exc))


def normalize(model, opset=QUANT_OPSET):
    """Prepare an exported graph for quantization and say what was changed.

    See the module's docstring for each step and why.

    Args:
        model: an ``onnx.ModelProto`` (not changed) or the path of an ONNX file.
        opset: the lowest default-domain opset wanted (default 13, per-channel Q/DQ).

    Returns:
        :class:`Normalized`

    Raises:
        ConversionError: the opset cannot be upgraded.
    """
    onnx = require("onnx", "INT8 conversion")
    if isinstance(model, onnx.ModelProto):
        copied = onnx.ModelProto()
        copied.CopyFrom(model)
        model = copied
    else:
        model = onnx.load(str(model))
    changes = []
    model, old_opset = upgrade_opset(model, opset)
    if old_opset is not None:
        changes.append("opset {} upgraded to {} (per-channel INT8 needs {})".format(
            old_opset, opset, QUANT_OPSET))
    constants = constants_to_initializers(model)
    if constants:
        changes.append("{} Constant node{} made initializer{} (ONNX Runtime quantizes only "
                       "initializers as weights)".format(constants, _s(constants), _s(constants)))
    identities = remove_weight_identities(model)
    if identities:
        changes.append("{} Identity node{} on weights removed".format(identities, _s(identities)))
    named = name_nodes(model)
    if named:
        changes.append("{} unnamed or repeated node name{} made unique".format(named, _s(named)))
    model, how, why = infer_shapes(model)
    if why:
        changes.append("{}: {}".format("shapes inferred by ONNX shape inference" if how == "onnx"
                                       else "no shape inference", why))
    record = {"opset": [old_opset, opset] if old_opset is not None else None,
              "constants_to_initializers": constants, "identity_weights_removed": identities,
              "nodes_named": named, "shape_inference": how, "shape_inference_fallback": why,
              "changes": list(changes)}
    return Normalized(model, changes, record)


def _s(count):
    return "" if count == 1 else "s"
