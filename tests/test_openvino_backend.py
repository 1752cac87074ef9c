"""The OpenVINO backend with real OpenVINO: outputs and specs against ONNX Runtime, input
checks, bad bundles and devices, options, the model cache, threads and output ownership,
and throughput mode (``Session.run_many`` over OpenVINO's AsyncInferQueue).

Every model comes from the catalogue (``tests/models.py``) or is the demo model, and is
converted to IR here the way the OpenVINO recipe does it: ``openvino.convert_model`` then
``openvino.save_model`` (FP32 weights kept, ONNX specs recorded with ``record_specs``).
The reference is ONNX Runtime on the same ONNX model.  The OpenVINO model cache goes to
a temporary folder (``EDGEINFER_CACHE_DIR``), never the user's.

The models, inputs -> outputs::

    tiny    x: float32[batch, 4]                      -> y, z: float32[batch, 3]
    ints    n: int64[batch, 2]                        -> m: int64[batch, 2]
    tokens  input_ids, attention_mask: int64[batch, seq] -> logits: float32[batch, 4]
    mlp     x: float32[batch, 16]                     -> y: float32[batch, 10]
    digits  input: float32[batch, 1, 8, 8] (a CNN)    -> logits: float32[batch, 10]
"""

import json
import os
import subprocess
import sys
import threading
from collections import namedtuple

import numpy as np
import onnxruntime
import pytest

import edgeinfer
from edgeinfer.bundle import Bundle, sha256_of
from edgeinfer.errors import BackendError, BundleError, InputError, UsageError
from edgeinfer.runtime.backends import LocalFiles, get_backend
from edgeinfer.runtime.backends.ort import OrtBackend

from . import models
from .conftest import TINY_IR_VERSION, TINY_OPSET, read_members, tiny_manifest, write_zip

ATOL = 1e-5  # FP32 IR against FP32 ONNX Runtime

Case = namedtuple("Case", "name onnx xml bin ov_bundle ort_bundle specs feeds")


@pytest.fixture(scope="module")
def ov():
    return pytest.importorskip("openvino")


@pytest.fixture(scope="module", autouse=True)
def cache_root(tmp_path_factory):
    """Every load in this module caches under a temporary folder."""
    root = tmp_path_factory.mktemp("edgeinfer-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEINFER_CACHE_DIR", str(root))
        yield root / "openvino"


def make_ir(ov, onnx_path, folder, record=True):
    """ONNX -> IR (model.xml + model.bin) as the recipe does it; returns the two paths."""
    from edgeinfer.runtime.backends.openvino import record_specs
    model = ov.convert_model(str(onnx_path))
    if record:
        ort = OrtBackend().load(LocalFiles({"model.onnx": str(onnx_path)}, "model.onnx"))
        record_specs(model, ort.inputs, ort.outputs)
    os.makedirs(str(folder), exist_ok=True)
    xml = os.path.join(str(folder), "model.xml")
    ov.save_model(model, xml, compress_to_fp16=False)
    return xml, xml[:-4] + ".bin"


def ov_manifest(name, specs, **overrides):
    inputs, outputs = specs
    manifest = tiny_manifest(
        name=name, model="model.xml",
        target={"backend": "openvino", "profile": None, "min_backend_version": "2023.0"},
        inputs=[s.to_dict() for s in inputs], outputs=[s.to_dict() for s in outputs])
    manifest.update(overrides)
    return manifest


def write_ov_bundle(path, name, specs, xml, weights):
    Bundle.write(str(path), ov_manifest(name, specs), {"model.xml": xml, "model.bin": weights})
    return path


def _float(shape, seed):
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


def _feeds(name, batch, seed=0):
    rng = np.random.RandomState(seed)
    if name == "tiny":
        return {"x": _float((batch, 4), seed)}
    if name == "ints":
        return {"n": rng.randint(-100, 100, size=(batch, 2)).astype(np.int64)}
    if name == "tokens":
        return {"input_ids": rng.randint(0, 50, size=(batch, 5)).astype(np.int64),
                "attention_mask": rng.randint(0, 2, size=(batch, 5)).astype(np.int64)}
    if name == "mlp":
        return {"x": _float((batch, 16), seed)}
    return {"input": _float((batch, 1, 8, 8), seed)}


@pytest.fixture(scope="module")
def cases(ov, tmp_path_factory, repo_root):
    """name -> Case: the ONNX model, its IR, an OpenVINO and an ONNX Runtime bundle."""
    folder = tmp_path_factory.mktemp("ov-cases")
    onnx_models = {
        "tiny": models.tiny(TINY_OPSET, TINY_IR_VERSION)[0],
        "ints": models.int_add(TINY_OPSET, TINY_IR_VERSION),
        "tokens": models.token_model(),
        "mlp": models.mlp(),
    }
    paths = dict((n, models.save(m, folder / (n + ".onnx"))) for n, m in onnx_models.items())
    paths["digits"] = str(repo_root / "models" / "digits_cnn.onnx")
    found = {}
    for name, onnx_path in paths.items():
        ort = OrtBackend().load(LocalFiles({"model.onnx": onnx_path}, "model.onnx"))
        specs = (ort.inputs, ort.outputs)
        xml, weights = make_ir(ov, onnx_path, folder / name)
        ov_bundle = write_ov_bundle(folder / (name + "-ov.eib"), name, specs, xml, weights)
        ort_manifest = ov_manifest(name, specs, model="model.onnx", target={
            "backend": "onnxruntime", "profile": None, "min_backend_version": "1.7"})
        ort_bundle = folder / (name + "-ort.eib")
        with open(onnx_path, "rb") as handle:
            Bundle.write(str(ort_bundle), ort_manifest, {"model.onnx": handle.read()})
        found[name] = Case(name, onnx_path, xml, weights, ov_bundle, ort_bundle, specs,
                           lambda batch, seed=0, _n=name: _feeds(_n, batch, seed))
    return found


