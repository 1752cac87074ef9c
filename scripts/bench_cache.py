#!/usr/bin/env python3
"""Result cache benchmark (issue 6): hit latency per tier against a model run, hashing, misses.

Everything is measured in one run on FP32 MobileNetV2 (seeded random weights,
built by scripts/build_bench_models.py) at batch 1 (1x3x224x224 float32), with
the calls timed interleaved round by round (this host is shared and noisy), and
every ratio taken against the model run of the same rounds.

Sections of the report:

1. Key hashing throughput on the 602 KB input: XXH3-128 (the default) against
   hashlib's 128-bit-capable alternatives, and CRC-32 (the frame checksum).
2. Hit latency per tier through ``Session.run`` (input checks, key, lookup, copy):
   L1 memory, L2 disk, L3 Redis on loopback, against the model run; how much
   of an L1 hit is hashing.
3. Stampede: 32 threads asking for one missing key at once; model runs counted.
4. Miss overhead: 100% unique inputs through sessions with L1 and with L1+L2
   against the same runner without a cache (the ``Session`` objects share one
   ONNX Runtime session, so only the cache differs), in rotating blocks, each
   cached block paying for its own disk writes.
5. Replay: a Zipf request stream (90% of requests on 10% of the inputs),
   hit rate and mean latency with and without the cache, in rotating blocks.

A redis-server binary on PATH is started on a free loopback port for L3; without
one, the L3 row says so.

Usage::

    python scripts/bench_cache.py --md docs/BENCHMARKS.md
"""

import argparse
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import edgeinfer  # noqa: E402
from edgeinfer.conversion.validate import SPIN_PAUSE_S, time_interleaved  # noqa: E402
from edgeinfer.runtime.cache.diskindex import WARM_LOOKUPS  # noqa: E402
from edgeinfer.runtime.session import Session  # noqa: E402
from bench_core import md_table, write_section  # noqa: E402
from build_bench_models import build  # noqa: E402

TITLE = "Result cache (issue 6)"


def median_us(samples):
    return 1e6 * float(np.median(samples))


def section_hashing(x, rounds):
    """µs and GB/s of each hash over the input's bytes, interleaved."""
    import xxhash
    data = memoryview(x).cast("B")
    runs = {
        "XXH3-128 (xxhash, default)": lambda _: xxhash.xxh3_128(data).digest(),
        "XXH3-64 (xxhash)": lambda _: xxhash.xxh3_64(data).digest(),
        "BLAKE2b-128 (hashlib, fallback)": lambda _: hashlib.blake2b(data, digest_size=16).digest(),
        "MD5 (hashlib)": lambda _: hashlib.md5(data).digest(),
        "SHA-1 (hashlib)": lambda _: hashlib.sha1(data).digest(),
        "SHA-256 (hashlib)": lambda _: hashlib.sha256(data).digest(),
        "CRC-32 (zlib, frame checksum)": lambda _: zlib.crc32(data),
    }
    for run in runs.values():
        run(None)
    samples = time_interleaved(runs, None, rounds)
    fastest = median_us(samples["XXH3-128 (xxhash, default)"])
    rows = [("hash", "µs per input (p50)", "GB/s", "time vs XXH3-128")]
    for label, values in samples.items():
        us = median_us(values)
        rows.append((label, "{:.1f}".format(us), "{:.2f}".format(x.nbytes / us / 1e3),
                     "{:.1f}x".format(us / fastest)))
    return md_table(rows), samples


