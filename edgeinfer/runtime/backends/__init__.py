"""The backend registry.

A backend turns a bundle's model files into a runner.  Each lives in its own
module and imports its framework only when used, so a device needs just the one
framework it has.  Adding a backend is its module plus one line here.

The contract (see DESIGN.md, "Backend"):

* ``Backend.name``; ``Backend.available()`` -> ``(True, version)`` or
  ``(False, why_not)``; ``Backend.load(files, options)`` -> runner.
* A runner has ``inputs`` and ``outputs`` (lists of :class:`~edgeinfer.tensors.TensorSpec`),
  ``run(feeds, output_names=None)`` -> dict name -> numpy array, and ``close()``.
* Optionally, ``run_many(feed_dicts, output_names=None, concurrency=None)`` -> list of
  such dicts in input order, for a backend with its own way of running many inputs
  at once (OpenVINO's AsyncInferQueue).  A runner without it gets
  :func:`run_in_threads`.  Either way the session has checked every feed first.
"""

import importlib
import os

from ...errors import BackendError, UsageError

REGISTRY = {
    "onnxruntime": "edgeinfer.runtime.backends.ort:OrtBackend",
    "openvino": "edgeinfer.runtime.backends.openvino:OpenVinoBackend",
    "tensorrt": "edgeinfer.runtime.backends.tensorrt:TensorRtBackend",
}


def get_backend(name):
    """Return an instance of the backend registered as ``name``.

    Raises:
        UsageError: no such backend.
        BackendError: the backend's module cannot be loaded.
    """
    try:
        target = REGISTRY[name]
    except KeyError:
        raise UsageError("Unknown backend {!r}.".format(name),
                         "This edgeinfer knows: {}.".format(", ".join(sorted(REGISTRY))))
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError("Backend {!r} cannot be loaded: {}.".format(name, exc))
    return getattr(module, class_name)()


def merge_options(backend, options, defaults):
    """``options`` over a backend's ``defaults``, refusing keys it does not know.

    Raises:
        UsageError: an unknown option, naming the valid ones.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UsageError("Unknown {} option(s): {}.".format(backend, ", ".join(unknown)),
                         "Valid options: {}.".format(", ".join(sorted(defaults))))
    merged = dict(defaults)
    merged.update(options)
    return merged


def cache_dir(backend):
    """The per-user folder a backend keeps its compiled models in.

    ``$EDGEINFER_CACHE_DIR/<backend>`` when that is set, else
    ``$XDG_CACHE_HOME/edgeinfer/<backend>``, else ``~/.cache/edgeinfer/<backend>``.
    """
    root = os.environ.get("EDGEINFER_CACHE_DIR")
    if root:
        return os.path.join(os.path.expanduser(root), backend)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "edgeinfer", backend)


def run_in_threads(runner, feed_dicts, output_names=None, concurrency=None):
    """``run_many`` for a runner that has none: its ``run`` from a small thread pool.

    Overlapping calls pay where ``run`` releases the GIL, as ONNX Runtime's does;
    each call of such a backend already uses every core, so the default is a plain
    loop.

    Args:
        runner: a runner (see the module docstring).
        feed_dicts: a list of checked feed dicts.
        output_names: outputs to return (default None: all).
        concurrency: calls in flight at once (default None: 1, one after another).

    Returns:
        list of output dicts, in the order of ``feed_dicts``.

    Raises:
        BackendError: the backend failed on a feed; the first in order that failed
            is named, once every call has finished.
    """
    count = len(feed_dicts)

    def run(index):
        try:
            return runner.run(feed_dicts[index], output_names)
        except BackendError as exc:
            raise BackendError("Feed {} of {}: {}".format(index, count, exc.message), exc.hint)

    workers = min(concurrency or 1, count)
    if workers <= 1:
        return [run(index) for index in range(count)]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(count)))


class LocalFiles(object):
    """Model files in a folder rather than a bundle (used to validate before bundling).

    Attributes:
        paths: dict member name -> file path.
        entry: the member name of the model's main file.
    """

    def __init__(self, paths, entry):
        self.paths = dict(paths)
        self.entry = entry

    def read(self, name=None):
        with open(self.paths[name or self.entry], "rb") as handle:
            return handle.read()


class ModelFiles(object):
    """The files of one model inside a bundle, as a backend sees them.

    Attributes:
        bundle: the opened :class:`~edgeinfer.bundle.Bundle`.
        entry: the member name of the model's main file (e.g. ``model.onnx``).
    """

    def __init__(self, bundle, entry):
        self.bundle = bundle
        self.entry = entry

    def read(self, name=None):
        """Bytes of a member (the entry file by default), hash-checked."""
        return self.bundle.read(name or self.entry)
