"""The TensorRT backend on the device (issue 5, requirements 4-6): plans, engine cache, runner.

What runs for real here (no GPU): the build plan from a manifest's engine record,
the version dispatch, the engine cache (keys, invalidation, atomic writes), the
calibration cache re-headed for the device's TensorRT, the memory estimate, the
CUDA-binding choice and its error, ONNX Runtime's provider options, and a
TensorRT bundle run through ONNX Runtime's CPU provider.

What runs against a stand-in (``tests/fake_tensorrt.py``, not TensorRT): the
backend's calls into TensorRT's builder and runtime and into cuda-python or
pycuda, for TensorRT 8.2 (bindings), 8.4, 8.6 and 10.3 (named tensors).  The
stand-in follows TensorRT's documented Python API and executes the "engine" with
ONNX Runtime on real host memory, so it checks the backend's own logic (which
API, which flags, buffer sizes and pointers, caching), not TensorRT.

Tests marked ``tensorrt`` use the real TensorRT and GPU; they skip elsewhere.

Bundles are the tiny model of the catalogue (``tests/models.py``)::

    x[batch,4] -> MatMul(W) -> Add(b) -> z[batch,3] -> Relu -> y[batch,3]

with a TensorRT target and an engine record (profile batch 1..8, opt 8).
"""

import json
import logging
import os
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import edgeinfer
from edgeinfer import calibration_cache as cc
from edgeinfer.bundle import Bundle
from edgeinfer.errors import (BackendError, BundleError, InputError, MissingDependency,
                              UsageError)
from edgeinfer.jetson import JetsonInfo
from edgeinfer.memory import system_memory_mb
from edgeinfer.profiles import PROFILES
from edgeinfer.runtime import engine_cache as ec
from edgeinfer.runtime.backends import ModelFiles, get_backend
from edgeinfer.runtime.backends import tensorrt as trtb

from . import fake_tensorrt, models

PROFILE = {"input": "x", "min": [1, 4], "opt": [8, 4], "max": [8, 4]}


def engine_record(flags=("fp16",), **overrides):
    record = {"builder": "tensorrt", "flags": list(flags), "quantization": None,
              "fp32_layers": [], "profiles": [PROFILE], "workspace_mb": 1024,
              "min_tensorrt": "8.0", "target_tensorrt": "8.5.2", "implicit": None}
    record.update(overrides)
    return record


def trt_manifest(make_manifest, engine=None, profile="jetson-orin", precision="fp16", **more):
    return make_manifest(target={"backend": "tensorrt", "profile": profile,
                                 "min_backend_version": "8.0"},
                         precision=precision, engine=engine or engine_record(), **more)


@pytest.fixture
def trt_bundle(tmp_path, make_manifest, tiny_model):
    """Factory: a TensorRT bundle of the tiny model with the given engine record."""
    def make(engine=None, name="tiny-trt.eib", model=None, files=None, **more):
        members = {"model.onnx": model if model is not None else tiny_model.data}
        members.update(files or {})
        path = tmp_path / name
        Bundle.write(str(path), trt_manifest(make_manifest, engine, **more), members)
        return str(path)
    return make


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGEINFER_CACHE_DIR", str(root))
    return root / "tensorrt"


