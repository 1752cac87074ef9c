#!/usr/bin/env python3
"""Server benchmark (issue 8): ``edgeinfer serve`` under a real load generator on loopback.

Load comes from wrk (C, keep-alive connections, a Lua script posting one fixed
body; ``apt-get install wrk``), in its own process, so the client costs little
of the CPU the server needs.  Every comparison is measured in this one run, the
two sides alternating (A B A B) and averaged:

1. The issue's 512x512 MatMul+ReLU ONNX model (FP32 bundle, ONNX Runtime), JSON
   bodies, 8 connections: edgeinfer serve vs MLServer (its default settings, a
   custom runtime calling ONNX Runtime the same way; MLServer runs from its own
   virtualenv, ``--mlserver``); beside it, edgeinfer with Triton's binary tensor
   extension at 8 and 4 connections.
   With ``--perf-analyzer``, Triton's own load generator drives edgeinfer too
   (HTTP, binary tensors, concurrency 4), in the same rounds.
2. MobileNetV2 (scripts/build_bench_models.py), INT8 static, calibrated on
   natural images: the server with binary tensors at 4 connections vs an
   in-process ``session.run`` loop, with the server's defaults and with the
   other settings beside them; and at 16 connections without vs with dynamic
   batching.

Usage::

    python scripts/bench_serve.py --md docs/BENCHMARKS.md \\
        --mlserver /work/mlserver-venv/bin/mlserver \\
        --perf-analyzer <tritonclient-2.51.0.data>/data/bin/perf_analyzer \\
        --perf-analyzer-lib <nvidia-cuda-runtime-cu12>/nvidia/cuda_runtime/lib
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import edgeinfer  # noqa: E402
from bench_core import md_table, natural_images, write_section  # noqa: E402

TITLE = "Server (issue 8)"
# Beside the defaults (on 2 cores: four single-threaded runs in flight): two runs on
# half the cores each, one run on every core, and that with the pool threads
# spin-waiting after each run, which were the defaults before issue 8's tuning.
TWO = ("--instances", "2")
ONE = ("--instances", "1")
SPINNING = ("--instances", "1", "--backend-option", "stop_spinning=false")

WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("EI_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("EI_TYPE")
local h = os.getenv("EI_HEADER")
if h ~= nil and h ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = h
end
"""

MLSERVER_RUNTIME = r'''
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class OrtMatMul(MLModel):
    """ONNX Runtime behind MLServer: decode the input, run, encode the output."""

    async def load(self):
        self.sess = onnxruntime.InferenceSession(self.settings.parameters.uri,
                                                 providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload):
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self.sess.run(None, {"x": x})[0]
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output("y", y)])
'''


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with {}".format(proc.returncode))
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError("server not ready: " + url)


def start_edgeinfer(bundle, *options):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeinfer", "-q", "serve", bundle, "--port",
                             str(port)] + list(options), stdout=subprocess.DEVNULL)
    name = edgeinfer.load(bundle).name
    wait_ready("http://127.0.0.1:{}/v2/models/{}/ready".format(port, name), proc)
    return proc, "http://127.0.0.1:{}/v2/models/{}/infer".format(port, name)


