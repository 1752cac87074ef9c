"""Workstation side: turn an ONNX model into an ``.eib`` bundle for a target.

``convert()`` runs the pipeline of DESIGN.md: load and check the source, prepare
it, apply the target's recipe (FP32 / FP16 / INT8 dynamic / INT8 static), check
the result against FP32, and write one bundle atomically.
"""

import datetime
import logging
import os
import platform
import shutil
import tempfile
from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np

from .. import __version__
from ..bundle import Bundle
from ..errors import ConversionError, UsageError
from ..lazy import require
from ..profiles import cpu_features, machine_arch, resolve_target
from ..runtime.backends import LocalFiles, get_backend
from ..tensors import fixed_batch
from . import validate
from .recipe import Job, get_recipe
from .source import load_source

log = logging.getLogger("edgeinfer.conversion")

PRECISIONS = ("int8", "fp16", "fp32")
# qat: keep the INT8 scales of a Q/DQ model (issue 10, see prequantized.py).
METHODS = ("auto", "static", "dynamic", "weights-only", "qat", "none")
# NNCF's knobs (OpenVINO target, issue 3); None / () means "NNCF's default".
PRESETS = ("performance", "mixed")
MODEL_TYPES = ("transformer",)

# Settings only some recipes take (each recipe lists its own in ``knobs``), as users type them.
KNOB_FLAGS = {"preset": "--preset", "model_type": "--model-type",
              "fast_bias_correction": "--fast-bias-correction/--no-fast-bias-correction",
              "subset_size": "--subset-size", "ignored_names": "--ignore-node",
              "ignored_types": "--ignore-op-type"}
RECIPE_KNOBS = tuple(KNOB_FLAGS)

# Time spent on the FP32-vs-converted latency check (more rounds for fast models).
SPEED_CHECK_SECONDS = 1.0
# A converted model slower than this fraction of FP32 latency earns a note.
NO_GAIN_RATIO = 0.95
# With an accuracy budget, INT8 slower than this fraction of FP32 latency is refused.
SLOWER_RATIO = 1.10


class Settings(NamedTuple):
    """What a conversion was asked to do (checked by :func:`check_settings`)."""

    target: str = "cpu"
    precision: str = "int8"
    method: str = "auto"
    calibrate_method: str = "minmax"
    int8_variant: str = "auto"
    per_channel: bool = True
    calibration_size: int = 500
    eval_size: Optional[int] = None
    batch_size: int = 8
    measure_speed: bool = True
    preset: Optional[str] = None
    model_type: Optional[str] = None
    fast_bias_correction: Optional[bool] = None
    subset_size: Optional[int] = None
    ignored_names: Tuple[str, ...] = ()
    ignored_types: Tuple[str, ...] = ()
    # Accuracy control (issue 4): at most one limit; see metrics.Budget.
    max_accuracy_drop: Optional[float] = None
    min_cosine: Optional[float] = None
    max_abs_error: Optional[float] = None
    metric: Optional[Callable] = None
    min_metric: Optional[float] = None
    budget_output: Optional[str] = None
    # Sharding (issue 7): MiB of weights per partition; None shards only when the
    # target profile's memory_mb is exceeded.
    shard_budget_mb: Optional[float] = None
    # A Q/DQ (QAT) source's FP32 model to validate against (issue 10); None: the
    # source with its Q/DQ removed (see prequantized.py).
    fp32_reference: Optional[str] = None
    # False: the model's outputs vary for one input (sampling, dropout left on); the
    # bundle says so and caches never store its results (issue 6).
    deterministic: bool = True

    def budget(self):
        """The :class:`~edgeinfer.conversion.metrics.Budget` asked for, or None.

        Raises:
            UsageError: several limits, or a limit out of its range.
        """
        limits = (self.max_accuracy_drop, self.min_cosine, self.max_abs_error, self.metric)
        if all(v is None for v in limits) and self.min_metric is None:
            return None
        from .metrics import Budget
        return Budget(max_accuracy_drop=self.max_accuracy_drop, min_cosine=self.min_cosine,
                      max_abs_error=self.max_abs_error, metric=self.metric,
                      min_value=self.min_metric, output=self.budget_output)


