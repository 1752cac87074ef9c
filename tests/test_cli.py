"""The command line as users call it: CliRunner in process, and the real console script.

Every user mistake must end in one line on stderr starting with ``error:``, exit
status 1 (2 for usage), no traceback unless ``--debug``, and no partial output.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
from click.testing import CliRunner

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.cli import main
from edgeinfer.errors import DataError
from edgeinfer.preprocess import Preprocess
from edgeinfer.profiles import machine_arch

EDGEINFER = os.path.join(os.path.dirname(sys.executable), "edgeinfer")
EVAL_PNG = os.path.join("calibration", "digits-eval", "00010.png")


def _runner():
    # click < 8.2 mixes stderr into output unless told not to; 8.2+ always separates.
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def invoke(*args):
    """Run the CLI in process; an exception that is not SystemExit propagates."""
    return _runner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_ok(result):
    assert result.exit_code == 0, "stdout:\n{}\nstderr:\n{}".format(result.stdout, result.stderr)
    assert "Traceback" not in result.output


def assert_one_line_error(result, code, *fragments):
    """One ``error:`` line on stderr naming the fragments, the exit code, no traceback."""
    assert result.exit_code == code, "stdout:\n{}\nstderr:\n{}".format(
        result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    return lines[0]


@pytest.fixture()
def out_dir(tmp_path):
    """An empty output folder; tests assert it stays empty when a command fails."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def model_path(repo_root):
    return repo_root / "models" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def eval_labels(repo_root):
    with open(str(repo_root / "calibration" / "digits-eval" / "labels.csv")) as handle:
        return dict((row["file"], int(row["label"])) for row in csv.DictReader(handle))


@pytest.fixture(scope="module")
def inputs_dir(tmp_path_factory):
    """Input files for `run`, good and bad."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.RandomState(3)
    np.save(str(folder / "sample.npy"), rng.standard_normal((1, 8, 8)).astype(np.float32))
    np.savez(str(folder / "sample.npz"), input=rng.standard_normal((2, 1, 8, 8)).astype(np.float32))
    np.save(str(folder / "wrong-shape.npy"), np.zeros((1, 1, 9, 9), np.float32))
    np.save(str(folder / "wrong-dtype.npy"), np.zeros((1, 1, 8, 8), bool))
    np.savez(str(folder / "wrong-name.npz"), image=np.zeros((1, 1, 8, 8), np.float32))
    data = (folder / "sample.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(data[:len(data) // 2])
    (folder / "not-an-image.png").write_bytes(b"just some text, not a PNG\n")
    (folder / "text.npy").write_bytes(b"just some text, not an array\n")
    np.save(str(folder / "objects.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(str(folder / "tiny.npy"), np.ones((2, 4), np.float32))
    return folder


@pytest.fixture(scope="module")
def opset_models(tmp_path_factory, tiny_model):
    """The tiny model re-labelled with opset 99 (too new) and opset 3 (too old)."""
    import onnx
    folder = tmp_path_factory.mktemp("opsets")
    paths = {}
    for version in (99, 3):
        model = onnx.load(str(tiny_model.path))
        for entry in model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = version
        paths[version] = folder / "opset{}.onnx".format(version)
        onnx.save(model, str(paths[version]))
    return paths


def _expected_top(session, feeds, k):
    """(class name, probability text) of the top k per row, as `run` must print them."""
    logits = session.run(feeds)["logits"].astype(np.float64)
    rows = []
    for row in logits:
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        order = np.argsort(-probs)[:k]
        rows.append([(session.manifest["classes"][i], "{:.4f}".format(probs[i])) for i in order])
    return rows


def _printed_top(lines):
    """[(rank, name, prob)] from `run`'s ranked lines."""
    ranked = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith(".") and parts[0][:-1].isdigit():
            ranked.append((int(parts[0][:-1]), parts[1], parts[2]))
    return ranked


# -- help and version ------------------------------------------------------------------------

def test_main_help():
    result = invoke("--help")
    assert_ok(result)
    assert "Usage: main [OPTIONS] COMMAND [ARGS]..." in result.stdout
    for name in main.commands:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_has_help(name):
    result = invoke(name, "--help")
    assert_ok(result)
    assert "Usage: main {} [OPTIONS]".format(name) in result.stdout
    first_line = main.commands[name].help.strip().splitlines()[0]
    assert first_line.split(":")[0] in result.stdout


def test_version():
    result = invoke("--version")
    assert_ok(result)
    assert result.stdout.strip() == "edgeinfer, version {}".format(edgeinfer.__version__)


