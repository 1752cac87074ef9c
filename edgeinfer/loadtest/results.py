"""From a :class:`~edgeinfer.loadtest.runner.Recording` to the report's numbers.

Pure arithmetic on what was recorded, so it is tested on made-up recordings with
known answers.  Conventions (also in the schema, :mod:`edgeinfer.loadtest`):

* a request is an **error** when it was not answered HTTP 200 (any other status,
  a timeout, a refused or reset connection); the error rate is errors over all
  requests that ended;
* **latency** percentiles are over the successful requests only (a fast 503 must
  not make the server look quick);
* **rps** is successful requests per second of the schedule's duration;
* the **timeline** puts a request in the second its answer arrived.
"""

import math

import numpy as np

from ..bench.core import PERCENTILES, percentiles_ms
from .runner import CONNECTION, TIMEOUT

# Generator CPU (percent of one core) at which its single event loop may be the limit.
GENERATOR_BUSY_PERCENT = 85.0
# Machine CPU (percent of all cores) at which server and generator compete for cores.
MACHINE_BUSY_FRACTION = 0.9
# Open workload: a generator this late (p99, ms) did not keep to the schedule.
LATE_MS = 10.0


def error_kind(status):
    if status == TIMEOUT:
        return "timeout"
    if status == CONNECTION:
        return "connection"
    return str(status)


def latency_summary(seconds):
    """p50/p90/p95/p99/max/min/mean in ms and the count, or None for no requests."""
    if len(seconds) == 0:
        return None
    summary = percentiles_ms(seconds)
    summary["count"] = summary.pop("runs")
    return summary


def _cpu_between(a, b, cores):
    """(generator CPU %, machine CPU %) between two samples; None where not measurable."""
    span = b[0] - a[0]
    if span < 0.2:
        return None, None
    generator = 100.0 * (b[1] - a[1]) / span
    machine = None
    if a[2] is not None and b[2] is not None and b[2][1] > a[2][1]:
        machine = 100.0 * cores * (b[2][0] - a[2][0]) / float(b[2][1] - a[2][1])
    return generator, machine


def _rounded(value, digits=3):
    return None if value is None else round(float(value), digits)


def summarize(rec, schedule, criteria=(), cores=1):
    """The report's ``summary``, ``timeline``, ``stages``, ``generator`` and ``slo`` parts.

    Args:
        rec: the :class:`~edgeinfer.loadtest.runner.Recording`.
        schedule: the :class:`~edgeinfer.loadtest.plan.Schedule` that was run.
        criteria: the SLO's :class:`~edgeinfer.loadtest.plan.Criterion` list.
        cores: this machine's CPU count (machine CPU % is out of ``100 * cores``).

    Returns:
        dict with those five keys (see the schema in :mod:`edgeinfer.loadtest`).
    """
    start = np.frombuffer(rec.start, dtype=np.float64) if len(rec.start) else np.zeros(0)
    latency = np.frombuffer(rec.latency, dtype=np.float64) if len(rec.latency) else np.zeros(0)
    status = np.frombuffer(rec.status, dtype=np.int32) if len(rec.status) else np.zeros(
        0, np.int32)
    end = start + latency
    ok = status == 200
    total = int(status.size)
    errors = total - int(ok.sum())
    kinds = {}
    for code, count in zip(*np.unique(status[~ok], return_counts=True)):
        kinds[error_kind(int(code))] = int(count)
    duration = schedule.total_s
    summary = {
        "requests": total, "ok": int(ok.sum()), "errors": errors,
        "error_rate": errors / float(total) if total else None,
        "errors_by_kind": kinds,
        "error_examples": dict((error_kind(code), text) for code, text in
                               sorted(rec.examples.items())),
        "duration_s": duration, "wall_s": rec.wall_s,
        "rps": int(ok.sum()) / duration, "completed_per_s": total / duration,
        "latency_ms": latency_summary(latency[ok]),
        "open": None,
    }
    if rec.scheduled:
        summary["open"] = {"scheduled": rec.scheduled, "sent": rec.scheduled - rec.dropped,
                           "dropped": rec.dropped,
                           "lag_ms": _lag(np.frombuffer(rec.lag, dtype=np.float64)
                                          if len(rec.lag) else np.zeros(0))}
    samples = rec.samples
    cpu_pairs = [_cpu_between(a, b, cores) for a, b in zip(samples, samples[1:])]
    timeline = _timeline(end, latency, ok, samples, cpu_pairs, schedule)
    stages = _stages(end, latency, ok, schedule, samples, cores)
    generator = _generator(samples, cpu_pairs, cores, summary)
    return {"summary": summary, "timeline": timeline, "stages": stages,
            "generator": generator, "slo": verdict(criteria, summary)}


def _lag(lag):
    if lag.size == 0:
        return None
    ms = lag * 1000.0
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "max": float(ms.max())}


def _percentiles(seconds):
    if seconds.size == 0:
        return dict(("p{}_ms".format(p), None) for p in PERCENTILES)
    values = np.percentile(seconds * 1000.0, PERCENTILES)
    return dict(("p{}_ms".format(p), float(v)) for p, v in zip(PERCENTILES, values))


