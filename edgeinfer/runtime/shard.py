"""The sharded runner (issue 7), device side: run a sharded bundle's partitions in turn.

A sharded bundle holds its model as partitions (see :mod:`edgeinfer.partitions`),
each a model of its own that the bundle's backend loads like any other, so every
backend runs shards.  The runner feeds each partition the tensors it reads (model
inputs, or outputs of earlier partitions), keeps a tensor only until its last
reader has run, and returns the model's outputs.

Two modes:

``resident``
    Every partition is loaded once, up front; a call runs them back to back, so it
    costs what the unsharded model costs plus one hand-over per cut.
    :meth:`ShardedRunner.run_many` with ``concurrency`` >= 2 pipelines requests
    across partitions (partition k on request n+1 while k+1 works on request n).

``stream``
    At most ``budget_bytes`` of partitions are resident at a time.  A partition is
    loaded, run and released; while it runs, a background thread loads the ones
    after it, as many as fit beside it, so loading overlaps computing.
    Partitions are pinned (kept loaded for good) when the budget has room for them
    and still for the largest streamed one.  :meth:`ShardedRunner.run_many` runs
    every request through a partition before the next is loaded, so a batch of
    requests loads each partition once.

A partition's size is the bytes of its files in the bundle: what loading it costs.
"""

import ctypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import BackendError, BundleError, UsageError
from ..partitions import validate_partitions
from .backends import LocalFiles, ModelFiles, cache_dir

MODES = ("resident", "stream")
MB = 1024 * 1024

# Backend options partitions get unless the caller gives them (measured on ResNet-50
# in four partitions, scripts/bench_shards.py):
# * ONNX Runtime's pool threads spin-wait after a run; the next partition's run
#   then shares the cores with them: 140 ms back to back against 47 ms for the
#   whole model, 47 ms when they stop spinning as a run returns.
# * Its "all" level re-lays every conv weight (NCHWc) while it loads a model: a
#   streamed partition is loaded on every call, and that took 40 ms and a second
#   copy of the weights per load against 4 ms for "extended".
SHARD_OPTIONS = {"onnxruntime": {"stop_spinning": True}}
STREAM_OPTIONS = {"onnxruntime": {"stop_spinning": True, "graph_optimization": "extended"}}


def check_mode(mode):
    """Refuse a shard mode other than ``resident`` or ``stream``.

    Raises:
        UsageError: an unknown mode.
    """
    if mode not in MODES:
        raise UsageError("Unknown shard mode {!r}.".format(mode),
                         "Use one of: {}.".format(", ".join(MODES)))
    return mode


_LIBC = []


def return_memory():
    """Hand freed heap memory back to the system (glibc keeps it otherwise).

    A released partition's weights are freed, but glibc may keep the pages for
    later ``malloc`` calls, and then the process's resident size never drops back
    to the budget.  No-op where there is no glibc.
    """
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _LIBC.append(None)
    if _LIBC[0] is not None:
        _LIBC[0](0)


def open_sharded(bundle, backend, options=None, mode="resident", budget_mb=None):
    """A :class:`ShardedRunner` over an opened sharded bundle.

    Args:
        bundle: the opened :class:`~edgeinfer.bundle.Bundle` (with partitions).
        backend: the backend instance that runs its files.
        options: backend options, used for every partition, over :data:`SHARD_OPTIONS`
            (``resident``) or :data:`STREAM_OPTIONS` (``stream``) (default None).
        mode: ``"resident"`` or ``"stream"`` (default ``"resident"``).
        budget_mb: MiB of partitions ``stream`` may keep resident (default None: the
            bundle's planned budget, at least its largest partition).

    Raises:
        UsageError: an unknown mode, a budget <= 0 or under the largest partition.
        BundleError: a partition whose model disagrees with the manifest.
        BackendError: the backend refuses a partition.
    """
    check_mode(mode)
    parts = validate_partitions(bundle.manifest, repr(bundle.path))
    if not parts:
        raise UsageError("Bundle {!r} is not sharded.".format(bundle.path),
                         "Shard modes apply to bundles made by `edgeinfer shard`; drop "
                         "shard_mode (or --stream) for this one.")
    sizes = [sum(bundle.size_of(name) for name in part.files) for part in parts]
    if budget_mb is None:
        budget = max([bundle.manifest["partitions"]["budget_bytes"]] + sizes)
    else:
        if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)) or not (
                budget_mb > 0):
            raise UsageError("shard_budget_mb must be a number of MiB > 0, not {!r}.".format(
                budget_mb), "Leave it out for the bundle's planned budget.")
        budget = int(budget_mb * MB)

    defaults = dict((STREAM_OPTIONS if mode == "stream" else SHARD_OPTIONS).get(
        bundle.backend, {}))
    defaults.update(options or {})
    options = defaults or options
    on_disk = extract_partitions(bundle, parts)

    def load(part):
        files = on_disk.get(part.index) or ModelFiles(bundle, part.model)
        runner = backend.load(files, options)
        _check_partition(bundle, part, runner)
        return runner

    return ShardedRunner(parts, bundle.inputs, bundle.outputs, load, sizes, mode, budget)