@pytest.fixture
def fake(monkeypatch):
    """Install the TensorRT and CUDA stand-ins: ``fake(version, binding)`` -> (trt, cuda)."""
    def install(version="8.2.1.8", binding="cuda-python", gpu=b"Fake Tegra X1"):
        trt = fake_tensorrt.make_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trtb, "_logger", None)
        for name in ("cuda", "cuda.cudart", "cuda.bindings", "cuda.bindings.runtime",
                     "pycuda", "pycuda.driver"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        cuda = None
        if binding == "cuda-python":
            package, cuda = fake_tensorrt.make_cuda_python(gpu)
            monkeypatch.setitem(sys.modules, "cuda", package)
            monkeypatch.setitem(sys.modules, "cuda.cudart", cuda)
        elif binding == "pycuda":
            package, cuda = fake_tensorrt.make_pycuda(gpu.decode())
            monkeypatch.setitem(sys.modules, "pycuda", package)
            monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
        return trt, cuda
    return install


def reference(tiny_model, x):
    z = x @ tiny_model.W + tiny_model.b
    return np.maximum(z, 0), z


def events(trt, kind):
    return [detail for what, detail in trt.events if what == kind]


# -- version dispatch ----------------------------------------------------------------------

@pytest.mark.parametrize("version, api, workspace, pin, batch_flag", [
    ("8.0.1.6", "bindings", "max_workspace_size", "STRICT_TYPES", True),      # JetPack 4.6
    ("8.2.1.8", "bindings", "max_workspace_size", "OBEY_PRECISION_CONSTRAINTS", True),
    ("8.4.1.5", "bindings", "memory_pool", "OBEY_PRECISION_CONSTRAINTS", True),  # JetPack 5.0
    ("8.5.2.2", "named", "memory_pool", "OBEY_PRECISION_CONSTRAINTS", True),     # JetPack 5.1
    ("8.6.2", "named", "memory_pool", "OBEY_PRECISION_CONSTRAINTS", True),       # JetPack 6.0
    ("10.3.0.30", "named", "memory_pool", "OBEY_PRECISION_CONSTRAINTS", False),  # JetPack 6.1+
])
def test_api_dispatch_follows_the_tensorrt_version(version, api, workspace, pin, batch_flag):
    assert trtb.tensor_api(version) == api
    assert trtb.workspace_api(version) == workspace
    assert trtb.precision_flag(version) == pin
    assert trtb.needs_explicit_batch_flag(version) is batch_flag


def test_version_tuple_reads_build_and_suffixed_versions():
    assert trtb.version_tuple("8.2.1.8") == (8, 2, 1, 8)
    assert trtb.version_tuple("10.3.0") == (10, 3, 0)
    assert trtb.version_tuple("8.6.1.post1") == (8, 6, 1)
    assert trtb.version_tuple("") == ()


def test_version_text_inverts_tensorrt_version_codes():
    for text in ("8.2.1", "8.5.2", "8.6.1", "10.3.0", "10.12.5", "7.1.3"):
        assert cc.version_text(cc.version_code(text)) == text
    assert cc.version_text(8201) == "8.2.1" and cc.version_text(100300) == "10.3.0"
    with pytest.raises(Exception):
        cc.version_text(82)


# -- options and the build plan ------------------------------------------------------------

def test_options_are_checked_and_unknown_keys_refused():
    merged = trtb.check_options(None)
    assert merged["runtime"] == "auto" and merged["int8"] == "explicit"
    assert merged["cache_dir"].endswith(os.path.join("edgeinfer-cache", "tensorrt")) or \
        merged["cache_dir"].endswith("tensorrt")
    for bad, fragment in (({"workspace": 5}, "Unknown tensorrt option(s): workspace"),
                          ({"runtime": "cuda"}, "Unknown tensorrt runtime 'cuda'"),
                          ({"int8": "fast"}, "Unknown int8 mode 'fast'"),
                          ({"workspace_mb": 0}, "workspace_mb must be a whole number >= 1"),
                          ({"device": "npu"}, "Unknown TensorRT device 'npu'"),
                          ({"device": "cpu", "runtime": "tensorrt"}, "not the CPU")):
        with pytest.raises(UsageError) as info:
            trtb.check_options(bad)
        assert fragment in str(info.value)
    assert trtb.parse_device("DLA:1") == ("dla", 1) and trtb.parse_device("cuda") == ("gpu", None)


def test_fp16_plan_caps_the_workspace_to_the_device_profile():
    nano = PROFILES["jetson-nano"]
    # A bundle made for an Orin (1024 MiB) run on a Nano: the Nano's budget wins.
    plan = trtb.plan_build(engine_record(), "8.2.1.8", None, nano)
    assert plan.flags == ("FP16",) and plan.workspace_mb == 512
    assert plan.int8 is None and plan.dla_core is None and plan.tensorrt == "8.2.1.8"
    assert trtb.plan_build(engine_record(), "8.2.1.8").workspace_mb == 1024  # no profile known
    # The user's own workspace is taken as given.
    assert trtb.plan_build(engine_record(), "8.2.1.8", {"workspace_mb": 2048},
                           nano).workspace_mb == 2048
    assert trtb.plan_build(engine_record(workspace_mb=None), "8.2.1.8", None,
                           nano).workspace_mb == 512


def test_fp32_pins_add_the_precision_flag_of_the_version():
    record = engine_record(flags=["int8"], quantization="explicit",
                           fp32_layers=[{"name": "/fc/Gemm", "op_type": "Gemm"}])
    plan = trtb.plan_build(record, "8.2.1.8")
    assert plan.flags == ("INT8", "OBEY_PRECISION_CONSTRAINTS")
    assert plan.fp32_layers == ("/fc/Gemm",) and plan.int8 == "explicit"
    assert trtb.plan_build(record, "8.0.1.6").flags == ("INT8", "STRICT_TYPES")


def test_plan_refuses_old_tensorrt_and_malformed_records():
    with pytest.raises(BackendError) as info:
        trtb.plan_build(engine_record(min_tensorrt="8.5"), "8.2.1.8")
    assert "needs TensorRT >= 8.5; this device has 8.2.1.8" in str(info.value)
    with pytest.raises(BundleError) as info:
        trtb.plan_build(engine_record(flags=["bf16"]), "8.6.1")
    assert "unknown builder flag 'bf16'" in str(info.value)
    with pytest.raises(BundleError) as info:
        trtb.plan_build(engine_record(profiles=[{"input": "x", "min": [8, 4], "opt": [1, 4],
                                                 "max": [8, 4]}]), "8.6.1")
    assert "is not min <= opt <= max" in str(info.value)


def test_implicit_int8_reheads_the_calibration_cache_for_this_tensorrt():
    cache = cc.format_cache({"x": 0.01, "z": 0.05}, "8.5.2", "MinMaxCalibration").encode()
    implicit = {"calibration_cache": "calibration.cache", "algorithm": "MinMaxCalibration",
                "header": "TRT-8502-MinMaxCalibration", "graph": "..."}
    record = engine_record(flags=["int8"], quantization="explicit", implicit=implicit)
    plan = trtb.plan_build(record, "8.2.1.8", {"int8": "implicit"}, calibration=cache)
    parsed = cc.parse_cache(plan.calibration)
    assert parsed.header == "TRT-8201-MinMaxCalibration"
    assert parsed.scales == cc.parse_cache(cache).scales
    assert plan.int8 == "implicit" and plan.algorithm == "MinMaxCalibration"
    # TensorRT 10 codes have six digits.
    assert cc.parse_cache(trtb.recalibrated_cache(cache, "10.3.0.30")).version == 100300
    with pytest.raises(BundleError) as info:
        trtb.plan_build(record, "8.2.1.8", {"int8": "implicit"}, calibration=None)
    assert "needs the bundle's calibration cache" in str(info.value)
    with pytest.raises(UsageError) as info:
        trtb.plan_build(engine_record(), "8.2.1.8", {"int8": "implicit"})
    assert "applies to INT8 bundles; this one is fp16" in str(info.value)
    with pytest.raises(BundleError):
        trtb.recalibrated_cache(b"not a cache", "8.2.1")


def test_dla_device_builds_for_a_dla_core_with_gpu_fallback():
    plan = trtb.plan_build(engine_record(flags=["int8"]), "8.5.2", {"device": "dla:1"})
    assert plan.dla_core == 1 and plan.flags == ("INT8", "GPU_FALLBACK")


def test_plan_settings_name_what_changes_the_engine_but_not_the_workspace():
    plan = trtb.plan_build(engine_record(), "8.2.1.8")
    assert plan.settings() == ("dla=None", "flags=FP16", "fp32=", "int8=None",
                               "profile=x:1x4/8x4/8x4")
    smaller = trtb.plan_build(engine_record(workspace_mb=128), "8.2.1.8")
    assert smaller.settings() == plan.settings()
    wider = trtb.plan_build(engine_record(profiles=[dict(PROFILE, max=[16, 4])]), "8.2.1.8")
    assert wider.settings() != plan.settings()


def test_profile_shapes_cover_every_dynamic_input():
    plan = trtb.plan_build(engine_record(), "8.2.1.8")
    assert trtb.profile_shapes(plan, [("x", (-1, 4))]) == [("x", (1, 4), (8, 4), (8, 4))]
    assert trtb.profile_shapes(plan, [("x", (2, 4))]) == []  # fixed: no profile needed
    with pytest.raises(BundleError) as info:
        trtb.profile_shapes(plan, [("x", (-1, 4)), ("mask", (-1, 7))])
    assert "Input 'mask' has dynamic dims [-1, 7] but the engine record has no optimization " \
           "profile for it" in str(info.value)
    with pytest.raises(BundleError) as info:
        trtb.profile_shapes(plan, [("x", (-1, 5))])
    assert "does not fit the model's input shape [-1, 5]" in str(info.value)


def test_shape_outside_the_profile_is_refused_with_the_range():
    trtb.check_shape_in_profile("x", (8, 4), PROFILE)
    with pytest.raises(InputError) as info:
        trtb.check_shape_in_profile("x", (9, 4), PROFILE)
    text = str(info.value)
    assert "Input tensor: x | Received shape [9, 4]; dim 0 is 9, outside the 1..8" in text
    assert "larger --batch-size" in text and "\n" not in text


def test_layers_to_pin_match_node_names_exactly():
    names = ["/conv1/Conv", "/conv1/Conv_1", "/fc/Gemm", "(Unnamed Layer* 3) [Shuffle]"]
    assert trtb.match_layers(names, ["/conv1/Conv", "/gone/Add"]) == ([0], ["/gone/Add"])


# -- memory before a build -----------------------------------------------------------------

def test_build_memory_estimate_and_advice(tmp_path):
    assert trtb.build_memory_mb(10 << 20, 512) == trtb.LIBRARIES_MB + 30 + 512
    assert trtb.build_memory_mb(1, None) == trtb.LIBRARIES_MB + 3
    assert trtb.memory_advice(1000, {"available": 1500, "swap_free": 0}) is None
    assert trtb.memory_advice(1000, None) is None
    tight = trtb.memory_advice(1400, {"available": 1000, "swap_free": 2000})
    assert tight.startswith("The TensorRT build needs about 1400 MB and 1000 MB is available: "
                            "swap (2000 MB free) may carry the rest, slowly.")
    assert "workspace_mb" in tight
    assert "OOM killer" in trtb.memory_advice(4000, {"available": 1000, "swap_free": 100})
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4059116 kB\nMemFree:          201848 kB\n"
                       "MemAvailable:    1503232 kB\nSwapTotal:       2029564 kB\n"
                       "SwapFree:        2029564 kB\n")
    assert system_memory_mb(str(meminfo)) == {"available": 1468, "swap_free": 1981}
    assert system_memory_mb(str(tmp_path / "none")) is None