@pytest.fixture(scope="module")
def tiny_ov(cases):
    """A session on the tiny model's OpenVINO bundle (LATENCY hint, one request)."""
    session = edgeinfer.load(str(cases["tiny"].ov_bundle))
    yield session
    session.close()


def _relu_affine(x, tiny_model):
    z = x.astype(np.float64) @ tiny_model.W + tiny_model.b
    return np.maximum(z, 0), z


def _bare_ort(onnx_path, feeds):
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _assert_equal_outputs(got, expected):
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[name], value, rtol=0, atol=ATOL, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


# -- outputs and specs against ONNX Runtime --------------------------------------------------

NAMES = ["tiny", "ints", "tokens", "mlp", "digits"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 3])
def test_outputs_equal_onnxruntime_on_the_same_model(cases, name, batch):
    case = cases[name]
    feeds = case.feeds(batch, seed=batch)
    with edgeinfer.load(str(case.ov_bundle)) as session:
        got = session.run(feeds)
    _assert_equal_outputs(got, _bare_ort(case.onnx, feeds))


@pytest.mark.parametrize("name", NAMES)
def test_specs_equal_the_ort_backends(cases, name):
    # Issue 3, requirement 4: same names, dtypes and shapes (symbolic dims included).
    case = cases[name]
    with edgeinfer.load(str(case.ov_bundle)) as ov_session, \
            edgeinfer.load(str(case.ort_bundle)) as ort_session:
        assert ov_session._runner.inputs == ort_session._runner.inputs
        assert ov_session._runner.outputs == ort_session._runner.outputs
        assert ov_session.inputs == ort_session.inputs
        assert repr(ov_session).endswith("on openvino>")
    local = get_backend("openvino").load(LocalFiles({"model.xml": case.xml,
                                                     "model.bin": case.bin}, "model.xml"))
    try:
        assert (local.inputs, local.outputs) == (list(case.specs[0]), list(case.specs[1]))
    finally:
        local.close()


def test_ir_without_recorded_specs_keeps_names_and_dtypes(ov, cases, tmp_path):
    # IR drops dim names; unannotated, a dynamic dim is None for LocalFiles, and a bundle
    # takes the names from its manifest.
    case = cases["tokens"]
    xml, weights = make_ir(ov, case.onnx, tmp_path / "plain", record=False)
    runner = get_backend("openvino").load(LocalFiles({"model.xml": xml, "model.bin": weights},
                                                     "model.xml"))
    ids = runner.inputs[0]
    assert (ids.name, ids.dtype, ids.shape) == ("input_ids", "int64", (None, None))
    assert [(s.name, s.dtype, s.shape) for s in runner.outputs] == [("logits", "float32",
                                                                     (None, 4))]
    runner.close()
    path = write_ov_bundle(tmp_path / "plain.eib", "tokens", case.specs, xml, weights)
    with edgeinfer.load(str(path)) as session:
        assert session._runner.inputs == list(case.specs[0])
        assert session._runner.outputs == list(case.specs[1])


def test_tiny_model_computes_relu_of_affine(tiny_ov, tiny_model):
    x = _float((4, 4), 11)
    got = tiny_ov.run({"x": x})
    y, z = _relu_affine(x, tiny_model)
    np.testing.assert_allclose(got["z"], z, rtol=0, atol=ATOL)
    np.testing.assert_allclose(got["y"], y, rtol=0, atol=ATOL)


def test_output_subset_and_order(tiny_ov):
    x = _float((2, 4), 3)
    both = tiny_ov.run({"x": x})
    only = tiny_ov.run({"x": x}, outputs=["z", "y"])
    assert list(only) == ["z", "y"]
    np.testing.assert_array_equal(only["z"], both["z"])
    np.testing.assert_array_equal(only["y"], both["y"])


# -- the same input validation as ONNX Runtime -----------------------------------------------

BAD_FEEDS = [
    ("tiny", {"image": np.zeros((1, 4), np.float32)}),                 # unknown + missing
    ("tiny", {}),                                                       # missing
    ("tiny", {"x": np.zeros((4,), np.float32)}),                        # rank
    ("tiny", {"x": np.zeros((1, 5), np.float32)}),                      # fixed dim
    ("tiny", {"x": np.ones((1, 4), bool)}),                             # bool refused
    ("tiny", {"x": [[1.0, 2.0, 3.0, 4.0], [1.0]]}),                     # ragged
    ("ints", {"n": np.ones((1, 2), np.float32)}),                       # float -> int refused
    ("digits", {"input": np.zeros((1, 1, 9, 8), np.float32)}),
    ("tokens", {"input_ids": np.zeros((1, 5), np.int64)}),              # one of two missing
]


@pytest.mark.parametrize("name, feeds", BAD_FEEDS)
def test_bad_inputs_raise_what_onnxruntime_sessions_raise(cases, name, feeds):
    case = cases[name]
    messages = []
    for path in (case.ov_bundle, case.ort_bundle):
        with edgeinfer.load(str(path)) as session, pytest.raises(InputError) as info:
            session.run(feeds)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_same_kind_dtypes_are_converted(tiny_ov, cases):
    x = np.arange(8).reshape(2, 4)
    expected = tiny_ov.run({"x": x.astype(np.float32)})
    for dtype in (np.float64, np.int32, np.uint8):
        got = tiny_ov.run({"x": x.astype(dtype)})
        np.testing.assert_array_equal(got["y"], expected["y"])
    with edgeinfer.load(str(cases["ints"].ov_bundle)) as ints:
        got = ints.run({"n": np.array([[1, 2]], np.int32)})["m"]
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [[2, 4]])