def check_settings(settings):
    """Refuse impossible combinations before any work is done.

    Raises:
        UsageError: unknown precision/method/variant, or a method that cannot apply.
    """
    if settings.precision not in PRECISIONS:
        raise UsageError("Unknown precision {!r}.".format(settings.precision),
                         "Use one of: {}.".format(", ".join(PRECISIONS)))
    if settings.method not in METHODS:
        raise UsageError("Unknown method {!r}.".format(settings.method),
                         "Use one of: {}.".format(", ".join(METHODS)))
    if settings.precision != "int8" and settings.method in ("static", "dynamic", "weights-only",
                                                            "qat"):
        raise UsageError("--method {} applies to INT8, not {}.".format(
            settings.method, settings.precision), "Drop --method, or use --precision int8.")
    for key in ("calibration_size", "batch_size"):
        if getattr(settings, key) < 1:
            raise UsageError("{} must be at least 1.".format(key.replace("_", "-")))
    if settings.method == "qat" and settings.shard_budget_mb is not None:
        raise UsageError("A Q/DQ (QAT) model is converted whole: sharding applies to FP32 "
                         "sources.", "Drop the shard budget, or shard the FP32 model.")
    _check_recipe_knobs(settings)
    budget = settings.budget()
    if budget is not None and settings.precision != "int8":
        raise UsageError("An accuracy budget applies to INT8, not {}.".format(settings.precision),
                         "Drop the budget, or use --precision int8.")
    if budget is None and settings.budget_output is not None:
        raise UsageError("budget-output names the output a budget applies to, but no budget "
                         "was given.", "Add --max-accuracy-drop, --min-cosine or "
                         "--max-abs-error, or drop --budget-output.")


def _check_recipe_knobs(settings):
    """Check the knobs only some targets' recipes take (NNCF's), and that this target's does.

    A recipe lists the Settings fields it reads beyond the common ones in ``knobs`` and
    its INT8 methods in ``methods``; a knob or method given for a target whose recipe
    does not list it is refused, naming the targets that take it.
    """
    if settings.preset is not None and settings.preset not in PRESETS:
        raise UsageError("Unknown preset {!r}.".format(settings.preset),
                         "Use one of: {}.".format(", ".join(PRESETS)))
    if settings.model_type is not None and settings.model_type not in MODEL_TYPES:
        raise UsageError("Unknown model type {!r}.".format(settings.model_type),
                         "Use one of: {}.".format(", ".join(MODEL_TYPES)))
    if settings.subset_size is not None and settings.subset_size < 1:
        raise UsageError("subset-size must be at least 1.")
    for key in ("ignored_names", "ignored_types"):
        value = getattr(settings, key)
        names = (value,) if isinstance(value, str) else value
        if not all(isinstance(n, str) and n for n in names or ()):
            raise UsageError("{} must be a list of non-empty names, not {!r}.".format(key, value))
    given = [k for k in RECIPE_KNOBS if getattr(settings, k) not in (None, (), [])]
    if not given and settings.method != "weights-only":
        return
    from ..profiles import PROFILES
    from .recipe import RECIPES
    profile = resolve_target(settings.target)
    takes = dict((backend, get_recipe(backend)) for backend in RECIPES)
    recipe = takes.get(profile.backend)
    wanted = [(KNOB_FLAGS[k], "knobs", k) for k in given]
    if settings.method == "weights-only":
        wanted.append(("--method weights-only", "methods", "weights-only"))
    for flag, attribute, name in wanted:
        if recipe is not None and name in getattr(recipe, attribute, ()):
            continue
        targets = sorted(p.name for p in PROFILES.values() if p.backend in takes and
                         name in getattr(takes[p.backend], attribute, ()))
        raise UsageError("{} applies to target {}, not {} ({}).".format(
            flag, " or ".join(targets), profile.name, profile.backend),
            "Use --target {}, or drop {}.".format(targets[0], flag))


def default_output(source_name, profile, precision):
    return "{}-{}-{}.eib".format(source_name, profile.name, precision)


def _check_output(output, overwrite):
    if os.path.isdir(output):
        raise UsageError("Output {!r} is a folder.".format(output),
                         "Give a file name ending in .eib.")
    if os.path.exists(output) and not overwrite:
        raise UsageError("Output {!r} already exists.".format(output),
                         "Choose another name, or pass --overwrite.")


def _batch_size(inputs, wanted):
    # A fixed first dim is the only batch the model takes.
    return fixed_batch(inputs) or wanted


