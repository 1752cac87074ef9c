"""TensorRT backend: builds the bundle's engine on the device once, caches it, runs it.

A TensorRT bundle carries a TensorRT-ready ONNX model and an ``engine`` record
(see :mod:`edgeinfer.conversion.tensorrt`): the builder flags, the layers to
keep in FP32, the optimization profile of the dynamic inputs, the workspace and
the TensorRT it was made for.  On first load this backend turns that into a
:class:`BuildPlan`, says how much memory the build needs, builds the engine with
TensorRT's builder and stores it in the :class:`~edgeinfer.runtime.engine_cache.
EngineCache`; later loads deserialize the cached engine.  A cached engine that
TensorRT refuses (another TensorRT version wrote it, or it is damaged) is
rebuilt, never fatal.

Two TensorRT Python APIs are in the field, and :func:`tensor_api` picks by version:

* **bindings** (TensorRT < 8.5, JetPack 4.6 and 5.0): ``engine.num_bindings``,
  ``context.set_binding_shape`` and ``context.execute_async_v2(bindings, stream)``;
* **named tensors** (TensorRT >= 8.5; the only API in 10.x, JetPack 6):
  ``engine.num_io_tensors``, ``context.set_input_shape``,
  ``context.set_tensor_address`` and ``context.execute_async_v3(stream)``.

The builder differs too: the workspace is ``config.set_memory_pool_limit`` from
8.4 (``config.max_workspace_size`` before), FP32 pins need
``OBEY_PRECISION_CONSTRAINTS`` from 8.2 (``STRICT_TYPES`` before), and networks
are created with the ``EXPLICIT_BATCH`` flag before 10.0 (always explicit after).

Moving data to the GPU needs a CUDA binding for Python: cuda-python (JetPack 5/6)
or pycuda (JetPack 4.6, Python 3.6), whichever is installed; host buffers are
pinned and copies run on one CUDA stream per runner.

Without TensorRT's Python package but with ``onnxruntime-gpu`` (the Jetson Zoo
wheels), the bundle runs through ONNX Runtime's TensorRT execution provider
instead, with its own engine cache under this cache folder (``runtime`` option).

Verified here: everything that does not need a GPU (plans, keys, version
dispatch, errors, the ONNX Runtime path's options).  The calls into TensorRT and
CUDA follow their documented Python APIs and are exercised in the tests only
against a stand-in of those APIs; ``tests/test_tensorrt_backend.py`` runs them
for real where TensorRT is installed (a Jetson).

Device side: Python 3.6 syntax; tensorrt, cuda-python, pycuda and onnxruntime
are imported lazily, inside the functions that need them.
"""

import ctypes
import hashlib
import logging
import math
import os
import threading
import time
from typing import NamedTuple, Optional, Tuple

import numpy as np

from ... import calibration_cache
from ...errors import (BackendError, BundleError, EdgeInferError, InputError,
                       MissingDependency, UsageError)
from ...jetson import read_jetson
from ...lazy import available as module_available
from ...lazy import require
from ...memory import system_memory_mb
from ...profiles import PROFILES, workspace_mb
from ..engine_cache import EngineCache, EngineKey, default_cache_dir
from . import merge_options

log = logging.getLogger("edgeinfer.runtime.tensorrt")

_DEFAULT_CACHE = object()  # stands for "the per-user cache directory"

# Options this backend accepts, with their defaults.
DEFAULT_OPTIONS = {
    "runtime": "auto",          # auto | tensorrt | onnxruntime (its TensorRT/CUDA providers)
    "device": None,             # None or "gpu": the GPU; "dla:0"/"dla:1": a DLA core (with
                                # GPU fallback); "cpu": ONNX Runtime's CPU provider (checking)
    "device_id": 0,             # the CUDA device
    "workspace_mb": None,       # None: the bundle's, capped to this Jetson's profile
    "int8": "explicit",         # explicit (Q/DQ) | implicit (calibration cache, TensorRT 8.x)
    "cache_dir": _DEFAULT_CACHE,  # engine cache folder; None: build on every load
}
RUNTIMES = ("auto", "tensorrt", "onnxruntime")
INT8_MODES = ("explicit", "implicit")

# A TensorRT engine build holds, besides the workspace: the CUDA context and the
# TensorRT, cuDNN and cuBLAS kernels it loads, and the weights several times over
# (the parsed network, the builder's reformatted copy, the engine being
# serialized).  Rough figures for the message before a build, not measurements.
LIBRARIES_MB = 600
WEIGHT_COPIES = 3

# How often a build without TensorRT's progress monitor says it is still going.
HEARTBEAT_S = 30.0

# Where each API appeared (TensorRT's Python API docs and release notes).
NAMED_TENSORS = (8, 5)          # get_tensor_name, set_tensor_address, execute_async_v3
MEMORY_POOLS = (8, 4)           # set_memory_pool_limit; max_workspace_size before
OBEY_PRECISION = (8, 2)         # BuilderFlag.OBEY_PRECISION_CONSTRAINTS; STRICT_TYPES before
IMPLICIT_BATCH_GONE = (10, 0)   # networks are always explicit-batch
# ONNX Runtime's TensorRT provider options for timing caches and explicit profiles.
ORT_TRT_TIMING_AND_PROFILES = (1, 15)

CUDA_HINT = ("Install one: `pip install cuda-python` (JetPack 5/6, Python >= 3.8) or "
             "`pip install pycuda` (JetPack 4.6, Python 3.6; put /usr/local/cuda/bin on PATH "
             "first); `pip install edgeinfer[tensorrt]` picks the one for this Python.")


# -- versions and API dispatch (pure) ------------------------------------------------------

def version_tuple(text):
    """``"8.2.1.8"`` -> ``(8, 2, 1, 8)``; a part that is not a number ends it."""
    parts = []
    for piece in str(text).strip().split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def tensor_api(version):
    """``"named"`` (TensorRT >= 8.5: named tensors, execute_async_v3) or ``"bindings"``."""
    return "named" if version_tuple(version)[:2] >= NAMED_TENSORS else "bindings"


def workspace_api(version):
    """``"memory_pool"`` (TensorRT >= 8.4) or ``"max_workspace_size"`` (older)."""
    return "memory_pool" if version_tuple(version)[:2] >= MEMORY_POOLS else "max_workspace_size"


def precision_flag(version):
    """The BuilderFlag that makes per-layer precisions binding, for a TensorRT version."""
    return ("OBEY_PRECISION_CONSTRAINTS" if version_tuple(version)[:2] >= OBEY_PRECISION
            else "STRICT_TYPES")


def needs_explicit_batch_flag(version):
    """Whether ``create_network`` needs the EXPLICIT_BATCH flag (TensorRT < 10)."""
    return version_tuple(version)[:2] < IMPLICIT_BATCH_GONE


