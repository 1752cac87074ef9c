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

from .test_cli import _runner

RUNS = 12


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