def iter_batches(dataset, indices, batch_size, drop_last=False):
    """Yield (feeds, labels) over ``indices`` of a dataset, one batch in memory at a time."""
    return dataset.batches(batch_size, indices=indices, drop_last=drop_last)


def synthetic_batches(inputs, count, batch_size, seed=0):
    """Seeded random inputs for validation when no data was given (whole batches)."""
    rng = np.random.RandomState(seed)
    for start in range(0, count, batch_size):
        n = batch_size if fixed_batch(inputs) else min(batch_size, count - start)
        feeds = {}
        for spec in inputs:
            shape = spec.concrete_shape(batch=n)
            if np.dtype(spec.dtype).kind == "f":
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            else:
                feeds[spec.name] = rng.randint(0, 2, size=shape).astype(spec.dtype)
        yield feeds, None


def _open_data(path, inputs, preprocess, role):
    from ..datasets import open_dataset
    dataset = open_dataset(path, inputs, preprocess)
    log.info("%s: %s", role, dataset.describe())
    return dataset


def _ort_runner(path):
    ort = require("onnxruntime", "validation")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds)))


def _lazy(make, *args):
    """``make(*args)``'s runner, made on the first call: a source that ONNX Runtime
    cannot load must fail in the recipe that names the reason, not here."""
    made = []

    def run(feeds):
        if not made:
            made.append(make(*args))
        return made[0](feeds)
    return run


def _versions():
    versions = {"edgeinfer": __version__, "python": platform.python_version(),
                "numpy": np.__version__}
    for module in ("onnx", "onnxruntime", "onnxconverter_common"):
        try:
            versions[module] = require(module).__version__
        except Exception:
            pass
    return versions


