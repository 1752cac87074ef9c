"""``edgeinfer bench`` on real bundles: the report's schema and numbers, interleaving,
broken bundles, bad settings, the sensors on fake sysfs trees, and the CLI.

The demo model is converted once to FP32 and INT8 (no speed check); run counts stay
small, so the numbers are checked for consistency (p50 <= p99 <= max, ratios of the
baseline exactly 1), never for speed.
"""

import json
import os
import sys
import time

import pytest

import edgeinfer
from edgeinfer.bench import SCHEMA, bench, core, interleave, markdown, sensors
from edgeinfer.bundle import Bundle
from edgeinfer.cli import main
from edgeinfer.errors import UsageError

from . import test_cache, test_tensorrt_backend
from .test_cli import _runner

RUNS = 12

# Fixtures shared with the backend and cache tests: TensorRT's stand-in and a bundle for
# it, a private engine-cache root, and a real redis-server on 127.0.0.1.
fake = test_tensorrt_backend.fake
trt_bundle = test_tensorrt_backend.trt_bundle
cache_root = test_tensorrt_backend.cache_root
redis_url = test_cache.redis_url


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, repo_root):
    folder = tmp_path_factory.mktemp("bench-bundles")
    paths = []
    for precision in ("fp32", "int8"):
        out = folder / "digits-{}.eib".format(precision)
        edgeinfer.convert(
            str(repo_root / "models" / "digits_cnn.onnx"), target="cpu", precision=precision,
            method="static" if precision == "int8" else "auto",
            calibration=str(repo_root / "calibration" / "digits"),
            eval=str(repo_root / "calibration" / "digits-eval"), eval_size=100,
            output=str(out), measure_speed=False)
        paths.append(str(out))
    broken = folder / "broken.eib"
    broken.write_bytes(b"not a bundle\n" * 10)
    return {"fp32": paths[0], "int8": paths[1], "broken": str(broken)}


@pytest.fixture
def short_phases(monkeypatch):
    # Throughput phases normally last 0.5 s each; a few milliseconds keep the tests quick.
    monkeypatch.setattr(core, "MIN_PHASE_S", 0.01)


@pytest.fixture(scope="module")
def report(bundles):
    saved = core.MIN_PHASE_S
    core.MIN_PHASE_S = 0.01
    try:
        return bench([bundles["fp32"], bundles["broken"], bundles["int8"]], runs=RUNS, warmup=2,
                     batches=[1, 2], concurrency=[1, 2])
    finally:
        core.MIN_PHASE_S = saved


def _measured(report):
    return [b for b in report["bundles"] if b["ok"]]


def test_report_is_json_with_schema_and_machine_facts(report):
    again = json.loads(json.dumps(report))
    assert again == report
    assert report["schema"] == SCHEMA == "edgeinfer-bench/1"
    assert report["settings"]["runs"] == RUNS
    assert report["settings"]["batches"] == [1, 2]
    machine = report["machine"]
    for key in ("python", "platform", "os", "ram_mb", "profile", "backends", "cpu"):
        assert key in machine, key
    assert machine["cpu"]["cores"] >= 1
    assert machine["backends"]["onnxruntime"]["available"] is True
    assert machine["ram_mb"] > 0
    assert machine["profile"] in ("x86-cpu", "arm64-cpu")


def test_latency_percentiles_are_ordered(report):
    for entry in _measured(report):
        assert [r["batch"] for r in entry["latency"]] == [1, 2]
        for row in entry["latency"]:
            assert row["runs"] == RUNS == len(row["samples_ms"])
            assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"]
            assert row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
            assert row["max_ms"] == pytest.approx(max(row["samples_ms"]))
        assert entry["load"]["cold_s"] > 0 and entry["load"]["warm_s"] > 0
        assert entry["first_inference_ms"] > 0
        assert entry["memory"]["peak_rss_mb"] > 0


def test_throughput_covers_every_batch_and_concurrency(report):
    for entry in _measured(report):
        settings = [(r["batch"], r["concurrency"]) for r in entry["throughput"]]
        assert settings == [(1, 1), (1, 2), (2, 1), (2, 2)]
        for row in entry["throughput"]:
            assert row["requests"] >= RUNS
            assert row["samples_per_s"] == pytest.approx(row["inferences_per_s"] * row["batch"])
            assert row["inferences_per_s"] == pytest.approx(row["requests"] / row["seconds"])
            assert row["cpu_percent"] is not None and row["cpu_percent"] >= 0