def library_version():
    """The TensorRT version of the ``libnvinfer`` this machine has, or None.

    Read through ``getInferLibVersion()`` of the C library, so it works without
    TensorRT's Python package (ONNX Runtime's TensorRT provider links the library).
    """
    for name in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so.7", "libnvinfer.so"):
        try:
            library = ctypes.CDLL(name)
            code = int(library.getInferLibVersion())
            return calibration_cache.version_text(code)
        except (OSError, AttributeError, EdgeInferError):
            continue
    return None


# -- options ------------------------------------------------------------------------------

def parse_device(device):
    """``(kind, dla_core)`` for a device option: kind ``"gpu"``, ``"dla"`` or ``"cpu"``.

    Raises:
        UsageError: a device this backend does not know.
    """
    if device is None:
        return "gpu", None
    text = str(device).strip().lower()
    if text in ("gpu", "cuda"):
        return "gpu", None
    if text == "cpu":
        return "cpu", None
    if text.startswith("dla"):
        core = text[3:].lstrip(":")
        if core.isdigit():
            return "dla", int(core)
    raise UsageError("Unknown TensorRT device {!r}.".format(device),
                     "Use gpu (default), dla:0 or dla:1 (a DLA core, Xavier and Orin), or cpu "
                     "(ONNX Runtime's CPU provider, to check a bundle without a GPU).")


def check_options(options):
    """Merge ``options`` over the defaults; refuse unknown keys and bad values.

    Returns:
        dict with every option; ``cache_dir`` a path or None.

    Raises:
        UsageError: an unknown option or a value of the wrong kind.
    """
    merged = merge_options("tensorrt", options, DEFAULT_OPTIONS)
    if merged["runtime"] not in RUNTIMES:
        raise UsageError("Unknown tensorrt runtime {!r}.".format(merged["runtime"]),
                         "Use one of: {}.".format(", ".join(RUNTIMES)))
    if merged["int8"] not in INT8_MODES:
        raise UsageError("Unknown int8 mode {!r}.".format(merged["int8"]),
                         "Use explicit (the bundle's Q/DQ) or implicit (its calibration cache, "
                         "TensorRT 8.x).")
    kind, _ = parse_device(merged["device"])
    if kind == "cpu" and merged["runtime"] == "tensorrt":
        raise UsageError("TensorRT runs on the GPU or a DLA, not the CPU.",
                         "Leave device unset, or use runtime='onnxruntime' for the CPU.")
    for name, low in (("workspace_mb", 1), ("device_id", 0)):
        value = merged[name]
        if value is None and name == "workspace_mb":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError("{} must be a whole number >= {}, not {!r}.".format(
                name, low, value))
    cache = merged["cache_dir"]
    if cache is _DEFAULT_CACHE:
        cache = default_cache_dir()
    merged["cache_dir"] = None if cache is None else str(cache)
    return merged


# -- the build plan (pure) ----------------------------------------------------------------

class BuildPlan(NamedTuple):
    """How the engine is built, from the manifest's engine record and this device.

    Attributes:
        flags: BuilderFlag names to set, e.g. ``("FP16",)`` or
            ``("INT8", "OBEY_PRECISION_CONSTRAINTS")``.
        workspace_mb: the builder workspace limit (None: TensorRT's default).
        fp32_layers: names of the layers pinned to FP32 (ONNX node names).
        profiles: the optimization profile, ``{"input", "min", "opt", "max"}`` dicts.
        int8: None, ``"explicit"`` (Q/DQ) or ``"implicit"`` (calibration cache).
        calibration: the calibration cache re-headed for this TensorRT (implicit only).
        algorithm: the cache's calibrator, e.g. ``"MinMaxCalibration"`` (implicit only).
        dla_core: the DLA core to build for (None: the GPU).
        tensorrt: the TensorRT version that builds it.
    """

    flags: Tuple[str, ...]
    workspace_mb: Optional[int]
    fp32_layers: Tuple[str, ...]
    profiles: Tuple[dict, ...]
    int8: Optional[str]
    calibration: Optional[bytes]
    algorithm: Optional[str]
    dla_core: Optional[int]
    tensorrt: str

    def settings(self):
        """The plan as sorted ``name=value`` strings: what an engine cache key holds.

        The workspace is left out: a smaller one changes which kernels are tried,
        not whether an engine built with another is correct.
        """
        items = ["flags=" + ",".join(sorted(self.flags)),
                 "fp32=" + ",".join(sorted(self.fp32_layers)),
                 "int8=" + str(self.int8), "dla=" + str(self.dla_core)]
        for profile in sorted(self.profiles, key=lambda p: p["input"]):
            items.append("profile={}:{}/{}/{}".format(
                profile["input"], _dims(profile["min"]), _dims(profile["opt"]),
                _dims(profile["max"])))
        if self.calibration is not None:
            items.append("calibration=" + hashlib.sha256(self.calibration).hexdigest())
        return tuple(sorted(items))


def _dims(shape):
    return "x".join(str(int(d)) for d in shape)


def device_workspace_cap(device_profile):
    """The workspace a device's profile allows (None: no profile, or no budget known)."""
    return workspace_mb(device_profile) if device_profile is not None else None


def recalibrated_cache(data, version, algorithm=None):
    """A bundle's calibration cache re-headed for this device's TensorRT.

    TensorRT ignores a cache whose header names another version; the scales do
    not depend on it (see :mod:`edgeinfer.calibration_cache`).

    Args:
        data: the cache's bytes from the bundle.
        version: this device's TensorRT version, e.g. ``"8.2.1.8"``.
        algorithm: the calibrator to name (default None: the header's own).

    Returns:
        the cache's bytes with the new header.

    Raises:
        BundleError: the bundle's cache is malformed.
    """
    try:
        parsed = calibration_cache.parse_cache(data, "The bundle's calibration cache")
        text = calibration_cache.format_cache(parsed.scales, ".".join(
            str(p) for p in version_tuple(version)[:3]), algorithm or parsed.algorithm)
    except EdgeInferError as exc:
        raise BundleError(exc.message, "Convert the model again for this device.")
    return text.encode("utf-8")


