"""Tiny ONNX models built in code for the tests (the catalogue).

Each builder returns an ``onnx.ModelProto``; weights come from a seeded
generator so every run builds the same model.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def tiny(opset=13, ir_version=7, seed=7):
    """A float model with two outputs whose values tests compute with numpy.

        x[batch,4] -> MatMul(W 4x3) -> Add(b) -> z[batch,3] (pre-activation)
                                         `-> Relu -> y[batch,3]

    Returns:
        (model, W, b)
    """
    rng = np.random.RandomState(seed)
    W = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3])],
        [_init("W", W), _init("b", b)])
    model = helper.make_model(graph, producer_name="edgeinfer-tests",
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model, W, b


def int_add(opset=13, ir_version=7):
    """An integer model for dtype rules: n[batch,2] int64 -> Add(n, n) -> m[batch,2]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["n", "n"], ["m"])], "doubler",
        [helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("m", TensorProto.INT64, ["batch", 2])])
    model = helper.make_model(graph, producer_name="edgeinfer-tests",
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def mlp(opset=17, seed=0):
    """A two-layer MLP: MatMul-heavy, no Conv.

        x[batch,16] -> MatMul(W1 16x32) -> Add(b1) -> Relu -> MatMul(W2 32x32) -> Relu
                    -> MatMul(W3 32x10) -> y[batch,10]
    """
    rng = np.random.RandomState(seed)
    w = [(rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)
         for s in ((16, 32), (32, 32), (32, 10))]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Relu", ["h1b"], ["a1"]),
        helper.make_node("MatMul", ["a1", "W2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("MatMul", ["a2", "W3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [_init("W1", w[0]), _init("b1", np.full(32, 0.1, np.float32)), _init("W2", w[1]),
         _init("W3", w[2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def token_model(opset=17, seed=0, vocab=50, width=8):
    """Two int64 inputs, like a text model: token ids and an attention mask.

        input_ids[batch,seq] -> Gather(E vocab x width) -> emb[batch,seq,width]
        attention_mask[batch,seq] -> Cast(float) -> Unsqueeze(-1) -> m
        emb * m -> ReduceSum(axis 1) -> MatMul(W width x 4) -> logits[batch,4]
    """
    rng = np.random.RandomState(seed)
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axes_last"], ["m"]),
        helper.make_node("Mul", ["emb", "m"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes_seq"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [_init("E", rng.standard_normal((vocab, width)).astype(np.float32)),
         _init("W", rng.standard_normal((width, 4)).astype(np.float32)),
         _init("axes_last", np.array([-1], np.int64)), _init("axes_seq", np.array([1], np.int64))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def outlier_convnet(seed=0, outlier=1000.0, opset=17):
    """A small conv net whose conv2 output has one channel ``outlier`` times larger.

        x[batch,3,8,8] -> conv1(3->8, 3x3) -> relu1 -> conv2(8->8, 3x3) -> relu2
            -> conv3(8->8, 3x3) -> relu3 -> pool (GlobalAveragePool) -> flatten
            -> fc (Gemm 8->10) -> y[batch,10]

    Channel 0 of conv2 (weights and bias) is multiplied by ``outlier`` and conv3's
    weights that read that channel are divided by it, so the FP32 function is the
    plain network's.  INT8 is not: the tensor between relu2 and conv3 gets one
    per-tensor scale, set by the outlier channel, so the other seven channels
    round to a few levels.  That tensor is conv2's output and conv3's input, so
    the offending ops are conv2(+relu2) and conv3(+relu3); the rest quantize well.
    """
    rng = np.random.RandomState(seed)

    def conv(cin, cout):
        w = rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)
        return w.astype(np.float32), (0.1 * rng.standard_normal(cout)).astype(np.float32)

    w1, b1 = conv(3, 8)
    w2, b2 = conv(8, 8)
    w3, b3 = conv(8, 8)
    w2[0] *= outlier
    b2[0] = abs(b2[0]) * outlier  # keep channel 0 mostly positive after relu2
    w3[:, 0] /= outlier
    fc = (rng.standard_normal((10, 8)) / np.sqrt(8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "outlier_convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [_init("w1", w1), _init("b1", b1), _init("w2", w2), _init("b2", b2), _init("w3", w3),
         _init("b3", b3), _init("fc", fc), _init("fc_b", np.zeros(10, np.float32))])
    return helper.make_model(graph, producer_name="edgeinfer-tests",
                             opset_imports=[helper.make_opsetid("", opset)])


def save(model, path):
    onnx.save(model, str(path))
    return str(path)


# -- graph preparation (issue 4, item 8): exports that quantize badly as they are ------------

def _constant(output, array):
    return helper.make_node("Constant", [], [output], value=numpy_helper.from_array(
        np.asarray(array), output))


def constant_weights_convnet(seed=0, opset=13):
    """A conv net whose weights are Constant nodes, as Paddle and some TF exports write them.

        x[batch,3,8,8] -> conv(w1, b1) -> relu -> conv(w2 via Identity, b2) -> relu
            -> GlobalAveragePool -> Reshape(shape) -> MatMul(fc) -> Add(fc_b) -> y[batch,10]

    w1, w2, b2, fc and fc_b are ``Constant(value=tensor)``; b1 is
    ``Constant(value_floats)`` and the Reshape's shape ``Constant(value_ints)`` (both
    ``value`` below opset 12, which lacks those forms); w2 reaches its conv through an
    ``Identity``, as PyTorch writes for shared weights.  Only the first conv has a name
    (``conv``), as some exporters leave them.
    """
    rng = np.random.RandomState(seed)
    w1 = (rng.standard_normal((8, 3, 3, 3)) / np.sqrt(27)).astype(np.float32)
    w2 = (rng.standard_normal((8, 8, 3, 3)) / np.sqrt(72)).astype(np.float32)
    fc = (rng.standard_normal((8, 10)) / np.sqrt(8)).astype(np.float32)
    b1 = [float(v) for v in 0.1 * rng.standard_normal(8)]
    nodes = [
        _constant("w1", w1),
        # value_floats and value_ints came with opset 12.
        helper.make_node("Constant", [], ["b1"], value_floats=b1) if opset >= 12 else
        _constant("b1", np.array(b1, np.float32)),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        _constant("w2", w2),
        helper.make_node("Identity", ["w2"], ["w2_shared"]),
        _constant("b2", (0.1 * rng.standard_normal(8)).astype(np.float32)),
        helper.make_node("Conv", ["r1", "w2_shared", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Constant", [], ["shape"], value_ints=[-1, 8]) if opset >= 12 else
        _constant("shape", np.array([-1, 8], np.int64)),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        _constant("fc", fc),
        helper.make_node("MatMul", ["f", "fc"], ["m"]),
        _constant("fc_b", np.zeros(10, np.float32)),
        helper.make_node("Add", ["m", "fc_b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "constant_weights_convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])])
    return helper.make_model(graph, producer_name="edgeinfer-tests",
                             opset_imports=[helper.make_opsetid("", opset)])


def old_opset_convnet(seed=0, opset=11):
    """A conv net at opset 11, with ops whose form changed at 13 (axes as attributes).

        x[batch,3,8,8] -> conv(w 8x3x3x3, b) -> relu -> ReduceMean(axes=[2,3])
            -> Unsqueeze(axes=[1]) -> Squeeze(axes=[1]) -> MatMul(fc 8x10) -> y[batch,10]

    Opset 11 Q/DQ has no ``axis``, so per-channel weights need the model at opset 13;
    bumping the number alone would leave Unsqueeze/Squeeze/ReduceMean invalid.
    """
    rng = np.random.RandomState(seed)
    w = (rng.standard_normal((8, 3, 3, 3)) / np.sqrt(27)).astype(np.float32)
    # Output channels 10x apart in range: per-tensor INT8 would round the small ones away.
    w *= np.logspace(-1, 0, 8, dtype=np.float32)[:, None, None, None]
    fc = (rng.standard_normal((8, 10)) / np.sqrt(8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r"], ["p"], name="pool", axes=[2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["p"], ["pu"], name="unsqueeze", axes=[1]),
        helper.make_node("Squeeze", ["pu"], ["f"], name="squeeze", axes=[1]),
        helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "old_opset_convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [_init("w", w), _init("b", (0.1 * rng.standard_normal(8)).astype(np.float32)),
         _init("fc", fc)])
    model = helper.make_model(graph, producer_name="edgeinfer-tests",
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 6
    return model


def mismatched_dims_model(seed=0, opset=13):
    """A sequence model whose inputs name one runtime length twice: ``seq`` and ``width``.

        features[batch,seq,16] * Unsqueeze(mask[batch,width], -1) -> MatMul(W1 16x32)
            -> Add(b1) -> Relu -> MatMul(W2 32x32) -> Relu -> ReduceMean(axis 1)
            -> MatMul(W3 32x4) -> logits[batch,4]

    Exporters name dims per input, so two that are equal at run time can carry
    different names.  ONNX Runtime's symbolic shape inference cannot relate ``seq``
    and ``width`` at the Mul and stops ("Incomplete symbolic shape inference").
    """
    rng = np.random.RandomState(seed)
    w = [(rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)
         for s in ((16, 32), (32, 32), (32, 4))]
    nodes = [
        helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"], name="mask_unsqueeze"),
        helper.make_node("Mul", ["features", "mask3"], ["masked"], name="mask_mul"),
        helper.make_node("MatMul", ["masked", "W1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
        helper.make_node("Relu", ["h1b"], ["a1"], name="relu1"),
        helper.make_node("MatMul", ["a1", "W2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("ReduceMean", ["a2"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W3"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "mismatched_dims",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "seq", 16]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [_init("last", np.array([-1], np.int64)), _init("W1", w[0]),
         _init("b1", np.full(32, 0.1, np.float32)), _init("W2", w[1]), _init("W3", w[2])])
    return helper.make_model(graph, producer_name="edgeinfer-tests",
                             opset_imports=[helper.make_opsetid("", opset)])


def spatial_batchnorm_model(seed=0):
    """Opset 7 with a per-activation BatchNormalization (``spatial=0``), as old exports have.

        x[batch,2,4,4] -> BatchNormalization(spatial=0, stats 2x4x4) -> Flatten
            -> MatMul(W 32x10) -> y[batch,10]

    ``spatial`` was removed at opset 9 and ONNX's version converter cannot express
    ``spatial=0`` there, so the model cannot be upgraded to opset 13.
    """
    rng = np.random.RandomState(seed)
    stats = dict((name, rng.uniform(0.5, 1.5, (2, 4, 4)).astype(np.float32))
                 for name in ("scale", "bias", "mean", "var"))
    nodes = [
        helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["n"],
                         name="bn", spatial=0),
        helper.make_node("Flatten", ["n"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "W"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "spatial_batchnorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [_init(name, value) for name, value in sorted(stats.items())] +
        [_init("W", rng.standard_normal((32, 10)).astype(np.float32))])
    model = helper.make_model(graph, producer_name="edgeinfer-tests",
                              opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 6
    return model
