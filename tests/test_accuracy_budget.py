"""Budgeted conversion end to end (issue 4): convert with a budget, inspect, compare.

The constructed case (requirement 9): ``tests/models.py:outlier_convnet`` without
its conv2 outlier, fed inputs whose channel 0 is 1000x larger than the others,
with conv1's weights for that channel divided by 1000 so every channel counts
in FP32.  INT8 gives the input tensor one per-tensor scale, set by channel 0,
so channels 1 and 2 round to zero: plain PTQ loses the budget.  Only conv1 reads
that tensor, so the search must keep conv1 (with the Relu fused to it) in FP32
and nothing else.  Cross-layer equalisation cannot fix it: no layer comes
before the input.
"""

import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.cli import main
from edgeinfer.errors import ConversionError

from . import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "calibration", "digits")
EVAL = os.path.join(ROOT, "calibration", "digits-eval")

SCALE = 1000.0
BUDGET = 0.99


def input_outlier_model():
    model = models.outlier_convnet(outlier=1.0)
    for tensor in model.graph.initializer:
        if tensor.name == "w1":
            w1 = numpy_helper.to_array(tensor).copy()
            w1[:, 0] /= SCALE
            tensor.CopyFrom(numpy_helper.from_array(w1, "w1"))
    return model


def _samples(count, seed):
    x = np.random.RandomState(seed).standard_normal((count, 3, 8, 8)).astype(np.float32)
    x[:, 0] *= SCALE
    return x


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget")
    path = str(folder / "outlier.onnx")
    onnx.save(input_outlier_model(), path)
    np.savez(str(folder / "calib.npz"), x=_samples(64, 1))
    np.savez(str(folder / "eval.npz"), x=_samples(96, 2))
    labelled = folder / "labelled.npz"
    np.savez(str(labelled), x=_samples(32, 3), labels=np.arange(32) % 10)
    return folder, path


def _cli(*args):
    result = CliRunner().invoke(main, ["-q"] + [str(a) for a in args], catch_exceptions=False)
    return result


def _convert_cli(folder, model, out, *extra):
    return _cli("convert", model, "--calibration", folder / "calib.npz", "--eval",
                folder / "eval.npz", "-o", out, "--no-speed-check", *extra)


def _weights_from_int8(bundle):
    """Names of the Conv/Gemm nodes whose weights come out of a DequantizeLinear."""
    graph = onnx.load_from_string(bundle.read(bundle.manifest["model"])).graph
    producer = dict((out, n.op_type) for n in graph.node for out in n.output)
    return sorted(n.name for n in graph.node if n.op_type in ("Conv", "Gemm")
                  and producer.get(n.input[1]) == "DequantizeLinear")


def test_plain_ptq_misses_and_the_search_keeps_only_conv1(case):
    folder, model = case
    plain = folder / "plain.eib"
    assert _convert_cli(folder, model, plain).exit_code == 0
    plain_cos = Bundle.open(str(plain)).manifest["validation"]["outputs"]["y"]["cosine_mean"]
    assert plain_cos < BUDGET  # what the budget is for

    out = folder / "budgeted.eib"
    result = _convert_cli(folder, model, out, "--min-cosine", BUDGET)
    assert result.exit_code == 0, result.output
    bundle = Bundle.open(str(out))
    control = bundle.manifest["accuracy_control"]
    assert control["budget"] == {"kind": "min_cosine", "limit": BUDGET, "output": None,
                                 "text": "cosine >= 0.99"}
    assert [op["name"] for op in control["kept"]] == ["conv1", "relu1"]
    assert control["fp32_layers"] == [{"name": "conv1", "op_type": "Conv"},
                                      {"name": "relu1", "op_type": "Relu"}]
    assert control["met"] is True and control["achieved"] >= BUDGET
    assert control["steps"][0]["groups"] == 0 and not control["steps"][0]["ok"]
    # The search compares uncorrected variants; bias correction comes after it.
    assert control["steps"][0]["achieved"] < BUDGET
    assert "after_budget_search" in bundle.manifest["quantization"]["bias_correction"]
    assert control["validated"] == {"achieved": control["achieved"], "met": True}
    shipped = bundle.manifest["validation"]["outputs"]["y"]["cosine_mean"]
    assert shipped == pytest.approx(control["achieved"], abs=1e-9)
    assert _weights_from_int8(bundle) == ["conv2", "conv3", "fc"]
    assert control["sensitivity"]["ranking"][0]["group"] == "conv1"

    shown = _cli("inspect", out)
    assert shown.exit_code == 0
    assert "accuracy budget: cosine >= 0.99; achieved cosine 0.99" in shown.output
    assert "kept in FP32: 1 of 6 groups: conv1 (Conv), relu1 (Relu)" in shown.output
    assert "shipped model checked on its backend: cosine" in shown.output


