"""The models a server holds: each bundle loaded once, by name and version.

A :class:`ServedModel` wraps one :class:`~edgeinfer.Session` with what the
protocol says about it (metadata, Triton's model configuration, statistics) and
its :class:`~edgeinfer.serve.batching.Batcher`.
"""

import os
import time

from ..bundle import Bundle
from ..errors import UsageError
from ..runtime.session import load
from .protocol import datatype_of, wire_shape


# Backend options a served model gets unless the user gives them (--backend-option).
# ONNX Runtime: its pool threads spin-wait after each run for the next one, but in a
# server the next thing on those cores is the event loop reading the next request (and
# on a device, the client too); spinning takes the CPU from them.  Stopping it at the end
# of each run took MobileNetV2 INT8 from ~9.4 to ~7.6 ms of CPU per served request on 2
# cores (scripts/bench_serve.py), while runs themselves still spin between operators.
SERVED_BACKEND_OPTIONS = {"onnxruntime": {"stop_spinning": True}}

# Backends whose models get two runs in flight by default (``instances`` None), each
# with half the cores.  One run spread over every core stalls whenever the event loop
# takes a core to read a request, since each operator waits for its slowest thread;
# two runs on half the cores each keep going, and one overlaps the other's network
# work.  On 2 cores this served MobileNetV2 INT8 at 0.83-0.91x an in-process loop, against
# 0.70-0.80x for one run on both cores (issue 8).  The cost: a lone request runs on half
# the cores (--instances 1 gives it all of them).  Only ONNX Runtime: its sessions take
# concurrent runs and its thread count is an option here.  Not with dynamic batching:
# one stacked run already has the work to use every core, and two runs would leave a
# big stack on half of them.
AUTO_INSTANCES = {"onnxruntime": 2}


def default_instances(backend, cores):
    """Runs in flight for a model of ``backend`` on ``cores`` CPUs, unbatched.

    Two runs on half the cores each (:data:`AUTO_INSTANCES`); where that leaves each
    run a single thread (2-3 cores), two runs per core instead.  A single-threaded
    run has no operator barrier for a busy core to stall, so a spare run costs
    nothing and keeps every core working while the event loop reads the next
    request: on 2 cores, MobileNetV2 INT8 went from 0.78x to 0.85x an in-process
    loop with 4 runs instead of 2 (issue 8).
    """
    runs = AUTO_INSTANCES.get(backend, 1) if cores > 1 else 1
    if runs > 1 and cores // runs <= 1:
        runs = 2 * cores
    return runs


def batchable(specs):
    """True when every tensor spec has a symbolic first (batch) dim to stack along."""
    return all(s.shape and not (isinstance(s.shape[0], int) and s.shape[0] > 0)
               for s in specs)


