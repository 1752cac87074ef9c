"""Quantization-aware training (issue 10): fake-quantize a PyTorch model, export Q/DQ ONNX.

When post-training INT8 loses too much accuracy, fine-tune the model with the
quantization it will run with, then export an ONNX model that carries its own
INT8 scales; ``edgeinfer convert --method qat`` takes it to every target
without quantizing it again::

    from edgeinfer import qat
    qmodel = qat.prepare(model, example_inputs, calibration=loader)
    for x, y in train_loader: ...            # the user's own loop, a few epochs
    qat.export(qmodel, example_inputs, "model.qdq.onnx")

The stack is PyTorch's own fake quantization (``torch.ao.quantization.FakeQuantize``,
straight-through gradients, observers that set the scales):

* BatchNorm is folded into the convolution or Linear before it with its running
  statistics (``torch.fx.experimental.optimization.fuse``), so QAT trains the
  folded weights the device runs and the statistics stay frozen, as PyTorch
  recommends for the late part of QAT; the export then has no BatchNorm to fold.
* Every Conv1d/2d/3d and Linear gets a fake-quantized input (INT8, per tensor,
  symmetric: zero point 0) and weight (symmetric, per output channel by default;
  ``weight_bits`` below 8 trains for a narrower grid, e.g. 4-bit).  That is the
  placement TensorRT fuses (Q/DQ on the inputs of weighted ops) and its
  arithmetic (symmetric INT8), so one export serves ONNX Runtime, OpenVINO and
  TensorRT (:mod:`edgeinfer.conversion.qdq_rules` checks it).
* Scales start from ``calibration`` (min/max observers over its batches, no fake
  quantization), then follow training (moving averages, in training mode only)
  until :func:`freeze`, which :func:`export` applies to its own copy.
* The export is PyTorch's TorchScript ONNX exporter (``dynamo=False``: the dynamo
  exporter needs onnxscript, and the TorchScript one maps fake quantization to
  QuantizeLinear/DequantizeLinear directly).  Weights stay FP32 under their
  QuantizeLinear (the form TensorRT 8.x needs); a narrower weight grid is
  written as INT8 Q/DQ over the already-rounded weights, so the ONNX model
  computes exactly what was trained.

torch comes from the ``[qat]`` extra; this module imports it only when called.
"""

import copy
import json
import os
import tempfile
import types
import warnings

from .errors import ModelError, UsageError
from .lazy import require

# Metadata key of the export: where its scales came from (read by ``convert``).
QUANTIZATION_KEY = "edgeinfer.quantization"
# ONNX opset of the export: per-channel QuantizeLinear needs 13.
EXPORT_OPSET = 17
MIN_OPSET = 13
# Weight bit widths the INT8 Q/DQ of the export can carry exactly.
WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8)

# Module types the QAT wrapper quantizes (their names, so torch is not needed to read it).
WRAPPED = ("Conv1d", "Conv2d", "Conv3d", "Linear")
# Weighted module types it cannot wrap: their weights would reach the export in FP32
# next to quantized layers, which is never what a QAT user meant.
UNWRAPPABLE = ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "LSTM", "GRU", "RNN",
               "LSTMCell", "GRUCell", "RNNCell", "MultiheadAttention", "Bilinear",
               "TransformerEncoderLayer", "TransformerDecoderLayer", "Transformer")
# Functions that would compute with a parameter directly, out of reach of a module wrapper.
FUNCTIONAL = ("conv1d", "conv2d", "conv3d", "linear", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "bilinear", "matmul", "mm", "bmm", "addmm")

_classes = {}


def _torch():
    return require("torch", "quantization-aware training (edgeinfer.qat)")


