"""Accuracy control (issue 4): metrics, budgets, per-layer sensitivity, budget search.

Everything runs real ONNX Runtime quantization and inference:

* the trained demo model (``models/digits_cnn.onnx``), calibrated once on 64 of
  its calibration images and evaluated on 200 labelled eval images; its S8S8
  variant loses 3 top-1 points there on x86 CPUs without VNNI (U8S8 kernel
  saturation), the default U8S8 reduce-range variant none;
* ``tests/models.py:outlier_convnet``, whose conv2 output has one channel 1000x
  larger, so INT8 crushes the tensor between conv2 and conv3 on any CPU.
"""

import json
import os
import re

import numpy as np
import onnx
import pytest

from edgeinfer.conversion import budget as budget_mod
from edgeinfer.conversion import metrics, sensitivity, validate
from edgeinfer.conversion import ort as ort_recipe
from edgeinfer.conversion.metrics import Budget, ReferenceOutputs, Results
from edgeinfer.conversion.source import load_source
from edgeinfer.datasets import open_dataset
from edgeinfer.errors import ConversionError, DataError, UsageError
from edgeinfer.lazy import available
from edgeinfer.preprocess import Preprocess

from . import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "calibration", "digits")
EVAL = os.path.join(ROOT, "calibration", "digits-eval")

CALIB_SAMPLES = 64
EVAL_SAMPLES = 200
OFFENDERS = {"conv2", "relu2", "conv3", "relu3"}


class CountingRunner(object):
    """A real ONNX Runtime session that counts its calls (instrumentation, not a mock)."""

    def __init__(self, path):
        self._run = sensitivity.ort_runner(path)
        self.calls = 0

    def __call__(self, feeds):
        self.calls += 1
        return self._run(feeds)


class Setup(object):
    """A model prepared and calibrated once, with its eval set's FP32 reference."""

    def __init__(self, source, folder, calib_batches, eval_batches, labelled):
        self.source = source
        self.folder = str(folder)
        self.prepared = ort_recipe.prepare(source, os.path.join(self.folder, "prepared.onnx"),
                                           self.folder)
        self.cache, _, self.kind = ort_recipe.calibrate(self.prepared, calib_batches,
                                                        "minmax", self.folder)
        self.eval_batches = eval_batches
        self.labelled = labelled
        self.reference_run = CountingRunner(source)
        self.reference = ReferenceOutputs(self.reference_run, eval_batches)

    def builder(self, variant, name):
        workdir = os.path.join(self.folder, name)
        os.makedirs(workdir, exist_ok=True)
        return sensitivity.QdqBuilder(self.prepared, self.cache, self.kind,
                                      ort_recipe.INT8_VARIANTS[variant], True, workdir)

    def independent_check(self, variant, excluded, name):
        """Quantize again with the recipe's own call and compare with a fresh FP32 session."""
        path = os.path.join(self.folder, name + ".onnx")
        ort_recipe.quantize_static(self.prepared, path, self.cache, self.kind,
                                   ort_recipe.INT8_VARIANTS[variant], True, exclude=excluded)
        reference = sensitivity.ort_runner(self.source)
        names = [o.name for o in onnx.load(self.source).graph.output]
        return validate.compare(reference, sensitivity.ort_runner(path), self.eval_batches(),
                                names), path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    source = load_source(DEMO)
    preprocess = Preprocess.from_dict(source.preprocess)
    calib = open_dataset(CALIB, source.inputs, preprocess)
    data = open_dataset(EVAL, source.inputs, preprocess)
    return Setup(DEMO, tmp_path_factory.mktemp("demo"),
                 (feeds for feeds, _ in calib.batches(16, indices=range(CALIB_SAMPLES))),
                 lambda: data.batches(50, indices=range(EVAL_SAMPLES)), True)


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outlier")
    path = models.save(models.outlier_convnet(), folder / "outlier.onnx")
    rng = np.random.RandomState(0)
    calib = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    data = rng.standard_normal((128, 3, 8, 8)).astype(np.float32)
    return Setup(path, folder, ({"x": calib[i:i + 16]} for i in range(0, 64, 16)),
                 lambda: (({"x": data[i:i + 32]}, None) for i in range(0, 128, 32)), False)


