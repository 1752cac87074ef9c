"""The session: a loaded bundle that checks inputs and runs its backend."""

import functools
import re
import warnings

import numpy as np

from ..bundle import Bundle
from ..errors import BackendError, BundleError, InputError, UsageError
from ..profiles import PROFILES, machine_arch
from ..tensors import find_spec
from .backends import ModelFiles, get_backend, run_in_threads
from .cache import Cache, model_hash


def version_tuple(text):
    """``"1.17.3"`` -> ``(1, 17, 3)``; non-numeric parts end the tuple."""
    parts = []
    for piece in str(text).split("+")[0].split("."):
        # Only the leading digits count: "0rc1" is 0, not 1 (digits picked from anywhere).
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.group() != piece:
            break
    return tuple(parts)


def check_compatible(bundle, backend):
    """Check that this machine can run ``bundle`` with ``backend``.

    Returns:
        list of warnings (str) for mismatches that still run correctly.

    Raises:
        BackendError: the backend is missing or older than the bundle needs.
    """
    target = bundle.manifest["target"]
    ok, detail = backend.available()
    if not ok:
        # available() says why as "what. Note: fix"; the fix goes in the hint, with the
        # backends this machine does have (a bundle made for the wrong device, issue 5).
        why, _, fix = detail.partition(" Note: ")
        others = _usable_backends(skip=backend.name)
        hint = fix.rstrip(".") if fix else "install it"
        if others:
            hint += "; or convert the model again for what this machine has: {}".format(
                ", ".join(others))
        raise BackendError("Bundle {!r} needs the {} backend, which is not usable here: "
                           "{}".format(bundle.path, backend.name, why), hint + ".")
    needed = target.get("min_backend_version")
    if needed and version_tuple(detail) < version_tuple(needed):
        raise BackendError(
            "Bundle {!r} needs {} >= {}; this machine has {}.".format(
                bundle.path, backend.name, needed, detail),
            "Upgrade {} here, or convert the model again with an older one.".format(backend.name))
    notes = []
    profile = PROFILES.get(target.get("profile"))
    if profile is not None and profile.arch != machine_arch():
        notes.append("Bundle was built for {} ({}); this machine is {}: it runs, but its "
                     "precision choices were tuned for the other CPU.".format(
                         profile.name, profile.arch, machine_arch()))
    return notes


# The --target that makes a bundle for each backend (TensorRT's: this Jetson's profile).
TARGETS = {"onnxruntime": "cpu", "openvino": "intel-cpu", "tensorrt": "jetson-orin"}


def _usable_backends(skip):
    """``"name version (--target T)"`` for each backend usable here other than ``skip``."""
    from ..errors import EdgeInferError
    from .backends import REGISTRY
    found = []
    for name in sorted(REGISTRY):
        if name == skip:
            continue
        try:
            ok, version = get_backend(name).available()
        except EdgeInferError:
            continue
        if not ok:
            continue
        target = TARGETS.get(name, name)
        if name == "tensorrt":
            from ..jetson import read_jetson
            info = read_jetson()
            target = info.profile if info is not None and info.profile else target
        found.append("{} {} (--target {})".format(name, version, target))
    return found