# -- bad bundles -----------------------------------------------------------------------------

@pytest.mark.parametrize("member", ["model.xml", "model.bin"])
def test_tampered_ir_file_is_a_bundle_error(cases, tmp_path, member):
    members = read_members(cases["tiny"].ov_bundle)
    data = bytearray(members[member])
    data[len(data) // 2] ^= 0x01
    members[member] = bytes(data)
    path = write_zip(tmp_path / "tampered.eib", list(members.items()))
    with pytest.raises(BundleError) as info:
        edgeinfer.load(str(path))
    assert "{!r} does not match its sha256".format(member) in str(info.value)
    # Unverified on open, it is still caught when the IR is extracted.
    with pytest.raises(BundleError) as info:
        edgeinfer.load(str(path), verify=False,
                       backend_options={"cache_dir": str(tmp_path / "fresh-cache")})
    assert "{!r} does not match its sha256".format(member) in str(info.value)
    assert os.listdir(str(tmp_path / "fresh-cache" / "ir")) == []  # nothing half-written


def test_ir_member_missing_from_the_archive(cases, tmp_path):
    members = read_members(cases["tiny"].ov_bundle)
    del members["model.bin"]
    path = write_zip(tmp_path / "lacking.eib", list(members.items()))
    with pytest.raises(BundleError, match="lacks 'model.bin'"):
        edgeinfer.load(str(path))


def test_bundle_without_the_weights_file(cases, tmp_path):
    case = cases["tiny"]
    path = tmp_path / "no-bin.eib"
    Bundle.write(str(path), ov_manifest("tiny", case.specs), {"model.xml": case.xml})
    with pytest.raises(BundleError) as info:
        edgeinfer.load(str(path))
    assert "holds the IR 'model.xml' but not its weights 'model.bin'" in str(info.value)


def test_ir_that_openvino_refuses(cases, tmp_path):
    path = tmp_path / "junk.eib"
    Bundle.write(str(path), ov_manifest("tiny", cases["tiny"].specs),
                 {"model.xml": b"<net>not an IR</net>", "model.bin": b"\0" * 8})
    with pytest.raises(BackendError) as info:
        edgeinfer.load(str(path))
    assert "OpenVINO cannot compile 'model.xml' for CPU" in str(info.value)


def test_local_files_without_weights(cases):
    with pytest.raises(BackendError, match="without its weights file 'model.bin'"):
        get_backend("openvino").load(LocalFiles({"model.xml": cases["tiny"].xml}, "model.xml"))


# -- devices ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device, missing", [
    ("GPU", "'GPU' is not present"), ("gpu", "'GPU' is not present"),
    ("NPU", "'NPU' is not present"), ("HETERO:GPU,CPU", "'GPU' is not present"),
    ("MULTI:GPU,NPU", "'GPU', 'NPU' are not present"), ("AUTO:GPU,CPU", "'GPU' is not present"),
])
def test_absent_device_names_the_devices_there(ov, cases, device, missing):
    available = ov.Core().available_devices
    if "GPU" in available or "NPU" in available:
        pytest.skip("this machine has a GPU or NPU")  # the case is about a CPU-only box
    with pytest.raises(BackendError) as info:
        edgeinfer.load(str(cases["tiny"].ov_bundle), device=device)
    message = str(info.value)
    assert missing in message
    assert "Available devices: {};".format(", ".join(available)) in message
    assert info.value.exit_code == 1


@pytest.mark.parametrize("device", ["CPU", "cpu", "AUTO", "AUTO:CPU", "MULTI:CPU"])
def test_present_devices_run(cases, tiny_model, device):
    x = _float((2, 4), 5)
    with edgeinfer.load(str(cases["tiny"].ov_bundle), device=device) as session:
        got = session.run({"x": x})
    np.testing.assert_allclose(got["y"], _relu_affine(x, tiny_model)[0], rtol=0, atol=ATOL)


def test_unknown_virtual_device(cases):
    with pytest.raises(UsageError, match="Unknown OpenVINO device 'CLOUD:CPU'"):
        edgeinfer.load(str(cases["tiny"].ov_bundle), device="CLOUD:CPU")


