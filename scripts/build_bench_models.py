#!/usr/bin/env python3
"""Build benchmark ONNX models by architecture, with seeded random weights.

No weights are downloaded: each model is written node by node with
``onnx.helper`` and its weights drawn from a seeded numpy generator, so a
build is fast, deterministic and needs only ``onnx`` and ``numpy``
(``onnxruntime`` is used, when present, for the smoke check).

Architectures:

* ``resnet50``: torchvision's ResNet-50 v1.5 (bottlenecks [3, 4, 6, 3], the
  stride on the 3x3 conv), ~25.5 M parameters.
* ``mobilenetv2``: torchvision's MobileNetV2, width 1.0 (inverted residuals,
  linear bottlenecks, ReLU6 written as ``Clip(0, 6)``), ~3.5 M parameters.
* ``tiny``: Conv + Relu + GlobalAveragePool + Flatten + Gemm on an 8x8 input,
  for measuring per-call overhead.
* ``transformer``: a small BERT-style encoder (the MatMul-heavy case): 2 post-LN
  layers, hidden 128, 4 heads, FFN 512, GELU written with ``Erf``, on a fixed
  sequence of 64 embeddings. Input ``input`` float32 [batch, 64, 128] (token plus
  position embeddings, as an embedding layer would give), output ``hidden``
  float32 [batch, 64, 128] (the last hidden state, every value compared), ~0.4 M
  parameters, no preprocessing metadata.

BatchNorm is taken as already folded: every conv carries a bias. Weights are
He-normal (std = gain / sqrt(fan_in), gain sqrt(2) before a ReLU, 1 before a
linear output) and the last conv of each residual branch is scaled down so the
variance stays bounded through the depth; ``check()`` verifies the logits' std.

Usage::

    python scripts/build_bench_models.py --arch resnet50 mobilenetv2 --out build/models

From another script::

    from build_bench_models import build
    model = build("resnet50", seed=0)
"""

import argparse
import json
import math
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the lowest IR version that carries opset 17; keeps older runtimes happy
NUM_CLASSES = 1000
IMAGE_SIZE = 224

# Scale on the last conv of a residual branch: keeps the sum of the identity
# and the branch from growing by ~2x in variance at every block.
RESIDUAL_BRANCH_SCALE = 0.3

PREPROCESS = {
    "color": "RGB", "resize": 256, "interpolation": "bilinear", "center_crop": [224, 224],
    "scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "layout": "NCHW", "dtype": "float32",
}


