"""Thread-safe counters and latency samples for the cache's stats()."""

import threading
from collections import deque

# Latencies kept per tier: enough for stable percentiles, bounded memory.
SAMPLES = 2048


class Counters(object):
    """Named integer counters that many threads may bump at once.

    ``dict[name] += 1`` is a read, an add and a write: two threads can lose a
    count between them, and tests count exactly (one model run for 32 threads).
    :meth:`add` takes the lock.  A hot path that holds ``lock`` already, or
    takes it itself (a C call), writes ``counts.values[name] += 1`` inline: on a
    cache miss, right after a model run has emptied the CPU caches, every
    Python call costs microseconds.

    Args:
        names: the counters, each starting at 0.
        lock: the lock that guards them (default None: their own); give the
            lock of the structure they count to bump them under it.
    """

    def __init__(self, names, lock=None):
        self.values = dict((name, 0) for name in names)
        self.lock = lock if lock is not None else threading.Lock()

    def add(self, name, amount=1):
        with self.lock:
            self.values[name] += amount

    def __getitem__(self, name):
        return self.values[name]

    def snapshot(self):
        """A dict copy of every counter."""
        with self.lock:
            return dict(self.values)

    def reset(self):
        with self.lock:
            for name in self.values:
                self.values[name] = 0


class Latency(object):
    """The last :data:`SAMPLES` durations (seconds) of one kind of call."""

    def __init__(self):
        # deque.append is atomic in CPython: no lock on the hot path.
        self._samples = deque(maxlen=SAMPLES)
        # add(seconds) is the deque's own append: no Python frame per sample (on a
        # cache miss, each frame costs µs once the model run has emptied the caches).
        self.add = self._samples.append

    def summary(self):
        """``{"samples", "mean_us", "p50_us", "p99_us"}`` (None values when empty)."""
        values = sorted(list(self._samples))
        if not values:
            return {"samples": 0, "mean_us": None, "p50_us": None, "p99_us": None}

        def at(q):
            return round(1e6 * values[min(len(values) - 1, int(q * len(values)))], 1)
        return {"samples": len(values), "mean_us": round(1e6 * sum(values) / len(values), 1),
                "p50_us": at(0.5), "p99_us": at(0.99)}

    def reset(self):
        self._samples.clear()
