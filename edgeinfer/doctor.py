"""`edgeinfer doctor`: what this machine can run, how fast INT8 can be here, and with which
backend; on a Jetson, its model, JetPack, TensorRT, fast precisions and power mode."""

import importlib
import platform
import sys

from .jetson import read_jetson
from .profiles import (PROFILES, cpu_class, cpu_features, int8_backend_advice,
                       int8_measurements, machine_arch)

# Backends a device may have, with what to report about each.
KNOWN_BACKENDS = ("onnxruntime", "openvino", "tensorrt")


def _probe(module):
    """(version or None, detail) for an importable backend; never raises."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # a broken install raises more than ImportError
        return None, "not importable: {}".format(str(exc).splitlines()[0] if str(exc) else exc)
    version = getattr(mod, "__version__", None)
    detail = ""
    try:
        if module == "onnxruntime":
            detail = "providers: " + ", ".join(mod.get_available_providers())
        elif module == "openvino":
            detail = "devices: " + ", ".join(mod.Core().available_devices)
    except Exception as exc:
        detail = "cannot list devices: {}".format(exc)
    return version, detail


def openvino_devices():
    """OpenVINO's devices with their name and capabilities, or (None, why not)."""
    try:
        from .runtime.backends.openvino import describe_devices
        return describe_devices(), None
    except Exception as exc:  # a device plugin that fails to load must not stop doctor
        return None, "cannot list devices: {}".format(str(exc).strip().splitlines()[-1]
                                                     if str(exc).strip() else exc)


def int8_advice(features):
    """What INT8 looks like on this CPU, in one sentence."""
    if features["arch"] == "aarch64":
        if features["dotprod"] or features["i8mm"]:
            return "ARM dot-product present: INT8 (S8S8) is fast here."
        return "ARM without dot-product: INT8 gains are small; FP16/FP32 may do as well."
    if features["vnni"] or features["amx"]:
        return "VNNI present: INT8 (S8S8) runs at full speed with ONNX Runtime and OpenVINO."
    if features["avx2"]:
        return ("AVX2 without VNNI: ONNX Runtime INT8 uses U8S8 with reduce-range (no "
                "saturation); expect modest gains, check `convert`'s speed line.")
    return "No AVX2: INT8 kernels fall back to slow paths; prefer FP32."


def int8_backend_picks(features, backends):
    """Which backend to pick for INT8 on this CPU, per workload, from measurements.

    Args:
        features: :func:`~edgeinfer.profiles.cpu_features` of this machine.
        backends: doctor's backend report (name -> dict with ``available``).

    Returns:
        list of dicts: ``workload`` (``"conv"``, ``"matmul"``, or None when this CPU
        class has no measurement at all), ``backend`` (or None: no claim), ``reason``,
        and ``installed`` (whether the picked backend is importable here, or None).
    """
    workloads = sorted(set(m.workload for m in int8_measurements(features))) or [None]
    picks = []
    for workload in workloads:
        backend, reason = int8_backend_advice(features, workload)
        installed = backends.get(backend, {}).get("available") if backend else None
        picks.append({"workload": workload, "backend": backend, "reason": reason,
                      "installed": installed})
    return picks


def jetson_report(tensorrt_version=None, root="/"):
    """What this Jetson is and can do, or None on anything else.

    Args:
        tensorrt_version: TensorRT's Python package version here (default None: not
            importable; the ``libnvinfer`` library's version is read instead).
        root: the file-system root to read the Jetson's files from (default ``/``).

    Returns:
        dict: ``model``, ``l4t``, ``jetpack``, ``cuda``, ``profile`` (edgeinfer's
        profile name or None), ``gpu`` (architecture and compute capability),
        ``fast`` (precisions fast here, from the profile), ``int8_note``,
        ``tensorrt`` (installed, or None), ``tensorrt_expected`` (what the JetPack
        ships), ``cuda_binding`` (``cuda-python``, ``pycuda`` or None) and
        ``power_mode``.
    """
    info = read_jetson(root)
    if info is None:
        return None
    from .runtime.backends.tensorrt import cuda_binding_name, library_version
    profile = PROFILES.get(info.profile) if info.profile else None
    jetpack = info.jetpack
    return {
        "model": info.model, "l4t": info.l4t, "release": info.release,
        "jetpack": jetpack.jetpack if jetpack else None, "cuda": jetpack.cuda if jetpack else None,
        "profile": info.profile,
        "gpu": {"arch": profile.gpu_arch, "compute": profile.compute_capability}
        if profile else None,
        "fast": [p for p in profile.precisions if p != "fp32"] if profile else None,
        "int8_note": profile.int8_note if profile else None,
        "tensorrt": tensorrt_version or library_version(),
        "tensorrt_python": tensorrt_version is not None,
        "tensorrt_expected": jetpack.tensorrt if jetpack else (
            profile.tensorrt if profile else None),
        "cuda_binding": cuda_binding_name(),
        "power_mode": info.power_mode,
    }


