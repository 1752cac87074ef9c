"""Accuracy metrics of a converted model against FP32, and the accuracy budget (issue 4).

Per output, streamed over batches (:class:`OutputStats`): cosine similarity per
sample (mean and min), max and mean absolute error, SQNR in dB, and for
classifier outputs ([N, C], C > 1) top-1 agreement with FP32, and top-1 / top-k
accuracy against labels when the data has them.

A user can add a metric of their own, a callable
``metric(reference_outputs, candidate_outputs, labels) -> float`` (higher is
better) that sees the whole evaluation set at once: dicts output name -> array
with every sample stacked on axis 0, and the labels as one int64 array or None.

:class:`ReferenceOutputs` runs the FP32 model over the evaluation set once and
keeps its outputs (and, when they fit, the inputs), so every candidate a
sensitivity pass or a budget search builds is compared without running FP32
again (issue 4, requirement 5).  :class:`Budget` says what "accurate enough"
means and checks :class:`Results` against it.

Only numpy is needed here.
"""

import itertools
import math
from typing import NamedTuple, Optional

import numpy as np

from ..errors import DataError, EdgeInferError, UsageError, first_line

# Evaluation inputs are kept in memory up to this many bytes (default of
# ReferenceOutputs); a larger set is read again from its files for each candidate.
MAX_CACHED_FEED_BYTES = 256 * 1024 * 1024


def is_classifier_output(array):
    """A [N, C] output with C > 1 is read as class scores."""
    return array.ndim == 2 and array.shape[1] > 1


def sqnr_db(signal, noise):
    """Signal-to-quantization-noise ratio in dB from summed squares.

    Returns:
        None when ``noise`` is 0 (identical tensors: infinite, which JSON cannot
        hold), ``-inf`` when the signal is 0 but the noise is not, else the dB value.
    """
    if noise == 0:
        return None
    if signal == 0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


class OutputStats(object):
    """Streams one output's metrics over batches.

    Args:
        name: the output's name.
        top_k: also measure top-k accuracy against labels for this k (default None:
            top-1 only); skipped for outputs with k classes or fewer.
    """

    def __init__(self, name, top_k=None):
        self.name = name
        self.top_k = top_k
        self.samples = 0
        self.cos_sum = 0.0
        self.cos_min = 1.0
        self.max_abs = 0.0
        self.abs_sum = 0.0
        self.values = 0
        self.signal = 0.0
        self.noise = 0.0
        self.classifier = True
        self.agree = 0
        self.correct_ref = 0
        self.correct = 0
        self.correct_k_ref = 0
        self.correct_k = 0
        self.classes = None
        self.labelled = 0

    def add(self, ref, out, labels=None):
        """Fold one batch in: ``ref`` and ``out`` with samples on axis 0."""
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        n = ref.shape[0] if ref.ndim else 1
        a = ref.reshape(n, -1)
        b = out.reshape(n, -1)
        dots = (a * b).sum(axis=1)
        norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0),
                           np.where(np.abs(a - b).max(axis=1) == 0, 1.0, 0.0))
        diff = np.abs(a - b)
        self.samples += n
        self.cos_sum += float(cos.sum())
        self.cos_min = min(self.cos_min, float(cos.min()))
        self.max_abs = max(self.max_abs, float(diff.max()) if diff.size else 0.0)
        self.abs_sum += float(diff.sum())
        self.values += diff.size
        self.signal += float((a * a).sum())
        self.noise += float((diff * diff).sum())
        self.classifier = self.classifier and is_classifier_output(ref)
        if self.classifier:
            self.classes = ref.shape[1]
            top_ref = ref.argmax(axis=1)
            top = out.argmax(axis=1)
            self.agree += int((top_ref == top).sum())
            if labels is not None:
                labels = np.asarray(labels)
                self.labelled += len(labels)
                self.correct_ref += int((top_ref == labels).sum())
                self.correct += int((top == labels).sum())
                if self.top_k and self.classes > self.top_k:
                    self.correct_k_ref += _in_top_k(ref, labels, self.top_k)
                    self.correct_k += _in_top_k(out, labels, self.top_k)

    def result(self):
        """The metrics as a JSON-ready dict (keys as in the manifest's validation)."""
        data = {
            "samples": self.samples,
            "cosine_mean": self.cos_sum / max(self.samples, 1),
            "cosine_min": self.cos_min,
            "max_abs_error": self.max_abs,
            "mean_abs_error": self.abs_sum / max(self.values, 1),
            "sqnr_db": sqnr_db(self.signal, self.noise),
        }
        if self.classifier and self.samples:
            data["top1_agreement"] = self.agree / float(self.samples)
        if self.classifier and self.labelled:
            data["top1_fp32"] = self.correct_ref / float(self.labelled)
            data["top1"] = self.correct / float(self.labelled)
            # From the counts, so a 1-in-500 change is exactly 0.2 points.
            data["top1_drop_points"] = 100.0 * (self.correct_ref - self.correct) / float(
                self.labelled)
            if self.top_k and self.classes > self.top_k:
                key = "top{}".format(self.top_k)
                data[key + "_fp32"] = self.correct_k_ref / float(self.labelled)
                data[key] = self.correct_k / float(self.labelled)
        return data