def test_ratios_are_against_the_first_bundle(report):
    base, other = _measured(report)
    assert report["baseline"] == base["label"] == "digits-fp32"
    ratios = base["ratios"]
    assert ratios["load_cold"] == 1.0 and ratios["peak_rss"] == 1.0
    assert [r["ratio"] for r in ratios["latency_p50"]] == [1.0, 1.0]
    assert [r["ratio"] for r in ratios["throughput"]] == [1.0] * 4
    first = other["ratios"]["latency_p50"][0]
    assert first["ratio"] == pytest.approx(other["latency"][0]["p50_ms"] /
                                           base["latency"][0]["p50_ms"])
    assert other["ratios"]["throughput"][3]["ratio"] == pytest.approx(
        other["throughput"][3]["samples_per_s"] / base["throughput"][3]["samples_per_s"])


def test_accuracy_is_copied_from_the_manifest(report, bundles):
    for entry in _measured(report):
        manifest = Bundle.open(entry["path"]).manifest
        assert entry["precision"] == manifest["precision"]
        assert entry["accuracy"]["outputs"] == manifest["validation"]["outputs"]
        assert entry["accuracy"]["samples"] == manifest["validation"]["samples"] == 100
        assert "top1" in entry["accuracy"]["outputs"]["logits"]


def test_broken_bundle_is_named_and_the_others_measured(report, bundles):
    broken = report["bundles"][1]
    assert broken["path"] == bundles["broken"]
    assert broken["ok"] is False and broken["ratios"] is None
    assert "broken.eib" in broken["error"] and "\n" not in broken["error"]
    assert broken["latency"] == [] and broken["throughput"] == []
    assert report["totals"]["failed"] == ["broken"]
    assert [b["label"] for b in _measured(report)] == ["digits-fp32", "digits-int8"]
    text = markdown(report)
    assert "| digits-int8 | int8 |" in text
    assert "- {}: {}".format(bundles["broken"], broken["error"]) in text


def test_energy_and_temperature_are_never_invented(report):
    energy = sensors.EnergyMeter()
    rows = [r for b in _measured(report) for r in b["throughput"]]
    if energy.source is None:
        assert report["sensors"]["energy"] is None
        assert "not available here" in report["sensors"]["energy_note"]
        assert all(r["energy_j"] is None and r["energy_per_inference_mj"] is None for r in rows)
        assert "not available here" in markdown(report)
    else:
        assert all(r["energy_j"] is not None and r["energy_j"] >= 0 for r in rows)
    if not sensors.temperatures_c():
        assert report["sensors"]["temperature_c_start"] is None
        assert "not available here" in report["sensors"]["temperature_note"]


def test_interleave_calls_round_robin():
    order = []
    runs = [(label, (lambda label=label: order.append(label))) for label in "ABC"]
    times = interleave(runs, rounds=3)
    assert "".join(order) == "ABCABCABC"
    assert sorted(times) == ["A", "B", "C"] and all(len(t) == 3 for t in times.values())


def test_interleave_by_duration_stops_after_a_whole_round():
    ticks = iter(range(1000))
    order = []
    runs = [(label, (lambda label=label: order.append(label))) for label in "AB"]
    # Each call reads the clock twice and each round checks it once: 5 ticks a round.
    times = interleave(runs, duration_s=12, clock=lambda: next(ticks))
    assert "".join(order) == "ABABAB"
    assert times == {"A": [1, 1, 1], "B": [1, 1, 1]}


def test_interleaved_timing_is_what_the_bench_uses(bundles, monkeypatch, short_phases):
    seen = []
    real = core.interleave

    def spy(runs, **kwargs):
        seen.append([label for label, _ in runs])
        return real(runs, **kwargs)
    monkeypatch.setattr(core, "interleave", spy)
    bench([bundles["int8"], bundles["fp32"]], runs=3, warmup=0, batches=[1, 4])
    assert seen == [["digits-int8", "digits-fp32"]] * 2


@pytest.mark.parametrize("kwargs, fragment", [
    ({"runs": 0}, "--runs must be"),
    ({"runs": -3}, "--runs must be"),
    ({"duration_s": 0}, "--duration must be"),
    ({"duration_s": -1.5}, "--duration must be"),
    ({"runs": 5, "duration_s": 1}, "not both"),
    ({"warmup": -1}, "--warmup"),
    ({"batches": [0]}, "--batch"),
    ({"concurrency": [1, -2]}, "--concurrency"),
    ({"threads": 0}, "--threads"),
])
def test_bad_settings_are_usage_errors(bundles, kwargs, fragment):
    with pytest.raises(UsageError) as caught:
        bench([bundles["fp32"]], **kwargs)
    assert fragment in str(caught.value)
    assert caught.value.exit_code == 2


# -- sensors on fake sysfs trees ---------------------------------------------------------------

