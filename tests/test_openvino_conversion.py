"""OpenVINO recipes (issue 3) with the real toolchain: openvino.convert_model, NNCF.

Accuracy is judged on the trained digits CNN and its 500 labelled eval images,
as for the ONNX Runtime recipes; structure is judged on the IR itself (op types,
constant element types, what feeds each Convolution/MatMul).
"""

import collections
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.conversion.openvino import (OPSET_RELEASES, auto_method, min_openvino_version,
                                           release_of)
from edgeinfer.errors import ConversionError, UsageError
from edgeinfer.profiles import cpu_features

from . import models

pytest.importorskip("openvino")
pytest.importorskip("nncf")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "calibration", "digits")
EVAL = os.path.join(ROOT, "calibration", "digits-eval")


def _convert(folder, name, **kwargs):
    kwargs.setdefault("target", "openvino")
    kwargs.setdefault("measure_speed", False)
    return edgeinfer.convert(kwargs.pop("model", DEMO), output=str(folder / name), **kwargs)


@pytest.fixture(scope="module")
def ov_bundles(tmp_path_factory):
    """The demo model as OpenVINO FP32, FP16 and INT8 static bundles (eval: digits-eval)."""
    folder = tmp_path_factory.mktemp("ov-digits")
    bundles = {}
    for precision in ("fp32", "fp16", "int8"):
        bundles[precision] = _convert(folder, "digits-{}.eib".format(precision),
                                      target="intel-cpu" if precision == "fp16" else "openvino",
                                      precision=precision, calibration=CALIB, eval=EVAL,
                                      measure_speed=precision == "int8")
    return bundles


class IR(object):
    """An OpenVINO IR .xml read as a graph: layers by id, and who feeds whom."""

    def __init__(self, text):
        root = ET.fromstring(text)
        self.layers = dict((layer.get("id"), layer) for layer in root.find("layers"))
        self.feeds = collections.defaultdict(dict)
        for edge in root.find("edges"):
            self.feeds[edge.get("to-layer")][int(edge.get("to-port"))] = edge.get("from-layer")

    def of_type(self, kind):
        return [layer for layer in self.layers.values() if layer.get("type") == kind]

    def named(self, name):
        return [layer for layer in self.layers.values() if layer.get("name") == name][0]

    def inputs(self, layer):
        ports = self.feeds[layer.get("id")]
        return [self.layers[ports[p]] for p in sorted(ports)]

    def const_types(self):
        return collections.Counter(layer.find("data").get("element_type")
                                   for layer in self.of_type("Const"))


def _ir(bundle):
    return IR(bundle.read("model.xml").decode("utf-8"))


def _metrics(bundle, output="logits"):
    return bundle.manifest["validation"]["outputs"][output]


def _weight_input(ir, layer):
    """What the weights port of a Convolution/MatMul reads from: Const (FP32) or Multiply."""
    return ir.inputs(layer)[1]


def _upstream_consts(ir, layer, depth=5):
    """Element types of the constants within ``depth`` ops upstream of ``layer``."""
    found, frontier = [], [layer]
    for _ in range(depth):
        frontier = [up for op in frontier for up in ir.inputs(op)]
        found += [op.find("data").get("element_type") for op in frontier
                  if op.get("type") == "Const"]
    return found


# -- the recipes on the demo model -----------------------------------------------------------

def test_int8_static_keeps_demo_accuracy(ov_bundles):
    bundle = ov_bundles["int8"]
    m = bundle.manifest
    metrics = _metrics(bundle)
    assert m["target"]["backend"] == "openvino" and m["target"]["profile"] == "intel-cpu"
    assert m["precision"] == "int8" and m["method"] == "static"
    assert m["validation"]["samples"] == 500 and metrics["top1_fp32"] >= 0.97
    # The bar of the issue: within 1 point of FP32 on the shipped eval set.
    assert metrics["top1_drop_points"] <= 1.0
    assert metrics["cosine_mean"] > 0.995
    ir = _ir(bundle)
    assert len(ir.of_type("FakeQuantize")) >= 4
    # Every convolution reads INT8 weights (i8 constant -> Convert -> Multiply by scale).
    for conv in ir.of_type("Convolution"):
        assert _weight_input(ir, conv).get("type") == "Multiply"
    assert ir.const_types()["i8"] == 4


