"""Conversion recipes on the trained demo model and on tiny models built in code.

Accuracy is judged on the trained digits CNN and its 500 labelled eval images.
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.errors import DataError, ModelError, UsageError

from . import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "calibration", "digits")
EVAL = os.path.join(ROOT, "calibration", "digits-eval")


@pytest.fixture(scope="module")
def demo_bundles(digits_fp32_bundle, digits_int8_bundle, digits_fp16_bundle):
    return dict((precision, Bundle.open(str(path))) for precision, path in (
        ("fp32", digits_fp32_bundle), ("int8", digits_int8_bundle), ("fp16", digits_fp16_bundle)))


def _ops(bundle):
    model = onnx.load_from_string(bundle.read(bundle.manifest["model"]))
    return [n.op_type for n in model.graph.node], model


def _metrics(bundle, output="logits"):
    return bundle.manifest["validation"]["outputs"][output]


def test_int8_static_keeps_demo_accuracy(demo_bundles):
    bundle = demo_bundles["int8"]
    m = bundle.manifest
    metrics = _metrics(bundle)
    assert m["precision"] == "int8" and m["method"] == "static"
    assert m["validation"]["samples"] == 500
    assert metrics["top1_fp32"] >= 0.97
    # The bar of the issue: within 1 point of FP32 on the shipped eval set.
    assert metrics["top1_drop_points"] <= 1.0
    assert metrics["cosine_mean"] > 0.995
    ops, model = _ops(bundle)
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 6
    weights = [t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8,
                                                                     onnx.TensorProto.UINT8)]
    assert len(weights) >= 4


def test_int8_records_choices_and_calibration(demo_bundles):
    m = demo_bundles["int8"].manifest
    q = m["quantization"]
    assert q["variant"] in ("s8s8", "u8s8-rr")
    assert q["variant_reason"]
    assert q["per_channel"] is True and q["calibration_method"] == "minmax"
    calib = m["calibration"]
    assert calib["samples"] == 300 and calib["method"] == "minmax"
    assert calib["batches"] == 38  # 300 samples in batches of 8
    assert m["source"]["sha256"] == edgeinfer.bundle.sha256_of(DEMO)
    assert m["preprocess"]["mean"] == [0.3053]
    assert m["classes"] == [str(i) for i in range(10)]


def test_fp16_weights_are_half_and_io_float(demo_bundles):
    bundle = demo_bundles["fp16"]
    _, model = _ops(bundle)
    kinds = set(t.data_type for t in model.graph.initializer)
    assert onnx.TensorProto.FLOAT16 in kinds
    assert [s.dtype for s in bundle.inputs] == ["float32"]
    assert [s.dtype for s in bundle.outputs] == ["float32"]
    metrics = _metrics(bundle)
    assert metrics["top1_drop_points"] <= 1.0 and metrics["cosine_mean"] > 0.9999
    size = sum(e["size"] for e in bundle.manifest["files"])
    assert size < 0.6 * os.path.getsize(DEMO)


def test_fp32_matches_source(demo_bundles):
    bundle = demo_bundles["fp32"]
    assert bundle.manifest["method"] == "none"
    assert _metrics(bundle)["max_abs_error"] < 1e-4
    session = edgeinfer.load(bundle.path)
    x = np.random.RandomState(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    reference = ort.InferenceSession(DEMO, providers=["CPUExecutionProvider"])
    expected = reference.run(None, {"input": x})[0]
    np.testing.assert_allclose(session.run({"input": x})["logits"], expected, atol=1e-4)


def test_validation_holds_out_calibration_when_no_eval(tmp_path):
    bundle = edgeinfer.convert(DEMO, precision="int8", calibration=CALIB,
                               output=str(tmp_path / "d.eib"), measure_speed=False)
    m = bundle.manifest
    assert m["validation"]["data"] == "held-out calibration samples"
    assert m["validation"]["samples"] == 60  # the last 20% of 300
    assert m["calibration"]["samples"] == 240
    assert "top1" in _metrics(bundle)  # labels.csv travels with the held-out part


def test_auto_picks_dynamic_for_matmul_models(tmp_path):
    path = models.save(models.mlp(), tmp_path / "mlp.onnx")
    bundle = edgeinfer.convert(path, precision="int8", output=str(tmp_path / "mlp.eib"))
    assert bundle.manifest["method"] == "dynamic"
    assert "MatMul-heavy" in bundle.manifest["quantization"]["method_reason"]
    ops, _ = _ops(bundle)
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert _metrics(bundle, "y")["cosine_mean"] > 0.99
    assert bundle.manifest["validation"]["data"] == "random inputs (no data given)"


def test_auto_refuses_conv_net_without_calibration(tmp_path):
    with pytest.raises(UsageError) as info:
        edgeinfer.convert(DEMO, precision="int8", output=str(tmp_path / "x.eib"))
    assert "needs calibration data" in str(info.value)
    assert not os.listdir(str(tmp_path))


def test_explicit_dynamic_on_conv_net_leaves_conv_fp32(tmp_path):
    bundle = edgeinfer.convert(DEMO, precision="int8", method="dynamic", eval=EVAL,
                               output=str(tmp_path / "dyn.eib"), measure_speed=False)
    ops, _ = _ops(bundle)
    assert "ConvInteger" not in ops and "Conv" in ops
    assert any("Conv ops in FP32" in note for note in bundle.manifest["notes"])
    assert bundle.manifest["quantization"]["skipped_conv"] is True


def test_multi_input_int64_model_from_npz(tmp_path):
    path = models.save(models.token_model(), tmp_path / "tok.onnx")
    rng = np.random.RandomState(1)
    ids = rng.randint(0, 50, size=(40, 6)).astype(np.int64)
    mask = (rng.uniform(size=(40, 6)) > 0.2).astype(np.int64)
    data = tmp_path / "tokens.npz"
    np.savez(str(data), input_ids=ids, attention_mask=mask)
    bundle = edgeinfer.convert(path, precision="int8", method="dynamic", eval=str(data),
                               output=str(tmp_path / "tok.eib"), measure_speed=False)
    assert bundle.manifest["validation"]["samples"] == 40
    assert [s.name for s in bundle.inputs] == ["input_ids", "attention_mask"]
    session = edgeinfer.load(bundle.path)
    out = session.run({"input_ids": ids[:2], "attention_mask": mask[:2]})["logits"]
    assert out.shape == (2, 4)


def test_static_int8_from_npy_folder(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.RandomState(2)
    for i in range(20):
        np.save(str(folder / "{:03d}.npy".format(i)), rng.standard_normal((1, 1, 8, 8)).astype(
            np.float32))
    bundle = edgeinfer.convert(DEMO, precision="int8", calibration=str(folder),
                               output=str(tmp_path / "n.eib"), measure_speed=False)
    assert bundle.manifest["calibration"]["samples"] == 16  # 4 held out for validation
    assert bundle.manifest["validation"]["samples"] == 4


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_methods(tmp_path, method):
    bundle = edgeinfer.convert(DEMO, precision="int8", calibration=CALIB, eval=EVAL,
                               calibrate_method=method, output=str(tmp_path / "h.eib"),
                               calibration_size=64, measure_speed=False)
    assert bundle.manifest["calibration"]["method"] == method
    assert _metrics(bundle)["top1_drop_points"] <= 1.5


def test_bad_option_values_are_refused_before_work(tmp_path):
    with pytest.raises(UsageError, match="Unknown precision"):
        edgeinfer.convert(DEMO, precision="int4", output=str(tmp_path / "x.eib"))
    with pytest.raises(UsageError, match="Unknown convert option"):
        edgeinfer.convert(DEMO, precision="int8", calibraton=CALIB)
    with pytest.raises(UsageError, match="Unknown target"):
        edgeinfer.convert(DEMO, target="jetson-xavier")
    with pytest.raises(UsageError, match="applies to INT8"):
        edgeinfer.convert(DEMO, precision="fp16", method="static")
    assert not os.listdir(str(tmp_path))


def test_existing_output_is_kept(tmp_path):
    out = tmp_path / "keep.eib"
    out.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists"):
        edgeinfer.convert(DEMO, precision="fp32", output=str(out))
    assert out.read_bytes() == b"precious"


def test_failure_midway_leaves_nothing(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for name in sorted(os.listdir(CALIB))[:12]:
        if name.endswith(".png"):
            (folder / name).write_bytes(open(os.path.join(CALIB, name), "rb").read())
    (folder / "zzz.png").write_bytes(b"this is not a png")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match="zzz.png"):
        edgeinfer.convert(DEMO, precision="int8", calibration=str(folder),
                          output=str(out / "x.eib"))
    assert os.listdir(str(out)) == []


def test_unsupported_opset(tmp_path):
    model = models.mlp()
    model.opset_import[0].version = 99
    path = models.save(model, tmp_path / "future.onnx")
    with pytest.raises(ModelError, match="opset 99"):
        edgeinfer.convert(path, precision="fp32", output=str(tmp_path / "x.eib"))


def test_old_opset_is_upgraded_for_int8(tmp_path):
    path = models.save(models.mlp(opset=11), tmp_path / "old.onnx")
    bundle = edgeinfer.convert(path, precision="int8", method="dynamic",
                               output=str(tmp_path / "old.eib"), measure_speed=False)
    assert bundle.manifest["source"]["opset"] == 11
    assert _metrics(bundle, "y")["cosine_mean"] > 0.99


@pytest.mark.parametrize("precision,method", [("int8", "static"), ("int8", "dynamic"),
                                              ("fp16", "auto")])
def test_fixed_batch_model_validates_in_whole_batches(tmp_path, precision, method):
    # A model exported with batch 4: calibration and validation must never send it a
    # short last batch (21 samples = 5 batches of 4 and 1 left over).
    model = models.mlp()
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    path = models.save(model, tmp_path / "fixed.onnx")
    data = tmp_path / "x.npz"
    np.savez(str(data), x=np.random.RandomState(3).standard_normal((21, 16)).astype(np.float32))
    bundle = edgeinfer.convert(path, precision=precision, method=method, calibration=str(data),
                               eval=str(data), output=str(tmp_path / "f.eib"))
    assert bundle.manifest["validation"]["outputs"]["y"]["samples"] == 20
    assert bundle.manifest["validation"]["speed"]["batch"] == 4
    assert bundle.manifest["validation"]["outputs"]["y"]["cosine_mean"] > 0.99