def _write(root, relative, text):
    path = os.path.join(str(root), relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    return path


def test_rapl_counts_packages_once_and_handles_wrap(tmp_path):
    package = _write(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", "999000000\n")
    _write(tmp_path, "sys/class/powercap/intel-rapl:0/max_energy_range_uj", "1000000000\n")
    # A sub-zone is part of its package: counting it too would double the energy.
    _write(tmp_path, "sys/class/powercap/intel-rapl:0:0/energy_uj", "5\n")
    meter = sensors.EnergyMeter(str(tmp_path))
    assert meter.source == "rapl" and meter.why_not is None
    meter.start()
    with open(package, "w") as handle:
        handle.write("1000000\n")  # wrapped past 1e9 uJ: 2 J in all
    assert meter.stop() == pytest.approx(2.0)


def test_jetson_rails_are_integrated(tmp_path):
    _write(tmp_path, "sys/bus/i2c/drivers/ina3221x/1-0040/iio:device0/in_power0_input", "3000\n")
    _write(tmp_path, "sys/bus/i2c/drivers/ina3221x/1-0040/iio:device0/in_power1_input", "1000\n")
    meter = sensors.EnergyMeter(str(tmp_path))
    assert meter.source == "jetson-ina3221"
    meter.start()
    time.sleep(0.3)
    joules = meter.stop()
    # 4 W over the sampled stretch (a little under 0.3 s: the last partial period is lost).
    assert 4.0 * 0.15 <= joules <= 4.0 * 0.35


def test_no_sensor_says_so(tmp_path):
    meter = sensors.EnergyMeter(str(tmp_path))
    assert meter.source is None
    assert meter.why_not.startswith("not available here")
    meter.start()
    assert meter.stop() is None
    assert sensors.max_temperature_c(str(tmp_path)) is None
    assert sensors.cpu_clock(str(tmp_path)) is None


def test_temperatures_read_thermal_zones(tmp_path):
    _write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "41500\n")
    _write(tmp_path, "sys/class/thermal/thermal_zone0/type", "CPU-therm\n")
    _write(tmp_path, "sys/class/thermal/thermal_zone1/temp", "52000\n")
    _write(tmp_path, "sys/class/thermal/thermal_zone1/type", "GPU-therm\n")
    assert sensors.temperatures_c(str(tmp_path)) == {"CPU-therm": 41.5, "GPU-therm": 52.0}
    assert sensors.max_temperature_c(str(tmp_path)) == 52.0


# -- the command line --------------------------------------------------------------------------

def _invoke(*args):
    return _runner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_writes_json_markdown_and_plot(bundles, tmp_path, short_phases):
    out = tmp_path / "out"
    result = _invoke("bench", bundles["fp32"], bundles["int8"], "--runs", 5, "--warmup", 1,
                     "--batch", "1,2", "--concurrency", "1,2", "--json", out / "b.json",
                     "--md", out / "b.md", "--plot", out / "b.png")
    assert result.exit_code == 0, result.stderr
    assert "bench [" in result.stderr  # the progress line
    data = json.loads((out / "b.json").read_text())
    assert data["schema"] == SCHEMA
    assert [b["label"] for b in data["bundles"]] == ["digits-fp32", "digits-int8"]
    table = (out / "b.md").read_text()
    assert table == result.stdout
    assert "| digits-fp32 | fp32 |" in table and "| 1.00x |" in table
    assert (out / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(str(out))) == ["b.json", "b.md", "b.png"]  # no temporary left


def test_cli_broken_bundle_fails_after_reporting_the_others(bundles, tmp_path, short_phases):
    result = _invoke("-q", "bench", bundles["broken"], bundles["int8"], "--runs", 3,
                     "--json", tmp_path / "b.json")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: 1 of 2 bundles could not be measured: broken. Note: Their one-line errors "
        "are in the report; the others were measured."]
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["bundles"][0]["ok"] is False
    assert data["bundles"][1]["ok"] is True and data["baseline"] == "digits-int8"
    assert data["bundles"][1]["ratios"]["load_cold"] == 1.0


@pytest.mark.parametrize("args, fragment", [
    (["--runs", "0"], "--runs must be a whole number >= 1, not 0."),
    (["--runs", "-5"], "--runs must be a whole number >= 1, not -5."),
    (["--duration", "0"], "--duration must be more than 0 seconds"),
    (["--duration", "-2"], "--duration must be more than 0 seconds"),
    (["--batch", "1,x"], "--batch must be whole numbers separated by commas"),
    (["--concurrency", "0"], "--concurrency must list whole numbers >= 1"),
])
def test_cli_bad_settings_exit_2(bundles, tmp_path, args, fragment):
    result = _invoke("bench", bundles["fp32"], "--json", tmp_path / "b.json", *args)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert not (tmp_path / "b.json").exists()


