"""Graph preparation before quantization (issue 4, item 8), on exports built in code.

Each export problem is shown twice: what ONNX Runtime's quantizer does with the model
as it is (the weights stay FP32, or the model does not load), then what
``edgeinfer.convert`` makes of it (every weight INT8, outputs close to FP32).
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.cli import main
from edgeinfer.conversion import graph
from edgeinfer.conversion import ort as ort_recipe
from edgeinfer.conversion.source import default_opset
from edgeinfer.errors import ConversionError

from . import models

INT8_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


class Feeds(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a list of feed dicts."""

    def __init__(self, feeds):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def image_feeds(count=8, seed=0):
    rng = np.random.RandomState(seed)
    return [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def int8_weights(model):
    """Names of the weights a QDQ model stores in INT8, sorted.

    A weight is an 8-bit initializer of rank >= 2 read by a DequantizeLinear: biases
    are INT32, and activations are not initializers.
    """
    stored = dict((t.name, t) for t in model.graph.initializer)
    names = []
    for node in model.graph.node:
        tensor = stored.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if tensor is not None and tensor.data_type in INT8_TYPES and len(tensor.dims) >= 2:
            names.append(node.input[0])
    return sorted(names)


def bundle_model(bundle):
    return onnx.load_from_string(bundle.read(bundle.manifest["model"]))


def save_npz(path, **arrays):
    np.savez(str(path), **arrays)
    return str(path)


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """Calibration (40) and evaluation (24) samples for the 3x8x8 conv nets, as .npz."""
    folder = tmp_path_factory.mktemp("graph-data")
    rng = np.random.RandomState(5)
    return (save_npz(folder / "calib.npz", x=rng.standard_normal((40, 3, 8, 8)).astype(
        np.float32)), save_npz(folder / "eval.npz", x=rng.standard_normal((24, 3, 8, 8)).astype(
            np.float32)))


def convert_static(path, data, output):
    calib, evaluation = data
    return edgeinfer.convert(str(path), precision="int8", method="static", calibration=calib,
                             eval=evaluation, output=str(output), measure_speed=False)


# -- Constant weights ------------------------------------------------------------------------

def test_plain_ort_quantizer_leaves_constant_weights_fp32(tmp_path):
    # The problem: quantize_static on the export as it is stores no weight in INT8; it
    # quantizes the Constants' outputs per tensor at run time, like activations.
    source = models.save(models.constant_weights_convnet(), tmp_path / "const.onnx")
    quantize_static(source, str(tmp_path / "q.onnx"), Feeds(image_feeds()),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    assert int8_weights(quantized) == []
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("Constant") == 7  # all still there, FP32
    quantized_at_run_time = [n.input[0] for n in quantized.graph.node
                             if n.op_type == "QuantizeLinear" and n.input[0] in ("w1", "fc")]
    assert sorted(quantized_at_run_time) == ["fc", "w1"]


def test_convert_quantizes_constant_weights(tmp_path, image_data):
    source = models.save(models.constant_weights_convnet(), tmp_path / "const.onnx")
    bundle = convert_static(source, image_data, tmp_path / "const.eib")
    quantized = bundle_model(bundle)
    # w1, w2 (behind its Identity) and fc: every weight.
    assert int8_weights(quantized) == ["fc_quantized", "w1_quantized", "w2_quantized"]
    assert "Constant" not in [n.op_type for n in quantized.graph.node]
    metrics = bundle.manifest["validation"]["outputs"]["y"]
    assert metrics["cosine_mean"] > 0.99
    # And against FP32 ONNX Runtime directly, on fresh inputs.
    x = np.random.RandomState(9).standard_normal((4, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    got = edgeinfer.load(bundle.path).run({"x": x})["y"]
    cosine = float(np.sum(got * expected) / (np.linalg.norm(got) * np.linalg.norm(expected)))
    assert cosine > 0.99 and np.abs(got - expected).max() < 0.1 * np.abs(expected).max()


def test_manifest_records_graph_preparation(tmp_path, image_data):
    source = models.save(models.constant_weights_convnet(opset=11), tmp_path / "c11.onnx")
    bundle = convert_static(source, image_data, tmp_path / "c11.eib")
    record = Bundle.open(bundle.path).manifest["quantization"]["graph_preparation"]
    assert record["opset"] == [11, 13]
    assert record["constants_to_initializers"] == 7
    assert record["identity_weights_removed"] == 1
    assert record["nodes_named"] == 7  # all but "conv", once the Constants are gone
    assert record["shape_inference"] == "symbolic"
    assert len(record["changes"]) == 4


# -- what normalize() changes and says -------------------------------------------------------

def test_changes_name_what_was_done():
    source = models.constant_weights_convnet(opset=11)
    before = source.SerializeToString()
    result = graph.normalize(source)
    assert source.SerializeToString() == before  # the caller's model is not touched
    assert result.changes == [
        "opset 11 upgraded to 13 (per-channel INT8 needs 13)",
        "7 Constant nodes made initializers (ONNX Runtime quantizes only initializers as "
        "weights)",
        "1 Identity node on weights removed",
        "7 unnamed or repeated node names made unique",
    ]
    model = result.model
    assert [n.op_type for n in model.graph.node] == [
        "Conv", "Relu", "Conv", "Relu", "GlobalAveragePool", "Reshape", "MatMul", "Add"]
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names) and names[0] == "conv"
    assert model.graph.node[2].input[1] == "w2"  # reads the weight, not the Identity
    onnx.checker.check_model(model, full_check=True)


def test_nothing_to_change_says_so():
    model, _, _ = models.tiny()
    for node in model.graph.node:
        node.name = node.output[0]
    result = graph.normalize(model)
    assert result.changes == []
    assert result.record["opset"] is None and result.record["shape_inference"] == "symbolic"


def test_constant_attribute_forms_become_equal_initializers():
    """Every Constant form; a Constant that is a graph output stays a node.

        x[2] + c_floats([1, 2]) -> * c_float(3) -> Reshape(c_ints [2, 1])
            -> Gather(c_int 0, axis 1) -> y[2];   k = Constant(value=[[5]]) is an output
    """
    helper = onnx.helper
    nodes = [
        helper.make_node("Constant", [], ["c_floats"], value_floats=[1.0, 2.0]),
        helper.make_node("Constant", [], ["c_float"], value_float=3.0),
        helper.make_node("Constant", [], ["c_ints"], value_ints=[2, 1]),
        helper.make_node("Constant", [], ["c_int"], value_int=0),
        helper.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(
            np.array([[5.0]], np.float32))),
        helper.make_node("Add", ["x", "c_floats"], ["a"]),
        helper.make_node("Mul", ["a", "c_float"], ["b"]),
        helper.make_node("Reshape", ["b", "c_ints"], ["r"]),
        helper.make_node("Gather", ["r", "c_int"], ["y"], axis=1),
    ]
    model = helper.make_model(helper.make_graph(
        nodes, "forms", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [1, 1])]),
        opset_imports=[helper.make_opsetid("", 13)])
    result = graph.normalize(model)
    assert result.record["constants_to_initializers"] == 4
    stored = dict((t.name, onnx.numpy_helper.to_array(t)) for t in result.model.graph.initializer)
    assert stored["c_floats"].tolist() == [1.0, 2.0] and stored["c_floats"].dtype == np.float32
    assert stored["c_float"].shape == () and stored["c_float"] == 3.0
    assert stored["c_ints"].tolist() == [2, 1] and stored["c_ints"].dtype == np.int64
    assert stored["c_int"].shape == () and stored["c_int"] == 0
    assert [n.op_type for n in result.model.graph.node].count("Constant") == 1  # k
    x = np.array([1.0, -4.0], np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(result.model.SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    for old, new in zip(before.run(None, {"x": x}), after.run(None, {"x": x})):
        np.testing.assert_array_equal(old, new)  # same function, exactly
    np.testing.assert_array_equal(after.run(["y"], {"x": x})[0], [6.0, -6.0])


def test_constants_in_subgraphs_are_left_alone():
    helper = onnx.helper
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["one"], value_float=1.0),
         helper.make_node("Add", ["x", "one"], ["then_out"])], "then", [],
        [helper.make_tensor_value_info("then_out", onnx.TensorProto.FLOAT, [2])])
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["else_out"])], "else", [],
        [helper.make_tensor_value_info("else_out", onnx.TensorProto.FLOAT, [2])])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other)], "if",
        [helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 13)])
    result = graph.normalize(model)
    assert result.record["constants_to_initializers"] == 0
    body = [a.g for a in result.model.graph.node[0].attribute if a.name == "then_branch"][0]
    assert [n.op_type for n in body.node] == ["Constant", "Add"]


