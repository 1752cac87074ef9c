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
    """A kind of device a bundle is built for: data, read by the recipes and the runtime.

    Attributes:
        name: the profile's name, e.g. ``"x86-cpu"``.
        backend: the backend that runs bundles for it (registry name).
        arch: ``"x86_64"`` or ``"aarch64"``.
        memory_mb: memory a model may use on the device (None: no limit known).
            On a Jetson the CPU and GPU share the board's memory, so this is well
            under it; the TensorRT builder workspace is sized from it.
        description: one line for humans.
        precisions: precisions that are fast there, preferred first.
        gpu_arch: the GPU architecture, e.g. ``"Maxwell"`` (None: no GPU).
        compute_capability: the GPU's CUDA compute capability, e.g. ``"5.3"``.
        tensorrt: the TensorRT of the JetPack the profile stands for, e.g. ``"8.2.1"``.
        jetpack: that JetPack, e.g. ``"4.6.1"``.
        python: that JetPack's system Python, e.g. ``"3.6"``.
        dla_cores: Deep Learning Accelerator cores (0: none).
        board_memory_mb: the board's memory (None: varies).
        int8_note: why INT8 is not among ``precisions`` (None when it is).
    """

    name: str
    backend: str
    arch: str
    memory_mb: Optional[int]
    description: str
    precisions: Tuple[str, ...]
    gpu_arch: Optional[str] = None
    compute_capability: Optional[str] = None
    tensorrt: Optional[str] = None
    jetpack: Optional[str] = None
    python: Optional[str] = None
    dla_cores: int = 0
    board_memory_mb: Optional[int] = None
    int8_note: Optional[str] = None


# Jetson data: NVIDIA's JetPack release notes (the TensorRT and Python each ships) and
# CUDA's GPU tables (architecture, compute capability).  JetPack 4.6.1+ is what a Jetson
# Nano or TX2 can run last; Orin Nano and AGX Orin profiles stand for JetPack 6.
_NO_DP4A = ("its {} GPU (sm_{}) has no INT8 dot-product instructions (DP4A, compute "
            "capability 6.1 and newer), so TensorRT runs INT8 there no faster than FP16")
_JETSON_FP16 = ("fp16", "fp32")
_JETSON_INT8 = ("int8", "fp16", "fp32")

PROFILES = {
    "x86-cpu": Profile("x86-cpu", "onnxruntime", "x86_64", None,
                       "any x86-64 CPU, ONNX Runtime", ("int8", "fp16", "fp32")),
    "arm64-cpu": Profile("arm64-cpu", "onnxruntime", "aarch64", 1024,
                         "any ARM64 CPU (Raspberry Pi 4/5 class, 2 GB and up; Graviton; a "
                         "Jetson's CPU), ONNX Runtime", ("int8", "fp16", "fp32")),
    "intel-cpu": Profile("intel-cpu", "openvino", "x86_64", None,
                         "Intel CPU with OpenVINO", ("int8", "fp16", "fp32")),
    "jetson-nano": Profile("jetson-nano", "tensorrt", "aarch64", 2048,
                           "Jetson Nano (Maxwell, 4 GB shared), JetPack 4.6, TensorRT 8.2",
                           _JETSON_FP16, "Maxwell", "5.3", "8.2.1", "4.6.1", "3.6", 0, 4096,
                           _NO_DP4A.format("Maxwell", "53")),
    "jetson-tx2": Profile("jetson-tx2", "tensorrt", "aarch64", 5120,
                          "Jetson TX2 (Pascal, 8 GB shared), JetPack 4.6, TensorRT 8.2",
                          _JETSON_FP16, "Pascal", "6.2", "8.2.1", "4.6.1", "3.6", 0, 8192,
                          "its Pascal GPU (sm_62) has no fast INT8 path: TensorRT's support "
                          "matrix lists INT8 for compute capability 6.1 and 7.0 and newer, "
                          "not 6.2, so INT8 runs there no faster than FP16"),
    "jetson-xavier-nx": Profile("jetson-xavier-nx", "tensorrt", "aarch64", 5120,
                                "Jetson Xavier NX (Volta, 8 GB shared, 2 DLA), JetPack 5.1, "
                                "TensorRT 8.5", _JETSON_INT8, "Volta", "7.2", "8.5.2", "5.1",
                                "3.8", 2, 8192),
    "jetson-orin": Profile("jetson-orin", "tensorrt", "aarch64", 6144,
                           "Jetson Orin Nano/NX/AGX, JetPack 5.1, TensorRT 8.5+",
                           _JETSON_INT8, "Ampere", "8.7", "8.5.2", "5.1", "3.8", 0, 8192),
    "jetson-orin-nano": Profile("jetson-orin-nano", "tensorrt", "aarch64", 2048,
                                "Jetson Orin Nano (Ampere, 4/8 GB shared; budget of the 4 GB "
                                "module), JetPack 6.2, TensorRT 10.3", _JETSON_INT8, "Ampere",
                                "8.7", "10.3.0", "6.2", "3.10", 0, 4096),
    "jetson-agx-orin": Profile("jetson-agx-orin", "tensorrt", "aarch64", 24576,
                               "Jetson AGX Orin (Ampere, 32/64 GB shared, 2 DLA), JetPack 6.2, "
                               "TensorRT 10.3", _JETSON_INT8, "Ampere", "8.7", "10.3.0", "6.2",
                               "3.10", 2, 32768),
}

