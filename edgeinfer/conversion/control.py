"""Accuracy control inside ``convert`` (issue 4): budget search per recipe, kept-op latency.

A recipe given a :class:`~edgeinfer.conversion.metrics.Budget` (``job.budget``)
hands its quantizer to one of the functions here, which return the manifest's
``accuracy_control`` dict:

* :func:`search_ort` — ONNX Runtime static INT8: per-layer sensitivity
  (:mod:`~edgeinfer.conversion.sensitivity`) on the recipe's own calibration
  ranges, then the budget search (:mod:`~edgeinfer.conversion.budget`).
* :func:`search_openvino` — OpenVINO (NNCF) static INT8: the same ranking,
  measured with ONNX Runtime's quantizer on ranges calibrated from the same
  samples (an NNCF build per layer would cost a full statistics pass each), then
  the search re-validates real NNCF models, each built with the kept ops in
  NNCF's ``ignored_scope`` and run by the OpenVINO backend.  Ranking with one
  toolchain and checking with the other is sound because the search never infers:
  every configuration it returns was measured on the shipped backend.
* :func:`check_whole` — methods without per-op control here (ONNX Runtime
  dynamic, OpenVINO weight-only): the model is measured and refused when it
  misses the budget, with the method that can do better.

Every entry records the ops kept in higher precision as ``fp32_layers`` (ONNX
node names), the list a TensorRT build pins to FP32 (issue 5), and, when the
target is this machine's CPU, what keeping them costs in latency.
"""

import logging
import os
import shutil

from ..errors import ConversionError
from . import metrics as metrics_mod
from . import validate

log = logging.getLogger("edgeinfer.conversion")

# Kept groups whose latency is measured one by one; beyond it only the total is.
LATENCY_GROUPS = 8
# Seconds of interleaved timing for the kept-op latency check.
LATENCY_SECONDS = 1.5


def _workdir(job, name):
    folder = os.path.join(job.workdir, name)
    os.makedirs(folder, exist_ok=True)
    return folder


def _record(result, sensitivity, backend):
    """The manifest's ``accuracy_control`` from a search and its sensitivity pass."""
    control = result.to_dict()
    control["backend"] = backend
    control["sensitivity"] = {
        "method": sensitivity.method, "samples": sensitivity.samples,
        "seconds": round(sensitivity.seconds, 3), "builds": sensitivity.builds,
        "all_int8": sensitivity.achieved,
        "ranking": [{"group": layer.name, "op_type": layer.op_type,
                     "error_db": None if layer.error_db == float("-inf") else
                     round(layer.error_db, 2)} for layer in sensitivity.layers[:20]]}
    return control


def search_ort(job, prepared, cache, kind, variant, out, builder_options=None):
    """Budgeted ONNX Runtime static INT8: the fewest ops in FP32 that keep ``job.budget``.

    Args:
        job: the :class:`~edgeinfer.conversion.recipe.Job` (with ``reference`` and ``budget``).
        prepared: the pre-processed FP32 model.
        cache, kind: the calibration range cache and method (``ort.calibrate``).
        variant: the :class:`~edgeinfer.conversion.ort.Int8Variant`.
        out: where the chosen model is written.
        builder_options: more :class:`~edgeinfer.conversion.sensitivity.QdqBuilder`
            arguments, e.g. the TensorRT recipe's ``extra_options`` and ``finish``
            (default None).

    Returns:
        the ``accuracy_control`` dict.

    Raises:
        ConversionError: no mixed precision meets the budget.
    """
    from .sensitivity import QdqBuilder, mixed_precision, ort_runner
    builder = QdqBuilder(prepared, cache, kind, variant, job.settings.per_channel,
                         _workdir(job, "accuracy-control"), **(builder_options or {}))
    sens, result = mixed_precision(builder, job.reference, job.budget)
    shutil.copyfile(result.model, out)
    control = _record(result, sens, "onnxruntime")
    if result.kept and _measures_speed(job):
        control["latency"] = kept_latency(
            job, result, sens.baseline_model,
            lambda excluded: builder.build(exclude=excluded), lambda path: ort_runner(path))
    log.info("accuracy control: %s", "; ".join(_lines(control)))
    return control


