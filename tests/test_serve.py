"""``edgeinfer serve`` over real sockets on 127.0.0.1 (issue 8).

Each server is the real command (``python -m edgeinfer serve ... --port 0``) in a
subprocess; clients are Triton's own ``tritonclient.http`` (JSON and binary
tensor modes) and plain ``http.client`` for the error cases, so what is tested
is what a camera or gateway would see.  Models: the tiny float model
(``y = relu(x @ W + b)``, ``x: float32[batch, 4]``), the int64 model, and the
demo digits model converted to FP32 (it records image preprocessing, for
``/classify``).
"""

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import edgeinfer
from edgeinfer.bundle import Bundle

from edgeinfer.serve.repository import default_instances, served_options, usable_cores

from .conftest import tiny_manifest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpclient = pytest.importorskip("tritonclient.http")

SERVING = re.compile(r"serving \d+ model\(s\) on http://[\d.]+:(\d+)")


class Served(object):
    """A ``edgeinfer serve`` subprocess on a free port of 127.0.0.1."""

    def __init__(self, bundles, *options):
        command = [sys.executable, "-m", "edgeinfer", "serve"] + [str(b) for b in bundles] + [
            "--port", "0"] + list(options)
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     universal_newlines=True)
        self.log = []
        deadline = time.time() + 60
        self.port = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            match = SERVING.search(line)
            if match:
                self.port = int(match.group(1))
                break
        if self.port is None:
            self.proc.kill()
            raise AssertionError("server did not start: " + "".join(self.log)
                                 + self.proc.stderr.read())
        # Keep reading the log so the pipe never fills and blocks the server.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.url = "127.0.0.1:{}".format(self.port)

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def request(self, method, path, body=None, headers=None, timeout=30):
        """``(status, headers dict, body bytes)`` of one request on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def post_json(self, path, data, headers=None):
        status, head, body = self.request("POST", path, json.dumps(data).encode(), headers)
        return status, head, json.loads(body)

    def rss_kb(self):
        with open("/proc/{}/status".format(self.proc.pid)) as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signal the server; True when it drained and stopped cleanly.

        uvicorn re-raises the signal once it has shut down, so a clean stop on
        SIGTERM ends with that signal (as systemd expects), never a traceback.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        clean = self.proc.returncode in (0, -sig)
        return clean and not any("Traceback" in line for line in self.log)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model, int_model, repo_root):
    folder = tmp_path_factory.mktemp("served")
    tiny = folder / "tiny.eib"
    Bundle.write(str(tiny), tiny_manifest(), {"model.onnx": tiny_model.data})
    ints = folder / "ints.eib"
    Bundle.write(str(ints), tiny_manifest(
        name="ints", inputs=[{"name": "n", "dtype": "int64", "shape": ["batch", 2]}],
        outputs=[{"name": "m", "dtype": "int64", "shape": ["batch", 2]}]),
        {"model.onnx": int_model.read_bytes()})
    digits = folder / "digits.eib"
    edgeinfer.convert(str(repo_root / "models" / "digits_cnn.onnx"), target="cpu",
                      precision="fp32", output=str(digits), name="digits")
    return {"tiny": tiny, "ints": ints, "digits": digits}


@pytest.fixture(scope="module")
def server(bundles):
    """The main server: three models, a 1 MiB body limit."""
    served = Served([bundles["tiny"], bundles["ints"], bundles["digits"]], "--max-body-mb", "1")
    yield served
    assert served.stop(), "".join(served.log)


@pytest.fixture(scope="module")
def batching(bundles):
    """Dynamic batching (8 rows, 50 ms) with a memory result cache."""
    served = Served([bundles["tiny"]], "--max-batch", "8", "--max-delay-ms", "50",
                    "--cache-mb", "16")
    yield served
    assert served.stop(), "".join(served.log)


def expected(tiny_model, x):
    z = x.astype(np.float64) @ tiny_model.W + tiny_model.b
    return np.maximum(z, 0), z


# -- Triton's client -------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infers(server, tiny_model, binary):
    client = httpclient.InferenceServerClient(server.url)
    x = np.random.RandomState(0).randn(3, 4).astype(np.float32)
    given = httpclient.InferInput("x", [3, 4], "FP32")
    given.set_data_from_numpy(x, binary_data=binary)
    asked = [httpclient.InferRequestedOutput("y", binary_data=binary),
             httpclient.InferRequestedOutput("z", binary_data=binary)]
    result = client.infer("tiny", [given], outputs=asked, request_id="r-1")
    y, z = expected(tiny_model, x)
    np.testing.assert_allclose(result.as_numpy("y"), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("z"), z, rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == "r-1"
    assert result.as_numpy("y").dtype == np.float32


def test_tritonclient_binary_by_default_and_one_output(server, tiny_model):
    client = httpclient.InferenceServerClient(server.url)
    x = np.ones((1, 4), np.float32)
    given = httpclient.InferInput("x", [1, 4], "FP32")
    given.set_data_from_numpy(x)   # binary by default; no outputs named: all, binary
    result = client.infer("tiny", [given])
    np.testing.assert_allclose(result.as_numpy("z"), expected(tiny_model, x)[1], rtol=1e-5)
    only = client.infer("tiny", [given], outputs=[httpclient.InferRequestedOutput("y")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["y"]


def test_tritonclient_int64_model_and_versions(server):
    client = httpclient.InferenceServerClient(server.url)
    n = np.array([[1, -2], [2 ** 40, 3]], np.int64)
    given = httpclient.InferInput("n", [2, 2], "INT64")
    given.set_data_from_numpy(n, binary_data=False)
    result = client.infer("ints", [given], model_version="1")
    np.testing.assert_array_equal(result.as_numpy("m"), n + n)
    with pytest.raises(Exception, match="version 2 is not served"):
        client.infer("ints", [given], model_version="2")


def test_tritonclient_health_metadata_config_stats(server):
    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "edgeinfer" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("tiny")
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in model["outputs"]] == ["y", "z"]
    config = client.get_model_config("tiny")
    assert config["max_batch_size"] >= 1 and config["input"][0]["dims"] == [4]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    given = httpclient.InferInput("x", [1, 4], "FP32")
    given.set_data_from_numpy(np.zeros((1, 4), np.float32))
    before = client.get_inference_statistics("tiny")["model_stats"][0]
    client.infer("tiny", [given])
    after = client.get_inference_statistics("tiny")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 1
    assert after["inference_stats"]["success"]["count"] == (
        before["inference_stats"]["success"]["count"] + 1)
    everything = client.get_inference_statistics()
    assert {m["name"] for m in everything["model_stats"]} == {"tiny", "ints", "digits"}


# -- bad input (issue 8's list), over plain HTTP -----------------------------------------------


def _infer_body(**tensor):
    item = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    item.update(tensor)
    return {"inputs": [item]}


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"inputs": 3}', "'inputs' must be a list"),
    (json.dumps(_infer_body(name="w")).encode(), "Input tensor: w"),
    (json.dumps(_infer_body(datatype="FP64")).encode(), "Input tensor: x | Received datatype"),
    (json.dumps(_infer_body(datatype="BYTES")).encode(), "expected datatype FP32"),
    (json.dumps(_infer_body(shape=[1, 5], data=[1] * 5)).encode(), "Input tensor: x | Received shape"),
    (json.dumps(_infer_body(shape=[4])).encode(), "rank 1"),
    (json.dumps(_infer_body(data=[1, 2, 3])).encode(), "'data' has 3 values, but shape [1, 4] needs 4"),
    (json.dumps(_infer_body(data=[[1, 2], [3]])).encode(), "ragged"),
    (json.dumps(_infer_body(data=["a", "b", "c", "d"])).encode(), "string values"),
    (json.dumps(_infer_body(shape=[1, -4])).encode(), "whole numbers >= 0"),
    (json.dumps({"inputs": []}).encode(), "Input tensor: x | Missing"),
    (json.dumps(dict(_infer_body(), outputs=[{"name": "q"}])).encode(), "Output tensor: q"),
], ids=["malformed", "array", "inputs-type", "name", "dtype", "bytes", "shape", "rank", "length",
        "ragged", "strings", "negative-dim", "missing", "output-name"])
def test_bad_request_is_400_naming_the_problem(server, body, fragment):
    status, _, data = server.request("POST", "/v2/models/tiny/infer", body)
    assert status == 400, data
    assert fragment in json.loads(data)["error"]


def test_int_data_out_of_range_is_400(server):
    status, _, data = server.post_json("/v2/models/ints/infer", {"inputs": [
        {"name": "n", "shape": [1, 2], "datatype": "INT64", "data": [1, 2 ** 70]}]})
    assert status == 400 and "Input tensor: n" in data["error"]


def test_unknown_model_is_404(server):
    for method, path in (("GET", "/v2/models/nope"), ("POST", "/v2/models/nope/infer"),
                         ("GET", "/v2/models/tiny/versions/9"), ("GET", "/v2/nothing")):
        status, _, data = server.request(method, path, b"{}" if method == "POST" else None)
        assert status == 404, (path, data)
        assert "error" in json.loads(data)
    status, _, data = server.request("GET", "/v2/models/tiny/infer")
    assert status == 405 and "error" in json.loads(data)


def test_config_and_stats_endpoints_as_perf_analyzer_reads_them(server, batching):
    # perf_analyzer reads max_batch_size and dims (batch dim left out when batching),
    # and refuses stats whose compute_input/infer/output counts differ.
    status, _, data = server.request("GET", "/v2/models/tiny/config")
    assert status == 200
    config = json.loads(data)
    assert config["name"] == "tiny" and config["max_batch_size"] == 1
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert [o["name"] for o in config["output"]] == ["y", "z"]
    assert "dynamic_batching" not in config
    assert config["instance_group"] == [{"count": default_instances("onnxruntime",
                                                                     usable_cores()),
                                         "kind": "KIND_CPU"}]
    batched = json.loads(batching.request("GET", "/v2/models/tiny/versions/1/config")[2])
    assert batched["max_batch_size"] == 8
    assert batched["dynamic_batching"] == {"max_queue_delay_microseconds": 50000}

    def stats():
        status, _, data = server.request("GET", "/v2/models/ints/stats")
        assert status == 200
        return json.loads(data)["model_stats"][0]
    before = stats()
    body = {"inputs": [{"name": "n", "shape": [3, 2], "datatype": "INT64", "data": [1] * 6}]}
    for _ in range(2):
        assert server.post_json("/v2/models/ints/infer", body)[0] == 200
    assert server.post_json("/v2/models/ints/infer", {"inputs": []})[0] == 400
    after = stats()
    assert (after["name"], after["version"]) == ("ints", "1")
    assert after["inference_count"] - before["inference_count"] == 6   # rows, not requests
    assert after["execution_count"] - before["execution_count"] == 2
    grew = dict((key, after["inference_stats"][key]["count"] - before["inference_stats"][key][
        "count"]) for key in after["inference_stats"])
    assert grew == {"success": 2, "fail": 0, "queue": 2, "compute_input": 2, "compute_infer": 2,
                    "compute_output": 2, "cache_hit": 0, "cache_miss": 0}
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"][
        "compute_infer"]["ns"]
    assert abs(after["last_inference"] / 1000.0 - time.time()) < 60   # ms since the epoch
    sizes = dict((b["batch_size"], b["compute_infer"]["count"]) for b in after["batch_stats"])
    assert sizes.get(3, 0) >= 2
    for path in ("/v2/models/nope/config", "/v2/models/nope/stats",
                 "/v2/models/tiny/versions/9/config", "/v2/models/tiny/versions/9/stats"):
        status, _, data = server.request("GET", path)
        assert status == 404 and "is not served here" in json.loads(data)["error"], path


def test_oversized_body_is_413(server):
    big = b" " * (1024 * 1024 + 10)
    status, _, data = server.request("POST", "/v2/models/tiny/infer", big)
    assert status == 413 and "limit" in json.loads(data)["error"]
    # Without a Content-Length (chunked), the limit holds while reading.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v2/models/tiny/infer", body=iter([b" " * 65536] * 20),
                 encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413, response.read()
    conn.close()


def _binary_request(header, tail, length=None):
    head = json.dumps(header).encode()
    return head + tail, {"Inference-Header-Content-Length": str(
        len(head) if length is None else length)}


@pytest.mark.parametrize("size, length, fragment", [
    (16, 10 ** 6, "Inference-Header-Content-Length is"),
    (16, "abc", "Inference-Header-Content-Length is"),
    (64, None, "needs 16"),
    (16, None, "only 8 remain"),
], ids=["header-too-long", "header-not-a-number", "size-vs-shape", "size-vs-body"])
def test_binary_header_that_lies_is_400(server, size, length, fragment):
    header = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                          "parameters": {"binary_data_size": size}}]}
    tail = np.zeros(4, np.float32).tobytes()[:8 if fragment == "only 8 remain" else 16]
    body, headers = _binary_request(header, tail, length)
    status, _, data = server.request("POST", "/v2/models/tiny/infer", body, headers)
    assert status == 400, data
    assert fragment in json.loads(data)["error"]


def test_binary_trailing_bytes_are_400(server):
    header = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                          "parameters": {"binary_data_size": 16}}]}
    body, headers = _binary_request(header, b"\0" * 20)
    status, _, data = server.request("POST", "/v2/models/tiny/infer", body, headers)
    assert status == 400 and "add up to 16" in json.loads(data)["error"]


def test_binary_response_layout(server, tiny_model):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    header = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                          "parameters": {"binary_data_size": 32}}],
              "outputs": [{"name": "z", "parameters": {"binary_data": True}},
                          {"name": "y", "parameters": {"binary_data": False}}]}
    body, headers = _binary_request(header, x.tobytes())
    status, head, data = server.request("POST", "/v2/models/tiny/infer", body, headers)
    assert status == 200
    length = int(head["inference-header-content-length"])
    meta = json.loads(data[:length])
    assert [o["name"] for o in meta["outputs"]] == ["z", "y"]
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 24
    y, z = expected(tiny_model, x)
    np.testing.assert_allclose(np.frombuffer(data[length:], np.float32).reshape(2, 3), z,
                               rtol=1e-5)
    np.testing.assert_allclose(np.array(meta["outputs"][1]["data"]).reshape(2, 3), y, rtol=1e-5)


def test_classify_image(server, bundles, repo_root):
    image = sorted((repo_root / "calibration" / "digits").glob("*.png"))[0]
    boundary = "edgeinferboundary"
    body = ("--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"d.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").format(b=boundary).encode() + image.read_bytes() + (
        "\r\n--{b}--\r\n".format(b=boundary)).encode()
    headers = {"Content-Type": "multipart/form-data; boundary=" + boundary}
    status, _, data = server.request("POST", "/v2/models/digits/classify?top_k=3", body, headers)
    assert status == 200, data
    predictions = json.loads(data)["predictions"]
    assert len(predictions) == 3
    session = edgeinfer.load(str(bundles["digits"]))
    from edgeinfer.preprocess import Preprocess
    sample = Preprocess.from_dict(session.manifest["preprocess"])(str(image))
    logits = session.run({"input": sample[np.newaxis]})["logits"][0]
    assert predictions[0]["index"] == int(np.argmax(logits))
    assert predictions[0]["score"] >= predictions[1]["score"] >= predictions[2]["score"]
    # An upload that is not an image: 400, naming the field.
    bad = body.replace(image.read_bytes(), b"GIF89a but not really an image")
    status, _, data = server.request("POST", "/v2/models/digits/classify", bad, headers)
    assert status == 400 and "not an image" in json.loads(data)["error"]
    status, _, data = server.request("POST", "/v2/models/digits/classify", b"plain", {
        "Content-Type": "text/plain"})
    assert status == 400 and "'image'" in json.loads(data)["error"]
    status, _, data = server.request("POST", "/v2/models/tiny/classify", body, headers)
    assert status == 400 and "preprocessing" in json.loads(data)["error"]


def test_metrics_text(server):
    server.request("GET", "/v2/health/ready")
    status, head, data = server.request("GET", "/metrics")
    assert status == 200 and head["content-type"].startswith("text/plain; version=0.0.4")
    text = data.decode()
    assert re.search(r'edgeinfer_requests_total\{endpoint="ready",code="200"\} [1-9]', text)
    for family in ("edgeinfer_request_duration_seconds_bucket", "edgeinfer_queue_depth",
                   "edgeinfer_batch_size_bucket", "edgeinfer_model_load_seconds{model=\"tiny\"",
                   "# TYPE edgeinfer_cache_hits_total counter"):
        assert family in text, family
    assert re.search(r'edgeinfer_requests_total\{endpoint="infer",code="400"\} \d+', text)


# -- batching, cache ---------------------------------------------------------------------------


def test_dynamic_batching_stacks_concurrent_requests(batching, tiny_model):
    inputs = [np.random.RandomState(i).randn(1, 4).astype(np.float32) for i in range(8)]
    results = [None] * len(inputs)

    def call(index):
        client = httpclient.InferenceServerClient(batching.url)
        given = httpclient.InferInput("x", [1, 4], "FP32")
        given.set_data_from_numpy(inputs[index])
        results[index] = client.infer("tiny", [given]).as_numpy("y")
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for x, y in zip(inputs, results):
        np.testing.assert_allclose(y, expected(tiny_model, x)[0], rtol=1e-5, atol=1e-6)
    stats = httpclient.InferenceServerClient(batching.url).get_inference_statistics("tiny")
    stats = stats["model_stats"][0]
    assert stats["inference_count"] == 8
    assert stats["execution_count"] < 8, stats["batch_stats"]
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 1


def test_cache_answers_repeats_and_metrics_count_it(batching):
    body = _infer_body(data=[9, 8, 7, 6])
    first = batching.post_json("/v2/models/tiny/infer", body)
    second = batching.post_json("/v2/models/tiny/infer", body)
    assert first[0] == second[0] == 200 and first[2]["outputs"] == second[2]["outputs"]
    text = batching.request("GET", "/metrics")[2].decode()
    hits = re.search(r'edgeinfer_cache_hits_total\{tier="memory"\} (\d+)', text)
    assert hits and int(hits.group(1)) >= 1, text


def test_served_defaults_fill_in_only_what_the_user_left_out(bundles):
    # ONNX Runtime models: two runs in flight on 4+ cores, each on half of them, two
    # single-threaded runs per core on 2-3 cores; pool threads not spinning between
    # runs; whatever the user gives wins.
    assert [default_instances("onnxruntime", c) for c in (1, 2, 3, 4, 8)] == [1, 4, 6, 2, 2]
    assert default_instances("openvino", 8) == 1
    cores = usable_cores()
    options, count = served_options(bundles["tiny"], None, None)
    if cores > 1:
        assert count == default_instances("onnxruntime", cores)
        assert options["backend_options"] == {"stop_spinning": True,
                                              "intra_op_threads": max(1, cores // count)}
    options, count = served_options(bundles["tiny"], {"device": "cpu", "backend_options": {
        "intra_op_threads": 3, "stop_spinning": False}}, 4)
    assert count == 4 and options["device"] == "cpu"
    assert options["backend_options"] == {"stop_spinning": False, "intra_op_threads": 3}
    options, count = served_options(bundles["tiny"], None, 1)
    assert count == 1 and options["backend_options"] == {"stop_spinning": True}
    # Dynamic batching on a batchable model: one run, stacked, on every core.
    options, count = served_options(bundles["tiny"], None, None, max_batch=8)
    assert count == 1 and options["backend_options"] == {"stop_spinning": True}


# -- backpressure, timeouts, shutdown ----------------------------------------------------------


def test_flood_beyond_the_queue_gets_503_and_the_server_lives(bundles):
    served = Served([bundles["tiny"]], "--max-batch", "64", "--max-delay-ms", "300",
                    "--max-queue", "4")
    try:
        body = json.dumps(_infer_body()).encode()
        statuses, retry = [], []
        rss_before = served.rss_kb()

        def call():
            status, head, _ = served.request("POST", "/v2/models/tiny/infer", body)
            statuses.append(status)
            retry.append(head.get("retry-after"))
        for _ in range(3):
            threads = [threading.Thread(target=call) for _ in range(40)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and 200 in statuses
        assert all(r == "1" for s, r in zip(statuses, retry) if s == 503)
        assert served.request("GET", "/v2/health/ready")[0] == 200
        assert served.rss_kb() - rss_before < 64 * 1024, "memory grew by more than 64 MiB"
        text = served.request("GET", "/metrics")[2].decode()
        assert 'edgeinfer_requests_total{endpoint="infer",code="503"}' in text
    finally:
        assert served.stop(), "".join(served.log)


def _trickle(port, head, pace_s=0.1, limit_s=20):
    """A slowloris: send ``head`` at once, then (unless ``head`` is None: a client that
    sends nothing) one byte every ``pace_s`` until the server answers or closes.
    Returns ``(seconds until the end, all it read)``."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(pace_s)
    start = time.time()
    received = b""
    try:
        if head:
            sock.sendall(head)
        while time.time() - start < limit_s:
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                if head is None:
                    continue
                try:
                    sock.sendall(b"a")
                except OSError:   # closed under us: read what came before
                    sock.settimeout(5)
                    chunk = sock.recv(4096)
                else:
                    continue
            if not chunk:
                break
            received += chunk
        return time.time() - start, received
    finally:
        sock.close()


