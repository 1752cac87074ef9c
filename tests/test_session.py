"""Sessions with real ONNX Runtime: outputs, input checks, compatibility, lifecycle."""

import numpy as np
import onnxruntime
import pytest

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.errors import BackendError, BundleError, InputError, UsageError
from edgeinfer.profiles import machine_arch
from edgeinfer.runtime.session import Session, version_tuple
from edgeinfer.tensors import TensorSpec

ATOL = 1e-5


def _bare_ort(bundle_path):
    """A plain InferenceSession on the model bytes inside the bundle: the reference."""
    data = Bundle.open(str(bundle_path)).read("model.onnx")
    return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])


def _digits_batch(n, seed=0):
    return np.random.RandomState(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def digits(digits_int8_bundle):
    session = edgeinfer.load(str(digits_int8_bundle))
    yield session
    session.close()


@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    session = edgeinfer.load(str(tiny_bundle))
    yield session
    session.close()


@pytest.fixture(scope="module")
def int_bundle(tmp_path_factory, int_model, make_manifest):
    path = tmp_path_factory.mktemp("int") / "int.eib"
    manifest = make_manifest(
        name="doubler",
        inputs=[{"name": "n", "dtype": "int64", "shape": ["batch", 2]}],
        outputs=[{"name": "m", "dtype": "int64", "shape": ["batch", 2]}])
    Bundle.write(str(path), manifest, {"model.onnx": int_model.read_bytes()})
    return path


@pytest.fixture(scope="module")
def ints(int_bundle):
    session = edgeinfer.load(str(int_bundle))
    yield session
    session.close()


# -- outputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_outputs_equal_bare_onnxruntime_on_the_bundled_model(request, which):
    path = request.getfixturevalue("digits_{}_bundle".format(which))
    x = _digits_batch(4)
    with edgeinfer.load(str(path)) as session:
        got = session.run({"input": x})
    expected = _bare_ort(path).run(["logits"], {"input": x})[0]
    assert list(got) == ["logits"]
    assert got["logits"].dtype == np.float32 and got["logits"].shape == (4, 10)
    np.testing.assert_allclose(got["logits"], expected, rtol=0, atol=ATOL)


def test_tiny_model_computes_relu_of_affine(tiny, tiny_model):
    x = np.random.RandomState(1).standard_normal((3, 4)).astype(np.float32)
    got = tiny.run({"x": x})
    z = x @ tiny_model.W + tiny_model.b
    assert list(got) == ["y", "z"]
    np.testing.assert_allclose(got["z"], z, rtol=0, atol=ATOL)
    np.testing.assert_allclose(got["y"], np.maximum(z, 0), rtol=0, atol=ATOL)


def test_inputs_and_outputs_are_specs(digits):
    assert digits.inputs == [TensorSpec("input", "float32", ("batch", 1, 8, 8))]
    assert digits.outputs == [TensorSpec("logits", "float32", ("batch", 10))]
    spec = digits.inputs[0]
    assert (spec.name, spec.dtype, spec.shape) == ("input", "float32", ("batch", 1, 8, 8))
    assert digits.name == "digits_cnn"
    assert repr(digits) == "<Session 'digits_cnn' int8 static on onnxruntime>"


@pytest.mark.parametrize("batch", [1, 5])
def test_symbolic_batch_dim_takes_any_batch(digits, tiny, batch):
    assert digits.run({"input": _digits_batch(batch)})["logits"].shape == (batch, 10)
    got = tiny.run({"x": np.ones((batch, 4), np.float32)})
    assert got["y"].shape == (batch, 3) and got["z"].shape == (batch, 3)


# -- dtype conversion ------------------------------------------------------------------------

def test_float64_is_converted_and_matches_float32(digits):
    x = _digits_batch(2)
    expected = digits.run({"input": x})["logits"]
    got = digits.run({"input": x.astype(np.float64)})["logits"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_a_python_list_works(digits):
    x = _digits_batch(2)
    expected = digits.run({"input": x})["logits"]
    np.testing.assert_array_equal(digits.run({"input": x.tolist()})["logits"], expected)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_integers_for_a_float_model_are_converted(tiny, dtype):
    # Documented: same-kind casts (int -> float included) are done for the caller.
    values = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    expected = tiny.run({"x": values.astype(np.float32)})
    got = tiny.run({"x": values.astype(dtype)})
    np.testing.assert_array_equal(got["y"], expected["y"])
    np.testing.assert_array_equal(got["z"], expected["z"])


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int16])
def test_smaller_ints_for_an_int_model_are_converted(ints, dtype):
    got = ints.run({"n": np.array([[1, 2], [3, 4]], dtype=dtype)})["m"]
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [[2, 4], [6, 8]])