def plan_build(engine, version, options=None, device_profile=None, calibration=None):
    """The :class:`BuildPlan` for a bundle's engine record on this device.

    Args:
        engine: the manifest's ``engine`` dict (empty or None: an FP32 engine with
            no pins, no dynamic inputs).
        version: this device's TensorRT version.
        options: checked backend options (default None: the defaults).
        device_profile: the :class:`~edgeinfer.profiles.Profile` of this device
            (a Jetson's), whose memory budget caps the workspace; None: no cap.
        calibration: the bundle's ``calibration.cache`` bytes (implicit INT8 only).

    Returns:
        :class:`BuildPlan`.

    Raises:
        BackendError: this TensorRT is older than the bundle needs.
        BundleError: implicit INT8 asked of a bundle without a calibration cache, or
            an engine record with unknown flags or a malformed profile.
        UsageError: implicit INT8 asked of a bundle that is not INT8.
    """
    engine = dict(engine or {})
    options = check_options(options)
    needed = engine.get("min_tensorrt")
    if needed and version_tuple(version) < version_tuple(needed):
        raise BackendError("This bundle needs TensorRT >= {}; this device has {}.".format(
            needed, version), "Upgrade JetPack, or convert the model with an older opset.")
    flags = []
    for flag in engine.get("flags") or ():
        if flag not in ("fp16", "int8"):
            raise BundleError("The engine record names an unknown builder flag {!r}.".format(flag),
                              "Convert the model again with this edgeinfer.")
        flags.append(flag.upper())
    fp32 = tuple(layer["name"] for layer in engine.get("fp32_layers") or ())
    if fp32:
        flags.append(precision_flag(version))
    int8 = None
    algorithm = cache = None
    if "INT8" in flags:
        int8 = options["int8"]
        if int8 == "implicit":
            implicit = engine.get("implicit") or {}
            if calibration is None or not implicit:
                raise BundleError("Implicit INT8 needs the bundle's calibration cache, and this "
                                  "bundle has none.", "Use int8='explicit' (the default).")
            algorithm = implicit.get("algorithm")
            cache = recalibrated_cache(calibration, version, algorithm)
    elif options["int8"] == "implicit":
        raise UsageError("int8='implicit' applies to INT8 bundles; this one is {}.".format(
            "+".join(f.lower() for f in flags) or "fp32"), "Leave the int8 option out.")
    _, dla = parse_device(options["device"])
    if dla is not None:
        # Layers the DLA cannot run go to the GPU instead of failing the build.
        flags.append("GPU_FALLBACK")
    workspace = options["workspace_mb"]
    if workspace is None:
        workspace = engine.get("workspace_mb")
        cap = device_workspace_cap(device_profile)
        if cap is not None and (workspace is None or workspace > cap):
            workspace = cap
    profiles = tuple(_check_profile(p) for p in engine.get("profiles") or ())
    return BuildPlan(tuple(flags), workspace, fp32, profiles, int8, cache, algorithm, dla,
                     str(version))


def _check_profile(profile):
    try:
        name = str(profile["input"])
        low, opt, high = ([int(d) for d in profile[k]] for k in ("min", "opt", "max"))
    except (KeyError, TypeError, ValueError):
        raise BundleError("Malformed optimization profile in the engine record: {!r}.".format(
            profile), "Convert the model again with this edgeinfer.")
    if not (len(low) == len(opt) == len(high)) or any(
            not (1 <= a <= b <= c) for a, b, c in zip(low, opt, high)):
        raise BundleError("Optimization profile of {!r} is not min <= opt <= max: {} / {} / "
                          "{}.".format(name, low, opt, high),
                          "Convert the model again with this edgeinfer.")
    return {"input": name, "min": low, "opt": opt, "max": high}


def profile_shapes(plan, inputs):
    """``(name, min, opt, max)`` for each network input with dynamic dims.

    Args:
        plan: the :class:`BuildPlan`.
        inputs: ``(name, shape)`` of the parsed network's inputs, -1 for dynamic dims.

    Returns:
        list of ``(name, min, opt, max)`` tuples (empty: every input is fixed).

    Raises:
        BundleError: a dynamic input without a profile, or a profile that does not
            fit the input (rank, or a fixed dim it changes).
    """
    by_name = dict((p["input"], p) for p in plan.profiles)
    shapes = []
    for name, shape in inputs:
        shape = [int(d) for d in shape]
        if all(d >= 0 for d in shape):
            continue
        profile = by_name.get(name)
        if profile is None:
            raise BundleError("Input {!r} has dynamic dims {} but the engine record has no "
                              "optimization profile for it.".format(name, shape),
                              "Convert the model again with this edgeinfer (it records one).")
        for key in ("min", "opt", "max"):
            dims = profile[key]
            if len(dims) != len(shape) or any(d >= 0 and d != p for d, p in zip(shape, dims)):
                raise BundleError("The optimization profile's {} shape {} of {!r} does not fit "
                                  "the model's input shape {}.".format(key, dims, name, shape),
                                  "Convert the model again with this edgeinfer.")
        shapes.append((name, tuple(profile["min"]), tuple(profile["opt"]),
                       tuple(profile["max"])))
    return shapes


def check_shape_in_profile(name, shape, profile):
    """Refuse an input shape outside the engine's optimization profile.

    Raises:
        InputError: naming the dim, its size and the range the engine was built for.
    """
    if profile is None:
        return
    for axis, (size, low, high) in enumerate(zip(shape, profile["min"], profile["max"])):
        if not low <= size <= high:
            raise InputError(
                "Input tensor: {} | Received shape {}; dim {} is {}, outside the {}..{} the "
                "TensorRT engine was built for.".format(name, list(shape), axis, size, low, high),
                "Send at most {} (the profile's max shape {}); to go beyond it convert the model "
                "again with a larger --batch-size.".format(high, list(profile["max"])))


# -- memory before a build (pure) ---------------------------------------------------------

def build_memory_mb(model_bytes, workspace):
    """About how much memory an engine build needs, in MiB (see :data:`LIBRARIES_MB`).

    Args:
        model_bytes: the size of the ONNX model (its weights, in practice).
        workspace: the builder workspace in MiB (None: counted as 0, TensorRT then
            takes what the GPU has, and the estimate is a floor).
    """
    weights = int(math.ceil(model_bytes / float(1 << 20)))
    return LIBRARIES_MB + WEIGHT_COPIES * weights + int(workspace or 0)


def memory_advice(needed, memory):
    """A warning when a build may not fit, else None.

    Args:
        needed: :func:`build_memory_mb`'s estimate.
        memory: :func:`~edgeinfer.memory.system_memory_mb`'s dict, or None (unknown).

    Returns:
        one sentence, or None when the build fits in available memory (or the
        memory is unknown).
    """
    if memory is None or needed <= memory["available"]:
        return None
    swap = memory.get("swap_free", 0)
    relief = ("swap ({} MB free) may carry the rest, slowly".format(swap)
              if needed <= memory["available"] + swap else
              "even with swap ({} MB free) it does not fit, and the OOM killer ends such "
              "builds".format(swap))
    return ("The TensorRT build needs about {} MB and {} MB is available: {}. Free memory first "
            "(close other programs; on a Jetson desktop image `sudo systemctl isolate "
            "multi-user.target` frees about 1 GB), add swap, or pass a smaller workspace "
            "(backend_options={{'workspace_mb': 256}}).".format(needed, memory["available"],
                                                               relief))