def test_timeout_and_slow_clients(bundles):
    served = Served([bundles["tiny"]], "--max-batch", "64", "--max-delay-ms", "2000",
                    "--timeout-s", "0.2", "--client-timeout-s", "1")
    try:
        status, _, data = served.post_json("/v2/models/tiny/infer", _infer_body())
        assert status == 504 and "timeout" in data["error"]
        # Slow clients, all at once: one trickles its headers, one says nothing, one
        # trickles its body.  Each is answered 408 and closed; others are served meanwhile.
        slow = {
            "headers": b"POST /v2/models/tiny/infer HTTP/1.1\r\nX-Slow: ",
            "silent": None,
            "body": b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
                    b"100000\r\n\r\n{\"inputs\": ",
        }
        outcome = {}

        def run(name):
            outcome[name] = _trickle(served.port, slow[name])
        threads = [threading.Thread(target=run, args=(name,)) for name in slow]
        for thread in threads:
            thread.start()
        ready = [served.request("GET", "/v2/health/ready")[0] for _ in range(5)]
        for thread in threads:
            thread.join(30)
        assert ready == [200] * 5
        for name, (seconds, answer) in outcome.items():
            # Answered, then closed (the read loop ended on EOF, well before its 20 s).
            assert answer.startswith(b"HTTP/1.1 408 "), (name, answer)
            assert seconds < 15, (name, seconds)
            assert b"connection: close" in answer.lower(), (name, answer)
        assert b"client-timeout-s" in outcome["body"][1]
        text = served.request("GET", "/metrics")[2].decode()
        assert 'edgeinfer_requests_total{endpoint="headers",code="408"} 2' in text, text
        assert 'edgeinfer_requests_total{endpoint="infer",code="408"} 1' in text, text
    finally:
        assert served.stop(), "".join(served.log)