# -- opset below 13 --------------------------------------------------------------------------

def test_plain_ort_quantizer_writes_opset11_per_channel_that_does_not_load(tmp_path):
    source = models.save(models.old_opset_convnet(opset=11), tmp_path / "o11.onnx")
    quantize_static(source, str(tmp_path / "q.onnx"), Feeds(image_feeds()),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    assert onnx.load(str(tmp_path / "q.onnx")).opset_import[0].version == 11
    with pytest.raises(Exception, match="INVALID_GRAPH"):
        ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])


def test_opset11_model_gets_per_channel_int8(tmp_path, image_data):
    source = models.save(models.old_opset_convnet(opset=11), tmp_path / "o11.onnx")
    bundle = convert_static(source, image_data, tmp_path / "o11.eib")
    assert bundle.manifest["source"]["opset"] == 11
    quantized = bundle_model(bundle)
    assert default_opset(quantized) == 13
    assert int8_weights(quantized) == ["fc_quantized", "w_quantized"]
    stored = dict((t.name, t) for t in quantized.graph.initializer)
    scales = {}
    for node in quantized.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in ("w_quantized", "fc_quantized"):
            axis = [a.i for a in node.attribute if a.name == "axis"]
            scales[node.input[0]] = (list(stored[node.input[1]].dims), axis)
    # One scale per output channel: conv's 8 (axis 0), the MatMul's 10 columns (axis 1).
    assert scales == {"w_quantized": ([8], [0]), "fc_quantized": ([10], [1])}
    assert bundle.manifest["validation"]["outputs"]["y"]["cosine_mean"] > 0.99