# Names users type for a target that are not profile names.
ALIASES = {
    "onnxruntime": "cpu", "ort": "cpu",
    "openvino": "intel-cpu",
    "tensorrt": "jetson-orin", "trt": "jetson-orin", "jetson": "jetson-orin",
    "raspberry-pi": "arm64-cpu", "rpi": "arm64-cpu",
}

# Builder workspace: a quarter of the model's memory budget, leaving the rest to the
# weights, the activations and the engine being built (the OOM killer ends most
# builds on 4 GB boards, issue 5), within bounds chosen, not measured: 64 MiB to 1 GiB.
WORKSPACE_SHARE = 4
WORKSPACE_MB = (64, 1024)


def workspace_mb(profile):
    """The TensorRT builder workspace for a profile, in MiB (None: no memory budget known)."""
    if not profile.memory_mb:
        return None
    low, high = WORKSPACE_MB
    return max(low, min(high, profile.memory_mb // WORKSPACE_SHARE))


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


def cpu_class(features):
    """The class of CPU that decides which INT8 kernels run, from :func:`cpu_features`.

    Returns:
        ``"x86-amx"``, ``"x86-vnni"`` (AVX512-VNNI or AVX-VNNI), ``"x86-avx512"``
        (AVX-512 without VNNI), ``"x86-avx2"`` (AVX2 without VNNI), ``"x86"``
        (older), ``"arm64-i8mm"``, ``"arm64-dotprod"``, ``"arm64"``, or the
        architecture's name for any other CPU.
    """
    arch = features["arch"]
    if arch == "x86_64":
        for name in ("amx", "vnni", "avx512", "avx2"):
            if features.get(name):
                return "x86-" + name
        return "x86"
    if arch == "aarch64":
        for name in ("i8mm", "dotprod"):
            if features.get(name):
                return "arm64-" + name
        return "arm64"
    return arch


# Readable names of the CPU classes, for messages.
CPU_CLASSES = {
    "x86-amx": "x86 with AMX", "x86-vnni": "x86 with VNNI", "x86-avx512": "x86 AVX-512 "
    "without VNNI", "x86-avx2": "x86 AVX2 without VNNI", "x86": "x86 without AVX2",
    "arm64-i8mm": "ARM64 with I8MM", "arm64-dotprod": "ARM64 with dot-product",
    "arm64": "ARM64 without dot-product",
}


class Int8Measurement(NamedTuple):
    """One measured latency ratio between edgeinfer's OpenVINO and ONNX Runtime INT8 bundles.

    Attributes:
        cpu_class: the :func:`cpu_class` it holds for.
        workload: ``"conv"`` (conv nets) or ``"matmul"`` (MatMul-heavy: transformers,
            MLPs), as the recipes' ``--method auto`` tells them apart.
        model: what was measured, at batch 1.
        ratio: edgeinfer OpenVINO INT8 latency / edgeinfer ONNX Runtime INT8 latency,
            both as ``edgeinfer convert`` makes them by default, from one run.
        cpu: the CPU it was measured on.
        versions: the backend versions used.
        source: where the numbers are kept.
        command: the command that measured them.
    """

    cpu_class: str
    workload: str
    model: str
    ratio: float
    cpu: str
    versions: str
    source: str
    command: str


# What edgeinfer has measured (issue 3: "tells users which backend to pick on x86").  A
# CPU class with no row gets no claim: INT8 speed turns on the kernels a CPU has (VNNI,
# AMX, dot-product), so a ratio from one class says nothing about another.  Add a row
# only from a benchmark run kept in docs/BENCHMARKS.md (tests/test_int8_advice.py checks
# the numbers against it).
_BENCH_OPENVINO = ("docs/BENCHMARKS.md, 'OpenVINO recipes (issue 3)', 2026-11-23",
                   "python scripts/bench_openvino.py --md docs/BENCHMARKS.md")
INT8_MEASUREMENTS = (
    Int8Measurement("x86-avx2", "conv", "ResNet-50, static INT8 on both", 0.95,
                    "AMD EPYC (Zen 3), 2 cores", "openvino 2026.4.1, onnxruntime 1.32.0",
                    *_BENCH_OPENVINO),
    # Each backend's --method auto for a MatMul-heavy model: weight-only vs dynamic.
    Int8Measurement("x86-avx2", "matmul", "a 2-layer transformer encoder, OpenVINO "
                    "weight-only vs ONNX Runtime dynamic INT8", 1.84,
                    "AMD EPYC (Zen 3), 2 cores", "openvino 2026.4.1, onnxruntime 1.32.0",
                    *_BENCH_OPENVINO),
)

# Ratios this close to 1 are within run-to-run noise on a shared machine: no preference.
INT8_PARITY = 0.03

WORKLOADS = {"conv": "conv nets", "matmul": "MatMul-heavy models"}


def _faster(measurement):
    if abs(measurement.ratio - 1.0) <= INT8_PARITY:
        return None
    return "openvino" if measurement.ratio < 1.0 else "onnxruntime"


def _measured(measurement):
    """One measurement in words: which backend was faster, by how much, where from."""
    if measurement.ratio <= 1.0:
        said = "OpenVINO INT8 ran at {:.2f}x the latency of ONNX Runtime INT8".format(
            measurement.ratio)
    else:
        said = "ONNX Runtime INT8 ran at {:.2f}x the latency of OpenVINO INT8".format(
            1.0 / measurement.ratio)
    return "{} ({}, batch 1; measured on {}, {}; {})".format(
        said, measurement.model, measurement.cpu, measurement.versions, measurement.source)


def int8_measurements(features):
    """The rows of :data:`INT8_MEASUREMENTS` that hold for this CPU's class."""
    kind = cpu_class(features)
    return [m for m in INT8_MEASUREMENTS if m.cpu_class == kind]


def int8_backend_advice(features, workload=None):
    """Which backend runs INT8 faster on this kind of CPU, from measurements, not guesses.

    Args:
        features: :func:`cpu_features` of the CPU that will run the model.
        workload: ``"conv"`` (conv nets), ``"matmul"`` (MatMul-heavy models) or None
            (default: not known; a pick is made only when every workload agrees).

    Returns:
        ``(backend, reason)``: ``backend`` is ``"openvino"``, ``"onnxruntime"`` or None
        (no measurement for this CPU class, the measurements disagree across
        workloads, or the two were on par); ``reason`` is one sentence saying why,
        with the measurement's source.

    Raises:
        UsageError: an unknown ``workload``.
    """
    if workload is not None and workload not in WORKLOADS:
        raise UsageError("Unknown workload {!r}.".format(workload),
                         "Use one of: {} (or None).".format(", ".join(sorted(WORKLOADS))))
    kind = cpu_class(features)
    label = CPU_CLASSES.get(kind, kind)
    found = [m for m in int8_measurements(features) if workload in (None, m.workload)]
    if not found:
        return None, ("No INT8 comparison of OpenVINO and ONNX Runtime on this CPU class ({}){} "
                      "has been measured: edgeinfer makes no claim; convert for both and compare "
                      "them with `edgeinfer bench`.".format(
                          label, " for " + WORKLOADS[workload] if workload else ""))
    picks = set(_faster(m) for m in found)
    if len(picks) > 1:
        return None, "On {} it depends on the model: {}.".format(label, "; ".join(
            "for {}, {}".format(WORKLOADS[m.workload], _measured(m)) for m in found))
    pick = picks.pop()
    if pick is None:
        return None, "On {} the two are on par (within {:.0%}): {}.".format(
            label, INT8_PARITY, "; ".join(_measured(m) for m in found))
    return pick, "On {}, prefer {} for INT8{}: {}.".format(
        label, "OpenVINO" if pick == "openvino" else "ONNX Runtime",
        " " + WORKLOADS[workload] if workload else "", "; ".join(_measured(m) for m in found))