def _fake_quant_class():
    """The wrapper module class, made on first use (defining it needs torch)."""
    if "FakeQuantLayer" in _classes:
        return _classes["FakeQuantLayer"]
    torch = _torch()
    quantization = require("torch.ao.quantization", "quantization-aware training")

    class FakeQuantLayer(torch.nn.Module):
        """A Conv or Linear whose input and weight are fake-quantized (symmetric INT8).

        Attributes:
            layer: the wrapped ``nn.Conv*d`` / ``nn.Linear`` (its weight is trained).
            input_quant: FakeQuantize of the input, per tensor, INT8 [-128, 127].
            weight_quant: FakeQuantize of the weight, per output channel (axis 0)
                or per tensor, on ``weight_bits`` bits.
            weight_bits: the weight grid's bits.
        """

        def __init__(self, layer, weight_bits, per_channel):
            super(FakeQuantLayer, self).__init__()
            self.layer = layer
            self.weight_bits = weight_bits
            self.per_channel = per_channel
            self.input_quant = quantization.FakeQuantize(
                observer=quantization.MovingAverageMinMaxObserver, quant_min=-128,
                quant_max=127, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
            low, high = -(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1
            if per_channel:
                self.weight_quant = quantization.FakeQuantize(
                    observer=quantization.MovingAveragePerChannelMinMaxObserver, quant_min=low,
                    quant_max=high, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                    ch_axis=0)
            else:
                self.weight_quant = quantization.FakeQuantize(
                    observer=quantization.MovingAverageMinMaxObserver, quant_min=low,
                    quant_max=high, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
            self.exporting = False
            self.frozen = False

        def train(self, mode=True):
            """Observers follow the mode: scales move in training only, until :func:`freeze`."""
            super(FakeQuantLayer, self).train(mode)
            for quant in (self.input_quant, self.weight_quant):
                if mode and not self.frozen:
                    quant.enable_observer()
                else:
                    quant.disable_observer()
            return self

        def forward(self, x):
            if self.exporting:
                x, weight = self._export_inputs(x)
            else:
                x, weight = self.input_quant(x), self.weight_quant(self.layer.weight)
            if isinstance(self.layer, torch.nn.Linear):
                return torch.nn.functional.linear(x, weight, self.layer.bias)
            return self.layer._conv_forward(x, weight, self.layer.bias)

        def start_export(self):
            """Freeze the scales and keep the rounded weights for the INT8 Q/DQ of the export."""
            with torch.no_grad():
                self.register_buffer("export_weight", self.weight_quant(self.layer.weight).detach())
            self.exporting = True

        def _export_inputs(self, x):
            # Plain fake-quant calls on the full INT8 range: the TorchScript exporter
            # writes each as QuantizeLinear + DequantizeLinear with an int8 zero point.
            # The weight is already on its (possibly narrower) grid, so INT8 Q/DQ with
            # the same scale reproduces it exactly.
            x = torch.fake_quantize_per_tensor_affine(
                x, float(self.input_quant.scale), 0, -128, 127)
            scale = self.weight_quant.scale.detach()
            if self.per_channel:
                weight = torch.fake_quantize_per_channel_affine(
                    self.export_weight, scale, torch.zeros_like(scale, dtype=torch.int32), 0,
                    -128, 127)
            else:
                weight = torch.fake_quantize_per_tensor_affine(
                    self.export_weight, float(scale), 0, -128, 127)
            return x, weight

    _classes["FakeQuantLayer"] = FakeQuantLayer
    return FakeQuantLayer


def _as_tuple(example_inputs):
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (
        example_inputs,)


def _trace(torch, model):
    """fx-trace the model and fold BatchNorm into the Conv/Linear before it (eval statistics)."""
    optimization = require("torch.fx.experimental.optimization", "quantization-aware training")
    was_training = model.training
    model.eval()
    try:
        return optimization.fuse(model)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ModelError("edgeinfer.qat cannot trace {} with torch.fx: {}".format(
            type(model).__name__, text[0] if text else type(exc).__name__),
            "QAT wraps the Conv and Linear modules of a traceable model: move data-dependent "
            "control flow out of forward(), or prepare the traceable submodule alone.")
    finally:
        model.train(was_training)


def _check_wrappable(graph_module, skip):
    """Refuse weighted ops the wrapper cannot quantize, naming each.

    Raises:
        ModelError: modules of :data:`UNWRAPPABLE` types, or functional calls of
            :data:`FUNCTIONAL` on the model's parameters.
    """
    modules = dict(graph_module.named_modules())
    found = []
    for node in graph_module.graph.nodes:
        if node.op == "call_module" and node.target not in skip:
            kind = type(modules[node.target]).__name__
            if kind in UNWRAPPABLE:
                found.append("{} ({})".format(node.target, kind))
        elif node.op in ("call_function", "call_method"):
            name = getattr(node.target, "__name__", str(node.target))
            uses_parameter = any(getattr(arg, "op", None) == "get_attr" for arg in node.args)
            if name in FUNCTIONAL and uses_parameter and node.name not in skip:
                found.append("{} (functional {} on a parameter)".format(node.name, name))
    if found:
        raise ModelError("edgeinfer.qat cannot quantize {}: it fake-quantizes the Conv1d/2d/3d "
                         "and Linear modules only.".format(", ".join(found)),
                         "Keep them in FP32 with skip=[{}], or rewrite them with nn.Conv*d / "
                         "nn.Linear modules.".format(", ".join(
                             repr(f.split(" ")[0]) for f in found)))


def _check_bits(weight_bits, layer_bits):
    for name, bits in [(None, weight_bits)] + sorted((layer_bits or {}).items()):
        if bits not in WEIGHT_BITS:
            raise UsageError("Weight bits {!r}{} are not supported.".format(
                bits, " for {}".format(name) if name else ""),
                "Use {} to 8: the export writes INT8 Q/DQ.".format(WEIGHT_BITS[0]))


def prepare(model, example_inputs, calibration=None, weight_bits=8, per_channel=True,
            layer_bits=None, skip=(), calibration_batches=None):
    """Insert fake quantization into a copy of ``model`` and set its scales from calibration.

    Args:
        model: a ``torch.nn.Module`` traceable by ``torch.fx`` (not changed).
        example_inputs: a tensor or tuple of tensors the model takes (batch of any size).
        calibration: an iterable of batches: tensors, or tuples/lists whose first
            ``len(example_inputs)`` items are the model's inputs (a DataLoader of
            ``(x, y)`` works) (default None: the scales start from the first batches
            the model sees in training).
        weight_bits: bits of every weight grid, 2 to 8 (default 8).  For OpenVINO on
            x86 CPUs without VNNI/AMX use 7: their INT8 kernels add weight products in
            16 bits, which full-range 8-bit weights can saturate (``convert`` notes it).
        per_channel: weight scales per output channel, else one per tensor (default True).
        layer_bits: dict module name -> weight bits for single layers (default None),
            e.g. ``{"features.0": 4}``; names are the model's ``named_modules()`` names.
        skip: module names to keep in FP32 (default none).
        calibration_batches: read at most this many calibration batches (default None: all).

    Returns:
        the QAT model (a ``torch.fx.GraphModule``) in train mode: train it with the
        original loss and a fresh optimizer over its parameters, then :func:`export`.

    Raises:
        MissingDependency: torch is not installed (the ``[qat]`` extra).
        ModelError: the model cannot be traced, has weighted ops the wrapper cannot
            quantize (named), or no Conv/Linear at all.
        UsageError: bit widths out of range, or unknown names in ``layer_bits``/``skip``.
    """
    torch = _torch()
    _check_bits(weight_bits, layer_bits)
    skip = tuple(skip or ())
    traced = _trace(torch, model)
    _check_wrappable(traced, skip)
    modules = dict(traced.named_modules())
    unknown = [n for n in list(layer_bits or {}) + list(skip) if n not in modules]
    if unknown:
        raise UsageError("No module named {!r} in the model.".format(unknown[0]),
                         "Names are those of model.named_modules(), e.g. {}.".format(", ".join(
                             repr(n) for n in list(modules)[1:4])))
    wrapper = _fake_quant_class()
    wrapped = 0
    for name, module in list(modules.items()):
        if type(module).__name__ in WRAPPED and name not in skip:
            bits = (layer_bits or {}).get(name, weight_bits)
            _set_module(traced, name, wrapper(module, bits, per_channel))
            wrapped += 1
    if not wrapped:
        raise ModelError("{} has no Conv1d/2d/3d or Linear module to quantize.".format(
            type(model).__name__), "QAT quantizes the inputs and weights of those layers.")
    traced.recompile()
    if calibration is not None:
        calibrate(traced, calibration, len(_as_tuple(example_inputs)), calibration_batches)
    traced.train()
    return traced


def _set_module(root, dotted, module):
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def layers(qmodel):
    """The fake-quantized layers of a prepared model: dict name -> wrapper module."""
    wrapper = _fake_quant_class()
    return dict((name, m) for name, m in qmodel.named_modules() if isinstance(m, wrapper))


def _quantizers(qmodel):
    for layer in layers(qmodel).values():
        yield layer.input_quant
        yield layer.weight_quant


def calibrate(qmodel, batches, inputs=1, limit=None):
    """Set the scales from data: observers on, fake quantization off, no gradients.

    Args:
        qmodel: a model from :func:`prepare`.
        batches: iterable of tensors or tuples/lists (first ``inputs`` items are fed).
        inputs: how many inputs the model takes (default 1).
        limit: read at most this many batches (default None: all).

    Raises:
        UsageError: no batch was given.
    """
    torch = _torch()
    observer = require("torch.ao.quantization.observer", "quantization-aware training")
    qmodel.eval()
    for quant in _quantizers(qmodel):
        quant.enable_observer()
        quant.disable_fake_quant()
        # Start from this data, not from what the observers saw before.
        quant.activation_post_process.reset_min_max_vals()
    inputs_seen = [layer.input_quant.activation_post_process for layer in layers(qmodel).values()]
    for seen in inputs_seen:
        # The range of all the batches (MinMaxObserver's), not a moving average that the
        # first batch dominates; training then averages from there.
        seen.forward = types.MethodType(observer.MinMaxObserver.forward, seen)
    count = 0
    try:
        with torch.no_grad():
            for batch in batches:
                feeds = tuple(batch[:inputs]) if isinstance(batch, (tuple, list)) else (batch,)
                qmodel(*feeds)
                count += 1
                if limit is not None and count >= limit:
                    break
    finally:
        for seen in inputs_seen:
            del seen.forward
    if not count:
        raise UsageError("Calibration for QAT received no batch.", "Pass batches of inputs.")
    for quant in _quantizers(qmodel):
        quant.enable_fake_quant()
        quant.disable_observer()
        # The first training step would otherwise average the calibrated range with
        # its own batch at once: moving averages go on from the calibrated range.
        scale, zero_point = quant.calculate_qparams()
        quant.scale.resize_(scale.shape).copy_(scale)
        quant.zero_point.resize_(zero_point.shape).copy_(zero_point)
    return count


def freeze(qmodel):
    """Stop the observers for good: the scales stay as they are (late QAT epochs, export).

    Before it, observers update the scales (moving averages) in training mode only;
    evaluation (``qmodel.eval()``) never moves them.
    """
    for layer in layers(qmodel).values():
        layer.frozen = True
    for quant in _quantizers(qmodel):
        quant.disable_observer()
    return qmodel


def describe(qmodel):
    """What the QAT model quantizes, for the export's metadata and the manifest."""
    found = layers(qmodel)
    return {"source": "qat", "tool": "edgeinfer.qat (torch.ao.quantization FakeQuantize, "
                                     "torch {})".format(_torch().__version__),
            "activations": "int8 per tensor, symmetric (zero point 0)",
            "weights": "symmetric, per output channel" if all(
                m.per_channel for m in found.values()) else "symmetric, per tensor",
            "weight_bits": dict((name, m.weight_bits) for name, m in found.items()),
            "batchnorm": "folded before QAT (running statistics frozen)"}


def export(qmodel, example_inputs, path, input_names=None, output_names=None,
           dynamic_batch=True, opset=EXPORT_OPSET, metadata=None):
    """Export a QAT model to a Q/DQ ONNX file (atomically).

    Args:
        qmodel: a model from :func:`prepare` (it is not changed: a copy is exported).
        example_inputs: a tensor or tuple of tensors it takes.
        path: the ``.onnx`` file to write.
        input_names / output_names: ONNX names (default ``input``/``output``, numbered
            when there are several).
        dynamic_batch: make the first dim of every input and output dynamic (default True).
        opset: ONNX opset, 13 or newer (default 17).
        metadata: extra ``metadata_props`` (e.g. ``{"edgeinfer.preprocess": {...}}``);
            non-string values are written as JSON (default None).

    Returns:
        path

    Raises:
        UsageError: not a model from :func:`prepare`, or an opset below 13.
    """
    torch = _torch()
    onnx = require("onnx", "QAT export")
    if not layers(qmodel):
        raise UsageError("export() takes a model from edgeinfer.qat.prepare(); this one has "
                         "no fake-quantized layer.", "Call qat.prepare(model, ...) first.")
    if opset < MIN_OPSET:
        raise UsageError("QAT export needs opset {} or newer (per-channel QuantizeLinear); "
                         "{} asked.".format(MIN_OPSET, opset), "Drop opset, or pass 13+.")
    example = _as_tuple(example_inputs)
    model = freeze(copy.deepcopy(qmodel)).eval()
    for layer in layers(model).values():
        layer.start_export()
    with torch.no_grad():
        result = model(*example)
    count = len(result) if isinstance(result, (tuple, list)) else 1
    input_names = list(input_names or _names("input", len(example)))
    output_names = list(output_names or _names("output", count))
    axes = dict((name, {0: "batch"}) for name in input_names + output_names) if (
        dynamic_batch) else None
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".qat-", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in torch >= 2.9; it is the one that
            # writes fake quantization as Q/DQ without onnxscript.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, example, tmp, dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes=axes, do_constant_folding=True)
        proto = onnx.load(tmp)
        props = {QUANTIZATION_KEY: json.dumps(describe(model))}
        for key, value in (metadata or {}).items():
            props[key] = value if isinstance(value, str) else json.dumps(value)
        _add_metadata(onnx, proto, props)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _names(stem, count):
    return [stem] if count == 1 else ["{}_{}".format(stem, i) for i in range(count)]


def _add_metadata(onnx, proto, props):
    present = dict((p.key, p) for p in proto.metadata_props)
    for key, value in props.items():
        if key in present:
            present[key].value = value
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