# -- the engine cache ----------------------------------------------------------------------

def key(**changes):
    fields = dict(model_sha256="a" * 64, tensorrt="8.2.1.8", gpu="NVIDIA Tegra X1",
                  compute="5.3", settings=("flags=FP16",))
    fields.update(changes)
    return ec.EngineKey(**fields)


def test_key_digest_changes_with_each_field_and_not_with_settings_order():
    base = key()
    for change in ({"model_sha256": "b" * 64}, {"tensorrt": "8.2.1.9"}, {"gpu": "Orin"},
                   {"compute": "8.7"}, {"settings": ("flags=INT8",)}):
        assert key(**change).digest() != base.digest(), change
    assert key(settings=("a=1", "b=2")).digest() == key(settings=("b=2", "a=1")).digest()
    assert len(base.digest()) == 64


def test_cache_round_trip_is_atomic_and_private(tmp_path):
    cache = ec.EngineCache(str(tmp_path / "trt"))
    assert cache.get(key()) is None
    path = cache.put(key(), b"engine-bytes")
    assert cache.get(key()) == b"engine-bytes"
    assert path == cache.engine_path(key()) and os.path.isfile(path)
    names = sorted(os.listdir(cache.engines))
    assert names == sorted([key().digest() + ".engine", key().digest() + ".json"])
    assert os.stat(cache.root).st_mode & 0o777 == 0o700
    record = json.load(open(os.path.join(cache.engines, key().digest() + ".json")))
    assert record["key"]["tensorrt"] == "8.2.1.8" and record["size"] == 12
    assert cache.entries() == [key()]