def test_int8_records_nncf_choices_and_calibration(ov_bundles):
    m = ov_bundles["int8"].manifest
    q = m["quantization"]
    assert "conv-heavy" in q["method_reason"] and q["tool"].startswith("nncf ")
    assert q["preset"].startswith("performance") and q["model_type"] is None
    assert q["per_channel"] is True and q["target_device"] == "ANY"
    calib = m["calibration"]
    # All 300 calibration images, one per item as NNCF counts them, read in one pass.
    assert calib["samples"] == 300 and calib["batch_size"] == 1 and calib["method"] == "nncf"
    assert calib["samples_read"] == 300 and calib["seconds"] > 0
    assert set(m["files"][0]) >= {"name", "sha256", "size"}
    assert sorted(e["name"] for e in m["files"]) == ["model.bin", "model.xml"]
    assert m["model"] == "model.xml"


def test_slow_int8_note_names_openvino_remedies(ov_bundles):
    m = ov_bundles["int8"].manifest
    speed = m["validation"].get("speed")
    if speed is None or speed["ratio"] <= 0.95:
        pytest.skip("INT8 was faster than FP32 here: no note to check")
    note = [n for n in m["notes"] if "no faster than FP32" in n]
    assert note and "with openvino" in note[0] and "--method weights-only" in note[0]
    assert "OpenVINO (NNCF)" not in note[0]  # the ONNX Runtime recipe's hint


def test_fp16_ir_has_half_weights_and_same_accuracy(ov_bundles):
    fp16, fp32 = ov_bundles["fp16"], ov_bundles["fp32"]
    types = _ir(fp16).const_types()
    assert types["f16"] >= 8 and types["f32"] == 0
    assert _ir(fp32).const_types()["f16"] == 0
    size = dict((e["name"], e["size"]) for e in fp16.manifest["files"])["model.bin"]
    size32 = dict((e["name"], e["size"]) for e in fp32.manifest["files"])["model.bin"]
    assert 0.45 < size / float(size32) < 0.55
    assert [s.dtype for s in fp16.inputs] == ["float32"]
    assert [s.dtype for s in fp16.outputs] == ["float32"]
    metrics = _metrics(fp16)
    assert metrics["top1_drop_points"] == 0.0 and metrics["cosine_min"] > 0.9999
    assert fp16.manifest["quantization"]["weights"].startswith("float16")