def free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def start_redis(folder):
    """(process, url) of a loopback redis-server, or (None, reason)."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None, "no redis-server on PATH"
    import redis
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", folder],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, "redis://127.0.0.1:{}/0".format(port)
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    return None, "redis-server did not start"


def section_tiers(plain, work, x, rounds, redis_url):
    """Median latency of a model run and of a hit from each tier, interleaved."""
    runner = plain._runner
    caches = {"L1 memory": edgeinfer.Cache(memory_mb=64),
              "L2 disk": edgeinfer.Cache(memory_mb=0, disk_dir=os.path.join(work, "l2"))}
    if redis_url:
        caches["L3 Redis (loopback)"] = edgeinfer.Cache(memory_mb=0, redis_url=redis_url,
                                                        redis_timeout_s=1.0)
    runs = {}
    for label, cache in caches.items():
        cache.clear()
        session = Session(plain.bundle, runner, cache=cache)
        session.run(x)                                   # the one miss: fills the tier
        runs[label] = session.run
    l1 = caches["L1 memory"]
    names = [s.name for s in plain.outputs]
    runs["L1 key only (hashing)"] = lambda feeds: l1.key("0" * 32, feeds, names)
    samples = time_rounds(plain.run, runs, x, rounds)
    for label, cache in caches.items():
        stats = cache.stats()
        assert stats["runs"] == 1, (label, stats)         # every timed call was a hit
    model = median_us(samples["model run (no cache)"])
    rows = [("path", "µs (p50)", "µs (p90)", "vs model run", "target")]
    targets = {"L1 memory": "<= 0.05x", "L2 disk": "<= 0.2x"}
    for label, values in samples.items():
        rows.append((label, "{:.1f}".format(median_us(values)),
                     "{:.1f}".format(1e6 * float(np.percentile(values, 90))),
                     "{:.4f}x".format(median_us(values) / model), targets.get(label, "-")))
    hashing = median_us(samples["L1 key only (hashing)"]) / median_us(samples["L1 memory"])
    for cache in caches.values():
        cache.close()
    return md_table(rows), samples, hashing


def time_rounds(model, paths, x, rounds):
    """Seconds per round of a model run and of each cached path.

    Each round: a pause, an untimed model run, a timed one (ONNX Runtime's pool
    threads awake: the faster, busy-server figure, so ratios are conservative);
    another pause, because those threads keep spinning for ~40 ms after a run and
    would steal one of this host's two cores from whatever runs next; one
    untimed L1 hit (the input warm in the CPU caches, as one just decoded is);
    then every cached path back to back, in an order rotated each round.
    """
    labels = list(paths)
    samples = dict((label, []) for label in ["model run (no cache)"] + labels)
    for label in labels:
        paths[label](x)
    for index in range(rounds):
        time.sleep(SPIN_PAUSE_S)
        model(x)
        start = time.perf_counter()
        model(x)
        samples["model run (no cache)"].append(time.perf_counter() - start)
        time.sleep(SPIN_PAUSE_S)
        paths[labels[0]](x)
        shift = index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            start = time.perf_counter()
            paths[label](x)
            samples[label].append(time.perf_counter() - start)
    return samples


def section_stampede(plain, x, threads=32):
    cache = edgeinfer.Cache(memory_mb=64)
    session = Session(plain.bundle, plain._runner, cache=cache)
    barrier = threading.Barrier(threads)
    done = []

    def worker():
        barrier.wait()
        done.append(session.run(x))
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    stats = cache.stats()
    return stats, len(done), elapsed


def alternate(sessions, requests, fresh=False, block=1):
    """Seconds of each request through every session: the requests in blocks, each
    block through every session in turn, the order rotated each block so none always
    runs first or last.

    A session with a cache ends each of its blocks with ``cache.flush()``, timed
    and added to the block's last request: the disk writes a block queued are paid
    inside it, not by whichever session runs while the background writer works.

    Args:
        fresh: give each call its own copy of the input, made just before the call
            (untimed), as decoding or preprocessing leaves a new input in the CPU
            caches; False: the stored input, cold in memory for the first to read it.
        block: requests per block (1: every request through every session in turn).

    Returns:
        list of lists of seconds, one per session, in the order given.
    """
    times = [[] for _ in sessions]
    order = list(range(len(sessions)))
    for number, first in enumerate(range(0, len(requests), block)):
        shift = number % len(order)
        for index in order[shift:] + order[:shift]:
            session, spent = sessions[index], times[index]
            for feeds in requests[first:first + block]:
                given = dict((k, v.copy()) for k, v in feeds.items()) if fresh else feeds
                start = time.perf_counter()
                session.run(given)
                spent.append(time.perf_counter() - start)
            if session.cache is not None:
                start = time.perf_counter()
                session.cache.flush()
                spent[-1] += time.perf_counter() - start
    return times


def thread_cpu_s(thread):
    """CPU seconds ``thread`` has used so far (None where the OS cannot say)."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (AttributeError, OSError, TypeError):
        return None


