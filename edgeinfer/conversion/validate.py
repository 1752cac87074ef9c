"""Validation: the converted model against FP32, on the same inputs.

Per output: cosine similarity (per sample; mean and min), max and mean absolute
error, SQNR in dB, and for classifier outputs top-1 agreement with FP32 and
top-1 accuracy against labels when the data has them.  The metrics themselves
are :class:`~edgeinfer.conversion.metrics.OutputStats`, shared with accuracy
control.
"""

import time

import numpy as np

# The metrics live in one place (issue 4); validation streams them per output.
from .metrics import OutputStats, is_classifier_output

__all__ = ["OutputStats", "is_classifier_output", "compare", "measure_speed"]

# Seconds to let a previous model's spinning pool threads go idle before timing the
# next one (they spin about 40 ms on this class of machine).
SPIN_PAUSE_S = 0.06


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
    times = time_interleaved(runs, feeds, rounds, pause)
    return dict((label, 1000.0 * float(np.median(t))) for label, t in times.items())


def time_interleaved(runs, feeds, rounds, pause=0.0):
    """Seconds of each call, timed round-robin (A B C A B C ...) after an optional pause.

    Args:
        runs: dict label -> callable(feeds).
        feeds: one batch of inputs.
        rounds: calls per callable.
        pause: seconds to sleep before each call (default 0), see :data:`SPIN_PAUSE_S`.

    Returns:
        dict label -> list of seconds, one per round.
    """
    times = dict((label, []) for label in runs)
    for _ in range(rounds):
        for label, run in runs.items():
            if pause:
                time.sleep(pause)
            begin = time.perf_counter()
            run(feeds)
            times[label].append(time.perf_counter() - begin)
    return times
