"""Reading and preparing the source ONNX model (workstation side)."""

import json
import os
from typing import NamedTuple, Optional

from ..bundle import sha256_of
from ..errors import ModelError
from ..lazy import require
from ..tensors import ONNX_TO_NUMPY, TensorSpec

# Opsets this edgeinfer converts.  Below 7 ONNX Runtime has no kernels; above the
# installed onnx's newest opset the checker cannot validate the model.
MIN_OPSET = 7
# Static INT8 with per-channel weights needs QuantizeLinear with an axis (opset 13).
QUANT_OPSET = 13

PREPROCESS_KEY = "edgeinfer.preprocess"
CLASSES_KEY = "edgeinfer.classes"


class SourceModel(NamedTuple):
    """The model a conversion starts from.

    Attributes:
        path: the ONNX file.
        model: the loaded ``onnx.ModelProto``.
        sha256: hash of the file.
        opset: its default-domain opset.
        inputs / outputs: TensorSpecs (initializers are not inputs).
        preprocess: image preprocessing recorded in the model's metadata, or None.
        classes: class names recorded in the metadata, or None.
    """

    path: str
    model: object
    sha256: str
    opset: int
    inputs: list
    outputs: list
    preprocess: Optional[dict]
    classes: Optional[list]

    @property
    def name(self):
        return os.path.splitext(os.path.basename(self.path))[0]


def _value_spec(value_info):
    tensor = value_info.type.tensor_type
    dtype = ONNX_TO_NUMPY.get(tensor.elem_type)
    if dtype is None:
        raise ModelError("Tensor {!r} has ONNX element type {}, which edgeinfer does not "
                         "handle.".format(value_info.name, tensor.elem_type),
                         "Inputs and outputs must be numeric tensors.")
    dims = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return TensorSpec(value_info.name, dtype, tuple(dims))


def graph_specs(model):
    """Input and output TensorSpecs of an ONNX model (initializers excluded)."""
    initializers = set(t.name for t in model.graph.initializer)
    inputs = [_value_spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_value_spec(v) for v in model.graph.output]
    return inputs, outputs


def default_opset(model):
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def _metadata_json(model, key, path):
    for prop in model.metadata_props:
        if prop.key == key:
            try:
                return json.loads(prop.value)
            except ValueError:
                raise ModelError("Model {!r}: metadata {!r} is not valid JSON.".format(path, key),
                                 "Fix or remove that metadata entry.")
    return None


def read_onnx(path, load_external_data=True):
    """Load an ONNX file, or say in one line why it cannot be.

    Args:
        path: the ``.onnx`` file.
        load_external_data: read the weights kept in external data files too (default
            True; the sharder reads a model's graph alone, issue 7).

    Raises:
        ModelError: missing, a folder, unreadable, not ONNX, or holding no graph.
    """
    onnx = require("onnx", "converting models")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError("Model file {!r} does not exist.".format(path),
                         "Check the path; edgeinfer converts .onnx files.")
    if os.path.isdir(path):
        raise ModelError("Model {!r} is a folder, not an ONNX file.".format(path),
                         "Give the path of the .onnx file.")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ModelError("Model file {!r} cannot be read: {}.".format(path, exc.strerror),
                         "Check its permissions.")
    try:
        model = onnx.load(path, load_external_data=load_external_data)
    except Exception as exc:  # protobuf's DecodeError and friends are not exported
        raise ModelError("{!r} is not an ONNX model ({}).".format(
            path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__),
            "Export your model to ONNX first (torch.onnx.export, tf2onnx, ...).")
    if not model.graph.node and not model.graph.output:
        raise ModelError("{!r} is not an ONNX model (it holds no graph).".format(path),
                         "Export your model to ONNX first (torch.onnx.export, tf2onnx, ...).")
    return model


def load_source(path):
    """Load, check and describe an ONNX model.

    Raises:
        ModelError: missing, unreadable, not ONNX, invalid, or an unsupported opset.
    """
    onnx = require("onnx", "converting models")
    path = os.fspath(path)
    model = read_onnx(path)
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET or opset > newest:
        raise ModelError("Model {!r} uses opset {}, which edgeinfer cannot convert here.".format(
            path, opset), "Supported opsets: {} to {} (the installed onnx's newest); re-export "
            "the model with an opset in that range.".format(MIN_OPSET, newest))
    try:
        # full_check adds strict type and shape inference: a float/double mix that the
        # plain check lets through would otherwise fail deep inside quantization.
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ModelError("Model {!r} is not a valid ONNX model: {}".format(
            path, str(exc).strip().splitlines()[0]), "Fix the export, then convert again.")
    inputs, outputs = graph_specs(model)
    if not inputs:
        raise ModelError("Model {!r} has no inputs.".format(path))
    return SourceModel(path, model, sha256_of(path), opset, inputs, outputs,
                       _metadata_json(model, PREPROCESS_KEY, path),
                       _metadata_json(model, CLASSES_KEY, path))
