"""``edgeinfer loadtest`` (issue 9) against a real ``edgeinfer serve`` on 127.0.0.1.

The servers are the real command in a subprocess (``Served`` from test_serve);
the generator is the real aiohttp client.  What the server itself counted
(``/metrics``: successes, 503 rejections, cache hits) is the independent check
of what the load test reports.  The arithmetic (stages, SLO, timeline,
percentiles) is also checked on made-up recordings with known answers.
"""

import json
import math
import re
import socket
import sys

import numpy as np
import pytest

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.errors import UsageError
from edgeinfer.loadtest import SCHEMA, bodies as requests
from edgeinfer.loadtest.plan import Schedule, check_url, make_schedule, parse_slo
from edgeinfer.loadtest.results import summarize
from edgeinfer.loadtest.runner import CONNECTION, TIMEOUT, Client, Recording
from edgeinfer.serve.protocol import _read_tensor, parse_json, split_body
from edgeinfer.tensors import TensorSpec

from .conftest import tiny_manifest
from .test_cli import invoke
from .test_serve import Served

pytest.importorskip("aiohttp")

# Short stages keep the suite quick; the behaviour does not depend on the length.
SHORT = "1s:2,1s:2"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model, repo_root):
    folder = tmp_path_factory.mktemp("loadtest")
    tiny = folder / "tiny.eib"
    Bundle.write(str(tiny), tiny_manifest(), {"model.onnx": tiny_model.data})
    digits = folder / "digits.eib"
    edgeinfer.convert(str(repo_root / "models" / "digits_cnn.onnx"), target="cpu",
                      precision="fp32", output=str(digits), name="digits",
                      measure_speed=False)
    return {"tiny": tiny, "digits": digits}


@pytest.fixture(scope="module")
def server(bundles):
    """digits and tiny, with a memory result cache (so cache hits can be counted)."""
    served = Served([bundles["digits"], bundles["tiny"]], "--cache-mb", "16")
    yield served
    assert served.stop(), "".join(served.log)


def _url(served):
    return "http://127.0.0.1:{}".format(served.port)


def _metric(served, name, **labels):
    text = served.request("GET", "/metrics")[2].decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _one_error_line(result, code):
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the plan: stages, durations, SLO --------------------------------------------------------


def test_stages_ramp_linearly_from_the_last_level():
    schedule = Schedule.parse("10s:8,30s:32,10s:0")
    assert schedule.total_s == 50
    assert [schedule.level_at(t) for t in (0, 5, 10, 25, 40, 45, 50)] == [0, 4, 8, 20, 32, 16, 0]
    assert [s["kind"] for s in schedule.to_list()] == ["ramp-up", "ramp-up", "ramp-down"]
    # The integrated level (requests due, for a rate) and its inverse agree.
    assert schedule.area_until(10) == pytest.approx(40)
    assert schedule.area_until(50) == pytest.approx(40 + 600 + 160)
    for area in (1, 40, 333, 799):
        assert schedule.area_until(schedule.time_of_area(area)) == pytest.approx(area)
    assert schedule.time_of_area(801) is None
    steady = Schedule.parse("500ms:4,1m:4")
    assert steady.total_s == 60.5 and steady.to_list()[1]["kind"] == "steady"
    assert Schedule.constant(3, 5).level_at(0) == 5


def test_slo_values_are_parsed_to_ms_fraction_and_rate():
    criteria = dict((c.key, c) for c in parse_slo("p95=50ms,p99=0.2s,max=1500us,errors=0.1%,"
                                                   "rps=100/s"))
    assert criteria["p95"].limit == 50 and criteria["p99"].limit == 200
    assert criteria["max"].limit == 1.5 and criteria["errors"].limit == pytest.approx(0.001)
    assert criteria["rps"].limit == 100 and criteria["rps"].check(100)
    assert not criteria["rps"].check(99.9) and criteria["p95"].check(50)
    assert not criteria["p95"].check(50.01) and not criteria["p95"].check(None)
    assert parse_slo(None) == []


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(stages="10s:8", users=3), "--stages gives the load"),
    (dict(duration="10s"), "--duration needs --users N (closed) or --rate R (open)"),
    (dict(duration="10s", users=2, rate=3.0), "Give --users (closed workload) or --rate"),
    (dict(duration="10s", rate=-1.0), "--rate must be more than 0"),
    (dict(), "No load given"),
])
def test_contradictory_load_settings_are_usage_errors(kwargs, fragment):
    with pytest.raises(UsageError, match=re.escape(fragment)):
        make_schedule(**kwargs)


