"""Sharded models (issue 7): the planner, partitions in bundles, both runner modes, bad input.

Graphs (catalogue in tests/models.py): ``residual_stack`` (two inputs and outputs,
skips, a weight read at both ends), ``if_model`` (an If kept whole),
``cheap_cut_chain`` (the cheaper of two cuts), ``transformer_stack`` (two inputs, shared
constants), and the benchmark ResNet-50 and MobileNetV2 of
scripts/build_bench_models.py, built once per session.  The model over 2 GB is in
tests/test_shard_large.py.

Tolerances: FP32 partitions give the unsharded model's outputs to 1e-5 (max abs);
INT8 and FP16 bundles are held to the unsharded bundle's own error against FP32.
"""

import json
import os
import sys
import threading
import time

import numpy as np
import onnx
import onnxruntime
import pytest

import edgeinfer
from edgeinfer.bundle import MANIFEST_NAME, Bundle
from edgeinfer.conversion import shard
from edgeinfer.errors import BundleError, ConversionError, ModelError, UsageError
from edgeinfer.partitions import Partition, validate_partitions
from edgeinfer.runtime.shard import ShardedRunner

from . import models
from .test_cli import invoke as _invoke

KIB = 1024
FP32_TOLERANCE = 1e-5
SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


# -- helpers ---------------------------------------------------------------------------------

def save(model, folder, name):
    path = str(folder / name)
    onnx.save(model, path)
    return path


def ort_outputs(path, feeds):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def shard_fp32(path, folder, budget_bytes, name="sharded.eib", **options):
    return edgeinfer.convert(path, precision="fp32", shard_budget_mb=budget_bytes / 1048576.0,
                             output=str(folder / name), overwrite=True, **options)


def assert_same(outputs, reference, tolerance=FP32_TOLERANCE):
    assert sorted(outputs) == sorted(reference)
    for name in reference:
        assert outputs[name].shape == reference[name].shape, name
        assert np.abs(outputs[name] - reference[name]).max() <= tolerance, name


def check_plan(plan):
    """The plan's invariants: every node once and in order, each partition within the
    budget, and every tensor a partition reads either made in it, held by it, or one of
    its inputs, which come from a model input or the partition that outputs them."""
    graph = plan.graph
    parts = plan.partitions
    assert parts[0].start == 0 and parts[-1].stop == len(graph.nodes)
    assert all(a.stop == b.start and a.start < a.stop for a, b in zip(parts, parts[1:]))
    outputs = [set(name for name, _, _ in p.outputs) for p in parts]
    for k, part in enumerate(parts):
        assert part.weight_bytes <= plan.budget_bytes
        made = set(n for node in graph.nodes[part.start:part.stop] for n in node.output)
        inputs = dict(part.inputs)
        for i in range(part.start, part.stop):
            for name in graph.reads[i]:
                assert name in made or name in part.weights or name in inputs, name
        for name, source in part.inputs:
            if source == "input":
                assert name in graph.inputs
            else:
                assert source < k and name in outputs[source], (name, source)
    for cut in plan.cuts:
        stop = parts[cut.after].stop
        for name in cut.tensors:
            assert graph.producer[name] < stop
            assert any(name in graph.reads[i] for i in range(stop, len(graph.nodes)))
    for name in graph.outputs:
        assert any(name in o for o in outputs)


def feeds_for(bundle, batch=2, seed=0):
    rng = np.random.RandomState(seed)
    feeds = {}
    for spec in bundle.inputs:
        shape = spec.concrete_shape(batch=batch)
        feeds[spec.name] = (rng.standard_normal(shape).astype(spec.dtype)
                            if spec.dtype.startswith("float") else
                            np.ones(shape, spec.dtype))
    return feeds


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shards")


@pytest.fixture(scope="session")
def bench_models(shard_dir):
    """The benchmark ResNet-50 and MobileNetV2 (seeded random weights), built once."""
    sys.path.insert(0, SCRIPTS)
    try:
        from build_bench_models import build
    finally:
        sys.path.remove(SCRIPTS)
    return dict((arch, save(build(arch), shard_dir, arch + ".onnx"))
                for arch in ("resnet50", "mobilenetv2"))


