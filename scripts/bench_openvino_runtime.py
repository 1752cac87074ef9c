#!/usr/bin/env python3
"""OpenVINO runtime benchmark: per-call cost, MobileNetV2 vs hand-tuned, throughput, loads.

Everything is measured in one run on this machine (shared and noisy), as medians
of interleaved calls:

1. Per-call cost at batch 1 on two small models: the minimal one (one Add on a
   1x16 input, built here) and the tiny benchmark model (Conv 3->8 on 8x8, pool,
   Gemm): OpenVINO's default ``InferRequest.infer({name: x})`` (copies inputs), a
   hand-tuned request (input tensor shared once, ``request.infer()`` loop), and
   ``edgeinfer.Session.run`` given the same array each call and a fresh array each
   call.  All four use requests of one compiled model (one thread pool), called
   round-robin; the overhead is the median of per-round differences against the
   hand-tuned loop.
2. MobileNetV2 (FP32 IR) at batch 1: an edgeinfer Session vs a hand-tuned
   ``compiled_model`` loop compiled separately with the same hint, interleaved
   with a pause before each call so one model's spinning worker threads do not
   steal a core from the other; ratio of medians.
3. Throughput of MobileNetV2 FP32 (inferences/s over a list of batch-1 inputs):
   ``Session.run_many`` under the THROUGHPUT hint at concurrency 1, 2 and 4
   (OpenVINO's AsyncInferQueue) against serialized Python loops of
   ``Session.run`` under the THROUGHPUT and the LATENCY hint, interleaved.
4. Load time of a bundle in fresh processes: the first load (empty OpenVINO model
   cache: extract the IR, compile, write the blob) against the second (check the
   extracted IR, import the blob), and a load with the cache off; ``import
   openvino`` and edgeinfer's backend module are imported before the clock starts.

The models come from scripts/build_bench_models.py (the minimal one from
:func:`minimal_model` here) and are converted to IR here (``openvino.convert_model``
+ ``save_model``, FP32 weights), then bundled.

Usage::

    python scripts/bench_openvino_runtime.py --md docs/BENCHMARKS.md
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import onnx  # noqa: E402
import openvino as ov  # noqa: E402

import edgeinfer  # noqa: E402
from bench_core import interleaved, md_table, write_section  # noqa: E402
from build_bench_models import build  # noqa: E402
from edgeinfer.bundle import FORMAT, FORMAT_VERSION, Bundle  # noqa: E402
from edgeinfer.runtime.backends import LocalFiles  # noqa: E402
from edgeinfer.runtime.backends.openvino import record_specs  # noqa: E402
from edgeinfer.runtime.backends.ort import OrtBackend  # noqa: E402

TITLE = "OpenVINO runtime (issue 3)"
HINT = {"PERFORMANCE_HINT": "LATENCY"}


MINIMAL = "add16"


def minimal_model():
    """The smallest model worth timing: y = x + c on a 1x16 float input.

        x[1,16] -> Add(c[1,16]) -> y[1,16]

    OpenVINO's own work per call is then almost nothing, so what a call costs is
    the runtime's fixed overhead and the caller's (issue 3: ~14 µs hand-tuned).
    """
    from onnx import TensorProto, helper, numpy_helper
    c = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(1, 16), "c")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])], MINIMAL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_bundle(arch, workdir):
    """Build ``arch``, convert it to FP32 IR and bundle it; return (bundle path, xml path)."""
    folder = os.path.join(workdir, arch)
    os.makedirs(folder, exist_ok=True)
    source = os.path.join(folder, arch + ".onnx")
    if not os.path.exists(source):
        onnx.save(minimal_model() if arch == MINIMAL else build(arch), source)
    specs = OrtBackend().load(LocalFiles({"model.onnx": source}, "model.onnx"))
    model = ov.convert_model(source)
    record_specs(model, specs.inputs, specs.outputs)
    xml = os.path.join(folder, "model.xml")
    ov.save_model(model, xml, compress_to_fp16=False)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": arch, "model": "model.xml",
        "target": {"backend": "openvino", "profile": None, "min_backend_version": "2023.0"},
        "precision": "fp32", "method": "none",
        "inputs": [s.to_dict() for s in specs.inputs],
        "outputs": [s.to_dict() for s in specs.outputs],
        "versions": {"edgeinfer": edgeinfer.__version__, "openvino": ov.__version__},
    }
    path = os.path.join(workdir, arch + "-openvino-fp32.eib")
    Bundle.write(path, manifest, {"model.xml": xml, "model.bin": xml[:-4] + ".bin"})
    return path, xml


def _input(session, batch=1, seed=0):
    spec = session.inputs[0]
    shape = spec.concrete_shape(batch=batch)
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


# -- 1. per-call overhead --------------------------------------------------------------------

TUNED = "hand-tuned: shared input tensor, `request.infer()`"
REFILLED = "hand-tuned, new data copied into the shared tensor each call"
FRESH = "edgeinfer `Session.run`, a new array each call"


def overhead_rows(arch, workdir, calls):
    """Per-call cost of one model: default infer, hand-tuned, edgeinfer (same/fresh x)."""
    path, _ = make_bundle(arch, workdir)
    session = edgeinfer.load(path, backend_options={"cache_dir": None})
    compiled = session._runner.compiled_model
    name = session.inputs[0].name
    x = _input(session)
    fresh = [_input(session, seed=i) for i in range(64)]
    turn = [0]

    default = compiled.create_infer_request()
    tuned = compiled.create_infer_request()
    tuned.set_input_tensor(0, ov.Tensor(x, shared_memory=True))
    # The loop a user would write for new data: the pre-allocated shared tensor is
    # refilled each call (the floor above never writes its input).
    refilled = compiled.create_infer_request()
    buffer = x.copy()
    refilled.set_input_tensor(0, ov.Tensor(buffer, shared_memory=True))

    def next_input():
        turn[0] = (turn[0] + 1) % len(fresh)
        return fresh[turn[0]]

    def refill_run(feeds):
        buffer[...] = next_input()
        return refilled.infer()

    runs = {
        "OpenVINO default `infer({name: x})` (copies inputs)": lambda f: default.infer(f),
        TUNED: lambda f: tuned.infer(),
        REFILLED: refill_run,
        "edgeinfer `Session.run`, same array each call": session.run,
        FRESH: lambda f: session.run({name: next_input()}),
    }
    medians, samples = interleaved(runs, {name: x}, calls, warmup=300)
    alone = tight_loops(runs, {name: x}, calls)
    base = np.array(samples[TUNED])
    rows, results = [], {}
    for label, values in samples.items():
        diff = float(np.median(np.array(values) - base))
        rows.append((arch, label, calls, "{:.1f} µs".format(1e6 * medians[label]),
                     "-" if label == TUNED else "{:+.1f} µs".format(1e6 * diff),
                     "{:.1f} µs".format(1e6 * alone[label])))
        results[label] = (medians[label], diff, alone[label])
        print(rows[-1], flush=True)
    session.close()
    return rows, results


def tight_loops(runs, feeds, calls, block=100):
    """Seconds per call of each callable called back to back, in loops of ``block`` calls.

    The loops take turns (A's loop, B's loop, ...) and each path's result is the median
    over its loops, so a burst of other work on this shared host spoils a few loops of
    every path rather than all of one.
    """
    per_call = dict((label, []) for label in runs)
    for _ in range(max(1, calls // block)):
        for label, run in runs.items():
            begin = time.perf_counter()
            for _ in range(block):
                run(feeds)
            per_call[label].append((time.perf_counter() - begin) / block)
    return dict((label, float(np.median(v))) for label, v in per_call.items())


def section_overhead(workdir, calls, archs=(MINIMAL, "tiny")):
    """Per-call cost table for ``archs``; returns (markdown, {arch: {label: (p50, diff)}})."""
    rows = [("model", "path", "calls", "p50 per call, interleaved", "over hand-tuned (median "
             "of per-round diffs)", "per call alone (tight loop)")]
    results = {}
    for arch in archs:
        arch_rows, results[arch] = overhead_rows(arch, workdir, calls)
        rows += arch_rows
    return md_table(rows), results


# -- 2. MobileNetV2 vs a hand-tuned compiled_model loop --------------------------------------

def section_mobilenet(workdir, rounds, pause):
    path, xml = make_bundle("mobilenetv2", workdir)
    session = edgeinfer.load(path, backend_options={"cache_dir": None})
    x = _input(session)
    compiled = ov.Core().compile_model(xml, "CPU", HINT)
    request = compiled.create_infer_request()
    request.set_input_tensor(0, ov.Tensor(x, shared_memory=True))
    # request.infer() returns copies of the outputs, as Session.run does: the same work.
    runs = {"edgeinfer Session.run": session.run,
            "hand-tuned compiled_model loop": lambda f: request.infer()}
    got = session.run({session.inputs[0].name: x})[session.outputs[0].name]
    diff = float(np.abs(got - request.infer()[0]).max())
    medians, _ = interleaved(runs, {session.inputs[0].name: x}, rounds, warmup=10, pause=pause)
    ratio = medians["edgeinfer Session.run"] / medians["hand-tuned compiled_model loop"]
    rows = [("model", "path", "rounds", "p50 ms", "ratio vs hand-tuned")]
    for label, value in medians.items():
        rows.append(("mobilenetv2 FP32, batch 1", label, rounds, "{:.3f}".format(1e3 * value),
                     "{:.3f}x".format(value / medians["hand-tuned compiled_model loop"])))
        print(rows[-1], flush=True)
    session.close()
    return md_table(rows), ratio, diff


# -- 3. throughput: run_many over an AsyncInferQueue vs a loop of run() ---------------------

def section_throughput(workdir, images, rounds, pause):
    """Inferences/s of MobileNetV2 FP32: run_many (THROUGHPUT hint) vs loops of run()."""
    path, _ = make_bundle("mobilenetv2", workdir)
    tput = edgeinfer.load(path, backend_options={"cache_dir": None,
                                                 "performance_hint": "THROUGHPUT"})
    lat = edgeinfer.load(path, backend_options={"cache_dir": None})
    feeds = [{tput.inputs[0].name: _input(tput, seed=i)} for i in range(images)]
    loop_tput = "`run()` loop, THROUGHPUT hint"
    runs = {
        "`run()` loop, LATENCY hint": lambda fs: [lat.run(f) for f in fs],
        loop_tput: lambda fs: [tput.run(f) for f in fs],
        "`run_many`, THROUGHPUT hint, concurrency 1": lambda fs: tput.run_many(fs, concurrency=1),
        "`run_many`, THROUGHPUT hint, concurrency 2": lambda fs: tput.run_many(fs, concurrency=2),
        "`run_many`, THROUGHPUT hint, concurrency 4": lambda fs: tput.run_many(fs, concurrency=4),
    }
    out = tput.outputs[0].name
    many = tput.run_many(feeds, concurrency=4)
    diff = max(float(np.abs(m[out] - lat.run(f)[out]).max()) for m, f in zip(many, feeds))
    medians, samples = interleaved(runs, feeds, rounds, warmup=1, pause=pause)
    base = np.array(samples[loop_tput])
    rows = [("path", "rounds x inputs", "inferences/s (p50)", "ms per input",
             "vs `run()` loop, THROUGHPUT (paired)", "vs `run()` loop, LATENCY (paired)")]
    lat_base = np.array(samples["`run()` loop, LATENCY hint"])
    ratios = {}
    for label, values in samples.items():
        values = np.array(values)
        # Throughput ratio = time ratio inverted, paired round by round.
        ratios[label] = (float(np.median(base / values)), float(np.median(lat_base / values)))
        rows.append((label, "{} x {}".format(rounds, images),
                     "{:.1f}".format(images / medians[label]),
                     "{:.2f}".format(1e3 * medians[label] / images),
                     "{:.2f}x".format(ratios[label][0]), "{:.2f}x".format(ratios[label][1])))
        print(rows[-1], flush=True)
    info = {"optimal": tput._runner.optimal_requests,
            "streams": tput._runner.compiled_model.get_property("NUM_STREAMS"),
            "threads": tput._runner.compiled_model.get_property("INFERENCE_NUM_THREADS"),
            "diff": diff}
    tput.close()
    lat.close()
    return md_table(rows), ratios, info


# -- 4. first vs second load -----------------------------------------------------------------

LOAD_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import openvino
t1 = time.perf_counter()
import edgeinfer
import edgeinfer.runtime.backends.openvino  # module import is not load work
options = None if sys.argv[2] == "cache" else {"cache_dir": None}
t2 = time.perf_counter()
session = edgeinfer.load(sys.argv[1], backend_options=options)
t3 = time.perf_counter()
print(json.dumps({"import_openvino_s": t1 - t0, "load_s": t3 - t2}))
"""