def convert(model, target="cpu", precision=None, method="auto", calibration=None,
            eval=None, output=None, preprocess=None, name=None, overwrite=False, workdir=None,
            **options):
    """Convert an ONNX model for a target and write a ``.eib`` bundle.

    Args:
        model: path of the ONNX model.
        target: ``cpu`` (this machine's CPU) or a device profile (default ``cpu``).
        precision: ``int8``, ``fp16`` or ``fp32`` (default None: the target profile's
            preferred one, e.g. ``int8`` for CPUs, ``fp16`` for jetson-nano; ``int8``
            for a Q/DQ model).
        method: INT8 method: ``auto`` (static for conv nets, dynamic for MatMul-heavy
            graphs with ONNX Runtime, weight-only with OpenVINO; ``qat`` for a model
            with Q/DQ nodes), ``static``, ``dynamic`` (ONNX Runtime), ``weights-only``
            (OpenVINO) or ``qat``: keep the INT8 scales of a Q/DQ model, as exported
            after quantization-aware training (:mod:`edgeinfer.qat`), with no
            calibration (default ``auto``).
        calibration: calibration data: an image folder (optional labels file), an
            ``.npz`` or a folder of ``.npy``/``.npz`` samples (default None).
        eval: evaluation data in the same forms; with labels, top-1 is measured
            (default None: a held-out part of the calibration data, else random inputs).
        output: the bundle to write (default ``<model>-<profile>-<precision>.eib``).
        preprocess: image preprocessing dict (see :class:`edgeinfer.preprocess.Preprocess`);
            default: what the model's metadata records, else inferred from its input.
        name: the model's name in the bundle (default: the file's stem).
        overwrite: replace an existing output (default False: refuse).
        workdir: folder for intermediate files, kept afterwards (default: a temporary one).
        **options: :class:`Settings` fields: ``calibrate_method`` (minmax | entropy |
            percentile), ``int8_variant`` (auto | s8s8 | u8s8 | u8s8-rr | u8u8),
            ``per_channel``, ``calibration_size``, ``eval_size``, ``batch_size``,
            ``measure_speed``; for the OpenVINO target, NNCF's knobs (each default
            None / empty: NNCF's default): ``preset`` (performance | mixed),
            ``model_type`` (transformer), ``fast_bias_correction`` (bool),
            ``subset_size``, ``ignored_names`` (ONNX node names kept FP32) and
            ``ignored_types`` (ONNX or OpenVINO op types kept FP32).  ``shard_budget_mb``
            (default None) cuts the model into partitions of at most that many MiB of
            weights (see :mod:`edgeinfer.conversion.shard`); without it a model whose
            weights exceed the target profile's ``memory_mb`` is sharded by itself.
            ``fp32_reference`` (default None) is the FP32 ONNX a Q/DQ model is validated
            against; without it, the Q/DQ model with its Q/DQ nodes removed (see
            :mod:`edgeinfer.conversion.prequantized`).
            ``deterministic`` (default True): False marks a model whose outputs vary
            for one input, so that no cache stores its results.

    Returns:
        the written :class:`~edgeinfer.bundle.Bundle`.

    Raises:
        UsageError, ModelError, DataError, ConversionError: with a message and hint.
    """
    unknown = sorted(set(options) - set(Settings._fields) - {"target", "precision", "method"})
    if unknown:
        raise UsageError("Unknown convert option(s): {}.".format(", ".join(unknown)),
                         "Valid options: {}.".format(", ".join(Settings._fields)))
    precision_asked = precision
    if precision is None:
        precision = resolve_target(target).precisions[0]
    settings = Settings(target=target, precision=precision, method=method, **options)
    check_settings(settings)
    profile = resolve_target(settings.target)
    recipe = get_recipe(profile.backend)
    recipe.check(settings)
    if settings.precision not in profile.precisions:
        raise UsageError("Target {} does not support {}.".format(profile.name, precision),
                         "It supports: {}.".format(", ".join(profile.precisions)))
    from .shard import convert_sharded, shard_budget
    shard_bytes = shard_budget(model, profile, settings.shard_budget_mb)
    if shard_bytes is not None:
        # Before load_source: a sharded model is never loaded whole (it may exceed 2 GB).
        return convert_sharded(model, recipe, profile, settings, shard_bytes, calibration, eval,
                               output, preprocess, name, overwrite, workdir)
    source = load_source(model)
    from .prequantized import resolve
    settings = resolve(settings, source, precision_asked)
    if settings.precision not in profile.precisions:
        raise UsageError("Target {} does not support INT8, which the Q/DQ model {} carries.".format(
            profile.name, os.path.basename(source.path)),
            "Convert the FP32 model for it (precision {}).".format(profile.precisions[0]))
    output = output or default_output(source.name, profile, settings.precision)
    _check_output(output, overwrite)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    preprocess_obj = _preprocess_for(source, preprocess)
    own_workdir = workdir is None
    workdir = tempfile.mkdtemp(prefix="edgeinfer-") if own_workdir else workdir
    os.makedirs(workdir, exist_ok=True)
    try:
        return _convert(recipe, source, profile, settings, calibration, eval, output,
                        preprocess_obj, name or source.name, overwrite, workdir)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _preprocess_for(source, preprocess):
    from ..preprocess import Preprocess, infer_from_input
    if preprocess is not None:
        return preprocess if isinstance(preprocess, Preprocess) else Preprocess.from_dict(preprocess)
    if source.preprocess is not None:
        return Preprocess.from_dict(source.preprocess)
    if len(source.inputs) == 1:
        return infer_from_input(source.inputs[0])
    return None


