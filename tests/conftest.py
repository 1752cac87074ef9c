"""Shared fixtures: tiny models built in code, the demo model's bundles, and bad bundles.

Everything expensive is session-scoped and built once: the two conversions of the
demo model take a few seconds together, the rest milliseconds.

The models are built by the catalogue in ``tests/models.py``; the fixtures here:

* ``tiny_model`` (float, two outputs)::

      x: float32[batch, 4]
            |
        MatMul(W: float32[4, 3])
            |
        Add(b: float32[3]) ----------> z: float32[batch, 3]   (pre-activation)
            |
          Relu
            |
      y: float32[batch, 3]

  ``y = relu(x @ W + b)``, ``z = x @ W + b``; W and b are seeded so tests can
  compute the expected outputs with numpy.

* ``int_model`` (integer input, for dtype rules)::

      n: int64[batch, 2] --> Add(n, n) --> m: int64[batch, 2]

* the demo model ``models/digits_cnn.onnx``: ``input`` float32[batch, 1, 8, 8] ->
  ``logits`` float32[batch, 10], converted by :func:`edgeinfer.convert` to FP32 and
  to static INT8 (calibration/digits, evaluated on calibration/digits-eval).
"""

import copy
import hashlib
import json
import stat
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest

import edgeinfer
from edgeinfer.bundle import FORMAT, FORMAT_VERSION, MANIFEST_NAME, MAX_MANIFEST_BYTES, Bundle

from . import models

REPO_ROOT = Path(__file__).resolve().parent.parent

# ONNX opset and IR version of the tiny models: old enough for any ONNX Runtime the
# project supports (opset 13 needs ORT >= 1.7; IR 7 is read by every ORT since 1.6).
TINY_OPSET = 13
TINY_IR_VERSION = 7

TinyModel = namedtuple("TinyModel", "path data W b")
BadBundle = namedtuple("BadBundle", "path fragments")


