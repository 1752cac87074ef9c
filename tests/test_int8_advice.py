"""Which backend to pick for INT8 on a CPU: the CPU classes, the measured ratios behind
the advice (checked against docs/BENCHMARKS.md), and what `edgeinfer doctor` prints.

The advice is data: every claim comes from a row of ``profiles.INT8_MEASUREMENTS``, so
the tests feed feature dicts as :func:`cpu_features` returns them for other CPUs, and
check this machine's doctor output against the same function.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from edgeinfer import doctor, profiles
from edgeinfer.errors import UsageError
from edgeinfer.profiles import (INT8_MEASUREMENTS, Int8Measurement, cpu_class, cpu_features,
                                int8_backend_advice)

NONE = dict(avx2=False, avx512=False, vnni=False, amx=False, neon=False, dotprod=False,
            i8mm=False, fp16=False, model=None, cores=4)


def features(arch="x86_64", **flags):
    """A feature dict shaped like cpu_features()'s, for a CPU with ``flags``."""
    return dict(NONE, arch=arch, **flags)


ZEN3 = features(avx2=True)  # the CPU the measurements were taken on: AVX2, no VNNI


@pytest.mark.parametrize("found, expected", [
    (features(avx2=True), "x86-avx2"),
    (features(avx2=True, avx512=True), "x86-avx512"),
    (features(avx2=True, vnni=True), "x86-vnni"),
    (features(avx2=True, avx512=True, vnni=True, amx=True), "x86-amx"),
    (features(), "x86"),
    (features("aarch64", neon=True), "arm64"),
    (features("aarch64", neon=True, dotprod=True), "arm64-dotprod"),
    (features("aarch64", neon=True, dotprod=True, i8mm=True), "arm64-i8mm"),
    (features("riscv64"), "riscv64"),
])
def test_cpu_class(found, expected):
    assert cpu_class(found) == expected


def test_this_machines_class_is_one_of_the_named_ones():
    here = cpu_features()
    assert cpu_class(here) in profiles.CPU_CLASSES or cpu_class(here) == here["arch"]


def test_conv_nets_on_avx2_without_vnni_prefer_openvino():
    backend, reason = int8_backend_advice(ZEN3, "conv")
    assert backend == "openvino"
    assert reason.startswith("On x86 AVX2 without VNNI, prefer OpenVINO for INT8 conv nets: "
                             "OpenVINO INT8 ran at 0.95x the latency of ONNX Runtime INT8 "
                             "(ResNet-50, static INT8 on both, batch 1; measured on AMD EPYC")
    assert "docs/BENCHMARKS.md" in reason


def test_matmul_heavy_models_on_avx2_without_vnni_prefer_onnxruntime():
    backend, reason = int8_backend_advice(ZEN3, "matmul")
    assert backend == "onnxruntime"
    assert ("prefer ONNX Runtime for INT8 MatMul-heavy models: ONNX Runtime INT8 ran at 0.54x "
            "the latency of OpenVINO INT8") in reason


def test_without_a_workload_the_disagreement_is_said_not_hidden():
    backend, reason = int8_backend_advice(ZEN3)
    assert backend is None
    assert reason.startswith("On x86 AVX2 without VNNI it depends on the model: for conv nets, "
                             "OpenVINO INT8 ran at 0.95x")
    assert "for MatMul-heavy models, ONNX Runtime INT8 ran at 0.54x" in reason


@pytest.mark.parametrize("found", [
    features(avx2=True, vnni=True), features(avx2=True, avx512=True, vnni=True, amx=True),
    features(avx2=True, avx512=True), features(), features("aarch64", neon=True, dotprod=True),
])
@pytest.mark.parametrize("workload", [None, "conv", "matmul"])
def test_an_unmeasured_cpu_class_gets_no_claim(found, workload):
    backend, reason = int8_backend_advice(found, workload)
    assert backend is None
    assert "has been measured: edgeinfer makes no claim" in reason
    assert "({}".format(profiles.CPU_CLASSES[cpu_class(found)]) in reason


def test_ratios_within_noise_are_on_par(monkeypatch):
    row = INT8_MEASUREMENTS[0]
    monkeypatch.setattr(profiles, "INT8_MEASUREMENTS", (row._replace(ratio=0.98),))
    backend, reason = int8_backend_advice(ZEN3, "conv")
    assert backend is None
    assert reason.startswith("On x86 AVX2 without VNNI the two are on par (within 3%): "
                             "OpenVINO INT8 ran at 0.98x")


def test_an_unknown_workload_is_refused():
    with pytest.raises(UsageError, match="Unknown workload 'cnn'"):
        int8_backend_advice(ZEN3, "cnn")