def test_device_shortcut_on_onnxruntime_bundles(cases, tiny_bundle):
    for device in ("cpu", "CPU"):
        with edgeinfer.load(str(tiny_bundle), device=device) as session:
            assert session.run({"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 3)
    with pytest.raises(BackendError) as info:
        edgeinfer.load(str(tiny_bundle), device="NPU")
    assert "ONNX Runtime has no device 'NPU'" in str(info.value)
    assert "CPUExecutionProvider" in str(info.value)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match="lacks execution provider.*CUDAExecutionProvider"):
            edgeinfer.load(str(tiny_bundle), device="cuda")


def test_device_and_options_must_agree(cases):
    path = str(cases["tiny"].ov_bundle)
    with pytest.raises(UsageError, match="disagrees with backend_options"):
        edgeinfer.load(path, device="CPU", backend_options={"device": "AUTO"})
    with edgeinfer.load(path, device="cpu", backend_options={"device": "CPU"}) as session:
        assert session._runner.device == "CPU"
    with pytest.raises(UsageError, match="device must be a device name"):
        edgeinfer.load(path, {"device": "CPU"})


# -- options ---------------------------------------------------------------------------------

def test_unknown_option_lists_the_valid_ones(cases):
    with pytest.raises(UsageError) as info:
        edgeinfer.load(str(cases["tiny"].ov_bundle), backend_options={"threads": 2})
    message = str(info.value)
    assert "Unknown openvino option(s): threads." in message
    assert ("Valid options: cache_dir, device, inference_threads, num_streams, "
            "performance_hint.") in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("options, fragment", [
    ({"performance_hint": "FAST"}, "Unknown performance_hint 'FAST'"),
    ({"num_streams": 0}, "num_streams must be a whole number >= 1"),
    ({"num_streams": "many"}, "num_streams must be a whole number >= 1"),
    ({"inference_threads": -1}, "inference_threads must be a whole number >= 0"),
    ({"inference_threads": 1.5}, "inference_threads must be a whole number >= 0"),
    ({"device": 5}, "OpenVINO device must be a name"),
    ({"cache_dir": 5}, "cache_dir must be a folder path or None"),
])
def test_bad_option_values(cases, options, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        edgeinfer.load(str(cases["tiny"].ov_bundle), backend_options=options)


def test_options_reach_openvino(cases, tiny_model):
    options = {"performance_hint": "throughput", "num_streams": 2, "inference_threads": 2}
    x = _float((3, 4), 8)
    with edgeinfer.load(str(cases["tiny"].ov_bundle), backend_options=options) as session:
        compiled = session._runner.compiled_model
        assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("THROUGHPUT")
        assert int(compiled.get_property("NUM_STREAMS")) == 2
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 2
        assert len(session._runner._slots) == 2  # one request per stream
        got = session.run({"x": x})
    np.testing.assert_allclose(got["y"], _relu_affine(x, tiny_model)[0], rtol=0, atol=ATOL)
    with edgeinfer.load(str(cases["tiny"].ov_bundle), backend_options={
            "inference_threads": 1, "num_streams": "auto"}) as session:
        assert int(session._runner.compiled_model.get_property("INFERENCE_NUM_THREADS")) == 1


# -- the model cache -------------------------------------------------------------------------

def _ir_folder(root, bundle_path):
    from edgeinfer.runtime.backends.openvino import ir_key
    manifest = Bundle.open(str(bundle_path)).manifest
    return root / "ir" / ir_key(manifest["files"])


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    from edgeinfer.runtime.backends.openvino import check_options, default_cache_dir
    monkeypatch.setenv("EDGEINFER_CACHE_DIR", str(tmp_path / "ei"))
    assert default_cache_dir() == str(tmp_path / "ei" / "openvino")
    monkeypatch.delenv("EDGEINFER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "edgeinfer" / "openvino")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "edgeinfer" / "openvino")
    assert check_options({})["cache_dir"] == default_cache_dir()
    assert check_options({}, local=True)["cache_dir"] is None  # conversion's temp files
    assert check_options({"cache_dir": None})["cache_dir"] is None


def test_cache_folder_is_created_then_reused(cases, cache_root, tiny_model):
    # cache_root is the default folder (EDGEINFER_CACHE_DIR points under tmp).
    path = cases["mlp"].ov_bundle
    folder = _ir_folder(cache_root, path)
    with edgeinfer.load(str(path)):
        pass
    weights = folder / "model.bin"
    assert (folder / "model.xml").is_file() and weights.is_file()
    blobs = sorted(os.listdir(str(cache_root / "blobs")))
    assert any(b.endswith(".blob") for b in blobs)
    first = os.stat(str(weights))
    feeds = cases["mlp"].feeds(2)
    with edgeinfer.load(str(path)) as session:
        got = session.run(feeds)
    again = os.stat(str(weights))
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not rewritten
    assert sorted(os.listdir(str(cache_root / "blobs"))) == blobs  # the blob was reused
    _assert_equal_outputs(got, _bare_ort(cases["mlp"].onnx, feeds))
    assert [n for n in os.listdir(str(folder.parent)) if n.startswith(".")] == []


@pytest.mark.parametrize("damage", ["flip", "flip, mtime put back", "truncate", "delete"])
def test_a_damaged_extracted_file_is_detected_and_rewritten(cases, tmp_path, damage):
    case = cases["tiny"]
    root = tmp_path / "cache"
    options = {"cache_dir": str(root)}
    with edgeinfer.load(str(case.ov_bundle), backend_options=options):
        pass
    weights = _ir_folder(root, case.ov_bundle) / "model.bin"
    data = bytearray(weights.read_bytes())
    before = os.stat(str(weights))
    if damage.startswith("flip"):
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))  # same size: the size alone cannot tell
        if damage.endswith("put back"):
            os.utime(str(weights), ns=(before.st_atime_ns, before.st_mtime_ns))
    elif damage == "truncate":
        weights.write_bytes(bytes(data[:-4]))
    else:
        weights.unlink()
    feeds = case.feeds(3, seed=4)
    with edgeinfer.load(str(case.ov_bundle), backend_options=options) as session:
        got = session.run(feeds)
    assert sha256_of(str(weights)) == sha256_of(case.bin)
    _assert_equal_outputs(got, _bare_ort(case.onnx, feeds))


@pytest.mark.parametrize("stamp", ["missing", "garbage", "other inode"])
def test_an_unstamped_folder_is_hashed_and_kept_when_it_matches(cases, tmp_path, stamp):
    # A stamp records each file's size, inode, mtime and ctime when it was last hashed;
    # without a usable one the files are hashed, and kept (not extracted again) if good.
    from edgeinfer.runtime.backends.openvino import STAMP_NAME
    case = cases["tiny"]
    root = tmp_path / "cache"
    options = {"cache_dir": str(root)}
    with edgeinfer.load(str(case.ov_bundle), backend_options=options):
        pass
    folder = _ir_folder(root, case.ov_bundle)
    stamp_path = folder / STAMP_NAME
    recorded = json.loads(stamp_path.read_text())
    for name, (size, ino, mtime, ctime) in recorded.items():
        assert os.stat(str(folder / name)).st_ctime_ns == ctime < stamp_path.stat().st_mtime_ns
    if stamp == "missing":
        stamp_path.unlink()
    elif stamp == "garbage":
        stamp_path.write_text("{not json")
    else:
        recorded["model.bin"][1] += 1
        stamp_path.write_text(json.dumps(recorded))
    inode = os.stat(str(folder / "model.bin")).st_ino
    with edgeinfer.load(str(case.ov_bundle), backend_options=options) as session:
        got = session.run(case.feeds(2))
    assert os.stat(str(folder / "model.bin")).st_ino == inode  # kept, not rewritten
    assert json.loads(stamp_path.read_text())["model.bin"][1] == inode  # stamped again
    _assert_equal_outputs(got, _bare_ort(case.onnx, case.feeds(2)))


def test_bundles_with_the_same_ir_share_one_folder(cases, tmp_path):
    case = cases["tiny"]
    other = write_ov_bundle(tmp_path / "renamed.eib", "tiny-again", case.specs, case.xml,
                            case.bin)
    assert _ir_folder(tmp_path, other).name == _ir_folder(tmp_path, case.ov_bundle).name


def test_ir_in_a_subfolder_of_the_bundle(cases, tmp_path, tiny_model):
    # Sharded bundles hold one IR per partition, e.g. part0/model.xml + part0/model.bin.
    case = cases["tiny"]
    path = tmp_path / "nested.eib"
    Bundle.write(str(path), ov_manifest("tiny", case.specs, model="part0/model.xml"),
                 {"part0/model.xml": case.xml, "part0/model.bin": case.bin})
    root = tmp_path / "cache"
    x = _float((2, 4), 12)
    for _ in range(2):  # extracted, then reused
        with edgeinfer.load(str(path), backend_options={"cache_dir": str(root)}) as session:
            got = session.run({"x": x})
        np.testing.assert_allclose(got["z"], _relu_affine(x, tiny_model)[1], rtol=0, atol=ATOL)
    assert (_ir_folder(root, path) / "part0" / "model.bin").is_file()


def test_cache_off_writes_nothing(cases, tmp_path, tiny_model):
    root = tmp_path / "off"
    x = _float((2, 4), 6)
    with edgeinfer.load(str(cases["tiny"].ov_bundle),
                        backend_options={"cache_dir": None}) as session:
        got = session.run({"x": x})
    assert not root.exists()
    np.testing.assert_allclose(got["z"], _relu_affine(x, tiny_model)[1], rtol=0, atol=ATOL)


def test_unusable_cache_degrades_to_a_plain_load(cases, tmp_path, tiny_model):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="model cache .* is not usable"):
        session = edgeinfer.load(str(cases["tiny"].ov_bundle),
                                 backend_options={"cache_dir": str(blocker / "cache")})
    x = _float((2, 4), 2)
    with session:
        got = session.run({"x": x})
    np.testing.assert_allclose(got["y"], _relu_affine(x, tiny_model)[0], rtol=0, atol=ATOL)