@pytest.mark.parametrize("session_name, name, value, dtype_text", [
    ("ints", "n", np.ones((1, 2), np.float32), "float32"),      # float -> int refused
    ("ints", "n", np.ones((1, 2), np.float64), "float64"),
    ("ints", "n", np.ones((1, 2), bool), "bool"),               # bool refused
    ("tiny", "x", np.ones((1, 4), bool), "bool"),
    ("tiny", "x", np.array([["a", "b", "c", "d"]]), "<U1"),      # strings refused
])
def test_meaning_changing_dtypes_are_refused(request, session_name, name, value, dtype_text):
    session = request.getfixturevalue(session_name)
    expected = session.inputs[0]
    with pytest.raises(InputError) as info:
        session.run({name: value})
    message = str(info.value)
    assert "Input tensor: {} | Received unexpected dtype: {}.".format(name, dtype_text) in message
    assert "Expected type: {}".format(expected.dtype) in message


def test_a_ragged_list_is_an_input_error(tiny):
    with pytest.raises(InputError) as info:
        tiny.run({"x": [[1.0, 2.0, 3.0, 4.0], [1.0]]})
    assert "Input tensor: x" in str(info.value)
    assert "x: float32[batch, 4]" in str(info.value)


# -- names and shapes ------------------------------------------------------------------------

def test_unknown_input_name(digits):
    with pytest.raises(InputError) as info:
        digits.run({"image": _digits_batch(1)})
    message = str(info.value)
    assert "unknown input(s) 'image'" in message
    assert "missing input(s) 'input'" in message
    assert "Expected inputs: input: float32[batch, 1, 8, 8]." in message


def test_missing_input(digits):
    with pytest.raises(InputError) as info:
        digits.run({})
    assert "missing input(s) 'input'" in str(info.value)
    assert "unknown" not in str(info.value)
    assert "input: float32[batch, 1, 8, 8]" in str(info.value)


def test_extra_input_beside_the_right_one(tiny):
    with pytest.raises(InputError, match=r"unknown input\(s\) 'w'"):
        tiny.run({"x": np.ones((1, 4), np.float32), "w": np.ones(1)})


def test_wrong_rank(digits):
    with pytest.raises(InputError) as info:
        digits.run({"input": np.zeros((8, 8), np.float32)})
    message = str(info.value)
    assert "Input tensor: input | Received rank 2 (shape [8, 8])." in message
    assert "Expected rank 4: input: float32[batch, 1, 8, 8]." in message


def test_wrong_fixed_dim(digits):
    with pytest.raises(InputError) as info:
        digits.run({"input": np.zeros((1, 1, 9, 8), np.float32)})
    message = str(info.value)
    assert "Input tensor: input | Received shape [1, 1, 9, 8]; dim 2 is 9, expected 8." in message
    assert "Expected: input: float32[batch, 1, 8, 8]." in message


def test_feeds_must_be_a_dict(tiny):
    with pytest.raises(InputError, match="takes a dict of input name -> array, got list"):
        tiny.run([np.ones((1, 4), np.float32)])


def test_output_subset(tiny):
    x = np.ones((2, 4), np.float32)
    both = tiny.run({"x": x})
    only_z = tiny.run({"x": x}, outputs=["z"])
    assert list(only_z) == ["z"]
    np.testing.assert_array_equal(only_z["z"], both["z"])
    reordered = tiny.run({"x": x}, outputs=["z", "y"])
    assert list(reordered) == ["z", "y"]


def test_output_subset_on_the_demo_model(digits):
    got = digits.run({"input": _digits_batch(1)}, outputs=["logits"])
    assert list(got) == ["logits"] and got["logits"].shape == (1, 10)


def test_unknown_output_name(digits):
    with pytest.raises(InputError) as info:
        digits.run({"input": _digits_batch(1)}, outputs=["probs"])
    assert "has no output 'probs'" in str(info.value)
    assert "Outputs: logits." in str(info.value)


# -- compatibility ---------------------------------------------------------------------------

def test_bundle_for_an_unregistered_backend(tmp_path, tiny_model, make_manifest):
    path = tmp_path / "trt.eib"
    Bundle.write(str(path), make_manifest(target={"backend": "tensorrt-9"}),
                 {"model.onnx": tiny_model.data})
    with pytest.raises(BackendError) as info:
        edgeinfer.load(str(path))
    assert "needs the backend 'tensorrt-9'" in str(info.value)
    assert "This edgeinfer knows: onnxruntime, openvino." in str(info.value)
    assert info.value.exit_code == 1