def test_cache_under_edgeinfer_cache_dir(cache_root):
    assert ec.default_cache_dir() == str(cache_root)
    assert ec.EngineCache().root == str(cache_root)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-record", "other-key", "bad-json"])
def test_damaged_cache_entry_is_a_miss_and_is_removed(tmp_path, damage, caplog):
    cache = ec.EngineCache(str(tmp_path / "trt"))
    cache.put(key(), b"engine-bytes-0123456789")
    engine, record = cache.engine_path(key()), cache.engine_path(key())[:-7] + ".json"
    if damage == "truncate":
        open(engine, "wb").write(b"engine")
    elif damage == "flip":
        open(engine, "wb").write(b"engine-bytes-0123456780")
    elif damage == "no-record":
        os.unlink(record)
    elif damage == "other-key":
        data = json.load(open(record))
        data["key"]["tensorrt"] = "8.0.1.6"
        json.dump(data, open(record, "w"))
    else:
        open(record, "w").write("{")
    with caplog.at_level(logging.WARNING, "edgeinfer.runtime.tensorrt"):
        assert cache.get(key()) is None
    assert "it will be rebuilt" in caplog.text
    assert not os.path.exists(engine) and not os.path.exists(record)


def test_storing_an_engine_drops_the_ones_of_other_tensorrt_versions(tmp_path):
    cache = ec.EngineCache(str(tmp_path / "trt"))
    old = key(tensorrt="8.0.1.6")
    other_model = key(tensorrt="8.0.1.6", model_sha256="c" * 64)
    other_flags = key(settings=("flags=INT8",))
    for k in (old, other_model, other_flags):
        cache.put(k, b"x")
    cache.put(key(), b"new")
    assert sorted(cache.entries()) == sorted([other_model, other_flags, key()])
    assert cache.get(old) is None


def test_timing_cache_per_tensorrt_and_gpu(tmp_path):
    cache = ec.EngineCache(str(tmp_path / "trt"))
    assert cache.read_timing("8.2.1.8", "Tegra X1", "5.3") == b""
    cache.write_timing("8.2.1.8", "Tegra X1", "5.3", b"timings")
    assert cache.read_timing("8.2.1.8", "Tegra X1", "5.3") == b"timings"
    assert cache.read_timing("8.5.2", "Tegra X1", "5.3") == b""
    assert cache.timing_path("8.2.1.8", "a", "5.3") != cache.timing_path("8.2.1.8", "b", "5.3")


def test_unwritable_cache_is_only_a_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = ec.EngineCache(str(blocker / "trt"))
    with pytest.raises(OSError):
        cache.put(key(), b"x")
    with caplog.at_level(logging.WARNING, "edgeinfer.runtime.tensorrt"):
        cache.write_timing("8.2.1", "g", "5.3", b"t")
    assert "Cannot store TensorRT's timing cache" in caplog.text


# -- CUDA bindings and the runtime choice --------------------------------------------------

def test_cuda_binding_prefers_cuda_python_then_pycuda():
    def having(*names):
        return lambda module: module in names
    assert trtb.cuda_binding_name(having("cuda.bindings.runtime")) == "cuda-python"
    assert trtb.cuda_binding_name(having("cuda.cudart", "pycuda.driver")) == "cuda-python"
    assert trtb.cuda_binding_name(having("pycuda.driver")) == "pycuda"
    assert trtb.cuda_binding_name(having()) is None