def _tree(root):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(str(root)) for f in files)


def test_local_files_are_compiled_from_their_paths_without_caching(cases, cache_root):
    # The conversion recipe validates its IR this way (its files are temporary).
    with edgeinfer.load(str(cases["tiny"].ov_bundle)):
        pass  # the default cache folder exists, with a blob in it
    before = _tree(cache_root)
    assert before
    case = cases["digits"]
    runner = get_backend("openvino").load(
        LocalFiles({"model.xml": case.xml, "model.bin": case.bin}, "model.xml"), {})
    try:
        feeds = case.feeds(2)
        _assert_equal_outputs(runner.run(feeds), _bare_ort(case.onnx, feeds))
    finally:
        runner.close()
    assert _tree(cache_root) == before


# -- calls: threads, output ownership, shared inputs -----------------------------------------

@pytest.mark.parametrize("hint", ["LATENCY", "THROUGHPUT"])
def test_concurrent_runs_give_each_caller_its_own_results(cases, tiny_model, hint):
    errors, checked = [], []

    def work(session, seed):
        rng = np.random.RandomState(seed)
        try:
            for call in range(40):
                # Small batches are copied, large ones (> 64 KiB) shared: both paths.
                batch = int(rng.choice([1, 2, 7, 4500]))
                x = rng.standard_normal((batch, 4)).astype(np.float32)
                got = session.run({"x": x})
                y, z = _relu_affine(x, tiny_model)
                np.testing.assert_allclose(got["z"], z, rtol=0, atol=ATOL)
                np.testing.assert_allclose(got["y"], y, rtol=0, atol=ATOL)
                checked.append(1)
        except Exception as exc:  # reported below, with the thread's seed
            errors.append((seed, repr(exc)))

    with edgeinfer.load(str(cases["tiny"].ov_bundle),
                        backend_options={"performance_hint": hint}) as session:
        threads = [threading.Thread(target=work, args=(session, seed)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(checked) == 8 * 40


@pytest.mark.parametrize("batch", [2, 4500])  # copied into the request / shared as is
def test_outputs_are_not_overwritten_by_the_next_call(tiny_ov, tiny_model, batch):
    x1, x2 = _float((batch, 4), 1), _float((batch, 4), 2)
    first = tiny_ov.run({"x": x1})
    second = tiny_ov.run({"x": x2})
    for name in ("y", "z"):
        assert not np.shares_memory(first[name], second[name])
        assert first[name].flags.writeable and first[name].flags.owndata
    y1, z1 = _relu_affine(x1, tiny_model)
    np.testing.assert_allclose(first["z"], z1, rtol=0, atol=ATOL)
    np.testing.assert_allclose(first["y"], y1, rtol=0, atol=ATOL)
    first["y"][...] = -1  # the caller owns it: writing to it changes nothing else
    np.testing.assert_allclose(tiny_ov.run({"x": x2})["y"], second["y"], rtol=0, atol=0)


@pytest.mark.parametrize("batch", [2, 4500])
def test_an_input_array_changed_in_place_is_read_again(tiny_ov, tiny_model, batch):
    # The same array object passed again skips re-binding: its new contents must count.
    x = _float((batch, 4), 1)
    before = tiny_ov.run({"x": x})["z"]
    x[...] = _float((batch, 4), 9)
    kept = x.copy()
    after = tiny_ov.run({"x": x})["z"]
    np.testing.assert_array_equal(x, kept)  # inputs are never written to
    np.testing.assert_allclose(after, _relu_affine(kept, tiny_model)[1], rtol=0, atol=ATOL)
    assert not np.allclose(after, before)


def test_batch_size_changes_between_calls(tiny_ov, tiny_model):
    for batch in (1, 7, 4500, 1, 4500, 3):
        x = _float((batch, 4), batch)
        got = tiny_ov.run({"x": x})
        assert got["y"].shape == (batch, 3)
        np.testing.assert_allclose(got["z"], _relu_affine(x, tiny_model)[1], rtol=0, atol=ATOL)


@pytest.mark.parametrize("batch", [3, 4500])
def test_read_only_and_strided_inputs(tiny_ov, tiny_model, batch):
    base = _float((batch, 8), 4)
    strided = base[:, ::2]
    assert not strided.flags.c_contiguous
    frozen = np.ascontiguousarray(strided)
    frozen.flags.writeable = False
    expected = _relu_affine(np.ascontiguousarray(strided), tiny_model)[1]
    for x in (strided, frozen):
        np.testing.assert_allclose(tiny_ov.run({"x": x})["z"], expected, rtol=0, atol=ATOL)


def test_multi_input_model_with_changing_shapes(cases):
    case = cases["tokens"]
    with edgeinfer.load(str(case.ov_bundle)) as session:
        for batch, seq in ((1, 3), (4, 9), (1, 3), (2, 1)):
            rng = np.random.RandomState(batch * 10 + seq)
            feeds = {"input_ids": rng.randint(0, 50, size=(batch, seq)).astype(np.int64),
                     "attention_mask": rng.randint(0, 2, size=(batch, seq)).astype(np.int64)}
            _assert_equal_outputs(session.run(feeds), _bare_ort(case.onnx, feeds))


def test_run_after_close(cases):
    session = edgeinfer.load(str(cases["tiny"].ov_bundle))
    runner = session._runner
    session.close()
    with pytest.raises(UsageError, match="is closed"):
        session.run({"x": np.zeros((1, 4), np.float32)})
    with pytest.raises(UsageError, match="runner is closed"):
        runner.run({"x": np.zeros((1, 4), np.float32)})


# -- throughput mode: run_many over an AsyncInferQueue ---------------------------------------

def _tiny_feeds(count, seed=0):
    """Feeds of several batch sizes: small ones are copied into a request, 4500 rows
    (> 64 KiB) are shared as they are, so both ways of binding are exercised."""
    rng = np.random.RandomState(seed)
    return [{"x": rng.standard_normal((int(rng.choice([1, 3, 4500])), 4)).astype(np.float32)}
            for _ in range(count)]


def _token_feeds(count, seed=0):
    rng = np.random.RandomState(seed)
    feeds = []
    for _ in range(count):
        batch, seq = int(rng.randint(1, 4)), int(rng.randint(1, 9))
        feeds.append({"input_ids": rng.randint(0, 50, size=(batch, seq)).astype(np.int64),
                      "attention_mask": rng.randint(0, 2, size=(batch, seq)).astype(np.int64)})
    return feeds


@pytest.mark.parametrize("hint", ["LATENCY", "THROUGHPUT"])
@pytest.mark.parametrize("concurrency", [None, 1, 3])
def test_run_many_equals_run_for_each_feed_in_order(cases, tiny_model, hint, concurrency):
    feeds = _tiny_feeds(24, seed=5)
    with edgeinfer.load(str(cases["tiny"].ov_bundle),
                        backend_options={"performance_hint": hint}) as session:
        got = session.run_many(feeds, concurrency=concurrency)
        one_by_one = [session.run(f) for f in feeds]
    assert len(got) == len(feeds)
    for index, (outputs, alone, f) in enumerate(zip(got, one_by_one, feeds)):
        assert list(outputs) == ["y", "z"], index
        np.testing.assert_array_equal(outputs["y"], alone["y"], err_msg=str(index))
        np.testing.assert_array_equal(outputs["z"], alone["z"], err_msg=str(index))
        # Against numpy too: equal to run() would also hold if both were wrong.
        np.testing.assert_allclose(outputs["z"], _relu_affine(f["x"], tiny_model)[1],
                                   rtol=0, atol=ATOL, err_msg=str(index))


def test_run_many_with_several_streams_under_the_throughput_hint(cases):
    # Issue 3, requirement 5: as many requests in flight as OpenVINO finds optimal.
    case = cases["tokens"]
    feeds = _token_feeds(30, seed=2)
    options = {"performance_hint": "THROUGHPUT", "num_streams": 2}
    with edgeinfer.load(str(case.ov_bundle), backend_options=options) as session:
        runner = session._runner
        assert int(runner.compiled_model.get_property("NUM_STREAMS")) == 2
        assert runner.optimal_requests >= 2
        for _ in range(2):  # the second call reuses the first call's queue
            got = session.run_many(feeds)
            for outputs, f in zip(got, feeds):
                _assert_equal_outputs(outputs, _bare_ort(case.onnx, f))
        assert list(runner._queues) == [runner.optimal_requests]


def test_run_many_outputs_are_the_callers(cases):
    feeds = _tiny_feeds(6, seed=1)
    with edgeinfer.load(str(cases["tiny"].ov_bundle),
                        backend_options={"performance_hint": "THROUGHPUT"}) as session:
        first = session.run_many(feeds, concurrency=2)
        kept = [dict((k, v.copy()) for k, v in o.items()) for o in first]
        second = session.run_many(feeds[::-1], concurrency=2)
    for outputs, copy in zip(first, kept):  # the second call wrote into nothing of ours
        for name, value in outputs.items():
            assert value.flags.owndata and value.flags.writeable
            np.testing.assert_array_equal(value, copy[name])
    arrays = [v for o in first + second for v in o.values()]
    assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])


