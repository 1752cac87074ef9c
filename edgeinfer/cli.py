"""The ``edgeinfer`` command line: parse, call the API, print.

Every user mistake ends in one line on stderr and exit status 1 (2 for usage);
``--debug`` shows the traceback instead.
"""

import json
import logging
import os
import sys

import click

from . import __version__
from .errors import EdgeInferError, InternalError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """A click group that turns edgeinfer errors into one line and an exit code."""

    def invoke(self, ctx):
        # The parsed flag, not sys.argv: main() may be called with args (tests, embedding).
        debug = bool(ctx.params.get("debug")) or os.environ.get("EDGEINFER_DEBUG") == "1"
        try:
            return super(Group, self).invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except EdgeInferError as exc:
            if debug:
                raise
            click.echo("error: {}".format(exc), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if debug:
                raise
            kind = "internal error" if isinstance(exc, InternalError) else "unexpected error"
            click.echo("error: {} ({}: {}). Note: run again with --debug for the traceback, "
                       "and please report it.".format(kind, type(exc).__name__, exc), err=True)
            ctx.exit(1)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="edgeinfer")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-q", "--quiet", is_flag=True, help="Print only results and errors.")
def main(debug, quiet):
    """edgeinfer: convert models for edge devices, then run, serve and measure them there."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)


def _json_option(value, what):
    if value is None:
        return None
    from .errors import UsageError
    try:
        if os.path.isfile(value):
            with open(value) as handle:
                return json.load(handle)
        return json.loads(value)
    except ValueError as exc:
        raise UsageError("{} is neither a JSON file nor JSON text: {}.".format(what, exc),
                         "Example: '{\"color\": \"RGB\", \"resize\": 256, ...}'.")


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-t", "--target", default="cpu", show_default=True,
              help="cpu (this machine's CPU) or a device profile: x86-cpu, arm64-cpu, ...")
@click.option("-p", "--precision", type=click.Choice(["int8", "fp16", "fp32"]),
              help="Default: the target's preferred precision (int8 for CPUs and "
                   "jetson-orin, fp16 for jetson-nano).")
@click.option("-m", "--method", default="auto", show_default=True,
              type=click.Choice(["auto", "static", "dynamic", "weights-only", "qat"]),
              help="INT8 method: auto = static for conv nets; for MatMul-heavy models dynamic "
                   "(ONNX Runtime) or weights-only (OpenVINO); qat (auto for a model with "
                   "Q/DQ nodes) keeps a QAT model's trained INT8 scales, no calibration.")
@click.option("--nondeterministic", is_flag=True,
              help="The model's outputs vary for one input (sampling, dropout left on): "
                   "the bundle says so, and no result cache stores its results.")
@click.option("--fp32-reference", type=click.Path(), metavar="ONNX",
              help="Q/DQ (QAT) models: the FP32 ONNX to validate against, e.g. the model "
                   "before QAT (default: the model with its Q/DQ nodes removed).")
@click.option("-c", "--calibration", type=click.Path(),
              help="Calibration data: image folder, .npz, or folder of .npy/.npz samples.")
@click.option("-e", "--eval", "eval_data", type=click.Path(),
              help="Evaluation data (same forms; labels give top-1 accuracy).")
@click.option("-o", "--output", type=click.Path(), help="The .eib bundle to write.")
@click.option("--calibrate-method", default="minmax", show_default=True,
              type=click.Choice(["minmax", "entropy", "percentile"]))
@click.option("--int8-variant", default="auto", show_default=True,
              type=click.Choice(["auto", "s8s8", "u8s8", "u8s8-rr", "u8u8"]),
              help="Activation/weight INT8 types; auto picks what this CPU runs best.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="Weight scales per output channel or per tensor.")
@click.option("--calibration-size", default=500, show_default=True, type=int,
              help="Use at most this many calibration samples.")
@click.option("--eval-size", type=int, help="Use at most this many evaluation samples.")
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--preprocess", help="Image preprocessing as JSON text or a JSON file.")
@click.option("--name", help="Model name in the bundle (default: file name).")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--no-speed-check", is_flag=True,
              help="Skip the FP32-vs-converted latency check on this machine.")
@click.option("--preset", type=click.Choice(["performance", "mixed"]),
              help="OpenVINO INT8 (NNCF): performance = symmetric, mixed = asymmetric "
                   "activations. Default: NNCF's (mixed for --model-type transformer).")
@click.option("--model-type", type=click.Choice(["transformer"]),
              help="OpenVINO INT8 (NNCF): transformer keeps attention's sensitive ops in FP32 "
                   "and applies SmoothQuant.")
@click.option("--fast-bias-correction/--no-fast-bias-correction", default=None,
              help="OpenVINO INT8 (NNCF): the fast bias correction (NNCF's default) or the "
                   "slower, usually more accurate one.")
@click.option("--subset-size", type=int,
              help="OpenVINO INT8 (NNCF): calibration samples used (default NNCF's 300).")
@click.option("--ignore-node", "ignored_names", multiple=True, metavar="NAME",
              help="OpenVINO INT8 (NNCF): keep this ONNX node in FP32 (repeatable).")
@click.option("--ignore-op-type", "ignored_types", multiple=True, metavar="TYPE",
              help="OpenVINO INT8 (NNCF): keep every op of this type in FP32, e.g. Conv or "
                   "MatMul (repeatable).")
@click.option("--max-accuracy-drop", type=float, metavar="POINTS",
              help="Accuracy budget: at most this many top-1 points lost against FP32 on the "
                   "labelled --eval data; the most sensitive ops stay FP32 until it holds.")
@click.option("--min-cosine", type=float,
              help="Accuracy budget: mean cosine similarity with FP32 at least this "
                   "(no labels needed), e.g. 0.995.")
@click.option("--max-abs-error", type=float,
              help="Accuracy budget: no output value further than this from FP32.")
@click.option("--budget-output", metavar="NAME",
              help="The output the budget applies to (default: the classifier output for "
                   "--max-accuracy-drop, else the worst output).")
def convert(model, target, precision, method, calibration, eval_data, output, calibrate_method,
            int8_variant, per_channel, calibration_size, eval_size, batch_size, preprocess,
            name, overwrite, no_speed_check, preset, model_type, fast_bias_correction,
            subset_size, ignored_names, ignored_types, max_accuracy_drop, min_cosine,
            max_abs_error, budget_output, fp32_reference, nondeterministic):
    """Convert an ONNX MODEL to an .eib bundle for a target, checked against FP32."""
    from .conversion import convert as run_convert
    from .report import describe_bundle
    bundle = run_convert(
        model, target=target, precision=precision, method=method, calibration=calibration,
        eval=eval_data, output=output, preprocess=_json_option(preprocess, "--preprocess"),
        name=name, overwrite=overwrite, calibrate_method=calibrate_method,
        int8_variant=int8_variant, per_channel=per_channel, calibration_size=calibration_size,
        eval_size=eval_size, batch_size=batch_size, measure_speed=not no_speed_check,
        preset=preset, model_type=model_type, fast_bias_correction=fast_bias_correction,
        subset_size=subset_size, ignored_names=ignored_names, ignored_types=ignored_types,
        max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine, max_abs_error=max_abs_error,
        budget_output=budget_output, fp32_reference=fp32_reference,
        deterministic=not nondeterministic)
    click.echo(describe_bundle(bundle, brief=True))


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.argument("bundle", type=click.Path())
@click.option("-e", "--eval", "eval_data", type=click.Path(),
              help="Evaluation data: image folder, .npz, or folder of .npy/.npz samples "
                   "(default: 32 random inputs).")
@click.option("--eval-size", type=int, help="Use at most this many evaluation samples.")
@click.option("--per-layer", is_flag=True,
              help="Rank the quantized ops by the error each adds (ONNX Runtime INT8).")
@click.option("-c", "--calibration", type=click.Path(),
              help="Calibration data for --per-layer (default: the evaluation data).")
@click.option("--calibration-size", default=300, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--top", default=20, show_default=True, type=int,
              help="Layers shown in the per-layer table.")
@click.option("--plot", type=click.Path(), help="With --per-layer: write a PNG bar chart "
                                                "(needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def compare(model, bundle, eval_data, eval_size, per_layer, calibration, calibration_size,
            batch_size, top, plot, as_json):
    """Compare BUNDLE with the FP32 MODEL it came from; --per-layer ranks the ops."""
    from .conversion.compare import compare as run_compare, describe
    result = run_compare(model, bundle, eval=eval_data, calibration=calibration,
                         per_layer=per_layer, plot=plot, eval_size=eval_size,
                         calibration_size=calibration_size, batch_size=batch_size)
    if as_json:
        data = {"validation": result.validation, "notes": result.notes, "plot": result.plot,
                "per_layer": result.sensitivity.to_dict() if result.sensitivity else None}
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(describe(result, limit=top))


@main.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--budget-mb", type=float, required=True,
              help="MiB of weights one partition may hold (what the device can spare).")
@click.option("-o", "--output", type=click.Path(), help="The .eib bundle to write.")
@click.option("-t", "--target", default="cpu", show_default=True,
              help="cpu (this machine's CPU) or an ONNX Runtime profile: x86-cpu, arm64-cpu.")
@click.option("-p", "--precision", default="fp32", show_default=True,
              type=click.Choice(["fp32", "fp16", "int8"]))
@click.option("-m", "--method", default="auto", show_default=True,
              type=click.Choice(["auto", "static", "dynamic"]),
              help="INT8 method, as for convert (static calibrates each partition on the "
                   "outputs of the FP32 partitions before it).")
@click.option("-c", "--calibration", type=click.Path(),
              help="Calibration data (INT8 static): image folder, .npz, or .npy/.npz folder.")
@click.option("-e", "--eval", "eval_data", type=click.Path(),
              help="Evaluation data (default: 32 random inputs).")
@click.option("--calibration-size", default=500, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--name", help="Model name in the bundle (default: file name).")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
def shard(model, budget_mb, output, target, precision, method, calibration, eval_data,
          calibration_size, batch_size, name, overwrite):
    """Cut MODEL into partitions within --budget-mb of weights; write one bundle.

    Works for models over 2 GB (external data): weights are streamed, never all loaded.
    """
    from .conversion import convert as run_convert
    from .report import describe_bundle
    bundle = run_convert(model, target=target, precision=precision, method=method,
                         calibration=calibration, eval=eval_data, output=output, name=name,
                         overwrite=overwrite, calibration_size=calibration_size,
                         batch_size=batch_size, shard_budget_mb=budget_mb)
    click.echo(describe_bundle(bundle, brief=True))


@main.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip hashing the files (faster).")
def inspect(bundle, as_json, no_verify):
    """Show a bundle's manifest: target, inputs/outputs, sizes, validation."""
    from .bundle import Bundle
    from .report import describe_bundle
    opened = Bundle.open(bundle, verify=not no_verify)
    if as_json:
        click.echo(json.dumps(opened.manifest, indent=2, sort_keys=True))
    else:
        click.echo(describe_bundle(opened))