# -- metrics ---------------------------------------------------------------------------------

def test_one_implementation_of_output_stats():
    assert validate.OutputStats is metrics.OutputStats
    assert validate.is_classifier_output is metrics.is_classifier_output


def test_output_stats_values():
    ref = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [0.0, 3.0, 2.0, 1.0]])
    out = np.array([[2.0, 3.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.5], [0.0, 3.0, 1.0, 2.0]])
    stats = metrics.OutputStats("y", top_k=2)
    stats.add(ref, out, labels=np.array([0, 2, 2]))
    m = stats.result()
    cos1 = 15.5 / np.sqrt(14.0 * 17.25)
    assert m["cosine_mean"] == pytest.approx((13 / 14.0 + cos1 + 13 / 14.0) / 3, abs=1e-12)
    assert m["cosine_min"] == pytest.approx(13 / 14.0, abs=1e-12)
    assert m["max_abs_error"] == 1.0 and m["mean_abs_error"] == pytest.approx(4.5 / 12)
    assert m["sqnr_db"] == pytest.approx(10 * np.log10(42.0 / 4.25), abs=1e-9)
    assert m["top1_agreement"] == pytest.approx(2 / 3.0)  # row 0 flips from class 0 to 1
    assert (m["top1_fp32"], m["top1"]) == (pytest.approx(1 / 3.0), 0.0)
    assert m["top1_drop_points"] == pytest.approx(100 / 3.0)
    # Top-2: FP32 has every label among its two best; after the change row 2 does not.
    assert (m["top2_fp32"], m["top2"]) == (1.0, pytest.approx(2 / 3.0))
    assert "top2" not in validate.compare(lambda f: {"y": ref}, lambda f: {"y": out},
                                          [({}, np.array([0, 2, 2]))], ["y"])["y"]


def test_budget_is_a_frozen_value():
    budget = Budget(max_accuracy_drop=0.5)
    assert budget == Budget(max_accuracy_drop=0.5) and hash(budget) == hash(
        Budget(max_accuracy_drop=0.5))
    assert budget != Budget(min_cosine=0.5)
    with pytest.raises(AttributeError):
        budget.limit = 2.0
    assert budget.needs_labels and not budget.higher_is_better
    assert budget.describe() == "top-1 drop <= 0.5 points"
    assert Budget(min_cosine=0.99, output="logits").to_dict() == {
        "kind": "min_cosine", "limit": 0.99, "output": "logits",
        "text": "cosine >= 0.99 on 'logits'"}


@pytest.mark.parametrize("kwargs, fragment", [
    ({}, "exactly one limit; got none"),
    ({"max_accuracy_drop": 1.0, "min_cosine": 0.99}, "got max_accuracy_drop, min_cosine"),
    ({"min_value": 0.9}, "got none"),
    ({"metric": lambda r, c, l: 1.0}, "needs min_value"),
    ({"min_cosine": 0.99, "min_value": 0.9}, "min_value applies to a custom metric"),
    ({"metric": "accuracy", "min_value": 0.9}, "must be callable"),
    ({"min_cosine": 1.5}, "between -1 and 1"),
    ({"max_accuracy_drop": -1}, "cannot be negative"),
    ({"max_abs_error": float("nan")}, "must be finite"),
    ({"min_cosine": True}, "must be a number"),
])
def test_impossible_budgets_are_usage_errors(kwargs, fragment):
    with pytest.raises(UsageError, match=fragment):
        Budget(**kwargs)


def test_accuracy_budget_needs_labels(outlier):
    budget = Budget(max_accuracy_drop=1.0)
    with pytest.raises(UsageError, match="needs labelled evaluation data"):
        budget.check_data(labelled=False)
    builder = outlier.builder("u8s8-rr", "no-labels")
    with pytest.raises(UsageError, match="needs labelled evaluation data"):
        sensitivity.mixed_precision(builder, outlier.reference, budget)
    assert builder.builds == 0  # refused before any work
    with pytest.raises(UsageError, match="does not have"):
        Budget(min_cosine=0.9, output="logits").check_data(True, ["y"])