def _in_top_k(scores, labels, k):
    # argpartition: the k best classes of each row, unordered, in O(C).
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return int((best == labels[:, None]).any(axis=1).sum())


def metric_name(metric):
    """A user metric's name for tables and the manifest (its ``__name__`` when it has one)."""
    return getattr(metric, "__name__", None) or type(metric).__name__


class Results(NamedTuple):
    """One candidate's metrics on the evaluation set.

    Attributes:
        outputs: output name -> metrics dict (see :class:`OutputStats`).
        samples: evaluation samples.
        labelled: how many of them had labels (0: no labels).
        metric: the user metric's value, or None when none was given.
        metric_name: its name, or None.
    """

    outputs: dict
    samples: int
    labelled: int
    metric: Optional[float] = None
    metric_name: Optional[str] = None

    def to_dict(self):
        """JSON-ready form (what the manifest records)."""
        data = {"samples": self.samples, "outputs": self.outputs}
        if self.metric_name is not None:
            data["metric"] = {"name": self.metric_name, "value": self.metric}
        return data


class ReferenceOutputs(object):
    """The FP32 model's outputs on an evaluation set, computed once.

    The reference model runs over the data on the first use and never again;
    every :func:`evaluate` afterwards runs only the candidate.  The inputs are
    kept in memory too when they take at most ``max_cached_bytes``; a larger set
    is read again from ``batches`` for each candidate (its outputs are checked
    to come in the same batches as the first time).

    Args:
        run: callable feeds -> dict output name -> array (the FP32 model).
        batches: callable () -> iterable of (feeds, labels or None); called again
            only when the inputs were too big to keep.
        output_names: the outputs to compare (default None: every output ``run``
            returns).
        max_cached_bytes: keep the inputs in memory up to this size (default
            :data:`MAX_CACHED_FEED_BYTES`, 256 MiB).

    Raises:
        DataError: (on first use) no evaluation data, or the FP32 model cannot run
            on it (e.g. its shapes do not match the model's inputs).
    """

    def __init__(self, run, batches, output_names=None, max_cached_bytes=MAX_CACHED_FEED_BYTES):
        self._run = run
        self._batches = batches
        self._names = None if output_names is None else list(output_names)
        self._max_bytes = max_cached_bytes
        self._outputs = None     # per batch: dict name -> array
        self._labels = None      # per batch: array or None
        self._feeds = None       # per batch: feeds, or None when too big to keep
        self._stacked = None

    @property
    def output_names(self):
        """The compared outputs, in the model's order."""
        self._compute()
        return list(self._names)

    @property
    def samples(self):
        """Number of evaluation samples."""
        self._compute()
        return sum(_count(out) for out in self._outputs)

    @property
    def labelled(self):
        """Number of samples with labels (0 when the data has none)."""
        self._compute()
        return sum(len(labels) for labels in self._labels if labels is not None)

    def _compute(self):
        if self._outputs is not None:
            return
        outputs, labels, feeds, size = [], [], [], 0
        for index, (batch, batch_labels) in enumerate(self._batches()):
            try:
                out = self._run(batch)
            except EdgeInferError:
                raise
            except Exception as exc:
                raise DataError(
                    "The FP32 model cannot run on evaluation batch {}: {}".format(
                        index + 1, first_line(exc)),
                    "The evaluation data must fit the model's inputs ({}).".format(
                        ", ".join("{} {}".format(k, list(np.shape(v)))
                                  for k, v in sorted(batch.items()))))
            if self._names is None:
                self._names = list(out)
            missing = [name for name in self._names if name not in out]
            if missing:
                raise UsageError("The model has no output named {}.".format(
                    ", ".join(repr(m) for m in missing)),
                    "Its outputs: {}.".format(", ".join(sorted(out))))
            outputs.append(dict((name, np.asarray(out[name])) for name in self._names))
            labels.append(None if batch_labels is None else np.asarray(batch_labels))
            if feeds is not None:
                size += sum(np.asarray(v).nbytes for v in batch.values())
                if size <= self._max_bytes:
                    feeds.append(batch)
                else:
                    feeds = None
        if not outputs:
            raise DataError("The evaluation data holds no samples.",
                            "Give an evaluation set with at least one sample.")
        self._outputs, self._labels, self._feeds = outputs, labels, feeds

    def items(self):
        """Yield (feeds, labels or None, reference outputs) batch by batch."""
        self._compute()
        if self._feeds is not None:
            for feeds, labels, ref in zip(self._feeds, self._labels, self._outputs):
                yield feeds, labels, ref
            return
        count = 0
        for (feeds, _), labels, ref in zip(self._batches(), self._labels, self._outputs):
            # A reader that changed its batches would pair inputs with wrong references.
            size = _count(next(iter(feeds.values()))) if feeds else 0
            if size != _count(ref):
                raise DataError("The evaluation data changed while it was being used "
                                "(batch {} has {} samples, before {}).".format(
                                    count + 1, size, _count(ref)),
                                "Keep the evaluation files unchanged during conversion.")
            count += 1
            yield feeds, labels, ref
        if count != len(self._outputs):
            raise DataError("The evaluation data changed while it was being used ({} batches, "
                            "before {}).".format(count, len(self._outputs)),
                            "Keep the evaluation files unchanged during conversion.")

    def head(self, samples):
        """The first whole batches holding at least ``samples`` samples.

        The part shares this object's FP32 outputs (nothing is run again); a
        sensitivity pass measures its many variants on it and the budget search
        validates on the whole set.

        Args:
            samples: how many samples at least (None: all, i.e. this object).
        """
        self._compute()
        if samples is None or samples >= self.samples:
            return self
        count, batches = 0, 0
        while count < max(samples, 1):
            count += _count(self._outputs[batches])
            batches += 1
        part = ReferenceOutputs(self._run, lambda: itertools.islice(self._batches(), batches),
                                self._names, self._max_bytes)
        part._outputs = self._outputs[:batches]
        part._labels = self._labels[:batches]
        part._feeds = None if self._feeds is None else self._feeds[:batches]
        return part

    def stacked(self):
        """(outputs, labels): every reference output and label stacked on axis 0, once."""
        self._compute()
        if self._stacked is None:
            self._stacked = (_stack(self._outputs, self._names), _stack_labels(self._labels))
        return self._stacked


