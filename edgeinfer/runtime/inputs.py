"""Reading one request's inputs from files: an image, a .npy or a .npz."""

import os
import zipfile
import zlib

import numpy as np

from ..errors import DataError, UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _with_batch(array, spec):
    # A sample saved without its batch dim gets one; with it, it is kept.
    if array.ndim == len(spec.shape) - 1:
        return array[np.newaxis]
    return array


# What np.load and reading an .npz member raise for a truncated, corrupt or foreign
# file (a truncated .npz is a BadZipFile, a damaged member a zlib.error).
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _read_tensor_file(path, lower, inputs):
    loaded = np.load(path, allow_pickle=False)
    if lower.endswith(".npy") and hasattr(loaded, "files"):
        loaded.close()
        raise DataError("{!r} is named .npy but is a .npz archive.".format(path),
                        "Rename it to .npz (one array per input name).")
    if lower.endswith(".npy"):
        if len(inputs) != 1:
            raise DataError("{!r} holds one array, but the model has {} inputs.".format(
                path, len(inputs)), "Use a .npz with one array per input: {}.".format(
                    ", ".join(s.name for s in inputs)))
        return {inputs[0].name: _with_batch(loaded, inputs[0])}
    if not hasattr(loaded, "files"):
        raise DataError("{!r} is named .npz but holds a single .npy array.".format(path),
                        "Save one array per input name with numpy.savez.")
    with loaded:
        names = set(loaded.files)
        wanted = set(s.name for s in inputs)
        if names != wanted:
            raise DataError("{!r} holds arrays {}, the model's inputs are {}.".format(
                path, sorted(names), sorted(wanted)),
                "Save one array per input name with numpy.savez.")
        return dict((s.name, _with_batch(loaded[s.name], s)) for s in inputs)


def read_feeds(path, inputs, preprocess=None):
    """Turn one file into the feeds of one batch.

    Args:
        path: an image (needs ``preprocess``), a ``.npy`` (single-input models) or a
            ``.npz`` holding one array per input name.
        inputs: the model's input TensorSpecs.
        preprocess: the bundle's :class:`~edgeinfer.preprocess.Preprocess`, or None.

    Returns:
        dict input name -> array with a leading batch dim.

    Raises:
        DataError: missing or unreadable file, wrong keys.
        UsageError: an image for a bundle without preprocessing.
    """
    if not os.path.isfile(path):
        raise DataError("Input file {!r} does not exist.".format(path),
                        "Give an image, a .npy or a .npz file.")
    lower = path.lower()
    if lower.endswith(".npy") or lower.endswith(".npz"):
        try:
            return _read_tensor_file(path, lower, inputs)
        except _READ_ERRORS as exc:
            reason = str(exc).rstrip(".") or type(exc).__name__
            if "pickle" in reason:
                # numpy's own text suggests loading it unsafely; edgeinfer never unpickles.
                reason = "it is not a numpy array file, or holds pickled (object) data"
            raise DataError("Cannot read tensor file {!r}: {}.".format(path, reason),
                            "Save inputs with numpy.save / numpy.savez (no object arrays).")
    if preprocess is None:
        raise UsageError("Bundle records no image preprocessing, so {!r} cannot be "
                         "fed to it.".format(path), "Give a .npy or .npz tensor instead.")
    if len(inputs) != 1:
        raise UsageError("An image can feed only single-input models; this one has {}.".format(
            len(inputs)), "Give a .npz with one array per input.")
    return {inputs[0].name: preprocess(path)[np.newaxis]}