@main.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path())
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-k", "--top-k", default=5, show_default=True, type=int,
              help="Classes to show for classifier outputs.")
@click.option("--save", type=click.Path(),
              help="Write all outputs to this .npz (keys: INPUT-PATH/OUTPUT-NAME).")
@click.option("--overwrite", is_flag=True, help="Replace the --save file if it exists.")
@click.option("--device",
              help="Where to run: CPU (default), GPU, NPU, AUTO, HETERO:GPU,CPU for OpenVINO "
                   "bundles; cpu or cuda for ONNX Runtime ones; gpu (default) or dla:0 for "
                   "TensorRT ones (`edgeinfer doctor` lists them).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Cache results on disk in this folder (created 0700); repeats of an input, "
                   "in this run or a later one, skip the model.")
@click.option("--cache-mb", type=float,
              help="Cache size in MiB: the disk folder's limit (default 1024), and the memory "
                   "tier's (at most 64). Alone: a memory cache for this run.")
@click.option("--redis", "redis_url", metavar="URL",
              help="Share results through Redis, e.g. redis://127.0.0.1:6379/0 "
                   "(needs edgeinfer[redis]).")
@click.option("--stream", is_flag=True,
              help="Sharded bundles: keep at most the shard budget of partitions loaded "
                   "(load, run, release; the next one loads while one runs).")
