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


# -- sharding (issue 7): graphs the planner must cut correctly -------------------------------

def _model(nodes, name, inputs, outputs, initializers, opset=17):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, producer_name="edgeinfer-tests",
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def residual_stack(blocks=4, width=64, seed=0):
    """Two inputs, two outputs, residual skips, and one weight read at both ends.

        x[batch,W] -> MatMul(W_in) -> h0
        h(i+1) = h(i) + Relu(h(i) @ W_i)       i < blocks (each skip crosses a cut inside it)
        early[batch,W] = Identity(h2)          (a model output made early)
        out[batch,W] = (h_last + y[batch,W]) @ W_in   (W_in: read by the first and last node)

    Every weight is W x W float32 (16 KiB at W=64).
    """
    rng = np.random.RandomState(seed)
    inits = [_init("W_in", (rng.standard_normal((width, width)) / np.sqrt(width)).astype(
        np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "W_in"], ["h0"], name="in")]
    for i in range(blocks):
        inits.append(_init("W{}".format(i), (rng.standard_normal((width, width)) * 0.5 /
                                             np.sqrt(width)).astype(np.float32)))
        nodes += [helper.make_node("MatMul", ["h{}".format(i), "W{}".format(i)],
                                   ["a{}".format(i)], name="block{}.matmul".format(i)),
                  helper.make_node("Relu", ["a{}".format(i)], ["r{}".format(i)],
                                   name="block{}.relu".format(i)),
                  helper.make_node("Add", ["h{}".format(i), "r{}".format(i)],
                                   ["h{}".format(i + 1)], name="block{}.add".format(i))]
    nodes += [helper.make_node("Identity", ["h2"], ["early"], name="early"),
              helper.make_node("Add", ["h{}".format(blocks), "y"], ["s"], name="join"),
              helper.make_node("MatMul", ["s", "W_in"], ["out"], name="out")]
    spec = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width])
    return _model(nodes, "residual_stack", [spec("x"), spec("y")], [spec("early"), spec("out")],
                  inits)


