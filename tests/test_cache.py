"""The result cache (issue 6): keys, frames, the three tiers, single-flight, faults, sessions, CLI.

Everything real: diskcache directories in temporary folders, a real
``redis-server`` on 127.0.0.1 (started once per test session on a free port,
stopped at the end), real threads and real processes.  A slow Redis is a real
socket server that accepts and never answers; a down Redis is a closed port; a
full or read-only disk is a real tmpfs mount where this user may mount (root),
else the test says why it cannot run.
"""

import json
import os
import pickle
import shutil
import signal
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib

import diskcache
import numpy as np
import pytest

import edgeinfer
from edgeinfer.bundle import Bundle
from edgeinfer.cli import main
from edgeinfer.errors import InputError, UsageError
from edgeinfer.runtime.cache import Cache, admin, model_hash
from edgeinfer.runtime.cache.disk import BytesDisk, DiskTier
from edgeinfer.runtime.cache.keys import hasher_factory, make_key
from edgeinfer.runtime.cache.memory import ENTRY_OVERHEAD, MemoryTier
from edgeinfer.runtime.cache.values import (MAGIC, CorruptEntry, Unstorable, decode, encode,
                                            freeze)

from . import models
from .test_cli import _runner

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
MODEL = "0123456789abcdef0123456789abcdef"


def feeds(value, shape=(1, 4)):
    return {"x": np.full(shape, value, np.float32)}


def double(x):
    """A stand-in model: ``run`` callables for Cache-level tests."""
    return lambda: {"y": x["x"] * 2}


# -- helpers: ports, servers, processes, mounts -------------------------------------------------

def free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def start_redis(folder, port=None):
    """A real redis-server on 127.0.0.1, answering PING; returns (process, port)."""
    redis = pytest.importorskip("redis", reason="the redis client is not installed "
                                                "(pip install edgeinfer[redis])")
    port = port or free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder), "--protected-mode", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    deadline = time.time() + 15
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start on port {}".format(port))
            time.sleep(0.05)
    client.close()
    return proc, port


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """URL of a redis-server started for this test session (db 0)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; "
                    ".ci/run installs it): the Redis tier cannot be tested")
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield "redis://127.0.0.1:{}/0".format(port)
    stop(proc)


@pytest.fixture
def redis_client(redis_url):
    import redis
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


class SilentServer(object):
    """A TCP server that accepts connections and never says a word: a hung Redis."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self._conns = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.daemon = True
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._conns.append(conn)

    def close(self):
        self._stop.set()
        self._thread.join(5)
        for conn in self._conns:
            conn.close()
        self._sock.close()


