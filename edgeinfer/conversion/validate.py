"""Validation: the converted model against FP32, on the same inputs.

Per output: cosine similarity (per sample; mean and min), max and mean absolute
error, SQNR in dB, and for classifier outputs top-1 agreement with FP32 and
top-1 accuracy against labels when the data has them.
"""

import math
import time

import numpy as np

# Seconds to let a previous model's spinning pool threads go idle before timing the
# next one (they spin about 40 ms on this class of machine).
SPIN_PAUSE_S = 0.06


def is_classifier_output(array):
    """A [N, C] output with C > 1 is read as class scores."""
    return array.ndim == 2 and array.shape[1] > 1


class OutputStats(object):
    """Streams per-output metrics over batches."""

    def __init__(self, name):
        self.name = name
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
        self.labelled = 0

    def add(self, ref, out, labels=None):
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
            top_ref = ref.argmax(axis=1)
            top = out.argmax(axis=1)
            self.agree += int((top_ref == top).sum())
            if labels is not None:
                labels = np.asarray(labels)
                self.labelled += len(labels)
                self.correct_ref += int((top_ref == labels).sum())
                self.correct += int((top == labels).sum())

    def result(self):
        if self.noise == 0:
            sqnr = None  # identical outputs: infinite SQNR, which JSON cannot hold
        elif self.signal == 0:
            sqnr = float("-inf")
        else:
            sqnr = 10.0 * math.log10(self.signal / self.noise)
        data = {
            "samples": self.samples,
            "cosine_mean": self.cos_sum / max(self.samples, 1),
            "cosine_min": self.cos_min,
            "max_abs_error": self.max_abs,
            "mean_abs_error": self.abs_sum / max(self.values, 1),
            "sqnr_db": sqnr,
        }
        if self.classifier and self.samples:
            data["top1_agreement"] = self.agree / float(self.samples)
        if self.classifier and self.labelled:
            data["top1_fp32"] = self.correct_ref / float(self.labelled)
            data["top1"] = self.correct / float(self.labelled)
            data["top1_drop_points"] = 100.0 * (data["top1_fp32"] - data["top1"])
        return data


def compare(reference_run, candidate_run, batches, output_names):
    """Run both models on every batch and gather metrics.

    Args:
        reference_run / candidate_run: callables feeds -> dict of outputs.
        batches: iterable of (feeds, labels or None).
        output_names: outputs to compare.

    Returns:
        dict output name -> metrics dict (see :class:`OutputStats`).
    """
    stats = dict((name, OutputStats(name)) for name in output_names)
    for feeds, labels in batches:
        ref = reference_run(feeds)
        out = candidate_run(feeds)
        for name in output_names:
            stats[name].add(ref[name], out[name], labels)
    return dict((name, s.result()) for name, s in stats.items())


def measure_speed(runs, feeds, budget_s=1.0, min_rounds=20, max_rounds=2000, warmup=3):
    """Median latency of several models on the same feeds, measured interleaved.

    Interleaving (A B A B ...) spreads the machine's noise over all models alike,
    so the ratio is trustworthy even when single times are not.  The number of
    rounds fills about ``budget_s`` seconds (between ``min_rounds`` and
    ``max_rounds``), so microsecond models get enough samples for a stable median.

    ONNX Runtime's pool threads keep spinning for tens of milliseconds after a
    multi-threaded run and would steal a core from the next model, so models
    slower than a millisecond get a pause (:data:`SPIN_PAUSE_S`) before each call.

    Args:
        runs: dict label -> callable(feeds).
        feeds: one batch of inputs.

    Returns:
        dict label -> median milliseconds.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        for run in runs.values():
            run(feeds)
    per_round = (time.perf_counter() - start) / warmup
    pause = SPIN_PAUSE_S if per_round / len(runs) > 1e-3 else 0.0
    rounds = int(min(max_rounds, max(min_rounds,
                                     budget_s / max(per_round + pause * len(runs), 1e-9))))
    times = dict((label, []) for label in runs)
    for _ in range(rounds):
        for label, run in runs.items():
            if pause:
                time.sleep(pause)
            begin = time.perf_counter()
            run(feeds)
            times[label].append(time.perf_counter() - begin)
    return dict((label, 1000.0 * float(np.median(t))) for label, t in times.items())