def test_graceful_shutdown_finishes_in_flight_requests(bundles, tiny_model):
    served = Served([bundles["tiny"]], "--max-batch", "64", "--max-delay-ms", "700")
    outcome = {}

    def call():
        outcome["answer"] = served.post_json("/v2/models/tiny/infer", _infer_body())
    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)   # the request is now waiting in the batcher
    assert served.stop(signal.SIGTERM), "".join(served.log)
    thread.join(10)
    status, _, data = outcome["answer"]
    assert status == 200, data
    y = expected(tiny_model, np.array([[1, 2, 3, 4]], np.float32))[0]
    np.testing.assert_allclose(np.array(data["outputs"][0]["data"]).reshape(1, 3), y, rtol=1e-5)


# -- the command and the device rules --------------------------------------------------------


def test_busy_port_is_one_line_exit_2(bundles):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        done = subprocess.run([sys.executable, "-m", "edgeinfer", "serve", str(bundles["tiny"]),
                               "--port", str(holder.getsockname()[1])], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    finally:
        holder.close()
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: Cannot listen on 127.0.0.1:")


def test_serve_without_the_extra_says_which_to_install(tiny_bundle):
    code = "\n".join([
        "import sys",
        "sys.modules['uvicorn'] = None",
        "sys.modules['starlette'] = None",
        "from edgeinfer.cli import main",
        "main(args=['serve', {!r}], prog_name='edgeinfer')".format(str(tiny_bundle)),
    ])
    done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install edgeinfer[serve]" in lines[0], done.stderr


# -- the request schema, fuzzed ----------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                     st.floats(allow_nan=False), st.text(max_size=4))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
_numbers = st.one_of(st.integers(-300, 300), st.floats(-1e6, 1e6), st.booleans())
_data = st.one_of(st.lists(_numbers, max_size=12), st.lists(st.lists(_numbers, max_size=5),
                                                            max_size=4), _json)
_tensor = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["x", "n", "w", ""]), _json),
    "shape": st.one_of(st.lists(st.integers(-2, 5), max_size=4), _json),
    "datatype": st.one_of(st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BF16", "fp32"]),
                          _json),
    "data": _data,
    "parameters": st.one_of(st.fixed_dictionaries({}, optional={
        "binary_data_size": st.one_of(st.integers(-4, 40), _json)}), _json),
})
_output = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["y", "z", "m", "q"]), _json),
    "parameters": st.one_of(st.fixed_dictionaries({}, optional={
        "binary_data": _json, "classification": _json}), _json)})
_request = st.one_of(_json, st.fixed_dictionaries({}, optional={
    "id": _json, "inputs": st.one_of(st.lists(_tensor, max_size=3), _json),
    "outputs": st.one_of(st.lists(_output, max_size=3), _json),
    "parameters": st.one_of(st.fixed_dictionaries({}, optional={
        "binary_data_output": _json}), _json)}))


@hypothesis.settings(max_examples=300, deadline=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(request=_request, model=st.sampled_from(["tiny", "ints", "digits"]),
                  tail=st.one_of(st.none(), st.binary(max_size=40)),
                  cut=st.one_of(st.none(), st.integers(-3, 5)))
def test_fuzzed_requests_never_get_a_500(server, request, model, tail, cut):
    body = json.dumps(request).encode()
    headers = {}
    if tail is not None:
        # Triton's binary layout, with a header length that may be off by a few bytes.
        headers["Inference-Header-Content-Length"] = str(len(body) + (cut or 0))
        body += tail
    status, _, data = server.request("POST", "/v2/models/{}/infer".format(model), body, headers)
    assert status in (200, 400), (status, data)
    answer = json.loads(data)
    assert ("outputs" in answer) if status == 200 else isinstance(answer["error"], str)