def _split(calibration, eval_data, settings):
    """Indices for calibration and validation; hold out part of calibration if needed."""
    calib_idx = eval_idx = None
    if calibration is not None:
        calib_idx = list(range(min(len(calibration), settings.calibration_size)))
    if eval_data is not None:
        n = len(eval_data) if settings.eval_size is None else min(len(eval_data), settings.eval_size)
        eval_idx = list(range(n))
    elif calibration is not None and len(calibration) >= 10:
        # No eval set: keep the last 20% (at most 200) of the calibration data out of
        # calibration so validation is not measured on the data the ranges came from.
        held = min(200, len(calibration) // 5)
        total = len(calibration)
        eval_idx = list(range(total - held, total))
        calib_idx = [i for i in calib_idx if i < total - held]
    return calib_idx, eval_idx


def _evaluation(source, settings, calibration, eval_data, eval_idx):
    """The evaluation set as (batches callable, kind, where, count, dataset or None)."""
    if eval_idx:
        data = eval_data if eval_data is not None else calibration
        drop_last = fixed_batch(source.inputs) is not None
        batch = _batch_size(source.inputs, settings.batch_size)
        kind = "eval set" if eval_data is not None else "held-out calibration samples"
        return (lambda: iter_batches(data, eval_idx, batch, drop_last=drop_last), kind,
                data.describe(), len(eval_idx), data)
    return (lambda: synthetic_batches(source.inputs, 32, _batch_size(
        source.inputs, settings.batch_size)), "random inputs (no data given)", None, 32, None)


def _check_budget(budget, source, evaluation):
    """Refuse a budget that cannot be measured on this data, before any work."""
    batches, kind, _, _, data = evaluation
    if data is None:
        raise UsageError("An accuracy budget needs evaluation data.",
                         "Pass --eval DIR (with labels for --max-accuracy-drop), or "
                         "--calibration DIR, of which 20% is then held out for evaluation.")
    budget.check_data(data.labels is not None, [o.name for o in source.outputs])


def _convert(recipe, source, profile, settings, calibration_path, eval_path, output,
             preprocess, name, overwrite, workdir):
    from .metrics import ReferenceOutputs
    calibration = (_open_data(calibration_path, source.inputs, preprocess, "calibration")
                   if calibration_path is not None else None)
    eval_data = (_open_data(eval_path, source.inputs, preprocess, "evaluation")
                 if eval_path is not None else None)
    features = cpu_features() if profile.arch == machine_arch() else None
    batch = _batch_size(source.inputs, settings.batch_size)
    calib_idx, eval_idx = _split(calibration, eval_data, settings)
    evaluation = _evaluation(source, settings, calibration, eval_data, eval_idx)
    budget = settings.budget()
    if budget is not None:
        _check_budget(budget, source, evaluation)
    # FP32 runs over the evaluation set once: the budget search and the final
    # validation both compare against these outputs (issue 4, requirement 5).
    reference_path, reference_info = source.path, None
    if settings.method == "qat":
        from .prequantized import reference_model
        reference_path, reference_info = reference_model(source, settings.fp32_reference,
                                                         workdir)
    fp32_run = _lazy(_ort_runner, reference_path)
    reference = ReferenceOutputs(fp32_run, evaluation[0], [o.name for o in source.outputs])
    job = Job(source, profile, settings, features, calibration, calib_idx, batch, workdir,
              reference, budget, reference_path)
    result = recipe.build(job)
    notes = list(result.notes)
    if settings.method == "qat" and calibration is not None:
        notes.append("The INT8 scales come from the Q/DQ model (QAT): --calibration served "
                     "only as evaluation data.")
    if features is not None and settings.precision == "int8":
        notes.extend(_backend_advice(source, features, recipe.backend))
    # A recipe whose backend cannot run here (TensorRT needs an NVIDIA GPU) names the
    # backend that runs its files on this workstation for validation.
    checker = getattr(recipe, "validation_backend", None) or recipe.backend
    runner = get_backend(checker).load(LocalFiles(result.files, result.entry))
    try:
        validation, results = _validate(job, runner, fp32_run, evaluation, notes, recipe)
        inputs, outputs = runner.inputs, runner.outputs
    finally:
        runner.close()
    if reference_info is not None:
        validation["reference"] = reference_info
    control = result.accuracy_control
    if control is not None:
        _final_check(budget, control, results)
        _refuse_slower(control, validation, recipe, profile)
    manifest = {
        "format": "edgeinfer-bundle", "format_version": 1, "name": name,
        "created": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
        "source": {"file": os.path.basename(source.path), "sha256": source.sha256,
                   "size": os.path.getsize(source.path), "opset": source.opset,
                   "producer": "{} {}".format(source.model.producer_name,
                                              source.model.producer_version).strip()},
        "target": {"backend": recipe.backend, "profile": profile.name,
                   "backend_version": result.backend_version,
                   "min_backend_version": result.min_backend_version},
        "precision": settings.precision, "method": result.method,
        "quantization": result.quantization, "model": result.entry,
        "inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs],
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
        "classes": source.classes, "partitions": None, "calibration": result.calibration,
        "validation": validation, "versions": _versions(), "notes": notes,
    }
    if not settings.deterministic:
        manifest["deterministic"] = False
    if control is not None:
        manifest["accuracy_control"] = control
    if result.engine is not None:
        manifest["engine"] = result.engine
    bundle = Bundle.write(output, manifest, result.files, overwrite=overwrite)
    log.info("wrote %s (%d bytes)", output, os.path.getsize(output))
    return bundle


# The target that builds for each CPU backend, for the advice below.
CPU_TARGETS = {"onnxruntime": "cpu", "openvino": "intel-cpu"}


def _backend_advice(source, features, backend):
    """A note when the other CPU backend is measured faster at INT8 on this CPU class (issue 3)."""
    from ..profiles import int8_backend_advice
    from .ort import CONV_OPS, LINEAR_OPS, op_counts
    if backend not in CPU_TARGETS:
        return []
    counts = op_counts(source.model)
    convs = sum(counts.get(op, 0) for op in CONV_OPS)
    linears = sum(counts.get(op, 0) for op in LINEAR_OPS)
    faster, reason = int8_backend_advice(features, "conv" if convs and convs >= linears
                                         else "matmul")
    if faster is None or faster == backend or faster not in CPU_TARGETS:
        return []
    return ["{} Build it with --target {}.".format(reason, CPU_TARGETS[faster])]


def _final_check(budget, control, results):
    """The shipped model, run by its own backend, must keep the budget the search met."""
    ok, value = budget.check(results)
    control["validated"] = {"achieved": value, "met": ok}
    if not ok:
        raise ConversionError(
            "The converted model misses the accuracy budget ({}) when run by its backend: "
            "{} {:.6g}, though the search measured {:.6g}.".format(
                budget.describe(), budget.what, value, control["achieved"]),
            "Please report it with --debug output; a tighter budget may work around it.")


def _refuse_slower(control, validation, recipe, profile):
    """With a budget, never ship an INT8 model measured slower than FP32 (issue 4, req. 7).

    A budget asks for the fastest model that keeps it; FP32 keeps any budget, so an
    INT8 model slower than FP32 on the backend that will run it is the wrong answer.
    Without a budget the model is shipped with a note (INT8 may be wanted for size).
    """
    speed = validation.get("speed")
    if not speed or speed["ratio"] <= SLOWER_RATIO:
        return
    control["speed"] = speed
    raise ConversionError(
        "Within the budget, INT8 runs at {:.2f}x the FP32 latency with {} on this machine "
        "(batch {}): FP32 meets any budget and is faster, so edgeinfer does not ship this "
        "INT8 model.".format(speed["ratio"], recipe.backend, speed["batch"]),
        "Convert with --precision fp32 for target {}; {} Or pass --no-speed-check to ship "
        "INT8 anyway (e.g. for its size).".format(profile.name, recipe.slow_int8_hint))


def _validate(job, runner, fp32_run, evaluation, notes, recipe):
    """Compare the converted model (run by its own backend) with FP32 ONNX Runtime.

    Returns:
        (the manifest's ``validation`` dict, the :class:`~edgeinfer.conversion.metrics.Results`)
    """
    from .metrics import evaluate
    batches, kind, where, count, _ = evaluation
    budget = job.budget
    metric = budget.metric if budget is not None and budget.kind == "metric" else None
    results = evaluate(job.reference, runner.run, metric, top_k=None)
    validation = {"data": kind, "where": where, "samples": count, "outputs": results.outputs}
    if results.metric_name is not None:
        validation["metric"] = {"name": results.metric_name, "value": results.metric}
    reference, candidate = fp32_run, runner.run
    settings = job.settings
    # Timing means something only on the backend that will run the bundle.
    runs_here = getattr(recipe, "validation_backend", None) in (None, recipe.backend)
    if settings.measure_speed and job.features is not None and runs_here:
        one = job.speed_feeds()
        # INT8-vs-FP32 says what quantization buys only on one backend: a recipe whose
        # backend is not ONNX Runtime supplies its own FP32 runner for this check.
        own_fp32 = recipe.speed_reference(job) if hasattr(recipe, "speed_reference") else None
        try:
            speed = validate.measure_speed(
                {"fp32": own_fp32.run if own_fp32 else reference, "converted": candidate}, one,
                budget_s=SPEED_CHECK_SECONDS)
        finally:
            if own_fp32 is not None:
                own_fp32.close()
        ratio = speed["converted"] / speed["fp32"]
        validation["speed"] = {"batch": len(next(iter(one.values()))), "fp32_ms": round(speed["fp32"], 4),
                               "converted_ms": round(speed["converted"], 4),
                               "ratio": round(ratio, 3), "machine": job.features.get("model")}
        # Within 5% is noise on a shared machine: "no faster" is what users need to hear.
        if ratio > NO_GAIN_RATIO and settings.precision == "int8":
            notes.append("On this CPU the INT8 model is no faster than FP32 with {} ({:.2f}x "
                         "the FP32 latency at batch {}). {}".format(
                             recipe.backend, ratio, validation["speed"]["batch"],
                             recipe.slow_int8_hint))
    return validation, results