def test_cli_plot_without_matplotlib_still_writes_json(bundles, tmp_path, monkeypatch,
                                                       short_phases):
    # None in sys.modules makes `import matplotlib` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    result = _invoke("-q", "bench", bundles["fp32"], "--runs", 3, "--json", tmp_path / "b.json",
                     "--plot", tmp_path / "b.png")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --plot needs matplotlib, which is not installed; ")
    assert "b.json written" in lines[0] and "pip install edgeinfer[report]" in lines[0]
    assert json.loads((tmp_path / "b.json").read_text())["schema"] == SCHEMA
    assert not (tmp_path / "b.png").exists()


def test_cli_help():
    result = _invoke("bench", "--help")
    assert result.exit_code == 0
    assert "Measure bundles side by side" in result.stdout
    for option in ("--runs", "--duration", "--batch", "--concurrency", "--json", "--md",
                   "--plot", "--pin-cores", "--threads"):
        assert option in result.stdout


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_threads_and_pinning_are_applied_and_undone(bundles, short_phases):
    before = os.sched_getaffinity(0)
    seen = []
    real = core._throughput

    def spy(*args):
        seen.append(os.sched_getaffinity(0))
        return real(*args)
    core._throughput = spy
    try:
        result = bench([bundles["fp32"]], runs=3, warmup=0, threads=1, cores=[0])
    finally:
        core._throughput = real
    assert seen == [{0}]
    assert os.sched_getaffinity(0) == before
    assert result["settings"]["threads"] == 1 and result["settings"]["pinned_cores"] == [0]
    assert result["bundles"][0]["ok"] is True


def test_pinning_to_a_core_this_machine_lacks_is_a_usage_error(bundles):
    with pytest.raises(UsageError) as caught:
        bench([bundles["fp32"]], runs=3, cores=[os.cpu_count() + 7])
    assert "--pin-cores" in str(caught.value)


def test_reports_are_readable_by_others(bundles, tmp_path, short_phases):
    # Written through a private temporary file, then given the usual mode for new files.
    result = _invoke("-q", "bench", bundles["int8"], "--runs", 3, "--md", tmp_path / "b.md")
    assert result.exit_code == 0, result.stderr
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(str(tmp_path / "b.md")).st_mode & 0o777 == 0o666 & ~umask


# -- tegrastats, the Jetson's own monitor ---------------------------------------------------
# Recorded lines from real boards, as published (issue 9 asks for both formats):
# Nano, JetPack 4.6.1 (a Jetson Prometheus exporter's Go tests): rails in mW without a unit,
# "current/average"; PMIC@50C; GR3D without brackets.
NANO_JP46 = ("RAM 1923/3964MB (lfb 2x2MB) SWAP 191/1982MB (cached 6MB) IRAM 0/252kB(lfb 252kB) "
             "CPU [5%@1224,4%@1224,3%@1224,6%@1224] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 "
             "PLL@37C CPU@40C PMIC@50C GPU@40C AO@45C thermal@40C POM_5V_IN 1750/1628 "
             "POM_5V_GPU 0/0 POM_5V_CPU 366/406")
# Orin Nano/NX, JetPack 6 (rbonghi/jetson_stats#624): a date first, "mW" units, lower-case
# sensors, GR3D in brackets, VDD_IN the module's total.
ORIN_JP6 = ("05-15-2025 18:30:28 RAM 6982/7620MB (lfb 5x1MB) SWAP 2640/16384MB (cached 202MB) "
            "CPU [97%@1984,95%@1984,95%@1984,91%@1984,88%@1984,93%@247] EMC_FREQ 18%@3199 "
            "GR3D_FREQ 84%@[713] NVENC 1%@115 NVDEC 40%@115 NVJPG off NVJPG1 off VIC 31%@115 "
            "OFA off NVDLA0 off PVA0_FREQ off APE 174 cv0@63.031C cpu@65.562C soc2@64.156C "
            "soc0@63.031C cv1@62.937C gpu@63.5C tj@65.562C soc1@64.718C cv2@60.875C "
            "VDD_IN 17946mW/15710mW VDD_CPU_GPU_CV 8896mW/7585mW VDD_SOC 3923mW/3515mW")
# AGX Orin, JetPack 5/6 (GDWR/jetson_exporter#14): no total rail, "NC" channels, sensors
# that are powered down read -256C, two GPCs.
AGX_ORIN = ("04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) "
            "CPU [0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 "
            "APE 174 CV0@-256C CPU@44.562C Tboard@32C SOC2@40.093C Tdiode@33C SOC0@41.093C "
            "CV1@-256C GPU@-256C tj@44.343C SOC1@41.25C CV2@-256C VDD_GPU_SOC 2340mW/2340mW "
            "VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW "
            "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW")