def test_fp32_matches_onnx_runtime(ov_bundles):
    bundle = ov_bundles["fp32"]
    assert bundle.manifest["method"] == "none" and _metrics(bundle)["max_abs_error"] < 1e-4
    session = edgeinfer.load(bundle.path)
    x = np.random.RandomState(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    reference = ort.InferenceSession(DEMO, providers=["CPUExecutionProvider"])
    expected = reference.run(None, {"input": x})[0]
    np.testing.assert_allclose(session.run({"input": x})["logits"], expected, atol=1e-4)


def test_ort_and_openvino_bundles_compare_side_by_side(ov_bundles, digits_fp32_bundle,
                                                       digits_int8_bundle):
    for precision, ort_path in (("fp32", digits_fp32_bundle), ("int8", digits_int8_bundle)):
        ours, theirs = ov_bundles[precision].manifest, Bundle.open(str(ort_path)).manifest
        assert set(ours) == set(theirs)
        assert set(ours["target"]) == set(theirs["target"])
        assert ours["inputs"] == theirs["inputs"] and ours["outputs"] == theirs["outputs"]
        assert ours["validation"]["data"] == theirs["validation"]["data"]
        assert ours["validation"]["samples"] == theirs["validation"]["samples"]
        assert set(ours["validation"]["outputs"]["logits"]) == set(
            theirs["validation"]["outputs"]["logits"])
        assert ours["preprocess"] == theirs["preprocess"] and ours["classes"] == theirs["classes"]
        assert ours["source"]["sha256"] == theirs["source"]["sha256"]


def test_speed_reference_is_the_fp32_ir_on_openvino(tmp_path):
    from edgeinfer.conversion.openvino import OpenVinoRecipe
    from edgeinfer.conversion.recipe import Job
    from edgeinfer.conversion.source import load_source
    job = Job(load_source(DEMO), None, None, None, None, None, 8, str(tmp_path))
    runner = OpenVinoRecipe().speed_reference(job)
    try:
        x = np.random.RandomState(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
        expected = ort.InferenceSession(DEMO, providers=["CPUExecutionProvider"]).run(
            None, {"input": x})[0]
        np.testing.assert_allclose(runner.run({"input": x})["logits"], expected, atol=1e-4)
    finally:
        runner.close()


def test_versions_recorded(ov_bundles):
    import openvino
    target = ov_bundles["int8"].manifest["target"]
    assert target["backend_version"] == openvino.__version__
    # The demo's IR uses opset1 and opset8 ops only: OpenVINO 2022.1 (IR v11) reads it.
    assert target["min_backend_version"] == "2022.1"


# -- knobs -----------------------------------------------------------------------------------

def test_knobs_reach_nncf(tmp_path):
    bundle = _convert(tmp_path, "knobs.eib", precision="int8", calibration=CALIB, eval=EVAL,
                      ignored_names=["/features/features.3/Conv"], ignored_types=["Gemm"],
                      subset_size=32, preset="mixed", fast_bias_correction=False,
                      per_channel=False)
    q = bundle.manifest["quantization"]
    assert q["preset"] == "mixed" and q["fast_bias_correction"] is False
    assert q["subset_size"] == 32 and bundle.manifest["calibration"]["samples"] == 32
    assert q["ignored_scope"]["openvino_types"] == ["MatMul"]
    assert "/features/features.3/Conv/WithoutBiases" in q["ignored_scope"]["openvino_names"]
    ir = _ir(bundle)
    ignored = ir.named("/features/features.3/Conv/WithoutBiases")
    # The ignored conv reads FP32 weights and an unquantized activation...
    assert [layer.get("type") for layer in ir.inputs(ignored)] == ["ReLU", "Const"]
    assert _weight_input(ir, ignored).find("data").get("element_type") == "f32"
    # ...and so does the Gemm (ignored by its ONNX type), while the other convs are INT8.
    gemm = ir.named("/classifier/Gemm/WithoutBiases")
    assert _weight_input(ir, gemm).get("type") == "Const"
    first = ir.named("/features/features.0/Conv/WithoutBiases")
    assert [layer.get("type") for layer in ir.inputs(first)] == ["FakeQuantize", "Multiply"]
    # --per-tensor: one weight scale per tensor (a scalar), not one per output channel.
    scale = [layer for layer in ir.inputs(_weight_input(ir, first)) if layer.get("type") == "Const"]
    assert scale and scale[0].find("data").get("shape") == ""
    assert _metrics(bundle)["top1_drop_points"] <= 1.0


def test_ignored_scope_names_that_do_not_exist_are_refused(tmp_path):
    with pytest.raises(UsageError, match="no node of that name") as info:
        _convert(tmp_path, "x.eib", precision="int8", calibration=CALIB,
                 ignored_names=["conv_that_is_not_there"])
    assert "/features/features.0/Conv" in str(info.value)
    with pytest.raises(UsageError, match="no op of that type"):
        _convert(tmp_path, "x.eib", precision="int8", calibration=CALIB,
                 ignored_types=["LSTM"])
    assert not os.path.exists(str(tmp_path / "x.eib"))


# -- weight-only and --method auto -----------------------------------------------------------

def test_weights_only_on_mlp_keeps_cosine(tmp_path):
    path = models.save(models.mlp(), tmp_path / "mlp.onnx")
    bundle = _convert(tmp_path, "mlp.eib", model=path, precision="int8")
    m = bundle.manifest
    assert m["method"] == "weights-only" and m["calibration"] is None
    assert "no calibration data" in m["quantization"]["method_reason"]
    assert m["quantization"]["mode"] == "int8_asym"
    assert _metrics(bundle, "y")["cosine_min"] > 0.99
    ir = _ir(bundle)
    assert ir.const_types()["u8"] >= 3
    # Each MatMul's weights are decompressed from a u8 constant (Convert, Subtract zero
    # point, Multiply scale); activations are not quantized at all.
    for matmul in ir.of_type("MatMul"):
        assert "u8" in _upstream_consts(ir, _weight_input(ir, matmul))
    assert ir.of_type("FakeQuantize") == []


def _mlp_data(tmp_path, count=40):
    data = tmp_path / "x.npz"
    np.savez(str(data), x=np.random.RandomState(3).standard_normal((count, 16)).astype(
        np.float32))
    return str(data)


def test_auto_on_matmul_model_with_calibration_follows_the_cpu(tmp_path):
    path = models.save(models.mlp(), tmp_path / "mlp.onnx")
    bundle = _convert(tmp_path, "mlp.eib", model=path, precision="int8",
                      calibration=_mlp_data(tmp_path))
    m = bundle.manifest
    features = cpu_features()
    if features["vnni"] or features["amx"]:
        assert m["method"] == "static" and m["quantization"]["model_type"] == "transformer"
    else:
        assert m["method"] == "weights-only"
        assert "no VNNI/AMX" in m["quantization"]["method_reason"]
    assert _metrics(bundle, "y")["cosine_min"] > 0.99


def test_static_knob_makes_auto_static_on_matmul_model(tmp_path):
    path = models.save(models.mlp(), tmp_path / "mlp.onnx")
    bundle = _convert(tmp_path, "mlp.eib", model=path, precision="int8",
                      calibration=_mlp_data(tmp_path), model_type="transformer")
    q = bundle.manifest["quantization"]
    assert bundle.manifest["method"] == "static" and q["model_type"] == "transformer"
    assert q["preset"].startswith("mixed") and "--model-type" in q["method_reason"]
    assert len(_ir(bundle).of_type("FakeQuantize")) >= 3
    # 32 random calibration rows for a 16-wide MLP: a plumbing check, not an accuracy bar.
    assert _metrics(bundle, "y")["cosine_mean"] > 0.95
    with pytest.raises(UsageError, match="needs calibration data"):
        _convert(tmp_path, "no.eib", model=path, precision="int8", model_type="transformer")


def test_auto_refuses_conv_net_without_calibration(tmp_path):
    with pytest.raises(UsageError, match="needs calibration data"):
        _convert(tmp_path, "x.eib", precision="int8")
    assert not os.listdir(str(tmp_path))


def test_auto_method_rules():
    mlp, demo = models.mlp(), onnx.load(DEMO)
    assert auto_method(demo, True, None, [])[0] == "static"
    assert auto_method(mlp, False, {"vnni": True, "amx": False}, [])[0] == "weights-only"
    assert auto_method(mlp, True, {"vnni": False, "amx": False}, [])[0] == "weights-only"
    assert auto_method(mlp, True, None, [])[0] == "weights-only"
    method, _, kind = auto_method(mlp, True, {"vnni": True, "amx": False}, [])
    assert (method, kind) == ("static", "transformer")


# -- bad input -------------------------------------------------------------------------------

def _unsupported(op, domain):
    """x[batch,4] -> Relu -> <op> (node 'odd_one') -> y; ``op`` has no OpenVINO conversion."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node(op, ["r"], ["y"], name="odd_one", domain=domain)]
    graph = helper.make_graph(
        nodes, "unsupported", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("op,domain,shown", [
    ("Foo", "com.example", "op Foo (domain com.example) at node 'odd_one'"),
    # A standard ONNX op (opset 15) that OpenVINO's ONNX frontend does not convert.
    ("Bernoulli", "", "op Bernoulli at node 'odd_one'"),
])
def test_op_openvino_cannot_convert_is_named(tmp_path, op, domain, shown):
    path = models.save(_unsupported(op, domain), tmp_path / "odd.onnx")
    with pytest.raises(ConversionError) as info:
        _convert(tmp_path, "odd.eib", model=path, precision="fp32")
    assert shown in str(info.value)
    assert ("OpenVINO extension" in str(info.value)) == bool(domain)
    assert not os.path.exists(str(tmp_path / "odd.eib"))


BLOCKED_IMPORT = r"""
import sys
sys.modules[sys.argv[1]] = None  # the package is not installed
from edgeinfer.cli import main
main(args=sys.argv[2:], prog_name="edgeinfer")
"""


@pytest.mark.parametrize("missing,precision,extra", [("openvino", "fp32", "openvino"),
                                                      ("nncf", "int8", "convert")])
def test_missing_package_names_the_extra(tmp_path, missing, precision, extra):
    out = tmp_path / "m.eib"
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, missing, "-q", "convert", DEMO, "--target",
         "openvino", "--precision", precision, "--calibration", CALIB, "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("error: {} is not installed".format(missing))
    assert "pip install edgeinfer[{}]".format(extra) in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("target,options,fragment", [
    ("cpu", {"preset": "mixed"}, "--preset applies to target intel-cpu, not x86-cpu"),
    ("cpu", {"ignored_names": ["conv1"]}, "--ignore-node applies to target intel-cpu"),
    ("cpu", {"method": "weights-only"}, "--method weights-only applies to target intel-cpu"),
    ("openvino", {"calibrate_method": "entropy"}, "--calibrate-method applies to the ONNX "
                                                  "Runtime targets"),
    ("openvino", {"int8_variant": "s8s8"}, "--int8-variant applies to the ONNX Runtime"),
    ("openvino", {"method": "dynamic"}, "--method dynamic is an ONNX Runtime recipe"),
    ("openvino", {"precision": "fp16", "preset": "mixed"}, "--preset applies to INT8, not fp16"),
    ("openvino", {"method": "weights-only", "subset_size": 10},
     "--subset-size applies to static INT8"),
    ("openvino", {"preset": "fastest"}, "Unknown preset 'fastest'"),
    ("openvino", {"subset_size": 0}, "subset-size must be at least 1"),
])
def test_knob_for_the_wrong_target_or_method_is_refused(tmp_path, target, options, fragment):
    options.setdefault("precision", "int8")
    with pytest.raises(UsageError) as info:
        edgeinfer.convert(DEMO, target=target, calibration=CALIB, output=str(tmp_path / "x.eib"),
                          **options)
    assert fragment in str(info.value)
    assert not os.listdir(str(tmp_path))


def test_cli_refuses_preset_for_onnx_runtime(tmp_path):
    from click.testing import CliRunner
    from edgeinfer.cli import main
    result = CliRunner().invoke(main, ["convert", DEMO, "--preset", "mixed", "--calibration",
                                       CALIB, "-o", str(tmp_path / "x.eib")],
                                catch_exceptions=False)
    assert result.exit_code == 2
    assert ("--preset applies to target intel-cpu, not x86-cpu (onnxruntime). Note: Use "
            "--target intel-cpu, or drop --preset.") in result.output


# -- the IR's oldest reader ------------------------------------------------------------------

def _xml(tmp_path, versions, net="11"):
    layers = "".join('<layer id="{}" name="l{}" type="X" version="{}"/>'.format(i, i, v)
                     for i, v in enumerate(versions))
    path = tmp_path / "m.xml"
    path.write_text('<?xml version="1.0"?>\n<net name="m" version="{}"><layers>{}</layers>'
                    '</net>'.format(net, layers))
    return str(path)


def test_min_openvino_version_follows_the_newest_opset(tmp_path):
    assert min_openvino_version(_xml(tmp_path, ["opset1"]), "2026.4.1-1") == "2022.1"
    assert min_openvino_version(_xml(tmp_path, ["opset1", "opset13", "opset8"]),
                                "2026.4.1-1") == "2023.2"
    assert min_openvino_version(_xml(tmp_path, ["opset15"]), "2026.4.1-1") == "2024.5"
    newest = max(OPSET_RELEASES) + 1
    assert min_openvino_version(_xml(tmp_path, ["opset{}".format(newest)]),
                                "2026.4.1-22982-abc") == "2026.4"
    assert min_openvino_version(_xml(tmp_path, ["extension"]), "2026.4.1") == "2026.4"
    assert min_openvino_version(_xml(tmp_path, ["opset1"], net="10"), "2026.4.1") == "2026.4"
    assert release_of("2024.0.0-14509-34caeefd078-releases/2024/0") == "2024.0"
