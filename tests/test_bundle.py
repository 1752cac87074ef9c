"""The .eib bundle: round trip, atomic writes, and every kind of bad bundle refused."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

from edgeinfer.bundle import FORMAT_VERSION, MANIFEST_NAME, MAX_MANIFEST_BYTES, Bundle
from edgeinfer.errors import BundleError, UsageError
from edgeinfer.tensors import TensorSpec


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _all_files(folder):
    """Every path under ``folder`` (files, links and folders), relative, sorted."""
    found = []
    for root, dirs, files in os.walk(str(folder)):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(root, name), str(folder)))
    return sorted(found)


# -- round trip ------------------------------------------------------------------------------

def test_write_then_open_round_trip(tmp_path, tiny_model, make_manifest):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"cat\ndog\nbird\n")
    path = tmp_path / "tiny.eib"
    manifest = make_manifest(notes=["written by a test"], classes=["cat", "dog", "bird"])

    written = Bundle.write(str(path), manifest,
                           {"model.onnx": tiny_model.data, "extra/labels.txt": str(labels)})
    opened = Bundle.open(str(path))

    assert "files" not in manifest, "write must not change the caller's dict"
    assert opened.manifest == written.manifest
    expected_files = [
        {"name": "extra/labels.txt", "sha256": _sha(labels.read_bytes()),
         "size": len(labels.read_bytes())},
        {"name": "model.onnx", "sha256": _sha(tiny_model.data), "size": len(tiny_model.data)},
    ]
    assert opened.manifest["files"] == expected_files
    assert dict((k, v) for k, v in opened.manifest.items() if k != "files") == manifest
    assert opened.name == "tiny"
    assert opened.backend == "onnxruntime"
    assert opened.files == ["extra/labels.txt", "model.onnx"]
    assert opened.size_of("model.onnx") == len(tiny_model.data)
    assert opened.inputs == [TensorSpec("x", "float32", ("batch", 4))]
    assert opened.outputs == [TensorSpec("y", "float32", ("batch", 3)),
                              TensorSpec("z", "float32", ("batch", 3))]
    assert opened.read("model.onnx") == tiny_model.data
    assert opened.read("extra/labels.txt") == b"cat\ndog\nbird\n"


def test_written_archive_layout(tiny_bundle, tiny_model):
    with zipfile.ZipFile(str(tiny_bundle)) as archive:
        infos = dict((i.filename, i) for i in archive.infolist())
        manifest = json.loads(archive.read(MANIFEST_NAME).decode("utf-8"))
    assert sorted(infos) == [MANIFEST_NAME, "model.onnx"]
    # Models are stored, not deflated, so a device reads them at disk speed.
    assert infos["model.onnx"].compress_type == zipfile.ZIP_STORED
    for info in infos.values():
        assert (info.external_attr >> 16) & 0o170000 == 0o100000, "plain files only"
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["files"] == [{"name": "model.onnx", "sha256": _sha(tiny_model.data),
                                  "size": len(tiny_model.data)}]


def test_same_content_gives_byte_identical_bundles(tmp_path, tiny_model, make_manifest):
    first, second = tmp_path / "a.eib", tmp_path / "b.eib"
    Bundle.write(str(first), make_manifest(), {"model.onnx": tiny_model.data})
    Bundle.write(str(second), make_manifest(), {"model.onnx": tiny_model.data})
    assert first.read_bytes() == second.read_bytes()


def test_read_of_unknown_member_names_it_and_what_exists(tiny_bundle):
    bundle = Bundle.open(str(tiny_bundle))
    with pytest.raises(BundleError) as info:
        bundle.read("weights.bin")
    assert "holds no file 'weights.bin'" in str(info.value)
    assert "It holds: model.onnx." in str(info.value)


def test_read_detects_a_file_changed_after_open(tmp_path, tiny_bundle, bad_bundles):
    path = tmp_path / "swapped.eib"
    path.write_bytes(tiny_bundle.read_bytes())
    bundle = Bundle.open(str(path))
    path.write_bytes(bad_bundles["tampered"].path.read_bytes())
    with pytest.raises(BundleError, match="'model.onnx' changed since it was opened"):
        bundle.read("model.onnx")


def test_open_without_verify_skips_hashes_but_read_still_checks(bad_bundles):
    bundle = Bundle.open(str(bad_bundles["tampered"].path), verify=False)
    assert bundle.files == ["model.onnx"]
    with pytest.raises(BundleError, match="changed since it was opened"):
        bundle.read("model.onnx")


def test_open_of_a_missing_path(tmp_path):
    with pytest.raises(BundleError) as info:
        Bundle.open(str(tmp_path / "nowhere.eib"))
    assert "nowhere.eib" in str(info.value) and "does not exist" in str(info.value)


# -- extract ---------------------------------------------------------------------------------

def test_extract_writes_every_member_inside_the_folder(tmp_path, tiny_model, make_manifest):
    path = tmp_path / "src" / "b.eib"
    path.parent.mkdir()
    Bundle.write(str(path), make_manifest(),
                 {"model.onnx": tiny_model.data, "extra/deep/labels.txt": b"a\nb\n"})
    work = tmp_path / "work"
    work.mkdir()

    returned = Bundle.open(str(path)).extract(str(work / "dest"))

    assert returned == str(work / "dest")
    assert _all_files(work) == ["dest", "dest/extra", "dest/extra/deep",
                                "dest/extra/deep/labels.txt", "dest/model.onnx"]
    assert (work / "dest" / "model.onnx").read_bytes() == tiny_model.data
    assert (work / "dest" / "extra" / "deep" / "labels.txt").read_bytes() == b"a\nb\n"


def test_extract_refuses_to_follow_a_link_out_of_the_folder(tmp_path, tiny_bundle):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(outside), str(dest / "model.onnx"))
    with pytest.raises(BundleError, match="would land outside"):
        Bundle.open(str(tiny_bundle)).extract(str(dest))
    assert outside.read_bytes() == b"precious"


@pytest.mark.parametrize("kind", ["dotdot_member", "absolute_member", "symlink", "directory"])
def test_unsafe_bundles_never_create_files_outside(tmp_path, bad_bundles, kind):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    copy = work / "x.eib"
    copy.write_bytes(bad_bundles[kind].path.read_bytes())
    evil_absolute = "/tmp/edgeinfer-evil"
    existed = os.path.lexists(evil_absolute)

    with pytest.raises(BundleError):
        Bundle.open(str(copy)).extract(str(work / "dest"))

    assert _all_files(tmp_path) == ["a", "a/b", "a/b/x.eib"]
    if not existed:
        assert not os.path.lexists(evil_absolute)


# -- atomic writes ---------------------------------------------------------------------------

def test_failed_write_leaves_no_file_and_no_temp(tmp_path, tiny_model, make_manifest):
    path = tmp_path / "out.eib"
    with pytest.raises(UsageError, match="missing.txt"):
        Bundle.write(str(path), make_manifest(),
                     {"model.onnx": tiny_model.data, "labels.txt": str(tmp_path / "missing.txt")})
    assert _all_files(tmp_path) == []


def test_failed_write_keeps_an_existing_bundle_intact(tmp_path, tiny_bundle, tiny_model,
                                                      make_manifest):
    path = tmp_path / "out.eib"
    path.write_bytes(tiny_bundle.read_bytes())
    with pytest.raises(UsageError, match="missing.txt"):
        Bundle.write(str(path), make_manifest(name="new"),
                     {"model.onnx": tiny_model.data, "labels.txt": str(tmp_path / "missing.txt")})
    assert path.read_bytes() == tiny_bundle.read_bytes()
    assert _all_files(tmp_path) == ["out.eib"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_FSIZE (Linux)")
def test_disk_full_mid_write_keeps_the_old_bundle_and_no_temp(tmp_path, tiny_bundle):
    # A real failure after the temporary file exists: the child process may write at
    # most 64 KiB per file, and the bundle it writes holds 1 MiB.
    path = tmp_path / "out.eib"
    path.write_bytes(tiny_bundle.read_bytes())
    script = textwrap.dedent("""
        import resource, signal, sys
        sys.path.insert(0, {root!r})
        from tests.conftest import tiny_manifest
        from edgeinfer.bundle import Bundle
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            Bundle.write({path!r}, tiny_manifest(), {{"model.onnx": b"x" * (1 << 20)}})
        except OSError as exc:
            print("errno", exc.errno)
        else:
            print("written")
    """).format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                path=str(path))
    done = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "errno 27"  # EFBIG: File too large
    assert path.read_bytes() == tiny_bundle.read_bytes()
    assert _all_files(tmp_path) == ["out.eib"]


def test_write_refuses_to_replace_without_overwrite(tmp_path, tiny_bundle, tiny_model,
                                                    make_manifest):
    path = tmp_path / "out.eib"
    path.write_bytes(b"the user's file")
    with pytest.raises(UsageError) as info:
        Bundle.write(str(path), make_manifest(), {"model.onnx": tiny_model.data},
                     overwrite=False)
    assert "already exists" in str(info.value) and "--overwrite" in str(info.value)
    assert path.read_bytes() == b"the user's file"
    assert _all_files(tmp_path) == ["out.eib"]


def test_write_replaces_with_overwrite(tmp_path, tiny_model, make_manifest):
    path = tmp_path / "out.eib"
    path.write_bytes(b"old")
    Bundle.write(str(path), make_manifest(name="fresh"), {"model.onnx": tiny_model.data})
    assert Bundle.open(str(path)).name == "fresh"
    assert _all_files(tmp_path) == ["out.eib"]


def test_write_into_a_missing_folder(tmp_path, tiny_model, make_manifest):
    with pytest.raises(UsageError, match="does not exist"):
        Bundle.write(str(tmp_path / "no" / "out.eib"), make_manifest(),
                     {"model.onnx": tiny_model.data})
    assert _all_files(tmp_path) == []


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/../../x", "a\\b"])
def test_write_refuses_unsafe_member_names(tmp_path, tiny_model, make_manifest, name):
    with pytest.raises(BundleError, match="unsafe member name"):
        Bundle.write(str(tmp_path / "out.eib"), make_manifest(),
                     {"model.onnx": tiny_model.data, name: b"x"})
    assert _all_files(tmp_path) == []


def test_write_refuses_an_oversized_manifest(tmp_path, tiny_model, make_manifest):
    manifest = make_manifest(notes=["x" * (MAX_MANIFEST_BYTES + 1)])
    with pytest.raises(BundleError, match="over the {} byte limit".format(MAX_MANIFEST_BYTES)):
        Bundle.write(str(tmp_path / "out.eib"), manifest, {"model.onnx": tiny_model.data})
    assert _all_files(tmp_path) == []


@pytest.mark.parametrize("change, message", [
    ({"model": "other.onnx"}, "names model file 'other.onnx', which it does not hold"),
    ({"flavour": 1}, "unknown keys: flavour"),
    ({"format_version": FORMAT_VERSION + 1}, "format version {}".format(FORMAT_VERSION + 1)),
    ({"inputs": [{"name": "x", "dtype": "float32"}]}, "Malformed tensor spec"),
    ({"target": {"profile": "x86-cpu"}}, "no target backend"),
])
def test_write_refuses_a_malformed_manifest(tmp_path, tiny_model, make_manifest, change,
                                            message):
    with pytest.raises(BundleError, match=message):
        Bundle.write(str(tmp_path / "out.eib"), make_manifest(**change),
                     {"model.onnx": tiny_model.data})
    assert _all_files(tmp_path) == []


def test_write_refuses_a_manifest_missing_required_keys(tmp_path, tiny_model, make_manifest):
    manifest = make_manifest()
    del manifest["precision"], manifest["versions"]
    with pytest.raises(BundleError, match="manifest lacks precision, versions"):
        Bundle.write(str(tmp_path / "out.eib"), manifest, {"model.onnx": tiny_model.data})


# -- bad bundles -----------------------------------------------------------------------------

BAD_KINDS = ["not_zip", "truncated", "tampered", "unlisted_member", "missing_member",
             "size_mismatch", "dotdot_member", "absolute_member", "symlink", "directory",
             "newer_version", "oversized_manifest", "unknown_keys", "no_manifest"]


def test_every_bad_kind_is_covered(bad_bundles):
    assert sorted(bad_bundles) == sorted(BAD_KINDS)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_bundle_is_refused_with_a_message_naming_the_problem(bad_bundles, kind):
    bad = bad_bundles[kind]
    before = _all_files(bad.path.parent)
    with pytest.raises(BundleError) as info:
        Bundle.open(str(bad.path))
    message = str(info.value)
    for fragment in bad.fragments:
        assert fragment in message
    assert "\n" not in message, "errors are one line"
    assert _all_files(bad.path.parent) == before


def test_a_newer_format_version_says_to_upgrade(bad_bundles):
    with pytest.raises(BundleError) as info:
        Bundle.open(str(bad_bundles["newer_version"].path))
    assert "uses format version {}, newer than this edgeinfer reads (up to {})".format(
        FORMAT_VERSION + 1, FORMAT_VERSION) in info.value.message
    assert "pip install -U edgeinfer" in info.value.hint


def test_a_manifest_that_is_not_json(tmp_path, tiny_model, rezip):
    _, write_zip, _ = rezip
    path = write_zip(tmp_path / "garbled.eib", [(MANIFEST_NAME, b"{not json"),
                                                ("model.onnx", tiny_model.data)])
    with pytest.raises(BundleError, match="unreadable manifest"):
        Bundle.open(str(path))


def test_a_member_stored_twice(tmp_path, tiny_bundle, rezip):
    read_members, write_zip, _ = rezip
    members = read_members(tiny_bundle)
    path = tmp_path / "twice.eib"
    with pytest.warns(UserWarning, match="Duplicate name"):
        write_zip(path, [(MANIFEST_NAME, members[MANIFEST_NAME]),
                         ("model.onnx", members["model.onnx"]),
                         ("model.onnx", members["model.onnx"])])
    with pytest.raises(BundleError, match="holds 'model.onnx' twice"):
        Bundle.open(str(path))