def test_url_must_be_a_server_base():
    assert check_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_url("https://gw.example/proxy/") == "https://gw.example/proxy"
    for bad in ("127.0.0.1:8000", "ftp://x", "http://h:1/v2", "http://h:1/v2/models/m/infer"):
        with pytest.raises(UsageError):
            check_url(bad)


# -- request bodies --------------------------------------------------------------------------

SPECS = [TensorSpec("x", "float32", ("batch", 1, 8, 8)), TensorSpec("n", "int64", ("batch", 3))]


def _decode(bodies, body):
    """What the server's own parser reads from a body: dict name -> array."""
    header, tail = split_body(body, bodies.headers.get("Inference-Header-Content-Length"))
    offset, arrays = 0, {}
    for item, spec in zip(parse_json(header)["inputs"], SPECS):
        arrays[spec.name], offset = _read_tensor(item, spec, tail, offset)
    assert offset == len(tail)
    return arrays


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_bodies_vary_as_asked_and_the_server_reads_them(binary):
    pool = requests.sample_pool(SPECS, 3, batch=2)
    for mode, distinct in (("unique", 12), ("cycle", 3), ("repeat", 1)):
        bodies = requests.Bodies(pool, binary=binary, mode=mode)
        sent = [bodies.body(k) for k in range(12)]
        assert len(set(sent)) == distinct, mode
        for k, body in enumerate(sent):
            arrays = _decode(bodies, body)
            source = pool[0 if mode == "repeat" else k % 3]
            assert arrays["x"].shape == (2, 1, 8, 8) and arrays["n"].shape == (2, 3)
            np.testing.assert_array_equal(arrays["n"], source["n"])
            # Only the first elements of the first input carry the request number.
            slots = requests.stamp_slots("float32", 128) if mode == "unique" else 0
            np.testing.assert_array_equal(arrays["x"].ravel()[slots:],
                                          source["x"].ravel()[slots:])
            if mode == "unique":
                assert slots == 3   # 64 bits in float32 values 1 + d / 2**23
                assert np.all((arrays["x"].ravel()[:3] >= 1) & (arrays["x"].ravel()[:3] < 2))
    # Two runs send different bodies (a random run number): the last run's cache is no help.
    first, second = (requests.Bodies(pool, binary=binary) for _ in range(2))
    assert first.body(5) != second.body(5)


def test_stamped_values_are_distinct_per_request_for_every_dtype():
    for dtype in ("float16", "float32", "float64", "uint8", "int64", "bool"):
        slots = requests.stamp_slots(dtype, 1000)
        seen = set()
        for number in range(300):
            values, distinct = requests.stamp_values(dtype, number, slots)
            seen.add(np.array(values, dtype=dtype).tobytes())
        assert len(seen) == 300 and distinct >= 2 ** requests.STAMP_BITS, dtype


def test_a_free_dim_other_than_batch_needs_data_and_a_fixed_batch_takes_no_batch():
    with pytest.raises(UsageError, match="symbolic dim 1"):
        requests.sample_pool([TensorSpec("t", "int64", ("batch", "seq"))], 1)
    with pytest.raises(UsageError, match=r"--batch 4 does not fit input t: its first dim is fixed"):
        requests.sample_pool([TensorSpec("t", "int64", (1, 3))], 1, batch=4)
    assert requests.sample_pool([TensorSpec("t", "int64", (1, 3))], 1)[0]["t"].shape == (1, 3)


# -- the numbers, on a recording with known answers ------------------------------------------


def _recording(entries, samples):
    rec = Recording()
    for start, latency, status in entries:
        rec.start.append(start)
        rec.latency.append(latency)
        rec.status.append(status)
    rec.samples = samples
    rec.wall_s = max(s + l for s, l, _ in entries)
    return rec


