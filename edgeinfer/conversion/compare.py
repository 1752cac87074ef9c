"""``edgeinfer compare``: a bundle against its FP32 source, and where the error comes from.

:func:`compare` runs the bundle with its own backend and the source ONNX model
in ONNX Runtime FP32 over the same evaluation inputs (the preprocessing the
bundle records) and gives the validation table ``convert`` writes.  With
``per_layer`` it also ranks the quantized ops by the error each adds
(:mod:`~edgeinfer.conversion.sensitivity`): the source is prepared and
calibrated again with ONNX Runtime's quantizer, as an ONNX Runtime static
bundle was built (same INT8 variant and weight scales when the bundle says
them), so the ranking explains any bundle of that model; for an OpenVINO or
TensorRT bundle it tells where INT8 hurts this model, measured with ONNX
Runtime's kernels.
"""

import os
import shutil
import tempfile
from typing import NamedTuple, Optional

from ..errors import UsageError
from . import metrics as metrics_mod

# Groups in the per-layer table unless asked otherwise.
TABLE_LAYERS = 20


class Comparison(NamedTuple):
    """What :func:`compare` measured.

    Attributes:
        validation: the validation dict (as a manifest's ``validation``).
        sensitivity: the :class:`~edgeinfer.conversion.sensitivity.Sensitivity`, or None.
        plot: the PNG written, or None.
        notes: messages for the user.
    """

    validation: dict
    sensitivity: Optional[object]
    plot: Optional[str]
    notes: list


def compare(model, bundle, eval=None, calibration=None, per_layer=False, plot=None,
            eval_size=None, calibration_size=300, batch_size=8, workdir=None):
    """Compare ``bundle`` with its FP32 source ``model`` on evaluation data.

    Args:
        model: the source ONNX model's path.
        bundle: the ``.eib`` path.
        eval: evaluation data (image folder, ``.npz`` or ``.npy``/``.npz`` folder);
            default None: 32 seeded random inputs (and no per-layer ranking).
        calibration: calibration data for the per-layer ranking (default None: the
            evaluation data calibrates too, which the table says).
        per_layer: rank the quantized ops by the error each adds (default False).
        plot: with ``per_layer``, write a PNG bar chart here when matplotlib is
            installed (default None).
        eval_size / calibration_size: use at most this many samples (defaults: all / 300).
        batch_size: samples per run (default 8; a fixed-batch model uses its own).
        workdir: folder for intermediate files (default: a temporary one, removed).

    Returns:
        :class:`Comparison`.

    Raises:
        UsageError, DataError, BundleError, ModelError: with a message and a hint.
    """
    from ..runtime.session import load
    from . import _batch_size, _ort_runner, _open_data, iter_batches, synthetic_batches
    from .source import load_source
    from ..preprocess import Preprocess
    from ..tensors import fixed_batch
    if plot and not per_layer:
        raise UsageError("--plot draws the per-layer ranking.", "Add --per-layer.")
    if per_layer and eval is None:
        raise UsageError("--per-layer needs evaluation data.", "Pass --eval DIR.")
    source = load_source(model)
    session = load(bundle)
    notes = []
    try:
        manifest = session.manifest
        recorded = (manifest.get("source") or {}).get("sha256")
        if recorded and recorded != source.sha256:
            notes.append("{} is not the model this bundle was converted from (sha256 "
                         "differs); the comparison may not mean much.".format(model))
        preprocess = (Preprocess.from_dict(manifest["preprocess"])
                      if manifest.get("preprocess") else None)
        batch = _batch_size(source.inputs, batch_size)
        drop_last = fixed_batch(source.inputs) is not None
        if eval is not None:
            data = _open_data(eval, source.inputs, preprocess, "evaluation")
            count = len(data) if eval_size is None else min(len(data), eval_size)
            batches = lambda: iter_batches(data, range(count), batch, drop_last=drop_last)
            kind, where = "eval set", data.describe()
        else:
            data, count = None, 32
            batches = lambda: synthetic_batches(source.inputs, count, batch)
            kind, where = "random inputs (no data given)", None
        reference = metrics_mod.ReferenceOutputs(_ort_runner(source.path), batches,
                                                 [o.name for o in source.outputs])
        results = metrics_mod.evaluate(reference, session.run, top_k=None)
        validation = {"data": kind, "where": where, "samples": reference.samples,
                      "outputs": results.outputs}
    finally:
        session.close()
    sens = written = None
    if per_layer:
        own = workdir is None
        folder = tempfile.mkdtemp(prefix="edgeinfer-compare-") if own else workdir
        try:
            sens, used = _per_layer(source, manifest, reference, data, calibration, preprocess,
                                    calibration_size, batch, drop_last, folder)
            notes.extend(used)
            if plot:
                from .sensitivity import plot as draw
                written = draw(sens, plot)
                if written is None:
                    notes.append("No plot: matplotlib is not installed "
                                 "(pip install edgeinfer[report]).")
        finally:
            if own:
                shutil.rmtree(folder, ignore_errors=True)
    return Comparison(validation, sens, written, notes)


def _per_layer(source, manifest, reference, eval_data, calibration, preprocess, size, batch,
               drop_last, folder):
    """Prepare, calibrate and rank the source with ONNX Runtime's quantizer."""
    from . import _open_data
    from . import ort as ort_recipe
    from .sensitivity import QdqBuilder, analyze
    notes = []
    quant = manifest.get("quantization") or {}
    backend = manifest["target"]["backend"]
    name = quant.get("variant") if backend == "onnxruntime" else None
    if name not in ort_recipe.INT8_VARIANTS:
        from ..profiles import cpu_features, resolve_target
        name, _ = ort_recipe.default_int8_variant(cpu_features(), resolve_target("cpu"))
    if backend != "onnxruntime" or manifest.get("method") != "static":
        notes.append("The ranking quantizes the model with ONNX Runtime static INT8 ({}); the "
                     "bundle is {} {} {}.".format(name, backend, manifest["precision"],
                                                  manifest.get("method")))
    per_channel = quant.get("per_channel", True)
    if calibration is not None:
        data = _open_data(calibration, source.inputs, preprocess, "calibration")
    else:
        data = eval_data
        notes.append("Calibrated on the evaluation data (no --calibration given).")
    indices = range(min(len(data), size))
    batches = (feeds for feeds, _ in data.batches(batch, indices=indices, drop_last=drop_last))
    prepared = ort_recipe.prepare(source.path, os.path.join(folder, "prepared.onnx"), folder)
    cache, _, kind = ort_recipe.calibrate(prepared, batches, "minmax", folder)
    builder = QdqBuilder(prepared, cache, kind, ort_recipe.INT8_VARIANTS[name], per_channel,
                         folder)
    return analyze(builder, reference, activations=True), notes


def describe(comparison, limit=TABLE_LAYERS):
    """The comparison as text: validation table, then the per-layer ranking."""
    from ..report import validation_table
    from .sensitivity import format_table
    v = comparison.validation
    lines = ["Compared on {} {}{}:".format(v["samples"], v["data"],
                                           " ({})".format(v["where"]) if v["where"] else "")]
    lines.append(validation_table(v))
    if comparison.sensitivity is not None:
        lines.append("")
        lines.append(format_table(comparison.sensitivity, limit=limit))
    if comparison.plot:
        lines.append("plot: {}".format(comparison.plot))
    lines.extend("note: {}".format(note) for note in comparison.notes)
    return "\n".join(lines)