def run(bundle, inputs, top_k, save, overwrite, device, cache_dir, cache_mb, redis_url,
        stream):
    """Run BUNDLE on INPUTS (images, .npy or .npz files) and print the results."""
    from .errors import UsageError
    from .preprocess import Preprocess
    from .report import describe_outputs
    from .runtime.inputs import read_feeds
    from .runtime.session import load
    if save and os.path.exists(save) and not overwrite:
        raise UsageError("Output {!r} already exists.".format(save),
                         "Choose another name, or pass --overwrite.")
    cache = _cache_from_options(cache_dir, cache_mb, redis_url)
    session = load(bundle, device=device, cache=cache, shard_mode="stream" if stream else None)
    recorded = session.manifest.get("preprocess")
    preprocess = Preprocess.from_dict(recorded) if recorded else None
    saved = {}
    for index, path in enumerate(inputs):
        outputs = session.run(read_feeds(path, session.inputs, preprocess))
        click.echo(describe_outputs(path, outputs, session.manifest.get("classes"), top_k))
        # The path as given keeps keys apart for same-named files in two folders; a path
        # given twice gets its position appended.
        key = path if not any(k.startswith(path + "/") for k in saved) else "{}#{}".format(
            path, index)
        for name, value in outputs.items():
            saved["{}/{}".format(key, name)] = value
    if save:
        _save_npz(save, saved)
    if cache is not None:
        _report_cache(cache)
        cache.close()


