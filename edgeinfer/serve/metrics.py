"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand.

Small on purpose: counters, gauges and histograms with labels, updated on the
event loop only (so without locks), and gauges read at scrape time from a
callback.  No dependency: a device without prometheus_client still exports them.
"""

import bisect
import math

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from a cached answer (~50 us) to a slow model on a small board (~10 s).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names, values, extra=None):
    pairs = ['{}="{}"'.format(n, _escape(v)) for n, v in zip(names, values)]
    if extra is not None:
        pairs.append('{}="{}"'.format(*extra))
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value):
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Metric(object):
    """One metric family: a name, its help text, label names and samples."""

    kind = "untyped"

    def __init__(self, name, help_text, labels=()):
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)
        self.values = {}

    def header(self):
        return ["# HELP {} {}".format(self.name, self.help),
                "# TYPE {} {}".format(self.name, self.kind)]

    def lines(self):
        return ["{}{} {}".format(self.name, _labels(self.labels, key), _number(value))
                for key, value in sorted(self.values.items())]


class Counter(Metric):
    """A value that only goes up."""

    kind = "counter"

    def inc(self, *labels, amount=1):
        self.values[labels] = self.values.get(labels, 0) + amount


class Gauge(Metric):
    """A value that goes up and down; ``read`` returns ``{label values: value}`` at scrape."""

    kind = "gauge"

    def __init__(self, name, help_text, labels=(), read=None):
        super(Gauge, self).__init__(name, help_text, labels)
        self.read = read

    def set(self, *labels, value):
        self.values[labels] = value

    def lines(self):
        if self.read is not None:
            self.values = dict(self.read())
        return super(Gauge, self).lines()


class ScrapedCounter(Gauge):
    """A counter kept elsewhere (the cache's stats), read at scrape time."""

    kind = "counter"


class Histogram(Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name, help_text, labels=(), buckets=LATENCY_BUCKETS):
        super(Histogram, self).__init__(name, help_text, labels)
        self.buckets = tuple(buckets)

    def observe(self, *labels, value):
        entry = self.values.get(labels)
        if entry is None:
            entry = self.values[labels] = [[0] * len(self.buckets), 0.0, 0]
        index = bisect.bisect_left(self.buckets, value)   # first bound >= value
        if index < len(self.buckets):
            entry[0][index] += 1
        entry[1] += value
        entry[2] += 1

    def lines(self):
        out = []
        for key, (counts, total, count) in sorted(self.values.items()):
            running = 0
            for bound, n in zip(self.buckets, counts):
                running += n
                out.append("{}_bucket{} {}".format(
                    self.name, _labels(self.labels, key, ("le", _number(bound))), running))
            out.append("{}_bucket{} {}".format(self.name, _labels(self.labels, key,
                                                                   ("le", "+Inf")), count))
            out.append("{}_sum{} {}".format(self.name, _labels(self.labels, key), _number(total)))
            out.append("{}_count{} {}".format(self.name, _labels(self.labels, key), count))
        return out


class Registry(object):
    """The metric families a server exports, rendered in order."""

    def __init__(self):
        self.metrics = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self):
        """The whole exposition, as text."""
        lines = []
        for metric in self.metrics:
            lines.extend(metric.header())
            lines.extend(metric.lines())
        return "\n".join(lines) + "\n"
