"""What a load test will do: its stages, its SLO, and the checks on both.

Pure parsing and arithmetic, no network: every mistake in ``--stages``, ``--slo``
or the durations is a :class:`~edgeinfer.errors.UsageError` raised before a
single request is sent.

Stages follow k6's ramping model: ``10s:8,30s:32,10s:0`` starts at 0, ramps
linearly to 8 over 10 s, to 32 over the next 30 s, and back to 0 over 10 s.  A
stage whose target equals the previous one holds it (steady; a long one is a soak
test, ``5s:16,2h:16``); a short stage to a high target is a spike
(``30s:8,2s:64,20s:64,2s:8,30s:8``).  The level is virtual users in the closed
model and requests per second in the open one.
"""

import math
import re

from ..errors import UsageError

STAGES_HINT = ("Example: --stages 10s:8,30s:32,10s:0 (ramp to 8 over 10 s, to 32 over 30 s, "
               "down to 0 over 10 s).")
SLO_HINT = ("Example: --slo p95=50ms,p99=200ms,errors=0.1%,rps=100 (latency <= ms/s/us, "
            "error rate <= %, successful requests per second >=).")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*(ms|s|m|h)?\s*$")
_LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_LATENCY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s)\s*$")

# SLO keys: the latency percentiles (upper bounds, ms), the error rate (upper bound, a
# fraction), and throughput (lower bound, successful requests per second).
LATENCY_KEYS = ("p50", "p90", "p95", "p99", "max", "mean")
SLO_KEYS = LATENCY_KEYS + ("errors", "rps")


def parse_duration(text, what):
    """``"10s"`` -> 10.0 seconds (units ms, s, m, h; a bare number is seconds).

    Raises:
        UsageError: not a duration, or not more than 0.
    """
    match = _DURATION.match(str(text))
    if not match:
        raise UsageError("{} {!r} is not a duration.".format(what, text),
                         "Give a number and a unit: 500ms, 10s, 2m, 1h.")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not seconds > 0:
        raise UsageError("{} must be more than 0, not {!r}.".format(what, text),
                         "Example: 10s.")
    return seconds


