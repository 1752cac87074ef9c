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


# -- the fast path of the input checks -------------------------------------------------------

@pytest.fixture(scope="module")
def fixed_batch(tmp_path_factory, tiny_model, make_manifest):
    """The tiny model under a manifest with every input dim fixed (x: float32[2, 4]), as a
    bundle converted for one batch size has: the checks compare whole shapes."""
    path = tmp_path_factory.mktemp("fixed") / "fixed.eib"
    manifest = make_manifest(inputs=[{"name": "x", "dtype": "float32", "shape": [2, 4]}])
    Bundle.write(str(path), manifest, {"model.onnx": tiny_model.data})
    with edgeinfer.load(str(path)) as session:
        yield session


@pytest.mark.parametrize("shape, fragment", [
    ((3, 4), "Received shape [3, 4]; dim 0 is 3, expected 2."),
    ((2, 5), "Received shape [2, 5]; dim 1 is 5, expected 4."),
    ((2, 4, 1), "Received rank 3 (shape [2, 4, 1])."),
    ((8,), "Received rank 1 (shape [8])."),
])
def test_a_fully_fixed_shape_is_checked_whole(fixed_batch, shape, fragment):
    with pytest.raises(InputError) as info:
        fixed_batch.run({"x": np.zeros(shape, np.float32)})
    assert fragment in str(info.value)
    assert "x: float32[2, 4]" in str(info.value)


def test_a_fully_fixed_shape_runs(fixed_batch, tiny_model):
    x = np.random.RandomState(2).standard_normal((2, 4))  # float64: converted
    got = fixed_batch.run({"x": x})
    np.testing.assert_allclose(got["z"], x.astype(np.float32) @ tiny_model.W + tiny_model.b,
                               rtol=0, atol=ATOL)


class _Subclass(np.ndarray):
    pass


@pytest.mark.parametrize("make", [
    lambda x: x.astype(">f4"),             # float32, other byte order: converted
    lambda x: x.view(_Subclass),           # an ndarray subclass: taken as an ndarray
    lambda x: x.tolist(),                  # nested lists
    lambda x: np.asfortranarray(x),        # not C-contiguous
])
def test_inputs_off_the_fast_path_give_the_same_outputs(tiny, make):
    x = np.random.RandomState(4).standard_normal((3, 4)).astype(np.float32)
    expected = tiny.run({"x": x})
    got = tiny.run({"x": make(x)})
    for name in ("y", "z"):
        np.testing.assert_array_equal(got[name], expected[name])


def test_the_callers_feeds_are_left_as_they_were(tiny):
    x = np.ones((2, 4), np.float64)
    feeds = {"x": x}
    tiny.run(feeds)
    assert feeds["x"] is x and x.dtype == np.float64 and list(feeds) == ["x"]


# -- run_many: the generic fallback (ONNX Runtime has no run_many of its own) ----------------

def _many(count, seed=0):
    rng = np.random.RandomState(seed)
    return [{"x": rng.standard_normal((int(rng.randint(1, 6)), 4)).astype(np.float32)}
            for _ in range(count)]


@pytest.mark.parametrize("concurrency", [None, 1, 4])
def test_run_many_equals_run_for_each_feed_in_order(tiny, tiny_model, concurrency):
    assert not hasattr(tiny._runner, "run_many")
    feeds = _many(20, seed=1)
    got = tiny.run_many(feeds, concurrency=concurrency)
    assert len(got) == 20
    for index, (outputs, f) in enumerate(zip(got, feeds)):
        alone = tiny.run(f)
        assert list(outputs) == ["y", "z"]
        for name in ("y", "z"):
            np.testing.assert_array_equal(outputs[name], alone[name], err_msg=str(index))
        np.testing.assert_allclose(outputs["z"], f["x"] @ tiny_model.W + tiny_model.b,
                                   rtol=0, atol=ATOL, err_msg=str(index))


def test_run_many_output_subset_and_conversions(tiny, ints):
    got = tiny.run_many([{"x": [[1, 2, 3, 4]]}, {"x": np.ones((2, 4))}], outputs=["z"],
                        concurrency=2)
    assert [list(o) for o in got] == [["z"], ["z"]]
    assert [o["z"].shape for o in got] == [(1, 3), (2, 3)]
    doubled = ints.run_many(({"n": np.array([[k, -k]], np.int32)} for k in range(5)))
    assert [o["m"].tolist() for o in doubled] == [[[2 * k, -2 * k]] for k in range(5)]
    assert tiny.run_many([]) == []


def test_run_many_refuses_a_bad_feed_before_running_any(tiny):
    feeds = _many(3) + [{"x": np.ones((1, 4), bool)}]
    with pytest.raises(InputError) as info:
        tiny.run_many(feeds, concurrency=2)
    assert str(info.value).startswith("Feed 3 of 4: Input tensor: x | Received unexpected "
                                      "dtype: bool.")
    with pytest.raises(InputError, match="got one dict"):
        tiny.run_many({"x": np.ones((1, 4), np.float32)})
    with pytest.raises(UsageError, match="concurrency must be a whole number >= 1, not 0"):
        tiny.run_many(_many(2), concurrency=0)


def test_run_many_after_close(tiny_bundle):
    session = edgeinfer.load(str(tiny_bundle))
    session.close()
    with pytest.raises(UsageError, match="Session 'tiny' is closed."):
        session.run_many(_many(2))


# -- compatibility ---------------------------------------------------------------------------

def test_bundle_for_an_unregistered_backend(tmp_path, tiny_model, make_manifest):
    path = tmp_path / "trt.eib"
    Bundle.write(str(path), make_manifest(target={"backend": "tensorrt-9"}),
                 {"model.onnx": tiny_model.data})
    with pytest.raises(BackendError) as info:
        edgeinfer.load(str(path))
    assert "needs the backend 'tensorrt-9'" in str(info.value)
    assert "This edgeinfer knows: onnxruntime, openvino, tensorrt." in str(info.value)
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