class _InputCheck(object):
    """Checks one input against its spec, fast: it runs on every call.

    ``static`` is the whole shape when every dim is fixed (one tuple compare
    checks it), else None; ``fixed`` lists the (axis, size) pairs to check.
    """

    __slots__ = ("spec", "dtype", "rank", "fixed", "static")

    def __init__(self, spec):
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.rank = len(spec.shape)
        self.fixed = tuple((i, d) for i, d in enumerate(spec.shape)
                           if isinstance(d, int) and d > 0)
        self.static = (tuple(d for _, d in self.fixed) if len(self.fixed) == self.rank
                       else None)

    def __call__(self, value):
        if type(value) is not np.ndarray:
            try:
                value = np.asarray(value)
            except (ValueError, TypeError) as exc:
                raise InputError("Input tensor: {} | Cannot be read as an array: {}.".format(
                    self.spec.name, str(exc).rstrip(".")),
                    "Expected: {} (a numpy array or equal-length nested lists).".format(
                        self.spec.describe()))
        if value.dtype != self.dtype:
            value = self._convert(value)
        if value.ndim != self.rank:
            raise InputError(
                "Input tensor: {} | Received rank {} (shape {}).".format(
                    self.spec.name, value.ndim, list(value.shape)),
                "Expected rank {}: {}.".format(self.rank, self.spec.describe()))
        for axis, size in self.fixed:
            if value.shape[axis] != size:
                raise InputError(
                    "Input tensor: {} | Received shape {}; dim {} is {}, expected {}.".format(
                        self.spec.name, list(value.shape), axis, value.shape[axis], size),
                    "Expected: {}.".format(self.spec.describe()))
        return value

    def _convert(self, value):
        # Same-kind casts (float64 -> float32, int32 -> int64, uint8 -> float32) are
        # done for the caller; casts that lose meaning (float -> int, anything -> bool,
        # bool -> anything) are refused rather than guessed.
        src, dst = value.dtype, self.dtype
        allowed = (np.can_cast(src, dst, casting="same_kind")
                   and not (dst.kind in "iu" and src.kind == "f") and dst.kind != "b"
                   and src.kind in "iuf")
        if not allowed:
            raise InputError("Input tensor: {} | Received unexpected dtype: {}.".format(
                self.spec.name, src), "Expected type: {} (convert it yourself if you "
                "mean it).".format(self.dtype))
        return value.astype(dst)