class Schedule(object):
    """A piecewise-linear load level over time: users (closed) or requests/s (open).

    Args:
        stages: list of ``(seconds, target)``; each ramps linearly from the level
            before it to ``target``.
        start: the level at time 0 (default 0).
    """

    def __init__(self, stages, start=0.0):
        self.stages = [(float(d), float(t)) for d, t in stages]
        self.start = float(start)
        self.total_s = sum(d for d, _ in self.stages)
        # (begin time, duration, level at begin, level at end, cumulative level-seconds before)
        self._pieces = []
        begin, level, area = 0.0, self.start, 0.0
        for duration, target in self.stages:
            self._pieces.append((begin, duration, level, target, area))
            area += 0.5 * (level + target) * duration
            begin += duration
            level = target
        self.area = area

    @classmethod
    def parse(cls, text):
        """``"10s:8,30s:32,10s:0"`` -> Schedule; raises UsageError naming the bad stage."""
        if text is None or not str(text).strip():
            raise UsageError("--stages is empty.", STAGES_HINT)
        stages = []
        for index, part in enumerate(str(text).split(",")):
            duration, sep, target = part.partition(":")
            if not sep or not duration.strip() or not target.strip():
                raise UsageError("--stages: stage {} is {!r}; each stage is DURATION:TARGET.".format(
                    index + 1, part), STAGES_HINT)
            seconds = parse_duration(duration, "--stages: stage {} duration".format(index + 1))
            try:
                level = float(target)
            except ValueError:
                level = float("nan")
            if not (level >= 0 and math.isfinite(level)):
                raise UsageError("--stages: stage {} target {!r} is not a number >= 0.".format(
                    index + 1, target.strip()), STAGES_HINT)
            stages.append((seconds, level))
        schedule = cls(stages)
        if max(t for _, t in stages) <= 0:
            raise UsageError("--stages never rises above 0: no load would be sent.", STAGES_HINT)
        return schedule

    @classmethod
    def constant(cls, seconds, level):
        """``level`` from the start for ``seconds`` (``--duration`` with ``--users``/``--rate``)."""
        return cls([(seconds, level)], start=level)

    def _piece(self, t):
        for piece in self._pieces:
            if t < piece[0] + piece[1]:
                return piece
        return self._pieces[-1]

    def level_at(self, t):
        """The level at ``t`` seconds from the start (the last target after the end)."""
        if t <= 0:
            return self.start
        if t >= self.total_s:
            return self.stages[-1][1]
        begin, duration, a, b, _ = self._piece(t)
        return a + (b - a) * (t - begin) / duration

    def area_until(self, t):
        """The level integrated from 0 to ``t`` (for a rate: requests due by then)."""
        t = min(max(t, 0.0), self.total_s)
        begin, duration, a, b, before = self._piece(t)
        tau = t - begin
        return before + a * tau + 0.5 * (b - a) / duration * tau * tau

    def time_of_area(self, area):
        """The first time the integrated level reaches ``area``, or None past the end."""
        if area > self.area:
            return None
        for begin, duration, a, b, before in self._pieces:
            piece = 0.5 * (a + b) * duration
            if area <= before + piece:
                need = area - before
                slope = (b - a) / duration
                if abs(slope) < 1e-12:
                    tau = need / a if a > 0 else 0.0
                else:
                    # a*tau + slope/2*tau^2 = need; the root within [0, duration].
                    disc = max(a * a + 2.0 * slope * need, 0.0)
                    tau = (math.sqrt(disc) - a) / slope
                return begin + min(max(tau, 0.0), duration)
        return None

    def describe(self):
        return ",".join("{:g}s:{:g}".format(d, t) for d, t in self.stages)

    def to_list(self):
        out, begin, level = [], 0.0, self.start
        for duration, target in self.stages:
            kind = ("steady" if target == level else "ramp-up" if target > level else "ramp-down")
            out.append({"start_s": begin, "duration_s": duration, "from": level, "to": target,
                        "kind": kind})
            begin += duration
            level = target
        return out


class Criterion(object):
    """One SLO criterion: ``key``, its limit (ms, a fraction, or req/s) and how it compares."""

    def __init__(self, key, limit, text):
        self.key = key
        self.limit = limit
        self.text = text

    @property
    def lower_bound(self):
        return self.key == "rps"

    def check(self, value):
        """True when ``value`` meets the criterion (None, nothing measured, never does)."""
        if value is None:
            return False
        return value >= self.limit if self.lower_bound else value <= self.limit

    def describe(self, value=None):
        unit = {"errors": "%", "rps": " req/s"}.get(self.key, " ms")
        scale = 100.0 if self.key == "errors" else 1.0
        sign = ">=" if self.lower_bound else "<="
        goal = "{} {} {:g}{}".format(self.key, sign, self.limit * scale, unit)
        if value is None:
            return goal
        return "{} {:.3g}{} (goal {})".format(self.key, value * scale, unit, goal)


def parse_slo(text):
    """``"p95=50ms,errors=0.1%"`` -> list of :class:`Criterion` (empty for None).

    Raises:
        UsageError: an unknown key, a key given twice, or a value that does not parse.
    """
    if text is None:
        return []
    criteria, seen = [], set()
    for part in str(text).split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "throughput":
            key = "rps"
        if not sep or not key or not value:
            raise UsageError("--slo: {!r} is not KEY=VALUE.".format(part.strip()), SLO_HINT)
        if key not in SLO_KEYS:
            raise UsageError("--slo: unknown criterion {!r}.".format(key),
                             "Known: {}. {}".format(", ".join(SLO_KEYS), SLO_HINT))
        if key in seen:
            raise UsageError("--slo: {} is given twice.".format(key), SLO_HINT)
        seen.add(key)
        criteria.append(Criterion(key, _slo_value(key, value), "{}={}".format(key, value)))
    return criteria


