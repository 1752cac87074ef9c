"""The TensorRT engine cache: build an engine once per model, TensorRT and GPU, then load it.

A TensorRT engine only runs on the GPU and the TensorRT version that built it, and
building one takes minutes on a Jetson Nano, so the device builds it on first use
and keeps it here.  An engine is found again by its :class:`EngineKey`: the bundle
model's sha256, the TensorRT version, the GPU's name and compute capability, and
the builder settings (flags, FP32 pins, shapes, quantization mode).  Change any
of them and the key changes, so the engine is rebuilt, never reused wrongly.

Layout of the cache directory (default ``~/.cache/edgeinfer/tensorrt``, or
``$EDGEINFER_CACHE_DIR/tensorrt``)::

    engines/<digest>.engine   the serialized engine
    engines/<digest>.json     its key, size and sha256 (written after the engine)
    timing/<digest>.cache     TensorRT's timing cache, one per TensorRT version and GPU

Nothing read from here is trusted blindly: an engine is used only when its
record names the same key and its bytes have the recorded size and sha256; a
missing, damaged or mismatched entry is a miss (the engine is rebuilt), never an
error.  Everything is written under a temporary name and renamed, so a build
killed half-way (the OOM killer on a 4 GB board) leaves no half engine.  When an
engine is stored, the entries for the same model and GPU made by another
TensorRT version are deleted: they can never load again (a JetPack upgrade), and
engines are tens of MB on a small eMMC.

Device side: standard library only, Python 3.6 syntax.
"""

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from typing import NamedTuple, Tuple

from .backends import cache_dir

log = logging.getLogger("edgeinfer.runtime.tensorrt")

# Bump when the engine files' meaning changes (a different build recipe for the same key).
KEY_VERSION = 1
ENGINE_SUFFIX = ".engine"
RECORD_SUFFIX = ".json"
_CHUNK = 1024 * 1024