def extract_partitions(bundle, parts):
    """Partitions whose ONNX model keeps its weights in a data file, extracted once.

    An ONNX model with external data loads from a path (ONNX Runtime then maps the
    weights rather than copying them), so those partitions are extracted into a
    cache folder named by their hashes (checked, and reused while unchanged) under
    :func:`~edgeinfer.runtime.backends.cache_dir` ``("shards")``.  Other formats
    load from the bundle as usual.

    Returns:
        dict partition index -> :class:`~edgeinfer.runtime.backends.LocalFiles`.

    Raises:
        BackendError: the cache folder cannot be written.
        BundleError: an extracted file does not match its hash.
    """
    wanted = [p for p in parts if p.model.endswith(".onnx") and len(p.files) > 1]
    if not wanted:
        return {}
    # The folder keeping a bundle's IR, by hash, verified and stamped (issue 3) does
    # the same job for partitions.
    from .backends.openvino import extract_ir
    names = [name for part in wanted for name in part.files]
    root = cache_dir("shards")
    try:
        folder, _ = extract_ir(bundle, names, root)
    except OSError as exc:
        raise BackendError("Cannot extract the partitions of {!r} into {}: {}.".format(
            bundle.path, root, exc.strerror or exc),
            "Set EDGEINFER_CACHE_DIR to a writable folder with room for the bundle.")
    return dict((part.index, LocalFiles(dict((name, os.path.join(folder, *name.split("/")))
                                             for name in part.files), part.model))
                for part in wanted)


def _check_partition(bundle, part, runner):
    # The manifest is what the chain is built from; a partition file that disagrees
    # with it would hand tensors to the wrong places.
    have_in = set(s.name for s in runner.inputs)
    have_out = set(s.name for s in runner.outputs)
    want_in = set(s.name for s in part.inputs)
    want_out = set(s.name for s in part.outputs)
    if have_in != want_in or not want_out <= have_out:
        runner.close()
        raise BundleError("Bundle {!r}: partition {} ({}) reads {} and makes {}, but the "
                          "manifest says it reads {} and makes {}.".format(
                              bundle.path, part.name, part.model, sorted(have_in),
                              sorted(have_out), sorted(want_in), sorted(want_out)),
                          "Rebuild it with `edgeinfer shard`.")