def start_mlserver(mlserver, folder, onnx_path):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "runtime.py"), "w") as handle:
        handle.write(MLSERVER_RUNTIME)
    port = free_port()
    with open(os.path.join(folder, "settings.json"), "w") as handle:
        json.dump({"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
                   "debug": False}, handle)
    with open(os.path.join(folder, "model-settings.json"), "w") as handle:
        json.dump({"name": "matmul", "implementation": "runtime.OrtMatMul",
                   "parameters": {"uri": onnx_path}}, handle)
    log = open(os.path.join(folder, "mlserver.log"), "w")
    proc = subprocess.Popen([mlserver, "start", folder], cwd=folder, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready("http://127.0.0.1:{}/v2/models/matmul/ready".format(port), proc)
    return proc, "http://127.0.0.1:{}/v2/models/matmul/infer".format(port)


def stop(proc, group=False):
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_body(folder, name, header, tail=b""):
    """A request body file; ``(path, content type, Inference-Header-Content-Length or "")``."""
    head = json.dumps(header).encode()
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(head + tail)
    if tail:
        return path, "application/octet-stream", str(len(head))
    return path, "application/json", ""


def wrk(url, body, connections, seconds, script):
    path, content_type, header = body
    env = dict(os.environ, EI_BODY=path, EI_TYPE=content_type, EI_HEADER=header)
    done = subprocess.run(["wrk", "-t2", "-c{}".format(connections), "-d{}s".format(seconds),
                           "--latency", "-s", script, url], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=seconds + 60)
    text = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    return {"rps": rate, "non2xx": int(bad.group(1)) if bad else 0,
            "errors": errors.group(0) if errors else "", "p50_ms": _ms(p50), "p99_ms": _ms(p99)}


def _ms(match):
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def median_runs(runs):
    out = dict(runs[0])
    for key in ("rps", "p50_ms", "p99_ms"):
        out[key] = float(np.median([r[key] for r in runs]))
    out["non2xx"] = sum(r["non2xx"] for r in runs)
    out["each"] = [round(r["rps"]) for r in runs]
    return out


def matmul_bundle(work):
    """The 512x512 MatMul+ReLU FP32 bundle (model ``matmul``) and its seeded input."""
    onnx_path = os.path.join(work, "matmul512.onnx")
    matmul_model(onnx_path)
    bundle = os.path.join(work, "matmul512.eib")
    edgeinfer.convert(onnx_path, precision="fp32", output=bundle, overwrite=True,
                      name="matmul", measure_speed=False)
    return bundle, np.random.RandomState(1).standard_normal((1, 512)).astype(np.float32)


def matmul_model(path):
    import onnx
    from onnx import TensorProto, helper
    weights = np.random.RandomState(0).standard_normal((512, 512)).astype(np.float32) / 22.6
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "matmul512", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 512])],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, [512, 512],
                                        weights.ravel().tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def defaults_text():
    """What the server's defaults are on this machine, in words (see AUTO_INSTANCES)."""
    from edgeinfer.serve.repository import default_instances, usable_cores
    cores = usable_cores()
    runs = default_instances("onnxruntime", cores)
    if runs < 2:
        return "one run at a time"
    return ("{} runs in flight with {} ONNX Runtime thread(s) each, pool threads not "
            "spin-waiting between runs".format(runs, max(1, cores // runs)))


def paired(runs, baseline):
    """Median over rounds of ``runs[i]["rps"] / baseline[i]``."""
    return float(np.median([r["rps"] / b for r, b in zip(runs, baseline)]))


def perf_analyzer(command, lib, url, model, seconds, work):
    """Triton's perf_analyzer against ``url`` (HTTP, binary tensors, concurrency 4):
    the wrk-style result dict, or ``{"error": its last line}`` when it fails."""
    csv = os.path.join(work, "perf_analyzer.csv")
    env = dict(os.environ)
    if lib:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [lib, env.get(
            "LD_LIBRARY_PATH")]))
    # Windows of a third of a wrk run; stable when three agree within 30 % (the
    # shared 2-core host is noisy), at most 8 windows.
    done = subprocess.run(
        [command, "-m", model, "-u", url, "-i", "http", "--concurrency-range", "4",
         "--measurement-interval", str(int(seconds * 1000 / 3)), "-s", "30",
         "--max-trials", "8", "-f", csv], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True, timeout=seconds * 10 + 120)
    if done.returncode != 0 or not os.path.exists(csv):
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        return {"error": lines[-1] if lines else "exit {}".format(done.returncode)}
    with open(csv) as handle:
        header, values = [line.strip().split(",") for line in handle.readlines()[:2]]
    got = dict(zip(header, values))
    os.remove(csv)
    return {"rps": float(got["Inferences/Second"]), "non2xx": 0, "errors": "",
            "p50_ms": float(got["p50 latency"]) / 1000.0,
            "p99_ms": float(got["p99 latency"]) / 1000.0}


def perf_analyzer_version(command, lib):
    env = dict(os.environ, LD_LIBRARY_PATH=lib or os.environ.get("LD_LIBRARY_PATH", ""))
    try:
        done = subprocess.run([command, "--version"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    except OSError as exc:
        return "cannot start: {}".format(exc)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "exit {}".format(
        done.returncode)


def in_process_rate(session, feeds, seconds):
    for _ in range(20):
        session.run(feeds)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(feeds)
        count += 1
    return count / (time.perf_counter() - start)


def row(label, result, extra=""):
    return (label, "{:.0f}".format(result["rps"]), " / ".join(map(str, result["each"])),
            "{:.2f}".format(result["p50_ms"]), "{:.2f}".format(result["p99_ms"]),
            str(result["non2xx"]), extra)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--md", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    # Short runs, many rounds: the host is shared, and a ratio is taken within a round.
    parser.add_argument("--seconds", type=int, default=6, help="wrk duration per run")
    parser.add_argument("--rounds", type=int, default=5, help="A B rounds per comparison")
    parser.add_argument("--mlserver", default=shutil.which("mlserver"),
                        help="the mlserver command (its own virtualenv)")
    parser.add_argument("--perf-analyzer", metavar="PATH",
                        help="Triton's perf_analyzer binary (tritonclient 2.51.0 wheel, "
                             "data/bin): also drive the MatMul server with it")
    parser.add_argument("--perf-analyzer-lib", metavar="DIR",
                        help="folder with the libcudart.so.12 perf_analyzer loads (from the "
                             "nvidia-cuda-runtime-cu12 wheel)")
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    work = args.workdir or tempfile.mkdtemp(prefix="bench-serve-")
    os.makedirs(work, exist_ok=True)
    script = os.path.join(work, "post.lua")
    with open(script, "w") as handle:
        handle.write(WRK_SCRIPT)

    # -- 1. MatMul 512x512 + ReLU -----------------------------------------------------------
    bundle, x = matmul_bundle(work)
    single = edgeinfer.load(bundle)
    per_run_us = 1e6 / in_process_rate(single, {"x": x}, 2.0)
    single.close()
    tensor = {"name": "x", "shape": [1, 512], "datatype": "FP32"}
    json_body = write_body(work, "matmul.json", {"inputs": [dict(tensor, data=x.ravel().tolist())]})
    binary_body = write_body(work, "matmul.bin", {
        "inputs": [dict(tensor, parameters={"binary_data_size": x.nbytes})],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}, x.tobytes())
    ei_proc, ei_url = start_edgeinfer(bundle)
    ml_proc = ml_url = None
    try:
        if args.mlserver:
            ml_proc, ml_url = start_mlserver(args.mlserver, os.path.join(work, "mlserver"),
                                             os.path.join(work, "matmul512.onnx"))
        # Warm both up, then alternate.
        wrk(ei_url, json_body, 8, 2, script)
        if ml_url:
            wrk(ml_url, json_body, 8, 2, script)
        ei_json, ml_json, ei_bin8, ei_bin4, pa_runs, pa_error = [], [], [], [], [], None
        host_port = ei_url.split("/")[2]
        for _ in range(args.rounds):
            ei_json.append(wrk(ei_url, json_body, 8, args.seconds, script))
            if ml_url:
                ml_json.append(wrk(ml_url, json_body, 8, args.seconds, script))
            ei_bin8.append(wrk(ei_url, binary_body, 8, args.seconds, script))
            ei_bin4.append(wrk(ei_url, binary_body, 4, args.seconds, script))
            if args.perf_analyzer and pa_error is None:
                got = perf_analyzer(args.perf_analyzer, args.perf_analyzer_lib, host_port,
                                    "matmul", args.seconds, work)
                if "error" in got:
                    pa_error = got["error"]
                else:
                    pa_runs.append(got)
            print("matmul round", ei_json[-1]["rps"], ml_json[-1]["rps"] if ml_json else None,
                  ei_bin8[-1]["rps"], ei_bin4[-1]["rps"], pa_runs[-1]["rps"] if pa_runs else
                  pa_error, flush=True)
    finally:
        stop(ei_proc)
        if ml_proc is not None:
            stop(ml_proc, group=True)
    ml_ratio = paired(ei_json, [r["rps"] for r in ml_json]) if ml_json else None
    ei_json, ei_bin8, ei_bin4 = median_runs(ei_json), median_runs(ei_bin8), median_runs(ei_bin4)
    rows1 = [("server", "req/s (median)", "each round", "p50 ms", "p99 ms", "non-2xx",
              "vs MLServer")]
    if ml_json:
        ml_json = median_runs(ml_json)
        rows1.append(row("MLServer {}, JSON, 8 conns".format(_mlserver_version(args.mlserver)),
                         ml_json, "1.00x"))
    rows1.append(row("edgeinfer serve, JSON, 8 conns", ei_json,
                     "{:.2f}x".format(ml_ratio) if ml_ratio else "-"))
    rows1.append(row("edgeinfer serve, binary tensors, 8 conns", ei_bin8, "-"))
    rows1.append(row("edgeinfer serve, binary tensors, 4 conns", ei_bin4, "-"))
    if pa_runs:
        rows1.append(row("edgeinfer serve, binary tensors, Triton perf_analyzer, concurrency 4",
                         median_runs(pa_runs), "-"))

    # -- 2. MobileNetV2 INT8 --------------------------------------------------------------
    import onnx
    from build_bench_models import build
    mobile_src = os.path.join(work, "mobilenetv2.onnx")
    onnx.save(build("mobilenetv2"), mobile_src)
    images = natural_images(os.path.join(work, "images"), 64)
    mobile = os.path.join(work, "mobilenetv2-int8.eib")
    edgeinfer.convert(mobile_src, precision="int8", method="static", calibration=images,
                      calibration_size=64, output=mobile, overwrite=True, name="mobilenetv2",
                      measure_speed=False)
    image = np.random.RandomState(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    mobile_body = write_body(work, "mobile.bin", {
        "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "parameters": {"binary_data_size": image.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}, image.tobytes())
    session = edgeinfer.load(mobile)
    loop_rates, c4, c4s, c4t, c42, c16, c16b = [], [], [], [], [], [], []
    plain, plain_url = start_edgeinfer(mobile)
    spinning, spinning_url = start_edgeinfer(mobile, *SPINNING)
    tuned, tuned_url = start_edgeinfer(mobile, *ONE)
    two, two_url = start_edgeinfer(mobile, *TWO)
    batched, batched_url = start_edgeinfer(mobile, "--max-batch", "16", "--max-delay-ms", "2")
    try:
        wrk(plain_url, mobile_body, 4, 2, script)
        wrk(spinning_url, mobile_body, 4, 2, script)
        wrk(tuned_url, mobile_body, 4, 2, script)
        wrk(two_url, mobile_body, 4, 2, script)
        wrk(batched_url, mobile_body, 16, 2, script)
        for _ in range(args.rounds):
            loop_rates.append(in_process_rate(session, {"input": image}, args.seconds))
            c4.append(wrk(plain_url, mobile_body, 4, args.seconds, script))
            c4s.append(wrk(spinning_url, mobile_body, 4, args.seconds, script))
            c4t.append(wrk(tuned_url, mobile_body, 4, args.seconds, script))
            c42.append(wrk(two_url, mobile_body, 4, args.seconds, script))
            c16.append(wrk(plain_url, mobile_body, 16, args.seconds, script))
            c16b.append(wrk(batched_url, mobile_body, 16, args.seconds, script))
            print("mobilenet round", loop_rates[-1], c4[-1]["rps"], c4s[-1]["rps"],
                  c4t[-1]["rps"], c16[-1]["rps"], c16b[-1]["rps"], flush=True)
    finally:
        for proc in (plain, spinning, tuned, two, batched):
            stop(proc)
        session.close()
    loop_rate = float(np.median(loop_rates))
    # Each ratio is the median of the rounds' own ratios: the two sides of a round ran
    # back to back, so a noisy neighbour moves both.
    r4, r4s, r4t, r42 = (paired(runs, loop_rates) for runs in (c4, c4s, c4t, c42))
    rb = paired(c16b, [r["rps"] for r in c16])
    c4, c4s, c4t, c42 = median_runs(c4), median_runs(c4s), median_runs(c4t), median_runs(c42)
    c16, c16b = median_runs(c16), median_runs(c16b)
    rows2 = [("path", "inferences/s (median)", "each round", "p50 ms", "p99 ms", "non-2xx",
              "ratio (median of rounds)")]
    rows2.append(("in-process `session.run` loop (1 thread)", "{:.1f}".format(loop_rate),
                  " / ".join("{:.1f}".format(r) for r in loop_rates), "{:.2f}".format(
                      1000 / loop_rate), "-", "-", "1.00x"))
    rows2.append(row("edgeinfer serve, binary, 4 conns, defaults", c4,
                     "**{:.2f}x** vs in-process".format(r4)))
    rows2.append(row("edgeinfer serve, binary, 4 conns, `{}`".format(" ".join(TWO)), c42,
                     "{:.2f}x vs in-process".format(r42)))
    rows2.append(row("edgeinfer serve, binary, 4 conns, `{}`".format(" ".join(ONE)), c4t,
                     "{:.2f}x vs in-process".format(r4t)))
    rows2.append(row("edgeinfer serve, binary, 4 conns, `{}` (the old defaults)".format(
        " ".join(SPINNING)), c4s, "{:.2f}x vs in-process".format(r4s)))
    rows2.append(row("edgeinfer serve, binary, 16 conns, no batching", c16, "1.00x"))
    rows2.append(row("edgeinfer serve, binary, 16 conns, --max-batch 16 --max-delay-ms 2", c16b,
                     "{:.2f}x vs no batching".format(rb)))

    import onnxruntime
    command = "python scripts/bench_serve.py --md docs/BENCHMARKS.md --mlserver <venv>/bin/mlserver"
    if args.perf_analyzer:
        command += (" --perf-analyzer <wheel>/data/bin/perf_analyzer"
                    " --perf-analyzer-lib <cudart dir>")
    if pa_runs:
        pa_text = ("Triton's perf_analyzer ({}, from the tritonclient 2.51.0 wheel; HTTP, binary "
                   "tensors, concurrency 4, its own random inputs) drives edgeinfer through "
                   "the `config` and `stats` extensions: **{:.0f} infer/s**, beside wrk's {:.0f} "
                   "req/s at 4 connections.".format(
                       perf_analyzer_version(args.perf_analyzer, args.perf_analyzer_lib),
                       median_runs(pa_runs)["rps"], ei_bin4["rps"]))
    elif pa_error:
        pa_text = "Triton's perf_analyzer failed: `{}`.".format(pa_error)
    else:
        pa_text = ("Triton's perf_analyzer was not run (no --perf-analyzer); wrk posts the same "
                   "binary-tensor bodies tritonclient sends.")
    lines = [
        "## " + TITLE, "",
        "Produced by `{}` on {} ({} cores), Python {}, onnxruntime {}, {}.".format(
            command, _cpu(), os.cpu_count(), platform.python_version(),
            onnxruntime.__version__, time.strftime("%Y-%m-%d")),
        "",
        "Load generator: wrk 4.x (C, `-t2`, keep-alive connections, one fixed body per run "
        "via a Lua script), on the same machine over loopback, so client and server share "
        "the {} cores. {} s per run; the sides alternate (A B A B, {} rounds) and the "
        "table gives the median, with each round's figure beside it; a ratio is the median "
        "of the rounds' own ratios.".format(os.cpu_count(), args.seconds, args.rounds),
        "",
        "### 512x512 MatMul+ReLU (FP32, ONNX Runtime; ~{:.0f} µs per in-process run)".format(
            per_run_us),
        "",
        md_table(rows1), "",
        ("edgeinfer serve / MLServer (JSON, 8 connections, same run): **{:.2f}x**. MLServer "
         "runs with its default settings (from its own virtualenv) and a runtime that calls "
         "ONNX Runtime on the decoded input, as edgeinfer's session does; it has no "
         "binary-tensor extension, so JSON is compared with JSON.".format(ml_ratio)
         if ml_ratio else "MLServer was not run (no --mlserver)."),
        pa_text,
        "",
        "### MobileNetV2 INT8 static (calibrated on 64 natural images), batch-1 requests",
        "",
        md_table(rows2), "",
        "Server at 4 connections / in-process loop: **{:.2f}x** with the defaults (on {} "
        "cores: {}), {:.2f}x with `{}` (two runs, each on half the cores), {:.2f}x with "
        "`{}` (one run at a time on every core: each operator "
        "waits for its slowest thread, and a core taken by the event loop or the client "
        "stalls the run), {:.2f}x with `{}` (ONNX Runtime's pool threads also spin-wait "
        "after each run, taking the cores the next request needs). Dynamic batching at 16 "
        "connections (one stacked run at a time on every core, the default when batching): "
        "**{:.2f}x** the throughput without it. Server requests carry binary "
        "tensors (a 602 KB body each, read into one buffer the input tensor is a view of); "
        "the in-process loop is one thread calling `session.run` with ONNX Runtime's "
        "default threads.".format(
            r4, os.cpu_count(), defaults_text(), r42, " ".join(TWO), r4t, " ".join(ONE), r4s, " ".join(SPINNING),
            rb),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(args.md, TITLE, text)


def _mlserver_version(command):
    try:
        done = subprocess.run([command, "--version"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
        return done.stdout.strip().split()[-1]
    except Exception:
        return ""


def _cpu():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