def test_tegrastats_nano_jetpack_4_6():
    found = sensors.parse_tegrastats(NANO_JP46)
    assert found["rails_mw"] == {"POM_5V_IN": 1750, "POM_5V_GPU": 0, "POM_5V_CPU": 366}
    assert found["power_mw"] == 1750  # the input rail alone: CPU and GPU are inside it
    assert found["temperatures_c"] == {"PLL": 37.0, "CPU": 40.0, "GPU": 40.0, "AO": 45.0,
                                       "thermal": 40.0}
    assert (found["gr3d_percent"], found["gr3d_mhz"]) == (0.0, 76.0)
    assert (found["emc_percent"], found["emc_mhz"]) == (0.0, 1600.0)


def test_tegrastats_orin_jetpack_6():
    found = sensors.parse_tegrastats(ORIN_JP6)
    assert found["power_mw"] == 17946
    assert sorted(found["rails_mw"]) == ["VDD_CPU_GPU_CV", "VDD_IN", "VDD_SOC"]
    assert found["temperatures_c"]["tj"] == 65.562 and len(found["temperatures_c"]) == 9
    assert (found["gr3d_percent"], found["gr3d_mhz"]) == (84.0, 713.0)
    assert (found["emc_percent"], found["emc_mhz"]) == (18.0, 3199.0)
    assert "RAM" not in found["rails_mw"] and "NVENC" not in found["rails_mw"]


def test_tegrastats_agx_orin_sums_rails_and_drops_sensors_that_are_off():
    found = sensors.parse_tegrastats(AGX_ORIN)
    assert found["rails_mw"] == {"VDD_GPU_SOC": 2340, "VDD_CPU_CV": 390, "VIN_SYS_5V0": 4025,
                                 "VDDQ_VDD2_1V8AO": 301}
    assert found["power_mw"] == 2340 + 390 + 4025 + 301
    assert "CV0" not in found["temperatures_c"] and "GPU" not in found["temperatures_c"]
    assert max(found["temperatures_c"].values()) == 44.562
    assert found["gr3d_percent"] == 0.0


def test_tegrastats_summary_integrates_power():
    samples = [(0.0, {"power_mw": 2000, "gr3d_percent": 10.0, "emc_percent": 4.0,
                      "temperatures_c": {"cpu": 40.0}}),
               (1.0, {"power_mw": 4000, "gr3d_percent": 30.0, "temperatures_c": {"gpu": 45.0}}),
               (3.0, {"power_mw": 4000})]
    summary = sensors.summarize_tegrastats(samples)
    assert summary["energy_j"] == pytest.approx(3.0 + 8.0)
    assert summary["power_w_mean"] == pytest.approx(10.0 / 3)
    assert (summary["gr3d_percent_mean"], summary["gr3d_percent_max"]) == (20.0, 30.0)
    assert summary["emc_percent_mean"] == 4.0 and summary["temperature_c_max"] == 45.0
    assert sensors.summarize_tegrastats([]) is None


def test_tegrastats_sampler_reads_the_program(tmp_path):
    # tegrastats exists only on a Jetson: a stand-in program prints the recorded Nano line
    # every --interval milliseconds, as the real one does.
    program = tmp_path / "tegrastats"
    program.write_text("#!/bin/sh\n[ \"$1\" = --interval ] || exit 2\n"
                       "while true; do echo '{}'; sleep 0.02; done\n".format(NANO_JP46))
    program.chmod(0o755)
    meter = sensors.Tegrastats(binary=str(program), interval_ms=20)
    assert meter.available and meter.why_not is None
    meter.start()
    time.sleep(0.3)
    summary = meter.stop()
    assert summary["samples"] >= 3
    assert summary["power_w_mean"] == pytest.approx(1.75)
    assert summary["energy_j"] == pytest.approx(1.75 * 0.3, rel=0.5)
    assert summary["gr3d_percent_mean"] == 0.0 and summary["temperature_c_max"] == 45.0
    assert meter.stop() is None  # stopped once; the program is gone


@pytest.mark.skipif(sensors.shutil.which("tegrastats") is not None, reason="a Jetson")
def test_no_tegrastats_here_says_so(report):
    meter = sensors.Tegrastats()
    assert meter.available is False
    assert meter.why_not == "not available here: no tegrastats on PATH (a Jetson tool)"
    meter.start()
    assert meter.stop() is None
    assert report["sensors"]["tegrastats"] is False
    assert report["sensors"]["tegrastats_note"] == meter.why_not
    rows = [r for b in _measured(report) for r in b["throughput"]]
    assert all(r["gpu_percent"] is None and r["emc_percent"] is None for r in rows)
    assert report["machine"]["clocks"] is None  # not a Jetson: no jetson_clocks state