def _cache_settings(cache_dir, cache_mb, redis_url):
    """Cache keyword arguments that --cache-dir/--cache-mb/--redis ask for, or None."""
    if cache_dir is None and cache_mb is None and redis_url is None:
        return None
    from .errors import UsageError
    if cache_mb is not None and not cache_mb > 0:
        raise UsageError("--cache-mb must be more than 0, not {:g}.".format(cache_mb),
                         "It is the cache size in MiB, e.g. --cache-mb 256.")
    size = 1024.0 if cache_mb is None else cache_mb
    return {"memory_mb": min(64.0, size), "disk_dir": cache_dir, "disk_mb": size,
            "redis_url": redis_url}


def _cache_from_options(cache_dir, cache_mb, redis_url):
    """The Cache that --cache-dir/--cache-mb/--redis ask for, or None (no cache)."""
    settings = _cache_settings(cache_dir, cache_mb, redis_url)
    if settings is None:
        return None
    from .runtime.cache import Cache
    cache = Cache(**settings)
    for warning in cache.stats()["warnings"]:
        logging.getLogger("edgeinfer").warning("warning: %s", warning)
    return cache


def _report_cache(cache):
    """One line on stderr: what the cache answered, and any tier trouble."""
    stats = cache.stats()
    tiers = ", ".join("{} {}".format(name, info.get("hits", 0))
                      for name, info in stats["tiers"].items())
    log = logging.getLogger("edgeinfer")
    log.info("cache: %d hits (%s), %d misses", stats["hits"], tiers, stats["misses"])
    for warning in stats["warnings"]:
        log.warning("warning: %s", warning)


@main.group(context_settings=CONTEXT)
def cache():
    """Look at or clear a result cache (--cache-dir and/or --redis)."""


def _cache_target_options(func):
    func = click.option("--namespace", default="edgeinfer", show_default=True,
                        help="Redis key prefix.")(func)
    func = click.option("--redis", "redis_url", metavar="URL", help="A Redis cache tier.")(func)
    return click.option("--cache-dir", type=click.Path(file_okay=False),
                        help="A disk cache folder.")(func)


@cache.command("stats", context_settings=CONTEXT)
@_cache_target_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def cache_stats(cache_dir, redis_url, namespace, as_json):
    """What a cache holds: entries, bytes, size limit, and entries per model."""
    from .runtime.cache import admin
    report = admin.inspect(cache_dir, redis_url, namespace)
    click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json
               else admin.describe(report))


@cache.command("clear", context_settings=CONTEXT)
@_cache_target_options
@click.option("--model", "bundle", type=click.Path(dir_okay=False),
              help="Clear only this bundle's entries (default: all).")