def if_model(width=16, seed=0):
    """An If node whose branches read an outer tensor and an outer weight.

        x[batch,W] -> MatMul(W1) -> a
        If(flag: bool scalar)
            then: a @ W2 (W2 is the outer graph's)      else: a @ c (c: the branch's own)
        -> o -> MatMul(W3) -> y[batch,W]

    W1, W2, W3 and c are W x W (1 KiB at W=16); the If holds W2 and c: 2 KiB.
    """
    rng = np.random.RandomState(seed)
    weight = lambda: rng.standard_normal((width, width)).astype(np.float32)
    out = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width])
    then_graph = helper.make_graph([helper.make_node("MatMul", ["a", "W2"], ["t"])], "then", [],
                                   [out("t")])
    else_graph = helper.make_graph([helper.make_node("MatMul", ["a", "c"], ["e"])], "else", [],
                                   [out("e")], [_init("c", weight())])
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"], name="first"),
             helper.make_node("If", ["flag"], ["o"], name="branch", then_branch=then_graph,
                              else_branch=else_graph),
             helper.make_node("MatMul", ["o", "W3"], ["y"], name="last")]
    return _model(nodes, "if_model",
                  [out("x"), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                  [out("y")], [_init("W1", weight()), _init("W2", weight()),
                               _init("W3", weight())])


def cheap_cut_chain(seed=0):
    """Two equal weights with a wide tensor and a narrow one between them.

        x[batch,8] -> MatMul(A 8x256) -> wide[batch,256] -> ReduceSum(keepdims) -> narrow[batch,1]
            -> Mul(x) -> m[batch,8] -> MatMul(B 8x256) -> y[batch,256]

    A budget of one weight allows cuts before ReduceSum, before Mul, and before the
    second MatMul: before Mul only ``narrow`` (and ``x``, a model input) crosses.
    """
    rng = np.random.RandomState(seed)
    nodes = [helper.make_node("MatMul", ["x", "A"], ["wide"], name="A"),
             helper.make_node("ReduceSum", ["wide"], ["narrow"], name="reduce", keepdims=1),
             helper.make_node("Mul", ["x", "narrow"], ["m"], name="scale"),
             helper.make_node("MatMul", ["m", "B"], ["y"], name="B")]
    return _model(nodes, "cheap_cut_chain",
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
                  [_init("A", rng.standard_normal((8, 256)).astype(np.float32)),
                   _init("B", rng.standard_normal((8, 256)).astype(np.float32))], opset=13)


def transformer_stack(layers=4, hidden=32, heads=4, ffn=64, seq=8, seed=0):
    """Post-LN encoder layers with two inputs and two outputs.

        hidden[batch,seq,H], mask[batch,seq] (1 keep, 0 pad)
        bias = Reshape((1 - mask) * -10000, [batch,1,1,seq])
        per layer: x = LN(x + Attention(x, bias)); x = LN(x + W2(GELU(W1 x)))
        last[batch,seq,H] = x;  pooled[batch,H] = ReduceMean(x, axis 1)

    The reshape shapes, the attention scale and GELU's constants are single
    initializers read by every layer, so a plan duplicates them into each partition.
    """
    rng = np.random.RandomState(seed)
    head = hidden // heads
    inits = [_init("split_shape", np.array([0, 0, heads, head], np.int64)),
             _init("merge_shape", np.array([0, 0, hidden], np.int64)),
             _init("mask_shape", np.array([0, 1, 1, -1], np.int64)),
             _init("scale", np.array(1.0 / np.sqrt(head), np.float32)),
             _init("one", np.array(1.0, np.float32)),
             _init("half", np.array(0.5, np.float32)),
             _init("sqrt2", np.array(np.sqrt(2.0), np.float32)),
             _init("neg", np.array(-10000.0, np.float32))]
    nodes = [helper.make_node("Sub", ["one", "mask"], ["pad"], name="mask.invert"),
             helper.make_node("Mul", ["pad", "neg"], ["pad_bias"], name="mask.scale"),
             helper.make_node("Reshape", ["pad_bias", "mask_shape"], ["bias"], name="mask.shape")]

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x, name, cin, cout):
        inits.append(_init(name + ".w", (rng.standard_normal((cin, cout)) / np.sqrt(cin)).astype(
            np.float32)))
        inits.append(_init(name + ".b", (rng.standard_normal(cout) * 0.02).astype(np.float32)))
        return node("Add", [node("MatMul", [x, name + ".w"], name + ".matmul"), name + ".b"],
                    name)

    def norm(x, name):
        inits.append(_init(name + ".g", np.ones(hidden, np.float32)))
        inits.append(_init(name + ".b", np.zeros(hidden, np.float32)))
        return node("LayerNormalization", [x, name + ".g", name + ".b"], name, axis=-1)

    x = "hidden"
    for i in range(layers):
        p = "l{}".format(i)
        q, k, v = [node("Transpose", [node("Reshape", [linear(x, "{}.{}".format(p, n), hidden,
                                                               hidden), "split_shape"],
                                           "{}.{}.split".format(p, n))],
                        "{}.{}.heads".format(p, n), perm=perm)
                   for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3]))]
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], p + ".scores"), "scale"],
                                   p + ".scaled"), "bias"], p + ".masked")
        context = node("MatMul", [node("Softmax", [scores], p + ".probs", axis=-1), v],
                       p + ".context")
        merged = node("Reshape", [node("Transpose", [context], p + ".context.t",
                                       perm=[0, 2, 1, 3]), "merge_shape"], p + ".merged")
        x = norm(node("Add", [x, linear(merged, p + ".out", hidden, hidden)], p + ".res1"),
                 p + ".ln1")
        up = linear(x, p + ".up", hidden, ffn)
        erf = node("Erf", [node("Div", [up, "sqrt2"], p + ".gelu.div")], p + ".gelu.erf")
        gelu = node("Mul", [node("Mul", [up, node("Add", [erf, "one"], p + ".gelu.add")],
                                 p + ".gelu.mul"), "half"], p + ".gelu")
        x = norm(node("Add", [x, linear(gelu, p + ".down", ffn, hidden)], p + ".res2"),
                 p + ".ln2")
    nodes.append(helper.make_node("Identity", [x], ["last"], name="last"))
    nodes.append(helper.make_node("ReduceMean", ["last"], ["pooled"], name="pool", axes=[1],
                                  keepdims=0))
    return _model(
        nodes, "transformer_stack",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", seq, hidden]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", seq])],
        [helper.make_tensor_value_info("last", TensorProto.FLOAT, ["batch", seq, hidden]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", hidden])], inits)


def big_gather_model(folder, tables=4, rows=17 * 1024 * 1024, width=8, hot=(0, 5, 12345)):
    """A model over 2 GB whose weights live in one external data file, written sparsely.

        ids[n] int64 -> Gather(T0) + Gather(T1) + ... + Gather(T_last) -> y[n, width]

    Each table T_i is rows x width float32 (544 MiB at the defaults: 2.1 GiB for 4).
    The data file is a sparse file: only the ``hot`` rows hold values (row r of
    table i is ``i + 1 + r / 1e6`` in every column), so writing it takes
    milliseconds and no disk; every other row is 0.

    Returns:
        (path of the .onnx file, expected function ids -> y)
    """
    import os
    data_name = "big.onnx.data"
    table_bytes = rows * width * 4
    inits = []
    with open(os.path.join(str(folder), data_name), "wb") as handle:
        handle.truncate(table_bytes * tables)
        for i in range(tables):
            for row in hot:
                handle.seek(i * table_bytes + row * width * 4)
                handle.write(np.full(width, i + 1 + row / 1e6, np.float32).tobytes())
            tensor = onnx.TensorProto()
            tensor.name, tensor.data_type = "T{}".format(i), TensorProto.FLOAT
            tensor.dims.extend([rows, width])
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(i * table_bytes)),
                               ("length", str(table_bytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            inits.append(tensor)
    nodes = [helper.make_node("Gather", ["T0", "ids"], ["g0"], name="gather0")]
    total = "g0"
    for i in range(1, tables):
        nodes.append(helper.make_node("Gather", ["T{}".format(i), "ids"], ["g{}".format(i)],
                                      name="gather{}".format(i)))
        out = "y" if i == tables - 1 else "s{}".format(i)
        nodes.append(helper.make_node("Add", [total, "g{}".format(i)], [out],
                                      name="add{}".format(i)))
        total = out
    model = _model(nodes, "big_gather",
                   [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])], inits,
                   opset=13)
    path = os.path.join(str(folder), "big.onnx")
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())

    def expected(ids):
        values = np.zeros((len(ids), width), np.float32)
        for j, row in enumerate(ids):
            if row in hot:
                values[j] = sum(np.float32(i + 1 + row / 1e6) for i in range(tables))
        return values
    return path, expected