def test_jetson_ina_rails_count_the_input_rail_once(tmp_path):
    # JetPack 4 (Nano): POM_5V_IN already contains the GPU and CPU rails beside it.
    folder = "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/"
    for index, (name, mw) in enumerate((("POM_5V_IN", 3000), ("POM_5V_GPU", 800),
                                        ("POM_5V_CPU", 900))):
        _write(tmp_path, folder + "rail_name_{}".format(index), name + "\n")
        _write(tmp_path, folder + "in_power{}_input".format(index), "{}\n".format(mw))
    meter = sensors.EnergyMeter(str(tmp_path))
    assert meter._power_w() == pytest.approx(3.0)


def test_jetson_hwmon_rails_count_vdd_in_once(tmp_path):
    # JetPack 5/6 (Orin NX/Nano): in1 is VDD_IN, in mV and mA.
    folder = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/"
    for index, (name, mv, ma) in enumerate((("VDD_IN", 5000, 1000), ("VDD_CPU_GPU_CV", 5000, 300),
                                            ("VDD_SOC", 5000, 200)), 1):
        _write(tmp_path, folder + "in{}_label".format(index), name + "\n")
        _write(tmp_path, folder + "in{}_input".format(index), "{}\n".format(mv))
        _write(tmp_path, folder + "curr{}_input".format(index), "{}\n".format(ma))
    meter = sensors.EnergyMeter(str(tmp_path))
    assert meter.source == "jetson-ina3221"
    assert meter._power_w() == pytest.approx(5.0)


def _clocks(root, cpu_min, gpu_min):
    for cpu in (0, 1):
        folder = "sys/devices/system/cpu/cpu{}/cpufreq/".format(cpu)
        _write(root, folder + "scaling_min_freq", "{}\n".format(cpu_min))
        _write(root, folder + "scaling_max_freq", "1479000\n")
    folder = "sys/class/devfreq/57000000.gpu/"
    _write(root, folder + "min_freq", "{}\n".format(gpu_min))
    _write(root, folder + "max_freq", "921600000\n")
    _write(root, folder + "cur_freq", "921600000\n")


def test_jetson_clocks_state_from_sysfs(tmp_path):
    from edgeinfer.jetson import read_clocks
    _clocks(tmp_path / "on", 1479000, 921600000)
    assert read_clocks(str(tmp_path / "on")) == {
        "jetson_clocks": "on", "cpu_pinned": True, "gpu_pinned": True, "gpu_mhz": 921.6}
    _clocks(tmp_path / "off", 102000, 76800000)
    state = read_clocks(str(tmp_path / "off"))
    assert (state["jetson_clocks"], state["cpu_pinned"], state["gpu_pinned"]) == (
        "off", False, False)
    assert read_clocks(str(tmp_path)) is None


# -- engine build / compile time -------------------------------------------------------------

@pytest.fixture(scope="module")
def openvino_bundle(tmp_path_factory, repo_root):
    pytest.importorskip("openvino")
    out = tmp_path_factory.mktemp("bench-ov") / "digits-ov.eib"
    edgeinfer.convert(str(repo_root / "models" / "digits_cnn.onnx"), target="intel-cpu",
                      precision="fp32", output=str(out), measure_speed=False)
    return str(out)


def test_openvino_compile_time_cold_warm_and_without_cache(openvino_bundle, bundles,
                                                           short_phases):
    result = bench([bundles["fp32"], openvino_bundle], runs=3, warmup=0)
    ort, ov = result["bundles"]
    build = ov["load"]["build"]
    assert build["step"] == "OpenVINO compile_model"
    # An empty cache folder: the cold load compiles, the warm one imports the blob.
    assert (build["cold_cache"], build["warm_cache"]) == ("miss", "hit")
    assert 0 < build["cold_s"] <= ov["load"]["cold_s"]
    assert 0 < build["warm_s"] <= ov["load"]["warm_s"]
    assert build["uncached_s"] > 0 and build["note"] is None
    assert ort["load"]["build"]["step"] is None and ort["load"]["build"]["cold_s"] is None
    assert "onnxruntime has no separate compile step" in ort["load"]["build"]["note"]
    text = markdown(result)
    assert "| digits-ov | OpenVINO compile_model | {:.3f} (miss) | {:.3f} (hit) |".format(
        build["cold_s"], build["warm_s"]) in text
    assert result["settings"]["fresh_build_cache"] is True