def format_jetson(jetson):
    """doctor's lines about a Jetson (from :func:`jetson_report`)."""
    if not jetson:
        return ["jetson     not a Jetson"]
    release = "L4T {}".format(jetson["l4t"]) if jetson["l4t"] else "L4T unknown"
    if jetson["jetpack"]:
        release += " = JetPack {} (TensorRT {}, CUDA {})".format(
            jetson["jetpack"], jetson["tensorrt_expected"], jetson["cuda"])
    lines = ["jetson     {}: {}".format(jetson["model"] or "unknown model", release)]
    if jetson["profile"]:
        gpu = jetson["gpu"]
        fast = jetson["fast"]
        line = "           profile {}: {} GPU sm_{}; fast here: {}".format(
            jetson["profile"], gpu["arch"], gpu["compute"].replace(".", ""),
            ", ".join(p.upper() for p in fast))
        if "int8" not in fast:
            line += "; INT8 not: {}".format(jetson["int8_note"] or "no fast INT8 path")
        lines.append(line)
    else:
        lines.append("           no edgeinfer profile for this module: convert with the profile "
                     "of the closest Jetson (`edgeinfer convert --help`)")
    if jetson["tensorrt"]:
        where = "Python package" if jetson["tensorrt_python"] else \
            "library only; `sudo apt install python3-libnvinfer` for the Python package"
        lines.append("           tensorrt {} ({})".format(jetson["tensorrt"], where))
    else:
        lines.append("           tensorrt missing: it comes with JetPack (`sudo apt install "
                     "nvidia-tensorrt`)")
    lines.append("           cuda binding {}".format(
        jetson["cuda_binding"] or "missing: `pip3 install pycuda` (JetPack 4.6) or "
        "`pip3 install cuda-python` (JetPack 5/6)"))
    mode = jetson["power_mode"]
    if mode:
        lines.append("           power mode {}{}".format(
            mode["id"], " ({})".format(mode["name"]) if mode["name"] else ""))
    return lines


def collect(root="/"):
    """Everything doctor reports, as a JSON-serialisable dict.

    Args:
        root: where to read a Jetson's files from (default ``/``; tests give a fixture).
    """
    features = cpu_features()
    backends = {}
    for name in KNOWN_BACKENDS:
        version, detail = _probe(name)
        backends[name] = {"available": version is not None, "version": version,
                          "detail": detail}
        if name == "openvino" and version is not None:
            devices, why_not = openvino_devices()
            backends[name]["devices"] = devices or []
            if why_not:
                backends[name]["detail"] = why_not
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "arch": machine_arch(),
        "cpu": features,
        "jetson": jetson_report(backends["tensorrt"]["version"], root),
        "backends": backends,
        "int8_backend": {"cpu_class": cpu_class(features),
                         "picks": int8_backend_picks(features, backends),
                         "measurements": [m._asdict() for m in int8_measurements(features)]},
        "int8": int8_advice(features),
    }


def format_report(report):
    cpu = report["cpu"]
    flags = [k for k in ("avx2", "avx512", "vnni", "amx", "neon", "dotprod", "i8mm", "fp16")
             if cpu.get(k)]
    lines = ["python     {}".format(report["python"]),
             "platform   {}".format(report["platform"]),
             "cpu        {} ({} cores, {})".format(cpu.get("model"), cpu.get("cores"),
                                                    report["arch"]),
             "features   {}".format(" ".join(flags) or "none of avx2/vnni/neon/dotprod")]
    lines.extend(format_jetson(report["jetson"]))
    for name, info in report["backends"].items():
        state = info["version"] if info["available"] else "missing"
        lines.append("{:<10} {}  {}".format(name, state, info["detail"]).rstrip())
        for device in info.get("devices") or ():
            lines.append("{:<10}   {:<6} {}{}".format(
                "", device["name"], device.get("full_name", "?"),
                "  [{}]".format(", ".join(device["capabilities"]))
                if device.get("capabilities") else ""))
    for pick in report["int8_backend"]["picks"]:
        line = pick["reason"]
        if pick["backend"] and not pick["installed"]:
            line += " {} is not installed here: pip install edgeinfer[{}].".format(
                pick["backend"], "ort" if pick["backend"] == "onnxruntime" else pick["backend"])
        lines.append("int8 pick  {}".format(line))
    lines.append("int8       {}".format(report["int8"]))
    return "\n".join(lines)
