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