def _child_load(path, cache_root, mode):
    env = dict(os.environ, EDGEINFER_CACHE_DIR=cache_root)
    done = subprocess.run([sys.executable, "-c", LOAD_CHILD, path, mode], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def section_loads(workdir, archs, repeats):
    rows = [("model", "IR size", "first load (empty cache) s", "second load (cached) s",
             "second / first", "load, cache off s", "import openvino s")]
    ratios = {}
    for arch in archs:
        path, xml = make_bundle(arch, workdir)
        size = os.path.getsize(xml[:-4] + ".bin") + os.path.getsize(xml)
        firsts, seconds, offs, imports = [], [], [], []
        for _ in range(repeats):
            cache = tempfile.mkdtemp(prefix="ov-cache-", dir=workdir)
            try:
                first = _child_load(path, cache, "cache")
                second = _child_load(path, cache, "cache")
                off = _child_load(path, cache, "off")
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            firsts.append(first["load_s"])
            seconds.append(second["load_s"])
            offs.append(off["load_s"])
            imports += [first["import_openvino_s"], second["import_openvino_s"]]
        first, second = float(np.median(firsts)), float(np.median(seconds))
        ratios[arch] = second / first
        rows.append((arch, "{:.1f} MB".format(size / 1e6), "{:.3f}".format(first),
                     "{:.3f}".format(second), "{:.2f}x".format(second / first),
                     "{:.3f}".format(float(np.median(offs))),
                     "{:.3f}".format(float(np.median(imports)))))
        print(rows[-1], flush=True)
    return md_table(rows), ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--md", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "bench_openvino_runtime"))
    parser.add_argument("--calls", type=int, default=5000, help="rounds for the tiny model")
    parser.add_argument("--rounds", type=int, default=150, help="rounds for MobileNetV2")
    parser.add_argument("--pause", type=float, default=0.06,
                        help="seconds before each MobileNetV2 call (idle worker threads)")
    parser.add_argument("--images", type=int, default=16,
                        help="inputs per throughput measurement")
    parser.add_argument("--tput-rounds", type=int, default=15, help="rounds for throughput")
    parser.add_argument("--load-archs", default="mobilenetv2,resnet50")
    parser.add_argument("--load-repeats", type=int, default=3)
    parser.add_argument("--sections", default="overhead,mobilenet,throughput,loads")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    sections = args.sections.split(",")
    command = "python scripts/bench_openvino_runtime.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    cpu = edgeinfer.profiles.cpu_features()
    parts = ["## " + TITLE, "",
             "Produced by `{}` on {} ({} cores; AVX2 {}, VNNI {}), openvino {}, Python {}, "
             "{}.".format(command.strip(), cpu["model"], cpu["cores"], cpu["avx2"], cpu["vnni"],
                          ov.__version__.split("-")[0], platform.python_version(),
                          time.strftime("%Y-%m-%d")), ""]
    if "overhead" in sections:
        table, results = section_overhead(args.work, args.calls)
        minimal_us = 1e6 * max(results[MINIMAL][FRESH][0], results[MINIMAL][FRESH][2])
        parts += ["### Per-call cost on small models (batch 1, LATENCY hint, device CPU)", "",
                  "`{}`: one Add on a 1x16 input, about the least OpenVINO can be asked to do "
                  "(the issue's tiny model); `tiny`: the benchmark model (Conv 3->8 on 8x8, "
                  "pool, Gemm). Per model, five paths over four requests of one compiled "
                  "model, called round-robin for {} rounds. The hand-tuned loop is the floor: "
                  "it returns copies of the outputs, as edgeinfer does, but never writes its "
                  "input; the refilled one copies new data in first, as a loop over real "
                  "inputs must. edgeinfer's path includes the Session's input checks, copies "
                  "small inputs (<= 64 KiB) into a tensor its request already shares, shares "
                  "larger ones (an array passed again is not re-bound), and has OpenVINO copy "
                  "the outputs so the caller owns them. Interleaved, each call follows one on "
                  "another request and pays for that, most of all right after the hand-tuned "
                  "row; the last column times each path alone: {} calls in loops of 100 "
                  "back-to-back calls, the paths' loops taking turns, the median "
                  "loop.".format(MINIMAL, args.calls, args.calls), "", table, "",
                  "Issue bar, edgeinfer <= 30 µs per call on a tiny model: {:.1f} µs on `{}` "
                  "(the worse of interleaved and alone; {}). On `tiny` even the hand-tuned "
                  "loop takes {:.1f} µs alone: the model's own work, not edgeinfer's, is above "
                  "the bar there.".format(
                      minimal_us, MINIMAL, "met" if minimal_us <= 30 else "NOT met",
                      1e6 * results["tiny"][TUNED][2]), ""]
    if "mobilenet" in sections:
        table, ratio, diff = section_mobilenet(args.work, args.rounds, args.pause)
        parts += ["### MobileNetV2 FP32: edgeinfer vs a hand-tuned compiled_model loop", "",
                  "Two compiled models (same IR, LATENCY hint), alternated with a {:.0f} ms "
                  "pause before each call; medians of {} rounds. Max |difference| of the "
                  "logits: {:.1e}.".format(1e3 * args.pause, args.rounds, diff), "", table, ""]
    if "throughput" in sections:
        table, ratios, info = section_throughput(args.work, args.images, args.tput_rounds,
                                                 args.pause)
        parts += ["### Throughput: `Session.run_many` (AsyncInferQueue) vs a loop of `run()`",
                  "",
                  "MobileNetV2 FP32, {} batch-1 inputs per measurement, {} interleaved rounds "
                  "with a {:.0f} ms pause before each; paired ratios are medians over rounds of "
                  "the loop's time / this path's time (higher is faster). Under the THROUGHPUT "
                  "hint OpenVINO made {} streams of {} threads in all and reports {} as the "
                  "optimal number of requests (`run_many`'s default concurrency). Max "
                  "|difference| of the logits, `run_many` vs `run()`: {:.1e}.".format(
                      args.images, args.tput_rounds, 1e3 * args.pause, info["streams"],
                      info["threads"], info["optimal"], info["diff"]), "", table, ""]
        many = ["`run_many`, THROUGHPUT hint, concurrency {}".format(c) for c in (2, 4)]
        parts += ["`run_many` at concurrency 2 / 4 gives {:.2f}x / {:.2f}x the throughput of a "
                  "`run()` loop under the same THROUGHPUT hint, and {:.2f}x / {:.2f}x that of a "
                  "loop under the LATENCY hint: on {} cores one LATENCY-hint inference already "
                  "keeps every core busy, so here the streams can only match it; they are for "
                  "hosts with more cores than one inference uses well, and GPU/NPU (not "
                  "measured here).".format(
                      ratios[many[0]][0], ratios[many[1]][0], ratios[many[0]][1],
                      ratios[many[1]][1], cpu["cores"]), ""]
    if "loads" in sections:
        archs = args.load_archs.split(",")
        table, _ = section_loads(args.work, archs, args.load_repeats)
        parts += ["### Load time: first vs second load with the model cache", "",
                  "`edgeinfer.load()` of an FP32 IR bundle, each in a fresh process (median of "
                  "{} fresh caches). First: verify the bundle, extract the IR into the cache, "
                  "compile, write OpenVINO's blob. Second: verify the bundle (sha256), check the "
                  "extracted IR against the stat stamp taken when it was hashed, import the "
                  "blob. Cache off: read the IR from the bundle into "
                  "memory and compile. Imports (`openvino`, edgeinfer's backend module; Python "
                  "recompiles sources here, PYTHONDONTWRITEBYTECODE is set) are outside the "
                  "timed part.".format(
                      args.load_repeats), "", table, ""]
    text = "\n".join(parts)
    print(text)
    write_section(args.md, TITLE, text)


if __name__ == "__main__":
    main()
