"""``edgeinfer loadtest``: put a served model under a planned load and judge it by its SLO."""

import os
import sys
import time

from .. import __version__
from ..errors import UsageError
from . import bodies as requests
from .plan import check_url, make_schedule, parse_slo
from .results import summarize
from .runner import Client

SCHEMA = "edgeinfer-loadtest/1"


def check_settings(timeout_s=30.0, think_ms=0.0, max_in_flight=1000, batch=1, pool=16,
                   arrivals="constant"):
    """Refuse settings that cannot run (UsageError, exit status 2)."""
    if not timeout_s > 0:
        raise UsageError("--timeout-s must be more than 0, not {!r}.".format(timeout_s),
                         "Example: --timeout-s 10.")
    if not think_ms >= 0:
        raise UsageError("--think-ms must be 0 or more, not {!r}.".format(think_ms),
                         "Example: --think-ms 100.")
    for what, value in (("--max-in-flight", max_in_flight), ("--batch", batch),
                        ("--pool", pool)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError("{} must be a whole number >= 1, not {!r}.".format(what, value),
                             "Example: {} 4.".format(what))
    if arrivals not in ("constant", "poisson"):
        raise UsageError("--arrivals must be constant or poisson, not {!r}.".format(arrivals))


class Progress(object):
    """One line a second on stderr while the load runs (rewritten in place on a terminal)."""

    def __init__(self, total_s, workload, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total_s = total_s
        self.unit = "req/s offered" if workload == "open" else "users"
        self.seen = 0

    def __call__(self, t, rec, level, in_flight):
        statuses = rec.status[self.seen:]
        self.seen = len(rec.status)
        errors = sum(1 for s in statuses if s != 200)
        line = "loadtest {:4.0f}/{:.0f} s  {} {:.0f}  answers/s {}  errors {}  in flight {}".format(
            t, self.total_s, self.unit, level, len(statuses), errors, in_flight)
        self.stream.write(("\r\033[K" + line) if self.tty else line + "\n")
        self.stream.flush()

    def finish(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def loadtest(url, model, stages=None, duration=None, users=None, rate=None, open_model=False,
             slo=None, version=None, data=None, preprocess=None, batch=1, pool=16,
             inputs="unique", binary=False, timeout_s=30.0, think_ms=0.0, max_in_flight=1000,
             arrivals="constant", seed=0, progress=False):
    """Run a load test and return its report (schema ``edgeinfer-loadtest/1``).

    Args:
        url: the server, e.g. ``"http://127.0.0.1:8000"``.
        model: the served model's name; ``version``: its version (default None).
        stages: ``"10s:8,30s:32,10s:0"`` (users, or req/s with ``open_model``).
        duration, users, rate: instead of ``stages``: ``"30s"`` at ``users`` virtual
            users (closed) or ``rate`` requests per second (open).
        open_model: stage targets are requests per second (default False: users).
        slo: ``"p95=50ms,errors=0.1%"`` (default None: no verdict).
        data: folder or .npy/.npz of inputs (default None: generated from metadata).
        preprocess: a :class:`~edgeinfer.preprocess.Preprocess` for image folders.
        batch: rows per request where the batch dim is free (default 1).
        pool: distinct samples encoded before the run (default 16).
        inputs: ``"unique"``, ``"cycle"`` or ``"repeat"`` (see :mod:`.bodies`).
        binary: Triton binary tensors instead of JSON (default False).
        timeout_s: per-request limit (default 30).
        think_ms: closed: pause per user between requests (default 0).
        max_in_flight: open: waiting requests before arrivals are dropped (default 1000).
        arrivals: open: ``"constant"`` or ``"poisson"`` (default constant).
        seed: seed of the generated inputs and the Poisson arrivals (default 0).
        progress: print one line a second on stderr (default False).

    Raises:
        UsageError: settings that cannot run (before any request).
        EdgeInferError: the server cannot be reached, does not serve the model, or
            refuses the first request.
    """
    url = check_url(url)
    schedule, workload = make_schedule(stages, duration, users, rate, open_model)
    criteria = parse_slo(slo)
    check_settings(timeout_s, think_ms, max_in_flight, batch, pool, arrivals)
    if inputs not in requests.MODES:
        raise UsageError("--inputs must be one of {}, not {!r}.".format(
            ", ".join(requests.MODES), inputs))
    from ..bench.core import machine_facts
    with Client(url, model, version, timeout_s) as client:
        metadata, server = client.metadata()
        specs = requests.input_specs(metadata, model)
        samples = requests.sample_pool(specs, 1 if inputs == "repeat" else pool, batch, data,
                                       preprocess, seed)
        bodies = requests.Bodies(samples, binary=binary, mode=inputs)
        client.check(bodies)
        machine = machine_facts()
        show = Progress(schedule.total_s, workload) if progress else None
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            rec = client.run(schedule, bodies, workload, think_ms / 1000.0, max_in_flight,
                             arrivals, seed, show)
        finally:
            if show is not None:
                show.finish()
        loop_name = client.loop_name
        aiohttp_version = client.aiohttp.__version__
    report = {
        "schema": SCHEMA, "created": created, "edgeinfer": __version__,
        "target": {"url": url, "model": model, "version": version,
                   "server": server, "platform": metadata.get("platform"),
                   "inputs": metadata.get("inputs"), "infer_url": client.infer_url},
        "settings": {
            "workload": workload, "stages": schedule.to_list(), "stages_text":
            schedule.describe(), "duration_s": schedule.total_s, "think_ms": think_ms,
            "max_in_flight": max_in_flight if workload == "open" else None,
            "arrivals": arrivals if workload == "open" else None, "timeout_s": timeout_s,
            "inputs": inputs, "pool": len(samples), "data": None if data is None else str(data),
            "batch": batch, "body": "binary" if binary else "json", "body_bytes": bodies.size,
            "distinct_requests": bodies.distinct, "slo": slo, "seed": seed},
        "machine": machine,
        "client": {"library": "aiohttp {}".format(aiohttp_version), "event_loop": loop_name,
                   "pid": os.getpid()},
    }
    report.update(summarize(rec, schedule, criteria, os.cpu_count() or 1))
    return report