def section_misses(plain, work, rounds, block):
    """Unique inputs: the same runner without a cache, with L1, with L1+L2, in rotating
    blocks; the inputs first cold in memory, then freshly written before each call.

    Returns:
        ({"cold": times, "fresh": times}, key µs, writer CPU µs per entry): times as
        :func:`alternate` gives; the writer's CPU measured on its own thread during
        the pass (None where it cannot be read).
    """
    memory = edgeinfer.Cache(memory_mb=64)
    both = edgeinfer.Cache(memory_mb=64, disk_dir=os.path.join(work, "misses"), disk_mb=256)
    both.clear()
    sessions = [plain] + [Session(plain.bundle, plain._runner, cache=c) for c in (memory, both)]
    rng = np.random.RandomState(1)
    times = {}
    for arrival in ("cold", "fresh"):
        inputs = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
                  for _ in range(rounds)]
        times[arrival] = alternate(sessions, inputs, fresh=arrival == "fresh", block=block)
    thread = both._writer._thread
    writer_s = thread_cpu_s(thread) if thread is not None else None
    for cache in (memory, both):
        stats = cache.stats()
        assert stats["hits"] == 0 and stats["runs"] == 2 * rounds, stats
    key_us = both.stats()["key_us"]["p50_us"]
    both.close()
    return times, key_us, None if writer_s is None else 1e6 * writer_s / (2 * rounds)


def zipf_exponent(n, top, share):
    """The exponent s for which the ``top`` most popular of ``n`` items get ``share``."""
    low, high = 0.0, 5.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    for _ in range(60):
        s = (low + high) / 2
        weights = ranks ** -s
        if weights[:top].sum() / weights.sum() < share:
            low = s
        else:
            high = s
    return (low + high) / 2