def test_unconvertible_opset_is_one_clear_error(tmp_path):
    source = models.save(models.spatial_batchnorm_model(), tmp_path / "bn7.onnx")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError) as info:
        edgeinfer.convert(source, precision="int8", method="dynamic",
                          output=str(out / "bn.eib"), measure_speed=False)
    text = str(info.value)
    assert text == (
        "Cannot upgrade the model from opset 7 to 13 for INT8: ONNX's version converter "
        "failed: Attribute spatial must have value 1 Note: Re-export the model with opset 13 "
        "or newer (torch.onnx.export(..., opset_version=13), tf2onnx --opset 13), or build "
        "for OpenVINO (--target intel-cpu), which quantizes older opsets as they are.")
    assert os.listdir(str(out)) == []
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click 8.2+ always keeps stderr apart
        runner = CliRunner()
    result = runner.invoke(main, ["-q", "convert", source, "-p", "int8", "-m", "dynamic",
                                  "-o", str(out / "bn.eib")], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: " + text]
    assert os.listdir(str(out)) == []


# -- dynamic dims that stop symbolic shape inference -----------------------------------------

@pytest.fixture(scope="module")
def sequence_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sequence-data")
    rng = np.random.RandomState(6)

    def sample(count, length):
        features = rng.standard_normal((count, length, 16)).astype(np.float32)
        mask = (rng.uniform(size=(count, length)) > 0.2).astype(np.float32)
        return {"features": features, "mask": mask}

    return (save_npz(folder / "calib.npz", **sample(40, 6)),
            save_npz(folder / "eval.npz", **sample(24, 6)))


def test_symbolic_shape_inference_fails_on_mismatched_dims(tmp_path, monkeypatch):
    # The problem, with ONNX Runtime's own entry point: it gives up, and leaves a file
    # in the current directory as it does.
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    monkeypatch.chdir(str(tmp_path))
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):
        SymbolicShapeInference.infer_shapes(models.mismatched_dims_model())
    assert "sym_shape_infer_temp.onnx" in os.listdir(str(tmp_path))