def test_openvino_search_keeps_conv1_in_fp32(case):
    folder, model = case
    out = folder / "budgeted-ov.eib"
    result = _convert_cli(folder, model, out, "--target", "intel-cpu", "--min-cosine", BUDGET)
    assert result.exit_code == 0, result.output
    manifest = Bundle.open(str(out)).manifest
    control = manifest["accuracy_control"]
    assert control["backend"] == "openvino"
    assert not control["steps"][0]["ok"] and control["steps"][0]["achieved"] < BUDGET
    assert control["achieved"] >= BUDGET and control["validated"]["met"]
    assert control["kept"][:2] == [{"name": "conv1", "op_type": "Conv", "group": "conv1"},
                                   {"name": "relu1", "op_type": "Relu", "group": "conv1"}]
    assert manifest["validation"]["outputs"]["y"]["cosine_mean"] >= BUDGET


def test_budget_met_by_plain_int8_keeps_nothing(tmp_path):
    out = tmp_path / "demo.eib"
    bundle = edgeinfer.convert(DEMO, calibration=CALIB, eval=EVAL, output=str(out),
                               max_accuracy_drop=1.0, measure_speed=False)
    control = bundle.manifest["accuracy_control"]
    assert control["kept"] == [] and control["met"] is True
    assert control["achieved"] == bundle.manifest["validation"]["outputs"]["logits"][
        "top1_drop_points"]
    assert control["achieved"] <= 1.0
    assert [s["groups"] for s in control["steps"]] == [0]


def test_dynamic_int8_is_checked_against_the_budget(tmp_path):
    path = models.save(models.mlp(), tmp_path / "mlp.onnx")
    np.savez(str(tmp_path / "eval.npz"),
             x=np.random.RandomState(0).standard_normal((64, 16)).astype(np.float32))
    bundle = edgeinfer.convert(path, eval=str(tmp_path / "eval.npz"),
                               output=str(tmp_path / "a.eib"), min_cosine=0.9,
                               measure_speed=False)
    assert bundle.manifest["method"] == "dynamic"
    control = bundle.manifest["accuracy_control"]
    assert control["met"] and control["candidates"] is None and control["achieved"] >= 0.9
    with pytest.raises(ConversionError) as info:
        edgeinfer.convert(path, eval=str(tmp_path / "eval.npz"),
                          output=str(tmp_path / "b.eib"), max_abs_error=1e-9,
                          measure_speed=False)
    assert "Dynamic INT8 misses the accuracy budget (max abs error <= 1e-09)" in str(info.value)
    assert "--method static" in str(info.value)
    assert not os.path.exists(str(tmp_path / "b.eib"))


# -- bad input -------------------------------------------------------------------------------

def test_accuracy_drop_without_labels_is_refused_before_work(case):
    folder, model = case
    out = folder / "nolabels.eib"
    result = _convert_cli(folder, model, out, "--max-accuracy-drop", "1")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: An accuracy-drop budget needs labelled evaluation data")
    assert "--min-cosine" not in lines[0] or "min_cosine" in lines[0]
    assert not out.exists()