# -- CUDA bindings -------------------------------------------------------------------------

def cuda_binding_name(available=module_available):
    """Which CUDA binding is installed: ``"cuda-python"``, ``"pycuda"`` or None.

    cuda-python is preferred (NVIDIA's own, no compiled extension of ours); its
    module moved from ``cuda.cudart`` to ``cuda.bindings.runtime`` in 12.x.
    """
    if available("cuda.bindings.runtime") or available("cuda.cudart"):
        return "cuda-python"
    if available("pycuda.driver"):
        return "pycuda"
    return None


def cuda_binding(device_id=0, available=module_available):
    """A :class:`CudaPython` or :class:`PyCuda` for the CUDA device ``device_id``.

    Raises:
        MissingDependency: neither cuda-python nor pycuda is installed (the hint
            says which to install).
        BackendError: CUDA cannot use the device.
    """
    name = cuda_binding_name(available)
    if name is None:
        raise MissingDependency("No CUDA binding for Python is installed: the TensorRT runner "
                                "needs cuda-python or pycuda to move data to the GPU.", CUDA_HINT)
    return CudaPython(device_id) if name == "cuda-python" else PyCuda(device_id)


class GpuInfo(NamedTuple):
    """The GPU an engine is built for: ``name`` and ``compute`` (``"5.3"``)."""

    name: str
    compute: str


def _byte_view(array, nbytes):
    return array.view(np.uint8)[:nbytes]


class CudaPython(object):
    """CUDA through cuda-python's runtime API (``cudaMalloc``, ``cudaMemcpyAsync`` ...)."""

    name = "cuda-python"

    def __init__(self, device_id=0):
        try:
            self.rt = require("cuda.bindings.runtime", "running TensorRT engines")
        except EdgeInferError:
            self.rt = require("cuda.cudart", "running TensorRT engines")
        self.device_id = device_id
        self._check(self.rt.cudaSetDevice(device_id), "cudaSetDevice")
        self._host = {}

    def _check(self, result, what):
        # Every cuda-python call returns (error, *values).
        err, values = result[0], result[1:]
        if int(err) != 0:
            raise BackendError("CUDA call {} failed: {}.".format(what, getattr(err, "name", err)),
                               "Check `edgeinfer doctor` and that no other process holds the GPU.")
        return values[0] if len(values) == 1 else values

    def activate(self):
        # The runtime API keeps a current device per thread; the primary context follows.
        self._check(self.rt.cudaSetDevice(self.device_id), "cudaSetDevice")

    def deactivate(self):
        pass

    def gpu(self):
        props = self._check(self.rt.cudaGetDeviceProperties(self.device_id),
                            "cudaGetDeviceProperties")
        name = props.name
        if isinstance(name, bytes):
            name = name.split(b"\0")[0].decode("utf-8", "replace")
        return GpuInfo(str(name).strip(), "{}.{}".format(props.major, props.minor))

    def stream(self):
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def handle(self, stream):
        return int(stream)

    def host_buffer(self, nbytes):
        ptr = self._check(self.rt.cudaMallocHost(max(1, nbytes)), "cudaMallocHost")
        array = np.ctypeslib.as_array(ctypes.cast(int(ptr), ctypes.POINTER(ctypes.c_uint8)),
                                      (max(1, nbytes),))
        self._host[array.ctypes.data] = ptr
        return array

    def free_host(self, array):
        ptr = self._host.pop(array.ctypes.data, None)
        if ptr is not None:
            self.rt.cudaFreeHost(ptr)

    def device_buffer(self, nbytes):
        return int(self._check(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free_device(self, ptr):
        self.rt.cudaFree(ptr)

    def to_device(self, ptr, host, nbytes, stream):
        self._check(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
                    "cudaMemcpyAsync")

    def to_host(self, host, ptr, nbytes, stream):
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                    "cudaMemcpyAsync")

    def synchronize(self, stream):
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def free_stream(self, stream):
        self.rt.cudaStreamDestroy(stream)


class PyCuda(object):
    """CUDA through pycuda's driver API, in the device's primary context.

    TensorRT calls the CUDA runtime, which works in the primary context; pycuda's
    ``autoinit`` would make a context of its own, so this retains the primary one
    and makes it current around every use (a server calls from several threads).
    """

    name = "pycuda"

    def __init__(self, device_id=0):
        self.driver = require("pycuda.driver", "running TensorRT engines")
        self.driver.init()
        self.device = self.driver.Device(device_id)
        self.context = self.device.retain_primary_context()
        self._device_memory = {}

    def activate(self):
        self.context.push()

    def deactivate(self):
        self.driver.Context.pop()

    def gpu(self):
        major, minor = self.device.compute_capability()
        return GpuInfo(str(self.device.name()).strip(), "{}.{}".format(major, minor))

    def stream(self):
        return self.driver.Stream()

    def handle(self, stream):
        return int(stream.handle)

    def host_buffer(self, nbytes):
        return self.driver.pagelocked_empty(max(1, nbytes), np.uint8)

    def free_host(self, array):
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def device_buffer(self, nbytes):
        allocation = self.driver.mem_alloc(max(1, nbytes))
        self._device_memory[int(allocation)] = allocation
        return int(allocation)

    def free_device(self, ptr):
        allocation = self._device_memory.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def to_device(self, ptr, host, nbytes, stream):
        self.driver.memcpy_htod_async(ptr, _byte_view(host, nbytes), stream)

    def to_host(self, host, ptr, nbytes, stream):
        self.driver.memcpy_dtoh_async(_byte_view(host, nbytes), ptr, stream)

    def synchronize(self, stream):
        stream.synchronize()

    def free_stream(self, stream):
        pass  # pycuda frees its Stream when collected


class _Active(object):
    """``with _Active(cuda):`` makes the runner's CUDA context current on this thread."""

    def __init__(self, cuda):
        self.cuda = cuda

    def __enter__(self):
        self.cuda.activate()
        return self.cuda

    def __exit__(self, *exc):
        self.cuda.deactivate()


# -- TensorRT: logger, build ---------------------------------------------------------------

_logger = None
_logger_lock = threading.Lock()


def trt_logger(trt):
    """The process's one ``trt.Logger`` (TensorRT warns when builders get different ones)."""
    global _logger
    with _logger_lock:
        if _logger is None:
            _logger = trt.Logger(trt.Logger.WARNING)
        return _logger


def match_layers(names, fp32_layers):
    """Indices of the network layers to pin to FP32, and the pinned nodes not found.

    TensorRT's ONNX parser names each layer after the node it comes from, so a
    pin matches a layer of exactly that name; a node the parser split into
    several layers or renamed is reported, not guessed at.

    Args:
        names: the network's layer names, in order.
        fp32_layers: node names to pin.

    Returns:
        ``(indices, missing)``.
    """
    wanted = set(fp32_layers)
    indices = [i for i, name in enumerate(names) if name in wanted]
    found = set(names[i] for i in indices)
    return indices, [name for name in fp32_layers if name not in found]


def _set_workspace(trt, config, version, megabytes):
    size = int(megabytes) << 20
    if workspace_api(version) == "memory_pool":
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size)
    else:
        config.max_workspace_size = size


