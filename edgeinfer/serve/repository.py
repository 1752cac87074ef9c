"""The models a server holds: each bundle loaded once, by name and version.

A :class:`ServedModel` wraps one :class:`~edgeinfer.Session` with what the
protocol says about it (metadata, Triton's model configuration, statistics) and
its :class:`~edgeinfer.serve.batching.Batcher`.
"""

import os
import time

from ..errors import UsageError
from ..runtime.session import load
from .protocol import datatype_of, wire_shape


class ServedModel(object):
    """One loaded bundle, as the server shows it.

    Attributes:
        name: the model name clients use (the manifest's ``name``).
        version: its version, a string (the manifest's ``version``, else ``"1"``).
        session: the :class:`~edgeinfer.Session` every request runs through.
        batchable: True when every input and output has a symbolic first (batch)
            dim, so requests can be stacked along it.
        load_s: seconds loading the bundle took.
        batcher: the model's :class:`~edgeinfer.serve.batching.Batcher` (set by the app).
        stats: dict of Triton-style counters (see :meth:`statistics`).
    """

    def __init__(self, session, load_s):
        self.session = session
        self.name = str(session.manifest["name"])
        self.version = str(session.manifest.get("version") or "1")
        self.inputs = list(session.inputs)
        self.input_specs = dict((s.name, s) for s in self.inputs)
        self.output_names = [s.name for s in session.outputs]
        self.batchable = all(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] > 0)
                             for s in list(session.inputs) + list(session.outputs))
        self.load_s = load_s
        self.batcher = None
        self.stats = {"inference_count": 0, "execution_count": 0, "last_inference": 0,
                      "success": [0, 0], "fail": [0, 0], "queue": [0, 0],
                      "compute_infer": [0, 0], "batches": {}}
        self._described = ", ".join("{} {}".format(s.name, _wire(s)) for s in self.inputs)

    def describe_inputs(self):
        """``"x FP32[-1, 4]"``-style text of the inputs, for error messages."""
        return self._described

    def metadata(self):
        """The v2 model metadata response."""
        return {
            "name": self.name, "versions": [self.version],
            "platform": "edgeinfer_" + str(self.session.manifest["target"]["backend"]),
            "inputs": [_tensor(s) for s in self.session.inputs],
            "outputs": [_tensor(s) for s in self.session.outputs],
        }

    def config(self, max_batch, max_delay_ms):
        """Triton's model configuration (``GET /v2/models/{m}/config``).

        Triton's convention: with ``max_batch_size`` > 0, ``dims`` leave out the
        batch dim, which perf_analyzer then adds.
        """
        batch = max(1, max_batch) if self.batchable else 0

        def entry(spec):
            dims = wire_shape(spec.shape)[1:] if batch else wire_shape(spec.shape)
            return {"name": spec.name, "data_type": "TYPE_" + datatype_of(spec.dtype),
                    "dims": dims}
        config = {
            "name": self.name, "platform": self.metadata()["platform"],
            "backend": "edgeinfer", "version_policy": {"specific": {"versions": [self.version]}},
            "max_batch_size": batch,
            "input": [entry(s) for s in self.session.inputs],
            "output": [entry(s) for s in self.session.outputs],
            "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        }
        if batch and max_batch > 1:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": int(max_delay_ms * 1000)}
        return config

    def record(self, ok, rows, queue_ns, total_ns):
        """Count one answered request (on the event loop: no lock needed)."""
        stats = self.stats
        stats["success" if ok else "fail"][0] += 1
        stats["success" if ok else "fail"][1] += total_ns
        if ok:
            stats["inference_count"] += rows
            stats["queue"][0] += 1
            stats["queue"][1] += queue_ns
            stats["last_inference"] = int(time.time() * 1000)

    def record_batch(self, size, compute_ns):
        """Count one model execution of ``size`` stacked requests' rows."""
        stats = self.stats
        stats["execution_count"] += 1
        stats["compute_infer"][0] += 1
        stats["compute_infer"][1] += compute_ns
        count = stats["batches"].setdefault(size, [0, 0])
        count[0] += 1
        count[1] += compute_ns

    def statistics(self):
        """Triton's model statistics entry (``GET /v2/models/{m}/stats``)."""
        s = self.stats

        def pair(item):
            return {"count": item[0], "ns": item[1]}
        zero = {"count": 0, "ns": 0}
        return {
            "name": self.name, "version": self.version,
            "last_inference": s["last_inference"], "inference_count": s["inference_count"],
            "execution_count": s["execution_count"],
            "inference_stats": {
                "success": pair(s["success"]), "fail": pair(s["fail"]),
                "queue": pair(s["queue"]), "compute_input": dict(zero),
                "compute_infer": pair(s["compute_infer"]), "compute_output": dict(zero),
                "cache_hit": dict(zero), "cache_miss": dict(zero),
            },
            "batch_stats": [{"batch_size": size, "compute_input": dict(zero),
                             "compute_infer": pair(item), "compute_output": dict(zero)}
                            for size, item in sorted(s["batches"].items())],
        }


def _tensor(spec):
    return {"name": spec.name, "datatype": datatype_of(spec.dtype),
            "shape": wire_shape(spec.shape)}


def _wire(spec):
    return "{}{}".format(datatype_of(spec.dtype), wire_shape(spec.shape))


class Repository(object):
    """The served models, found by name and (optionally) version.

    Args:
        paths: the ``.eib`` bundles to serve.
        cache: an :class:`edgeinfer.Cache` shared by every model (default None).
        load_options: keyword arguments for :func:`edgeinfer.load` (default None).

    Raises:
        UsageError: no bundles, or two bundles with the same name and version.
        BundleError, BackendError: a bundle that :func:`edgeinfer.load` refuses.
    """

    def __init__(self, paths, cache=None, load_options=None):
        if not paths:
            raise UsageError("No bundles to serve.", "Give one or more .eib files: "
                             "edgeinfer serve models/*.eib.")
        self.models = {}
        self.sessions = []
        try:
            for path in paths:
                start = time.perf_counter()
                session = load(os.fspath(path), cache=cache, **(load_options or {}))
                self.sessions.append(session)
                model = ServedModel(session, time.perf_counter() - start)
                versions = self.models.setdefault(model.name, {})
                if model.version in versions:
                    raise UsageError("Two bundles are model {!r} version {}: {!r} and {!r}.".format(
                        model.name, model.version, versions[model.version].session.bundle.path,
                        path), "Serve one of them, or give them different names.")
                versions[model.version] = model
        except BaseException:
            self.close()
            raise

    def all(self):
        """Every ServedModel, by name then version."""
        return [m for name in sorted(self.models)
                for _, m in sorted(self.models[name].items(), key=lambda kv: _order(kv[0]))]

    def find(self, name, version=None):
        """The model called ``name`` (its highest version when ``version`` is None), or None."""
        versions = self.models.get(name)
        if not versions:
            return None
        if version is None:
            return versions[max(versions, key=_order)]
        return versions.get(version)

    def close(self):
        for session in self.sessions:
            session.close()
        self.sessions = []


def _order(version):
    # "10" after "9": whole-number versions compare as numbers.
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