def test_every_measurement_names_its_source():
    for row in INT8_MEASUREMENTS:
        assert isinstance(row, Int8Measurement)
        assert row.cpu_class in profiles.CPU_CLASSES and row.workload in profiles.WORKLOADS
        assert row.command.startswith("python scripts/bench_") and row.source
        assert 0 < row.ratio


def _section(text, title):
    return text.split("## " + title, 1)[1].split("\n## ", 1)[0]


def _row(section, label):
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells
    raise AssertionError("no row {!r}".format(label))


def test_the_measurements_are_the_ones_in_benchmarks_md(repo_root):
    # When docs/BENCHMARKS.md is re-measured, INT8_MEASUREMENTS must follow it.
    text = (repo_root / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8")
    recipes = _section(text, "OpenVINO recipes (issue 3)")
    conv = re.search(r"edgeinfer OpenVINO INT8 / edgeinfer ONNX Runtime INT8 \(same model, same "
                     r"calibration images\): \*\*([0-9.]+)x\*\*", recipes)
    ms = lambda label: float(_row(recipes, label)[4])  # noqa: E731 (edgeinfer ms, p50)
    matmul = ms("OpenVINO INT8 weight-only") / ms("ONNX Runtime INT8 dynamic (edgeinfer auto)")
    measured = dict((row.workload, row.ratio) for row in INT8_MEASUREMENTS
                    if row.cpu_class == "x86-avx2")
    assert measured == {"conv": float(conv.group(1)), "matmul": round(matmul, 2)}
    assert "AVX2 True, VNNI False" in recipes


# -- doctor ----------------------------------------------------------------------------------

def _invoke(*args):
    from click.testing import CliRunner
    from edgeinfer.cli import main
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, list(args), catch_exceptions=False)


def test_doctor_gives_this_cpus_pick_per_workload():
    result = _invoke("doctor", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["int8_backend"]
    here = cpu_features()
    assert report["cpu_class"] == cpu_class(here)
    measured = [m for m in INT8_MEASUREMENTS if m.cpu_class == cpu_class(here)]
    assert [m["ratio"] for m in report["measurements"]] == [m.ratio for m in measured]
    expected = [(w,) + int8_backend_advice(here, w)
                for w in (sorted(set(m.workload for m in measured)) or [None])]
    assert [(p["workload"], p["backend"], p["reason"]) for p in report["picks"]] == expected
    lines = _invoke("doctor").stdout.splitlines()
    picks = [line for line in lines if line.startswith("int8 pick  ")]
    assert len(picks) == len(report["picks"])
    for line, pick in zip(picks, report["picks"]):
        assert line.startswith("int8 pick  " + pick["reason"])
    assert lines[-1].startswith("int8       ")


def test_doctor_says_when_the_picked_backend_is_not_installed():
    here = cpu_features()
    if int8_backend_advice(here, "conv")[0] != "openvino":
        pytest.skip("no measurement picks OpenVINO on this CPU class")
    code = "\n".join([
        "import sys",
        "sys.modules['openvino'] = None  # what an interpreter without openvino sees",
        "from edgeinfer.cli import main",
        "main(['doctor'])",
    ])
    done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("openvino   missing") for line in lines), lines
    conv = [line for line in lines if "prefer OpenVINO for INT8 conv nets" in line]
    assert len(conv) == 1
    assert conv[0].endswith(" openvino is not installed here: pip install edgeinfer[openvino].")
    # ONNX Runtime is installed, so its pick carries no such note.
    assert not any("onnxruntime is not installed" in line for line in lines)


def test_doctor_report_without_measurements_makes_one_no_claim_line():
    report = doctor.collect()
    report["cpu"] = features(avx2=True, vnni=True)
    report["int8_backend"] = {"cpu_class": "x86-vnni", "measurements": [],
                              "picks": doctor.int8_backend_picks(report["cpu"],
                                                                 report["backends"])}
    picks = [line for line in doctor.format_report(report).splitlines()
             if line.startswith("int8 pick")]
    assert picks == ["int8 pick  " + int8_backend_advice(report["cpu"])[1]]
    assert "no claim" in picks[0]


@pytest.mark.parametrize("target, workload, other", [("cpu", "conv", "intel-cpu"),
                                                     ("intel-cpu", "conv", "cpu")])
def test_convert_says_when_the_other_backend_is_faster(tmp_path, target, workload, other):
    import edgeinfer
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bundle = edgeinfer.convert(os.path.join(root, "models", "digits_cnn.onnx"), target=target,
                               calibration=os.path.join(root, "calibration", "digits"),
                               output=str(tmp_path / "m.eib"), measure_speed=False)
    backend, reason = int8_backend_advice(cpu_features(), workload)
    said = [n for n in bundle.manifest["notes"] if "Build it with --target" in n]
    if backend is not None and backend != bundle.manifest["target"]["backend"]:
        assert said == ["{} Build it with --target {}.".format(reason, other)]
    else:
        assert said == []
