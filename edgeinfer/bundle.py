"""The ``.eib`` bundle: one file that carries a converted model to a device.

An ``.eib`` is a zip archive.  ``manifest.json`` describes the model (source and
its hash, target backend and device profile, precision and method, inputs and
outputs, preprocessing, calibration and validation results, versions) and lists
every other member with its sha256 and size.  Members are stored uncompressed so
a device reads them at disk speed.

Opening a bundle trusts nothing in it: the manifest size is bounded, the format
version must be one this edgeinfer reads, every member must be listed, plain,
inside the bundle and match its hash.  Nothing is ever unpickled.
"""

import hashlib
import json
import os
import posixpath
import stat
import tempfile
import zipfile

from .errors import BundleError, UsageError
from .partitions import validate_partitions
from .tensors import specs_from_dicts

FORMAT = "edgeinfer-bundle"
# 2: sharded bundles (manifest "partitions", issue 7).  Unsharded bundles are still
# written as 1, so an edgeinfer from before sharding reads them; it refuses version 2.
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_CHUNK = 1024 * 1024

# Top-level manifest keys: required ones, then optional ones.  Unknown keys are
# refused so a misspelt field is never silently ignored.  ``deterministic``:
# false marks a model whose outputs vary between runs, which sessions then never
# cache (issue 6, requirement 7).
REQUIRED_KEYS = ("format", "format_version", "name", "model", "target", "precision", "method",
                 "inputs", "outputs", "files", "versions")
OPTIONAL_KEYS = ("created", "source", "quantization", "preprocess", "classes", "partitions",
                 "calibration", "validation", "notes", "accuracy_control", "engine",
                 "deterministic")


