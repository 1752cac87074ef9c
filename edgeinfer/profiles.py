"""Device profiles and what this machine can do.

A *target* names where a bundle will run.  ``cpu`` means "a CPU like this
workstation's"; the other names are device profiles.  Each profile says which
backend runs the bundle, the CPU architecture, and the memory a model may use.
"""

import os
import platform
from typing import NamedTuple, Optional, Tuple

from .errors import UsageError


class Profile(NamedTuple):
    """A kind of device a bundle is built for.

    Attributes:
        name: the profile's name, e.g. ``"x86-cpu"``.
        backend: the backend that runs bundles for it (registry name).
        arch: ``"x86_64"`` or ``"aarch64"``.
        memory_mb: memory a model may use on the device (None: no limit known).
        description: one line for humans.
        precisions: precisions the profile supports, preferred first.
    """

    name: str
    backend: str
    arch: str
    memory_mb: Optional[int]
    description: str
    precisions: Tuple[str, ...]


PROFILES = {
    "x86-cpu": Profile("x86-cpu", "onnxruntime", "x86_64", None,
                       "any x86-64 CPU, ONNX Runtime", ("int8", "fp16", "fp32")),
    "arm64-cpu": Profile("arm64-cpu", "onnxruntime", "aarch64", None,
                         "any ARM64 CPU (Raspberry Pi 4/5, Graviton, Jetson CPU), ONNX Runtime",
                         ("int8", "fp16", "fp32")),
    "intel-cpu": Profile("intel-cpu", "openvino", "x86_64", None,
                         "Intel CPU with OpenVINO", ("int8", "fp16", "fp32")),
    "jetson-nano": Profile("jetson-nano", "tensorrt", "aarch64", 2048,
                           "Jetson Nano (Maxwell, 4 GB shared), TensorRT 8.2", ("fp16", "fp32")),
    "jetson-orin": Profile("jetson-orin", "tensorrt", "aarch64", 6144,
                           "Jetson Orin Nano/NX/AGX, TensorRT 8.5+", ("int8", "fp16", "fp32")),
}

# Names users type for a target that are not profile names.
ALIASES = {
    "onnxruntime": "cpu", "ort": "cpu",
    "openvino": "intel-cpu",
    "tensorrt": "jetson-orin", "trt": "jetson-orin", "jetson": "jetson-orin",
}


def machine_arch():
    """This machine's CPU architecture, normalised to ``x86_64`` or ``aarch64``."""
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64", "x64"):
        return "x86_64"
    if machine in ("arm64", "aarch64", "armv8", "armv8l"):
        return "aarch64"
    return machine


def resolve_target(target):
    """Return the :class:`Profile` for a ``--target`` value.

    ``cpu`` (and ``ort``/``onnxruntime``) resolve to the CPU profile of this
    machine's architecture.

    Raises:
        UsageError: the target is not known; the hint lists the valid names.
    """
    name = (target or "cpu").strip().lower()
    name = ALIASES.get(name, name)
    if name == "cpu":
        name = "arm64-cpu" if machine_arch() == "aarch64" else "x86-cpu"
    try:
        return PROFILES[name]
    except KeyError:
        raise UsageError("Unknown target {!r}.".format(target),
                         "Valid targets: cpu, {}, and the aliases {}.".format(
                             ", ".join(sorted(PROFILES)), ", ".join(sorted(ALIASES))))


def cpu_features():
    """The CPU features that decide INT8 speed, read from /proc/cpuinfo.

    Returns:
        dict with ``arch``, ``model`` (CPU name or None), ``cores`` and booleans
        ``avx2``, ``avx512``, ``vnni`` (AVX512-VNNI or AVX-VNNI), ``amx``,
        ``neon``, ``dotprod`` (ARM SDOT/UDOT), ``i8mm``, ``fp16`` (native FP16
        arithmetic).  A feature that cannot be read is False.
    """
    flags = set()
    model = None
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("flags", "features") and not flags:
                    flags = set(value.split())
                elif key in ("model name", "hardware", "cpu model") and model is None:
                    model = value.strip()
    except OSError:
        pass
    arch = machine_arch()
    return {
        "arch": arch,
        "model": model or platform.processor() or None,
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & flags),
        "amx": "amx_int8" in flags,
        "neon": arch == "aarch64" and ("asimd" in flags or not flags),
        "dotprod": "asimddp" in flags,
        "i8mm": "i8mm" in flags,
        "fp16": "asimdhp" in flags or "avx512_fp16" in flags,
    }


def jetson_info():
    """Describe the Jetson this runs on, or return None on anything else.

    Reads the device-tree model and ``/etc/nv_tegra_release`` (L4T version), which
    every JetPack image has.
    """
    model = None
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            with open(path, "rb") as handle:
                model = handle.read().decode("utf-8", "replace").strip("\x00 \n")
            break
        except OSError:
            continue
    release = None
    try:
        with open("/etc/nv_tegra_release") as handle:
            release = handle.readline().strip()
    except OSError:
        pass
    if not release and not (model and "jetson" in model.lower()):
        return None
    return {"model": model, "l4t": release}