def test_summary_timeline_stages_and_verdict_are_exact():
    ok_latencies = [0.010, 0.020, 0.030, 0.040, 0.100]
    entries = [(0.1, 0.010, 200), (0.2, 0.020, 200), (0.5, 0.030, 200),   # answered in second 0
               (1.2, 0.040, 200), (1.3, 0.005, 503), (1.4, 0.001, 400),   # second 1
               (1.90, 0.100, 200), (1.95, 0.2, TIMEOUT), (1.96, 0.3, CONNECTION)]  # after 2 s
    samples = [(0.0, 1.00, (0, 0), 1, 0), (1.0, 1.25, (150, 200), 2, 2),
               (2.0, 1.75, (300, 400), 2, 0), (2.3, 1.80, (330, 440), 2, 0)]
    schedule = Schedule.parse("1s:2,1s:2")
    report = summarize(_recording(entries, samples), schedule,
                       parse_slo("p50=30ms,p99=50ms,errors=10%,rps=2"), cores=2)
    summary = report["summary"]
    assert (summary["requests"], summary["ok"], summary["errors"]) == (9, 5, 4)
    assert summary["errors_by_kind"] == {"503": 1, "400": 1, "timeout": 1, "connection": 1}
    assert summary["error_rate"] == pytest.approx(4 / 9.0)
    assert summary["rps"] == pytest.approx(2.5)  # 5 successes over the 2 s of stages
    latency = summary["latency_ms"]
    for p in (50, 90, 95, 99):
        assert latency["p{}_ms".format(p)] == pytest.approx(np.percentile(ok_latencies, p) * 1000)
    assert latency["max_ms"] == pytest.approx(100) and latency["count"] == 5
    # Second 0: three answers; second 1 keeps the late ones (after the 2 s of stages).
    timeline = report["timeline"]
    assert [(r["t"], r["requests"], r["ok"], r["errors"]) for r in timeline] == [
        (0, 3, 3, 0), (1, 6, 2, 4)]
    assert timeline[0]["p50_ms"] == pytest.approx(20) and timeline[0]["level"] == 1
    assert timeline[0]["generator_cpu_percent"] == 25.0     # 0.25 s of CPU in 1 s
    assert timeline[0]["machine_cpu_percent"] == 150.0      # 150 of 200 jiffies, 2 cores
    assert timeline[1]["generator_cpu_percent"] == 50.0
    assert [(s["requests"], s["ok"]) for s in report["stages"]] == [(3, 3), (6, 2)]
    assert report["generator"]["cpu_percent"] == pytest.approx(100 * 0.8 / 2.3, abs=0.1)
    assert report["generator"]["limited"] is False
    slo = report["slo"]
    assert slo["passed"] is False
    assert [(c["key"], c["passed"]) for c in slo["criteria"]] == [
        ("p50", True), ("p99", False), ("errors", False), ("rps", True)]
    assert slo["failed"][0].startswith("p99 9") and "goal p99 <= 50 ms" in slo["failed"][0]
    assert "goal errors <= 10%" in slo["failed"][1]


def test_a_busy_generator_is_flagged():
    samples = [(0.0, 0.0, None, 1, 0), (1.0, 0.95, None, 1, 1)]
    report = summarize(_recording([(0.1, 0.01, 200)], samples), Schedule.parse("1s:1"))
    assert report["generator"]["limited"] is True
    assert "limited the load" in report["generator"]["notes"][0]
    assert report["slo"] == {"criteria": [], "passed": None, "failed": []}


def test_no_success_fails_every_latency_criterion():
    samples = [(0.0, 0.0, None, 1, 0), (1.0, 0.1, None, 1, 0)]
    report = summarize(_recording([(0.1, 0.01, 503)], samples), Schedule.parse("1s:1"),
                       parse_slo("p95=1s"))
    assert report["summary"]["latency_ms"] is None
    assert report["slo"]["failed"] == ["p95 not measured (no successful request)"]


# -- against a real server -------------------------------------------------------------------