class GraphBuilder:
    """Accumulates nodes and seeded initializers for one ONNX graph.

    Every ``conv``/``gemm`` call draws its weights from the builder's generator
    in call order, so the same seed always gives the same model.
    """

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self._names: Dict[str, int] = {}
        self._relu6_bounds: Optional[Tuple[str, str]] = None

    def _unique(self, name: str) -> str:
        count = self._names.get(name, 0)
        self._names[name] = count + 1
        return name if count == 0 else f"{name}_{count}"

    def constant(self, name: str, value: np.ndarray) -> str:
        """Add an initializer and return its name."""
        name = self._unique(name)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def shared(self, name: str, value: np.ndarray) -> str:
        """An initializer many nodes read: added on first use, then reused by name."""
        return name if name in self._names else self.constant(name, value)

    def node(self, op: str, inputs: Sequence[str], name: str, output: Optional[str] = None,
             **attrs) -> str:
        """Add a single-output node and return its output's name (``output``, else its name)."""
        name = self._unique(name)
        output = output or name
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attrs))
        return output

    def he_normal(self, shape: Tuple[int, ...], fan_in: int, gain: float) -> np.ndarray:
        """He-normal weights: std = gain / sqrt(fan_in)."""
        std = gain / math.sqrt(fan_in)
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def bias(self, size: int) -> np.ndarray:
        """A small random bias, as a folded BatchNorm would leave."""
        return (self.rng.standard_normal(size) * 0.05).astype(np.float32)

    def conv(self, x: str, name: str, cin: int, cout: int, kernel: int, stride: int = 1,
             groups: int = 1, act: Optional[str] = "relu", scale: float = 1.0) -> str:
        """Conv (BatchNorm folded in: with bias) followed by ``act``.

        ``act`` is ``"relu"``, ``"relu6"`` or None (linear output). ``scale``
        multiplies the weights (used on the last conv of residual branches).
        """
        fan_in = (cin // groups) * kernel * kernel
        gain = math.sqrt(2.0) if act else 1.0
        weight = self.he_normal((cout, cin // groups, kernel, kernel), fan_in, gain * scale)
        w = self.constant(f"{name}.weight", weight)
        b = self.constant(f"{name}.bias", self.bias(cout))
        pad = kernel // 2
        y = self.node("Conv", [x, w, b], name, kernel_shape=[kernel, kernel],
                      strides=[stride, stride], pads=[pad] * 4, group=groups)
        return self.activation(y, name, act)

    def activation(self, x: str, name: str, act: Optional[str]) -> str:
        """Apply ``act`` (``"relu"``, ``"relu6"`` or None) to ``x``."""
        if act is None:
            return x
        if act == "relu":
            return self.node("Relu", [x], f"{name}.relu")
        if act == "relu6":
            if self._relu6_bounds is None:  # shared by every Clip, as torch exports it
                self._relu6_bounds = (self.constant("relu6.min", np.array(0.0, np.float32)),
                                      self.constant("relu6.max", np.array(6.0, np.float32)))
            return self.node("Clip", [x, *self._relu6_bounds], f"{name}.relu6")
        raise ValueError(f"unknown activation {act!r}")

    def classifier(self, x: str, cin: int, classes: int) -> str:
        """GlobalAveragePool + Flatten + Gemm(transB=1) into ``logits``, as torchvision exports it."""
        pooled = self.node("GlobalAveragePool", [x], "avgpool")
        flat = self.node("Flatten", [pooled], "flatten", axis=1)
        w = self.constant("fc.weight", self.he_normal((classes, cin), cin, 1.0))
        b = self.constant("fc.bias", self.bias(classes))
        return self.node("Gemm", [flat, w, b], "fc", output="logits", transB=1)


# --------------------------------------------------------------------- ResNet-50

def _bottleneck(g: GraphBuilder, x: str, name: str, cin: int, planes: int, stride: int) -> str:
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (stride here) -> 1x1 (x4), plus shortcut."""
    cout = planes * 4
    y = g.conv(x, f"{name}.conv1", cin, planes, 1)
    y = g.conv(y, f"{name}.conv2", planes, planes, 3, stride=stride)
    y = g.conv(y, f"{name}.conv3", planes, cout, 1, act=None, scale=RESIDUAL_BRANCH_SCALE)
    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = g.conv(x, f"{name}.downsample", cin, cout, 1, stride=stride, act=None)
    return g.node("Relu", [g.node("Add", [y, shortcut], f"{name}.add")], f"{name}.relu")


def _resnet50(g: GraphBuilder, x: str) -> str:
    """torchvision ``resnet50`` body; returns the logits' name."""
    y = g.conv(x, "conv1", 3, 64, 7, stride=2)
    y = g.node("MaxPool", [y], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    cin = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for block in range(blocks):
            stride = 2 if (block == 0 and stage > 1) else 1
            y = _bottleneck(g, y, f"layer{stage}.{block}", cin, planes, stride)
            cin = planes * 4
    return g.classifier(y, cin, NUM_CLASSES)


# ------------------------------------------------------------------- MobileNetV2

# (expansion t, output channels c, repeats n, first stride s), width 1.0.
_MOBILENETV2_SETTINGS = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]


def _inverted_residual(g: GraphBuilder, x: str, name: str, cin: int, cout: int,
                       stride: int, expand: int) -> str:
    """Expand 1x1 (skipped when t=1) -> depthwise 3x3 -> linear project 1x1, plus identity."""
    hidden = cin * expand
    use_residual = stride == 1 and cin == cout
    y = x
    if expand != 1:
        y = g.conv(y, f"{name}.expand", cin, hidden, 1, act="relu6")
    y = g.conv(y, f"{name}.dw", hidden, hidden, 3, stride=stride, groups=hidden, act="relu6")
    y = g.conv(y, f"{name}.project", hidden, cout, 1, act=None,
               scale=RESIDUAL_BRANCH_SCALE if use_residual else 1.0)
    return g.node("Add", [x, y], f"{name}.add") if use_residual else y


def _mobilenetv2(g: GraphBuilder, x: str) -> str:
    """torchvision ``mobilenet_v2`` body (width 1.0); returns the logits' name."""
    cin = 32
    y = g.conv(x, "features.0", 3, cin, 3, stride=2, act="relu6")
    index = 1
    for expand, cout, repeats, first_stride in _MOBILENETV2_SETTINGS:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            y = _inverted_residual(g, y, f"features.{index}", cin, cout, stride, expand)
            cin = cout
            index += 1
    y = g.conv(y, f"features.{index}", cin, 1280, 1, act="relu6")
    return g.classifier(y, 1280, NUM_CLASSES)


# -------------------------------------------------------------------------- tiny

def _tiny(g: GraphBuilder, x: str) -> str:
    """One 3x3 conv (8 channels) + Relu + pool + Gemm to 10 classes."""
    y = g.conv(x, "conv", 3, 8, 3)
    return g.classifier(y, 8, 10)


# ------------------------------------------------------------------ transformer

TRANSFORMER = {"layers": 2, "hidden": 128, "heads": 4, "ffn": 512, "seq": 64}


def _linear(g: GraphBuilder, x: str, name: str, cin: int, cout: int, gain: float = 1.0) -> str:
    """x @ W + b with W [cin, cout] (as torch exports nn.Linear on 3-D inputs)."""
    w = g.constant(f"{name}.weight", g.he_normal((cin, cout), cin, gain))
    b = g.constant(f"{name}.bias", g.bias(cout))
    return g.node("Add", [g.node("MatMul", [x, w], f"{name}.matmul"), b], f"{name}.add")


def _layer_norm(g: GraphBuilder, x: str, name: str, width: int) -> str:
    gamma = g.constant(f"{name}.weight", np.ones(width, np.float32))
    beta = g.constant(f"{name}.bias", np.zeros(width, np.float32))
    return g.node("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=1e-5)


def _gelu(g: GraphBuilder, x: str, name: str) -> str:
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))), as torch exports it before opset 20."""
    sqrt2 = g.shared("gelu.sqrt2", np.array(math.sqrt(2.0), np.float32))
    one = g.shared("gelu.one", np.array(1.0, np.float32))
    half = g.shared("gelu.half", np.array(0.5, np.float32))
    erf = g.node("Erf", [g.node("Div", [x, sqrt2], f"{name}.div")], f"{name}.erf")
    y = g.node("Mul", [x, g.node("Add", [erf, one], f"{name}.add")], f"{name}.mul")
    return g.node("Mul", [y, half], f"{name}.half")


def _attention(g: GraphBuilder, x: str, name: str, hidden: int, heads: int) -> str:
    """Multi-head self-attention: [b, s, h] -> [b, s, h]."""
    head = hidden // heads
    split = g.shared("attn.split_shape", np.array([0, 0, heads, head], np.int64))
    merge = g.shared("attn.merge_shape", np.array([0, 0, hidden], np.int64))
    scale = g.shared("attn.scale", np.array(1.0 / math.sqrt(head), np.float32))

    def heads_of(which: str, perm: List[int]) -> str:
        y = _linear(g, x, f"{name}.{which}", hidden, hidden)
        y = g.node("Reshape", [y, split], f"{name}.{which}.split")
        return g.node("Transpose", [y], f"{name}.{which}.transpose", perm=perm)

    q = heads_of("query", [0, 2, 1, 3])   # [b, heads, s, head]
    k = heads_of("key", [0, 2, 3, 1])     # [b, heads, head, s]
    v = heads_of("value", [0, 2, 1, 3])   # [b, heads, s, head]
    scores = g.node("Mul", [g.node("MatMul", [q, k], f"{name}.scores"), scale],
                    f"{name}.scaled")
    probs = g.node("Softmax", [scores], f"{name}.softmax", axis=-1)
    context = g.node("MatMul", [probs, v], f"{name}.context")
    context = g.node("Transpose", [context], f"{name}.context.transpose", perm=[0, 2, 1, 3])
    context = g.node("Reshape", [context, merge], f"{name}.context.merge")
    return _linear(g, context, f"{name}.output", hidden, hidden, gain=RESIDUAL_BRANCH_SCALE)


def _transformer(g: GraphBuilder, x: str) -> str:
    """BERT-style post-LN encoder layers; returns the last hidden state's name."""
    hidden, heads, ffn = TRANSFORMER["hidden"], TRANSFORMER["heads"], TRANSFORMER["ffn"]
    y = _layer_norm(g, x, "embeddings.norm", hidden)
    for i in range(TRANSFORMER["layers"]):
        name = f"encoder.{i}"
        attended = _attention(g, y, f"{name}.attention", hidden, heads)
        y = _layer_norm(g, g.node("Add", [y, attended], f"{name}.attention.residual"),
                        f"{name}.attention.norm", hidden)
        h = _gelu(g, _linear(g, y, f"{name}.ffn.up", hidden, ffn, gain=math.sqrt(2.0)),
                  f"{name}.ffn.gelu")
        h = _linear(g, h, f"{name}.ffn.down", ffn, hidden, gain=RESIDUAL_BRANCH_SCALE)
        y = _layer_norm(g, g.node("Add", [y, h], f"{name}.ffn.residual"), f"{name}.ffn.norm",
                        hidden)
    return g.node("Identity", [y], "hidden", output="hidden")


# ----------------------------------------------------------------------- public

# arch -> (body, input size, classes)
ARCHS: Dict[str, Tuple[Callable[[GraphBuilder, str], str], int, int]] = {
    "resnet50": (_resnet50, IMAGE_SIZE, NUM_CLASSES),
    "mobilenetv2": (_mobilenetv2, IMAGE_SIZE, NUM_CLASSES),
    "tiny": (_tiny, 8, 10),
}

# Sequence models: arch -> (body, input shape after the batch dim, output shape after it).
SEQUENCE_ARCHS: Dict[str, Tuple[Callable[[GraphBuilder, str], str], Tuple[int, ...],
                                Tuple[int, ...]]] = {
    "transformer": (_transformer, (TRANSFORMER["seq"], TRANSFORMER["hidden"]),
                    (TRANSFORMER["seq"], TRANSFORMER["hidden"])),
}

ALL_ARCHS = set(ARCHS) | set(SEQUENCE_ARCHS)


def preprocess_metadata(image_size: int) -> Dict[str, object]:
    """The ``edgeinfer.preprocess`` dict for a model taking ``image_size`` squares.

    224 gives the ImageNet recipe (resize 256, crop 224); other sizes keep the
    same normalization and resize straight to the input size.
    """
    meta = dict(PREPROCESS)
    if image_size != IMAGE_SIZE:
        meta["resize"] = image_size
        meta["center_crop"] = [image_size, image_size]
    return meta


def build(arch: str, seed: int = 0) -> onnx.ModelProto:
    """Build the ``arch`` model (see ``ARCHS`` and ``SEQUENCE_ARCHS``) with weights from ``seed``.

    Image models: input ``input`` float32 [batch, 3, S, S]; output ``logits``
    float32 [batch, classes]; metadata ``edgeinfer.preprocess`` set.  Sequence
    models: input ``input`` float32 [batch, seq, hidden], output ``hidden`` of the
    same shape, no preprocessing metadata.  Opset 17; the model passes
    ``onnx.checker.check_model``.
    """
    if arch not in ARCHS and arch not in SEQUENCE_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ALL_ARCHS)}")
    g = GraphBuilder(seed)
    if arch in SEQUENCE_ARCHS:
        body, in_shape, out_shape = SEQUENCE_ARCHS[arch]
        size = None
    else:
        body, size, classes = ARCHS[arch]
        in_shape, out_shape = (3, size, size), (classes,)
    output = body(g, "input")
    graph = helper.make_graph(
        g.nodes, arch,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *in_shape])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", *out_shape])],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgeinfer.build_bench_models",
                              doc_string=f"{arch}, random weights, seed {seed}")
    model.ir_version = IR_VERSION
    props = {"edgeinfer.bench.arch": arch, "edgeinfer.bench.seed": str(seed)}
    if size is not None:
        props["edgeinfer.preprocess"] = json.dumps(preprocess_metadata(size))
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def param_count(model: onnx.ModelProto) -> int:
    """Number of scalars in the model's initializers."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def check(model: onnx.ModelProto, batch: int = 4, seed: int = 1) -> float:
    """Run ``model`` in ONNX Runtime on random normal inputs; return the output's std.

    Raises ``RuntimeError`` if the output shape is wrong or its std is not
    finite and within 0.1..100 (exploding or vanishing activations).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [batch] + list(session.get_inputs()[0].shape[1:])
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    output = model.graph.output[0]
    (y,) = session.run([output.name], {"input": x})
    expected = (batch,) + tuple(d.dim_value for d in output.type.tensor_type.shape.dim[1:])
    if y.shape != expected:
        raise RuntimeError(f"{output.name} shape {y.shape}, expected {expected}")
    std = float(np.std(y))
    if not (math.isfinite(std) and 0.1 <= std <= 100.0):
        raise RuntimeError(f"{output.name} std {std} outside 0.1..100")
    return std


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=sorted(ALL_ARCHS),
                        default=["resnet50", "mobilenetv2"])
    parser.add_argument("--out", default=os.path.join("build", "models"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime smoke run")
    args = parser.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    for arch in args.arch:
        model = build(arch, seed=args.seed)
        path = os.path.join(args.out, f"{arch}.onnx")
        onnx.save(model, path)
        line = (f"{path}  {os.path.getsize(path) / 2**20:.1f} MiB  "
                f"{param_count(model):,} params")
        if not args.no_check:
            line += f"  {model.graph.output[0].name} std {check(model):.3g}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