# -- convert ---------------------------------------------------------------------------------

def test_convert_writes_a_bundle_and_prints_the_validation_table(repo_root, model_path, out_dir,
                                                                 eval_labels):
    output = out_dir / "digits.eib"
    result = invoke("-q", "convert", model_path, "--precision", "fp32",
                    "--calibration", repo_root / "calibration" / "digits",
                    "--eval", repo_root / "calibration" / "digits-eval",
                    "--no-speed-check", "-o", output)
    assert_ok(result)
    assert sorted(os.listdir(str(out_dir))) == ["digits.eib"]
    bundle = Bundle.open(str(output))
    assert bundle.manifest["precision"] == "fp32"
    validation = bundle.manifest["validation"]
    assert validation["samples"] == len(eval_labels)
    lines = result.stdout.splitlines()
    assert lines[0] == "digits_cnn  ({})".format(output)
    assert "  precision:  fp32 (none)" in lines
    validated = "  validated on {} eval set:".format(len(eval_labels))
    assert validated in lines
    header = lines.index(validated) + 1
    assert lines[header].split() == ["output", "top-1", "FP32", "top-1", "agree", "cosine",
                                     "max", "abs", "err", "SQNR", "dB"]
    row = lines[header + 2].split()
    metrics = validation["outputs"]["logits"]
    assert row[:4] == ["logits", "{:.2f}%".format(100 * metrics["top1"]),
                       "{:.2f}%".format(100 * metrics["top1_fp32"]),
                       "{:.2f}%".format(100 * metrics["top1_agreement"])]


def test_convert_missing_model(out_dir):
    result = invoke("-q", "convert", out_dir / "nope.onnx", "-o", out_dir / "m.eib")
    assert_one_line_error(result, 1, "nope.onnx", "does not exist")
    assert os.listdir(str(out_dir)) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their mode, so chmod 000 proves nothing")
def test_convert_unreadable_model(tmp_path, out_dir, model_path):
    locked = tmp_path / "locked.onnx"
    locked.write_bytes(model_path.read_bytes())
    locked.chmod(0)
    try:
        result = invoke("-q", "convert", locked, "-o", out_dir / "m.eib")
    finally:
        locked.chmod(0o600)
    assert_one_line_error(result, 1, "locked.onnx", "cannot be read")
    assert os.listdir(str(out_dir)) == []


def test_convert_a_file_that_is_not_onnx(tmp_path, out_dir):
    text = tmp_path / "notes.onnx"
    text.write_bytes(b"these are my notes, not a model\n" * 10)
    result = invoke("-q", "convert", text, "-o", out_dir / "m.eib")
    assert_one_line_error(result, 1, "notes.onnx", "is not an ONNX model")
    assert os.listdir(str(out_dir)) == []


@pytest.mark.parametrize("version", [99, 3])
def test_convert_an_unsupported_opset(opset_models, out_dir, version):
    result = invoke("-q", "convert", opset_models[version], "-p", "fp32",
                    "-o", out_dir / "m.eib")
    line = assert_one_line_error(result, 1, "opset{}.onnx".format(version),
                                 "uses opset {}".format(version))
    assert "Supported opsets: 7 to" in line
    assert os.listdir(str(out_dir)) == []


def test_convert_with_an_empty_calibration_folder(tmp_path, out_dir, model_path):
    empty = tmp_path / "empty-calib"
    empty.mkdir()
    result = invoke("-q", "convert", model_path, "-c", empty, "-o", out_dir / "m.eib")
    assert_one_line_error(result, 1, str(empty))
    assert os.listdir(str(out_dir)) == []


def test_convert_with_a_calibration_file_that_is_not_an_image(tmp_path, out_dir, model_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "x.png").write_bytes(b"not an image at all\n")
    result = invoke("-q", "convert", model_path, "-m", "static", "-c", calib,
                    "-o", out_dir / "m.eib")
    assert_one_line_error(result, 1, "x.png")
    assert os.listdir(str(out_dir)) == []


def test_convert_to_an_unknown_target_is_a_usage_error(model_path, out_dir):
    result = invoke("-q", "convert", model_path, "--target", "commodore-64",
                    "-o", out_dir / "m.eib")
    line = assert_one_line_error(result, 2, "Unknown target 'commodore-64'")
    assert "Valid targets: cpu" in line
    assert os.listdir(str(out_dir)) == []


