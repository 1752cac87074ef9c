"""Write-behind for the disk and Redis tiers: a miss returns before its result reaches them.

Writing a result to diskcache costs about 200 µs (one SQLite transaction) and to
Redis a network round trip; on a miss the caller would wait for both, and on a
stream of unique inputs that alone costs more than the 5% of throughput the
cache may take (issue 6, "Miss overhead").  So misses put their (read-only)
arrays here, and one background thread frames them and writes batches: one
SQLite transaction and one Redis pipeline per batch.  A transaction costs about
1 ms of CPU whatever its size, so batches are as large as a half-second linger
gathers: on a 2-core device serving unique MobileNetV2 requests the thread
spends 70-90 µs of CPU per entry (framing about 20, SQLite the rest).

While an entry waits it is still found: ``Writer.held`` answers lookups, so
a result is never recomputed because its write has not landed yet.  The queue
is bounded; when it is full the caller writes itself (back-pressure, nothing is
lost).  :meth:`Writer.flush` waits for the queue to empty; every writer is
flushed when the interpreter exits, so a short-lived process (``edgeinfer run``)
leaves its results on disk.
"""

import atexit
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict

from .values import encode

LOG = logging.getLogger("edgeinfer.cache")

# A batch: enough to amortize a transaction; at most this many rows hold SQLite's
# write lock at once (a few ms; other processes wait for it).
BATCH = 256
# How long the first queued entry waits for others to share its transaction.  Queued
# entries are found by lookups meanwhile, so waiting costs nothing but memory (and,
# after a crash, that many seconds of results).  Each transaction costs about 1 ms
# of the writer's CPU whatever its size: one per 50 ms (8 entries at 150 requests/s)
# cost it 220 µs per entry on a 2-core device, one per 250 ms 100 µs.  Other
# processes see new rows within the disk tier's index_s anyway (1 s).
LINGER_S = 0.5
# Pending entries at most (and bytes, for large outputs) before callers write themselves.
MAX_PENDING = 1024
MAX_PENDING_BYTES = 64 * 1024 * 1024
# Longest wait at exit for pending writes.
EXIT_FLUSH_S = 10.0
# An idle thread ends after this long (the next write starts another), so a cache
# dropped without close() leaves no thread behind.
IDLE_EXIT_S = 30.0

_LIVE = weakref.WeakSet()


class Writer(object):
    """A queue of ``key -> (payload, expires, tiers)`` written by one thread.

    A payload is a frame (bytes) or a dict of read-only arrays, framed when written.

    Args:
        tiers: the disk and/or Redis tiers (each with ``set_many(items)`` where an
            item is ``(key, data, expire_s)``).
    """

    def __init__(self, tiers):
        self._tiers = list(tiers)
        self._setup()
        _LIVE.add(self)

    def _setup(self):
        self._pid = os.getpid()
        # put() runs on every miss: it takes the bare lock (a C call)
        # rather than enter the Condition (Python code, cold after a model run).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending = OrderedDict()
        self._writing = {}
        # Every entry queued or being written, the newest per key: a miss asks it
        # through held(key), the dict's own get (no lock, no Python frame: a
        # lookup is one C call, atomic for the interpreter).
        self._held = {}
        self.held = self._held.get
        self._bytes = 0
        self._thread = None
        self._closed = False
        self._flushing = 0

    def _start_thread(self):
        self._thread = threading.Thread(target=self._run, name="edgeinfer-cache-writer")
        self._thread.daemon = True
        self._thread.start()

    def put(self, key, payload, nbytes, expires, tiers=None):
        """Queue ``payload`` (``nbytes`` large) for ``tiers`` (default None: every tier).

        When the queue is full the caller writes it here and now.
        """
        if self._pid != os.getpid():
            # A forked child inherits the queue (its parent writes it), not the
            # thread, and perhaps a lock some thread held at the fork: start afresh.
            self._setup()
        with self._lock:
            full = (len(self._pending) >= MAX_PENDING
                    or self._bytes + nbytes > MAX_PENDING_BYTES) or self._closed
            if not full:
                old = self._pending.pop(key, None)
                if old is not None:
                    self._bytes -= old[1]
                self._pending[key] = self._held[key] = (payload, nbytes, expires, tiers)
                self._bytes += nbytes
                # A thread that ends sets _thread to None (_run): no is_alive() here.
                if self._thread is None:
                    self._start_thread()
                # Wake the thread only to start a batch or to write a full one: a
                # wake-up per entry would cost each miss a thread switch.
                if len(self._pending) == 1 or len(self._pending) >= BATCH:
                    self._cond.notify()
                return
        self._write([(key, payload, nbytes, expires, tiers)])

    def discard(self, key):
        """Drop ``key``'s queued write; wait if it is being written (for delete()).

        Returns:
            True when a queued write was dropped.
        """
        with self._cond:
            old = self._pending.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
                if self._held.get(key) is old:
                    del self._held[key]
            if self._pid == os.getpid():
                self._cond.wait_for(lambda: key not in self._writing)
        return old is not None

    def flush(self, timeout_s=None):
        """Wait until every queued write has landed; True unless ``timeout_s`` ran out."""
        with self._cond:
            if self._pid != os.getpid():
                return True
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: not self._pending and not self._writing,
                                           timeout_s)
            finally:
                self._flushing -= 1

    def close(self, timeout_s=None):
        """Flush, then stop the thread; later writes are done by the callers."""
        done = self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread if self._pid == os.getpid() else None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        return done

    def _run(self):
        try:
            self._loop()
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
            for tier in self._tiers:
                tier.release_thread()

    def _loop(self):
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed, IDLE_EXIT_S)
                if not self._pending:
                    self._thread = None
                    return
                self._cond.wait_for(lambda: len(self._pending) >= BATCH or self._closed
                                    or self._flushing, LINGER_S)
                batch = []
                while self._pending and len(batch) < BATCH:
                    key, entry = self._pending.popitem(last=False)
                    self._bytes -= entry[1]
                    self._writing[key] = entry
                    batch.append((key,) + entry)
            try:
                self._write(batch)
            except Exception:  # a bug, not a tier fault (tiers never raise): keep going
                LOG.exception("cache: the background writer failed on %d entries", len(batch))
            finally:
                with self._cond:
                    for item in batch:
                        entry = self._writing.pop(item[0], None)
                        # A newer put of the same key stays held.
                        if entry is not None and self._held.get(item[0]) is entry:
                            del self._held[item[0]]
                    self._cond.notify_all()

    def _write(self, batch):
        now = time.time()
        # The expiry is absolute: time spent queued does not lengthen it.
        fresh = [(key, _frame(key, payload, expires), expires, tiers)
                 for key, payload, _, expires, tiers in batch
                 if expires is None or expires > now]
        for tier in self._tiers:
            if not tier.enabled:
                continue
            items = [(key, data, None if expires is None else expires - now)
                     for key, data, expires, tiers in fresh if tiers is None or tier in tiers]
            if items:
                tier.set_many(items)


def _frame(key, payload, expires):
    return payload if isinstance(payload, bytes) else encode(key, payload, expires)


@atexit.register
def _flush_all():
    for writer in list(_LIVE):
        if not writer.flush(EXIT_FLUSH_S):
            LOG.warning("cache: exited with results not yet written to disk/Redis.")