class ServedModel(object):
    """One loaded bundle, as the server shows it.

    Attributes:
        name: the model name clients use (the manifest's ``name``).
        version: its version, a string (the manifest's ``version``, else ``"1"``).
        session: the :class:`~edgeinfer.Session` every request runs through.
        batchable: True when every input and output has a symbolic first (batch)
            dim, so requests can be stacked along it.
        load_s: seconds loading the bundle took.
        instances: runs of it in flight at once.
        batcher: the model's :class:`~edgeinfer.serve.batching.Batcher` (set by the app).
        stats: dict of Triton-style counters (see :meth:`statistics`).
    """

    def __init__(self, session, load_s, instances=1):
        self.session = session
        self.instances = instances
        self.name = str(session.manifest["name"])
        self.version = str(session.manifest.get("version") or "1")
        self.inputs = list(session.inputs)
        self.input_specs = dict((s.name, s) for s in self.inputs)
        self.output_names = [s.name for s in session.outputs]
        self.batchable = batchable(list(session.inputs) + list(session.outputs))
        self.load_s = load_s
        self.batcher = None
        self.stats = {"inference_count": 0, "execution_count": 0, "last_inference": 0,
                      "success": [0, 0], "fail": [0, 0], "queue": [0, 0],
                      "compute_input": [0, 0], "compute_infer": [0, 0],
                      "compute_output": [0, 0], "batches": {}}
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
            "instance_group": [{"count": self.instances, "kind": "KIND_CPU"}],
        }
        if batch and max_batch > 1:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": int(max_delay_ms * 1000)}
        return config

    def record_success(self, rows, total_ns, queue_ns, input_ns, infer_ns, output_ns):
        """Count one answered request (on the event loop: no lock needed).

        Triton's per-request statistics: ``compute_input`` is turning the body into
        tensors, ``compute_infer`` the run of the batch the request rode in,
        ``compute_output`` encoding the answer.  Each counts every successful request,
        so the three counts agree, as perf_analyzer checks.
        """
        stats = self.stats
        stats["inference_count"] += rows
        stats["last_inference"] = int(time.time() * 1000)
        for key, ns in (("success", total_ns), ("queue", queue_ns), ("compute_input", input_ns),
                        ("compute_infer", infer_ns), ("compute_output", output_ns)):
            stats[key][0] += 1
            stats[key][1] += ns

    def record_failure(self, total_ns):
        """Count one request that failed (refused, timed out, or the run raised)."""
        self.stats["fail"][0] += 1
        self.stats["fail"][1] += total_ns

    def record_batch(self, size, compute_ns):
        """Count one model execution of ``size`` stacked requests' rows."""
        stats = self.stats
        stats["execution_count"] += 1
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
                "queue": pair(s["queue"]), "compute_input": pair(s["compute_input"]),
                "compute_infer": pair(s["compute_infer"]),
                "compute_output": pair(s["compute_output"]),
                "cache_hit": dict(zero), "cache_miss": dict(zero),
            },
            # Per execution, by batch size: the run's time; inputs and outputs are
            # prepared per request (above), so their time here is zero.
            "batch_stats": [{"batch_size": size,
                             "compute_input": {"count": item[0], "ns": 0},
                             "compute_infer": pair(item),
                             "compute_output": {"count": item[0], "ns": 0}}
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
        load_options: keyword arguments for :func:`edgeinfer.load` (default None).  Its
            ``backend_options`` go over :data:`SERVED_BACKEND_OPTIONS` (ONNX Runtime:
            ``stop_spinning``), which a user may turn off, e.g. ``stop_spinning=false``.
        instances: runs of each model in flight at once (default None:
            :func:`default_instances` unless the model is batched, else 1).  With more than one, ONNX Runtime models get ``intra_op_threads``
            = cores / instances unless given.
        max_batch: the server's ``--max-batch`` (default 1: no dynamic batching).

    Raises:
        UsageError: no bundles, or two bundles with the same name and version.
        BundleError, BackendError: a bundle that :func:`edgeinfer.load` refuses.
    """

    def __init__(self, paths, cache=None, load_options=None, instances=None, max_batch=1):
        if not paths:
            raise UsageError("No bundles to serve.", "Give one or more .eib files: "
                             "edgeinfer serve models/*.eib.")
        self.models = {}
        self.sessions = []
        try:
            for path in paths:
                start = time.perf_counter()
                options, count = served_options(path, load_options, instances, max_batch)
                session = load(os.fspath(path), cache=cache, **options)
                self.sessions.append(session)
                model = ServedModel(session, time.perf_counter() - start, count)
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


def served_options(path, load_options, instances, max_batch=1):
    """``(load_options, instances)`` for one bundle, the served defaults of its backend
    filled in where the user gave none (see :class:`Repository`)."""
    bundle = Bundle.open(os.fspath(path), verify=False)
    backend = bundle.backend
    options = dict(load_options or {})
    given = dict(options.get("backend_options") or {})
    cores = usable_cores()
    if instances is None:
        batched = max_batch > 1 and batchable(bundle.inputs + bundle.outputs)
        instances = default_instances(backend, cores) if not batched else 1
    backend_options = dict(SERVED_BACKEND_OPTIONS.get(backend, {}))
    if backend == "onnxruntime" and instances > 1 and "intra_op_threads" not in given:
        backend_options["intra_op_threads"] = max(1, cores // instances)
    backend_options.update(given)
    if backend_options:
        options["backend_options"] = backend_options
    return options, instances


def usable_cores():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def _order(version):
    # "10" after "9": whole-number versions compare as numbers.
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