class ShardedRunner(object):
    """Runs partitions in turn, as one model; a runner in the backend contract's sense.

    Args:
        partitions: list of :class:`~edgeinfer.partitions.Partition`, in run order.
        inputs / outputs: the whole model's TensorSpecs.
        load: callable partition -> backend runner.
        sizes: per partition, the bytes loading it costs.
        mode: ``"resident"`` or ``"stream"`` (default ``"resident"``).
        budget_bytes: what ``stream`` may keep resident (default None: no limit;
            must hold the largest partition).

    Attributes:
        inputs, outputs: the model's TensorSpecs.
        mode, budget_bytes: as given.
        pinned: indices of partitions ``stream`` keeps loaded for good.
        stats: counters: ``loads``, ``load_s`` (seconds spent loading, in any
            thread), ``wait_s`` (seconds calls waited for a load), ``peak_bytes``
            (most partition bytes resident at once).

    Raises:
        UsageError: an unknown mode, or a budget under the largest partition.
    """

    def __init__(self, partitions, inputs, outputs, load, sizes, mode="resident",
                 budget_bytes=None):
        self.mode = check_mode(mode)
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self._parts = list(partitions)
        self._load_fn = load
        self._sizes = list(sizes)
        self.budget_bytes = budget_bytes
        if mode == "stream" and budget_bytes is not None and max(self._sizes) > budget_bytes:
            big = self._sizes.index(max(self._sizes))
            raise UsageError(
                "Partition {} needs {:.1f} MiB, over the {:.1f} MiB shard budget.".format(
                    self._parts[big].name, self._sizes[big] / float(MB),
                    budget_bytes / float(MB)),
                "Give shard_budget_mb >= {:.1f}, or shard the model again with a smaller "
                "--budget-mb.".format(self._sizes[big] / float(MB)))
        self._output_names = [s.name for s in self.outputs]
        self._drops = self._drop_schedule()
        self._lock = threading.Lock()
        self._counting = threading.Lock()
        self._loaded = {}    # index -> runner
        self._pending = {}   # index -> Future of a runner
        self._held = 0       # bytes of loaded and pending partitions
        self._executor = None
        self._open = True
        self.stats = {"loads": 0, "load_s": 0.0, "wait_s": 0.0, "peak_bytes": 0}
        self.pinned = frozenset(range(len(self._parts))) if mode == "resident" else (
            self._choose_pinned())
        try:
            for index in sorted(self.pinned):
                self._loaded[index] = self._timed_load(index)
                self._hold(self._sizes[index])
        except BaseException:
            self.close()
            raise

    # -- planning what stays ------------------------------------------------------------------

    def _choose_pinned(self):
        """Partitions to keep loaded: smallest first, while the largest streamed one still fits."""
        budget = self.budget_bytes
        if budget is None or sum(self._sizes) <= budget:
            return frozenset(range(len(self._parts)))
        pinned, held = set(), 0
        for index in sorted(range(len(self._sizes)), key=lambda i: self._sizes[i]):
            rest = [self._sizes[i] for i in range(len(self._sizes))
                    if i not in pinned and i != index]
            if rest and held + self._sizes[index] + max(rest) <= budget:
                pinned.add(index)
                held += self._sizes[index]
        return frozenset(pinned)

    def _drop_schedule(self):
        """Per partition, the tensors no later partition reads (dropped after it runs)."""
        last = {}
        for index, part in enumerate(self._parts):
            for spec in part.inputs:
                last[spec.name] = index
        drops = [[] for _ in self._parts]
        for name, index in last.items():
            drops[index].append(name)
        return drops

    # -- loading ------------------------------------------------------------------------------

    def _timed_load(self, index):
        begin = time.perf_counter()
        runner = self._load_fn(self._parts[index])
        with self._counting:  # the loader thread and a caller may both be loading
            self.stats["loads"] += 1
            self.stats["load_s"] += time.perf_counter() - begin
        return runner

    def _hold(self, size):
        self._held += size
        self.stats["peak_bytes"] = max(self.stats["peak_bytes"], self._held)

    def _take(self, index):
        """Partition ``index``'s runner: loaded, waited for, or loaded now."""
        runner = self._loaded.get(index)
        if runner is not None:
            return runner
        begin = time.perf_counter()
        future = self._pending.pop(index, None)
        if future is None:
            self._make_room(self._sizes[index])
            self._hold(self._sizes[index])
            try:
                runner = self._timed_load(index)
            except BaseException:
                self._held -= self._sizes[index]
                raise
        else:
            try:
                runner = future.result()
            except BaseException:
                self._held -= self._sizes[index]
                raise
        self.stats["wait_s"] += time.perf_counter() - begin
        self._loaded[index] = runner
        return runner

    def _make_room(self, size):
        # Prefetches are made in run order, so the partition needed now is normally
        # loaded or on its way; room is short only when a smaller budget than the
        # plan's meets a prefetch of the next call.  Give the prefetched ones back.
        if self.budget_bytes is None or self._held + size <= self.budget_bytes:
            return
        for index, future in list(self._pending.items()):
            del self._pending[index]
            try:
                future.result().close()
            except Exception:
                pass
            self._held -= self._sizes[index]
        for index in list(self._loaded):
            if index not in self.pinned:
                self._release(index)

    def _release(self, index):
        runner = self._loaded.pop(index, None)
        if runner is not None:
            runner.close()
            del runner
            self._held -= self._sizes[index]
            return_memory()

    def _prefetch(self, after):
        """Start loading the partitions after ``after`` (wrapping to the next call's
        first) in run order, as many as fit in the budget beside what is held."""
        count = len(self._parts)
        for step in range(1, count):
            index = (after + step) % count
            if index in self._loaded or index in self._pending:
                continue
            if self.budget_bytes is not None and (
                    self._held + self._sizes[index] > self.budget_bytes):
                return  # in order: a later one must not take the room this one needs
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1)
            self._hold(self._sizes[index])
            self._pending[index] = self._executor.submit(self._timed_load, index)

    # -- running ------------------------------------------------------------------------------

    def _step(self, index, runner, env):
        part = self._parts[index]
        feeds = dict((spec.name, env[spec.name]) for spec in part.inputs)
        env.update(runner.run(feeds, [spec.name for spec in part.outputs]))

    def _finish(self, env, index, keep):
        for name in self._drops[index]:
            if name not in keep:
                env.pop(name, None)

    def run(self, feeds, output_names=None):
        """Run every partition on ``feeds`` (checked by the session) and return the outputs.

        Raises:
            BackendError: a partition failed to load or run.
            UsageError: the runner was closed.
        """
        names = output_names or self._output_names
        keep = frozenset(names)
        env = dict(feeds)
        if not self._open:
            self._closed()
        if self.mode == "resident":
            loaded = self._loaded
            for index in range(len(self._parts)):
                self._step(index, loaded[index], env)
                self._finish(env, index, keep)
            return dict((name, env[name]) for name in names)
        self._stream([env], keep)
        return dict((name, env[name]) for name in names)

    def run_many(self, feed_dicts, output_names=None, concurrency=None):
        """Run many requests: partition by partition (``stream``), or pipelined across
        partitions (``resident`` with ``concurrency`` >= 2), else one after another.

        Args:
            feed_dicts: list of checked feed dicts.
            output_names: outputs to return (default None: all).
            concurrency: ``resident``: requests in flight in the pipeline (default
                None: 1, no pipelining).  ``stream`` ignores it.

        Returns:
            list of output dicts, in order.

        Raises:
            BackendError: a partition failed; the first failed feed is named.
        """
        names = output_names or self._output_names
        if self.mode == "stream":
            return self._stream_many(feed_dicts, names)
        if concurrency is None or concurrency <= 1 or len(self._parts) == 1:
            return [self._named(i, len(feed_dicts), self.run, feeds, names)
                    for i, feeds in enumerate(feed_dicts)]
        return self._pipelined(feed_dicts, names, concurrency)

    @staticmethod
    def _named(index, count, call, *args):
        try:
            return call(*args)
        except BackendError as exc:
            raise BackendError("Feed {} of {}: {}".format(index, count, exc.message), exc.hint)

    def _stream_many(self, feed_dicts, names):
        envs = [dict(feeds) for feeds in feed_dicts]
        self._stream(envs, frozenset(names))
        return [dict((name, env[name]) for name in names) for env in envs]

    def _stream(self, envs, keep):
        """Every request through one partition before the next is loaded (``stream``)."""
        with self._lock:
            if not self._open:
                self._closed()
            for index in range(len(self._parts)):
                runner = self._take(index)
                self._prefetch(index)
                for number, env in enumerate(envs):
                    if len(envs) == 1:
                        self._step(index, runner, env)
                    else:
                        self._named(number, len(envs), self._step, index, runner, env)
                    self._finish(env, index, keep)
                if index not in self.pinned:
                    self._release(index)
                    self._prefetch(index)

    def _pipelined(self, feed_dicts, names, depth):
        """One thread per partition, handing requests on through queues.

        At most ``depth`` requests are in the pipeline at once, so memory holds at
        most ``depth`` requests' activations.
        """
        import queue
        count, stages = len(feed_dicts), len(self._parts)
        keep = frozenset(names)
        pipes = [queue.Queue() for _ in range(stages + 1)]
        room = threading.Semaphore(depth)
        failures = {}

        def stage(index):
            runner = self._loaded[index]
            while True:
                item = pipes[index].get()
                if item is None:
                    pipes[index + 1].put(None)
                    return
                number, env = item
                if number not in failures:
                    try:
                        self._step(index, runner, env)
                        self._finish(env, index, keep)
                    except Exception as exc:  # reported in order once all are done
                        failures[number] = exc
                pipes[index + 1].put(item)

        if not self._open:
            self._closed()
        workers = [threading.Thread(target=stage, args=(i,), name="edgeinfer-shard-{}".format(i))
                   for i in range(stages)]
        for worker in workers:
            worker.daemon = True
            worker.start()
        results = [None] * count

        def feed():
            for number, feeds in enumerate(feed_dicts):
                room.acquire()
                pipes[0].put((number, dict(feeds)))
            pipes[0].put(None)

        feeder = threading.Thread(target=feed, name="edgeinfer-shard-feed")
        feeder.daemon = True
        feeder.start()
        while True:
            item = pipes[stages].get()
            if item is None:
                break
            number, env = item
            room.release()
            if number not in failures:
                results[number] = dict((name, env[name]) for name in names)
        feeder.join()
        for worker in workers:
            worker.join()
        if failures:
            first = min(failures)
            exc = failures[first]
            if isinstance(exc, BackendError):
                raise BackendError("Feed {} of {}: {}".format(first, count, exc.message),
                                   exc.hint)
            raise exc
        return results

    # -- lifecycle ----------------------------------------------------------------------------

    def _closed(self):
        raise UsageError("This sharded model is closed.",
                         "Load the bundle again with edgeinfer.load().")

    def close(self):
        """Release every partition and stop the loader thread."""
        with self._lock:
            for index, future in list(self._pending.items()):
                try:
                    future.result().close()
                except Exception:
                    pass
            self._pending.clear()
            for index in list(self._loaded):
                self._loaded.pop(index).close()
            self._held = 0
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._open = False
            return_memory()

    def __repr__(self):
        return "<ShardedRunner {} partitions, {}{}>".format(
            len(self._sizes), self.mode, "" if self.budget_bytes is None else
            ", budget {:.1f} MiB".format(self.budget_bytes / float(MB)))