def test_convert_keeps_an_existing_output_without_overwrite(model_path, out_dir):
    output = out_dir / "m.eib"
    output.write_bytes(b"my precious earlier bundle")
    result = invoke("-q", "convert", model_path, "-p", "fp32", "-o", output)
    assert_one_line_error(result, 2, "already exists", "--overwrite")
    assert output.read_bytes() == b"my precious earlier bundle"
    assert os.listdir(str(out_dir)) == ["m.eib"]


def test_convert_with_bad_preprocess_json(model_path, out_dir):
    result = invoke("-q", "convert", model_path, "-p", "fp32", "--preprocess", "{oops",
                    "-o", out_dir / "m.eib")
    assert_one_line_error(result, 2, "--preprocess is neither a JSON file nor JSON text")
    assert os.listdir(str(out_dir)) == []


# -- inspect ---------------------------------------------------------------------------------

def test_inspect_prints_inputs_outputs_and_validation(digits_int8_bundle, eval_labels):
    result = invoke("inspect", digits_int8_bundle)
    assert_ok(result)
    lines = result.stdout.splitlines()
    manifest = Bundle.open(str(digits_int8_bundle)).manifest
    assert lines[0] == "digits_cnn  ({})".format(digits_int8_bundle)
    assert "  precision:  int8 (static)" in lines
    assert "  input:      input: float32[batch, 1, 8, 8]" in lines
    assert "  output:     logits: float32[batch, 10]" in lines
    assert "  target:     {} on onnxruntime (built with onnxruntime {}, needs >= {})".format(
        manifest["target"]["profile"], onnxruntime.__version__,
        manifest["target"]["min_backend_version"]) in lines
    assert "  validated on {} eval set:".format(len(eval_labels)) in lines
    entry = manifest["files"][0]
    assert any(line.startswith("  file:       model.onnx ") and entry["sha256"][:16] in line
               for line in lines)


def test_inspect_json_is_the_manifest(digits_int8_bundle):
    result = invoke("inspect", "--json", digits_int8_bundle)
    assert_ok(result)
    assert json.loads(result.stdout) == Bundle.open(str(digits_int8_bundle)).manifest


def test_inspect_a_minimal_bundle(tiny_bundle):
    result = invoke("inspect", tiny_bundle)
    assert_ok(result)
    assert "  output:     z: float32[batch, 3]" in result.stdout.splitlines()


BAD_FOR_COMMANDS = ["truncated", "tampered", "dotdot_member", "symlink", "newer_version",
                    "not_zip"]


@pytest.mark.parametrize("kind", BAD_FOR_COMMANDS)
def test_inspect_a_bad_bundle(bad_bundles, kind):
    bad = bad_bundles[kind]
    before = sorted(os.listdir(str(bad.path.parent)))
    result = invoke("inspect", bad.path)
    assert_one_line_error(result, 1, *bad.fragments)
    assert sorted(os.listdir(str(bad.path.parent))) == before


@pytest.mark.parametrize("kind", BAD_FOR_COMMANDS)
def test_run_a_bad_bundle(bad_bundles, inputs_dir, kind):
    bad = bad_bundles[kind]
    before = sorted(os.listdir(str(bad.path.parent)))
    result = invoke("run", bad.path, inputs_dir / "tiny.npy")
    assert_one_line_error(result, 1, *bad.fragments)
    assert sorted(os.listdir(str(bad.path.parent))) == before


def test_inspect_a_missing_bundle(tmp_path):
    result = invoke("inspect", tmp_path / "gone.eib")
    assert_one_line_error(result, 1, "gone.eib", "does not exist")


# -- run -------------------------------------------------------------------------------------

def test_run_on_a_png_prints_top_k_with_class_names(repo_root, digits_int8_bundle, eval_labels):
    png = repo_root / EVAL_PNG
    result = invoke("run", digits_int8_bundle, png, "--top-k", "3")
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[:2] == ["{}:".format(png), "  logits:"]
    with edgeinfer.load(str(digits_int8_bundle)) as session:
        feeds = {"input": Preprocess.from_dict(session.manifest["preprocess"])(str(png))[None]}
        expected = _expected_top(session, feeds, 3)[0]
    assert _printed_top(lines) == [(i + 1, name, p) for i, (name, p) in enumerate(expected)]
    assert expected[0][0] == str(eval_labels["00010.png"]), "the demo model gets it right"
    assert len(lines) == 5