@pytest.fixture(scope="session")
def resnet50_sharded(bench_models, shard_dir):
    """ResNet-50 FP32 sharded at a quarter of its weights: (plan, bundle path)."""
    graph = shard.Graph(shard.read_model(bench_models["resnet50"]))
    budget = graph.weight_bytes // 4
    plan = shard.plan_shards(graph, budget)
    bundle = shard_fp32(bench_models["resnet50"], shard_dir, budget, "resnet50-sharded.eib")
    return plan, str(bundle.path)


# -- the planner -----------------------------------------------------------------------------

def test_residual_stack_plan_duplicates_the_weight_read_at_both_ends():
    plan = shard.plan_shards(models.residual_stack(), 40 * KIB)
    check_plan(plan)
    # W_in (16 KiB) + W0 | W1 + W2 | W3 + W_in: the fewest partitions for 96 KiB held.
    assert len(plan.partitions) == 3
    assert "W_in" in plan.partitions[0].weights and "W_in" in plan.partitions[-1].weights
    assert plan.partitions[0].shared == ["W_in"] and plan.partitions[-1].shared == ["W_in"]
    assert plan.shared_bytes == 16 * KIB
    assert [p.weight_bytes for p in plan.partitions] == [32 * KIB] * 3


def test_plan_takes_the_cut_with_fewest_crossing_bytes():
    # Cuts before ReduceSum (1 KiB crosses), before Mul (4 bytes) and before the second
    # MatMul (32 bytes) all give two partitions: the 4-byte one wins.
    plan = shard.plan_shards(models.cheap_cut_chain(), 8 * KIB)
    check_plan(plan)
    assert len(plan.partitions) == 2
    assert plan.cuts[0].tensors == ["narrow"] and plan.cuts[0].bytes == 4
    assert plan.partitions[1].inputs == [("x", "input"), ("narrow", 0)]


def test_whole_model_within_budget_is_one_partition():
    plan = shard.plan_shards(models.residual_stack(), 1024 * KIB)
    assert len(plan.partitions) == 1 and plan.cuts == [] and plan.shared_bytes == 0