def cache_clear(cache_dir, redis_url, namespace, bundle):
    """Remove cached results: all of them, or one bundle's (--model)."""
    from .runtime.cache import admin
    model = None
    if bundle is not None:
        from .bundle import Bundle
        from .runtime.cache import model_hash
        model = model_hash(Bundle.open(bundle, verify=False).manifest)
    removed = admin.clear(cache_dir, redis_url, model, namespace)
    click.echo("\n".join("cleared {} {} entries".format(count, name)
                         for name, count in removed.items()))


def _save_npz(path, arrays):
    """Write arrays to ``path`` atomically: a temporary file renamed into place."""
    import tempfile
    import numpy as np
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    os.close(handle)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@main.command(context_settings=CONTEXT)
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port (0: any free).")
@click.option("--device", help="Where to run the models (as for `edgeinfer run`).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Cache results on disk in this folder (as for `edgeinfer run`).")
@click.option("--cache-mb", type=float, help="Result cache size in MiB (as for `edgeinfer run`).")
@click.option("--redis", "redis_url", metavar="URL", help="Share results through Redis.")
@click.option("--max-batch", default=1, show_default=True, type=int,
              help="Dynamic batching: most rows stacked into one run (1: off). Only for "
                   "models whose inputs have a symbolic batch dim.")
@click.option("--max-delay-ms", default=0.0, show_default=True, type=float,
              help="Longest a request waits for others to stack with.")
@click.option("--max-queue", default=64, show_default=True, type=int,
              help="Requests waiting per model before answering 503 + Retry-After.")
@click.option("--instances", type=int,
              help="Runs of each model in flight at once (threads). Default for ONNX "
                   "Runtime models: 2 on 4+ cores, each run on half of them; 2 per core, "
                   "single-threaded, on 2-3 cores (best throughput under concurrent "
                   "clients); 1 with dynamic batching. 1 gives a lone request every core.")
@click.option("--backend-option", "backend_option", multiple=True, metavar="KEY=VALUE",
              help="A backend option for every model, e.g. intra_op_threads=2 (ONNX "
                   "Runtime). Repeatable. Unless given, served ONNX Runtime models get "
                   "stop_spinning=true, and intra_op_threads=cores/instances when more than "
                   "one run is in flight.")
@click.option("--timeout-s", default=30.0, show_default=True, type=float,
              help="Per-request limit on queueing plus running (504 after).")
@click.option("--client-timeout-s", default=30.0, show_default=True, type=float,
              help="Longest a client may take to send a request's headers, and again its "
                   "body (slow clients get 408 and are disconnected).")
@click.option("--max-body-mb", default=64.0, show_default=True, type=float,
              help="Largest request body (413 beyond).")
@click.option("--max-connections", default=1000, show_default=True, type=int,
              help="Open connections beyond which new ones get 503.")
@click.option("--drain-s", default=10.0, show_default=True, type=float,
              help="On SIGTERM/Ctrl-C, longest wait for in-flight requests.")
def serve(bundles, host, port, device, cache_dir, cache_mb, redis_url, max_batch, max_delay_ms,
          max_queue, instances, backend_option, timeout_s, client_timeout_s, max_body_mb,
          max_connections, drain_s):
    """Serve BUNDLES over HTTP: KServe v2 / Open Inference Protocol.

    Triton's clients work unchanged (JSON and binary tensors); metrics at /metrics.
    Needs `pip install edgeinfer[serve]`.
    """
    from .serve import serve as run_server
    from .serve.app import Options
    options = Options(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue,
                      instances=instances, timeout_s=timeout_s, client_timeout_s=client_timeout_s,
                      drain_s=drain_s,
                      max_body_bytes=int(max_body_mb * 1024 * 1024))
    load_options = {"device": device} if device else {}
    if backend_option:
        load_options["backend_options"] = _key_values(backend_option, "--backend-option")
    cache = _cache_from_options(cache_dir, cache_mb, redis_url)
    run_server(bundles, host=host, port=port, cache=cache, options=options,
               load_options=load_options, max_connections=max_connections)