def test_run_on_npy_and_npz_and_save(digits_int8_bundle, inputs_dir, tmp_path):
    saved = tmp_path / "outputs.npz"
    result = invoke("run", digits_int8_bundle, inputs_dir / "sample.npy",
                    inputs_dir / "sample.npz", "-k", "2", "--save", saved)
    assert_ok(result)
    with edgeinfer.load(str(digits_int8_bundle)) as session:
        one = {"input": np.load(str(inputs_dir / "sample.npy"))[None]}
        two = dict(np.load(str(inputs_dir / "sample.npz")))
        expected_one = _expected_top(session, one, 2)
        expected_two = _expected_top(session, two, 2)
        logits_one = session.run(one)["logits"]
        logits_two = session.run(two)["logits"]
    text = result.stdout
    block_one, block_two = text.split("{}:\n".format(inputs_dir / "sample.npz"))
    assert block_one.splitlines()[:2] == ["{}:".format(inputs_dir / "sample.npy"), "  logits:"]
    assert _printed_top(block_one.splitlines()) == [
        (i + 1, n, p) for i, (n, p) in enumerate(expected_one[0])]
    # A batch of two prints one ranking per row.
    assert "  logits[0]:" in block_two and "  logits[1]:" in block_two
    assert _printed_top(block_two.splitlines()) == [
        (i + 1, n, p) for row in expected_two for i, (n, p) in enumerate(row)]
    key_one = "{}/logits".format(inputs_dir / "sample.npy")
    key_two = "{}/logits".format(inputs_dir / "sample.npz")
    with np.load(str(saved)) as archive:
        assert sorted(archive.files) == sorted([key_one, key_two])
        np.testing.assert_array_equal(archive[key_one], logits_one)
        np.testing.assert_array_equal(archive[key_two], logits_two)
    assert sorted(os.listdir(str(tmp_path))) == ["outputs.npz"]