def test_if_node_stays_whole_with_its_outer_reads_as_inputs(tmp_path):
    model = models.if_model()
    plan = shard.plan_shards(model, 2 * KIB)
    check_plan(plan)
    graph = plan.graph
    (branch,) = [p for p in plan.partitions
                 if any(n.op_type == "If" for n in graph.nodes[p.start:p.stop])]
    assert [n.name for n in graph.nodes[branch.start:branch.stop]] == ["branch"]
    # W2 is read only inside the then-branch; c is the else-branch's own.
    assert branch.weights == ["W2"] and branch.weight_bytes == 2 * KIB
    assert dict(branch.inputs) == {"flag": "input", "a": 0}
    path = save(model, tmp_path, "if.onnx")
    bundle = shard_fp32(path, tmp_path, 2 * KIB)
    session = edgeinfer.load(str(bundle.path))
    x = np.random.RandomState(0).standard_normal((3, 16)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        assert_same(session.run(feeds), ort_outputs(path, feeds))


def test_resnet50_quarter_budget_cuts_through_residuals(resnet50_sharded):
    plan, _ = resnet50_sharded
    check_plan(plan)
    assert len(plan.partitions) >= 4
    assert plan.shared_bytes == 0
    # A cut inside a bottleneck carries the skip beside the branch.
    assert any(len(cut.tensors) >= 2 for cut in plan.cuts)
    assert plan.graph.largest_activation_set() > 0


def test_mobilenetv2_budget_below_its_classifier_names_it(bench_models):
    graph = shard.Graph(shard.read_model(bench_models["mobilenetv2"]))
    with pytest.raises(ConversionError) as info:
        shard.plan_shards(graph, graph.weight_bytes // 4)
    assert "'fc' (Gemm)" in info.value.message and "--budget-mb" in info.value.hint


# -- running sharded bundles -----------------------------------------------------------------

def test_resnet50_both_modes_equal_unsharded(resnet50_sharded, bench_models):
    plan, path = resnet50_sharded
    x = {"input": np.random.RandomState(1).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    reference = ort_outputs(bench_models["resnet50"], x)
    for mode in ("resident", "stream"):
        with edgeinfer.load(path, shard_mode=mode) as session:
            assert_same(session.run(x), reference)
            assert_same(session.run(x), reference)
            stats = session._runner.stats
            if mode == "stream":
                sizes = session._runner._sizes
                assert stats["peak_bytes"] <= max(plan.budget_bytes, max(sizes))
                # Nothing fits beside the largest: every call loads every partition.
                assert stats["loads"] >= 2 * len(plan.partitions)
            else:
                assert stats["loads"] == len(plan.partitions)


def test_mobilenetv2_sharded_equals_unsharded(bench_models, shard_dir):
    path = bench_models["mobilenetv2"]
    graph = shard.Graph(shard.read_model(path))
    bundle = shard_fp32(path, shard_dir, graph.weight_bytes // 2, "mobilenetv2-sharded.eib")
    assert len(bundle.manifest["partitions"]["items"]) >= 2
    x = {"input": np.random.RandomState(2).standard_normal((2, 3, 224, 224)).astype(np.float32)}
    with edgeinfer.load(str(bundle.path), shard_mode="stream") as session:
        assert_same(session.run(x), ort_outputs(path, x))


def test_transformer_stack_with_two_inputs(tmp_path):
    model = models.transformer_stack()
    path = save(model, tmp_path, "transformer.onnx")
    graph = shard.Graph(model)
    bundle = shard_fp32(path, tmp_path, 40 * KIB)
    record = bundle.manifest["partitions"]
    assert len(record["items"]) >= 4
    # The constants every layer reads go into every partition, counted each time.
    assert record["shared_bytes"] > 0 and "scale" in record["items"][1]["shared"]
    assert sum(i["weight_bytes"] for i in record["items"]) == (
        graph.weight_bytes + record["shared_bytes"])
    # The mask reaches every layer: each later partition reads it (or its bias) from before.
    assert all(item["inputs"] for item in record["items"][1:])
    rng = np.random.RandomState(3)
    feeds = [{"hidden": rng.standard_normal((2, 8, 32)).astype(np.float32),
              "mask": (rng.rand(2, 8) > 0.3).astype(np.float32)} for _ in range(5)]
    expected = [ort_outputs(path, f) for f in feeds]
    with edgeinfer.load(str(bundle.path)) as resident:
        for f, e in zip(feeds, expected):
            assert_same(resident.run(f), e)
        # Pipelined across partitions: the same answers, in order.
        for got, e in zip(resident.run_many(feeds, concurrency=3), expected):
            assert_same(got, e)
        assert resident.run(feeds[0], outputs=["pooled"]).keys() == {"pooled"}
    with edgeinfer.load(str(bundle.path), shard_mode="stream") as stream:
        for got, e in zip(stream.run_many(feeds), expected):
            assert_same(got, e)


def test_residual_stack_outputs_made_early_and_late(tmp_path):
    path = save(models.residual_stack(), tmp_path, "residual.onnx")
    bundle = shard_fp32(path, tmp_path, 40 * KIB)
    feeds = feeds_for(bundle, batch=4)
    expected = ort_outputs(path, feeds)
    for mode in ("resident", "stream"):
        with edgeinfer.load(str(bundle.path), shard_mode=mode) as session:
            assert_same(session.run(feeds), expected)
            assert list(session.run(feeds, outputs=["early"])) == ["early"]


def test_int8_static_calibrates_each_partition_through_the_ones_before(
        repo_root, shard_dir, digits_int8_bundle):
    # Same settings as the conftest's unsharded INT8 demo bundle, cut in three.
    sharded = edgeinfer.convert(
        str(repo_root / "models" / "digits_cnn.onnx"), target="cpu", precision="int8",
        method="static", calibration=str(repo_root / "calibration" / "digits"),
        eval=str(repo_root / "calibration" / "digits-eval"), shard_budget_mb=0.072,
        output=str(shard_dir / "digits-int8-sharded.eib"))
    whole = Bundle.open(str(digits_int8_bundle))
    assert len(sharded.manifest["partitions"]["items"]) == 3
    calibration = sharded.manifest["calibration"]["per_partition"]
    assert len(calibration) == 3 and all(c["samples"] == calibration[0]["samples"]
                                         for c in calibration)
    ours = sharded.manifest["validation"]["outputs"]["logits"]
    theirs = whole.manifest["validation"]["outputs"]["logits"]
    assert abs(ours["sqnr_db"] - theirs["sqnr_db"]) < 1.0
    assert ours["top1"] >= theirs["top1"] - 0.01
    x = {"input": np.random.RandomState(4).rand(8, 1, 8, 8).astype(np.float32)}
    with edgeinfer.load(str(sharded.path), shard_mode="stream") as a, \
            edgeinfer.load(str(digits_int8_bundle)) as b:
        gap = np.abs(a.run(x)["logits"] - b.run(x)["logits"]).max()
    assert gap <= theirs["max_abs_error"]


def test_fp16_sharded_matches_unsharded_fp16(repo_root, shard_dir, digits_fp16_bundle):
    sharded = edgeinfer.convert(
        str(repo_root / "models" / "digits_cnn.onnx"), target="cpu", precision="fp16",
        eval=str(repo_root / "calibration" / "digits-eval"), shard_budget_mb=0.072,
        output=str(shard_dir / "digits-fp16-sharded.eib"))
    ours = sharded.manifest["validation"]["outputs"]["logits"]
    theirs = Bundle.open(str(digits_fp16_bundle)).manifest["validation"]["outputs"]["logits"]
    assert ours["max_abs_error"] <= 2 * theirs["max_abs_error"]
    assert ours["top1"] == theirs["top1"]


def test_openvino_int8_static_per_partition(repo_root, shard_dir):
    demo = str(repo_root / "models" / "digits_cnn.onnx")
    common = dict(target="intel-cpu", precision="int8", overwrite=True,
                  calibration=str(repo_root / "calibration" / "digits"),
                  eval=str(repo_root / "calibration" / "digits-eval"))
    sharded = edgeinfer.convert(demo, shard_budget_mb=0.072,
                                output=str(shard_dir / "digits-ov-sharded.eib"), **common)
    whole = edgeinfer.convert(demo, output=str(shard_dir / "digits-ov.eib"),
                              measure_speed=False, **common)
    assert sharded.backend == "openvino" and sharded.manifest["method"] == "static"
    assert all(i["files"] == ["partitions/{}/model.bin".format(i["name"]),
                              "partitions/{}/model.xml".format(i["name"])]
               for i in sharded.manifest["partitions"]["items"])
    ours = sharded.manifest["validation"]["outputs"]["logits"]
    theirs = whole.manifest["validation"]["outputs"]["logits"]
    assert abs(ours["sqnr_db"] - theirs["sqnr_db"]) < 2.0 and ours["top1"] == theirs["top1"]
    x = {"input": np.random.RandomState(5).rand(4, 1, 8, 8).astype(np.float32)}
    with edgeinfer.load(str(sharded.path), shard_mode="stream") as a, \
            edgeinfer.load(str(whole.path)) as b:
        assert np.abs(a.run(x)["logits"] - b.run(x)["logits"]).max() <= theirs["max_abs_error"]


def test_dynamic_int8_keeps_matmul_free_partitions_fp32(tmp_path):
    path = save(models.transformer_stack(layers=2), tmp_path, "transformer.onnx")
    bundle = edgeinfer.convert(path, precision="int8", method="dynamic",
                               shard_budget_mb=40 / 1024.0, output=str(tmp_path / "dyn.eib"))
    assert bundle.manifest["method"] == "dynamic"
    out = bundle.manifest["validation"]["outputs"]
    assert min(o["cosine_mean"] for o in out.values()) > 0.99


# -- the stream runner's schedule (a fake backend: no model needed) ---------------------------

class FakeRunner(object):
    """Adds its partition's index to its input; records when it ran."""

    def __init__(self, index, log, resident, sizes):
        self.index, self.log, self.resident, self.sizes = index, log, resident, sizes

    def run(self, feeds, names):
        start = time.perf_counter()
        time.sleep(0.03)
        self.log.append(("run", self.index, start, time.perf_counter()))
        (value,) = feeds.values()
        return {names[0]: value + self.index}

    def close(self):
        self.resident.discard(self.index)


def fake_chain(sizes, mode, budget, load_seconds=0.03):
    """A chain of partitions t0 -> p0 -> t1 -> p1 ... and a loader that sleeps."""
    from edgeinfer.tensors import TensorSpec
    log, resident, peaks = [], set(), []
    parts = []
    for k in range(len(sizes)):
        spec = lambda name: {"name": name, "dtype": "float32", "shape": [1]}
        parts.append(Partition(k, {
            "name": "p{}".format(k), "model": "p{}.onnx".format(k), "files": [], "nodes": 1,
            "weight_bytes": sizes[k],
            "inputs": [dict(spec("t{}".format(k)), **{"from": "input" if k == 0 else k - 1})],
            "outputs": [dict(spec("t{}".format(k + 1)), to=[k + 1], output=k == len(sizes) - 1)]}))
    lock = threading.Lock()

    def load(part):
        start = time.perf_counter()
        time.sleep(load_seconds)
        with lock:
            resident.add(part.index)
            peaks.append(sum(sizes[i] for i in resident))
        log.append(("load", part.index, start, time.perf_counter()))
        return FakeRunner(part.index, log, resident, sizes)

    runner = ShardedRunner(parts, [TensorSpec("t0", "float32", (1,))],
                           [TensorSpec("t{}".format(len(sizes)), "float32", (1,))], load, sizes,
                           mode, budget)
    return runner, log, peaks


def test_stream_prefetches_the_next_partition_while_one_runs():
    sizes = [10, 10, 10, 10]
    runner, log, peaks = fake_chain(sizes, "stream", budget=20)
    x = {"t0": np.zeros(1, np.float32)}
    for _ in range(3):
        assert runner.run(x)["t4"][0] == 0 + 1 + 2 + 3
    runner.close()
    assert max(peaks) <= 20 and runner.stats["peak_bytes"] <= 20
    runs = [e for e in log if e[0] == "run"]
    loads = [e for e in log if e[0] == "load"]
    overlapped = [(r, l) for r in runs for l in loads
                  if l[1] == (r[1] + 1) % 4 and l[2] < r[3] and l[3] > r[2]]
    assert overlapped, "no load of partition k+1 overlapped the run of partition k"
    assert runner.stats["wait_s"] < runner.stats["load_s"]


def test_stream_pins_what_the_budget_leaves_room_for():
    # 10 + the largest streamed (30) fits 45; pinning a second 10 would not leave room.
    runner, log, peaks = fake_chain([10, 10, 30, 10], "stream", budget=45, load_seconds=0)
    assert runner.pinned == frozenset([0])
    for _ in range(3):
        runner.run({"t0": np.zeros(1, np.float32)})
    runner.close()
    assert sum(1 for e in log if e[0] == "load" and e[1] == 0) == 1
    assert max(peaks) <= 45


def test_stream_keeps_everything_when_it_all_fits():
    runner, log, _ = fake_chain([10, 10, 10], "stream", budget=100, load_seconds=0)
    for _ in range(3):
        runner.run({"t0": np.zeros(1, np.float32)})
    assert runner.pinned == frozenset([0, 1, 2]) and runner.stats["loads"] == 3
    runner.close()


# -- bundles: schema and format --------------------------------------------------------------

def test_sharded_manifest_schema(tmp_path):
    path = save(models.residual_stack(), tmp_path, "residual.onnx")
    bundle = shard_fp32(path, tmp_path, 40 * KIB)
    m = bundle.manifest
    assert m["format_version"] == 2
    record = m["partitions"]
    assert set(record) == {"budget_bytes", "weight_bytes", "shared_bytes", "activation_bytes",
                           "planner", "items", "cuts"}
    assert record["budget_bytes"] == 40 * KIB and len(record["cuts"]) == len(record["items"]) - 1
    first = record["items"][0]
    assert m["model"] == first["model"] == "partitions/p0/model.onnx"
    assert first["files"] == ["partitions/p0/model.onnx", "partitions/p0/model.onnx.data"]
    assert [i["from"] for i in first["inputs"]] == ["input"]
    parts = validate_partitions(m)
    assert [p.name for p in parts] == ["p0", "p1", "p2"]
    assert {"early", "out"} <= set(n for p in parts for n in p.model_outputs)


def test_unsharded_bundles_stay_format_1(digits_fp32_bundle):
    assert Bundle.open(str(digits_fp32_bundle)).manifest["format_version"] == 1


# -- bad input -------------------------------------------------------------------------------

def test_budget_below_the_largest_op_names_it():
    with pytest.raises(ConversionError) as info:
        shard.plan_shards(models.residual_stack(), 10 * KIB)
    assert "'in' (MatMul)" in info.value.message and "16 KiB" not in info.value.message
    assert "0.0156 MiB" in info.value.message


@pytest.mark.parametrize("budget", [0, -1, float("nan")])
def test_budget_of_zero_or_less_is_refused(tmp_path, budget):
    path = save(models.residual_stack(), tmp_path, "residual.onnx")
    with pytest.raises(UsageError):
        edgeinfer.convert(path, precision="fp32", shard_budget_mb=budget,
                          output=str(tmp_path / "x.eib"))
    assert not os.path.exists(str(tmp_path / "x.eib"))
    with pytest.raises(UsageError):
        shard.plan_shards(models.residual_stack(), 0)


def _cyclic():
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Neg", ["b"], ["c"], name="third")]
    return models._model(nodes, "cycle",
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                         [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])], [])


def _dangling():
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")]
    return models._model(nodes, "dangling",
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [])


def test_cycle_is_named():
    with pytest.raises(ModelError) as info:
        shard.Graph(_cyclic())
    assert "cycle" in info.value.message
    for name in ("'first' (Add)", "'second' (Relu)", "'third' (Neg)"):
        assert name in info.value.message


def test_dangling_input_is_named():
    with pytest.raises(ModelError) as info:
        shard.Graph(_dangling())
    assert "'adder' (Add)" in info.value.message and "'ghost'" in info.value.message


def test_partition_file_missing_from_the_bundle(tmp_path, rezip):
    read_members, write_zip, _ = rezip
    path = save(models.residual_stack(), tmp_path, "residual.onnx")
    bundle = shard_fp32(path, tmp_path, 40 * KIB)
    members = read_members(bundle.path)
    manifest = json.loads(members.pop(MANIFEST_NAME).decode("utf-8"))
    gone = "partitions/p1/model.onnx.data"
    # Dropped from the manifest's file list and from the archive: the partitions
    # record still names it.
    manifest["files"] = [e for e in manifest["files"] if e["name"] != gone]
    entries = [(MANIFEST_NAME, json.dumps(manifest).encode("utf-8"))]
    entries += [(n, d) for n, d in members.items() if n != gone]
    broken = write_zip(tmp_path / "missing.eib", entries)
    with pytest.raises(BundleError) as info:
        Bundle.open(str(broken))
    assert "partition 'p1'" in info.value.message and repr(gone) in info.value.message
    # Listed, but not in the archive: the archive check names it.
    listed = json.loads(read_members(bundle.path)[MANIFEST_NAME].decode("utf-8"))
    entries = [(MANIFEST_NAME, json.dumps(listed).encode("utf-8"))]
    entries += [(n, d) for n, d in members.items() if n != gone]
    with pytest.raises(BundleError) as info:
        Bundle.open(str(write_zip(tmp_path / "lacking.eib", entries)))
    assert "lacks {!r}".format(gone) in info.value.message


def test_shard_modes_refused_where_they_cannot_apply(tiny_bundle, resnet50_sharded):
    with pytest.raises(UsageError) as info:
        edgeinfer.load(str(tiny_bundle), shard_mode="stream")
    assert "not sharded" in info.value.message
    _, path = resnet50_sharded
    with pytest.raises(UsageError) as info:
        edgeinfer.load(path, shard_mode="lazy")
    assert "'lazy'" in info.value.message
    with pytest.raises(UsageError) as info:
        edgeinfer.load(path, shard_mode="stream", shard_budget_mb=1)
    assert "over the 1.0 MiB shard budget" in info.value.message


# -- convert shards by itself ----------------------------------------------------------------

def test_convert_shards_when_the_profile_budget_is_exceeded(tmp_path, monkeypatch):
    from edgeinfer import profiles
    path = save(models.residual_stack(width=256), tmp_path, "wide.onnx")  # 1.25 MiB
    small = profiles.PROFILES["x86-cpu"]._replace(memory_mb=1)
    monkeypatch.setitem(profiles.PROFILES, "x86-cpu", small)
    monkeypatch.setattr(profiles, "machine_arch", lambda: "x86_64")
    bundle = edgeinfer.convert(path, target="x86-cpu", precision="fp32",
                               output=str(tmp_path / "auto.eib"), measure_speed=False)
    assert bundle.manifest["partitions"]["budget_bytes"] == 1024 * 1024
    assert len(bundle.manifest["partitions"]["items"]) == 2
    fits = save(models.residual_stack(), tmp_path, "narrow.onnx")  # 80 KiB
    bundle = edgeinfer.convert(fits, target="x86-cpu", precision="fp32",
                               output=str(tmp_path / "whole.eib"), measure_speed=False)
    assert bundle.manifest["partitions"] is None


# -- the command line ------------------------------------------------------------------------



def test_cli_shard_inspect_and_run_stream(tmp_path):
    path = save(models.residual_stack(), tmp_path, "residual.onnx")
    out = tmp_path / "residual-sharded.eib"
    result = _invoke("shard", path, "--budget-mb", 40 / 1024.0, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "partitions: 3" in result.stdout
    result = _invoke("inspect", out)
    assert result.exit_code == 0, result.stderr
    for fragment in ("partitions: 3 of at most 40.0 KiB", "in .. block0.add",
                     "block3.matmul .. out"):
        assert fragment in result.stdout
    feeds = feeds_for(Bundle.open(str(out)), batch=1)
    np.savez(str(tmp_path / "x.npz"), **feeds)
    result = _invoke("run", out, tmp_path / "x.npz", "--stream", "--save", tmp_path / "y.npz")
    assert result.exit_code == 0, result.stderr
    saved = np.load(str(tmp_path / "y.npz"))
    expected = ort_outputs(path, feeds)
    key = str(tmp_path / "x.npz")
    assert np.abs(saved[key + "/out"] - expected["out"]).max() <= FP32_TOLERANCE


@pytest.mark.parametrize("budget, code, fragments", [
    ("0", 2, ["--budget-mb must be a number of MiB > 0"]),
    ("0.005", 1, ["No plan fits the 0.005 MiB budget", "'in' (MatMul)"]),
])
def test_cli_shard_bad_budgets(tmp_path, budget, code, fragments):
    path = save(models.residual_stack(), tmp_path, "residual.onnx")
    out = tmp_path / "never.eib"
    result = _invoke("shard", path, "--budget-mb", budget, "-o", out)
    assert result.exit_code == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert not out.exists()


def test_cli_shard_cyclic_model(tmp_path):
    path = save(_cyclic(), tmp_path, "cycle.onnx")
    result = _invoke("shard", path, "--budget-mb", 1, "-o", tmp_path / "c.eib")
    assert result.exit_code == 1
    assert "cycle" in result.stderr and "'third' (Neg)" in result.stderr


def test_cli_run_stream_on_unsharded_bundle(tiny_bundle, tmp_path):
    np.save(str(tmp_path / "x.npy"), np.zeros((1, 4), np.float32))
    result = _invoke("run", tiny_bundle, tmp_path / "x.npy", "--stream")
    assert result.exit_code == 2 and "not sharded" in result.stderr
