"""The load generator: aiohttp on one event loop, closed or open workload.

* **closed**: N virtual users, each sending a request, waiting for the answer
  (and ``think_s``), and sending the next; N follows the schedule.  What a pool
  of clients or a camera fleet that waits for answers does.
* **open**: requests arrive at the schedule's rate whether or not earlier ones
  were answered (constant spacing, or Poisson arrivals); arrivals beyond
  ``max_in_flight`` are dropped and counted.  What independent users do, and
  the model that shows queueing when the server falls behind.

Every request is recorded (start, latency, HTTP status or client error), and once
a second a sampler notes this process's CPU time and the machine's, so the report
can show when the generator, not the server, was the limit.
"""

import asyncio
import itertools
import os
import time
from array import array

from ..errors import EdgeInferError, MissingDependency

# Client-side outcomes, stored where the HTTP status would be.
TIMEOUT = 0
CONNECTION = -1

# How often the closed workload's user count follows the schedule.
TICK_S = 0.05


def _aiohttp():
    # Not through lazy.require: the extra is a load-test one, named here (issue 9).
    try:
        import aiohttp
    except ImportError as exc:
        raise MissingDependency("aiohttp is not installed or cannot be imported for the load "
                                "generator ({}).".format(exc),
                                "install it with `pip install edgeinfer[loadtest]`")
    return aiohttp


def event_loop():
    """``(loop, name)``: uvloop's when installed (a faster generator), else asyncio's."""
    try:
        import uvloop
        return uvloop.new_event_loop(), "uvloop {}".format(uvloop.__version__)
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"