def test_eval_data_that_does_not_fit_the_model(outlier):
    wrong = ReferenceOutputs(sensitivity.ort_runner(outlier.source),
                             lambda: iter([({"x": np.zeros((2, 3, 9, 9), np.float32)}, None)]))
    with pytest.raises(DataError, match="cannot run on evaluation batch 1") as info:
        wrong.samples
    assert "x [2, 3, 9, 9]" in str(info.value)
    empty = ReferenceOutputs(sensitivity.ort_runner(outlier.source), lambda: iter([]))
    with pytest.raises(DataError, match="no samples"):
        empty.samples


def test_reference_streams_inputs_too_big_to_keep(outlier):
    runner = CountingRunner(outlier.source)
    streamed = ReferenceOutputs(runner, outlier.eval_batches, max_cached_bytes=0)
    candidate = sensitivity.ort_runner(outlier.builder("u8s8-rr", "stream").build())
    first = metrics.evaluate(streamed, candidate)
    assert first == metrics.evaluate(outlier.reference, candidate)
    assert metrics.evaluate(streamed.head(40), candidate).samples == 64
    assert runner.calls == 4  # streaming re-reads the inputs, never re-runs FP32
    step = [32]
    x = np.random.RandomState(3).standard_normal((64, 3, 8, 8)).astype(np.float32)
    changing = ReferenceOutputs(
        runner, lambda: (({"x": x[i:i + step[0]]}, None) for i in range(0, 64, step[0])),
        max_cached_bytes=0)
    assert changing.samples == 64
    step[0] = 16  # the files changed under a running conversion
    with pytest.raises(DataError, match="changed while it was being used"):
        metrics.evaluate(changing, candidate)


# -- sensitivity -----------------------------------------------------------------------------

def test_groups_follow_ort_fusions(demo):
    builder = demo.builder("u8s8-rr", "groups")
    groups = sensitivity.quantized_groups(builder.model, onnx.load(builder.build()))
    assert [g.label for g in groups] == ["Conv+Relu", "Conv+Relu", "MaxPool", "Conv+Relu",
                                         "GlobalAveragePool", "Flatten", "Gemm"]
    assert groups[0].nodes == ("/features/features.0/Conv", "/features/features.2/Relu")
    assert groups[-1].output == "logits"


def test_sensitivity_ranks_the_outlier_layers_first(outlier):
    builder = outlier.builder("u8s8-rr", "rank")
    result = sensitivity.analyze(builder, outlier.reference, Budget(min_cosine=0.99))
    names = [layer.name for layer in result.layers]
    assert set(names[:2]) == {"conv2", "conv3"}, names
    assert len(names) == 6 and result.builds == 7  # all-INT8 + one per group
    worst, rest = result.layers[1], result.layers[2:]
    # The outlier layers alone cost > 25 dB more output SQNR than any other group.
    assert all(layer.sqnr_db is None or layer.sqnr_db > worst.sqnr_db + 25 for layer in rest)
    assert result.achieved < 0.9  # all-INT8 cosine: far below the budget
    table = sensitivity.format_table(result)
    assert "quantize-alone" in table and table.index("conv2") < table.index("conv1")


def test_table_shows_kernel_loss_the_activations_cannot(demo):
    builder = demo.builder("s8s8", "table")
    result = sensitivity.analyze(builder, demo.reference, Budget(max_accuracy_drop=0.5))
    real = sensitivity.worst_sqnr(result.baseline)
    if result.simulated_sqnr_db - real < 3.0:
        pytest.skip("S8S8 does not saturate on this CPU (it has VNNI or is not x86)")
    table = sensitivity.format_table(result)
    assert "INT8 kernels lose" in table
    assert (result.samples, result.baseline.samples) == (100, EVAL_SAMPLES)
    assert result.layers[0].name == "/features/features.0/Conv"
    rows = [line.split() for line in table.splitlines() if line[:1].isdigit()]
    assert [row[1] for row in rows] == [layer.name for layer in result.layers]
    assert all(layer.activation_sqnr_db is not None for layer in result.layers)


def test_plot_is_optional(outlier, tmp_path):
    builder = outlier.builder("u8s8-rr", "plot")
    result = sensitivity.analyze(builder, outlier.reference, activations=False)
    target = tmp_path / "layers.png"
    written = sensitivity.plot(result, str(target))
    if available("matplotlib"):
        assert written == str(target) and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert written is None and not target.exists()
    assert os.listdir(str(tmp_path)) == (["layers.png"] if written else [])