def _count(value):
    if isinstance(value, dict):
        value = next(iter(value.values()))
    shape = np.shape(value)
    return shape[0] if shape else 1


def _stack(per_batch, names):
    return dict((name, np.concatenate([np.atleast_1d(b[name]) for b in per_batch], axis=0))
                for name in names)


def _stack_labels(per_batch):
    if any(labels is None for labels in per_batch):
        return None
    return np.concatenate(per_batch, axis=0)


def evaluate(reference, candidate_run, metric=None, top_k=5):
    """Run a candidate over the evaluation set and measure it against FP32.

    Args:
        reference: the :class:`ReferenceOutputs` of the evaluation set.
        candidate_run: callable feeds -> dict output name -> array.
        metric: a user metric ``metric(reference_outputs, candidate_outputs,
            labels) -> float``, higher is better (default None).
        top_k: also measure top-k accuracy (default 5; None: top-1 only).

    Returns:
        :class:`Results`.

    Raises:
        UsageError: the user metric failed or returned something that is not a
            finite number.
    """
    names = reference.output_names
    stats = dict((name, OutputStats(name, top_k)) for name in names)
    kept = [] if metric is not None else None
    for feeds, labels, ref in reference.items():
        out = candidate_run(feeds)
        for name in names:
            stats[name].add(ref[name], out[name], labels)
        if kept is not None:
            kept.append(dict((name, np.asarray(out[name])) for name in names))
    value = name = None
    if metric is not None:
        ref_all, labels = reference.stacked()
        value = call_metric(metric, ref_all, _stack(kept, names), labels)
        name = metric_name(metric)
    return Results(dict((n, stats[n].result()) for n in names), reference.samples,
                   reference.labelled, value, name)