def test_tensorrt_engine_build_is_timed(fake, trt_bundle, cache_root, short_phases):
    # TensorRT cannot run here: its stand-in (tests/fake_tensorrt.py) builds and runs the
    # engine through ONNX Runtime, so this checks where the times come from, not their size.
    trt, _ = fake("8.6.2", "cuda-python")
    result = bench([trt_bundle()], runs=2, warmup=0)
    entry = result["bundles"][0]
    assert entry["ok"], entry["error"]
    build = entry["load"]["build"]
    assert build["step"] == "TensorRT engine build"
    assert (build["cold_cache"], build["warm_cache"]) == ("miss", "hit")
    assert build["cold_s"] > 0 and build["warm_s"] is None  # the warm load built nothing
    assert build["deserialize_s"] > 0 and build["uncached_s"] is None
    assert "builds on every load" in build["note"]
    # The bench's own empty engine folder, not the user's, and it is gone afterwards.
    assert not cache_root.exists()


# -- the result cache ------------------------------------------------------------------------

def test_cache_miss_and_hits_per_tier(bundles, tmp_path, redis_url, short_phases):
    import redis
    folder = tmp_path / "l2"
    settings = {"memory_mb": 16, "disk_dir": str(folder), "disk_mb": 64, "redis_url": redis_url}
    keys_before = len(redis.Redis.from_url(redis_url).keys("edgeinfer:*"))
    result = bench([bundles["fp32"], bundles["int8"]], runs=6, warmup=0, cache=settings)
    for entry in _measured(result):
        cache = entry["cache"]
        assert cache["tiers"] == ["memory", "disk", "redis"] and cache["notes"] == []
        for summary in [cache["no_cache"], cache["miss"]] + list(cache["hits"].values()):
            assert summary["runs"] == 6 and 0 < summary["p50_ms"] <= summary["max_ms"]
        assert cache["no_cache"]["vs_model_run"] == 1.0
        assert cache["hits"]["memory"]["vs_model_run"] == pytest.approx(
            cache["hits"]["memory"]["p50_ms"] / cache["no_cache"]["p50_ms"])
        assert cache["key_us"]["samples"] == 6  # one key per miss: every input was new
    assert result["settings"]["cache"] == settings
    # What the bench stored is gone from the shared tiers.
    from edgeinfer.runtime.cache import Cache
    with Cache(memory_mb=0, disk_dir=str(folder)) as disk:
        assert disk.stats()["tiers"]["disk"]["items"] == 0
    assert len(redis.Redis.from_url(redis_url).keys("edgeinfer:*")) == keys_before
    text = markdown(result)
    assert "| bundle | model run | miss | miss overhead | L1 memory hit | L2 disk hit " \
           "| L3 Redis hit |" in text
    hit = _measured(result)[0]["cache"]["hits"]["redis"]
    assert "{:.3f} ({:.3f}x)".format(hit["p50_ms"], hit["vs_model_run"]) in text


def test_cache_tier_that_is_down_is_named_not_timed(bundles, short_phases):
    url = "redis://127.0.0.1:{}/0".format(test_cache.free_port())  # nothing listens there
    result = bench([bundles["fp32"]], runs=4, warmup=0,
                   cache={"memory_mb": 8, "redis_url": url})
    cache = result["bundles"][0]["cache"]
    assert cache["hits"]["memory"]["runs"] == 4
    assert cache["hits"]["redis"] is None and cache["hits"]["disk"] is None
    assert cache["notes"][0] == "L2 disk: not configured"
    assert cache["notes"][1].startswith("L3 Redis: not measured, 1 of 4 calls missed (Redis at ")
    assert "Connection refused" in cache["notes"][1]
    assert "- digits-fp32: L3 Redis: not measured" in markdown(result)