def _key_values(items, what):
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``: values read as JSON when they parse."""
    from .errors import UsageError
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError("{} takes KEY=VALUE, not {!r}.".format(what, item),
                             "Example: {} intra_op_threads=1.".format(what))
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


@main.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path())
@click.argument("destination")
@click.option("--warm", is_flag=True,
              help="Load the bundle once on the device after the copy, so its TensorRT engine "
                   "is built now (needs edgeinfer there).")
@click.option("--overwrite", is_flag=True, help="Replace a different file of the same name.")
@click.option("-p", "--port", type=int, help="ssh port (default: ssh's, or ~/.ssh/config's).")
@click.option("-i", "--identity", type=click.Path(dir_okay=False), help="ssh private key file.")
@click.option("-o", "--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE",
              help="Extra ssh option, as ssh -o takes it (repeatable).")
@click.option("--via", default="auto", show_default=True,
              type=click.Choice(["auto", "rsync", "scp"]),
              help="Copy with rsync (when both ends have it) or scp.")
@click.option("--remote-edgeinfer", default="edgeinfer", show_default=True, metavar="CMD",
              help="The command that runs edgeinfer on the device, for --warm.")
def push(bundle, destination, warm, overwrite, port, identity, ssh_options, via,
         remote_edgeinfer):
    """Copy BUNDLE to DESTINATION (user@host:/folder/ or a local folder), checked on arrival.

    The copy goes over ssh with rsync or scp under a temporary name, its sha256 is
    computed on the device, and only a matching file is renamed into place.
    """
    from .push import push as run_push
    result = run_push(bundle, destination, warm=warm, overwrite=overwrite, port=port,
                      identity=identity, ssh_options=ssh_options, via=via,
                      remote_edgeinfer=remote_edgeinfer)
    done = {"none": "already there, identical", "copy": "copied", "rsync": "copied with rsync",
            "scp": "copied with scp"}[result.method]
    click.echo("pushed {} to {} (sha256 {}... verified on arrival; {}{})".format(
        os.path.basename(bundle), result.destination, result.sha256[:12], done,
        "; warmed up" if result.warmed else ""))


@main.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path())
@click.option("--device", help="Where to run, as for `edgeinfer run`.")
def warm(bundle, device):
    """Load BUNDLE once and run it on zeros: builds and caches its TensorRT engine."""
    import time
    import numpy as np
    from .runtime.session import load
    started = time.time()
    session = load(bundle, device=device)
    loaded = time.time() - started
    # The smallest shapes the engine takes (its optimization profile's min), else batch 1.
    smallest = dict((p["input"], p["min"]) for p in
                    (session.manifest.get("engine") or {}).get("profiles") or ())
    feeds = dict((s.name, np.zeros(tuple(smallest.get(s.name) or s.concrete_shape()), s.dtype))
                 for s in session.inputs)
    started = time.time()
    session.run(feeds)
    first = time.time() - started
    session.close()
    click.echo("{} ready on {}: loaded in {:.2f} s, first inference {:.1f} ms".format(
        bundle, session.manifest["target"]["backend"], loaded, first * 1000))


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def doctor(as_json):
    """What this machine can run: backends and their devices, CPU features, Jetson, INT8."""
    from .doctor import collect, format_report
    report = collect()
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


def _write_reports(module, report, json_path, md_path, plot_path):
    """Write a report's JSON and Markdown as asked, print the Markdown, then write the PNG.

    ``module`` is ``edgeinfer.bench`` or ``edgeinfer.loadtest`` (both have write_json,
    write_markdown, markdown, write_plot).  Returns the files written, as text ("" for none).

    Raises:
        MissingDependency: --plot without matplotlib, after the rest was written.
    """
    from .errors import MissingDependency
    if json_path:
        module.write_json(report, json_path)
    if md_path:
        module.write_markdown(report, md_path)
    click.echo(module.markdown(report), nl=False)
    files = ", ".join(p for p in (json_path, md_path) if p)
    if plot_path:
        try:
            module.write_plot(report, plot_path)
        except MissingDependency as exc:
            # The measurements are the expensive part: they are kept, only the PNG is missing.
            raise MissingDependency("--plot needs matplotlib, which is not installed; {}.".format(
                "{} written".format(files) if files else "the tables above were printed"),
                "pip install edgeinfer[report] ({}).".format(exc.message))
    return files


@main.command(context_settings=CONTEXT)
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("--runs", type=int, help="Timed calls per bundle and batch size (default 100).")
@click.option("--duration", "duration_s", type=float, metavar="SECONDS",
              help="Instead of --runs: seconds per latency phase and throughput setting.")
@click.option("--warmup", default=5, show_default=True, type=int,
              help="Untimed calls per bundle and batch size first.")
@click.option("--batch", "batches", default="1", show_default=True, metavar="N[,N...]",
              help="Batch sizes, e.g. 1,4.")
@click.option("--concurrency", default="1", show_default=True, metavar="N[,N...]",
              help="Requests in flight for the throughput runs, e.g. 1,2,4.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the full report (schema edgeinfer-bench/1) here.")
@click.option("--md", "md_path", type=click.Path(dir_okay=False),
              help="Write the Markdown tables here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a PNG (latency distribution, throughput vs concurrency); "
                   "needs matplotlib.")
@click.option("--device", help="Where to run, as for `edgeinfer run`.")
@click.option("--threads", type=int, help="Inference threads (default: the backend's choice).")
@click.option("--pin-cores", metavar="C[,C...]", help="Pin this process to these CPU cores.")
@click.option("--cache-mb", type=float,
              help="Also time the result cache at batch 1: a miss, and a hit from each tier "
                   "(sizes as for `edgeinfer run`).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="With the cache timing: its disk tier (L2) folder.")
@click.option("--redis", "redis_url", metavar="URL",
              help="With the cache timing: its Redis tier (L3), e.g. redis://127.0.0.1:6379/0.")
@click.option("--keep-build-cache", is_flag=True,
              help="Let OpenVINO/TensorRT use their usual compiled-model folders, so a cold "
                   "load may find an earlier build (default: an empty folder, a true cold "
                   "start; on a Jetson a TensorRT build takes minutes).")
@click.pass_context
def bench(ctx, bundles, runs, duration_s, warmup, batches, concurrency, json_path, md_path,
          plot_path, device, threads, pin_cores, cache_mb, cache_dir, redis_url,
          keep_build_cache):
    """Measure bundles side by side: load, latency, throughput, memory, energy, cache."""
    from . import bench as benchmarks
    from .errors import EdgeInferError
    batches = benchmarks.parse_int_list(batches, "--batch")
    levels = benchmarks.parse_int_list(concurrency, "--concurrency")
    cores = benchmarks.parse_int_list(pin_cores, "--pin-cores") if pin_cores else None
    quiet = bool(ctx.find_root().params.get("quiet"))
    report = benchmarks.bench(list(bundles), runs=runs, duration_s=duration_s, warmup=warmup,
                              batches=batches, concurrency=levels, device=device,
                              threads=threads, cores=cores,
                              progress=benchmarks.Progress(enabled=not quiet),
                              cache=_cache_settings(cache_dir, cache_mb, redis_url),
                              fresh_build_cache=not keep_build_cache)
    _write_reports(benchmarks, report, json_path, md_path, plot_path)
    failed = report["totals"]["failed"]
    if failed:
        raise EdgeInferError("{} of {} bundles could not be measured: {}.".format(
            len(failed), len(bundles), ", ".join(failed)),
            "Their one-line errors are in the report; the others were measured.")


@main.command(context_settings=CONTEXT)
@click.argument("url")
@click.option("-m", "--model", required=True, help="The served model's name.")
@click.option("--model-version", help="Its version (default: the server's choice).")
@click.option("--stages", metavar="DUR:N[,DUR:N...]",
              help="Load stages, each ramping linearly from the last level, e.g. "
                   "10s:8,30s:32,10s:0 (N = users; requests/s with --open).")
@click.option("--duration", metavar="DUR", help="Instead of --stages: one steady stage, e.g. 30s.")
@click.option("--users", type=int, help="With --duration: virtual users (closed workload).")
@click.option("--rate", type=float, help="With --duration: requests per second (open workload).")
@click.option("--open", "open_model", is_flag=True,
              help="Open workload: stage targets are arrivals per second, sent whether or not "
                   "earlier requests were answered (default: closed, N users each waiting).")
@click.option("--slo", metavar="KEY=VALUE[,...]",
              help="Pass/fail criteria, e.g. p95=50ms,p99=200ms,errors=0.1%,rps=100; "
                   "exit status 1 when one fails.")
@click.option("--data", type=click.Path(exists=True),
              help="Inputs: an image folder (with --preprocess), a folder of .npy/.npz samples, "
                   "or one .npz/.npy file (default: generated from the model's metadata).")
@click.option("--preprocess", help="For an image folder: preprocessing as JSON text or a JSON "
                                   "file (as for convert).")
@click.option("--inputs", "inputs", default="unique", show_default=True,
              type=click.Choice(["unique", "cycle", "repeat"]),
              help="unique: no two requests alike, so a server cache never answers; cycle: the "
                   "pool in turn; repeat: one input every time (the cache-hit path).")
@click.option("--pool", default=16, show_default=True, type=int,
              help="Distinct input samples encoded before the run.")
@click.option("--batch", default=1, show_default=True, type=int,
              help="Rows per request, for models with a free batch dim.")
@click.option("--binary", is_flag=True,
              help="Send Triton's binary tensors (and ask for binary outputs) instead of JSON.")
@click.option("--think-ms", default=0.0, show_default=True, type=float,
              help="Closed workload: each user's pause between an answer and its next request.")
@click.option("--max-in-flight", default=1000, show_default=True, type=int,
              help="Open workload: requests waiting at once before arrivals are dropped.")
@click.option("--arrivals", default="constant", show_default=True,
              type=click.Choice(["constant", "poisson"]), help="Open workload: arrival spacing.")
@click.option("--timeout-s", default=30.0, show_default=True, type=float,
              help="Per-request limit; a slower answer counts as a timeout error.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the generated inputs and the Poisson arrivals.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the full report (schema edgeinfer-loadtest/1, per-second timeline).")
@click.option("--md", "md_path", type=click.Path(dir_okay=False),
              help="Write the Markdown summary here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a PNG timeline (throughput, latency, CPU); needs matplotlib.")
@click.pass_context
def loadtest(ctx, url, model, model_version, stages, duration, users, rate, open_model, slo,
             data, preprocess, inputs, pool, batch, binary, think_ms, max_in_flight, arrivals,
             timeout_s, seed, json_path, md_path, plot_path):
    """Put a model served at URL (KServe v2) under load; judge it by --slo.

    Reports throughput, latency percentiles and errors per stage and per second,
    with the load generator's own CPU use beside them. Needs
    `pip install edgeinfer[loadtest]`.
    """
    from . import loadtest as load
    from .errors import EdgeInferError
    recipe = None
    if preprocess is not None:
        from .preprocess import Preprocess
        recipe = Preprocess.from_dict(_json_option(preprocess, "--preprocess"))
    quiet = bool(ctx.find_root().params.get("quiet"))
    report = load.loadtest(url, model, stages=stages, duration=duration, users=users, rate=rate,
                           open_model=open_model, slo=slo, version=model_version, data=data,
                           preprocess=recipe, batch=batch, pool=pool, inputs=inputs,
                           binary=binary, timeout_s=timeout_s, think_ms=think_ms,
                           max_in_flight=max_in_flight, arrivals=arrivals, seed=seed,
                           progress=not quiet)
    files = _write_reports(load, report, json_path, md_path, plot_path)
    if report["slo"]["passed"] is False:
        raise EdgeInferError("SLO not met: {}.".format("; ".join(report["slo"]["failed"])),
                             "Details in {}.".format(files or "the summary above"))


@main.command(context_settings=CONTEXT)
@click.option("--out", default="out/demo", show_default=True, type=click.Path(),
              help="Folder for the demo bundles.")
def demo(out):
    """Convert the shipped demo model to INT8 and FP16 and compare them with FP32."""
    from .demo import run_demo
    click.echo(run_demo(out))


def entry():
    """Console-script entry: ``--debug`` may stand anywhere on the command line."""
    args = sys.argv[1:]
    if "--debug" in args:
        args = ["--debug"] + [a for a in args if a != "--debug"]
    main(args=args, prog_name="edgeinfer")


if __name__ == "__main__":  # pragma: no cover
    entry()