def test_mismatched_dims_fall_back_and_quantize_fully(tmp_path, monkeypatch, sequence_data):
    source = models.save(models.mismatched_dims_model(), tmp_path / "seq.onnx")
    workdir = tmp_path / "work"
    workdir.mkdir()
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(str(here))
    report = {}
    ort_recipe.prepare(source, str(workdir / "prepared.onnx"), str(workdir), report=report)
    assert report["shape_inference"] == "onnx"
    assert report["shape_inference_fallback"] == (
        "symbolic shape inference stopped at Mul node 'mask_mul' (dynamic dims it cannot "
        "relate, or an op it does not know)")
    assert report["changes"] == [
        "shapes inferred by ONNX shape inference: symbolic shape inference stopped at Mul node "
        "'mask_mul' (dynamic dims it cannot relate, or an op it does not know)"]
    calib, evaluation = sequence_data
    bundle = edgeinfer.convert(source, precision="int8", method="static", calibration=calib,
                               eval=evaluation, output=str(tmp_path / "seq.eib"),
                               measure_speed=False)
    assert int8_weights(bundle_model(bundle)) == ["W1_quantized", "W2_quantized",
                                                  "W3_quantized"]
    assert bundle.manifest["validation"]["outputs"]["logits"]["cosine_mean"] > 0.99
    session = edgeinfer.load(bundle.path)
    rng = np.random.RandomState(1)
    out = session.run({"features": rng.standard_normal((2, 9, 16)).astype(np.float32),
                       "mask": np.ones((2, 9), np.float32)})["logits"]
    assert out.shape == (2, 4)  # a sequence length it was never calibrated on
    assert os.listdir(str(here)) == []  # nothing left in the user's directory


def test_shape_inference_falls_back_to_none(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure\nsecond line")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    result = graph.normalize(models.mismatched_dims_model())
    assert result.record["shape_inference"] == "none"
    # Symbolic inference calls ONNX's per node, so the simulated failure stops it too.
    assert result.record["shape_inference_fallback"] == (
        "symbolic shape inference failed: simulated failure; ONNX shape inference failed: "
        "simulated failure")
    assert result.changes[-1] == "no shape inference: " + result.record[
        "shape_inference_fallback"]
    assert len(result.model.graph.value_info) == 0


# -- OpenVINO: its frontend needs none of this (measured) ------------------------------------

def test_openvino_quantizes_constant_weights_as_they_are(tmp_path, image_data):
    # Why the OpenVINO recipe converts the source untouched: its ONNX frontend folds
    # Constant and Identity weights into OpenVINO Constants, so NNCF quantizes the
    # export and its normalized twin alike.
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    exported = models.constant_weights_convnet()
    made = {}
    for name, model in (("exported", exported), ("normalized", graph.normalize(exported).model)):
        source = models.save(model, tmp_path / (name + ".onnx"))
        bundle = edgeinfer.convert(source, target="intel-cpu", precision="int8",
                                   method="static", calibration=image_data[0],
                                   eval=image_data[1], output=str(tmp_path / (name + ".eib")),
                                   measure_speed=False)
        made[name] = (bundle.manifest["quantization"]["fake_quantize"], ir_int8_constants(bundle),
                      bundle.manifest["validation"]["outputs"]["y"]["cosine_mean"])
    # Same FakeQuantize count (4), same INT8 weights (w1, w2, fc), same outputs.
    assert made["exported"] == made["normalized"]
    assert made["exported"][:2] == (4, 3) and made["exported"][2] > 0.98


def ir_int8_constants(bundle):
    """How many 8-bit Constants (INT8 weights) the bundle's OpenVINO IR holds."""
    import openvino as ov
    weights = np.frombuffer(bundle.read("model.bin"), np.uint8)
    model = ov.Core().read_model(bundle.read("model.xml").decode("utf-8"), ov.Tensor(weights))
    return sum(1 for op in model.get_ordered_ops() if op.get_type_name() == "Constant" and
               op.get_output_element_type(0).get_type_name() in ("i8", "u8"))
