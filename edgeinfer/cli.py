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
              type=click.Choice(["auto", "static", "dynamic", "weights-only"]),
              help="INT8 method: auto = static for conv nets; for MatMul-heavy models dynamic "
                   "(ONNX Runtime) or weights-only (OpenVINO).")
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
            max_abs_error, budget_output):
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
        budget_output=budget_output)
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
                   "bundles; cpu or cuda for ONNX Runtime ones (`edgeinfer doctor` lists them).")
def run(bundle, inputs, top_k, save, overwrite, device):
    """Run BUNDLE on INPUTS (images, .npy or .npz files) and print the results."""
    from .errors import UsageError
    from .preprocess import Preprocess
    from .report import describe_outputs
    from .runtime.inputs import read_feeds
    from .runtime.session import load
    if save and os.path.exists(save) and not overwrite:
        raise UsageError("Output {!r} already exists.".format(save),
                         "Choose another name, or pass --overwrite.")
    session = load(bundle, device=device)
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
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def doctor(as_json):
    """What this machine can run: backends and their devices, CPU features, Jetson, INT8."""
    from .doctor import collect, format_report
    report = collect()
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


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