def section_replay(plain, work, distinct, requests, block):
    """A Zipf request stream through the cache (L1+L2) and without it, in rotating blocks."""
    s = zipf_exponent(distinct, distinct // 10, 0.9)
    weights = np.arange(1, distinct + 1, dtype=np.float64) ** -s
    rng = np.random.RandomState(2)
    stream = rng.choice(distinct, size=requests, p=weights / weights.sum())
    inputs = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
              for _ in range(distinct)]
    cache = edgeinfer.Cache(memory_mb=64, disk_dir=os.path.join(work, "replay"), disk_mb=256)
    cache.clear()
    cached = Session(plain.bundle, plain._runner, cache=cache)
    on, off = alternate([cached, plain], [inputs[index] for index in stream], block=block)
    stats = cache.stats()
    top_share = float(np.isin(stream, np.arange(distinct // 10)).mean())
    cache.close()
    return s, top_share, stats, on, off


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--md", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "bench_cache"))
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per path")
    parser.add_argument("--hash-rounds", type=int, default=300)
    parser.add_argument("--miss-rounds", type=int, default=600)
    parser.add_argument("--miss-repeats", type=int, default=3,
                        help="passes of the miss-overhead section, pooled")
    parser.add_argument("--block", type=int, default=50,
                        help="requests per block in the miss-overhead and replay sections")
    parser.add_argument("--distinct", type=int, default=100, help="distinct inputs (replay)")
    parser.add_argument("--requests", type=int, default=1000, help="requests (replay)")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    command = "python scripts/bench_cache.py " + " ".join(
        argv if argv is not None else sys.argv[1:])

    source = os.path.join(args.work, "mobilenetv2.onnx")
    onnx.save(build("mobilenetv2"), source)
    path = os.path.join(args.work, "mobilenetv2-fp32.eib")
    edgeinfer.convert(source, precision="fp32", output=path, overwrite=True,
                      measure_speed=False)
    plain = edgeinfer.load(path)
    x = {"input": np.random.RandomState(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}

    redis_dir = tempfile.mkdtemp(prefix="bench-redis-")
    redis_proc, redis_url = start_redis(redis_dir)
    redis_note = "" if redis_proc else " (L3 not measured: {})".format(redis_url)
    try:
        hash_table, _ = section_hashing(x["input"], args.hash_rounds)
        print(hash_table, flush=True)
        tier_table, tier_samples, hashing = section_tiers(
            plain, args.work, x, args.rounds, redis_url if redis_proc else None)
        print(tier_table, flush=True)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(redis_dir, ignore_errors=True)
    stampede, answered, stampede_s = section_stampede(plain, x)
    print("stampede runs", stampede["runs"], flush=True)
    # Repeated whole: the host's noise comes in phases longer than one pass.
    passes = [section_misses(plain, args.work, args.miss_rounds, args.block)
              for _ in range(args.miss_repeats)]
    misses = dict((arrival, [sum((list(p[0][arrival][i]) for p in passes), [])
                             for i in range(3)]) for arrival in ("cold", "fresh"))
    key_us = float(np.median([p[1] for p in passes]))
    writer_us = [p[2] for p in passes if p[2] is not None]

    def block_ratios(arrival, index):
        """No cache's time over the path's, block by block (the same inputs, run
        within a second of each other), every pass."""
        found = []
        for p in passes:
            off, on = p[0][arrival][0], p[0][arrival][index]
            for first in range(0, len(off), args.block):
                found.append(sum(off[first:first + args.block]) /
                             sum(on[first:first + args.block]))
        return np.array(found)

    def pass_ratios(arrival, index):
        return ", ".join("{:.3f}x".format(np.mean(p[0][arrival][0]) / np.mean(p[0][arrival][index]))
                         for p in passes)
    s, top_share, replay, r_on, r_off = section_replay(plain, args.work, args.distinct,
                                                       args.requests, args.block)
    print("replay", replay["hit_rate"], np.mean(r_on), np.mean(r_off), flush=True)

    model = median_us(tier_samples["model run (no cache)"])
    l1 = median_us(tier_samples["L1 memory"])
    l2 = median_us(tier_samples["L2 disk"])
    miss_rows = [("input", "path", "mean ms", "p50 ms", "throughput (req/s)",
                  "throughput vs no cache", "block by block: median (p25-p75)",
                  "overhead per request, µs (median of pairs)")]
    ratios = {}
    for arrival, arrival_label in (("cold", "cold in memory"), ("fresh", "freshly written")):
        off = misses[arrival][0]
        for index, (label, times) in enumerate(zip(
                ("no cache", "cache on, L1 only", "cache on, L1 + L2 (write-behind)"),
                misses[arrival])):
            ratios[arrival, label] = np.mean(off) / np.mean(times)
            blocks = np.percentile(block_ratios(arrival, index), [50, 25, 75])
            miss_rows.append((arrival_label, label, "{:.3f}".format(1e3 * np.mean(times)),
                              "{:.3f}".format(1e3 * np.median(times)),
                              "{:.1f}".format(1 / np.mean(times)),
                              "{:.3f}x".format(ratios[arrival, label]),
                              "{:.3f}x ({:.3f}-{:.3f})".format(*blocks),
                              "{:.0f}".format(1e6 * float(np.median(
                                  np.array(times) - np.array(off))))))
        print("misses", arrival, [round(ratios[arrival, l], 3) for l in (
            "cache on, L1 only", "cache on, L1 + L2 (write-behind)")], flush=True)

    def verdict(arrival, label):
        value = ratios[arrival, label]
        return "{:.3f}x ({})".format(value, "met" if value >= 0.95 else "not met")

    replay_rows = [("path", "hit rate", "mean ms", "p50 ms", "p99 ms", "mean vs no cache"),
                   ("no cache", "-", "{:.3f}".format(1e3 * np.mean(r_off)),
                    "{:.3f}".format(1e3 * np.median(r_off)),
                    "{:.3f}".format(1e3 * np.percentile(r_off, 99)), "1.000x"),
                   ("cache on (L1 + L2, empty at start)", "{:.1%}".format(replay["hit_rate"]),
                    "{:.3f}".format(1e3 * np.mean(r_on)), "{:.3f}".format(1e3 * np.median(r_on)),
                    "{:.3f}".format(1e3 * np.percentile(r_on, 99)),
                    "{:.3f}x".format(np.mean(r_on) / np.mean(r_off)))]
    cpu = edgeinfer.profiles.cpu_features()
    import xxhash
    parts = [
        "## " + TITLE, "",
        "Produced by `{}` on {} ({} cores), onnxruntime {}, xxhash {}, diskcache {}, Python {}, "
        "{}. Model: FP32 MobileNetV2 (seeded random weights) at batch 1, input 1x3x224x224 "
        "float32 (602,112 bytes), output 1x1000 float32. Every path below was timed in the "
        "same run, interleaved round by round; ratios are against the model run of that "
        "run.{}".format(command.strip(), cpu["model"], cpu["cores"], ort.__version__,
                       xxhash.VERSION, __import__("diskcache").__version__,
                       platform.python_version(), time.strftime("%Y-%m-%d"), redis_note), "",
        "### Hit latency per tier ({} rounds)".format(args.rounds), "",
        "Each cached path is `Session.run` on a cache holding the input's result in that "
        "tier only (checks, key, lookup, decode, copy out); the model run is the same "
        "runner without a cache, timed as the second of two back-to-back runs (its pool "
        "threads awake: the faster figure). The cached paths run back to back after a "
        "{:.0f} ms pause that lets ONNX Runtime's still-spinning pool threads go idle, "
        "with the input warm in the CPU caches, in an order rotated each round.".format(
            1e3 * SPIN_PAUSE_S), "",
        tier_table, "",
        "L1 hit: {:.1f} µs = {:.4f}x the model run ({:.0f} µs); hashing the input is {:.0%} "
        "of it. L2 hit: {:.1f} µs = {:.4f}x.".format(l1, l1 / model, model, hashing, l2,
                                                     l2 / model), "",
        "### Key hashing throughput on the 602 KB input ({} interleaved rounds)".format(
            args.hash_rounds), "",
        hash_table, "",
        "### Stampede", "",
        "32 threads released together by a barrier call `Session.run` on one input the "
        "cache does not hold: {} model run(s), {} callers answered ({} waited for the "
        "running one, {} hit after it), {:.1f} ms in all.".format(
            stampede["runs"], answered, stampede["waits"], stampede["hits"],
            1e3 * stampede_s), "",
        "### Miss overhead: 100% unique inputs ({} passes of {} requests per input arrival, "
        "rotating)".format(args.miss_repeats, args.miss_rounds), "",
        "Every request is a new input: the cache only costs (key, lookup, storing the "
        "result; with L2 the disk write is queued for the background writer, and after "
        "the first {} lookups the disk's key filter answers a miss without SQLite). The "
        "three sessions share one ONNX Runtime session and run the same inputs in blocks "
        "of {}: each block goes through all three, one after the other, back to back as "
        "a busy server runs requests, in an order rotated each block. A cached session "
        "ends each of its blocks with a timed `flush()`, so the background writer's disk "
        "writes land inside the block that queued them, never in another session's time. "
        "Two input arrivals: *cold in memory* (all inputs made up front, so the first "
        "reader of each pays DRAM's speed) and *freshly written* (each call gets a copy "
        "made just before it, untimed, as decoding an image or a request body leaves it: "
        "the usual case on a device). Throughput is requests over total time (the bar is "
        "judged on it); *block by block* takes no cache's time over the path's for each "
        "block of the same inputs, run within a second of each other, which the host's "
        "noise bursts disturb less; the overhead is the median of the per-request "
        "differences against no cache (same input).".format(WARM_LOOKUPS, args.block), "",
        md_table(miss_rows), "",
        "The table pools the {} passes; each pass's throughput ratio, L1 only / L1 + L2: "
        "cold {} / {}; fresh {} / {}.".format(
            args.miss_repeats, pass_ratios("cold", 1), pass_ratios("cold", 2),
            pass_ratios("fresh", 1), pass_ratios("fresh", 2)), "",
        "Target: >= 0.95x. Cold inputs: L1 only {}, L1 + L2 {}. Fresh inputs: L1 only {}, "
        "L1 + L2 {}. Of the overhead, the key takes {:.0f} µs (p50, median of the passes): "
        "hashing 602 KB runs at memory speed when the input is cold; the rest is the "
        "lookups and copying the result into memory, each slowed by running right after "
        "a model run has emptied the CPU caches, and with L2 the background writer's "
        "framing and SQLite insert: {} of CPU per entry on its own thread (each pass), "
        "on the 2 cores ONNX Runtime's threads also use.".format(
            verdict("cold", "cache on, L1 only"),
            verdict("cold", "cache on, L1 + L2 (write-behind)"),
            verdict("fresh", "cache on, L1 only"),
            verdict("fresh", "cache on, L1 + L2 (write-behind)"), key_us,
            " / ".join("{:.0f} µs".format(v) for v in writer_us) or "(not readable here)"),
        "",
        "### Replay: Zipf request stream ({} requests over {} inputs, in blocks of {})".format(
            args.requests, args.distinct, args.block), "",
        "Zipf exponent {:.3f}, chosen so the 10% most popular inputs get 90% of requests "
        "(measured in this stream: {:.1%}); the cache starts empty.".format(s, top_share), "",
        md_table(replay_rows), "",
    ]
    text = "\n".join(parts)
    print(text)
    write_section(args.md, TITLE, text)


if __name__ == "__main__":
    main()
