"""The backend registry.

A backend turns a bundle's model files into a runner.  Each lives in its own
module and imports its framework only when used, so a device needs just the one
framework it has.  Adding a backend is its module plus one line here.

The contract (see DESIGN.md, "Backend"):

* ``Backend.name``; ``Backend.available()`` -> ``(True, version)`` or
  ``(False, why_not)``; ``Backend.load(files, options)`` -> runner.
* A runner has ``inputs`` and ``outputs`` (lists of :class:`~edgeinfer.tensors.TensorSpec`),
  ``run(feeds, output_names=None)`` -> dict name -> numpy array, and ``close()``.
"""

import importlib

from ...errors import BackendError, UsageError

REGISTRY = {
    "onnxruntime": "edgeinfer.runtime.backends.ort:OrtBackend",
    "openvino": "edgeinfer.runtime.backends.openvino:OpenVinoBackend",
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
