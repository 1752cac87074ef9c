"""Load tests of a served model (``edgeinfer loadtest``): does it meet its SLO?

:func:`loadtest` puts a KServe v2 server (``edgeinfer serve``, Triton, KServe,
MLServer) under a planned load and returns a report dict; :mod:`.reports` writes
it as JSON, Markdown and a PNG timeline.  The pieces: :mod:`.plan` (stages and
SLO, parsed before any request), :mod:`.bodies` (inputs, encoded before the
clock starts), :mod:`.runner` (the aiohttp generator), :mod:`.results` (the
numbers).

Where it runs: beside the server, not in the device runtime.  It is a network
client, needs aiohttp (``pip install edgeinfer[loadtest]``) and Python 3.8+, like
:mod:`edgeinfer.serve`; its modules import numpy only, aiohttp when a test starts.

JSON schema ``edgeinfer-loadtest/1``
------------------------------------
Fields are only ever added under this schema name; a renamed or removed field
gets a new one.  Times are seconds (``*_s``) or milliseconds (``*_ms``); CPU use
is percent of one core (200 = two cores busy); a value that was not measured is
null, never a guess.

- ``schema``: ``"edgeinfer-loadtest/1"``; ``created``: UTC ISO time; ``edgeinfer``: version.
- ``target``: ``url``, ``model``, ``version`` (asked, or null), ``infer_url``,
  ``server`` (the server's ``GET /v2`` answer, or null), ``platform`` and
  ``inputs`` (from the model's metadata).
- ``settings``: ``workload`` (``"closed"``: levels are virtual users, each
  waiting for its answer; ``"open"``: levels are requests per second, sent
  whether or not answers came), ``stages`` (list of ``{"start_s", "duration_s",
  "from", "to", "kind"}``, kind ``ramp-up``/``steady``/``ramp-down``),
  ``stages_text``, ``duration_s``, ``think_ms``, ``max_in_flight`` and
  ``arrivals`` (open only, else null), ``timeout_s``, ``inputs`` (``unique``,
  ``cycle`` or ``repeat``), ``pool``, ``data`` (path or null: generated),
  ``batch``, ``body`` (``json`` or ``binary``), ``body_bytes``,
  ``distinct_requests`` (null: every request differs), ``slo`` (the text), ``seed``.
- ``machine``: as in ``edgeinfer-bench/1`` (``edgeinfer doctor`` facts plus
  ``ram_mb``, ``os``, ``profile``, ``power_mode``), of the generator's machine.
- ``client``: ``library`` (``"aiohttp 3.x"``), ``event_loop`` (uvloop or
  asyncio), ``pid``.
- ``summary``: ``requests`` (ended), ``ok`` (HTTP 200), ``errors`` (anything
  else: other statuses, timeouts, connection failures), ``error_rate``
  (errors / requests), ``errors_by_kind`` (``{"503": n, "timeout": n,
  "connection": n}``), ``error_examples`` (the first answer of each kind, one
  line: the server's ``error`` text, or the client's exception), ``duration_s``
  (the stages'), ``wall_s`` (to the last
  answer), ``rps`` (ok / duration_s), ``completed_per_s``, ``latency_ms``
  (successful requests only: ``p50_ms``, ``p90_ms``, ``p95_ms``, ``p99_ms``,
  ``max_ms``, ``min_ms``, ``mean_ms``, ``count``; null with no success), ``open``
  (open workload: ``scheduled``, ``sent``, ``dropped``, ``lag_ms`` ``{"p50",
  "p99", "max"}`` of how late requests left; else null).
- ``generator``: ``cpu_percent`` (this process over the run), ``cpu_percent_max``
  (busiest second), ``machine_cpu_percent`` (all processes, from /proc/stat;
  null elsewhere), ``cores``, ``limited`` (true when the generator may have been
  the limit: its busiest second used over 85% of a core, or open arrivals fell
  behind), ``notes`` (those, and whether the machine's cores were saturated).
- ``slo``: ``criteria`` (list of ``{"key", "text", "limit", "value", "unit",
  "passed"}``; keys p50/p90/p95/p99/max/mean in ms (upper bounds), errors as a
  fraction (upper bound), rps in req/s (lower bound)), ``passed`` (true, false,
  or null with no SLO), ``failed`` (one text per failed criterion).
- ``stages``: per stage, its ``settings.stages`` entry plus ``index``,
  ``requests``, ``ok``, ``errors``, ``rps``, ``p50_ms``/``p90_ms``/``p95_ms``/
  ``p99_ms`` and ``generator_cpu_percent`` (requests counted in the stage their
  answer arrived in; the last stage keeps late answers).
- ``timeline``: one entry per second of the stages, by when answers arrived (the
  last second keeps the answers that came after the stages ended): ``t`` (second
  from the start), ``span_s`` (1, or less for the last), ``requests``, ``ok``,
  ``errors``, ``rps``, ``p50_ms``/``p90_ms``/``p95_ms``/``p99_ms``/``max_ms``,
  ``level`` (the schedule's users or req/s then), ``in_flight`` (requests
  waiting at the second's end), ``generator_cpu_percent``,
  ``machine_cpu_percent``.
"""

from .core import SCHEMA, loadtest
from .plan import Schedule, parse_duration, parse_slo
from .reports import headline, markdown, write_json, write_markdown, write_plot

__all__ = ["SCHEMA", "loadtest", "Schedule", "parse_duration", "parse_slo", "headline",
           "markdown", "write_json", "write_markdown", "write_plot"]