def python(code, *args):
    """Run ``code`` in a fresh interpreter (a real second process); return its last line."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    done = subprocess.run([sys.executable, "-c", code] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


class Mount(object):
    """A tmpfs mounted on a folder (root only); ``ok`` says whether it worked."""

    def __init__(self, folder, options):
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", self.folder],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)
        self.ok = done.returncode == 0
        self.why = done.stdout.strip()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.ok:
            done = subprocess.run(["umount", self.folder])
            if done.returncode != 0:
                subprocess.run(["umount", "-l", self.folder])   # never leave it mounted
                raise AssertionError("{} was still in use after the cache closed".format(
                    self.folder))


# -- keys ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("hash_name", ["xxh3", "blake2b"])
def test_key_changes_with_everything_that_changes_the_answer(hash_name):
    name, factory = hasher_factory(hash_name)
    assert name == hash_name

    def key(model=MODEL, x=None, outputs=("y",)):
        return make_key(factory, name, model, x if x is not None else
                        {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}, list(outputs))
    base = key()
    flipped = np.arange(8, dtype=np.float32).reshape(2, 4)
    flipped.reshape(-1).view(np.uint8)[5] ^= 1
    variants = [
        key(model="f" * 32),
        key(outputs=("z",)), key(outputs=("y", "z")),
        key(x={"x2": np.arange(8, dtype=np.float32).reshape(2, 4)}),
        key(x={"x": np.arange(8, dtype=np.float32).reshape(4, 2)}),      # same bytes, shape
        key(x={"x": np.arange(8, dtype=np.int32).reshape(2, 4)}),        # dtype
        key(x={"x": np.arange(8, dtype=np.float32).reshape(2, 4).view(np.int32)}),  # dtype only
        key(x={"x": flipped}),                                             # one bit
    ]
    assert len(set(variants + [base])) == len(variants) + 1
    assert base.startswith("v1:{}:{}:".format(MODEL, hash_name)) and len(base.split(":")[3]) == 32
    # Same values, other memory layout or dict order: the same key.
    fortran = np.asfortranarray(np.arange(8, dtype=np.float32).reshape(2, 4))
    assert key(x={"x": fortran}) == base
    two = {"a": np.ones(2, np.float32), "b": np.zeros(3, np.int64)}
    assert key(x=two) == key(x={"b": two["b"], "a": two["a"]})


def test_remembered_headers_give_the_same_keys_and_stay_bounded(monkeypatch):
    from edgeinfer.runtime.cache import keys
    monkeypatch.setattr(keys, "HEADERS_KEPT", 3)
    name, factory = hasher_factory("xxh3")
    headers = {}
    cases = [({"x": np.arange(8, dtype=np.float32).reshape(shape)}, outputs)
             for shape in ((2, 4), (4, 2), (8,)) for outputs in (["y"], ["y", "z"])]
    cases.append(({"b": np.zeros(3, np.int64), "a": np.ones(2, np.float32)}, ["y"]))
    for _ in range(2):                  # the second round answers from the headers kept
        for x, outputs in cases:
            assert (make_key(factory, name, MODEL, x, outputs, headers)
                    == make_key(factory, name, MODEL, x, outputs))
            assert len(headers) <= 3
    # Same bytes, shape and name, another dtype: another header, another key.
    as_int = {"x": np.arange(8, dtype=np.float32).reshape(2, 4).view(np.int32)}
    assert (make_key(factory, name, MODEL, as_int, ["y"], headers)
            != make_key(factory, name, MODEL, cases[0][0], ["y"], headers))


def test_keys_of_two_hashes_never_mix():
    x = {"x": np.ones(3, np.float32)}
    fast = make_key(*reversed(hasher_factory("xxh3")), model=MODEL, feeds=x, outputs=["y"])
    slow = make_key(*reversed(hasher_factory("blake2b")), model=MODEL, feeds=x, outputs=["y"])
    assert fast != slow and ":xxh3:" in fast and ":blake2b:" in slow


def test_nan_inputs_are_keyed_by_their_bytes():
    cache = Cache(memory_mb=1)
    nan = {"x": np.array([[np.nan, 1, 2, 3]], np.float32)}
    key = cache.key(MODEL, nan, ["y"])
    assert cache.key(MODEL, {"x": nan["x"].copy()}, ["y"]) == key      # same bits: same key
    other = nan["x"].copy()
    other.view(np.uint32)[0, 0] |= 1                                    # another NaN payload
    assert np.isnan(other[0, 0]) and cache.key(MODEL, {"x": other}, ["y"]) != key
    cache.set(key, {"y": nan["x"] * 2})
    assert np.isnan(cache.get(key)["y"][0, 0])
    assert cache.key(MODEL, feeds(0.0), ["y"]) != cache.key(MODEL, feeds(-0.0), ["y"])


def test_a_key_needs_numeric_arrays():
    cache = Cache(memory_mb=1)
    with pytest.raises(InputError, match="Cannot be a cache key"):
        cache.key(MODEL, {"x": np.array(["a", "b"], dtype=object)}, ["y"])
    with pytest.raises(InputError, match="Cannot be a cache key"):
        cache.key(MODEL, {"x": [1.0, 2.0]}, ["y"])


def test_blake2b_is_the_fallback_without_xxhash():
    # A fresh interpreter where `import xxhash` fails, as on a device without [cache].
    line = python("\n".join([
        "import sys, json",
        "sys.modules['xxhash'] = None",
        "import numpy as np",
        "from edgeinfer.runtime.cache import Cache",
        "c = Cache(memory_mb=1)",
        "k = c.key('0' * 32, {'x': np.ones(3, np.float32)}, ['y'])",
        "print(json.dumps([c.hash_name, k]))"]))
    name, key = json.loads(line)
    assert name == "blake2b" and ":blake2b:" in key
    code = "\n".join(["import sys", "sys.modules['xxhash'] = None",
                      "from edgeinfer.errors import MissingDependency",
                      "from edgeinfer.runtime.cache import Cache",
                      "try:", "    Cache(memory_mb=1, key_hash='xxh3')",
                      "except MissingDependency as exc:", "    print(exc)"])
    assert "edgeinfer[cache]" in python(code)


# -- values -------------------------------------------------------------------------------------

def test_frames_round_trip_every_numeric_dtype():
    outputs = {"f32": np.arange(12, dtype=np.float32).reshape(3, 4),
               "f16": np.array([1.5, -2], np.float16), "i64": np.array(7, np.int64),
               "b": np.array([True, False, True]), "u8": np.zeros((0, 5), np.uint8),
               "c64": np.array([1 + 2j], np.complex64),
               "strided": np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2]}
    data = encode("k", outputs, expires=123.5)
    assert isinstance(data, bytes) and data[:4] == MAGIC
    back, expires = decode("k", data)
    frozen, nbytes = freeze(outputs)
    assert expires == 123.5 and list(back) == list(outputs) == list(frozen)
    assert nbytes == sum(v.nbytes for v in outputs.values())
    for name, value in outputs.items():
        for got in (back[name], frozen[name]):
            assert got.dtype == value.dtype and got.shape == value.shape
            np.testing.assert_array_equal(got, value)
            assert not got.flags.writeable
    assert frozen["strided"].flags.c_contiguous


def test_frame_headers_are_the_json_of_key_expiry_and_layout():
    outputs = {"a": np.ones((2, 3), np.float32), "b": np.arange(5, dtype=np.int16)}
    for key, expires in (("v1:k", None), ('odd "key"\u00e9', 1.25), ("v1:k", 7.0)):
        data = encode(key, outputs, expires)     # the layout is remembered after the first
        size = struct.unpack_from("<I", data, 8)[0]
        header = data[12:12 + size].rstrip(b" ")
        assert header == json.dumps({"key": key, "expires": expires, "outputs": [
            ["a", "<f4", [2, 3], 0, 24], ["b", "<i2", [5], 32, 10]]},
            separators=(",", ":")).encode("utf-8")
        assert decode(key, data)[1] == expires


def test_damaged_frames_are_refused():
    data = encode("k", {"y": np.arange(100, dtype=np.float32)})
    flipped = bytearray(data)
    flipped[len(data) - 7] ^= 0x10
    cases = {"truncated": data[:len(data) // 2], "flipped": bytes(flipped),
             "empty": b"", "not ours": b"\x80\x04K\x01." + data,
             "extended": data + b"\0\0\0\0"}
    for what, bad in cases.items():
        with pytest.raises(CorruptEntry):
            decode("k", bad)
    with pytest.raises(CorruptEntry, match="another key"):
        decode("other", data)


def forge(header, payload=b""):
    """A frame with a valid checksum around any header: what a hostile writer could make."""
    body = json.dumps(header).encode("utf-8")
    body += b" " * (-(12 + len(body)) % 16)
    crc = zlib.crc32(body + payload) & 0xFFFFFFFF
    return struct.pack("<4sII", MAGIC, crc, len(body)) + body + payload


@pytest.mark.parametrize("entry", [
    ["y", "|O", [1], 0, 8],                       # object array: pointers, never read
    ["y", "<f4", [4], 0, 8],                      # nbytes disagrees with the shape
    ["y", "<f4", [-1], 0, -4],                    # negative dim
    ["y", "<f4", [100], 0, 400],                  # past the payload
    ["y", "[('a', '|O')]", [1], 0, 8],            # structured with an object field
    [7, "<f4", [2], 0, 8],                        # name not a string
])
def test_forged_frames_with_a_valid_checksum_are_refused(entry):
    data = forge({"key": "k", "expires": None, "outputs": [entry]}, b"\0" * 8)
    with pytest.raises(CorruptEntry):
        decode("k", data)


def test_outputs_that_are_not_numeric_arrays_are_not_stored():
    with pytest.raises(Unstorable):
        encode("k", {"y": np.array(["a"], dtype=object)})
    with pytest.raises(Unstorable):
        freeze({"y": "not an array"})
    cache = Cache(memory_mb=1)
    key = cache.key(MODEL, feeds(1), ["y"])
    assert cache.set(key, {"y": np.array(["text"])}) is False
    assert cache.get(key) is None and cache.stats()["unstorable"] == 1


# -- memory tier --------------------------------------------------------------------------------

def _entry(value, size=1000):
    return freeze({"y": np.full(size // 4, value, np.float32)})


def test_memory_tier_is_lru_bounded_in_bytes():
    views, nbytes = _entry(0)
    per_entry = nbytes + len("k0") + ENTRY_OVERHEAD
    tier = MemoryTier(per_entry * 4)
    for i in range(4):
        assert tier.set("k{}".format(i), views, nbytes)
    assert tier.get("k0") is not None          # k0 is now the most recently used
    tier.set("k4", views, nbytes)              # pushes out the least recently used: k1
    assert tier.get("k1") is None and tier.get("k0") is not None
    stats = tier.stats()
    assert stats["evictions"] == 1 and stats["items"] == 4
    assert stats["bytes"] == 4 * per_entry <= stats["limit_bytes"]
    big, big_bytes = _entry(1, size=per_entry * 3)
    assert tier.set("big", big, big_bytes) is False   # > half the budget: not stored
    assert tier.stats()["too_large"] == 1 and len(tier) == 4


def test_memory_tier_under_threads_keeps_its_books():
    tier = MemoryTier(40000)
    entries = [_entry(i, size=400 + 40 * i) for i in range(30)]
    errors = []

    def worker(seed):
        rng = np.random.RandomState(seed)
        try:
            for _ in range(3000):
                i = int(rng.randint(30))
                if rng.rand() < 0.5:
                    tier.set("k{}".format(i), *entries[i])
                else:
                    found = tier.get("k{}".format(i))
                    if found is not None and found[0]["y"][0] != i:
                        errors.append(i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Invariant: the byte count is the sum of what is held, within the budget.
    held = sum(size for _, _, size in tier._items.values())
    stats = tier.stats()
    assert stats["bytes"] == held <= stats["limit_bytes"]
    assert stats["sets"] - stats["evictions"] >= stats["items"]


# -- the Cache: read-through, promotion, copies, TTL --------------------------------------------

def test_hits_are_fresh_copies_and_promoted(tmp_path):
    folder = str(tmp_path / "c")
    first = Cache(memory_mb=1, disk_dir=folder, disk_mb=8)
    x = feeds(3)
    key = first.key(MODEL, x, ["y"])
    out = first.get_or_run(key, double(x))
    out["y"][:] = -1                                # the caller's array: the cache kept its own
    hit = first.get(key)
    np.testing.assert_array_equal(hit["y"], x["x"] * 2)
    hit["y"][:] = -2
    np.testing.assert_array_equal(first.get(key)["y"], x["x"] * 2)
    assert first.stats()["tiers"]["memory"]["hits"] == 2
    first.close()

    second = Cache(memory_mb=1, disk_dir=folder, disk_mb=8)  # a restart: memory is empty
    assert second.get(key)["y"][0, 0] == 6
    assert second.get(key)["y"][0, 0] == 6
    stats = second.stats()
    assert stats["tiers"]["disk"]["hits"] == 1 and stats["tiers"]["memory"]["hits"] == 1
    assert stats["tiers"]["memory"]["hit_us"]["samples"] == 1
    assert stats["tiers"]["disk"]["hit_us"]["samples"] == 1
    assert stats["hits"] == 2 and stats["misses"] == 0 and stats["hit_rate"] == 1.0
    second.close()


def test_ttl_expires_entries_in_every_tier(tmp_path):
    cache = Cache(memory_mb=1, disk_dir=str(tmp_path / "c"), ttl_s=0.3)
    x = feeds(1)
    key = cache.key(MODEL, x, ["y"])
    cache.get_or_run(key, double(x))
    assert cache.get(key) is not None
    long_key = cache.key(MODEL, feeds(2), ["y"])
    cache.set(long_key, {"y": np.ones(2)}, ttl_s=None)      # per-call TTL: none
    time.sleep(0.45)
    assert cache.get(key) is None
    assert cache.disk.peek(key) is None                      # diskcache's expiry too
    assert cache.get(long_key) is not None
    stats = cache.stats()
    assert stats["tiers"]["memory"]["expired"] == 1 and stats["ttl_s"] == 0.3
    cache.close()


def test_delete_and_clear_by_model(tmp_path):
    cache = Cache(memory_mb=1, disk_dir=str(tmp_path / "c"))
    mine = cache.key(MODEL, feeds(1), ["y"])
    theirs = cache.key("f" * 32, feeds(1), ["y"])
    other = cache.key(MODEL, feeds(2), ["y"])
    for key in (mine, theirs, other):
        cache.set(key, {"y": np.ones(3)})
    assert cache.delete(other) is True and cache.get(other) is None
    assert cache.clear(model=MODEL) == {"memory": 1, "disk": 1}
    assert cache.get(mine) is None and cache.get(theirs) is not None
    assert cache.clear() == {"memory": 1, "disk": 1}
    cache.close()


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(memory_mb=-1), "memory_mb must be a number >= 0"),
    (dict(memory_mb=True), "memory_mb must be a number"),
    (dict(disk_dir="/tmp/x", disk_mb=0), "disk_mb must be a number > 0"),
    (dict(ttl_s=0), "ttl_s must be a number > 0"),
    (dict(ttl_s=float("nan")), "ttl_s must be a number > 0"),
    (dict(redis_timeout_s=-0.1), "redis_timeout_s"),
    (dict(memory_mb=0), "This cache has no tier"),
    (dict(key_hash="md5"), "Unknown cache key hash 'md5'"),
    (dict(namespace="two words"), "namespace must be a non-empty word"),
    (dict(disk_dir=3), "disk_dir must be a folder path"),
    (dict(redis_url="ftp://127.0.0.1"), "Cannot use Redis URL"),
])
def test_bad_settings_are_refused(kwargs, fragment):
    with pytest.raises(UsageError) as info:
        Cache(**kwargs)
    assert fragment in str(info.value)


# -- single-flight ------------------------------------------------------------------------------

def _stampede(cache, key, compute, threads=32):
    barrier = threading.Barrier(threads)
    results, errors = [None] * threads, [None] * threads

    def worker(i):
        barrier.wait()
        try:
            results[i] = cache.get_or_run(key, compute)
        except Exception as exc:
            errors[i] = exc
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results, errors


def test_32_threads_one_missing_key_one_model_run(tmp_path):
    cache = Cache(memory_mb=4, disk_dir=str(tmp_path / "c"))
    runs = []

    def compute():
        runs.append(threading.current_thread().name)
        time.sleep(0.2)                # long enough for every thread to pile up
        return {"y": np.arange(10, dtype=np.float32)}
    key = cache.key(MODEL, feeds(1), ["y"])
    results, errors = _stampede(cache, key, compute)
    assert errors == [None] * 32
    assert len(runs) == 1
    stats = cache.stats()
    assert stats["runs"] == 1 and stats["waits"] + stats["hits"] == 31
    for r in results:
        np.testing.assert_array_equal(r["y"], np.arange(10))
    # Every caller got its own arrays: none aliases another's.
    for i in range(32):
        for j in range(i + 1, 32):
            assert not np.shares_memory(results[i]["y"], results[j]["y"])
    cache.close()


def test_a_failed_run_reaches_every_waiter_and_is_not_cached():
    cache = Cache(memory_mb=4)
    runs = []

    def compute():
        runs.append(1)
        time.sleep(0.2)
        raise RuntimeError("backend fell over")
    key = cache.key(MODEL, feeds(1), ["y"])
    _, errors = _stampede(cache, key, compute, threads=8)
    assert len(runs) == 1
    assert all(isinstance(e, RuntimeError) and "fell over" in str(e) for e in errors)
    assert cache.get_or_run(key, double(feeds(1)))["y"][0, 0] == 2   # tried again, fine now
    assert cache._flights == {}


# -- disk tier: processes, limits, faults, hostile entries --------------------------------------

def test_disk_cache_survives_a_restart_across_processes(tmp_path):
    # The writer exits right after its last miss, without close(): results still
    # queued for the disk are written at interpreter exit.
    folder = str(tmp_path / "c")
    write = "\n".join([
        "import sys, numpy as np",
        "from edgeinfer.runtime.cache import Cache",
        "c = Cache(memory_mb=16, disk_dir=sys.argv[1])",
        "for i in range(50):",
        "    x = {'x': np.full((1, 4), i, np.float32)}",
        "    out = c.get_or_run(c.key('0' * 32, x, ['y']), lambda: {'y': x['x'] * 2})",
        "print(c.stats()['runs'])"])
    read = write.replace("print(c.stats()['runs'])",
                         "print(c.stats()['runs'], c.stats()['tiers']['disk']['hits'], "
                         "float(out['y'][0, 0]))")
    assert python(write, folder) == "50"
    assert python(read, folder) == "0 50 98.0"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


def test_queued_writes_are_found_and_deletes_win(tmp_path):
    folder = str(tmp_path / "c")
    cache = Cache(memory_mb=0, disk_dir=folder)
    keys = [cache.key(MODEL, feeds(i), ["y"]) for i in range(40)]
    for i, key in enumerate(keys):
        cache.set(key, {"y": np.full(3, i)})
    # Found at once, whether still queued for the disk or already on it.
    assert [cache.get(key)["y"][0] for key in keys] == list(range(40))
    assert cache.delete(keys[0]) is True or cache.get(keys[0]) is None
    assert cache.flush(timeout_s=30)
    assert cache.get(keys[0]) is None                     # the delete was not undone
    cache.close()
    again = Cache(memory_mb=0, disk_dir=folder)
    assert sum(again.get(key) is not None for key in keys) == 39
    again.close()


def test_the_writer_thread_ends_when_idle_and_comes_back(tmp_path, monkeypatch):
    from edgeinfer.runtime.cache import writer
    monkeypatch.setattr(writer, "IDLE_EXIT_S", 0.2)
    monkeypatch.setattr(writer, "LINGER_S", 0.0)
    cache = Cache(memory_mb=1, disk_dir=str(tmp_path / "c"))
    first, second = (cache.key(MODEL, feeds(i), ["y"]) for i in (1, 2))
    cache.set(first, {"y": np.ones(2)})
    thread = cache._writer._thread
    assert thread is not None
    thread.join(5)                                      # idle: it ended by itself
    assert not thread.is_alive() and cache._writer._thread is None
    assert cache.disk.peek(first) is not None          # after writing what it had
    cache.set(second, {"y": np.ones(2)})
    assert cache.flush(timeout_s=10) and cache.disk.peek(second) is not None
    cache.close()


def test_a_full_queue_makes_callers_write(tmp_path, monkeypatch):
    from edgeinfer.runtime.cache import writer
    monkeypatch.setattr(writer, "MAX_PENDING", 0)
    cache = Cache(memory_mb=1, disk_dir=str(tmp_path / "c"))
    key = cache.key(MODEL, feeds(1), ["y"])
    cache.set(key, {"y": np.ones(2)})
    assert cache.disk.peek(key) is not None and cache._writer._thread is None
    cache.close()


def test_a_leader_that_lands_between_a_miss_and_its_flight_is_not_run_again():
    cache = Cache(memory_mb=1)
    key = cache.key(MODEL, feeds(1), ["y"])
    runs = []

    def compute():
        runs.append(1)
        return {"y": np.arange(3, dtype=np.float32)}
    real_lookup, interrupted = cache._lookup, []

    def lookup_then_another_caller_lands(k, now):
        found = real_lookup(k, now)
        if found is None and not interrupted:
            interrupted.append(1)
            # Another thread misses, runs and stores the key after our lookup
            # and before we take the flight.
            other = threading.Thread(target=cache.get_or_run, args=(k, compute))
            other.start()
            other.join()
        return found
    cache._lookup = lookup_then_another_caller_lands
    out = cache.get_or_run(key, compute)
    assert len(runs) == 1 and out["y"].tolist() == [0, 1, 2]
    assert cache.stats()["waits"] == 1 and cache.stats()["runs"] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="this platform has no fork()")
def test_a_forked_child_writes_its_results_with_its_own_thread(tmp_path):
    cache = Cache(memory_mb=1, disk_dir=str(tmp_path / "c"))
    mine, childs = (cache.key(MODEL, feeds(i), ["y"]) for i in (1, 2))
    cache.set(mine, {"y": np.ones(2)})              # queued; the parent's thread lingers
    pid = os.fork()
    if pid == 0:                                    # the child: no thread, a copied queue
        ok = False
        try:
            cache.set(childs, {"y": np.zeros(2)})
            ok = cache.flush(timeout_s=10) and cache.disk.peek(childs) is not None
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung writing its result")
        time.sleep(0.02)
    assert status == 0, "the child's result did not reach the disk"
    assert cache.flush(timeout_s=10)
    assert cache.disk.peek(mine) is not None and cache.disk.peek(childs) is not None
    cache.close()


def test_a_writer_thread_that_dies_is_started_again(tmp_path, monkeypatch):
    cache = Cache(memory_mb=1, disk_dir=str(tmp_path / "c"))
    writer = cache._writer
    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    monkeypatch.setattr(writer, "_loop", lambda: 1 / 0)          # a bug in the thread
    first, second = (cache.key(MODEL, feeds(i), ["y"]) for i in (1, 2))
    cache.set(first, {"y": np.ones(2)})
    thread = writer._thread
    thread.join(5)
    assert not thread.is_alive() and writer._thread is None
    monkeypatch.undo()
    cache.set(second, {"y": np.ones(2)})                          # a new thread writes both
    assert writer._thread is not thread
    assert cache.flush(timeout_s=10)
    assert cache.disk.peek(first) is not None and cache.disk.peek(second) is not None
    cache.close()


def test_stampede_without_a_memory_tier(tmp_path):
    cache = Cache(memory_mb=0, disk_dir=str(tmp_path / "c"))
    runs = []

    def compute():
        runs.append(1)
        time.sleep(0.2)
        return {"y": np.arange(5, dtype=np.float32)}
    results, errors = _stampede(cache, cache.key(MODEL, feeds(1), ["y"]), compute)
    assert errors == [None] * 32 and len(runs) == 1
    assert all(r["y"][4] == 4 for r in results)
    cache.close()


WORKER = """
import json, sys
import numpy as np
from edgeinfer.runtime.cache import Cache
import os, time
folder, who, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Process 0 writes through the background writer, process 1 itself.
cache = Cache(memory_mb=0, disk_dir=folder, disk_mb=0.5, disk_timeout_s=30,
              write_behind=who == 0)