def test_bundle_needing_a_newer_onnxruntime(tmp_path, tiny_model, make_manifest):
    path = tmp_path / "future.eib"
    Bundle.write(str(path), make_manifest(target={"backend": "onnxruntime",
                                                  "min_backend_version": "999.1"}),
                 {"model.onnx": tiny_model.data})
    with pytest.raises(BackendError) as info:
        edgeinfer.load(str(path))
    message = str(info.value)
    assert "needs onnxruntime >= 999.1" in message
    assert "this machine has {}".format(onnxruntime.__version__) in message
    assert "Upgrade onnxruntime" in message


def test_bundle_needing_this_onnxruntime_exactly_loads(tmp_path, tiny_model, make_manifest):
    path = tmp_path / "now.eib"
    Bundle.write(str(path), make_manifest(target={
        "backend": "onnxruntime", "min_backend_version": onnxruntime.__version__}),
        {"model.onnx": tiny_model.data})
    with edgeinfer.load(str(path)) as session:
        assert session.run({"x": np.zeros((1, 4), np.float32)})["y"].shape == (1, 3)


def test_bundle_for_another_cpu_runs_with_a_warning(tmp_path, tiny_model, make_manifest):
    other = "arm64-cpu" if machine_arch() != "aarch64" else "x86-cpu"
    path = tmp_path / "other.eib"
    Bundle.write(str(path), make_manifest(target={"backend": "onnxruntime", "profile": other}),
                 {"model.onnx": tiny_model.data})
    with pytest.warns(UserWarning, match="Bundle was built for {}".format(other)):
        session = edgeinfer.load(str(path))
    with session:
        assert len(session.notes) == 1 and other in session.notes[0]
        assert session.run({"x": np.zeros((1, 4), np.float32)})["y"].shape == (1, 3)


def test_manifest_that_disagrees_with_its_model(tmp_path, tiny_model, make_manifest):
    path = tmp_path / "liar.eib"
    Bundle.write(str(path), make_manifest(
        inputs=[{"name": "features", "dtype": "float32", "shape": ["batch", 4]}]),
        {"model.onnx": tiny_model.data})
    with pytest.raises(BundleError) as info:
        edgeinfer.load(str(path))
    assert "inputs ['x'] differ from the manifest's ['features']" in str(info.value)


def test_model_that_onnxruntime_refuses(tmp_path, make_manifest):
    path = tmp_path / "junk.eib"
    Bundle.write(str(path), make_manifest(), {"model.onnx": b"not a protobuf at all"})
    with pytest.raises(BackendError, match="ONNX Runtime cannot load 'model.onnx'"):
        edgeinfer.load(str(path))


def test_tampered_bundle_is_not_loaded(bad_bundles):
    with pytest.raises(BundleError, match="does not match its sha256"):
        edgeinfer.load(str(bad_bundles["tampered"].path))


def test_unknown_backend_option(tiny_bundle):
    with pytest.raises(UsageError) as info:
        edgeinfer.load(str(tiny_bundle), backend_options={"threads": 2})
    assert "Unknown onnxruntime option(s): threads." in str(info.value)
    assert "intra_op_threads" in str(info.value)


def test_backend_options_are_applied(tiny_bundle):
    with edgeinfer.load(str(tiny_bundle), backend_options={
            "intra_op_threads": 1, "graph_optimization": "none"}) as session:
        got = session.run({"x": np.ones((1, 4), np.float32)})
    assert got["y"].shape == (1, 3)


@pytest.mark.parametrize("text, expected", [
    ("1.17.3", (1, 17, 3)),
    ("1.18.0+cpu", (1, 18, 0)),
    ("1.17.0rc1", (1, 17, 0)),
    ("1.20.0.dev20240101", (1, 20, 0)),
    ("2", (2,)),
])
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected


def test_a_release_candidate_is_older_than_the_next_patch():
    assert version_tuple("1.17.0rc1") < version_tuple("1.17.1")


# -- lifecycle -------------------------------------------------------------------------------

def test_run_after_close(tiny_bundle):
    session = edgeinfer.load(str(tiny_bundle))
    assert isinstance(session, Session)
    session.close()
    session.close()  # a second close is harmless
    with pytest.raises(UsageError) as info:
        session.run({"x": np.zeros((1, 4), np.float32)})
    assert "Session 'tiny' is closed." in str(info.value)
    assert "edgeinfer.load()" in str(info.value)


def test_context_manager_closes(tiny_bundle):
    with edgeinfer.load(str(tiny_bundle)) as session:
        session.run({"x": np.zeros((1, 4), np.float32)})
    with pytest.raises(UsageError, match="is closed"):
        session.run({"x": np.zeros((1, 4), np.float32)})