def test_run_many_output_subset_and_order(tiny_ov):
    feeds = _tiny_feeds(5, seed=3)
    got = tiny_ov.run_many(feeds, outputs=["z", "y"], concurrency=2)
    for outputs, f in zip(got, feeds):
        assert list(outputs) == ["z", "y"]
        np.testing.assert_array_equal(outputs["z"], tiny_ov.run(f)["z"])
    assert [list(o) for o in tiny_ov.run_many(feeds, outputs=["z"])] == [["z"]] * 5


def test_run_many_takes_any_iterable_and_converts_like_run(tiny_ov, tiny_model):
    xs = [np.arange(8, dtype=np.float64).reshape(2, 4) * k for k in range(4)]
    got = tiny_ov.run_many(({"x": x} for x in xs), concurrency=2)  # a generator, float64
    for outputs, x in zip(got, xs):
        np.testing.assert_allclose(outputs["z"], _relu_affine(x, tiny_model)[1],
                                   rtol=0, atol=ATOL)
    assert tiny_ov.run_many([]) == []


def test_run_many_checks_every_feed_before_running_any(cases):
    feeds = _tiny_feeds(3) + [{"x": np.zeros((2, 5), np.float32)}] + _tiny_feeds(2)
    with edgeinfer.load(str(cases["tiny"].ov_bundle),
                        backend_options={"performance_hint": "THROUGHPUT"}) as session:
        with pytest.raises(InputError) as info:
            session.run_many(feeds, concurrency=2)
        runner = session._runner
        # Nothing ran: no queue was built and no request was given an input.
        assert runner._queues == {}
        assert all(b is None for slot in runner._slots for b in slot.bound)
        assert str(info.value) == ("Feed 3 of 6: Input tensor: x | Received shape [2, 5]; dim 1 "
                                   "is 5, expected 4. Note: Expected: x: float32[batch, 4].")
        with pytest.raises(InputError, match=r"^Feed 1 of 2: Model 'tiny': missing input\(s\) 'x'"):
            session.run_many([{"x": np.zeros((1, 4), np.float32)}, {}])
        with pytest.raises(InputError, match="got one dict"):
            session.run_many({"x": np.zeros((1, 4), np.float32)})
        with pytest.raises(InputError, match="iterable of feed dicts, got int"):
            session.run_many(3)
        with pytest.raises(InputError, match="Session.run_many takes a dict .* got list"):
            session.run_many([[np.zeros((1, 4), np.float32)]])
        with pytest.raises(InputError, match="has no output 'w'"):
            session.run_many(_tiny_feeds(2), outputs=["w"])
        assert runner._queues == {}