def _timeline(end, latency, ok, samples, cpu_pairs, schedule):
    seconds = int(math.ceil(schedule.total_s))
    # Answers that arrived after the schedule ended (requests in flight at its end) are
    # kept in its last second, so a few milliseconds of draining are not a second of their own.
    bucket = (np.minimum(np.floor(end), seconds - 1).astype(np.int64) if end.size
              else np.zeros(0, np.int64))
    rows = []
    for second in range(seconds):
        mine = bucket == second
        good = mine & ok
        span = min(1.0, schedule.total_s - second)
        row = {"t": second, "span_s": round(span, 3), "requests": int(mine.sum()),
               "ok": int(good.sum()), "errors": int(mine.sum() - good.sum()),
               "rps": good.sum() / span if span > 0 else None,
               "max_ms": float(latency[good].max() * 1000.0) if good.any() else None,
               "level": schedule.level_at(min(second + 0.5 * span, schedule.total_s)),
               "in_flight": samples[second + 1][4] if second + 1 < len(samples) else None,
               "generator_cpu_percent": None, "machine_cpu_percent": None}
        row.update(_percentiles(latency[good]))
        if second < len(cpu_pairs):
            row["generator_cpu_percent"] = _rounded(cpu_pairs[second][0], 1)
            row["machine_cpu_percent"] = _rounded(cpu_pairs[second][1], 1)
        rows.append(row)
    return rows


def _stages(end, latency, ok, schedule, samples, cores):
    rows = []
    last = len(schedule.stages) - 1
    for index, stage in enumerate(schedule.to_list()):
        begin, until = stage["start_s"], stage["start_s"] + stage["duration_s"]
        # The last stage keeps the answers that arrived after the schedule ended.
        mine = (end >= begin) & ((end < until) | (index == last))
        good = mine & ok
        row = dict(stage, index=index + 1, requests=int(mine.sum()), ok=int(good.sum()),
                   errors=int(mine.sum() - good.sum()),
                   rps=good.sum() / stage["duration_s"])
        row.update(_percentiles(latency[good]))
        first = min(samples, key=lambda s: abs(s[0] - begin))
        final = samples[-1] if index == last else min(samples, key=lambda s: abs(s[0] - until))
        row["generator_cpu_percent"] = _rounded(_cpu_between(first, final, cores)[0], 1)
        rows.append(row)
    return rows


def _generator(samples, cpu_pairs, cores, summary):
    whole = _cpu_between(samples[0], samples[-1], cores) if len(samples) > 1 else (None, None)
    per_second = [g for g, _ in cpu_pairs if g is not None]
    busiest = max(per_second) if per_second else whole[0]
    notes, limited = [], False
    if busiest is not None and busiest >= GENERATOR_BUSY_PERCENT:
        limited = True
        notes.append("The load generator used {:.0f}% of a core in its busiest second: its one "
                     "event loop may have limited the load, not the server. Run it on another "
                     "machine, or compare with wrk (scripts/bench_loadtest.py).".format(busiest))
    if whole[1] is not None and whole[1] >= MACHINE_BUSY_FRACTION * 100.0 * cores:
        notes.append("This machine's {} cores were {:.0f}% busy (of {}%): when the server runs "
                     "here too, it and the generator competed for them.".format(
                         cores, whole[1], 100 * cores))
    opened = summary.get("open")
    if opened and (opened["dropped"] or (opened["lag_ms"] or {}).get("p99", 0) > LATE_MS):
        limited = True
        notes.append("The generator fell behind the arrival schedule ({} dropped, p99 {:.1f} ms "
                     "late): the offered load was lower than asked.".format(
                         opened["dropped"], (opened["lag_ms"] or {}).get("p99", 0.0)))
    return {"cpu_percent": _rounded(whole[0], 1), "cpu_percent_max": _rounded(busiest, 1),
            "machine_cpu_percent": _rounded(whole[1], 1), "cores": cores,
            "limited": limited, "notes": notes}


def measured(key, summary):
    """The run's value for an SLO key: ms for latency, a fraction for errors, req/s for rps."""
    if key == "errors":
        return summary["error_rate"]
    if key == "rps":
        return summary["rps"]
    latency = summary["latency_ms"]
    return None if latency is None else latency["{}_ms".format(key)]


def verdict(criteria, summary):
    """The SLO part of the report: each criterion with its value, and pass/fail."""
    rows, failed = [], []
    for criterion in criteria:
        value = measured(criterion.key, summary)
        passed = criterion.check(value)
        rows.append({"key": criterion.key, "text": criterion.text, "limit": criterion.limit,
                     "value": value, "passed": passed,
                     "unit": {"errors": "fraction", "rps": "req/s"}.get(criterion.key, "ms")})
        if not passed:
            failed.append(criterion.describe(value) if value is not None else
                          "{} not measured (no successful request)".format(criterion.key))
    return {"criteria": rows, "passed": (not failed) if criteria else None, "failed": failed}