def test_no_cuda_binding_says_which_to_install():
    with pytest.raises(MissingDependency) as info:
        trtb.cuda_binding(0, available=lambda module: False)
    text = str(info.value)
    assert text.startswith("No CUDA binding for Python is installed: the TensorRT runner needs "
                           "cuda-python or pycuda")
    for fragment in ("pip install cuda-python", "pip install pycuda", "JetPack 4.6",
                     "edgeinfer[tensorrt]"):
        assert fragment in text
    assert "\n" not in text


def test_runtime_choice():
    opts = trtb.check_options(None)
    assert trtb.choose_runtime(opts, True, []) == "tensorrt"
    assert trtb.choose_runtime(opts, False, ["TensorrtExecutionProvider",
                                             "CPUExecutionProvider"]) == "onnxruntime"
    assert trtb.choose_runtime(opts, False, ["CUDAExecutionProvider"]) == "onnxruntime"
    assert trtb.choose_runtime(trtb.check_options({"device": "cpu"}), True, []) == "onnxruntime"
    with pytest.raises(MissingDependency) as info:
        trtb.choose_runtime(opts, False, ["CPUExecutionProvider"])
    assert "python3-libnvinfer" in str(info.value) and "Jetson Zoo" in str(info.value)


# -- ONNX Runtime's TensorRT/CUDA providers ------------------------------------------------

def test_ort_tensorrt_provider_options_follow_the_engine_record():
    opts = trtb.check_options(None)
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = trtb.ort_providers(engine_record(), available, "/c/ort", "1.16.3", opts)
    name, trt_options = providers[0]
    assert name == "TensorrtExecutionProvider"
    assert trt_options == {
        "device_id": 0, "trt_fp16_enable": True, "trt_int8_enable": False,
        "trt_max_workspace_size": 1024 << 20, "trt_engine_cache_enable": True,
        "trt_engine_cache_path": "/c/ort", "trt_timing_cache_enable": True,
        "trt_profile_min_shapes": "x:1x4", "trt_profile_opt_shapes": "x:8x4",
        "trt_profile_max_shapes": "x:8x4"}
    assert providers[1:] == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    # ONNX Runtime before 1.15 (the Jetson Zoo's wheels for JetPack 4.6) lacks the timing
    # cache and explicit profile options, and refuses unknown ones.
    old = trtb.ort_providers(engine_record(flags=["int8"]), available, "/c", "1.11.0", opts)[0][1]
    assert "trt_timing_cache_enable" not in old and "trt_profile_min_shapes" not in old
    assert old["trt_int8_enable"] is True and old["trt_fp16_enable"] is False
    dla = trtb.ort_providers(engine_record(), available, None, "1.16",
                             trtb.check_options({"device": "dla:0"}))[0][1]
    assert dla["trt_dla_enable"] is True and dla["trt_dla_core"] == 0
    assert "trt_engine_cache_enable" not in dla