class Session(object):
    """A bundle loaded for inference.

    Create one with :func:`edgeinfer.load`.

    Attributes:
        bundle: the opened :class:`~edgeinfer.bundle.Bundle`.
        manifest: the bundle's manifest (dict).
        inputs: list of input TensorSpecs (name, dtype, shape).
        outputs: list of output TensorSpecs.
        notes: warnings about this machine versus the bundle's target.
        cache: the :class:`~edgeinfer.Cache` that :meth:`run` consults, or None
            (no cache given, or the bundle opts out: manifest ``"deterministic":
            false``).
    """

    def __init__(self, bundle, runner, notes=(), cache=None):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.inputs = bundle.inputs
        self.outputs = bundle.outputs
        self.notes = list(notes)
        self._runner = runner
        self._model_hash = None
        self.cache = cache
        if cache is not None and self.manifest.get("deterministic") is False:
            # Per-bundle opt-out (issue 6, requirement 7): a model whose outputs vary
            # from run to run (sampling, dropout left on) must not replay one of them.
            self.cache = None
            self.notes.append("The bundle says its model is not deterministic: results are "
                              "not cached.")
        checks = [_InputCheck(s) for s in self.inputs]
        self._names = frozenset(s.name for s in self.inputs)
        # What run() walks on every call, unpacked once here (issue 3: per-call cost).
        self._table = [(c.spec.name, c.dtype, c.rank, c.static, c.fixed, c) for c in checks]
        self._agree = _shared_dims(self.inputs)
        self._output_names = [s.name for s in self.outputs]

    @property
    def name(self):
        return self.manifest["name"]

    @property
    def model_hash(self):
        """The bundle's content hash (32 hex digits): the model part of every cache key."""
        if self._model_hash is None:
            self._model_hash = model_hash(self.manifest)
        return self._model_hash

    def run(self, feeds, outputs=None, cache=True):
        """Run the model, or answer from the session's cache.

        Args:
            feeds: dict input name -> array (numpy or anything ``np.asarray`` takes).
                Same-kind dtypes are converted (float64 -> float32); others refused.
            outputs: output names to return (default None: all, in model order).
            cache: consult the session's cache, if it has one (default True); False
                runs the model and stores nothing (per-call opt-out).

        Returns:
            dict output name -> numpy array, the caller's own: never an array the
            cache keeps.

        Raises:
            InputError: an unknown or missing input, a wrong dtype, rank or fixed dim,
                or inputs whose sizes differ on a dim they share by name (``seq``).
            UsageError: the session was closed.
            BackendError: the backend failed on these inputs.
        """
        runner = self._runner
        if runner is None:
            self._closed()
        feeds = self._checked(feeds, "Session.run")
        if outputs is not None:
            outputs = self._check_outputs(outputs)
        store = self.cache
        if store is None or not cache:
            return runner.run(feeds, outputs)
        key = store.key(self._model_hash or self.model_hash, feeds,
                        self._output_names if outputs is None else outputs)
        # partial, not a lambda: calling it runs no Python frame of its own.
        return store.get_or_run(key, functools.partial(runner.run, feeds, outputs))

    def run_many(self, feed_dicts, outputs=None, concurrency=None, cache=True):
        """Run the model on many inputs, as many at once as the backend does best.

        Throughput mode (issue 3, requirement 5): OpenVINO keeps ``concurrency``
        asynchronous requests in flight (an AsyncInferQueue), so under the
        THROUGHPUT hint every stream is busy; other backends run
        :meth:`run` from ``concurrency`` threads (ONNX Runtime releases the GIL).
        Every feed is checked, as :meth:`run` checks it, before the first runs.

        Args:
            feed_dicts: an iterable of feed dicts, each as :meth:`run` takes.  It is
                read to the end before anything runs, so each dict must hold its
                own arrays (a generator refilling one buffer would feed its last
                contents every time).
            outputs: output names to return (default None: all, in model order).
            concurrency: inferences in flight at once (default None: the backend's
                choice: OpenVINO's optimal number of requests for the compiled
                model, 1 under the LATENCY hint; 1 for other backends, whose one
                call already uses every core).
            cache: consult the session's cache, if it has one (default True): hits
                are answered from it, and only the misses run (each distinct input
                once).

        Returns:
            list of dicts output name -> numpy array, one per feed dict, in order.

        Raises:
            InputError: a feed that :meth:`run` would refuse (named by its index),
                or ``feed_dicts`` that is not an iterable of dicts.
            UsageError: a bad ``concurrency``, or the session was closed.
            BackendError: the backend failed on a feed.
        """
        runner = self._runner
        if runner is None:
            self._closed()
        _check_concurrency(concurrency)
        if isinstance(feed_dicts, dict):
            raise InputError("Session.run_many takes an iterable of feed dicts, got one dict.",
                             "Use Session.run(feeds) for one call, or pass [feeds].")
        try:
            feed_dicts = list(feed_dicts)
        except TypeError:
            raise InputError("Session.run_many takes an iterable of feed dicts, got {}.".format(
                type(feed_dicts).__name__), "Inputs: {}.".format(self._describe_inputs()))
        checked = []
        for index, feeds in enumerate(feed_dicts):
            try:
                checked.append(self._checked(feeds, "Session.run_many"))
            except InputError as exc:
                raise InputError("Feed {} of {}: {}".format(index, len(feed_dicts), exc.message),
                                 exc.hint)
        if outputs is not None:
            outputs = self._check_outputs(outputs)
        many = getattr(runner, "run_many", None)

        def run_all(feeds_list):
            if many is None:
                return run_in_threads(runner, feeds_list, outputs, concurrency)
            return many(feeds_list, outputs, concurrency)
        store = self.cache
        if store is None or not cache:
            return run_all(checked)
        names = self._output_names if outputs is None else outputs
        keys = [store.key(self.model_hash, feeds, names) for feeds in checked]
        return store.get_or_run_many(
            keys, lambda indices: run_all([checked[i] for i in indices]))

    def _checked(self, feeds, caller):
        """``feeds`` with every input checked: the caller's own dict when nothing
        needed converting, else a copy holding the converted arrays."""
        if type(feeds) is not dict and not isinstance(feeds, dict):
            raise InputError("{} takes a dict of input name -> array, got {}.".format(
                caller, type(feeds).__name__), "Inputs: {}.".format(self._describe_inputs()))
        if feeds.keys() != self._names:
            self._explain_names(feeds)
        checked = feeds
        for name, dtype, rank, static, fixed, check in self._table:
            value = feeds[name]
            # The common case, inline: an ndarray of the right dtype and shape passes
            # as it is.  Anything else goes through the full check, which converts
            # or raises.
            if type(value) is np.ndarray and value.dtype == dtype:
                shape = value.shape
                if shape == static:
                    continue
                if len(shape) == rank:
                    for axis, size in fixed:
                        if shape[axis] != size:
                            break
                    else:
                        continue
            if checked is feeds:
                checked = dict(feeds)
            checked[name] = check(value)
        if self._agree:
            self._check_agreement(checked)
        return checked

    def _check_agreement(self, feeds):
        # A dim name shared by inputs (input_ids and attention_mask: [batch, seq]) means
        # one size.  Inputs that disagree fail inside the backend, and OpenVINO's CPU
        # plugin (2026.4) then keeps failing on the previous good shape until another
        # shape runs: refuse them here, where the message can say what is wrong.
        for dim, first, first_axis, name, axis in self._agree:
            expected, got = feeds[first].shape[first_axis], feeds[name].shape[axis]
            if got != expected:
                raise InputError(
                    "Input tensor: {} | Received shape {}; dim {} ({}) is {}, but {} has {} = "
                    "{}.".format(name, list(feeds[name].shape), axis, dim, got, first, dim,
                                 expected),
                    "Inputs sharing a dim name agree on its size: {}.".format(
                        self._describe_inputs()))

    def _closed(self):
        raise UsageError("Session {!r} is closed.".format(self.name),
                         "Load the bundle again with edgeinfer.load().")

    def _describe_inputs(self):
        return ", ".join(s.describe() for s in self.inputs)

    def _explain_names(self, feeds):
        unknown = sorted(set(feeds) - self._names)
        missing = sorted(self._names - set(feeds))
        parts = []
        if unknown:
            parts.append("unknown input(s) {}".format(", ".join(map(repr, unknown))))
        if missing:
            parts.append("missing input(s) {}".format(", ".join(map(repr, missing))))
        raise InputError("Model {!r}: {}.".format(self.name, "; ".join(parts)),
                         "Expected inputs: {}.".format(self._describe_inputs()))

    def _check_outputs(self, outputs):
        outputs = list(outputs)
        for name in outputs:
            if find_spec(self.outputs, name) is None:
                raise InputError("Model {!r} has no output {!r}.".format(self.name, name),
                                 "Outputs: {}.".format(", ".join(self._output_names)))
        return outputs

    def close(self):
        """Release the backend's resources; the session cannot run afterwards."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<Session {!r} {} {} on {}>".format(
            self.name, self.manifest["precision"], self.manifest["method"],
            self.manifest["target"]["backend"])


def _shared_dims(specs):
    """``(dim name, first input, its axis, other input, its axis)`` for each place a
    symbolic dim name recurs after its first (in order of the inputs)."""
    first, pairs = {}, []
    for spec in specs:
        for axis, dim in enumerate(spec.shape):
            if not isinstance(dim, str):
                continue
            if dim in first:
                pairs.append((dim,) + first[dim] + (spec.name, axis))
            else:
                first[dim] = (spec.name, axis)
    return pairs


def _check_concurrency(concurrency):
    """Refuse a ``concurrency`` that is neither None nor a whole number >= 1."""
    if concurrency is None:
        return
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise UsageError("concurrency must be a whole number >= 1, not {!r}.".format(
            concurrency), "Leave it out (None) for the backend's own choice.")


def load(path, device=None, backend_options=None, verify=True, cache=None, shard_mode=None,
         shard_budget_mb=None):
    """Open a bundle and prepare it for inference.

    Args:
        path: the ``.eib`` file.
        device: where to run it (default None: the backend's default, the CPU).  A
            shortcut for ``backend_options={"device": device}``: ``"CPU"``, ``"GPU"``,
            ``"NPU"``, ``"AUTO"`` or ``"HETERO:GPU,CPU"`` for OpenVINO; ``"cpu"`` or
            ``"cuda"`` for ONNX Runtime.
        backend_options: options for the backend (default None: its defaults), e.g.
            ``{"intra_op_threads": 2}`` for ONNX Runtime or ``{"performance_hint":
            "THROUGHPUT"}`` for OpenVINO.  Unknown keys are refused.
        verify: check every file's sha256 (default True).
        cache: an :class:`edgeinfer.Cache` for :meth:`Session.run` to consult (default
            None: results are not cached).  Ignored, with a note, for a bundle whose
            manifest says ``"deterministic": false``.
        shard_mode: for a sharded bundle, ``"resident"`` (every partition loaded) or
            ``"stream"`` (at most the shard budget of partitions resident, the next
            one loading while one runs) (default None: ``"resident"``).
        shard_budget_mb: MiB of partitions ``"stream"`` may keep resident (default
            None: the budget the bundle was sharded for).

    Returns:
        Session

    Raises:
        BundleError: the bundle is missing, corrupt, tampered or of a newer format.
        BackendError: its backend is unknown, not installed here, too old, lacks the
            device, or refuses the model.
        UsageError: an unknown backend option, ``device`` disagreeing with
            ``backend_options["device"]``, or a ``cache`` that is not a Cache.
    """
    backend_options = _with_device(device, backend_options)
    if cache is not None and not isinstance(cache, Cache):
        raise UsageError("cache must be an edgeinfer.Cache, not {}.".format(
            type(cache).__name__), "Example: edgeinfer.load(path, cache=edgeinfer.Cache("
            "memory_mb=64)).")
    bundle = Bundle.open(path, verify=verify)
    try:
        backend = get_backend(bundle.backend)
    except UsageError as exc:
        # The user asked for nothing wrong: the bundle names a backend this edgeinfer lacks.
        raise BackendError("Bundle {!r} needs the backend {!r}, which this edgeinfer does not "
                           "have.".format(bundle.path, bundle.backend), exc.hint)
    notes = check_compatible(bundle, backend)
    for note in notes:
        warnings.warn(note)
    if bundle.manifest.get("partitions") or shard_mode is not None or shard_budget_mb is not None:
        # Sharded bundles (issue 7): the partitions run through the same backend.
        from .shard import open_sharded
        runner = open_sharded(bundle, backend, backend_options, shard_mode or "resident",
                              shard_budget_mb)
    else:
        runner = backend.load(ModelFiles(bundle, bundle.manifest["model"]), backend_options)
    _check_runner_matches(bundle, runner)
    return Session(bundle, runner, notes, cache=cache)


def _check_runner_matches(bundle, runner):
    # The manifest is what callers validate against; a model that disagrees with its
    # own manifest is a broken bundle, not something to run.
    for kind, declared, actual in (("input", bundle.inputs, runner.inputs),
                                   ("output", bundle.outputs, runner.outputs)):
        if [s.name for s in declared] != [s.name for s in actual]:
            raise BundleError("Bundle {!r}: its model's {}s {} differ from the manifest's {}.".format(
                bundle.path, kind, [s.name for s in actual], [s.name for s in declared]),
                "Rebuild it with `edgeinfer convert`.")


def _with_device(device, backend_options):
    """Merge the ``device`` shortcut into the backend options."""
    if device is None:
        return backend_options
    if not isinstance(device, str):
        raise UsageError("device must be a device name such as \"CPU\", not {}.".format(
            type(device).__name__), "Backend options go in backend_options={...}.")
    options = dict(backend_options or {})
    given = options.get("device")
    if given is not None and str(given).upper() != device.upper():
        raise UsageError("device={!r} disagrees with backend_options['device']={!r}.".format(
            device, given), "Give the device once.")
    options["device"] = device
    return options