@pytest.mark.parametrize("concurrency", [0, -2, True, 1.5, "2"])
def test_run_many_refuses_a_bad_concurrency(tiny_ov, concurrency):
    with pytest.raises(UsageError, match="concurrency must be a whole number >= 1"):
        tiny_ov.run_many(_tiny_feeds(2), concurrency=concurrency)


def _mismatched_tokens():
    # Each input is valid alone (symbolic dims), but their seq lengths disagree: the
    # backends fail in the Mul that applies the mask.
    return {"input_ids": np.zeros((1, 3), np.int64), "attention_mask": np.ones((1, 4), np.int64)}


def test_inputs_that_disagree_on_a_shared_dim_are_refused_by_the_session(cases):
    case = cases["tokens"]
    feeds = _token_feeds(4, seed=8)
    feeds.insert(2, _mismatched_tokens())
    expected = ("Input tensor: attention_mask | Received shape [1, 4]; dim 1 (seq) is 4, but "
                "input_ids has seq = 3. Note: Inputs sharing a dim name agree on its size: "
                "input_ids: int64[batch, seq], attention_mask: int64[batch, seq].")
    for path in (case.ov_bundle, case.ort_bundle):
        with edgeinfer.load(str(path)) as session:
            with pytest.raises(InputError) as info:
                session.run(_mismatched_tokens())
            assert str(info.value) == expected
            with pytest.raises(InputError) as info:
                session.run_many(feeds, concurrency=2)
            assert str(info.value) == "Feed 2 of 5: " + expected
            with pytest.raises(InputError,
                               match=r"dim 0 \(batch\) is 2, but input_ids has batch = 1"):
                session.run({"input_ids": np.zeros((1, 3), np.int64),
                             "attention_mask": np.ones((2, 3), np.int64)})


