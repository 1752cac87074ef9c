"""What a conversion recipe gets and gives back.

A recipe turns the checked source model into the files of one backend.  Each
backend's recipe lives in its own module and is imported only when chosen;
adding one is its module plus one line in :data:`RECIPES`.
"""

import contextlib
import importlib
import logging
import time
from typing import NamedTuple, Optional

from ..errors import ConversionError, EdgeInferError, UsageError, first_line
from ..memory import peak_rss_mb, reset_peak
from ..tensors import fixed_batch

log = logging.getLogger("edgeinfer.conversion")

RECIPES = {
    "onnxruntime": "edgeinfer.conversion.ort:OrtRecipe",
    "openvino": "edgeinfer.conversion.openvino:OpenVinoRecipe",
    "tensorrt": "edgeinfer.conversion.tensorrt:TensorRtRecipe",
}


def get_recipe(backend):
    """An instance of the recipe that builds bundles for ``backend``.

    Raises:
        UsageError: no recipe builds for that backend in this edgeinfer.
    """
    try:
        target = RECIPES[backend]
    except KeyError:
        raise UsageError("This edgeinfer cannot build bundles for the {} backend yet.".format(
            backend), "Targets it can build: {}.".format(", ".join(sorted(RECIPES))))
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)()


class Job(NamedTuple):
    """Everything a recipe needs, checked by the pipeline.

    Attributes:
        source: the :class:`~edgeinfer.conversion.source.SourceModel`.
        profile: the target :class:`~edgeinfer.profiles.Profile`.
        settings: the :class:`~edgeinfer.conversion.Settings`.
        features: :func:`~edgeinfer.profiles.cpu_features` when the target is this
            machine's kind of CPU, else None.
        calibration: the calibration Dataset, or None.
        calibration_indices: which of its samples calibrate.
        batch: batch size for calibration and validation.
        workdir: folder for intermediate files.
        reference: the FP32 model's outputs on the evaluation set
            (:class:`~edgeinfer.conversion.metrics.ReferenceOutputs`, computed on
            first use), or None.
        budget: the accuracy :class:`~edgeinfer.conversion.metrics.Budget`, or None.
        reference_model: the FP32 ONNX the reference outputs come from (default None:
            the source; for a Q/DQ source, see :mod:`edgeinfer.conversion.prequantized`).
    """

    source: object
    profile: object
    settings: object
    features: Optional[dict]
    calibration: object
    calibration_indices: Optional[list]
    batch: int
    workdir: str
    reference: object = None
    budget: object = None
    reference_model: Optional[str] = None

    def calibration_batches(self):
        """Calibration feeds, one batch in memory at a time."""
        # A model with a fixed batch cannot run a short last batch.
        drop_last = fixed_batch(self.source.inputs) is not None
        for feeds, _ in self.calibration.batches(self.batch, indices=self.calibration_indices,
                                                 drop_last=drop_last):
            yield feeds

    def speed_feeds(self):
        """One sample of the evaluation set (a whole batch for a fixed-batch model)."""
        feeds = next(iter(self.reference.items()))[0]
        if fixed_batch(self.source.inputs):
            return feeds
        return dict((name, value[:1]) for name, value in feeds.items())


class Result(NamedTuple):
    """What a recipe built.

    Attributes:
        files: dict member name -> path of each file the bundle must hold.
        entry: the member name of the model's main file.
        method: ``none`` | ``static`` | ``dynamic`` (INT8 method used).
        quantization: what was chosen and why (goes to the manifest).
        calibration: calibration summary, or None.
        backend_version: the backend's version on this workstation.
        min_backend_version: the oldest backend version that runs the files.
        notes: messages for the user.
        accuracy_control: what the budget search chose (the manifest's
            ``accuracy_control``), or None without a budget.
        engine: how the device builds its engine (the manifest's ``engine``, see
            :mod:`edgeinfer.conversion.tensorrt`), or None for backends that load the files.
    """

    files: dict
    entry: str
    method: str
    quantization: dict
    calibration: Optional[dict]
    backend_version: str
    min_backend_version: Optional[str]
    notes: list
    accuracy_control: Optional[dict] = None
    engine: Optional[dict] = None


def run_calibration(job, calibrate):
    """Run ``calibrate(batches)`` and summarise it: samples, time, peak memory.

    Returns:
        (whatever ``calibrate`` returned, summary dict)
    """
    reset_peak()
    before = peak_rss_mb()
    counted = []

    def batches():
        for feeds in job.calibration_batches():
            counted.append(1)
            yield feeds

    start = time.perf_counter()
    result = calibrate(batches())
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    summary = {"data": job.calibration.describe(), "samples": len(job.calibration_indices),
               "batches": len(counted), "batch_size": job.batch,
               "method": job.settings.calibrate_method, "seconds": round(seconds, 3),
               "peak_rss_mb": None if peak is None else round(peak, 1),
               "rss_before_mb": None if before is None else round(before, 1)}
    log.info("calibrated on %d samples in %.1f s", summary["samples"], seconds)
    return result, summary


@contextlib.contextmanager
def recipe_step(what):
    """Turn a toolchain's own exception into a ConversionError naming the step."""
    try:
        yield
    except EdgeInferError:
        raise
    except Exception as exc:
        raise ConversionError("{} failed: {}".format(what, first_line(exc)),
                              "Run with --debug for the full error; if the model runs in "
                              "ONNX Runtime as FP32, please report it.")