def test_cli_cache_options(bundles, tmp_path, short_phases):
    result = _invoke("-q", "bench", bundles["int8"], "--runs", 3, "--cache-mb", 8,
                     "--cache-dir", tmp_path / "c", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["settings"]["cache"] == {"memory_mb": 8.0, "disk_dir": str(tmp_path / "c"),
                                         "disk_mb": 8.0, "redis_url": None}
    hits = data["bundles"][0]["cache"]["hits"]
    assert hits["memory"]["runs"] == hits["disk"]["runs"] == 3 and hits["redis"] is None
    assert "Result cache at batch 1" in result.stdout
    bad = _invoke("bench", bundles["int8"], "--cache-mb", 0)
    assert bad.exit_code == 2
    assert bad.stderr.splitlines() == [
        "error: --cache-mb must be more than 0, not 0. Note: It is the cache size in MiB, "
        "e.g. --cache-mb 256."]


def test_redis_password_is_not_written_to_the_report():
    shown = core._describe_cache({"memory_mb": 1, "redis_url": "redis://user:secret@host:6379/0"})
    assert shown["redis_url"] == "redis://***@host:6379/0"


def test_progress_bar_on_a_terminal():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    stream = Terminal()
    progress = core.Progress(stream)
    progress.total = 4
    progress.step("load a")
    progress.step("latency batch 1")
    assert stream.getvalue() == ("\r\033[Kbench [###---------] 1/4 load a"
                                 "\r\033[Kbench [######------] 2/4 latency batch 1")
    progress.finish()
    assert stream.getvalue().endswith("\n")


# -- scripts/bench_all.py: which sections run ----------------------------------------------------

@pytest.fixture(scope="module")
def bench_all(repo_root):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bench_all", str(repo_root / "scripts" / "bench_all.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_all_only_and_skip_keep_the_suite_order(bench_all):
    names = [s.name for s in bench_all.SECTIONS]
    chosen, left = bench_all.select(bench_all.SECTIONS, only=["edgeinfer-bench", "core"])
    assert [s.name for s in chosen] == ["core", "edgeinfer-bench"]
    assert [n for n, _ in left] == [n for n in names if n not in ("core", "edgeinfer-bench")]
    assert set(why for _, why in left) == {"not in --only"}
    chosen, left = bench_all.select(bench_all.SECTIONS, skip=["serve"])
    assert [s.name for s in chosen] == [n for n in names if n != "serve"]
    assert left == [("serve", "--skip")]
    with pytest.raises(SystemExit) as caught:
        bench_all.select(bench_all.SECTIONS, only=["cahce"])
    assert "unknown section(s) cahce; the sections are: core," in str(caught.value)


def test_bench_all_skips_what_this_machine_lacks_with_the_reason(bench_all):
    args = bench_all.parse_args(["--mlserver", "/nonexistent/mlserver"])
    serve = next(s for s in bench_all.SECTIONS if s.name == "serve")
    requirements = dict(bench_all.REQUIREMENTS, wrk=bench_all._binary("wrk-not-here", "wrk"))
    assert bench_all.missing(serve, args, requirements) == (
        "wrk-not-here is not on PATH (apt-get install wrk); no MLServer command (give "
        "--mlserver PATH: mlserver installed in its own virtualenv)")
    core_section = next(s for s in bench_all.SECTIONS if s.name == "core")
    assert bench_all.missing(core_section, args) is None  # scikit-learn is in [dev]
    absent = bench_all._module("no_such_package_here", "edgeinfer[nothing]")
    assert absent(args) == ("the Python package no_such_package_here is not installed "
                            "(pip install edgeinfer[nothing])")


def test_bench_all_names_scripts_it_does_not_run(bench_all, tmp_path):
    for name in ("bench_core.py", "bench_cache.py", "bench_new_thing.py", "bench_all.py",
                 "build_demo_model.py"):
        (tmp_path / name).write_text("")
    assert bench_all.unregistered(str(tmp_path)) == ["bench_new_thing.py"]
    # Every section's script exists in the repository.
    for section in bench_all.SECTIONS:
        if section.script:
            assert os.path.exists(os.path.join(bench_all.HERE, section.script)), section.script


def test_tensorrt_keep_build_cache_finds_the_earlier_engine(fake, trt_bundle, cache_root,
                                                           short_phases):
    fake("10.3.0.30", "cuda-python")
    path = trt_bundle()
    first = bench([path], runs=2, warmup=0, fresh_build_cache=False)
    again = bench([path], runs=2, warmup=0, fresh_build_cache=False)
    assert first["bundles"][0]["load"]["build"]["cold_cache"] == "miss"
    build = again["bundles"][0]["load"]["build"]
    # The user's engine cache kept the first run's engine: this "cold" load built nothing.
    assert (build["cold_cache"], build["cold_s"]) == ("hit", None)
    assert again["settings"]["fresh_build_cache"] is False
    assert len([n for n in os.listdir(str(cache_root / "engines")) if n.endswith(".engine")]) == 1


def test_markdown_shows_gpu_and_emc_load_when_tegrastats_ran(report):
    jetson = json.loads(json.dumps(report))
    jetson["sensors"]["tegrastats"] = True
    for entry in _measured(jetson):
        for row in entry["throughput"]:
            row.update(gpu_percent=61.5, emc_percent=12.0)
    jetson["machine"]["power_mode"] = {"id": 0, "name": "MAXN"}
    jetson["machine"]["clocks"] = {"jetson_clocks": "on", "cpu_pinned": True,
                                   "gpu_pinned": True, "gpu_mhz": 921.6}
    text = markdown(jetson)
    assert "| energy mJ/inference | GPU % | EMC % |" in text
    assert "| not available here | 62 | 12 |" in text
    assert "Jetson: power mode MAXN (0), jetson_clocks on, GPU at 922 MHz." in text
    assert "GPU %" not in markdown(report)