def test_run_save_keeps_same_named_inputs_apart_and_existing_files(digits_int8_bundle,
                                                                    inputs_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    x = np.load(str(inputs_dir / "sample.npy"))
    np.save(str(other / "sample.npy"), -x)
    saved = tmp_path / "outputs.npz"
    result = invoke("run", digits_int8_bundle, inputs_dir / "sample.npy", other / "sample.npy",
                    inputs_dir / "sample.npy", "--save", saved)
    assert_ok(result)
    with np.load(str(saved)) as archive:
        assert len(archive.files) == 3
        first = archive["{}/logits".format(inputs_dir / "sample.npy")]
        assert not np.array_equal(first, archive["{}/logits".format(other / "sample.npy")])
        np.testing.assert_array_equal(first, archive["{}#2/logits".format(
            inputs_dir / "sample.npy")])
    before = saved.read_bytes()
    result = invoke("run", digits_int8_bundle, other / "sample.npy", "--save", saved)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert saved.read_bytes() == before


def test_run_on_a_model_without_class_scores(tiny_bundle, inputs_dir):
    result = invoke("run", tiny_bundle, inputs_dir / "tiny.npy")
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "{}:".format(inputs_dir / "tiny.npy")
    assert "  y[0]:" in lines and "  z[1]:" in lines


@pytest.mark.parametrize("name, code, fragments", [
    ("wrong-shape.npy", 1, ["Input tensor: input", "Received shape [1, 1, 9, 9]",
                            "expected 8", "input: float32[batch, 1, 8, 8]"]),
    ("wrong-dtype.npy", 1, ["Input tensor: input", "unexpected dtype: bool",
                            "Expected type: float32"]),
    ("wrong-name.npz", 1, ["wrong-name.npz", "['image']", "['input']"]),
    ("truncated.npz", 1, ["truncated.npz", "Cannot read tensor file"]),
    ("not-an-image.png", 1, ["not-an-image.png", "Cannot read image"]),
    ("missing.npy", 1, ["missing.npy", "does not exist"]),
    ("text.npy", 1, ["text.npy", "Cannot read tensor file", "not a numpy array file"]),
    ("objects.npy", 1, ["objects.npy", "pickled (object) data", "no object arrays"]),
])
def test_run_with_bad_input(digits_int8_bundle, inputs_dir, name, code, fragments):
    result = invoke("run", digits_int8_bundle, inputs_dir / name)
    line = assert_one_line_error(result, code, *fragments)
    assert "allow_pickle" not in line, "never advise unpickling"


def test_run_an_image_on_a_bundle_without_preprocessing(repo_root, tiny_bundle):
    result = invoke("run", tiny_bundle, repo_root / EVAL_PNG)
    assert_one_line_error(result, 2, "records no image preprocessing",
                          "Give a .npy or .npz tensor instead.")


def test_run_needs_an_input():
    result = invoke("run", "whatever.eib")
    assert result.exit_code == 2
    assert "Missing argument 'INPUTS...'" in result.stderr


def test_debug_raises_the_real_exception(digits_int8_bundle, inputs_dir):
    with pytest.raises(DataError, match="Cannot read image"):
        invoke("--debug", "run", digits_int8_bundle, inputs_dir / "not-an-image.png")


# -- doctor ----------------------------------------------------------------------------------

def test_doctor():
    result = invoke("doctor")
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "python     {}".format(sys.version.split()[0])
    assert any(line.startswith("onnxruntime {}  providers: ".format(onnxruntime.__version__))
               for line in lines), lines
    assert lines[2].startswith("cpu        ") and lines[2].endswith(", {})".format(machine_arch()))
    assert lines[-1].startswith("int8       ")


def test_doctor_json():
    result = invoke("doctor", "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    assert report["python"] == sys.version.split()[0]
    assert report["arch"] == machine_arch()
    ort = report["backends"]["onnxruntime"]
    assert ort["available"] is True and ort["version"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in ort["detail"]
    assert sorted(report["backends"]) == ["onnxruntime", "openvino", "tensorrt"]
    assert isinstance(report["int8"], str) and report["int8"]


# -- the real console script -----------------------------------------------------------------

def _script(args, cwd, env=None):
    if not os.path.exists(EDGEINFER):
        pytest.skip("the edgeinfer console script is not installed beside {}".format(
            sys.executable))
    full_env = dict(os.environ)
    full_env.pop("EDGEINFER_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run([EDGEINFER] + [str(a) for a in args], cwd=str(cwd),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=full_env, timeout=120)


def _assert_script_error(done, code, *fragments):
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""


def test_script_missing_model(tmp_path, out_dir):
    done = _script(["-q", "convert", "missing.onnx", "-o", out_dir / "m.eib"], tmp_path)
    _assert_script_error(done, 1, "'missing.onnx' does not exist")
    assert os.listdir(str(out_dir)) == []


def test_script_failed_calibration_leaves_no_output_and_no_temp(tmp_path, out_dir, model_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "x.png").write_bytes(b"not an image")
    temp = tmp_path / "temp"
    temp.mkdir()
    done = _script(["-q", "convert", model_path, "-m", "static", "-c", calib,
                    "-o", out_dir / "m.eib"], tmp_path, env={"TMPDIR": str(temp)})
    _assert_script_error(done, 1, "x.png")
    assert os.listdir(str(out_dir)) == []
    # Importing onnxruntime itself drops a ".ses" file in the temp folder; nothing
    # else may stay (edgeinfer's work folder, quantization temp files).
    assert [n for n in os.listdir(str(temp)) if n != ".ses"] == [], "work folder left behind"


def test_script_unknown_target_exits_2(tmp_path, model_path, out_dir):
    done = _script(["-q", "convert", model_path, "-t", "toaster", "-o", out_dir / "m.eib"],
                   tmp_path)
    _assert_script_error(done, 2, "Unknown target 'toaster'")


def test_script_tampered_bundle(tmp_path, bad_bundles):
    done = _script(["inspect", bad_bundles["tampered"].path], tmp_path)
    _assert_script_error(done, 1, *bad_bundles["tampered"].fragments)


def test_script_wrong_shape(tmp_path, digits_int8_bundle, inputs_dir):
    done = _script(["run", digits_int8_bundle, inputs_dir / "wrong-shape.npy"], tmp_path)
    _assert_script_error(done, 1, "Input tensor: input", "Received shape [1, 1, 9, 9]")


@pytest.mark.parametrize("how", ["flag after the command", "environment"])
def test_script_debug_shows_the_traceback(tmp_path, digits_int8_bundle, inputs_dir, how):
    args = ["run", digits_int8_bundle, inputs_dir / "not-an-image.png"]
    if how == "flag after the command":
        done = _script(args + ["--debug"], tmp_path)
    else:
        done = _script(args, tmp_path, env={"EDGEINFER_DEBUG": "1"})
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "edgeinfer.errors.DataError: Cannot read image" in done.stderr


def test_script_run_happy_path(repo_root, digits_int8_bundle):
    done = _script(["run", digits_int8_bundle, EVAL_PNG, "--top-k", "3"], repo_root)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["{}:".format(EVAL_PNG), "  logits:"]
    assert [rank for rank, _, _ in _printed_top(lines)] == [1, 2, 3]
    assert "Traceback" not in done.stderr