def test_closed_run_end_to_end_matches_what_the_server_counted(server, tmp_path):
    before = _metric(server, "edgeinfer_inference_requests_total", model="digits",
                     outcome="success")
    out = tmp_path / "out"
    result = invoke("loadtest", _url(server), "--model", "digits", "--stages", SHORT,
                    "--slo", "p99=10s,errors=0.1%", "--json", out / "l.json", "--md",
                    out / "l.md", "--plot", out / "l.png")
    assert result.exit_code == 0, result.stderr
    assert "loadtest " in result.stderr   # the per-second progress line
    data = json.loads((out / "l.json").read_text())
    after = _metric(server, "edgeinfer_inference_requests_total", model="digits",
                    outcome="success")
    summary = data["summary"]
    assert data["schema"] == SCHEMA == "edgeinfer-loadtest/1"
    # One check request before the run, then every request of the run, all answered 200.
    assert after - before == summary["requests"] + 1
    assert summary["ok"] == summary["requests"] > 0 and summary["errors_by_kind"] == {}
    assert summary["rps"] == pytest.approx(summary["ok"] / 2.0)
    assert [r["t"] for r in data["timeline"]] == [0, 1]
    assert sum(r["requests"] for r in data["timeline"]) == summary["requests"]
    assert sum(s["requests"] for s in data["stages"]) == summary["requests"]
    latency = summary["latency_ms"]
    assert 0 < latency["min_ms"] <= latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] \
        <= latency["max_ms"]
    assert data["settings"]["workload"] == "closed" and data["settings"]["inputs"] == "unique"
    assert data["settings"]["distinct_requests"] is None
    assert data["generator"]["cpu_percent"] > 0 and data["generator"]["cores"] >= 1
    assert data["machine"]["cpu"]["cores"] >= 1 and data["client"]["library"].startswith("aiohttp")
    assert data["target"]["inputs"] == [{"name": "input", "datatype": "FP32",
                                         "shape": [-1, 1, 8, 8]}]
    assert data["slo"]["passed"] is True
    table = (out / "l.md").read_text()
    assert table == result.stdout and "**SLO met:" in table and "| p99 | 10s |" in table
    assert (out / "l.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["l.json", "l.md", "l.png"]


def test_an_slo_that_cannot_hold_fails_with_exit_1_naming_it(server, tmp_path):
    result = invoke("-q", "loadtest", _url(server), "--model", "digits", "--duration", "1s",
                    "--users", "1", "--slo", "p50=1us,errors=0.1%", "--json", tmp_path / "l.json")
    line = _one_error_line(result, 1)
    assert line.startswith("error: SLO not met: p50 ") and "(goal p50 <= 0.001 ms)" in line
    assert "errors" not in line.split("Note:")[0]
    assert line.endswith("Note: Details in {}.".format(tmp_path / "l.json"))
    data = json.loads((tmp_path / "l.json").read_text())
    assert data["slo"]["passed"] is False
    assert [(c["key"], c["passed"]) for c in data["slo"]["criteria"]] == [
        ("p50", False), ("errors", True)]


def test_503_answers_are_counted_as_errors(bundles, tmp_path):
    # Requests wait 300 ms to be batched and at most 4 may wait: the rest get 503 at once.
    served = Served([bundles["tiny"]], "--max-batch", "64", "--max-delay-ms", "300",
                    "--max-queue", "4")
    try:
        result = invoke("-q", "loadtest", _url(served), "--model", "tiny", "--duration", "1s",
                        "--users", "12", "--slo", "errors=1%", "--json", tmp_path / "l.json")
        line = _one_error_line(result, 1)
        assert line.startswith("error: SLO not met: errors ") and "goal errors <= 1%" in line
        summary = json.loads((tmp_path / "l.json").read_text())["summary"]
        rejected = _metric(served, "edgeinfer_inference_requests_total", model="tiny",
                           outcome="rejected")
        assert summary["errors_by_kind"] == {"503": summary["errors"]}
        assert "requests waiting, its limit" in summary["error_examples"]["503"]
        assert summary["errors"] == rejected > 0
        assert summary["ok"] + summary["errors"] == summary["requests"]
        assert summary["error_rate"] == pytest.approx(summary["errors"] / summary["requests"])
    finally:
        assert served.stop(), "".join(served.log)


class _EveryOtherBad(object):
    """Good bodies for even request numbers, a body the server refuses (400) for odd ones."""

    def __init__(self, good):
        self.good = good
        self.headers = good.headers

    def body(self, k):
        return self.good.body(k) if k % 2 == 0 else b'{"inputs": 3}'


def test_400_answers_are_counted_as_errors(server):
    schedule = Schedule.constant(1.0, 2)
    with Client(_url(server), "digits") as client:
        metadata, _ = client.metadata()
        pool = requests.sample_pool(requests.input_specs(metadata, "digits"), 4)
        bodies = _EveryOtherBad(requests.Bodies(pool))
        client.check(bodies)   # request 0 is a good one
        rec = client.run(schedule, bodies)
    summary = summarize(rec, schedule, parse_slo("errors=0%"))["summary"]
    # Requests are numbered from 1 in the order sent: the odd ones, half rounded up, are bad.
    assert summary["errors_by_kind"] == {"400": int(math.ceil(summary["requests"] / 2.0))}
    assert "'inputs' must be a list" in summary["error_examples"]["400"]
    assert summary["ok"] == summary["requests"] // 2


def test_unique_inputs_never_hit_the_server_cache_and_repeat_always_does(server, tmp_path):
    def hits():
        return _metric(server, "edgeinfer_cache_hits_total")

    start = hits()
    result = invoke("-q", "loadtest", _url(server), "--model", "digits", "--duration", "1s",
                    "--users", "2", "--json", tmp_path / "u.json")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "u.json").read_text())["summary"]["requests"] > 10
    assert hits() == start
    result = invoke("-q", "loadtest", _url(server), "--model", "digits", "--duration", "1s",
                    "--users", "2", "--inputs", "repeat", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    # The check request computed the one input; every request of the run was a hit.
    assert hits() - start == data["summary"]["requests"]
    assert data["settings"]["distinct_requests"] == 1


def test_open_workload_sends_the_scheduled_arrivals(server, tmp_path):
    result = invoke("-q", "loadtest", _url(server), "--model", "digits", "--open", "--stages",
                    "1s:40,1s:40", "--binary", "--json", tmp_path / "o.json")
    assert result.exit_code == 0, result.stderr
    data = json.loads((tmp_path / "o.json").read_text())
    opened = data["summary"]["open"]
    # A ramp 0 -> 40/s over 1 s is 20 arrivals, then 40 in the steady second.
    assert (opened["scheduled"], opened["sent"], opened["dropped"]) == (60, 60, 0)
    assert data["summary"]["requests"] == data["summary"]["ok"] == 60
    assert abs(data["timeline"][0]["requests"] - 20) <= 2
    assert data["settings"]["body"] == "binary" and data["settings"]["arrivals"] == "constant"
    assert opened["lag_ms"]["p50"] >= 0


def test_inputs_from_a_folder_of_npy_and_of_images(server, bundles, tmp_path, repo_root):
    folder = tmp_path / "npy"
    folder.mkdir()
    for i in range(3):
        np.save(str(folder / "{}.npy".format(i)), np.full((1, 8, 8), i, np.float32))
    pool = requests.sample_pool(SPECS[:1], 4, data=str(folder))
    assert [float(p["x"][0, 0, 0, 0]) for p in pool] == [0.0, 1.0, 2.0]
    pairs = requests.sample_pool(SPECS[:1], 4, batch=2, data=str(folder))
    assert [p["x"][:, 0, 0, 0].tolist() for p in pairs] == [[0.0, 1.0], [2.0, 0.0]]
    result = invoke("-q", "loadtest", _url(server), "--model", "digits", "--duration", "1s",
                    "--users", "1", "--data", folder, "--inputs", "cycle", "--json",
                    tmp_path / "n.json")
    assert result.exit_code == 0, result.stderr
    data = json.loads((tmp_path / "n.json").read_text())
    assert data["settings"]["distinct_requests"] == 3 and data["summary"]["errors"] == 0
    images = repo_root / "calibration" / "digits"
    result = invoke("-q", "loadtest", _url(server), "--model", "digits", "--duration", "1s",
                    "--users", "1", "--data", images)
    assert "needs a preprocessing recipe" in _one_error_line(result, 1)
    recipe = json.dumps(Bundle.open(str(bundles["digits"]), verify=False).manifest["preprocess"])
    result = invoke("-q", "loadtest", _url(server), "--model", "digits", "--duration", "1s",
                    "--users", "1", "--data", images, "--preprocess", recipe)
    assert result.exit_code == 0, result.stderr


# -- bad input: one line, the right exit status, nothing written ----------------------------


def test_unreachable_url(tmp_path):
    port = _free_port()
    result = invoke("loadtest", "http://127.0.0.1:{}".format(port), "--model", "digits",
                    "--stages", SHORT, "--json", tmp_path / "l.json")
    line = _one_error_line(result, 1)
    assert line.startswith("error: Cannot reach http://127.0.0.1:{}: Connection refused.".format(
        port)) and "edgeinfer serve" in line
    assert not (tmp_path / "l.json").exists()


def test_a_server_that_does_not_answer_in_time(bundles, tmp_path):
    served = Served([bundles["tiny"]], "--max-batch", "64", "--max-delay-ms", "2000")
    try:
        result = invoke("loadtest", _url(served), "--model", "tiny", "--stages", SHORT,
                        "--timeout-s", "0.3", "--json", tmp_path / "l.json")
        line = _one_error_line(result, 1)
        assert line.startswith("error: The first infer request got no answer within 0.3 s.")
        assert "--timeout-s" in line and not (tmp_path / "l.json").exists()
    finally:
        assert served.stop(), "".join(served.log)


def test_unknown_model_names_the_served_ones(server, tmp_path):
    result = invoke("loadtest", _url(server), "--model", "nope", "--stages", SHORT, "--json",
                    tmp_path / "l.json")
    line = _one_error_line(result, 1)
    assert "does not serve model 'nope'" in line and "models: digits (v1), tiny (v1)" in line
    assert not (tmp_path / "l.json").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--stages", SHORT, "--slo", "p95=fast"], "--slo: p95=fast is not a latency"),
    (["--stages", SHORT, "--slo", "p95<50ms"], "--slo: 'p95<50ms' is not KEY=VALUE"),
    (["--stages", SHORT, "--slo", "p42=5ms"], "--slo: unknown criterion 'p42'"),
    (["--stages", SHORT, "--slo", "errors=0.1"], "errors=0.1 is not a percentage"),
    (["--stages", SHORT, "--slo", "errors=150%"], "outside 0%..100%"),
    (["--stages", SHORT, "--slo", "rps=0"], "rps=0 is not a rate > 0"),
    (["--stages", SHORT, "--slo", "p95=5ms,p95=6ms"], "p95 is given twice"),
    (["--stages", "0s:4"], "stage 1 duration must be more than 0, not '0s'"),
    (["--stages", "10s:4,-5s:2"], "stage 2 duration must be more than 0, not '-5s'"),
    (["--stages", "10s:-2"], "stage 1 target '-2' is not a number >= 0"),
    (["--stages", "10s:0,5s:0"], "never rises above 0"),
    (["--stages", "10s"], "stage 1 is '10s'; each stage is DURATION:TARGET"),
    (["--stages", "10s:8,,5s:1"], "stage 2 is ''"),
    (["--stages", "ten:8"], "stage 1 duration 'ten' is not a duration"),
    (["--stages", "10x:8"], "is not a duration"),
    (["--stages", "10s:2.5"], "closed-workload targets are whole numbers"),
    (["--duration", "0s", "--users", "2"], "--duration must be more than 0, not '0s'"),
    (["--duration", "-3s", "--users", "2"], "--duration must be more than 0, not '-3s'"),
    (["--duration", "5s", "--users", "0"], "--users must be a whole number >= 1, not 0"),
    (["--duration", "5s", "--users", "-4"], "--users must be a whole number >= 1, not -4"),
    (["--duration", "5s", "--rate", "0"], "--rate must be more than 0"),
    (["--duration", "5s", "--users", "2", "--timeout-s", "0"], "--timeout-s must be more than 0"),
    (["--duration", "5s", "--users", "2", "--batch", "0"], "--batch must be a whole number >= 1"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_settings_exit_2_before_any_request(server, tmp_path, args, fragment):
    before = _metric(server, "edgeinfer_requests_total")
    result = invoke("loadtest", _url(server), "--model", "digits", "--json", tmp_path / "l.json",
                    *args)
    assert fragment in _one_error_line(result, 2)
    assert not (tmp_path / "l.json").exists()
    # Only the /metrics read above reached the server: nothing was sent for a bad setting.
    assert _metric(server, "edgeinfer_requests_total") == before + 1


def test_a_url_that_is_not_a_server_base_is_a_usage_error():
    line = _one_error_line(invoke("loadtest", "http://127.0.0.1:8000/v2/models/digits",
                                  "--model", "digits", "--stages", SHORT), 2)
    assert "is more than the server's base URL" in line and "http://127.0.0.1:8000" in line


def test_plot_without_matplotlib_still_writes_json(server, tmp_path, monkeypatch):
    # None in sys.modules makes `import matplotlib` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    result = invoke("-q", "loadtest", _url(server), "--model", "digits", "--duration", "1s",
                    "--users", "1", "--json", tmp_path / "l.json", "--plot", tmp_path / "l.png")
    line = _one_error_line(result, 1)
    assert line.startswith("error: --plot needs matplotlib, which is not installed; ")
    assert "l.json written" in line and "pip install edgeinfer[report]" in line
    assert json.loads((tmp_path / "l.json").read_text())["schema"] == SCHEMA
    assert not (tmp_path / "l.png").exists()


def test_without_aiohttp_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    line = _one_error_line(invoke("loadtest", "http://127.0.0.1:9", "--model", "m", "--stages",
                                  SHORT), 1)
    assert "aiohttp is not installed" in line and "pip install edgeinfer[loadtest]" in line


def test_help():
    result = invoke("loadtest", "--help")
    assert result.exit_code == 0
    assert "KServe v2" in result.stdout
    for option in ("--model", "--stages", "--duration", "--users", "--rate", "--open", "--slo",
                   "--data", "--inputs", "--binary", "--json", "--md", "--plot"):
        assert option in result.stdout