def test_a_feed_the_backend_fails_on_is_named(cases):
    # The runners trust their caller (the session checks), so given the mismatched feed
    # directly they fail inside the backend: the error names the feed.
    from edgeinfer.runtime.backends import run_in_threads
    case = cases["tokens"]
    good = _token_feeds(4, seed=8)
    feeds = good[:2] + [_mismatched_tokens()] + good[2:]
    ov_runner = get_backend("openvino").load(
        LocalFiles({"model.xml": case.xml, "model.bin": case.bin}, "model.xml"),
        {"performance_hint": "THROUGHPUT"})
    ort_runner = OrtBackend().load(LocalFiles({"model.onnx": case.onnx}, "model.onnx"))
    try:
        ort_many = lambda f, o, c: run_in_threads(ort_runner, f, o, c)  # noqa: E731
        for name, run_many in (("OpenVINO", ov_runner.run_many), ("ONNX Runtime", ort_many)):
            with pytest.raises(BackendError) as info:
                run_many(feeds, None, 2)
            message = str(info.value)
            assert message.startswith("Feed 2 of 5: {} failed to run the model".format(name))
            assert message.endswith("Note: Inputs: input_ids: int64[batch, seq], "
                                    "attention_mask: int64[batch, seq].")
        # The queue that failed is dropped, not reused.
        assert ov_runner._queues == {}
        # OpenVINO's CPU plugin (2026.4) goes on failing on the last good shape of a stream
        # whose run failed, until another shape runs there (see _check_agreement in
        # session.py): check recovery with shapes the failed call did not use.
        fresh = [{"input_ids": np.full((b, 12), b, np.int64),
                  "attention_mask": np.ones((b, 12), np.int64)} for b in (1, 2, 3, 1)]
        for outputs, f in zip(ov_runner.run_many(fresh, None, 2), fresh):
            _assert_equal_outputs(outputs, _bare_ort(case.onnx, f))
        assert list(ov_runner._queues) == [2]
    finally:
        ov_runner.close()


def test_run_many_from_several_threads_at_once(cases, tiny_model):
    errors, checked = [], []

    def work(session, seed):
        try:
            for _ in range(5):
                feeds = _tiny_feeds(6, seed=seed)
                for outputs, f in zip(session.run_many(feeds, concurrency=2), feeds):
                    np.testing.assert_allclose(outputs["z"], _relu_affine(f["x"], tiny_model)[1],
                                               rtol=0, atol=ATOL)
                    checked.append(1)
                seed += 100
        except Exception as exc:  # reported below, with the thread's seed
            errors.append((seed, repr(exc)))

    with edgeinfer.load(str(cases["tiny"].ov_bundle),
                        backend_options={"performance_hint": "THROUGHPUT"}) as session:
        threads = [threading.Thread(target=work, args=(session, seed)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Each thread had a queue of its own while it ran; they are all idle now.
        assert 1 <= len(session._runner._queues[2]) <= 4
    assert errors == []
    assert len(checked) == 4 * 5 * 6


def test_run_many_after_close(cases):
    session = edgeinfer.load(str(cases["tiny"].ov_bundle))
    runner = session._runner
    session.run_many(_tiny_feeds(2))
    session.close()
    with pytest.raises(UsageError, match="is closed"):
        session.run_many(_tiny_feeds(2))
    with pytest.raises(UsageError, match="runner is closed"):
        runner.run_many(_tiny_feeds(2))
    assert runner._queues == {}


# -- OpenVINO missing, the CLI, doctor -------------------------------------------------------

def test_missing_openvino_names_the_extra(cases):
    code = "\n".join([
        "import sys",
        "sys.modules['openvino'] = None  # what an interpreter without openvino sees",
        "import edgeinfer",
        "from edgeinfer.errors import BackendError",
        "from edgeinfer.runtime.backends import get_backend",
        "ok, why = get_backend('openvino').available()",
        "assert not ok and 'edgeinfer[openvino]' in why, why",
        "try:",
        "    edgeinfer.load({!r})".format(str(cases["tiny"].ov_bundle)),
        "except BackendError as exc:",
        "    print(exc)",
    ])
    done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "needs the openvino backend, which is not usable here" in done.stdout
    assert "pip install edgeinfer[openvino]" in done.stdout


def _invoke(*args):
    from click.testing import CliRunner
    from edgeinfer.cli import main
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_run_with_a_device(cases, tmp_path, tiny_model):
    x = _float((2, 4), 7)
    np.save(str(tmp_path / "x.npy"), x)
    save = tmp_path / "out.npz"
    result = _invoke("run", cases["tiny"].ov_bundle, tmp_path / "x.npy", "--device", "CPU",
                     "--save", save)
    assert result.exit_code == 0, result.stderr
    with np.load(str(save)) as saved:
        got = saved["{}/z".format(tmp_path / "x.npy")]
    np.testing.assert_allclose(got, _relu_affine(x, tiny_model)[1], rtol=0, atol=ATOL)


def test_cli_run_on_an_absent_device(ov, cases, tmp_path):
    if "GPU" in ov.Core().available_devices:
        pytest.skip("this machine has a GPU")
    np.save(str(tmp_path / "x.npy"), np.zeros((1, 4), np.float32))
    result = _invoke("run", cases["tiny"].ov_bundle, tmp_path / "x.npy", "--device", "GPU")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: OpenVINO device 'GPU' is not present on this machine. "
                               "Note: Available devices: {};".format(
                                   ", ".join(ov.Core().available_devices)))
    assert result.stdout == "" and "Traceback" not in result.output


def test_doctor_lists_openvino_devices(ov):
    result = _invoke("doctor", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)["backends"]["openvino"]
    assert info["available"] is True
    names = [d["name"] for d in info["devices"]]
    assert names == list(ov.Core().available_devices)
    core = ov.Core()
    for device in info["devices"]:
        assert device["full_name"] == core.get_property(device["name"], "FULL_DEVICE_NAME")
        assert device["capabilities"] == [
            str(c) for c in core.get_property(device["name"], "OPTIMIZATION_CAPABILITIES")]
    text = _invoke("doctor")
    assert text.exit_code == 0
    cpu = info["devices"][0]
    assert any(line.split()[:1] == [cpu["name"]] and cpu["full_name"] in line
               for line in text.stdout.splitlines()), text.stdout