def machine_cpu():
    """``(busy, total)`` jiffies of all CPUs from /proc/stat, or None where unreadable."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    total = sum(fields[:8])
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


def process_cpu_s():
    times = os.times()
    return times[0] + times[1]


class Recording(object):
    """What a run saw: one entry per request, and one sample per second.

    Attributes:
        start, latency: seconds from the run's start, and seconds to the answer.
        status: HTTP status, or :data:`TIMEOUT` / :data:`CONNECTION`.
        lag: open workload: seconds each request left after its scheduled time.
        samples: ``(t, process CPU s, machine (busy, total) or None, level, active)``.
        examples: the first answer (or exception) of each kind of error, as text.
        scheduled, dropped: open workload: arrivals due, and those not sent
            because ``max_in_flight`` requests were already waiting.
        wall_s: from the start to the last answer.
    """

    def __init__(self):
        self.start = array("d")
        self.latency = array("d")
        self.status = array("i")
        self.lag = array("d")
        self.samples = []
        self.examples = {}
        self.scheduled = 0
        self.dropped = 0
        self.wall_s = 0.0


class Client(object):
    """An aiohttp session to one model on a KServe v2 server, on its own event loop.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        model: the model name; ``version``: its version (default None: the server's).
        timeout_s: per-request limit, counted as a ``timeout`` error after (default 30).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, url, model, version=None, timeout_s=30.0):
        self.aiohttp = _aiohttp()
        self.base = url.rstrip("/")
        self.model = model
        path = "/v2/models/{}".format(model) + (
            "/versions/{}".format(version) if version else "")
        self.metadata_url = self.base + path
        self.infer_url = self.base + path + "/infer"
        self.timeout_s = timeout_s
        self.loop, self.loop_name = event_loop()
        self.session = self.loop.run_until_complete(self._open())

    async def _open(self):
        aiohttp = self.aiohttp
        # limit=0: as many connections as requests in flight (each closed user keeps its own
        # keep-alive connection, as wrk's connections do); no cookie or decompression work.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s), auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar())

    def close(self):
        if self.session is not None:
            self.loop.run_until_complete(self.session.close())
            self.session = None
        self.loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _unreachable(self, exc):
        cause = getattr(exc, "os_error", None)  # aiohttp's ClientConnectorError wraps it
        errno = getattr(cause, "errno", None)
        if cause is None:
            why = str(exc) or type(exc).__name__
        elif isinstance(errno, int) and errno > 0:
            why = os.strerror(errno)
        else:  # a failed name lookup (socket.gaierror) has a negative errno and its own text
            why = getattr(cause, "strerror", None) or str(cause)
        return EdgeInferError("Cannot reach {}: {}.".format(self.base, why.rstrip(".")),
            "Is the server running there? Start one with `edgeinfer serve MODEL.eib "
            "--port PORT`.")

    def _silent(self, what):
        return EdgeInferError("{} got no answer within {:g} s.".format(what, self.timeout_s),
                              "Is the server busy or stuck? Raise --timeout-s for a slow "
                              "model.")

    async def _get(self, url):
        async with self.session.get(url) as response:
            return response.status, await response.read()

    def metadata(self):
        """The model's v2 metadata and the server's (``GET /v2/models/{m}``, ``GET /v2``).

        Raises:
            EdgeInferError: the server cannot be reached, is not a v2 server, or does
                not serve the model (its own message names the models it has).
        """
        try:
            status, body = self.loop.run_until_complete(self._get(self.metadata_url))
            server_status, server_body = self.loop.run_until_complete(
                self._get(self.base + "/v2"))
        except asyncio.TimeoutError:
            raise self._silent("GET {}".format(self.metadata_url))
        except (self.aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(exc)
        data = _json(body)
        if status == 404:
            said = data.get("error") if isinstance(data, dict) else None
            # edgeinfer serve says "Model 'x' is not served here. Note: models: a (v1), ...".
            said, _, known = (said or "").partition(" Note: ")
            raise EdgeInferError("The server at {} does not serve model {!r}{}.".format(
                self.base, self.model, " ({})".format(said.rstrip(".")) if said else ""),
                "{}Check --model and --model-version.".format(
                    known.rstrip(".") + ". " if known else ""))
        if status != 200 or not isinstance(data, dict):
            raise EdgeInferError("GET {} answered HTTP {}: {}.".format(
                self.metadata_url, status, body[:200].decode("utf-8", "replace")),
                "Is {} a KServe v2 server (edgeinfer serve, Triton, KServe)?".format(self.base))
        server = _json(server_body) if server_status == 200 else None
        return data, server if isinstance(server, dict) else None

    async def _post(self, body, headers):
        async with self.session.post(self.infer_url, data=body, headers=headers) as response:
            return response.status, await response.read()

    def check(self, bodies):
        """Send one request (number 0) and refuse to start when it fails.

        A body the server rejects would make every request of the run fail the
        same way; this says so in one line before the run instead of after it.
        """
        try:
            status, body = self.loop.run_until_complete(self._post(bodies.body(0),
                                                                   bodies.headers))
        except asyncio.TimeoutError:
            raise self._silent("The first infer request")
        except (self.aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(exc)
        if status != 200:
            data = _json(body)
            said = data.get("error") if isinstance(data, dict) else body[:200].decode(
                "utf-8", "replace")
            raise EdgeInferError("The first infer request was answered HTTP {}: {}".format(
                status, said), "Check --data, --batch and the model's inputs "
                "(GET {}).".format(self.metadata_url))

    def run(self, schedule, bodies, workload="closed", think_s=0.0, max_in_flight=1000,
            arrivals="constant", seed=0, progress=None):
        """Send the load the schedule describes; return a :class:`Recording`.

        Args:
            schedule: a :class:`~edgeinfer.loadtest.plan.Schedule`.
            bodies: a :class:`~edgeinfer.loadtest.bodies.Bodies` (request k sends
                ``bodies.body(k)``, k from 1: 0 went to :meth:`check`).
            workload: ``"closed"`` (levels are users) or ``"open"`` (requests/s).
            think_s: closed: pause of each user between answer and next request.
            max_in_flight: open: requests waiting at once before arrivals are dropped.
            arrivals: open: ``"constant"`` spacing or ``"poisson"``.
            seed: the Poisson arrivals' seed.
            progress: called once a second with ``(t, recording, level, active)``.
        """
        return self.loop.run_until_complete(self._run(
            schedule, bodies, workload, think_s, max_in_flight, arrivals, seed, progress))

    async def _run(self, schedule, bodies, workload, think_s, max_in_flight, arrivals, seed,
                   progress):
        rec = Recording()
        state = {"level": schedule.level_at(0), "active": 0, "done": False}
        counter = itertools.count(1)
        t0 = time.perf_counter()
        rec.samples.append((0.0, process_cpu_s(), machine_cpu(), state["level"], 0))
        sampler = asyncio.ensure_future(self._sampler(rec, t0, schedule, state, progress))
        try:
            if workload == "open":
                await self._open_load(rec, t0, schedule, bodies, counter, state, max_in_flight,
                                      arrivals, seed)
            else:
                await self._closed_load(rec, t0, schedule, bodies, counter, state, think_s)
        finally:
            state["done"] = True
            sampler.cancel()
        end = time.perf_counter() - t0
        rec.samples.append((end, process_cpu_s(), machine_cpu(), state["level"], 0))
        rec.wall_s = end
        return rec

    async def _sampler(self, rec, t0, schedule, state, progress):
        second = 1
        while not state["done"]:
            await asyncio.sleep(max(0.0, t0 + second - time.perf_counter()))
            t = time.perf_counter() - t0
            rec.samples.append((t, process_cpu_s(), machine_cpu(), state["level"],
                                state["active"]))
            if progress is not None:
                progress(t, rec, state["level"], state["active"])
            second += 1

    async def _one(self, k, bodies, rec, t0, state, scheduled=None):
        aiohttp = self.aiohttp
        body = bodies.body(k)
        state["active"] += 1
        begin = time.perf_counter()
        try:
            async with self.session.post(self.infer_url, data=body,
                                         headers=bodies.headers) as response:
                answer = await response.read()
                status = response.status
        except asyncio.TimeoutError:
            status, answer = TIMEOUT, "no answer within {:g} s".format(self.timeout_s)
        except (aiohttp.ClientError, OSError) as exc:
            status, answer = CONNECTION, "{}: {}".format(type(exc).__name__, exc)
        finally:
            state["active"] -= 1
        end = time.perf_counter()
        if status != 200 and status not in rec.examples:
            rec.examples[status] = _text(answer)
        rec.start.append(begin - t0)
        rec.latency.append(end - begin)
        rec.status.append(status)
        if scheduled is not None:
            rec.lag.append(max(0.0, begin - scheduled))

    async def _closed_load(self, rec, t0, schedule, bodies, counter, state, think_s):
        users = {}

        async def user(index):
            try:
                # A user above the current level finishes its request and leaves.
                while not state["done"] and index < state["users"]:
                    await self._one(next(counter), bodies, rec, t0, state)
                    if think_s:
                        await asyncio.sleep(think_s)
            finally:
                users.pop(index, None)

        state["users"] = 0
        while True:
            t = time.perf_counter() - t0
            if t >= schedule.total_s:
                break
            state["level"] = schedule.level_at(t)
            state["users"] = int(state["level"] + 0.5)
            for index in range(state["users"]):
                if index not in users:
                    users[index] = asyncio.ensure_future(user(index))
            await asyncio.sleep(min(TICK_S, max(0.0, schedule.total_s - t)))
        # No new requests after the last stage; those in flight finish (within the timeout).
        state["users"] = 0
        if users:
            await asyncio.gather(*list(users.values()))

    async def _open_load(self, rec, t0, schedule, bodies, counter, state, max_in_flight,
                         arrivals, seed):
        import random
        rng = random.Random(seed)
        pending = set()
        # Arrival n is due when the rate integrated from 0 reaches its count: n + 0.5 for
        # even spacing (so a constant R req/s for D s sends round(R*D)), or a running sum
        # of exponential gaps for Poisson arrivals.
        area = 0.5 if arrivals == "constant" else rng.expovariate(1.0)
        while True:
            due = schedule.time_of_area(area)
            if due is None:
                break
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            state["level"] = schedule.level_at(due)
            rec.scheduled += 1
            if len(pending) >= max_in_flight:
                rec.dropped += 1
            else:
                task = asyncio.ensure_future(self._one(next(counter), bodies, rec, t0, state,
                                                       t0 + due))
                pending.add(task)
                task.add_done_callback(pending.discard)
            area += 1.0 if arrivals == "constant" else rng.expovariate(1.0)
        remaining = schedule.total_s - (time.perf_counter() - t0)
        if remaining > 0:
            await asyncio.sleep(remaining)
        if pending:
            await asyncio.gather(*list(pending))


def _text(answer, limit=300):
    """An error answer as one line: the server's ``{"error": ...}`` text, else the start."""
    if isinstance(answer, bytes):
        data = _json(answer)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            answer = data["error"]
        else:
            answer = answer[:limit].decode("utf-8", "replace")
    return " ".join(str(answer).split())[:limit]


def _json(body):
    import json
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