def call_metric(metric, reference_outputs, candidate_outputs, labels):
    """Call a user metric and check that it returned a finite number.

    Raises:
        UsageError: the metric raised, or returned a non-number, NaN or infinity.
    """
    name = metric_name(metric)
    try:
        value = metric(reference_outputs, candidate_outputs, labels)
    except EdgeInferError:
        raise
    except Exception as exc:
        raise UsageError("The metric {!r} failed: {}".format(name, first_line(exc)),
                         "It is called as metric(reference_outputs, candidate_outputs, "
                         "labels): dicts output name -> array (all samples), labels an "
                         "int64 array or None.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or not math.isfinite(number):
        raise UsageError("The metric {!r} returned {!r}.".format(name, value),
                         "A metric returns one finite number, higher is better.")
    return number


class Budget(object):
    """How much accuracy a converted model may lose; frozen once made.

    Exactly one of the limits is given:

    - ``max_accuracy_drop``: top-1 points lost against FP32 on labelled data,
      e.g. 1.0 (needs labels);
    - ``min_cosine``: mean per-sample cosine similarity with FP32, e.g. 0.995;
    - ``max_abs_error``: largest absolute difference from FP32 over all values;
    - ``metric`` with ``min_value``: a user metric (see :func:`evaluate`) that
      must reach ``min_value``.

    Args:
        output: the output the limit applies to (default None: for accuracy, the
            model's classifier output, which must then be the only one; for the
            other limits, the worst of all outputs).

    Raises:
        UsageError: none or several limits, a limit out of its range, ``min_value``
            without ``metric`` (or the reverse), or a metric that is not callable.
    """

    __slots__ = ("kind", "limit", "metric", "output")

    KINDS = ("max_accuracy_drop", "min_cosine", "max_abs_error", "metric")

    def __init__(self, max_accuracy_drop=None, min_cosine=None, max_abs_error=None,
                 metric=None, min_value=None, output=None):
        given = [(kind, value) for kind, value in (
            ("max_accuracy_drop", max_accuracy_drop), ("min_cosine", min_cosine),
            ("max_abs_error", max_abs_error), ("metric", metric)) if value is not None]
        if len(given) != 1:
            raise UsageError(
                "An accuracy budget takes exactly one limit; got {}.".format(
                    ", ".join(kind for kind, _ in given) if given else "none"),
                "Give one of max_accuracy_drop (top-1 points, needs labels), min_cosine, "
                "max_abs_error, or metric with min_value.")
        kind, value = given[0]
        if kind == "metric":
            if not callable(metric):
                raise UsageError("The budget's metric must be callable; got {!r}.".format(metric),
                                 "Pass a function metric(reference_outputs, "
                                 "candidate_outputs, labels) -> float.")
            if min_value is None:
                raise UsageError("A budget on a custom metric needs min_value.",
                                 "Say the value the metric must reach, e.g. min_value=0.9.")
            limit = _number("min_value", min_value)
        else:
            if min_value is not None:
                raise UsageError("min_value applies to a custom metric, not to {}.".format(kind),
                                 "Pass metric=... with min_value, or drop min_value.")
            limit = _number(kind, value)
            if kind == "min_cosine" and not -1.0 <= limit <= 1.0:
                raise UsageError("min_cosine must be between -1 and 1; got {}.".format(limit),
                                 "Typical budgets are 0.99 to 0.9999.")
            if kind in ("max_accuracy_drop", "max_abs_error") and limit < 0:
                raise UsageError("{} cannot be negative; got {}.".format(kind, limit),
                                 "Give 0 or more.")
            metric = None
        for slot, item in (("kind", kind), ("limit", limit), ("metric", metric),
                           ("output", output)):
            object.__setattr__(self, slot, item)

    def __setattr__(self, name, value):
        raise AttributeError("A Budget is frozen; make a new one.")

    def __delattr__(self, name):
        raise AttributeError("A Budget is frozen; make a new one.")

    def _key(self):
        return (self.kind, self.limit, self.metric, self.output)

    def __eq__(self, other):
        return isinstance(other, Budget) and self._key() == other._key()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        if self.kind == "metric":
            args = "metric={}, min_value={!r}".format(metric_name(self.metric), self.limit)
        else:
            args = "{}={!r}".format(self.kind, self.limit)
        if self.output is not None:
            args += ", output={!r}".format(self.output)
        return "Budget({})".format(args)

    @property
    def needs_labels(self):
        """True when the limit is measured against labels."""
        return self.kind == "max_accuracy_drop"

    @property
    def higher_is_better(self):
        """Direction of :meth:`achieved`: True for cosine and metrics, False for drop and error."""
        return self.kind in ("min_cosine", "metric")

    @property
    def what(self):
        """The measured quantity in words, e.g. ``"top-1 drop (points)"``."""
        return {"max_accuracy_drop": "top-1 drop (points)", "min_cosine": "cosine",
                "max_abs_error": "max abs error"}.get(self.kind) or metric_name(self.metric)

    def describe(self):
        """The budget in words, e.g. ``"top-1 drop <= 0.5 points"``."""
        where = " on {!r}".format(self.output) if self.output is not None else ""
        if self.kind == "max_accuracy_drop":
            return "top-1 drop <= {:g} points{}".format(self.limit, where)
        if self.kind == "min_cosine":
            return "cosine >= {:g}{}".format(self.limit, where)
        if self.kind == "max_abs_error":
            return "max abs error <= {:g}{}".format(self.limit, where)
        return "{} >= {:g}".format(metric_name(self.metric), self.limit)

    def to_dict(self):
        """JSON-ready form for the manifest (a custom metric by its name)."""
        data = {"kind": self.kind, "limit": self.limit, "output": self.output,
                "text": self.describe()}
        if self.kind == "metric":
            data["metric"] = metric_name(self.metric)
        return data

    def check_data(self, labelled, output_names=None):
        """Refuse evaluation data this budget cannot be measured on, before any work.

        Args:
            labelled: True when the evaluation data has labels.
            output_names: the model's outputs, to check ``output`` (default None).

        Raises:
            UsageError: an accuracy budget without labels, or an unknown output.
        """
        if self.needs_labels and not labelled:
            raise UsageError("An accuracy-drop budget needs labelled evaluation data; this "
                             "data has no labels.",
                             "Add labels (labels.csv, class subfolders, or a 'labels' array "
                             "in the .npz), or use min_cosine / max_abs_error instead.")
        if output_names is not None and self.output is not None and (
                self.output not in output_names):
            raise UsageError("The budget names output {!r}, which the model does not "
                             "have.".format(self.output),
                             "Its outputs: {}.".format(", ".join(output_names)))

    def achieved(self, results):
        """The budget's quantity measured in ``results`` (see :attr:`what`).

        Raises:
            UsageError: the results cannot measure it (no labels, no classifier
                output, an unknown output, or no metric value).
        """
        outputs = results.outputs
        if self.output is not None and self.output not in outputs:
            raise UsageError("The budget names output {!r}, which was not measured.".format(
                self.output), "Measured outputs: {}.".format(", ".join(sorted(outputs))))
        chosen = [self.output] if self.output is not None else sorted(outputs)
        if self.kind == "metric":
            if results.metric is None:
                raise UsageError("The budget's metric {!r} was not measured.".format(
                    metric_name(self.metric)),
                    "Pass the same metric to the evaluation as to the budget.")
            return results.metric
        if self.kind == "min_cosine":
            return min(outputs[name]["cosine_mean"] for name in chosen)
        if self.kind == "max_abs_error":
            return max(outputs[name]["max_abs_error"] for name in chosen)
        if not results.labelled:
            self.check_data(False)
        scored = [name for name in chosen if "top1_drop_points" in outputs[name]]
        if not scored:
            raise UsageError("An accuracy-drop budget needs a classifier output ([batch, "
                             "classes]); {} is not one.".format(", ".join(chosen)),
                             "Use min_cosine or max_abs_error for this model.")
        if len(scored) > 1:
            raise UsageError("The model has several classifier outputs ({}); the budget "
                             "does not say which one it is for.".format(", ".join(scored)),
                             "Pass output=NAME with the budget.")
        return outputs[scored[0]]["top1_drop_points"]

    def met_by(self, value):
        """True when a measured value (see :meth:`achieved`) keeps the budget."""
        if self.higher_is_better:
            return value >= self.limit
        # Top-1 points come from counts: allow for float rounding of 100 * (a - b).
        slack = 1e-9 if self.kind == "max_accuracy_drop" else 0.0
        return value <= self.limit + slack

    def check(self, results):
        """Whether ``results`` keep the budget.

        Returns:
            (ok, achieved): a bool and the measured value.

        Raises:
            UsageError: as :meth:`achieved`.
        """
        value = self.achieved(results)
        return self.met_by(value), value


def _number(name, value):
    if isinstance(value, bool):
        raise UsageError("{} must be a number; got {!r}.".format(name, value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError("{} must be a number; got {!r}.".format(name, value))
    if not math.isfinite(number):
        raise UsageError("{} must be finite; got {!r}.".format(name, value))
    return number