def _slo_value(key, value):
    if key in LATENCY_KEYS:
        match = _LATENCY.match(value)
        if not match:
            raise UsageError("--slo: {}={} is not a latency.".format(key, value),
                             "Give a number and a unit, e.g. {}=50ms (us, ms or s).".format(key))
        return float(match.group(1)) * _LATENCY_UNITS[match.group(2)]
    if key == "errors":
        number = value[:-1] if value.endswith("%") else None
        try:
            rate = float(number) / 100.0
        except (TypeError, ValueError):
            raise UsageError("--slo: errors={} is not a percentage.".format(value),
                             "Give the highest error rate allowed, e.g. errors=0.1%.")
        if not 0 <= rate <= 1:
            raise UsageError("--slo: errors={} is outside 0%..100%.".format(value),
                             "Example: errors=0.1%.")
        return rate
    number = value[:-2] if value.endswith("/s") else value
    try:
        rate = float(number)
    except ValueError:
        rate = float("nan")
    if not (rate > 0 and math.isfinite(rate)):
        raise UsageError("--slo: rps={} is not a rate > 0.".format(value),
                         "Give the lowest successful requests per second, e.g. rps=100.")
    return rate


def make_schedule(stages=None, duration=None, users=None, rate=None, open_model=False):
    """The schedule from ``--stages``, or ``--duration`` with ``--users`` / ``--rate``.

    Args:
        stages: the ``--stages`` text, or None.
        duration: the ``--duration`` text, or None.
        users: closed workload: virtual users for ``--duration`` (default None).
        rate: open workload: requests per second for ``--duration`` (default None).
        open_model: the stage targets are requests per second (``--open``), not users.

    Returns:
        ``(Schedule, workload)`` where workload is ``"closed"`` or ``"open"``.

    Raises:
        UsageError: a missing, contradictory, zero or negative setting.
    """
    if users is not None and rate is not None:
        raise UsageError("Give --users (closed workload) or --rate (open workload), not both.",
                         "--users N keeps N requests in flight; --rate R sends R requests per "
                         "second whatever the answers.")
    if users is not None and (isinstance(users, bool) or not isinstance(users, int) or users < 1):
        raise UsageError("--users must be a whole number >= 1, not {!r}.".format(users),
                         "Example: --users 8.")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise UsageError("--rate must be more than 0 requests per second, not {!r}.".format(rate),
                         "Example: --rate 200.")
    if stages is not None:
        if duration is not None or users is not None or rate is not None:
            raise UsageError("--stages gives the load; leave out --duration, --users and --rate.",
                             "Stage targets are users, or requests per second with --open.")
        schedule = Schedule.parse(stages)
        if not open_model and any(t != int(t) for _, t in schedule.stages):
            raise UsageError("--stages: closed-workload targets are whole numbers of users, "
                             "not {}.".format(schedule.describe()),
                             "Round them, or add --open to make the targets requests per second.")
        return schedule, "open" if open_model else "closed"
    if duration is None:
        raise UsageError("No load given.", "Give --stages (e.g. 10s:8,30s:32,10s:0), or "
                         "--duration with --users or --rate.")
    seconds = parse_duration(duration, "--duration")
    if users is None and rate is None:
        raise UsageError("--duration needs --users N (closed) or --rate R (open).",
                         "Example: --duration 30s --users 8.")
    if users is not None and open_model:
        raise UsageError("--open takes --rate, not --users.", "Example: --open --rate 200.")
    if rate is not None:
        return Schedule.constant(seconds, rate), "open"
    return Schedule.constant(seconds, users), "closed"


def check_url(url):
    """The server's base URL without a trailing slash; UsageError for anything else."""
    from urllib.parse import urlsplit
    parts = urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError("URL {!r} is not an http:// or https:// address.".format(url),
                         "Give the server's base URL, e.g. http://127.0.0.1:8000.")
    path = parts.path.rstrip("/")
    # A path prefix is allowed (a server behind a proxy); the v2 paths themselves are added.
    if "v2" in path.split("/") or parts.query or parts.fragment:
        raise UsageError("URL {!r} is more than the server's base URL.".format(url),
                         "Give e.g. {}://{} (the /v2/models/... paths are added).".format(
                             parts.scheme, parts.netloc))
    return "{}://{}{}".format(parts.scheme, parts.netloc, path)
