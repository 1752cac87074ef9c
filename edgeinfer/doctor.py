"""`edgeinfer doctor`: what this machine can run, how fast INT8 can be here, and with which
backend."""

import importlib
import platform
import sys

from .profiles import (cpu_class, cpu_features, int8_backend_advice, int8_measurements,
                       jetson_info, machine_arch)

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


def collect():
    """Everything doctor reports, as a JSON-serialisable dict."""
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
        "jetson": jetson_info(),
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
             "features   {}".format(" ".join(flags) or "none of avx2/vnni/neon/dotprod"),
             "jetson     {}".format(
                 "{} ({})".format(report["jetson"]["model"], report["jetson"]["l4t"])
                 if report["jetson"] else "not a Jetson")]
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