def test_budget_without_evaluation_data(case):
    folder, model = case
    result = _cli("convert", model, "-o", folder / "x.eib", "--precision", "int8",
                  "--min-cosine", "0.9")
    # A conv net without calibration is refused either way; with a MatMul model the
    # budget itself is what is missing.
    assert result.exit_code == 2
    mlp = models.save(models.mlp(), folder / "mlp.onnx")
    result = _cli("convert", mlp, "-o", folder / "y.eib", "--min-cosine", "0.9")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: An accuracy budget needs evaluation data. Note: Pass --eval DIR (with labels "
        "for --max-accuracy-drop), or --calibration DIR, of which 20% is then held out for "
        "evaluation.")
    assert not (folder / "y.eib").exists()


def test_unreachable_budget_names_the_cause(tmp_path):
    def accuracy(reference, candidate, labels):
        return float((candidate["logits"].argmax(axis=1) == labels).mean())

    out = tmp_path / "never.eib"
    with pytest.raises(ConversionError) as info:
        edgeinfer.convert(DEMO, calibration=CALIB, eval=EVAL, eval_size=200, output=str(out),
                          metric=accuracy, min_metric=1.0, measure_speed=False)
    assert "the loss is not from quantization" in str(info.value)
    assert "loosen the budget" in str(info.value)
    assert not out.exists()


def test_eval_data_that_does_not_fit_the_model(case, tmp_path):
    folder, model = case
    np.savez(str(tmp_path / "wrong.npz"), x=np.zeros((8, 3, 9, 9), np.float32))
    result = _cli("convert", model, "--calibration", folder / "calib.npz", "--eval",
                  tmp_path / "wrong.npz", "--min-cosine", "0.9", "-o", tmp_path / "w.eib")
    assert result.exit_code in (1, 2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "x" in lines[0] and "9" in lines[0]
    assert not (tmp_path / "w.eib").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--precision", "fp16", "--min-cosine", "0.9"], "An accuracy budget applies to INT8"),
    (["--min-cosine", "0.9", "--max-abs-error", "1"], "exactly one limit"),
    (["--min-cosine", "2"], "min_cosine must be between -1 and 1"),
    (["--budget-output", "y"], "no budget was given"),
    (["--min-cosine", "0.9", "--budget-output", "nope"], "does not have"),
])
def test_bad_budgets_are_usage_errors(case, args, fragment):
    folder, model = case
    result = _convert_cli(folder, model, folder / "bad.eib", *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and len(result.output.strip().splitlines()) == 1
    assert not (folder / "bad.eib").exists()


# -- compare ---------------------------------------------------------------------------------

def test_compare_per_layer_ranks_conv1_first(case):
    folder, model = case
    bundle = folder / "cmp.eib"
    assert _convert_cli(folder, model, bundle).exit_code == 0
    plot = folder / "rank.png"
    result = _cli("compare", model, bundle, "--eval", folder / "eval.npz", "--per-layer",
                  "--calibration", folder / "calib.npz", "--plot", plot, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["validation"]["samples"] == 96
    recorded = Bundle.open(str(bundle)).manifest["validation"]["outputs"]["y"]
    assert data["validation"]["outputs"]["y"]["cosine_mean"] == pytest.approx(
        recorded["cosine_mean"], abs=1e-6)
    layers = data["per_layer"]["layers"]
    assert layers[0]["name"] == "conv1" and len(layers) == 6
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = _cli("compare", model, bundle, "--eval", folder / "eval.npz", "--per-layer",
                "--calibration", folder / "calib.npz", "--top", "2")
    assert text.exit_code == 0
    assert "Per-layer sensitivity (quantize-alone" in text.output
    assert "(4 more layers add less error.)" in text.output


def test_compare_usage_errors(case):
    folder, model = case
    bundle = folder / "cmp2.eib"
    assert _convert_cli(folder, model, bundle).exit_code == 0
    result = _cli("compare", model, bundle, "--plot", folder / "p.png")
    assert result.exit_code == 2 and "--plot draws the per-layer ranking" in result.output
    result = _cli("compare", model, bundle, "--per-layer")
    assert result.exit_code == 2 and "--per-layer needs evaluation data" in result.output
    other = models.save(models.mlp(), folder / "other.onnx")
    result = _cli("compare", other, bundle)
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