def _tensorrt_missing():
    """Why TensorRT-marked tests cannot run here, or None when they can."""
    import importlib
    try:
        importlib.import_module("tensorrt")
    except Exception as exc:  # a broken install raises more than ImportError
        return ("TensorRT is not installed here ({}): these tests need an NVIDIA GPU with "
                "TensorRT, e.g. a Jetson; see docs/JETSON.md".format(
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    return None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "tensorrt: needs TensorRT's Python package, a CUDA binding and an NVIDIA "
                   "GPU (a Jetson); skipped with the reason elsewhere")


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("tensorrt")]
    why = _tensorrt_missing() if marked else None
    if why:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """Keep every test's backend caches (OpenVINO's model cache) out of the user's home."""
    patch = pytest.MonkeyPatch()
    patch.setenv("EDGEINFER_CACHE_DIR", str(tmp_path_factory.mktemp("edgeinfer-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def repo_root():
    """The repository root (holds models/ and calibration/)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir):
    """The tiny float model (see the catalogue above), checked and saved."""
    import onnx
    model, W, b = models.tiny(TINY_OPSET, TINY_IR_VERSION)
    onnx.checker.check_model(model)
    path = models_dir / "tiny.onnx"
    onnx.save(model, str(path))
    return TinyModel(path, path.read_bytes(), W, b)


@pytest.fixture(scope="session")
def int_model(models_dir):
    """The tiny int64 model (see the catalogue above), checked and saved."""
    import onnx
    model = models.int_add(TINY_OPSET, TINY_IR_VERSION)
    onnx.checker.check_model(model)
    path = models_dir / "int.onnx"
    onnx.save(model, str(path))
    return path


def tiny_manifest(**overrides):
    """A minimal valid manifest (without ``files``) for the tiny float model."""
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": "tiny",
        "model": "model.onnx",
        "target": {"backend": "onnxruntime", "profile": None, "min_backend_version": "1.7"},
        "precision": "fp32", "method": "none",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 3]},
                    {"name": "z", "dtype": "float32", "shape": ["batch", 3]}],
        "versions": {"edgeinfer": edgeinfer.__version__},
    }
    manifest.update(copy.deepcopy(overrides))
    return manifest


@pytest.fixture(scope="session")
def make_manifest():
    """Factory: ``make_manifest(**overrides)`` -> a fresh manifest for the tiny model."""
    return tiny_manifest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model):
    """A valid bundle of the tiny model written with :meth:`Bundle.write`."""
    path = tmp_path_factory.mktemp("tiny-bundle") / "tiny.eib"
    Bundle.write(str(path), tiny_manifest(), {"model.onnx": tiny_model.data})
    return path


def _convert_demo(repo_root, folder, precision):
    output = folder / "digits-{}.eib".format(precision)
    edgeinfer.convert(
        str(repo_root / "models" / "digits_cnn.onnx"), target="cpu", precision=precision,
        method="static" if precision == "int8" else "auto",
        calibration=str(repo_root / "calibration" / "digits"),
        eval=str(repo_root / "calibration" / "digits-eval"), output=str(output))
    return output


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("digits")


@pytest.fixture(scope="session")
def digits_fp32_bundle(repo_root, digits_dir):
    """The demo model converted to FP32 (path)."""
    return _convert_demo(repo_root, digits_dir, "fp32")


@pytest.fixture(scope="session")
def digits_int8_bundle(repo_root, digits_dir):
    """The demo model converted to static INT8 (path)."""
    return _convert_demo(repo_root, digits_dir, "int8")


@pytest.fixture(scope="session")
def digits_fp16_bundle(repo_root, digits_dir):
    """The demo model converted to FP16 (path)."""
    return _convert_demo(repo_root, digits_dir, "fp16")


# -- bad bundles -----------------------------------------------------------------------------

def read_members(path):
    """{name: bytes} of every member of a zip, in archive order."""
    with zipfile.ZipFile(str(path)) as archive:
        return dict((info.filename, archive.read(info)) for info in archive.infolist())


def write_zip(path, entries):
    """Write a zip from ``entries``: a list of (name or ZipInfo, bytes)."""
    with zipfile.ZipFile(str(path), "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def manifest_entry(name, data):
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _bad_bundles(folder, good, model_bytes):
    """Every kind of broken bundle, each beside its expected message fragments."""
    members = read_members(good)
    manifest = json.loads(members[MANIFEST_NAME].decode("utf-8"))
    model = members["model.onnx"]
    assert model == model_bytes

    def dump(m):
        return json.dumps(m, indent=2).encode("utf-8")

    def with_manifest(name, m, extra=()):
        return write_zip(folder / name, [(MANIFEST_NAME, dump(m)), ("model.onnx", model)]
                         + list(extra))

    bad = {}
    not_zip = folder / "not-a-zip.eib"
    not_zip.write_bytes(b"this is a text file, not an edgeinfer bundle\n" * 20)
    bad["not_zip"] = BadBundle(not_zip, ["not-a-zip.eib", "not a readable .eib bundle",
                                         "Note: The file is truncated or not a bundle"])

    data = Path(good).read_bytes()
    truncated = folder / "truncated.eib"
    truncated.write_bytes(data[:len(data) // 2])
    bad["truncated"] = BadBundle(truncated, ["truncated.eib", "not a readable .eib bundle",
                                             "Note: The file is truncated"])

    # One byte of model.onnx changed, same size, same (now wrong) manifest.
    tampered_model = bytearray(model)
    tampered_model[len(model) // 2] ^= 0xFF
    bad["tampered"] = BadBundle(
        write_zip(folder / "tampered.eib", [(MANIFEST_NAME, dump(manifest)),
                                             ("model.onnx", bytes(tampered_model))]),
        ["tampered.eib", "'model.onnx'", "sha256", "tampered"])

    bad["unlisted_member"] = BadBundle(
        with_manifest("unlisted.eib", manifest, [("readme.txt", b"hello")]),
        ["unlisted.eib", "does not list", "readme.txt"])

    lacking = copy.deepcopy(manifest)
    lacking["files"].append(manifest_entry("weights.bin", b"\x00" * 16))
    bad["missing_member"] = BadBundle(with_manifest("lacking.eib", lacking),
                                      ["lacking.eib", "lacks 'weights.bin'"])

    wrong_size = copy.deepcopy(manifest)
    wrong_size["files"][0]["size"] += 1
    bad["size_mismatch"] = BadBundle(
        with_manifest("size.eib", wrong_size),
        ["size.eib", "'model.onnx' is {} bytes, the manifest says {}".format(
            len(model), len(model) + 1)])

    escaping = copy.deepcopy(manifest)
    escaping["files"].append(manifest_entry("../evil", b"pwned"))
    bad["dotdot_member"] = BadBundle(
        with_manifest("dotdot.eib", escaping, [("../evil", b"pwned")]),
        ["dotdot.eib", "unsafe member name '../evil'"])

    absolute = copy.deepcopy(manifest)
    absolute["files"].append(manifest_entry("/tmp/edgeinfer-evil", b"pwned"))
    bad["absolute_member"] = BadBundle(
        with_manifest("absolute.eib", absolute, [("/tmp/edgeinfer-evil", b"pwned")]),
        ["absolute.eib", "unsafe member name '/tmp/edgeinfer-evil'"])

    link = zipfile.ZipInfo("link.onnx")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    bad["symlink"] = BadBundle(with_manifest("symlink.eib", manifest, [(link, b"/etc/passwd")]),
                               ["symlink.eib", "symbolic link", "'link.onnx'"])

    folder_entry = zipfile.ZipInfo("sub/")
    folder_entry.external_attr = ((stat.S_IFDIR | 0o755) << 16) | 0x10
    bad["directory"] = BadBundle(with_manifest("dir.eib", manifest, [(folder_entry, b"")]),
                                 ["dir.eib", "folder entry 'sub/'"])

    newer = copy.deepcopy(manifest)
    newer["format_version"] = FORMAT_VERSION + 1
    bad["newer_version"] = BadBundle(
        with_manifest("newer.eib", newer),
        ["newer.eib", "format version {}".format(FORMAT_VERSION + 1), "Upgrade edgeinfer"])

    # Valid JSON padded past the limit: the size alone must refuse it.
    padded = dump(manifest) + b" " * (MAX_MANIFEST_BYTES + 1 - len(dump(manifest)))
    big = folder / "big-manifest.eib"
    with zipfile.ZipFile(str(big), "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST_NAME, padded)
        archive.writestr("model.onnx", model)
    bad["oversized_manifest"] = BadBundle(
        big, ["big-manifest.eib", "{} byte manifest".format(len(padded)),
              "{} byte limit".format(MAX_MANIFEST_BYTES)])

    unknown = copy.deepcopy(manifest)
    unknown["colour"] = "blue"
    bad["unknown_keys"] = BadBundle(with_manifest("unknown.eib", unknown),
                                    ["unknown.eib", "unknown keys: colour"])

    bad["no_manifest"] = BadBundle(
        write_zip(folder / "no-manifest.eib", [("model.onnx", model)]),
        ["no-manifest.eib", "no manifest.json"])
    return bad


@pytest.fixture(scope="session")
def bad_bundles(tmp_path_factory, tiny_bundle, tiny_model):
    """dict kind -> BadBundle(path, message fragments), derived from ``tiny_bundle``."""
    return _bad_bundles(tmp_path_factory.mktemp("bad-bundles"), tiny_bundle, tiny_model.data)


@pytest.fixture(scope="session")
def rezip():
    """Helpers to read and write raw zips: (read_members, write_zip, manifest_entry)."""
    return read_members, write_zip, manifest_entry