def sha256_of(source):
    """Return the hex sha256 of a file path or of bytes, reading in chunks."""
    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
        return digest.hexdigest()
    with open(source, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_member_name(name, where):
    """Refuse member names that could escape the bundle's folder when extracted."""
    if (not name or name.startswith("/") or name.startswith("\\") or "\\" in name
            or ":" in name or name != posixpath.normpath(name)
            or name.split("/")[0] == ".." or "/../" in "/" + name + "/"):
        raise BundleError("Bundle {} has an unsafe member name {!r}: it points outside the "
                          "bundle.".format(where, name),
                          "edgeinfer refuses such archives; rebuild it with `edgeinfer convert`.")


def validate_manifest(manifest, where="(in memory)"):
    """Check a manifest's structure and return it.

    Raises:
        BundleError: wrong format, newer format version, missing or unknown keys,
            malformed tensor specs or file list.
    """
    if not isinstance(manifest, dict):
        raise BundleError("Bundle {} has a manifest that is not a JSON object.".format(where))
    if manifest.get("format") != FORMAT:
        raise BundleError("{} is not an edgeinfer bundle (manifest format {!r}).".format(
            where, manifest.get("format")), "Expected format {!r}.".format(FORMAT))
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError("Bundle {} has no valid format_version.".format(where))
    if version > FORMAT_VERSION:
        raise BundleError(
            "Bundle {} uses format version {}, newer than this edgeinfer reads (up to {}).".format(
                where, version, FORMAT_VERSION),
            "Upgrade edgeinfer on this machine (`pip install -U edgeinfer`), or convert the "
            "model again with the edgeinfer version installed here.")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError("Bundle {} manifest lacks {}.".format(where, ", ".join(missing)),
                          "Rebuild it with `edgeinfer convert`.")
    unknown = sorted(set(manifest) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise BundleError("Bundle {} manifest has unknown keys: {}.".format(
            where, ", ".join(unknown)), "It was written by another edgeinfer; convert again.")
    specs_from_dicts(manifest["inputs"])
    specs_from_dicts(manifest["outputs"])
    if not isinstance(manifest.get("deterministic", True), bool):
        raise BundleError("Bundle {} manifest has 'deterministic': {!r}, not true or false.".format(
            where, manifest["deterministic"]), "false marks a model whose results must not be "
            "cached; leave it out otherwise.")
    target = manifest["target"]
    if not isinstance(target, dict) or not isinstance(target.get("backend"), str):
        raise BundleError("Bundle {} manifest has no target backend.".format(where))
    files = manifest["files"]
    if not isinstance(files, list):
        raise BundleError("Bundle {} manifest 'files' is not a list.".format(where))
    names = set()
    for entry in files:
        try:
            name, digest, size = entry["name"], entry["sha256"], entry["size"]
        except (KeyError, TypeError):
            raise BundleError("Bundle {} manifest has a malformed file entry {!r}.".format(
                where, entry))
        if not isinstance(size, int) or size < 0 or not isinstance(digest, str):
            raise BundleError("Bundle {} manifest has a malformed file entry {!r}.".format(
                where, entry))
        _check_member_name(name, where)
        if name == MANIFEST_NAME or name in names:
            raise BundleError("Bundle {} manifest lists {!r} twice.".format(where, name))
        names.add(name)
    if manifest["model"] not in names:
        raise BundleError("Bundle {} names model file {!r}, which it does not hold.".format(
            where, manifest["model"]))
    validate_partitions(manifest, where)
    return manifest


class Bundle(object):
    """An opened, verified ``.eib`` file.

    Use :meth:`Bundle.open` to read one and :meth:`Bundle.write` to make one.

    Attributes:
        path: the bundle file.
        manifest: the manifest as a dict (validated).
    """

    def __init__(self, path, manifest):
        self.path = path
        self.manifest = manifest
        self._files = {entry["name"]: entry for entry in manifest["files"]}

    # -- reading ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path, verify=True):
        """Open a bundle and check it.

        Args:
            path: the ``.eib`` file.
            verify: hash every member against the manifest (default True).  Structure,
                names, links and sizes are always checked.

        Raises:
            BundleError: missing, truncated, not a bundle, unsafe, tampered or newer.
        """
        path = os.fspath(path)
        where = repr(path)
        if not os.path.isfile(path):
            raise BundleError("Bundle {} does not exist.".format(where),
                              "Check the path; bundles are made by `edgeinfer convert`.")
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise BundleError("{} is not a readable .eib bundle ({}).".format(where, exc),
                              "The file is truncated or not a bundle; copy it again or "
                              "rebuild it with `edgeinfer convert`.")
        with archive:
            infos = {}
            for info in archive.infolist():
                # Kind before name: a folder entry "sub/" is a folder, not an unsafe name.
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode) or stat.S_ISDIR(mode) or info.is_dir():
                    raise BundleError("Bundle {} contains a {} entry {!r}.".format(
                        where, "symbolic link" if stat.S_ISLNK(mode) else "folder",
                        info.filename), "edgeinfer bundles hold plain files only; "
                        "rebuild it with `edgeinfer convert`.")
                _check_member_name(info.filename, where)
                if info.filename in infos:
                    raise BundleError("Bundle {} holds {!r} twice.".format(where, info.filename))
                infos[info.filename] = info
            manifest_info = infos.get(MANIFEST_NAME)
            if manifest_info is None:
                raise BundleError("{} has no manifest.json: it is not an edgeinfer bundle.".format(
                    where), "Rebuild it with `edgeinfer convert`.")
            if manifest_info.file_size > MAX_MANIFEST_BYTES:
                raise BundleError("Bundle {} has a {} byte manifest, over the {} byte limit.".format(
                    where, manifest_info.file_size, MAX_MANIFEST_BYTES),
                    "edgeinfer refuses it; rebuild the bundle with `edgeinfer convert`.")
            try:
                with archive.open(manifest_info) as handle:
                    raw = handle.read(MAX_MANIFEST_BYTES + 1)
                manifest = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as exc:
                raise BundleError("Bundle {} has an unreadable manifest ({}).".format(where, exc),
                                  "The file is damaged; copy it again or rebuild it.")
            validate_manifest(manifest, where)
            listed = set(e["name"] for e in manifest["files"])
            extra = sorted(set(infos) - listed - {MANIFEST_NAME})
            if extra:
                raise BundleError("Bundle {} holds files its manifest does not list: {}.".format(
                    where, ", ".join(extra)), "It was altered after it was written; rebuild it.")
            for entry in manifest["files"]:
                info = infos.get(entry["name"])
                if info is None:
                    raise BundleError("Bundle {} lacks {!r}, listed in its manifest.".format(
                        where, entry["name"]), "The file is truncated; copy it again.")
                if info.file_size != entry["size"]:
                    raise BundleError(
                        "Bundle {}: {!r} is {} bytes, the manifest says {}.".format(
                            where, entry["name"], info.file_size, entry["size"]),
                        "The file was damaged or changed; copy it again or rebuild it.")
                if verify:
                    cls._verify_member(archive, info, entry, where)
        return cls(path, manifest)

    @staticmethod
    def _verify_member(archive, info, entry, where):
        digest = hashlib.sha256()
        try:
            with archive.open(info) as handle:
                for chunk in iter(lambda: handle.read(_CHUNK), b""):
                    digest.update(chunk)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BundleError("Bundle {}: cannot read {!r} ({}).".format(
                where, entry["name"], exc), "The file is truncated; copy it again.")
        if digest.hexdigest() != entry["sha256"]:
            raise BundleError(
                "Bundle {}: {!r} does not match its sha256 in the manifest (tampered or "
                "corrupt).".format(where, entry["name"]),
                "Copy the bundle again, or rebuild it with `edgeinfer convert`.")

    @property
    def name(self):
        return self.manifest["name"]

    @property
    def inputs(self):
        return specs_from_dicts(self.manifest["inputs"])

    @property
    def outputs(self):
        return specs_from_dicts(self.manifest["outputs"])

    @property
    def backend(self):
        return self.manifest["target"]["backend"]

    @property
    def files(self):
        """Names of the member files, as the manifest lists them."""
        return [entry["name"] for entry in self.manifest["files"]]

    def size_of(self, name):
        return self._entry(name)["size"]

    def _entry(self, name):
        try:
            return self._files[name]
        except KeyError:
            raise BundleError("Bundle {!r} holds no file {!r}.".format(self.path, name),
                              "It holds: {}.".format(", ".join(sorted(self._files))))

    def read(self, name):
        """Return the bytes of one member, checked against its sha256."""
        entry = self._entry(name)
        with zipfile.ZipFile(self.path) as archive:
            data = archive.read(name)
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BundleError("Bundle {!r}: {!r} changed since it was opened.".format(
                self.path, name), "Copy the bundle again.")
        return data

    def extract(self, folder):
        """Write every member under ``folder`` (created if needed); return the folder.

        Names were checked on open, so nothing lands outside ``folder``.
        """
        os.makedirs(folder, exist_ok=True)
        root = os.path.realpath(folder)
        with zipfile.ZipFile(self.path) as archive:
            for name in self.files:
                target = os.path.realpath(os.path.join(root, *name.split("/")))
                if not target.startswith(root + os.sep):
                    raise BundleError("Bundle {!r}: member {!r} would land outside {}.".format(
                        self.path, name, folder))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with archive.open(name) as src, open(target, "wb") as dst:
                    for chunk in iter(lambda: src.read(_CHUNK), b""):
                        dst.write(chunk)
        return folder

    # -- writing ---------------------------------------------------------------------------

    @classmethod
    def write(cls, path, manifest, files, overwrite=True):
        """Write a bundle atomically and return it opened.

        The archive is written under a temporary name beside ``path`` and renamed
        into place only when complete, so a failure never leaves a partial file and
        an existing bundle at ``path`` stays intact until the new one is whole.

        Args:
            path: the ``.eib`` file to write.
            manifest: manifest dict without the ``files`` list (it is filled in here).
            files: dict member name -> file path or bytes.
            overwrite: replace an existing file at ``path`` (default True).

        Raises:
            UsageError: ``path`` exists and ``overwrite`` is False, or its folder is missing.
            BundleError: the manifest is malformed.
        """
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UsageError("Output folder {!r} does not exist.".format(folder),
                             "Create it first, or choose another output path with -o.")
        if os.path.exists(path) and not overwrite:
            raise UsageError("Output {!r} already exists.".format(path),
                             "Choose another name, or pass --overwrite.")
        manifest = dict(manifest)
        manifest["files"] = []
        for name in sorted(files):
            source = files[name]
            _check_member_name(name, repr(path))
            if not isinstance(source, (bytes, bytearray)) and not os.path.isfile(source):
                raise UsageError("File {!r} to put in bundle {!r} as {!r} does not exist.".format(
                    source, path, name), "Give an existing file or its bytes.")
            size = len(source) if isinstance(source, (bytes, bytearray)) else os.path.getsize(source)
            manifest["files"].append({"name": name, "sha256": sha256_of(source), "size": size})
        validate_manifest(manifest, repr(path))
        text = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
        if len(text) > MAX_MANIFEST_BYTES:
            raise BundleError("The manifest would be {} bytes, over the {} byte limit.".format(
                len(text), MAX_MANIFEST_BYTES), "Keep large data (labels, tables) in bundle "
                "files rather than in the manifest.")
        handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".eib", dir=folder)
        os.close(handle)
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as out:
                out.writestr(_member_info(MANIFEST_NAME, zipfile.ZIP_DEFLATED), text)
                for entry in manifest["files"]:
                    source = files[entry["name"]]
                    info = _member_info(entry["name"], zipfile.ZIP_STORED)
                    if isinstance(source, (bytes, bytearray)):
                        out.writestr(info, bytes(source))
                    else:
                        info.file_size = entry["size"]
                        with open(source, "rb") as src, out.open(info, "w", force_zip64=True) as dst:
                            for chunk in iter(lambda: src.read(_CHUNK), b""):
                                dst.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return cls(path, manifest)


def _member_info(name, compression):
    # A fixed timestamp and mode keep bundles of the same model byte-identical.
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = compression
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info

