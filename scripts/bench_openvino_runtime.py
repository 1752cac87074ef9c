#!/usr/bin/env python3
"""OpenVINO runtime benchmark: per-call overhead, MobileNetV2 vs a hand-tuned loop, cached loads.

Everything is measured in one run on this machine (shared and noisy), as medians
of interleaved calls:

1. Per-call cost on the tiny benchmark model (Conv 3->8 on 8x8, pool, Gemm) at
   batch 1: OpenVINO's default ``InferRequest.infer({name: x})`` (copies inputs),
   a hand-tuned request (input tensor shared once, ``request.infer()`` loop), and
   ``edgeinfer.Session.run`` given the same array each call and a fresh array each
   call.  All four use requests of one compiled model (one thread pool), called
   round-robin; the overhead is the median of per-round differences against the
   hand-tuned loop.
2. MobileNetV2 (FP32 IR) at batch 1: an edgeinfer Session vs a hand-tuned
   ``compiled_model`` loop compiled separately with the same hint, interleaved
   with a pause before each call so one model's spinning worker threads do not
   steal a core from the other; ratio of medians.
3. Load time of a bundle in fresh processes: the first load (empty OpenVINO model
   cache: extract the IR, compile, write the blob) against the second (check the
   extracted IR, import the blob), and a load with the cache off; ``import
   openvino`` and edgeinfer's backend module are imported before the clock starts.

The models come from scripts/build_bench_models.py and are converted to IR here
(``openvino.convert_model`` + ``save_model``, FP32 weights), then bundled.

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


def make_bundle(arch, workdir):
    """Build ``arch``, convert it to FP32 IR and bundle it; return (bundle path, xml path)."""
    folder = os.path.join(workdir, arch)
    os.makedirs(folder, exist_ok=True)
    source = os.path.join(folder, arch + ".onnx")
    if not os.path.exists(source):
        onnx.save(build(arch), source)
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

def section_overhead(workdir, calls):
    """Per-call cost on the tiny model: default infer, hand-tuned, edgeinfer (same/fresh x)."""
    path, _ = make_bundle("tiny", workdir)
    session = edgeinfer.load(path, backend_options={"cache_dir": None})
    compiled = session._runner.compiled_model
    name = session.inputs[0].name
    x = _input(session)
    fresh = [_input(session, seed=i) for i in range(64)]
    turn = [0]

    default = compiled.create_infer_request()
    tuned = compiled.create_infer_request()
    tuned.set_input_tensor(0, ov.Tensor(x, shared_memory=True))

    def fresh_run(feeds):
        turn[0] = (turn[0] + 1) % len(fresh)
        return session.run({name: fresh[turn[0]]})

    runs = {
        "OpenVINO default `infer({name: x})` (copies inputs)": lambda f: default.infer(f),
        "hand-tuned: shared input tensor, `request.infer()`": lambda f: tuned.infer(),
        "edgeinfer `Session.run`, same array each call": session.run,
        "edgeinfer `Session.run`, a new array each call": fresh_run,
    }
    medians, samples = interleaved(runs, {name: x}, calls, warmup=300)
    tuned_label = "hand-tuned: shared input tensor, `request.infer()`"
    base = np.array(samples[tuned_label])
    rows = [("path", "calls", "p50 per call", "over hand-tuned (median of per-round diffs)")]
    results = {}
    for label, values in samples.items():
        diff = float(np.median(np.array(values) - base))
        rows.append((label, calls, "{:.1f} µs".format(1e6 * medians[label]),
                     "-" if label == tuned_label else "{:+.1f} µs".format(1e6 * diff)))
        results[label] = (medians[label], diff)
        print(rows[-1], flush=True)
    session.close()
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


# -- 3. first vs second load -----------------------------------------------------------------

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
    parser.add_argument("--load-archs", default="mobilenetv2,resnet50")
    parser.add_argument("--load-repeats", type=int, default=3)
    parser.add_argument("--sections", default="overhead,mobilenet,loads")
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
        table, _ = section_overhead(args.work, args.calls)
        parts += ["### Per-call cost on the tiny model (batch 1, LATENCY hint, device CPU)", "",
                  "Four requests of one compiled model called round-robin, {} rounds; the "
                  "hand-tuned loop is the floor. edgeinfer's path includes the Session's input "
                  "checks, copies small inputs (<= 64 KiB) into a tensor its request already "
                  "shares, shares larger ones (an array passed again is not re-bound), and "
                  "copies outputs so the caller owns them.".format(args.calls), "", table, ""]
    if "mobilenet" in sections:
        table, ratio, diff = section_mobilenet(args.work, args.rounds, args.pause)
        parts += ["### MobileNetV2 FP32: edgeinfer vs a hand-tuned compiled_model loop", "",
                  "Two compiled models (same IR, LATENCY hint), alternated with a {:.0f} ms "
                  "pause before each call; medians of {} rounds. Max |difference| of the "
                  "logits: {:.1e}.".format(1e3 * args.pause, args.rounds, diff), "", table, ""]
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