def test_unnamed_nodes_get_names(outlier, tmp_path):
    model = models.outlier_convnet()
    for node in model.graph.node:
        node.name = ""
    path = models.save(model, tmp_path / "unnamed.onnx")
    builder = sensitivity.QdqBuilder(path, outlier.cache, outlier.kind,
                                     ort_recipe.INT8_VARIANTS["u8s8-rr"], True, str(tmp_path))
    names = [n.name for n in builder.model.graph.node]
    assert len(set(names)) == len(names) and all(names)
    groups = sensitivity.quantized_groups(builder.model, onnx.load(builder.build()))
    assert groups[1].nodes == ("Conv_2", "Relu_3")


# -- budget search ---------------------------------------------------------------------------

def test_budget_met_by_default_int8_keeps_nothing(demo):
    builder = demo.builder("u8s8-rr", "default")
    sens, result = sensitivity.mixed_precision(builder, demo.reference,
                                               Budget(max_accuracy_drop=0.5))
    assert result.kept == () and result.achieved <= 0.5
    assert [s.groups for s in result.steps] == [0]
    assert result.model == sens.baseline_model


def test_s8s8_search_keeps_the_saturating_conv(demo):
    budget = Budget(max_accuracy_drop=0.5)
    builder = demo.builder("s8s8", "s8s8")
    sens, result = sensitivity.mixed_precision(builder, demo.reference, budget)
    if budget.check(sens.baseline)[0]:
        pytest.skip("S8S8 keeps the budget on this CPU (no U8S8 saturation)")
    assert sens.achieved > 0.5
    assert [(op.name, op.op_type) for op in result.kept] == [
        ("/features/features.0/Conv", "Conv"), ("/features/features.2/Relu", "Relu")]
    assert result.achieved <= 0.5
    assert [(s.groups, s.ok) for s in result.steps] == [(0, False), (1, True)]
    # Rebuilt from scratch with the recipe's quantize_static and a fresh FP32 session.
    again, _ = demo.independent_check("s8s8", result.excluded, "s8s8-again")
    assert again["logits"]["top1_drop_points"] <= 0.5
    assert again["logits"]["top1_drop_points"] == pytest.approx(result.achieved, abs=1e-9)
    assert budget_mod.fp32_layers(result) == [
        {"name": "/features/features.0/Conv", "op_type": "Conv"},
        {"name": "/features/features.2/Relu", "op_type": "Relu"}]


def test_search_keeps_only_the_offending_ops(outlier):
    budget = Budget(min_cosine=0.99)
    builder = outlier.builder("u8s8-rr", "search")
    sens, result = sensitivity.mixed_precision(builder, outlier.reference, budget)
    assert sens.achieved < 0.99  # plain PTQ misses the budget
    assert set(result.excluded) == OFFENDERS
    assert result.achieved >= 0.99 and result.candidates == 6
    assert [(s.groups, s.ok) for s in result.steps] == [(0, False), (1, False), (2, True)]
    again, path = outlier.independent_check("u8s8-rr", result.excluded, "outlier-again")
    assert again["y"]["cosine_mean"] >= 0.99
    assert again["y"]["cosine_mean"] == pytest.approx(result.achieved, abs=1e-9)
    graph = onnx.load(path).graph
    producer = dict((out, n.op_type) for n in graph.node for out in n.output)
    int8_weights = [n.name for n in graph.node if n.op_type in ("Conv", "Gemm")
                    and producer.get(n.input[1]) == "DequantizeLinear"]
    assert int8_weights == ["conv1", "fc"]  # conv2 and conv3 keep FP32 weights and math
    manifest = json.loads(json.dumps(result.to_dict()))  # what a bundle would hold
    assert manifest["budget"]["kind"] == "min_cosine" and len(manifest["kept"]) == 4
    assert manifest["met"] is True and set(manifest["groups"]) == {"conv2", "conv3"}
    assert manifest["fp32_layers"] == budget_mod.fp32_layers(result)
    lines = budget_mod.describe(manifest)
    assert lines == budget_mod.describe(result)
    assert lines[0].startswith("accuracy budget: cosine >= 0.99; achieved cosine 0.99")
    assert lines[1].startswith("kept in FP32: 2 of 6 groups: conv")
    assert lines[2].startswith("search: 3 steps in ")