class EngineKey(NamedTuple):
    """What an engine depends on.

    Attributes:
        model_sha256: sha256 of the ONNX model the engine is built from (the
            bundle manifest's entry for it).
        tensorrt: the TensorRT version that builds and runs it, e.g. ``"8.2.1.8"``.
        gpu: the GPU's name, e.g. ``"NVIDIA Tegra X1"``.
        compute: its compute capability, e.g. ``"5.3"``.
        settings: the builder settings that change the engine, as sorted
            ``"name=value"`` strings (flags, FP32 pins, optimization profile,
            quantization mode, DLA core).
    """

    model_sha256: str
    tensorrt: str
    gpu: str
    compute: str
    settings: Tuple[str, ...]

    def digest(self):
        """The key's file name: sha256 over its fields, as canonical JSON."""
        text = json.dumps([KEY_VERSION, self.model_sha256, self.tensorrt, self.gpu,
                           self.compute, sorted(self.settings)], separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_dict(self):
        data = self._asdict()
        data["settings"] = sorted(self.settings)
        return data


def default_cache_dir():
    """The per-user folder for engines.

    ``$EDGEINFER_CACHE_DIR/tensorrt`` when that is set, else
    ``$XDG_CACHE_HOME/edgeinfer/tensorrt``, else ``~/.cache/edgeinfer/tensorrt``.
    """
    return cache_dir("tensorrt")


def write_atomic(path, data):
    """Write bytes to ``path`` under a temporary name in its folder, then rename.

    Raises:
        OSError: the folder cannot be written (the temporary file is removed).
    """
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            # The rename must not reach the disk before the bytes do (power loss).
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _slug(text):
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-") or "x"


class EngineCache(object):
    """Serialized TensorRT engines and timing caches in a folder.

    Args:
        root: the cache folder (default None: :func:`default_cache_dir`).  It is
            created, private to the user (0700), on the first write.
    """

    def __init__(self, root=None):
        self.root = os.path.abspath(os.path.expanduser(root or default_cache_dir()))
        self.engines = os.path.join(self.root, "engines")
        self.timing = os.path.join(self.root, "timing")

    def _make(self, folder):
        # Private to the user: a planted engine would run as TensorRT code in our process.
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.makedirs(folder, mode=0o700, exist_ok=True)

    def engine_path(self, key):
        """Where the engine of ``key`` is (or would be) stored."""
        return os.path.join(self.engines, key.digest() + ENGINE_SUFFIX)

    def _record_path(self, key):
        return os.path.join(self.engines, key.digest() + RECORD_SUFFIX)

    def get(self, key):
        """The cached engine's bytes for ``key``, or None (a miss).

        A record naming another key, an engine of the wrong size or sha256, or
        files that cannot be read are misses; a damaged entry is deleted so the
        rebuilt engine replaces it.
        """
        record_path, engine_path = self._record_path(key), self.engine_path(key)
        if not os.path.exists(record_path) and not os.path.exists(engine_path):
            return None
        why = None
        try:
            with open(record_path) as handle:
                record = json.load(handle)
            with open(engine_path, "rb") as handle:
                data = handle.read()
            if record.get("key") != key.to_dict():
                why = "its record names another model, TensorRT or GPU"
            elif record.get("size") != len(data) or record.get("sha256") != _sha256(data):
                why = "its bytes do not match its record (truncated or changed)"
        except (OSError, ValueError, AttributeError) as exc:
            why = "it cannot be read ({})".format(exc)
        if why is None:
            return data
        log.warning("Cached TensorRT engine %s is not usable: %s; it will be rebuilt.",
                    engine_path, why)
        self.invalidate(key)
        return None

    def put(self, key, data):
        """Store an engine for ``key`` (atomically) and drop stale ones; return its path.

        Stale means: the same model on the same GPU, built by another TensorRT
        version, which cannot load here any more.

        Raises:
            OSError: the cache folder cannot be written.
        """
        data = bytes(data)
        self._make(self.engines)
        path = self.engine_path(key)
        write_atomic(path, data)
        record = {"key": key.to_dict(), "size": len(data), "sha256": _sha256(data),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        # The record goes last: an engine without one is never used.
        write_atomic(self._record_path(key), json.dumps(record, indent=1).encode("utf-8"))
        for stale in self.stale(key):
            self.invalidate(stale)
        return path

    def invalidate(self, key):
        """Delete ``key``'s entry (engine and record); missing files are fine."""
        for path in (self._record_path(key), self.engine_path(key)):
            try:
                os.unlink(path)
            except OSError:
                pass

    def entries(self):
        """Every stored key, from the records (unreadable records are skipped)."""
        found = []
        try:
            names = sorted(os.listdir(self.engines))
        except OSError:
            return found
        for name in names:
            if not name.endswith(RECORD_SUFFIX):
                continue
            try:
                with open(os.path.join(self.engines, name)) as handle:
                    data = json.load(handle)["key"]
                found.append(EngineKey(data["model_sha256"], data["tensorrt"], data["gpu"],
                                       data["compute"], tuple(data["settings"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    def stale(self, key):
        """Entries for ``key``'s model and GPU built by another TensorRT version."""
        return [other for other in self.entries()
                if other.model_sha256 == key.model_sha256 and other.gpu == key.gpu
                and other.compute == key.compute and other.tensorrt != key.tensorrt]

    def timing_path(self, tensorrt, gpu, compute):
        """The timing cache file for a TensorRT version and GPU."""
        digest = hashlib.sha256("{}\0{}\0{}".format(tensorrt, gpu, compute).encode(
            "utf-8")).hexdigest()[:16]
        return os.path.join(self.timing, "{}-{}.cache".format(_slug(tensorrt), digest))

    def read_timing(self, tensorrt, gpu, compute):
        """The stored timing cache's bytes, or b"" (none yet, or unreadable)."""
        try:
            with open(self.timing_path(tensorrt, gpu, compute), "rb") as handle:
                return handle.read()
        except OSError:
            return b""

    def write_timing(self, tensorrt, gpu, compute, data):
        """Store a timing cache (atomically); a cache that cannot be written is only logged."""
        try:
            self._make(self.timing)
            write_atomic(self.timing_path(tensorrt, gpu, compute), bytes(data))
        except OSError as exc:
            log.warning("Cannot store TensorRT's timing cache in %s: %s.", self.timing, exc)