# Start together: each says it is ready, then waits for the other.
open(os.path.join(os.path.dirname(folder), "ready-%d" % who), "w").close()
while not os.path.exists(os.path.join(os.path.dirname(folder), "ready-%d" % (1 - who))):
    time.sleep(0.01)
wrong = 0
for i in range(calls):
    # Both processes ask for the same 60 inputs, which do not fit: every other call
    # cycles through all of them (LRU's worst case, so entries are evicted), the
    # others go to 10 that do fit (so each process finds entries on disk).
    j = (i * 7 + who * 3) % 60 if i % 2 else (i // 2) % 10
    x = {"x": np.full(3000, j, np.float32)}
    out = cache.get_or_run(cache.key("0" * 32, x, ["y"]), lambda: {"y": x["x"] * 3})
    wrong += int(not np.all(out["y"] == 3 * j))
cache.flush()
disk = cache.stats()["tiers"]["disk"]
assert disk["enabled"], disk["warning"]
print(json.dumps({"wrong": wrong, "hits": disk["hits"], "errors": disk["errors"],
                  "corrupt": disk["corrupt"], "evictions": disk["evictions"]}))
"""


def test_two_processes_share_one_bounded_disk_cache(tmp_path):
    folder = str(tmp_path / "shared")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, folder, str(who), "2000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, env=env, cwd=REPO_ROOT)
             for who in (0, 1)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for report in reports:
        assert report["wrong"] == 0 and report["corrupt"] == 0 and report["errors"] == 0
        assert report["hits"] > 0
    # 60 entries of 12 KB do not fit in 0.5 MiB: LRU had to evict.
    assert sum(r["evictions"] for r in reports) > 0
    tier = DiskTier(folder, None)
    try:
        stats = tier.stats()
        assert stats["limit_bytes"] == 512 * 1024
        assert stats["bytes"] <= stats["limit_bytes"] + 64 * 1024
    finally:
        tier.close()


def _warm_index(cache):
    """Enough lookups of absent keys for the disk tier to build its key filter."""
    from edgeinfer.runtime.cache.diskindex import WARM_LOOKUPS
    for i in range(WARM_LOOKUPS + 1):
        assert cache.get(cache.key(MODEL, feeds(10000 + i), ["y"])) is None


def test_after_warm_up_a_disk_miss_costs_no_sqlite_query(tmp_path):
    folder = str(tmp_path / "c")
    cache = Cache(memory_mb=0, disk_dir=folder, write_behind=False)
    before = [cache.key(MODEL, feeds(i), ["y"]) for i in range(50)]
    for key in before:
        cache.set(key, {"y": np.ones(3, np.float32)})
    _warm_index(cache)
    statements = []
    cache.disk._cache._con.set_trace_callback(statements.append)
    assert cache.get(cache.key(MODEL, feeds(-5), ["y"])) is None
    assert statements == []                                # answered by the filter alone
    # Every key on disk before the filter was built, and every key written since, is found.
    later = cache.key(MODEL, feeds(-6), ["y"])
    cache.set(later, {"y": np.ones(3, np.float32)})
    assert all(cache.get(key) is not None for key in before + [later])
    assert any(s.startswith("SELECT") for s in statements)
    cache.disk._cache._con.set_trace_callback(None)
    cache.close()


def test_results_another_writer_stored_are_found_within_disk_index_s(tmp_path):
    folder = str(tmp_path / "c")
    cache = Cache(memory_mb=0, disk_dir=folder, disk_index_s=0.2)
    _warm_index(cache)
    other = Cache(memory_mb=0, disk_dir=folder, write_behind=False)   # another process's view
    key = other.key(MODEL, feeds(7), ["y"])
    other.set(key, {"y": np.full(3, 7, np.float32)})
    time.sleep(0.3)
    found = cache.get(key)
    assert found is not None and found["y"][0] == 7
    # Cleared elsewhere, then refilled: the rowids start again, the filter is rebuilt.
    other.clear()
    again = other.key(MODEL, feeds(8), ["y"])
    other.set(again, {"y": np.full(3, 8, np.float32)})
    time.sleep(0.3)
    assert cache.get(again)["y"][0] == 8 and cache.get(key) is None
    other.close()
    cache.close()


def test_disk_lru_keeps_what_is_read(tmp_path):
    # Written by the callers (no write-behind): each set lands, then culls, at once.
    cache = Cache(memory_mb=0, disk_dir=str(tmp_path / "c"), disk_mb=1, write_behind=False)
    hot = cache.key(MODEL, feeds(-1), ["y"])
    cache.set(hot, {"y": np.zeros(10000, np.float32)})           # 40 KB, a value file
    for i in range(60):
        cache.set(cache.key(MODEL, feeds(i), ["y"]), {"y": np.zeros(10000, np.float32)})
        assert cache.get(hot) is not None, "the entry read every time was evicted"
    stats = cache.stats()["tiers"]["disk"]
    assert stats["evictions"] > 0 and stats["bytes"] <= stats["limit_bytes"]
    assert cache.set(cache.key(MODEL, feeds(99), ["y"]),
                     {"y": np.zeros(200000, np.float32)}) is False   # > half the limit
    assert cache.stats()["tiers"]["disk"]["too_large"] == 1
    cache.close()


def _diskcache_row(folder, key):
    """A row as written to diskcache's table, the rowid and times left out."""
    with sqlite3.connect(os.path.join(folder, "cache.db")) as con:
        con.row_factory = sqlite3.Row
        row = dict(con.execute("SELECT * FROM Cache WHERE key = ?", (key,)).fetchone())
    for column in ("rowid", "store_time", "access_time"):
        row.pop(column)
    if row["expire_time"] is not None:
        row["expire_time"] = round(row["expire_time"] - time.time(), -1)   # ~ttl from now
    return row


def test_rows_the_disk_tier_inserts_itself_are_the_rows_diskcache_writes(tmp_path):
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    tier = DiskTier(ours, 64 * 1024 * 1024)
    reference = diskcache.Cache(theirs, disk=BytesDisk)
    assert tier._direct
    small, large = b"s" * 4000, b"L" * 100000            # in the row; in a value file
    items = [("k-small", small, None), ("k-ttl", small, 600.0), ("k-large", large, None)]
    assert tier.set_many(items) == 3
    for key, data, expire_s in items:
        reference.set(key, data, expire=expire_s)
    for key in ("k-small", "k-ttl"):
        assert _diskcache_row(ours, key) == _diskcache_row(theirs, key)
    # diskcache reads the rows back, counts them, and sizes the value file.
    again = diskcache.Cache(ours, disk=BytesDisk)
    assert again.get("k-small") == small and again.get("k-large") == large
    assert len(again) == len(reference) == 3 and again.volume() > len(large)
    assert 590 <= again.get("k-ttl", expire_time=True)[1] - time.time() <= 600
    # A key already there is updated (last write wins), a new one beside it inserted.
    assert tier.set_many([("k-small", b"t" * 4000, None), ("k-new", small, None),
                          ("k-new", b"u" * 10, None)]) == 3
    assert again.get("k-small") == b"t" * 4000 and again.get("k-new") == b"u" * 10
    assert len(again) == 4
    for cache in (again, reference, tier):
        cache.close()


def test_a_disk_table_of_another_layout_is_written_through_diskcache(tmp_path):
    folder = str(tmp_path / "c")
    DiskTier(folder, 64 * 1024 * 1024).close()
    with sqlite3.connect(os.path.join(folder, "cache.db")) as con:
        con.execute("ALTER TABLE Cache ADD COLUMN future TEXT")    # a later diskcache
    tier = DiskTier(folder, 64 * 1024 * 1024)
    assert tier.enabled and not tier._direct
    assert tier.set_many([("k", b"x" * 100, None)]) == 1 and tier.peek("k") == b"x" * 100
    tier.close()


def _row(folder, key):
    with sqlite3.connect(os.path.join(folder, "cache.db")) as con:
        return con.execute("SELECT mode, filename, value FROM Cache WHERE key = ?",
                           (key,)).fetchone()


def _update(folder, key, **columns):
    with sqlite3.connect(os.path.join(folder, "cache.db")) as con:
        sets = ", ".join("{} = ?".format(c) for c in columns)
        con.execute("UPDATE Cache SET {} WHERE key = ?".format(sets),
                    tuple(columns.values()) + (key,))


@pytest.mark.parametrize("damage", ["flip-in-database", "truncate-in-database", "truncate-file"])
def test_a_corrupted_disk_entry_is_dropped_counted_and_recomputed(tmp_path, damage):
    folder = str(tmp_path / "c")
    cache = Cache(memory_mb=0, disk_dir=folder)
    size = 20000 if damage == "truncate-file" else 100     # values >= 32 KB go to files
    x = {"x": np.full((1, size), 2, np.float32)}
    key = cache.key(MODEL, x, ["y"])
    cache.get_or_run(key, double(x))
    cache.flush()
    mode, filename, value = _row(folder, key)
    if damage == "truncate-file":
        assert filename is not None
        path = os.path.join(folder, filename)
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
    else:
        data = bytearray(value)
        if damage == "flip-in-database":
            data[-3] ^= 0xFF
        else:
            data = data[:len(data) // 2]
        _update(folder, key, value=bytes(data))
    out = cache.get_or_run(key, double(x))
    np.testing.assert_array_equal(out["y"], x["x"] * 2)
    stats = cache.stats()
    assert stats["runs"] == 2 and stats["tiers"]["disk"]["corrupt"] == 1
    assert "dropped a bad entry" in stats["tiers"]["disk"]["warning"]
    assert cache.get(key) is not None                       # stored again, intact
    cache.close()


class Plant(object):
    """A pickle that makes a folder when unpickled: proof of code execution."""

    def __init__(self, path, padding=0):
        self.path, self.padding = path, padding

    def __reduce__(self):
        return (os.mkdir, (self.path,), "x" * self.padding or None)


@pytest.mark.parametrize("padding", [0, 50000])   # in the database, and in a value file
def test_a_planted_pickle_is_never_unpickled(tmp_path, padding):
    folder, canary = str(tmp_path / "c"), str(tmp_path / "pwned")
    cache = Cache(memory_mb=0, disk_dir=folder)
    key = cache.key(MODEL, feeds(1), ["y"])
    planter = diskcache.Cache(folder)            # stock diskcache: pickles objects
    planter.set(key, Plant(canary, padding))
    assert _row(folder, key)[0] == diskcache.core.MODE_PICKLE
    planter.close()
    assert cache.get(key) is None
    assert not os.path.exists(canary)
    stats = cache.stats()["tiers"]["disk"]
    assert stats["corrupt"] == 1 and "plain bytes: refused" in stats["warning"]
    assert _row(folder, key) is None             # dropped
    out = cache.get_or_run(key, double(feeds(1)))
    assert out["y"][0, 0] == 2 and not os.path.exists(canary)
    cache.close()


def test_bytes_disk_refuses_objects_and_pickled_keys(tmp_path):
    disk = BytesDisk(str(tmp_path))
    with pytest.raises(TypeError):
        disk.store({"an": "object"}, False)
    with pytest.raises(TypeError):
        disk.put(("a", "tuple", "key"))
    assert disk.get(pickle.dumps(Plant(str(tmp_path / "pwned"))), False) is None
    assert not os.path.exists(str(tmp_path / "pwned"))


@pytest.mark.parametrize("planted", ["../precious.txt", "ABSOLUTE"])
def test_a_planted_file_name_is_neither_read_nor_deleted(tmp_path, planted):
    folder = str(tmp_path / "c")
    precious = tmp_path / "precious.txt"
    precious.write_bytes(b"keep me")
    cache = Cache(memory_mb=0, disk_dir=folder)
    key = cache.key(MODEL, feeds(1), ["y"])
    cache.set(key, {"y": np.ones(3)})
    cache.flush()
    name = str(precious) if planted == "ABSOLUTE" else planted
    _update(folder, key, mode=diskcache.core.MODE_BINARY, filename=name, value=None)
    assert cache.get(key) is None
    assert precious.read_bytes() == b"keep me"
    assert cache.stats()["tiers"]["disk"]["corrupt"] == 1
    cache.close()


def assert_disk_off(folder, fragment):
    """A cache on ``folder`` has its disk tier off, says why, and still answers."""
    cache = Cache(memory_mb=1, disk_dir=str(folder))
    stats = cache.stats()
    assert stats["tiers"]["disk"]["enabled"] is False
    assert fragment in stats["warnings"][0]
    x = feeds(1)
    assert cache.get_or_run(cache.key(MODEL, x, ["y"]), double(x))["y"][0, 0] == 2


def test_a_directory_others_can_write_is_not_used(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(str(folder), 0o777)
    assert_disk_off(folder, "writable by others (mode 777)")
    assert not os.path.exists(str(folder / "cache.db"))


def test_a_directory_that_cannot_be_created_turns_the_tier_off(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_disk_off(blocker / "cache", "cannot be opened")


def test_a_read_only_disk_turns_the_tier_off(tmp_path):
    folder = tmp_path / "ro"
    with Mount(folder, "ro,size=1m") as mount:
        if not mount.ok:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only tmpfs here: {}".format(mount.why))
            os.chmod(str(folder), 0o500)        # without root, permissions do bind
        assert_disk_off(folder / "cache", "cannot be opened")


def test_a_full_disk_turns_writes_into_counted_errors(tmp_path):
    folder = tmp_path / "small"
    with Mount(folder, "size=1m") as mount:
        if not mount.ok:
            pytest.skip("a full disk needs a small tmpfs, and mounting one needs root: "
                        "{}".format(mount.why))
        cache = Cache(memory_mb=0, disk_dir=str(folder / "cache"), disk_mb=64)
        for i in range(20):
            x = {"x": np.full((1, 25000), i, np.float32)}        # 100 KB per result
            out = cache.get_or_run(cache.key(MODEL, x, ["y"]), double(x))
            assert out["y"][0, 0] == 2 * i
        cache.flush()
        stats = cache.stats()
        disk = stats["tiers"]["disk"]
        assert disk["errors"] > 0 and "No space left on device" in disk["warning"]
        assert stats["runs"] == 20
        cache.close()


# -- Redis tier ---------------------------------------------------------------------------------

def test_redis_tier_round_trip_namespace_ttl_and_promotion(tmp_path, redis_url, redis_client):
    writer = Cache(memory_mb=1, redis_url=redis_url, ttl_s=60)
    x = feeds(4)
    key = writer.key(MODEL, x, ["y"])
    writer.get_or_run(key, double(x))
    writer.flush()
    name = "edgeinfer:" + key
    assert name.startswith("edgeinfer:v1:{}:".format(MODEL))
    assert 0 < redis_client.pttl(name) <= 60000
    assert redis_client.get(name)[:4] == MAGIC

    reader = Cache(memory_mb=1, disk_dir=str(tmp_path / "d"), redis_url=redis_url)
    assert reader.get(key)["y"][0, 0] == 8            # from Redis ...
    reader.flush()
    assert reader.disk.peek(key) is not None          # ... copied to disk
    assert reader.get(key)["y"][0, 0] == 8            # ... and to memory
    tiers = reader.stats()["tiers"]
    assert tiers["redis"]["hits"] == 1 and tiers["memory"]["hits"] == 1
    assert tiers["redis"]["hit_us"]["samples"] == 1 and tiers["redis"]["state"] == "up"

    other = writer.key("f" * 32, x, ["y"])
    writer.set(other, {"y": np.ones(2)})
    assert writer.clear(model=MODEL)["redis"] == 1    # clear() lands queued writes first
    assert redis_client.exists(name) == 0 and redis_client.exists("edgeinfer:" + other) == 1
    for cache in (writer, reader):
        cache.close()


def test_a_corrupt_redis_entry_is_dropped(redis_url, redis_client):
    cache = Cache(memory_mb=1, redis_url=redis_url)
    x = feeds(4)
    key = cache.key(MODEL, x, ["y"])
    redis_client.set("edgeinfer:" + key, b"not a frame at all")
    assert cache.get_or_run(key, double(x))["y"][0, 0] == 8
    cache.flush()
    stats = cache.stats()["tiers"]["redis"]
    assert stats["corrupt"] == 1 and stats["sets"] == 1
    assert redis_client.get("edgeinfer:" + key)[:4] == MAGIC   # replaced by a good one
    cache.close()


def test_a_down_redis_is_a_miss_with_a_warning():
    port = free_port()                      # nothing listens there
    cache = Cache(memory_mb=1, redis_url="redis://127.0.0.1:{}/0".format(port),
                  redis_timeout_s=0.5, redis_retry_s=30)
    x = feeds(1)
    start = time.perf_counter()
    for value in range(5):
        x = feeds(value)
        assert cache.get_or_run(cache.key(MODEL, x, ["y"]), double(x))["y"][0, 0] == 2 * value
    assert time.perf_counter() - start < 1.0
    cache.flush()
    stats = cache.stats()
    redis = stats["tiers"]["redis"]
    assert redis["errors"] == 1 and redis["skipped"] == 9 and redis["state"] == "down"
    assert "Redis at 127.0.0.1:{}/0: a read failed".format(port) in stats["warnings"][0]
    assert "retried every 30 s" in stats["warnings"][0]


def test_a_hung_redis_stalls_no_longer_than_the_timeout():
    server = SilentServer()
    try:
        cache = Cache(memory_mb=1, redis_url="redis://127.0.0.1:{}/0".format(server.port),
                      redis_timeout_s=0.3, redis_retry_s=0.6)
        x = feeds(1)
        key = cache.key(MODEL, x, ["y"])
        start = time.perf_counter()
        assert cache.get_or_run(key, double(x))["y"][0, 0] == 2
        first = time.perf_counter() - start
        assert 0.25 < first < 0.6, first          # one timeout, not retries on top
        start = time.perf_counter()
        cache.memory.clear()
        assert cache.get_or_run(key, double(x))["y"][0, 0] == 2
        assert time.perf_counter() - start < 0.1  # skipped while down
        time.sleep(0.7)                           # past retry_s: one probe, one timeout
        cache.memory.clear()
        start = time.perf_counter()
        cache.get(key)
        assert 0.25 < time.perf_counter() - start < 0.6
        redis = cache.stats()["tiers"]["redis"]
        assert redis["errors"] == 2 and "TimeoutError" in redis["warning"]
        cache.close()
    finally:
        server.close()


def test_redis_killed_mid_run_then_back(tmp_path, monkeypatch):
    from edgeinfer.runtime.cache import writer
    monkeypatch.setattr(writer, "LINGER_S", 5.0)    # results stay queued until flushed
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    proc, port = start_redis(tmp_path)
    try:
        cache = Cache(memory_mb=0, redis_url="redis://127.0.0.1:{}/0".format(port),
                      redis_timeout_s=0.5, redis_retry_s=0.3)
        keys = [cache.key(MODEL, feeds(i), ["y"]) for i in range(6)]
        for i, key in enumerate(keys[:3]):
            cache.get_or_run(key, double(feeds(i)))
        assert cache.get(keys[0]) is not None
        proc.kill()                               # mid-run, no goodbye
        proc.wait(10)
        for i, key in enumerate(keys):
            assert cache.get_or_run(key, double(feeds(i)))["y"][0, 0] == 2 * i
        stats = cache.stats()
        assert stats["tiers"]["redis"]["errors"] >= 1 and stats["warnings"]
        assert stats["tiers"]["redis"]["state"] == "down"
        # Answers from the write-behind queue while Redis is down are not Redis hits.
        hits = stats["tiers"]["redis"]["hits"]
        assert cache.get(keys[4])["y"][0, 0] == 8         # from the queue
        assert cache.stats()["tiers"]["redis"]["hits"] == hits
        proc, _ = start_redis(tmp_path, port)     # back, empty (no persistence)
        time.sleep(0.4)
        assert cache.get_or_run(keys[5], double(feeds(5)))["y"][0, 0] == 10
        assert cache.flush(timeout_s=10)
        assert cache.get(keys[5]) is not None     # stored in the new Redis, read back
        assert cache.stats()["tiers"]["redis"]["state"] == "up"
        cache.close()
    finally:
        stop(proc)


# -- sessions -----------------------------------------------------------------------------------

def expected(W, b, x):
    z = x @ W + b
    return np.maximum(z, 0), z


@pytest.fixture
def other_tiny():
    """The tiny model with other weights (seed 8): (model bytes, W, b)."""
    model, W, b = models.tiny(13, 7, seed=8)
    return model.SerializeToString(), W, b


def test_session_run_consults_the_cache(tiny_bundle, tiny_model):
    cache = Cache(memory_mb=4)
    session = edgeinfer.load(tiny_bundle, cache=cache)
    plain = edgeinfer.load(tiny_bundle)
    x = {"x": np.random.RandomState(0).standard_normal((2, 4)).astype(np.float32)}
    first = session.run(x)
    second = session.run(x)
    truth = plain.run(x)
    for out in (first, second):
        for name in ("y", "z"):
            np.testing.assert_array_equal(out[name], truth[name])
    stats = cache.stats()
    assert stats["runs"] == 1 and stats["hits"] == 1
    # A caller changing what it got changes nothing stored.
    second["y"][:] = 42
    first["z"][:] = 42
    np.testing.assert_array_equal(session.run(x)["y"], truth["y"])
    # Asking for other outputs is another key; float64 input is converted, same key.
    only_z = session.run(x, outputs=["z"])
    assert list(only_z) == ["z"] and cache.stats()["runs"] == 2
    session.run({"x": x["x"].astype(np.float64)})
    assert cache.stats()["runs"] == 2
    # Opt-out per call.
    session.run(x, cache=False)
    assert cache.stats()["gets"] == 5
    assert session.model_hash == model_hash(session.manifest) and len(session.model_hash) == 32


def test_session_stampede_runs_the_model_once(tiny_bundle):
    cache = Cache(memory_mb=4)
    session = edgeinfer.load(tiny_bundle, cache=cache)
    x = {"x": np.ones((64, 4), np.float32)}
    barrier = threading.Barrier(32)
    results = [None] * 32

    def worker(i):
        barrier.wait()
        results[i] = session.run(x)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.stats()["runs"] == 1
    for r in results[1:]:
        np.testing.assert_array_equal(r["y"], results[0]["y"])
        assert not np.shares_memory(r["y"], results[0]["y"])


def test_run_many_answers_hits_and_runs_each_distinct_miss_once(tiny_bundle):
    cache = Cache(memory_mb=4)
    session = edgeinfer.load(tiny_bundle, cache=cache)
    a, b, c = (feeds(v, (1, 4)) for v in (1, 2, 3))
    session.run(a)
    outs = session.run_many([a, b, b, c, a])
    assert cache.stats()["runs"] == 3            # a (run), then b and c once each
    plain = edgeinfer.load(tiny_bundle)
    for x, out in zip([a, b, b, c, a], outs):
        np.testing.assert_array_equal(out["y"], plain.run(x)["y"])
    assert not np.shares_memory(outs[1]["y"], outs[2]["y"])
    session.run_many([a, b], cache=False)
    assert cache.stats()["runs"] == 3


def test_a_bundle_can_opt_out(tmp_path, make_manifest, tiny_model):
    path = tmp_path / "sampling.eib"
    Bundle.write(str(path), make_manifest(deterministic=False), {"model.onnx": tiny_model.data})
    cache = Cache(memory_mb=4)
    session = edgeinfer.load(path, cache=cache)
    assert session.cache is None and "not deterministic" in session.notes[-1]
    session.run(feeds(1))
    assert cache.stats()["gets"] == 0
    with pytest.raises(edgeinfer.errors.BundleError, match="'deterministic': 'no', not true"):
        Bundle.write(str(tmp_path / "bad.eib"), make_manifest(deterministic="no"),
                     {"model.onnx": tiny_model.data})


def test_convert_nondeterministic_marks_the_bundle_and_run_caches_nothing(tmp_path, tiny_model):
    from .test_cli import assert_ok, invoke
    out = tmp_path / "sampling.eib"
    assert_ok(invoke("convert", tiny_model.path, "-p", "fp32", "--nondeterministic",
                     "--no-speed-check", "-o", out))
    assert Bundle.open(str(out)).manifest["deterministic"] is False
    cache = Cache(memory_mb=4)
    session = edgeinfer.load(out, cache=cache)
    assert session.cache is None
    session.run(feeds(1))
    assert cache.stats()["gets"] == 0
    plain = tmp_path / "plain.eib"
    assert_ok(invoke("convert", tiny_model.path, "-p", "fp32", "--no-speed-check", "-o", plain))
    assert "deterministic" not in Bundle.open(str(plain)).manifest
    assert edgeinfer.load(plain, cache=cache).cache is cache


def test_load_refuses_a_cache_that_is_not_one(tiny_bundle):
    with pytest.raises(UsageError, match="cache must be an edgeinfer.Cache, not str"):
        edgeinfer.load(tiny_bundle, cache="/tmp/cache")


def test_two_models_share_a_directory_without_mixing(tmp_path, make_manifest, tiny_model,
                                                    other_tiny):
    folder = str(tmp_path / "shared")
    first, second = tmp_path / "a.eib", tmp_path / "b.eib"
    Bundle.write(str(first), make_manifest(), {"model.onnx": tiny_model.data})
    Bundle.write(str(second), make_manifest(), {"model.onnx": other_tiny[0]})
    x = {"x": np.random.RandomState(1).standard_normal((1, 4)).astype(np.float32)}
    cache = Cache(memory_mb=0, disk_dir=folder)
    out_a = edgeinfer.load(first, cache=cache).run(x)
    out_b = edgeinfer.load(second, cache=cache).run(x)
    np.testing.assert_allclose(out_a["y"], expected(tiny_model.W, tiny_model.b, x["x"])[0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_b["y"], expected(other_tiny[1], other_tiny[2], x["x"])[0],
                               rtol=1e-5, atol=1e-6)
    assert cache.stats()["runs"] == 2 and cache.stats()["hits"] == 0
    cache.flush()
    report = admin.inspect(folder)
    assert len(report["disk"]["models"]) == 2
    cache.close()


def test_a_changed_bundle_under_the_same_name_gets_its_own_results(tmp_path, make_manifest,
                                                                   tiny_model, other_tiny):
    folder, path = str(tmp_path / "c"), tmp_path / "model.eib"
    x = {"x": np.random.RandomState(2).standard_normal((1, 4)).astype(np.float32)}
    Bundle.write(str(path), make_manifest(), {"model.onnx": tiny_model.data})
    with Cache(memory_mb=1, disk_dir=folder) as cache:
        old = edgeinfer.load(path, cache=cache).run(x)
    Bundle.write(str(path), make_manifest(), {"model.onnx": other_tiny[0]})   # same file name
    with Cache(memory_mb=1, disk_dir=folder) as cache:
        new = edgeinfer.load(path, cache=cache).run(x)
        assert cache.stats()["runs"] == 1
    np.testing.assert_allclose(new["z"], expected(other_tiny[1], other_tiny[2], x["x"])[1],
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(new["z"], old["z"])


def test_nan_inputs_through_a_session(tiny_bundle):
    cache = Cache(memory_mb=1)
    session = edgeinfer.load(tiny_bundle, cache=cache)
    x = {"x": np.array([[np.nan, 1, 2, 3]], np.float32)}
    first, second = session.run(x), session.run(x)
    np.testing.assert_array_equal(first["z"], second["z"])     # NaN == NaN for this check
    assert np.isnan(second["z"]).all() and cache.stats()["hits"] == 1


def test_a_broken_disk_entry_under_a_session_reruns_the_model(tmp_path, tiny_bundle, tiny_model):
    folder = str(tmp_path / "c")
    cache = Cache(memory_mb=0, disk_dir=folder)
    session = edgeinfer.load(tiny_bundle, cache=cache)
    x = feeds(0.5)
    session.run(x)
    cache.flush()
    key = cache.key(session.model_hash, x, ["y", "z"])
    _update(folder, key, value=b"EIC1garbage")
    out = session.run(x)
    np.testing.assert_allclose(out["y"], expected(tiny_model.W, tiny_model.b, x["x"])[0],
                               rtol=1e-5, atol=1e-6)
    assert cache.stats()["runs"] == 2 and cache.stats()["tiers"]["disk"]["corrupt"] == 1


# -- device rules and the CLI -------------------------------------------------------------------

def test_the_cache_imports_neither_redis_nor_xxhash():
    line = python("\n".join([
        "import sys, json",
        "import edgeinfer",
        "from edgeinfer.runtime.cache import Cache",
        "Cache(memory_mb=1, key_hash='blake2b')",
        "print(json.dumps(sorted(m for m in ('redis', 'xxhash') if m in sys.modules)))"]))
    assert json.loads(line) == []


def _cli(*args):
    """The console entry in a real process: stderr carries the cache report."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "edgeinfer.cli"] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300, env=env, cwd=REPO_ROOT)


def test_cli_run_with_a_disk_cache_then_stats_and_clear(tmp_path, tiny_bundle):
    folder = tmp_path / "c"
    sample = tmp_path / "x.npy"
    np.save(str(sample), np.ones((1, 4), np.float32))
    first = _cli("run", tiny_bundle, sample, "--cache-dir", folder, "--cache-mb", 16)
    assert first.returncode == 0, first.stderr
    assert "cache: 0 hits (memory 0, disk 0), 1 misses" in first.stderr
    second = _cli("run", tiny_bundle, sample, "--cache-dir", folder, "--cache-mb", 16)
    assert second.returncode == 0, second.stderr
    assert "cache: 1 hits (memory 0, disk 1), 0 misses" in second.stderr
    assert second.stdout == first.stdout

    runner = _runner()
    result = runner.invoke(main, ["cache", "stats", "--cache-dir", str(folder), "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["disk"]
    assert report["items"] == 1 and report["limit_bytes"] == 16 * 1024 * 1024
    assert list(report["models"].values()) == [1]
    result = runner.invoke(main, ["cache", "stats", "--cache-dir", str(folder)],
                           catch_exceptions=False)
    assert "1 entries" in result.stdout and "of 16 MiB" in result.stdout
    result = runner.invoke(main, ["cache", "clear", "--cache-dir", str(folder), "--model",
                                  str(tiny_bundle)], catch_exceptions=False)
    assert result.exit_code == 0 and result.stdout.strip() == "cleared 1 disk entries"
    result = runner.invoke(main, ["cache", "stats", "--cache-dir", str(folder), "--json"],
                           catch_exceptions=False)
    assert json.loads(result.stdout)["disk"]["items"] == 0


def test_cli_cache_stats_and_clear_on_redis(redis_url, redis_client):
    cache = Cache(memory_mb=1, redis_url=redis_url)
    for i in range(3):
        cache.set(cache.key(MODEL, feeds(i), ["y"]), {"y": np.ones(2)})
    cache.flush()
    runner = _runner()
    result = runner.invoke(main, ["cache", "stats", "--redis", redis_url, "--json"],
                           catch_exceptions=False)
    assert json.loads(result.stdout)["redis"]["models"] == {MODEL: 3}
    result = runner.invoke(main, ["cache", "clear", "--redis", redis_url],
                           catch_exceptions=False)
    assert result.stdout.strip() == "cleared 3 redis entries"
    assert redis_client.dbsize() == 0
    cache.close()


@pytest.mark.parametrize("args, code, fragment", [
    (["cache", "stats"], 2, "No cache named"),
    (["cache", "stats", "--cache-dir", "/nonexistent/edgeinfer-cache"], 1,
     "No cache directory '/nonexistent/edgeinfer-cache'"),
    (["cache", "clear", "--redis", "redis://127.0.0.1:{port}/0"], 1, "cannot be cleared"),
])
def test_cli_cache_mistakes(args, code, fragment):
    args = [a.format(port=free_port()) for a in args]
    result = _runner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]


def test_cli_run_refuses_a_zero_cache(tmp_path, tiny_bundle):
    sample = tmp_path / "x.npy"
    np.save(str(sample), np.ones((1, 4), np.float32))
    result = _runner().invoke(main, ["run", str(tiny_bundle), str(sample), "--cache-mb", "0"],
                                catch_exceptions=False)
    assert result.exit_code == 2 and "--cache-mb must be more than 0" in result.stderr