def _pin_fp32(trt, network, names):
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    indices, missing = match_layers([layer.name for layer in layers], names)
    floats = (trt.float32, trt.float16)
    for index in indices:
        layer = layers[index]
        layer.precision = trt.float32
        for slot in range(layer.num_outputs):
            # Shape and index tensors keep their integer type.
            if layer.get_output(slot).dtype in floats:
                layer.set_output_type(slot, trt.float32)
    if missing:
        log.warning("TensorRT has no layer named %s: %s not pinned to FP32 (fused or renamed "
                    "by the parser).", ", ".join(missing), "it is" if len(missing) == 1 else
                    "they are")
    return len(indices)


def _cache_calibrator(trt, data, algorithm):
    """An INT8 calibrator that hands TensorRT the calibration cache and no data.

    With a valid cache TensorRT reads every scale from it and never asks for a
    batch; ``get_batch`` returning None ends calibration if it ever does.
    """
    bases = {"EntropyCalibration2": "IInt8EntropyCalibrator2",
             "MinMaxCalibration": "IInt8MinMaxCalibrator",
             "EntropyCalibration": "IInt8EntropyCalibrator"}
    base = getattr(trt, bases.get(algorithm, "IInt8EntropyCalibrator2"))

    class CacheCalibrator(base):
        def __init__(self):
            base.__init__(self)

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None

        def read_calibration_cache(self):
            return data

        def write_calibration_cache(self, cache):
            return None

    return CacheCalibrator()


def strip_qdq(model_bytes):
    """The ONNX model without its QuantizeLinear/DequantizeLinear pairs (implicit INT8).

    Every reader of a DequantizeLinear output reads the QuantizeLinear's input
    instead (FP32 activations and weights); the calibration cache holds the scales.

    Raises:
        MissingDependency: the onnx package is not installed.
    """
    onnx = require("onnx", "implicit INT8 on TensorRT 8.x")
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    producer = dict((out, node) for node in graph.node for out in node.output)
    source = {}
    for node in graph.node:
        parent = producer.get(node.input[0]) if node.input else None
        if node.op_type == "DequantizeLinear" and parent is not None and \
                parent.op_type == "QuantizeLinear":
            source[node.output[0]] = parent.input[0]
    keep = [n for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            or (n.op_type == "DequantizeLinear" and n.output[0] not in source)]
    for node in keep:
        for slot, name in enumerate(node.input):
            if name in source:
                node.input[slot] = source[name]
    for output in graph.output:
        if output.name in source:
            raise BundleError("Model output {!r} comes out of a Q/DQ pair; implicit INT8 cannot "
                              "drop it.".format(output.name), "Use int8='explicit'.")
    del graph.node[:]
    graph.node.extend(keep)
    return model.SerializeToString()


