"""Dynamic batching: requests for one model queue here and run off the event loop.

Each model has one :class:`Batcher`: a bounded queue (a deque the event loop
alone touches) and ``instances`` worker coroutines.  A worker takes the oldest
request; when the model has a batch dim and ``max_batch`` > 1 it waits up to
``max_delay_ms`` for more, stacks requests whose other dims agree (up to
``max_batch`` rows), runs the stack in a thread of the executor (the model never
runs on the event loop) and hands each request its rows back.  With
``max_delay_ms`` 0 it stacks only what is already waiting, so a lone request is
never held back.

A full queue answers 503 at once (backpressure instead of unbounded memory); a
request that waits past its timeout is dropped from the queue and answered 504.
"""

import asyncio
import collections
import time

import numpy as np

from .protocol import HTTPError


class _Item(object):
    __slots__ = ("feeds", "rows", "future", "queued_ns", "signature")

    def __init__(self, feeds, rows, future, signature):
        self.feeds = feeds
        self.rows = rows
        self.future = future
        self.queued_ns = time.perf_counter_ns()
        self.signature = signature


class Batcher(object):
    """The queue and workers of one served model.

    Args:
        model: the :class:`~edgeinfer.serve.repository.ServedModel`.
        executor: the thread pool model runs happen in.
        max_batch: most rows stacked into one run (default 1: no batching); only
            used when the model is batchable.
        max_delay_ms: longest a request waits for others to stack with (default 0).
        max_queue: most requests waiting; beyond it :meth:`submit` raises 503
            (default 64).
        instances: runs of this model in flight at once (default 1).
        observe: called on the event loop with ``(rows, seconds)`` after each run,
            for metrics (default None).
    """

    def __init__(self, model, executor, max_batch=1, max_delay_ms=0.0, max_queue=64,
                 instances=1, observe=None):
        self.model = model
        self.session = model.session
        self.executor = executor
        self.max_batch = max_batch if model.batchable else 1
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.instances = instances
        self.observe = observe
        self._pending = collections.deque()
        self._arrived = None
        self._workers = []
        self._running = 0

    @property
    def depth(self):
        """Requests waiting to run."""
        return len(self._pending)

    @property
    def busy(self):
        """Runs in flight."""
        return self._running

    def start(self):
        """Start the workers on the running event loop."""
        self._arrived = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(self.instances)]

    async def submit(self, feeds, rows, timeout_s):
        """Queue one request and wait for its outputs.

        Args:
            feeds: dict input name -> array, already checked against the model.
            rows: its batch size.
            timeout_s: seconds to wait in the queue and run, in all.

        Returns:
            ``(outputs dict, nanoseconds spent queued, nanoseconds its run took)``.

        Raises:
            HTTPError: 503 (queue full, or shutting down) or 504 (timed out).
            Whatever the model run raised (EdgeInferError and others).
        """
        if len(self._pending) >= self.max_queue or not self._workers:
            raise HTTPError(503, "Model {!r} has {} requests waiting, its limit; try again "
                                 "shortly.".format(self.model.name, len(self._pending)),
                            {"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        signature = (tuple(a.shape[1:] for a in feeds.values()) if self.max_batch > 1
                     else None)
        self._pending.append(_Item(feeds, rows, future, signature))
        self._arrived.set()
        # A timer, not asyncio.wait_for: no extra task per request.  A request that
        # times out while queued is skipped by the workers (its future is done).
        timer = loop.call_later(timeout_s, _expire, future, self.model.name, timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            if self.max_batch > 1 and self.max_delay > 0:
                await self._gather(loop)
            items = self._take()
            if not items:
                continue
            self._running += 1
            start = time.perf_counter_ns()
            try:
                results = await loop.run_in_executor(self.executor, self._run, items)
            except Exception as exc:  # one bad run must not stop the worker
                results = [exc] * len(items)
            finally:
                self._running -= 1
            took = time.perf_counter_ns() - start
            rows = sum(item.rows for item in items)
            self.model.record_batch(rows, took)
            if self.observe is not None:
                self.observe(rows, took / 1e9)
            for item, result in zip(items, results):
                if item.future.done():
                    continue   # timed out meanwhile
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result((result, start - item.queued_ns, took))

    async def _gather(self, loop):
        """Wait up to max_delay for the queue to hold max_batch rows."""
        deadline = loop.time() + self.max_delay
        while sum(item.rows for item in self._pending) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self):
        """The requests of the next run: the oldest live one, and those that stack with it."""
        pending = self._pending
        while pending and pending[0].future.done():
            pending.popleft()
        if not pending:
            return []
        first = pending.popleft()
        items, rows = [first], first.rows
        if self.max_batch > 1:
            skipped = []
            while pending and rows < self.max_batch:
                item = pending.popleft()
                if item.future.done():
                    continue
                if item.signature != first.signature or rows + item.rows > self.max_batch:
                    skipped.append(item)
                    # Keep order fair: stop at the first that does not fit by size.
                    if rows + item.rows > self.max_batch:
                        break
                    continue
                items.append(item)
                rows += item.rows
            pending.extendleft(reversed(skipped))
        return items

    def _run(self, items):
        """Run ``items`` (in an executor thread): a list of outputs or exceptions, one each."""
        session = self.session
        if len(items) == 1:
            try:
                return [session.run(items[0].feeds)]
            except Exception as exc:
                return [exc]
        try:
            return self._run_stacked(items)
        except Exception:
            # A stack that fails is run one request at a time, so each request gets
            # its own answer or error, not its neighbours'.
            return [self._run([item])[0] for item in items]

    def _run_stacked(self, items):
        session = self.session
        cache = session.cache
        names = [s.name for s in session.inputs]

        def stacked_run(chosen):
            feeds = dict((n, np.concatenate([c.feeds[n] for c in chosen])) for n in names)
            outputs = session.run(feeds, cache=False)
            results, offset = [], 0
            for c in chosen:
                results.append(dict((k, v[offset:offset + c.rows]) for k, v in outputs.items()))
                offset += c.rows
            return results
        if cache is None:
            return stacked_run(items)
        # Cached: each request is its own cache entry; only the misses are stacked.
        output_names = [s.name for s in session.outputs]
        keys = [cache.key(session.model_hash, item.feeds, output_names) for item in items]
        return cache.get_or_run_many(keys, lambda idx: stacked_run([items[i] for i in idx]))

    async def close(self, timeout_s=5.0):
        """Let queued requests finish (up to ``timeout_s``), then stop the workers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._pending or self._running) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for task in self._workers:
            task.cancel()
        self._workers = []
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(HTTPError(503, "The server is shutting down.",
                                                    {"Retry-After": "1"}))


def _expire(future, name, timeout_s):
    if not future.done():
        future.set_exception(HTTPError(504, "Model {!r} did not answer within {:g} s (the "
                                            "per-request timeout).".format(name, timeout_s)))