def test_unreachable_budget_says_the_loss_is_not_from_quantization(demo):
    def accuracy(reference, candidate, labels):
        return float((candidate["logits"].argmax(axis=1) == labels).mean())

    # FP32 itself gets 99% of these images right, so no precision reaches 100%.
    budget = Budget(metric=accuracy, min_value=1.0)
    builder = demo.builder("u8s8-rr", "unreachable")
    with pytest.raises(ConversionError) as info:
        sensitivity.mixed_precision(builder, demo.reference, budget)
    message = str(info.value)
    assert re.search(r"Even with all 10 quantized ops \(7 groups\) in FP32 the accuracy is "
                     r"0\.9\d* < 1: the loss is not from quantization", message), message


def test_never_satisfied_custom_metric_is_unreachable(outlier):
    budget = Budget(metric=lambda reference, candidate, labels: 0.0, min_value=1.0)
    with pytest.raises(ConversionError, match="not from quantization"):
        sensitivity.mixed_precision(outlier.builder("u8s8-rr", "never"), outlier.reference,
                                    budget)


def test_custom_metric_is_honoured(demo):
    seen = []

    def agreement(reference, candidate, labels):
        seen.append((reference["logits"].shape, candidate["logits"].shape, labels.shape))
        return float((reference["logits"].argmax(1) == candidate["logits"].argmax(1)).mean())

    builder = demo.builder("s8s8", "custom")
    results = metrics.evaluate(demo.reference, sensitivity.ort_runner(builder.build()),
                               agreement)
    assert seen == [((EVAL_SAMPLES, 10), (EVAL_SAMPLES, 10), (EVAL_SAMPLES,))]
    assert results.metric == pytest.approx(results.outputs["logits"]["top1_agreement"])
    assert results.metric_name == "agreement"
    budget = Budget(metric=agreement, min_value=0.999)
    ok, value = budget.check(results)
    assert value == results.metric and ok is (value >= 0.999)
    _, result = sensitivity.mixed_precision(builder, demo.reference, budget)
    assert result.achieved >= 0.999 and result.results.metric == result.achieved
    with pytest.raises(UsageError, match="returned nan"):
        metrics.evaluate(demo.reference, sensitivity.ort_runner(builder.build()),
                         lambda r, c, l: float("nan"))
    with pytest.raises(UsageError, match="was not measured"):
        budget.check(Results({"logits": {}}, 1, 1))


def test_reference_outputs_are_computed_once(demo):
    before = demo.reference_run.calls
    for variant in ("u8s8-rr", "s8s8"):
        builder = demo.builder(variant, "once-" + variant)
        sensitivity.mixed_precision(builder, demo.reference, Budget(min_cosine=0.9999))
    part = demo.reference.head(60)  # whole batches: 2 of 50
    assert (part.samples, part.labelled, part.output_names) == (100, 100, ["logits"])
    assert demo.reference.head(None) is demo.reference
    # FP32 ran over the eval set once for the whole module: 4 batches of 50.
    assert demo.reference_run.calls == EVAL_SAMPLES // 50
    assert demo.reference_run.calls - before in (0, EVAL_SAMPLES // 50)


def test_search_needs_log_steps_on_a_long_ranking():
    # 100 groups, the budget holds from the 37 most sensitive on: a plain quality
    # curve stands in for build + evaluate to count the search's steps.
    ranking = [sensitivity.Group("op{}".format(i), "Conv", ("op{}".format(i),), ("Conv",), "t")
               for i in range(100)]

    def evaluate(path):
        kept = int(path)
        return Results({"y": {"cosine_mean": 1.0 if kept >= 37 else 0.9}}, 1, 0)

    result = budget_mod.search(Budget(min_cosine=1.0), ranking, lambda ex: str(len(ex)),
                               evaluate)
    assert len(result.groups) == 37
    assert [s.groups for s in result.steps] == [0, 1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