class _Heartbeat(object):
    """Logs "still building" every :data:`HEARTBEAT_S` seconds while a build runs."""

    def __init__(self, what, every=HEARTBEAT_S):
        self.what, self.every = what, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="edgeinfer-trt-build")
        self._thread.daemon = True
        self.started = time.time()

    def _beat(self):
        while not self._stop.wait(self.every):
            log.info("  ... still building %s (%s)", self.what, _elapsed(time.time() - self.started))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _elapsed(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    return "{}m{:02d}s".format(minutes, seconds) if minutes else "{}s".format(seconds)


def _progress_monitor(trt):
    """A ``trt.IProgressMonitor`` logging the builder's top-level phases, or None.

    Only TensorRT versions that have the interface get one; the heartbeat covers
    the others.
    """
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self):
            base.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                log.info("  %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name, step):
            return True  # never cancels the build

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def build_engine(trt, onnx_bytes, plan, timing=b""):
    """Build and serialize an engine with TensorRT's builder.

    Args:
        trt: the ``tensorrt`` module.
        onnx_bytes: the model (with Q/DQ for explicit INT8, without for implicit).
        plan: the :class:`BuildPlan`.
        timing: a serialized timing cache from an earlier build (default b"": none).

    Returns:
        ``(engine_bytes, timing_cache_bytes)``.

    Raises:
        BackendError: the parser refuses the model, or the build fails.
    """
    version = plan.tensorrt
    logger = trt_logger(trt)
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    flags = 0
    if needs_explicit_batch_flag(version):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        raise BackendError("TensorRT {} cannot parse the model: {}".format(
            version, "; ".join(errors[:3]) or "no reason given"),
            "Export the model with an opset this TensorRT's parser supports, or convert it "
            "with ONNX Runtime's TensorRT provider (runtime='onnxruntime').")
    config = builder.create_builder_config()
    if plan.workspace_mb:
        _set_workspace(trt, config, version, plan.workspace_mb)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.fp32_layers:
        _pin_fp32(trt, network, plan.fp32_layers)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = profile_shapes(plan, [(t.name, tuple(t.shape)) for t in inputs])
    if shapes:
        profile = builder.create_optimization_profile()
        for name, low, opt, high in shapes:
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    if plan.int8 == "implicit":
        config.int8_calibrator = _cache_calibrator(trt, plan.calibration, plan.algorithm)
        if shapes:
            config.set_calibration_profile(profile)
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    cache = config.create_timing_cache(bytes(timing or b""))
    # A timing cache from another GPU or TensorRT is refused rather than misused.
    config.set_timing_cache(cache, False)
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError("TensorRT {} failed to build the engine (its log above says why)."
                           .format(version), "Most often memory: free some, or pass a smaller "
                           "workspace (backend_options={'workspace_mb': 256}).")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


# -- TensorRT: the two I/O APIs ------------------------------------------------------------

class IoTensor(NamedTuple):
    """One engine input or output: its name, binding index, direction, dtype and shape."""

    name: str
    index: int
    is_input: bool
    dtype: np.dtype
    shape: Tuple[int, ...]


def _nptype(trt, dtype):
    return np.dtype(trt.nptype(dtype))


class NamedTensorApi(object):
    """TensorRT >= 8.5: tensors by name, ``execute_async_v3``."""

    def __init__(self, trt):
        self.trt = trt

    def tensors(self, engine):
        found = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            found.append(IoTensor(name, index,
                                  engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT,
                                  _nptype(self.trt, engine.get_tensor_dtype(name)),
                                  tuple(engine.get_tensor_shape(name))))
        return found

    def set_input_shape(self, context, tensor, shape):
        return context.set_input_shape(tensor.name, tuple(shape)) is not False

    def output_shape(self, context, tensor):
        return tuple(context.get_tensor_shape(tensor.name))

    def execute(self, context, tensors, pointers, stream):
        for tensor, pointer in zip(tensors, pointers):
            context.set_tensor_address(tensor.name, pointer)
        return context.execute_async_v3(stream)


class BindingsApi(object):
    """TensorRT < 8.5: binding indices, ``execute_async_v2``."""

    def __init__(self, trt):
        self.trt = trt

    def tensors(self, engine):
        return [IoTensor(engine.get_binding_name(i), i, bool(engine.binding_is_input(i)),
                         _nptype(self.trt, engine.get_binding_dtype(i)),
                         tuple(engine.get_binding_shape(i)))
                for i in range(engine.num_bindings)]

    def set_input_shape(self, context, tensor, shape):
        return context.set_binding_shape(tensor.index, tuple(shape)) is not False

    def output_shape(self, context, tensor):
        return tuple(context.get_binding_shape(tensor.index))

    def execute(self, context, tensors, pointers, stream):
        bindings = [0] * (max(t.index for t in tensors) + 1)
        for tensor, pointer in zip(tensors, pointers):
            bindings[tensor.index] = pointer
        return context.execute_async_v2(bindings=bindings, stream_handle=stream)


def io_api(trt, version):
    """:class:`NamedTensorApi` or :class:`BindingsApi`, as :func:`tensor_api` decides."""
    return NamedTensorApi(trt) if tensor_api(version) == "named" else BindingsApi(trt)


class EngineRejected(Exception):
    """TensorRT could not deserialize an engine (another version wrote it, or damage)."""


class _Buffer(object):
    """A pinned host buffer and a device buffer of the same capacity, grown on demand."""

    __slots__ = ("host", "device", "capacity")

    def __init__(self):
        self.host, self.device, self.capacity = None, None, 0


class TensorRtRunner(object):
    """Runs one TensorRT engine; the session above has already checked inputs.

    One execution context and one CUDA stream; ``run`` is serialized by a lock
    (a context runs one inference at a time).  Buffers are sized for the
    largest shapes seen so far and reused.

    Attributes:
        inputs, outputs: lists of TensorSpec (the manifest's names, dtypes, dims).
        tensorrt: the TensorRT version running it.
        api: ``"named"`` or ``"bindings"``.
        cuda: the CUDA binding's name.
        load_stats: what the load did, for ``edgeinfer bench``: ``step`` ("TensorRT
            engine build"), ``engine`` (``"built"`` on this load or ``"cached"``),
            ``seconds`` (the build's, None when the engine came from the cache) and
            ``deserialize_s``; None when the runner was made directly.
    """

    def __init__(self, trt, engine_bytes, specs, cuda, plan):
        self.load_stats = None
        started = time.perf_counter()
        inputs, outputs = specs
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.tensorrt = str(trt.__version__)
        self.api = tensor_api(self.tensorrt)
        self.cuda = cuda.name
        self._cuda = cuda
        self._io = io_api(trt, self.tensorrt)
        self._lock = threading.Lock()
        self._profiles = dict((p["input"], p) for p in plan.profiles)
        with _Active(cuda):
            runtime = trt.Runtime(trt_logger(trt))
            engine = runtime.deserialize_cuda_engine(bytes(engine_bytes))
            if engine is None:
                raise EngineRejected()
            tensors = self._io.tensors(engine)
            self._match(tensors)
            self._runtime, self._engine = runtime, engine
            self._context = engine.create_execution_context()
            if self._context is None:
                raise BackendError("TensorRT could not create an execution context (GPU memory).",
                                   "Free GPU memory: close other programs using the GPU.")
            self._stream = cuda.stream()
        self._buffers = dict((t.name, _Buffer()) for t in tensors)
        self._shapes = {}
        self.deserialize_s = time.perf_counter() - started

    def _match(self, tensors):
        by_name = dict((t.name, t) for t in tensors)
        missing = [s.name for s in self.inputs + self.outputs if s.name not in by_name]
        if missing:
            raise BundleError("The TensorRT engine has no tensor {}; it has {}.".format(
                ", ".join(repr(m) for m in missing), ", ".join(sorted(by_name))),
                "Convert the model again with this edgeinfer.")
        self._in = [by_name[s.name] for s in self.inputs]
        self._out = [by_name[s.name] for s in self.outputs]
        self._out_dtypes = [np.dtype(s.dtype) for s in self.outputs]

    def _buffer(self, tensor, nbytes):
        buffer = self._buffers[tensor.name]
        if nbytes > buffer.capacity:
            self._free(buffer)
            buffer.host = self._cuda.host_buffer(nbytes)
            buffer.device = self._cuda.device_buffer(nbytes)
            buffer.capacity = nbytes
        return buffer

    def _free(self, buffer):
        if buffer.host is not None:
            self._cuda.free_host(buffer.host)
        if buffer.device is not None:
            self._cuda.free_device(buffer.device)
        buffer.host, buffer.device, buffer.capacity = None, None, 0

    def run(self, feeds, output_names=None):
        """Run on ``feeds`` (name -> numpy array of the manifest's dtype).

        Returns:
            dict output name -> numpy array the caller owns.

        Raises:
            InputError: a shape outside the engine's optimization profile, or an
                integer input too large for the engine's INT32 (TensorRT 8 runs
                INT64 inputs as INT32).
            BackendError: TensorRT refuses the shapes or fails to run.
            UsageError: the runner was closed.
        """
        with self._lock:
            if self._context is None:
                raise UsageError("This TensorRT runner is closed.", "Load the bundle again.")
            with _Active(self._cuda):
                return self._run(feeds, output_names)

    def _run(self, feeds, output_names):
        cuda, stream = self._cuda, self._stream
        handle = cuda.handle(stream)
        for tensor in self._in:
            value = _as_engine_dtype(tensor, feeds[tensor.name])
            if any(d < 0 for d in tensor.shape) and self._shapes.get(tensor.name) != value.shape:
                check_shape_in_profile(tensor.name, value.shape, self._profiles.get(tensor.name))
                if not self._io.set_input_shape(self._context, tensor, value.shape):
                    raise BackendError("TensorRT refused shape {} for input {!r}.".format(
                        list(value.shape), tensor.name), "Inputs: {}.".format(
                        ", ".join(s.describe() for s in self.inputs)))
                self._shapes[tensor.name] = value.shape
            buffer = self._buffer(tensor, value.nbytes)
            _byte_view(buffer.host, value.nbytes)[...] = np.ascontiguousarray(value).view(
                np.uint8).reshape(-1)
            cuda.to_device(buffer.device, buffer.host, value.nbytes, stream)
        shapes = []
        for tensor in self._out:
            shape = self._io.output_shape(self._context, tensor)
            if any(d < 0 for d in shape):
                raise BackendError("TensorRT cannot tell the shape of output {!r} ({}).".format(
                    tensor.name, list(shape)), "Give every input a shape within the profile.")
            shapes.append(shape)
            self._buffer(tensor, _nbytes(shape, tensor.dtype))
        tensors = self._in + self._out
        pointers = [self._buffers[t.name].device for t in tensors]
        if self._io.execute(self._context, tensors, pointers, handle) is False:
            raise BackendError("TensorRT failed to run the engine (its log says why).",
                               "Inputs: {}.".format(", ".join(s.describe() for s in self.inputs)))
        for tensor, shape in zip(self._out, shapes):
            buffer = self._buffers[tensor.name]
            cuda.to_host(buffer.host, buffer.device, _nbytes(shape, tensor.dtype), stream)
        cuda.synchronize(stream)
        results = {}
        for tensor, shape, dtype in zip(self._out, shapes, self._out_dtypes):
            if output_names is not None and tensor.name not in output_names:
                continue
            nbytes = _nbytes(shape, tensor.dtype)
            value = _byte_view(self._buffers[tensor.name].host, nbytes).view(
                tensor.dtype).reshape(shape).copy()
            results[tensor.name] = value if value.dtype == dtype else value.astype(dtype)
        if output_names is None:
            return results
        return dict((name, results[name]) for name in output_names)

    def close(self):
        """Free the buffers, the stream and the engine."""
        with self._lock:
            if self._context is None:
                return
            with _Active(self._cuda):
                for buffer in self._buffers.values():
                    self._free(buffer)
                self._cuda.free_stream(self._stream)
                self._context = self._engine = self._runtime = None


def _nbytes(shape, dtype):
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _as_engine_dtype(tensor, value):
    """The feed in the engine's dtype: TensorRT 8 runs INT64 inputs as INT32."""
    if value.dtype == tensor.dtype:
        return value
    if value.dtype.kind in "iu" and tensor.dtype.kind in "iu" and value.size:
        info = np.iinfo(tensor.dtype)
        if value.min() < info.min or value.max() > info.max:
            raise InputError("Input tensor: {} | Received values outside {} (the TensorRT "
                             "engine's type for it).".format(tensor.name, tensor.dtype),
                             "Keep them within [{}, {}].".format(info.min, info.max))
    return value.astype(tensor.dtype)


# -- ONNX Runtime's TensorRT/CUDA providers ------------------------------------------------

def ort_providers(engine, available, cache_dir, ort_version, options, plan=None):
    """ONNX Runtime providers (with options) that run a TensorRT bundle, best first.

    TensorRT's provider builds and caches its own engines (``trt_engine_cache_*``)
    from the bundle's ONNX with the bundle's flags; CUDA's provider runs what
    TensorRT's does not take; the CPU provider runs the rest.

    Args:
        engine: the manifest's engine record.
        available: ``onnxruntime.get_available_providers()``.
        cache_dir: the folder for ONNX Runtime's engine and timing caches (None: off).
        ort_version: ONNX Runtime's version (options it lacks are left out).
        options: checked backend options.
        plan: the :class:`BuildPlan` (for the workspace and DLA core), or None.

    Returns:
        list of provider names and ``(name, options)`` pairs.

    Raises:
        BackendError: neither the TensorRT nor the CUDA provider is present (and
            the CPU was not asked for), naming what is installed.
    """
    kind, dla = parse_device(options["device"])
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    providers = []
    if "TensorrtExecutionProvider" in available:
        flags = set(engine.get("flags") or ())
        trt_options = {"device_id": options["device_id"],
                       "trt_fp16_enable": "fp16" in flags,
                       # Explicit Q/DQ needs the INT8 flag and no calibration table.
                       "trt_int8_enable": "int8" in flags}
        workspace = plan.workspace_mb if plan is not None else engine.get("workspace_mb")
        if workspace:
            trt_options["trt_max_workspace_size"] = int(workspace) << 20
        if dla is not None:
            trt_options.update({"trt_dla_enable": True, "trt_dla_core": dla})
        if cache_dir:
            trt_options.update({"trt_engine_cache_enable": True,
                                "trt_engine_cache_path": cache_dir})
        if version_tuple(ort_version)[:2] >= ORT_TRT_TIMING_AND_PROFILES:
            if cache_dir:
                trt_options["trt_timing_cache_enable"] = True
            profiles = engine.get("profiles") or ()
            if profiles:
                for key, column in (("trt_profile_min_shapes", "min"),
                                    ("trt_profile_opt_shapes", "opt"),
                                    ("trt_profile_max_shapes", "max")):
                    trt_options[key] = ",".join("{}:{}".format(p["input"], _dims(p[column]))
                                                for p in profiles)
        providers.append(("TensorrtExecutionProvider", trt_options))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": options["device_id"]}))
    if not providers:
        raise BackendError("ONNX Runtime here has no TensorRT or CUDA execution provider "
                           "(it has {}).".format(", ".join(available) or "none"),
                           "Install onnxruntime-gpu for JetPack (the Jetson Zoo wheels), or "
                           "TensorRT's Python package (JetPack's python3-libnvinfer).")
    providers.append("CPUExecutionProvider")
    return providers


def choose_runtime(options, has_tensorrt, ort_providers_here):
    """``"tensorrt"`` or ``"onnxruntime"``: which runs the bundle.

    Args:
        options: checked backend options.
        has_tensorrt: whether TensorRT's Python package imports.
        ort_providers_here: ONNX Runtime's available providers (empty: not installed).

    Raises:
        MissingDependency: nothing here runs a TensorRT bundle (says what to install).
    """
    asked = options["runtime"]
    if parse_device(options["device"])[0] == "cpu":
        return "onnxruntime"
    if asked != "auto":
        return asked
    if has_tensorrt:
        return "tensorrt"
    if set(ort_providers_here) & {"TensorrtExecutionProvider", "CUDAExecutionProvider"}:
        return "onnxruntime"
    raise MissingDependency(
        "Neither TensorRT's Python package nor ONNX Runtime with the TensorRT/CUDA provider "
        "is installed: nothing here runs a TensorRT bundle.",
        "On a Jetson: `sudo apt install python3-libnvinfer` (JetPack's TensorRT), or "
        "onnxruntime-gpu from the Jetson Zoo; elsewhere `pip install tensorrt`.")


def _ort_available():
    try:
        ort = require("onnxruntime")
    except EdgeInferError:
        return None, []
    return ort, list(ort.get_available_providers())


# -- the backend ---------------------------------------------------------------------------

def _model_sha256(files, data):
    for entry in files.bundle.manifest["files"]:
        if entry["name"] == files.entry:
            return entry["sha256"]
    return hashlib.sha256(data).hexdigest()


def _specs(files):
    bundle = getattr(files, "bundle", None)
    if bundle is None:
        raise BackendError("The TensorRT backend runs bundles: it needs the manifest's tensor "
                           "specs and engine record.", "Pass a bundle's ModelFiles.")
    return bundle.inputs, bundle.outputs


def _load_stats(engine, build_s, runner):
    return {"step": "TensorRT engine build", "engine": engine, "seconds": build_s,
            "deserialize_s": runner.deserialize_s}


class TensorRtBackend(object):
    """Backend over TensorRT's builder and runtime (or ONNX Runtime's TensorRT provider)."""

    name = "tensorrt"

    def available(self):
        try:
            trt = require("tensorrt")
        except EdgeInferError as exc:
            ort, providers = _ort_available()
            version = library_version()
            if ort is not None and "TensorrtExecutionProvider" in providers and version:
                return True, version
            return False, str(exc)
        return True, str(trt.__version__)

    def version(self):
        ok, detail = self.available()
        return detail if ok else None

    def load(self, files, options=None):
        """Build or load the engine of the model in ``files`` and return a runner.

        Args:
            files: a bundle's :class:`~edgeinfer.runtime.backends.ModelFiles`.
            options: see :data:`DEFAULT_OPTIONS` (default None: all defaults).

        Raises:
            UsageError: an unknown option or a bad value.
            BundleError: the bundle's engine record is malformed.
            MissingDependency: no TensorRT (or ONNX Runtime GPU), or no CUDA binding.
            BackendError: TensorRT is too old, cannot parse the model, or the build fails.
        """
        options = check_options(options)
        specs = _specs(files)
        bundle = files.bundle
        engine = dict(bundle.manifest.get("engine") or {})
        has_trt = module_available("tensorrt")
        ort, providers = (None, []) if has_trt and options["runtime"] == "auto" else \
            _ort_available()
        runtime = choose_runtime(options, has_trt, providers)
        if runtime == "onnxruntime":
            return self._load_ort(files, engine, options, ort, providers)
        trt = require("tensorrt", "running TensorRT bundles")
        cuda = cuda_binding(options["device_id"])
        version = str(trt.__version__)
        jetson = read_jetson()
        device_profile = PROFILES.get(jetson.profile) if jetson and jetson.profile else None
        calibration = None
        if options["int8"] == "implicit" and "calibration.cache" in bundle.files:
            calibration = bundle.read("calibration.cache")
        plan = plan_build(engine, version, options, device_profile, calibration)
        model = files.read()
        with _Active(cuda):
            gpu = cuda.gpu()
        key = EngineKey(_model_sha256(files, model), version, gpu.name, gpu.compute,
                        plan.settings())
        cache = EngineCache(options["cache_dir"]) if options["cache_dir"] else None
        data = cache.get(key) if cache is not None else None
        if data is not None:
            try:
                runner = TensorRtRunner(trt, data, specs, cuda, plan)
                log.debug("TensorRT engine loaded from %s", cache.engine_path(key))
                runner.load_stats = _load_stats("cached", None, runner)
                return runner
            except EngineRejected:
                log.warning("TensorRT %s cannot load the cached engine %s (another TensorRT "
                            "wrote it, or it is damaged); rebuilding it.", version,
                            cache.engine_path(key))
                cache.invalidate(key)
        started = time.perf_counter()
        data = self._build(trt, files, model, plan, gpu, cache)
        built_s = time.perf_counter() - started
        if cache is not None:
            try:
                cache.put(key, data)
            except OSError as exc:
                log.warning("Cannot store the TensorRT engine in %s (%s): it will be built "
                            "again next time.", cache.root, exc)
        try:
            runner = TensorRtRunner(trt, data, specs, cuda, plan)
            runner.load_stats = _load_stats("built", built_s, runner)
            return runner
        except EngineRejected:
            raise BackendError("TensorRT {} cannot load the engine it just built.".format(
                version), "Run again with --debug and report it.")

    def _build(self, trt, files, model, plan, gpu, cache):
        needed = build_memory_mb(len(model), plan.workspace_mb)
        memory = system_memory_mb()
        where = files.bundle.path
        log.info("Building the TensorRT engine for %s on %s (sm_%s), TensorRT %s: %s, workspace "
                 "%s; needs about %d MB%s. This happens once per model and TensorRT version; "
                 "it takes minutes on a Jetson Nano.", where, gpu.name,
                 gpu.compute.replace(".", ""), plan.tensorrt,
                 "+".join(f.lower() for f in plan.flags if f in ("FP16", "INT8")) or "fp32",
                 "{} MiB".format(plan.workspace_mb) if plan.workspace_mb else "TensorRT's default",
                 needed, ", {} MB available".format(memory["available"]) if memory else "")
        advice = memory_advice(needed, memory)
        if advice:
            log.warning(advice)
        if plan.int8 == "implicit":
            model = strip_qdq(model)
        timing = cache.read_timing(plan.tensorrt, gpu.name, gpu.compute) if cache else b""
        with _Heartbeat("the TensorRT engine") as beat:
            data, timing = build_engine(trt, model, plan, timing)
        if cache is not None and timing:
            cache.write_timing(plan.tensorrt, gpu.name, gpu.compute, timing)
        log.info("TensorRT engine built in %s (%.1f MB).", _elapsed(time.time() - beat.started),
                 len(data) / 1e6)
        return data

    def _load_ort(self, files, engine, options, ort, providers):
        from .ort import OrtRunner, check_options as ort_options, session_options
        if ort is None:
            ort = require("onnxruntime", "running TensorRT bundles with ONNX Runtime")
        jetson = read_jetson()
        device_profile = PROFILES.get(jetson.profile) if jetson and jetson.profile else None
        version = library_version() or engine.get("target_tensorrt") or "8.0"
        plan = plan_build(engine, version, dict(options, int8="explicit"), device_profile)
        folder = None
        if options["cache_dir"] and "TensorrtExecutionProvider" in providers:
            folder = os.path.join(options["cache_dir"], "onnxruntime")
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
            except OSError as exc:
                log.warning("ONNX Runtime's engine cache %s is not usable (%s).", folder, exc)
                folder = None
        chosen = ort_providers(engine, providers, folder, ort.__version__, options, plan)
        try:
            session = ort.InferenceSession(files.read(), session_options(ort_options(None)),
                                           providers=chosen)
        except Exception as exc:  # ORT raises its own non-exported exception types
            raise BackendError("ONNX Runtime cannot load {!r} with {}: {}".format(
                files.entry, ", ".join(p if isinstance(p, str) else p[0] for p in chosen),
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__),
                "Check `edgeinfer doctor`; runtime='tensorrt' uses TensorRT directly.")
        log.debug("TensorRT bundle on ONNX Runtime with %s", session.get_providers())
        return OrtRunner(session)