def search_openvino(job, source_path, build, runner):
    """Budgeted OpenVINO static INT8: rank with ONNX Runtime, search with NNCF builds.

    Args:
        job: the :class:`~edgeinfer.conversion.recipe.Job`.
        source_path: the ONNX model NNCF quantizes (its node names are the ones
            ``build`` takes).
        build: callable list of ONNX node names to keep in FP32 -> path of an IR
            quantized by NNCF with them ignored.
        runner: callable IR path -> (feeds -> outputs), the OpenVINO backend.

    Returns:
        (the chosen IR path, the ``accuracy_control`` dict)

    Raises:
        ConversionError: no mixed precision meets the budget.
    """
    from . import ort as ort_recipe
    from .budget import search
    from .sensitivity import QdqBuilder, analyze
    folder = _workdir(job, "accuracy-control")
    prepared = ort_recipe.prepare(source_path, os.path.join(folder, "ranking-prepared.onnx"),
                                  folder)
    cache, _, kind = ort_recipe.calibrate(prepared, job.calibration_batches(), "minmax", folder)
    variant = ort_recipe.INT8_VARIANTS["s8s8"]  # symmetric, as NNCF's performance preset
    builder = QdqBuilder(prepared, cache, kind, variant, job.settings.per_channel, folder)
    known = set(n.name for n in builder.model.graph.node)
    sens = analyze(builder, job.reference, job.budget, activations=False)
    budget = job.budget
    metric = budget.metric if budget.kind == "metric" else None
    baseline_path = build([])
    baseline = metrics_mod.evaluate(job.reference, runner(baseline_path), metric)
    result = search(budget, sens.layers, build,
                    lambda path: metrics_mod.evaluate(job.reference, runner(path), metric),
                    baseline=baseline)
    unknown = [name for name in result.excluded if name not in known]
    if unknown:  # cannot happen unless the ranking and the builds disagree on names
        raise ConversionError("Accuracy control kept unknown nodes: {}.".format(
            ", ".join(unknown)), "Please report it with --debug output.")
    control = _record(result, sens, "openvino")
    control["sensitivity"]["ranked_with"] = "onnxruntime QDQ (s8s8), re-validated with NNCF"
    if result.kept and _measures_speed(job):
        control["latency"] = kept_latency(job, result, baseline_path, build, runner)
    log.info("accuracy control: %s", "; ".join(_lines(control)))
    return result.model, control


def check_whole(job, path, runner, method, better):
    """Measure a model quantized without per-op control; refuse it when it misses the budget.

    Args:
        job: the :class:`~edgeinfer.conversion.recipe.Job`.
        path: the quantized model.
        runner: callable path -> (feeds -> outputs).
        method: the method's name, for the message.
        better: what to use instead, for the message's hint.

    Returns:
        the ``accuracy_control`` dict (nothing kept in FP32).

    Raises:
        ConversionError: the model misses the budget.
    """
    budget = job.budget
    budget.check_data(job.reference.labelled > 0, job.reference.output_names)
    metric = budget.metric if budget.kind == "metric" else None
    results = metrics_mod.evaluate(job.reference, runner(path), metric)
    ok, value = budget.check(results)
    if not ok:
        raise ConversionError(
            "{} INT8 misses the accuracy budget ({}): {} {:.6g}, and edgeinfer keeps single "
            "ops in FP32 only for static INT8.".format(method, budget.describe(), budget.what,
                                                      value), better)
    return {"budget": budget.to_dict(), "what": budget.what, "achieved": value, "met": True,
            "kept": [], "groups": [], "fp32_layers": [], "candidates": None, "steps": [],
            "seconds": 0.0, "method": method, "backend": None}


def _measures_speed(job):
    return job.settings.measure_speed and job.features is not None


def kept_latency(job, result, all_int8, build, runner):
    """What keeping ops in FP32 costs in latency, measured interleaved on this machine.

    The chosen model is timed against the all-INT8 model and FP32 is not needed;
    for up to :data:`LATENCY_GROUPS` kept groups, also the chosen model with that
    group quantized again, so each group's own cost is the difference.

    Returns:
        dict: ``all_int8_ms``, ``chosen_ms``, ``cost_ms`` (chosen - all INT8),
        ``batch``, and ``groups``: [{group, cost_ms}] when measured one by one.
    """
    feeds = job.speed_feeds()
    runs = {"all_int8": runner(all_int8), "chosen": runner(result.model)}
    groups = list(result.groups)
    per_group = groups if len(groups) <= LATENCY_GROUPS else []
    for group in per_group:
        others = [op.name for op in result.kept if op.group != group]
        runs["without:" + group] = runner(build(others))
    speed = validate.measure_speed(runs, feeds, budget_s=LATENCY_SECONDS)
    chosen = speed["chosen"]
    data = {"batch": len(next(iter(feeds.values()))),
            "all_int8_ms": round(speed["all_int8"], 4), "chosen_ms": round(chosen, 4),
            "cost_ms": round(chosen - speed["all_int8"], 4),
            "groups": [{"group": g, "cost_ms": round(chosen - speed["without:" + g], 4)}
                       for g in per_group]}
    return data


def _lines(control):
    from ..report import describe_control
    return describe_control(control)