def test_ort_path_needs_a_gpu_provider():
    opts = trtb.check_options(None)
    assert trtb.ort_providers(engine_record(), ["CUDAExecutionProvider", "CPUExecutionProvider"],
                              None, "1.16", opts) == [
        ("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    with pytest.raises(BackendError) as info:
        trtb.ort_providers(engine_record(), ["CPUExecutionProvider"], None, "1.16", opts)
    assert "no TensorRT or CUDA execution provider (it has CPUExecutionProvider)" in \
        str(info.value)
    assert trtb.ort_providers(engine_record(), [], None, "1.16",
                              trtb.check_options({"device": "cpu"})) == ["CPUExecutionProvider"]


def test_tensorrt_bundle_runs_through_onnxruntime_on_the_cpu(trt_bundle, tiny_model, cache_root):
    bundle = Bundle.open(trt_bundle())
    runner = get_backend("tensorrt").load(ModelFiles(bundle, "model.onnx"), {"device": "cpu"})
    x = np.random.RandomState(1).rand(3, 4).astype(np.float32)
    y, z = reference(tiny_model, x)
    out = runner.run({"x": x})
    np.testing.assert_allclose(out["y"], y, atol=1e-5)
    np.testing.assert_allclose(out["z"], z, atol=1e-5)
    runner.close()


def test_backend_is_registered_and_reports_why_not_here(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    backend = get_backend("tensorrt")
    ok, why = backend.available()
    assert backend.name == "tensorrt"
    assert ok is False and "tensorrt is not installed" in why


def test_tensorrt_bundle_on_a_machine_without_tensorrt_names_it(trt_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendError) as info:
        edgeinfer.load(trt_bundle())
    text = str(info.value)
    assert "needs the tensorrt backend, which is not usable here" in text
    assert "\n" not in text


def test_openvino_bundle_on_a_tensorrt_only_device_names_both(fake, tmp_path, make_manifest,
                                                              monkeypatch):
    fake("8.2.1.8")
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    nano = JetsonInfo("NVIDIA Jetson Nano Developer Kit", "32.7.1", None, None, "jetson-nano",
                      None)
    monkeypatch.setattr("edgeinfer.jetson.read_jetson", lambda root="/": nano)
    path = tmp_path / "intel.eib"
    Bundle.write(str(path), make_manifest(
        model="model.xml", target={"backend": "openvino", "profile": "intel-cpu",
                                   "min_backend_version": "2024.0"}),
        {"model.xml": b"<net/>", "model.bin": b""})
    with pytest.raises(BackendError) as info:
        edgeinfer.load(str(path))
    text = str(info.value)
    assert "needs the openvino backend, which is not usable here: openvino is not installed" in \
        text
    assert text.endswith("Note: install it with `pip install edgeinfer[openvino]`; or convert "
                         "the model again for what this machine has: tensorrt 8.2.1.8 "
                         "(--target jetson-nano).")
    assert "\n" not in text


# -- the backend's TensorRT and CUDA calls, against the stand-in ---------------------------

@pytest.mark.parametrize("version, binding, api", [
    ("8.2.1.8", "cuda-python", "bindings"),   # Jetson Nano, JetPack 4.6.1 (cuda-python 11.x)
    ("8.2.1.8", "pycuda", "bindings"),        # Jetson Nano, the usual pycuda
    ("8.4.1.5", "pycuda", "bindings"),        # JetPack 5.0
    ("8.6.2", "cuda-python", "named"),        # JetPack 6.0
    ("10.3.0.30", "cuda-python", "named"),    # JetPack 6.1 / 6.2
])
def test_build_cache_and_run(fake, trt_bundle, tiny_model, cache_root, version, binding, api,
                             caplog):
    trt, cuda = fake(version, binding)
    path = trt_bundle()
    x = np.random.RandomState(0).rand(3, 4).astype(np.float32)
    y, z = reference(tiny_model, x)
    with caplog.at_level(logging.INFO, "edgeinfer.runtime.tensorrt"):
        with edgeinfer.load(path) as session:
            out = session.run({"x": x})
            np.testing.assert_allclose(out["y"], y, atol=1e-5)
            np.testing.assert_allclose(out["z"], z, atol=1e-5)
            # Another batch size within the profile re-shapes; outputs match again.
            x5 = np.random.RandomState(1).rand(5, 4).astype(np.float32)
            np.testing.assert_allclose(session.run({"x": x5}, ["z"])["z"],
                                       reference(tiny_model, x5)[1], atol=1e-5)
            runner = session._runner
            assert (runner.api, runner.cuda, runner.tensorrt) == (api, binding, version)
    assert "Building the TensorRT engine" in caplog.text and "needs about" in caplog.text
    assert "Fake Tegra X1 (sm_53)" in caplog.text
    builds = events(trt, "build")
    assert len(builds) == 1
    header = builds[0]
    assert header["flags"] == ["FP16"] and header["workspace"] == 1024 << 20
    assert header["profile"] == {"x": [[1, 4], [8, 4], [8, 4]]}
    assert header["monitor"] is (version.startswith("10."))
    assert [shape for shape in events(trt, "execute")] == [{"x": (3, 4)}, {"x": (5, 4)}]
    # What the runner allocated it freed; pycuda's contexts are balanced.
    if binding == "cuda-python":
        assert cuda.live == set()
    else:
        assert cuda.live == set() and cuda.depth == [0]
    engines = os.listdir(str(cache_root / "engines"))
    assert len([n for n in engines if n.endswith(".engine")]) == 1
    assert len(os.listdir(str(cache_root / "timing"))) == 1
    # The second load deserializes the cached engine: no build.
    with edgeinfer.load(path) as session:
        np.testing.assert_allclose(session.run({"x": x})["y"], y, atol=1e-5)
    assert len(events(trt, "build")) == 1 and events(trt, "deserialize") == [version, version]


def test_input_outside_the_profile_never_reaches_tensorrt(fake, trt_bundle, cache_root):
    trt, _ = fake("8.6.2")
    with edgeinfer.load(trt_bundle()) as session:
        with pytest.raises(InputError) as info:
            session.run({"x": np.zeros((9, 4), np.float32)})
    assert "outside the 1..8 the TensorRT engine was built for" in str(info.value)
    assert events(trt, "execute") == []


def test_engine_from_another_tensorrt_version_is_rebuilt(fake, trt_bundle, tiny_model,
                                                          cache_root, caplog):
    path = trt_bundle()
    trt82, _ = fake("8.2.1.8")
    edgeinfer.load(path).close()
    # JetPack upgraded: a new TensorRT builds its own engine and drops the old one.
    trt85, _ = fake("8.5.2.2")
    x = np.ones((2, 4), np.float32)
    with edgeinfer.load(path) as session:
        np.testing.assert_allclose(session.run({"x": x})["y"], reference(tiny_model, x)[0],
                                   atol=1e-5)
    assert len(events(trt85, "build")) == 1
    entries = ec.EngineCache(str(cache_root)).entries()
    assert [e.tensorrt for e in entries] == ["8.5.2.2"]
    # An engine TensorRT refuses under the right key (copied from another board, or a
    # plan of another build of the same version) is rebuilt, not fatal.
    cache = ec.EngineCache(str(cache_root))
    stale = fake_tensorrt.MAGIC + json.dumps({"version": "8.2.1.8"}).encode() + b"\0model"
    cache.put(entries[0], stale)
    with caplog.at_level(logging.WARNING, "edgeinfer.runtime.tensorrt"):
        with edgeinfer.load(path) as session:
            session.run({"x": x})
    assert "cannot load the cached engine" in caplog.text and "rebuilding it" in caplog.text
    assert events(trt85, "refused") == ["built by TensorRT 8.2.1.8"]
    assert len(events(trt85, "build")) == 2
    assert fake_tensorrt.engine_header(cache.get(entries[0]))["version"] == "8.5.2.2"


def test_corrupt_cached_engine_is_rebuilt(fake, trt_bundle, cache_root, caplog):
    trt, _ = fake("8.6.2")
    path = trt_bundle()
    edgeinfer.load(path).close()
    engine = [os.path.join(str(cache_root / "engines"), n)
              for n in os.listdir(str(cache_root / "engines")) if n.endswith(".engine")][0]
    with open(engine, "r+b") as handle:
        handle.seek(20)
        handle.write(b"\xff\xff")
    with caplog.at_level(logging.WARNING, "edgeinfer.runtime.tensorrt"):
        edgeinfer.load(path).close()
    assert "do not match its record" in caplog.text
    assert len(events(trt, "build")) == 2


def test_no_cache_dir_builds_every_time(fake, trt_bundle, cache_root):
    trt, _ = fake("8.6.2")
    path = trt_bundle()
    for _ in range(2):
        edgeinfer.load(path, backend_options={"cache_dir": None}).close()
    assert len(events(trt, "build")) == 2 and not os.path.exists(str(cache_root))


def test_workspace_api_and_device_profile_on_old_tensorrt(fake, trt_bundle, cache_root,
                                                          monkeypatch):
    trt, _ = fake("8.2.1.8")
    nano = JetsonInfo("NVIDIA Jetson Nano Developer Kit", "32.7.1", None, None, "jetson-nano",
                      None)
    monkeypatch.setattr(trtb, "read_jetson", lambda: nano)
    edgeinfer.load(trt_bundle()).close()
    # TensorRT 8.2 has no memory pools: max_workspace_size, capped to the Nano's 512 MiB.
    assert events(trt, "build")[0]["workspace"] == 512 << 20


def test_fp32_pins_reach_the_named_layers(fake, trt_bundle, tiny_model, cache_root, caplog):
    model = onnx.load_from_string(tiny_model.data)
    for node, name in zip(model.graph.node, ("/fc/MatMul", "/fc/Add", "/act/Relu")):
        node.name = name
    record = engine_record(fp32_layers=[{"name": "/fc/Add", "op_type": "Add"},
                                        {"name": "/gone/Conv", "op_type": "Conv"}])
    trt, _ = fake("8.2.1.8")
    with caplog.at_level(logging.WARNING, "edgeinfer.runtime.tensorrt"):
        edgeinfer.load(trt_bundle(record, model=model.SerializeToString())).close()
    header = events(trt, "build")[0]
    assert header["pinned"] == {"/fc/Add": ["DataType.FLOAT"]}
    assert header["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert "TensorRT has no layer named /gone/Conv" in caplog.text


def test_dla_core_on_tensorrt_8_5(fake, trt_bundle, cache_root):
    trt, _ = fake("8.5.2.2")
    edgeinfer.load(trt_bundle(), device="dla:0").close()
    header = events(trt, "build")[0]
    assert header["dla"] == 0 and header["flags"] == ["FP16", "GPU_FALLBACK"]


def test_int64_inputs_run_as_int32_on_tensorrt_8(fake, tmp_path, make_manifest, int_model,
                                                 cache_root):
    path = tmp_path / "int.eib"
    manifest = make_manifest(
        target={"backend": "tensorrt", "profile": "jetson-nano", "min_backend_version": "8.0"},
        inputs=[{"name": "n", "dtype": "int64", "shape": ["batch", 2]}],
        outputs=[{"name": "m", "dtype": "int64", "shape": ["batch", 2]}],
        engine=engine_record(flags=[], profiles=[{"input": "n", "min": [1, 2], "opt": [4, 2],
                                                  "max": [4, 2]}]))
    Bundle.write(str(path), manifest, {"model.onnx": int_model.read_bytes()})
    fake("8.2.1.8")
    with edgeinfer.load(str(path)) as session:
        out = session.run({"n": np.array([[1, -2], [3, 40000]], np.int64)})
        assert out["m"].dtype == np.int64
        np.testing.assert_array_equal(out["m"], [[2, -4], [6, 80000]])
        with pytest.raises(InputError) as info:
            session.run({"n": np.array([[2 ** 40, 0]], np.int64)})
    assert "Received values outside int32" in str(info.value)


def test_implicit_int8_passes_the_reheaded_cache_to_the_calibrator(fake, trt_bundle,
                                                                   cache_root):
    qdq = qdq_matmul()
    cache = cc.format_cache({"x": 0.01, "xw": 0.02}, "8.5.2", "EntropyCalibration2")
    implicit = {"calibration_cache": "calibration.cache", "algorithm": "EntropyCalibration2",
                "header": "TRT-8502-EntropyCalibration2", "graph": "..."}
    record = engine_record(flags=["int8"], quantization="explicit", implicit=implicit)
    trt, _ = fake("8.2.1.8")
    path = trt_bundle(record, model=qdq.SerializeToString(), precision="int8",
                      files={"calibration.cache": cache.encode()})
    edgeinfer.load(path, backend_options={"int8": "implicit"}).close()
    edgeinfer.load(path).close()  # explicit: another engine, another key
    first, second = events(trt, "build")
    assert first["calibration"] == "TRT-8201-EntropyCalibration2"
    assert first["flags"] == ["INT8"] and second["calibration"] is None


def test_no_cuda_binding_installed_fails_before_any_build(fake, trt_bundle, cache_root):
    trt, _ = fake("8.2.1.8", binding=None)
    with pytest.raises(MissingDependency) as info:
        edgeinfer.load(trt_bundle())
    assert "needs cuda-python or pycuda" in str(info.value)
    assert events(trt, "build") == []


def test_parser_and_build_failures_are_one_line_errors(fake, trt_bundle, tiny_model,
                                                       cache_root):
    trt, _ = fake("8.6.2")
    model = onnx.load_from_string(tiny_model.data)
    model.graph.node[2].op_type = "Unsupported"
    with pytest.raises(BackendError) as info:
        edgeinfer.load(trt_bundle(model=model.SerializeToString(), name="bad.eib"))
    text = str(info.value)
    assert text.startswith("TensorRT 8.6.2 cannot parse the model: No importer registered "
                           "for op: Unsupported") and "\n" not in text
    # A dynamic input without a profile is the bundle's fault, named before building.
    with pytest.raises(BundleError) as info:
        edgeinfer.load(trt_bundle(engine_record(profiles=[]), name="noprofile.eib"))
    assert "Input 'x' has dynamic dims [-1, 4]" in str(info.value)


def qdq_matmul():
    """x[batch,4] -> Q -> DQ -> MatMul(W -> Q -> DQ) -> xw -> Add(b) -> z -> Relu -> y."""
    model, W, b = models.tiny()
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zp")
    wscale = numpy_helper.from_array(np.full(3, 0.02, np.float32), "ws")
    wzero = numpy_helper.from_array(np.zeros(3, np.int8), "wzp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"]),
             helper.make_node("QuantizeLinear", ["W", "ws", "wzp"], ["wq"], axis=1),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["wdq"], axis=1),
             helper.make_node("MatMul", ["xdq", "wdq"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", list(model.graph.input), list(model.graph.output),
                              list(model.graph.initializer) + [scale, zero, wscale, wzero])
    qdq = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    qdq.ir_version = 7
    return qdq


def test_strip_qdq_gives_the_fp32_graph():
    import onnxruntime as ort
    qdq = qdq_matmul()
    stripped = onnx.load_from_string(trtb.strip_qdq(qdq.SerializeToString()))
    onnx.checker.check_model(stripped)
    assert [n.op_type for n in stripped.graph.node] == ["MatMul", "Add", "Relu"]
    assert list(stripped.graph.node[0].input) == ["x", "W"]
    x = np.random.RandomState(2).rand(2, 4).astype(np.float32)
    model, W, b = models.tiny()
    got = ort.InferenceSession(stripped.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(["z"], {"x": x})[0]
    np.testing.assert_allclose(got, x @ W + b, atol=1e-5)


# -- the real thing (a Jetson) -------------------------------------------------------------

@pytest.mark.tensorrt
def test_real_tensorrt_builds_caches_and_runs(trt_bundle, tiny_model, cache_root):
    import tensorrt
    path = trt_bundle()
    x = np.random.RandomState(0).rand(3, 4).astype(np.float32)
    y, z = reference(tiny_model, x)
    for _ in range(2):  # the first builds the engine, the second loads it from the cache
        with edgeinfer.load(path) as session:
            out = session.run({"x": x})
            # FP16 engine: half-precision rounding of values around 1.
            np.testing.assert_allclose(out["y"], y, atol=2e-2)
            np.testing.assert_allclose(out["z"], z, atol=2e-2)
            assert session._runner.api == trtb.tensor_api(tensorrt.__version__)
    entries = ec.EngineCache(str(cache_root)).entries()
    assert len(entries) == 1 and entries[0].tensorrt == tensorrt.__version__


@pytest.mark.tensorrt
def test_real_tensorrt_rebuilds_a_damaged_engine(trt_bundle, cache_root):
    path = trt_bundle()
    edgeinfer.load(path).close()
    cache = ec.EngineCache(str(cache_root))
    entry = cache.entries()[0]
    cache.put(entry, b"this is not a TensorRT plan")
    with edgeinfer.load(path) as session:
        session.run({"x": np.ones((1, 4), np.float32)})
    assert cache.get(entry) != b"this is not a TensorRT plan"
