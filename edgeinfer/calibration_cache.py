"""TensorRT's INT8 calibration cache: the text file an implicit-quantization build reads.

TensorRT 8.x builds INT8 engines in two ways.  *Explicit* quantization reads
QuantizeLinear/DequantizeLinear nodes in the ONNX model (what edgeinfer's
TensorRT bundles carry as ``model.onnx``).  *Implicit* quantization parses the
FP32 graph and takes one scale per activation tensor from a calibrator, which
reads them from this cache instead of calibrating when the cache is valid::

    TRT-8502-MinMaxCalibration
    input: 3c010a14
    /features/features.2/Relu_output_0: 3c90f5c3

* The header is ``TRT-<version>-<algorithm>``.  ``<version>`` is TensorRT's
  ``NV_TENSORRT_VERSION`` integer: ``major * 1000 + minor * 100 + patch`` up to
  TensorRT 8 (``NvInferRuntimeCommon.h``: 8.2.1 -> ``8201``, 8.6.1 -> ``8601``) and
  ``major * 10000 + minor * 100 + patch`` from TensorRT 10 (``NvInferRuntimeBase.h``:
  10.3.0 -> ``100300``).  ``<algorithm>`` names the calibrator class that reads it:
  ``EntropyCalibration2`` (``IInt8EntropyCalibrator2``), ``MinMaxCalibration``
  (``IInt8MinMaxCalibrator``), and the legacy ``EntropyCalibration`` and
  ``LegacyCalibration``.  TensorRT ignores a cache whose header names another
  version or calibrator, so the header must match the device's TensorRT; the
  scales do not depend on it, and :func:`format_cache` re-heads a parsed cache.
* Each further line is ``<tensor name>: <scale>``, the scale being the 8 hex
  digits of the float32's big-endian bit pattern; the tensor's dynamic range is
  ``scale * 127`` (a [0, 1] image input has ``1/127`` = ``3c010204``).  Names are
  ONNX tensor names (they may hold ``::``, so a line splits at its last ``": "``).

Device side: standard library only, Python 3.6 syntax, so a Jetson can read a
bundle's cache and re-head it for the TensorRT it has.
"""

import math
import os
import re
import struct
from typing import Dict, NamedTuple

from .errors import DataError

# The calibrators TensorRT names in a cache header (class -> header word).
ALGORITHMS = ("EntropyCalibration2", "MinMaxCalibration", "EntropyCalibration",
              "LegacyCalibration")

_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{8}$")
# Activations are INT8 in [-127, 127] with symmetric scales (zero point 0).
INT8_MAX = 127.0


class CalibrationCache(NamedTuple):
    """A parsed cache.

    Attributes:
        version: the header's TensorRT version integer, e.g. ``8502``.
        algorithm: the header's calibrator word, e.g. ``"MinMaxCalibration"``.
        scales: dict tensor name -> float32 scale, in file order.
    """

    version: int
    algorithm: str
    scales: Dict[str, float]

    @property
    def header(self):
        """The cache's first line, e.g. ``TRT-8502-MinMaxCalibration``."""
        return "TRT-{}-{}".format(self.version, self.algorithm)


def version_code(version):
    """TensorRT's version integer for a version string, as its headers compute it.

    Args:
        version: ``"8.2.1"``, ``"8.5"`` (patch 0), ``"10.3.0.26"`` (the build is
            ignored), or already an int code such as ``8502``.

    Returns:
        int, e.g. 8201 for ``"8.2.1"``, 100300 for ``"10.3.0"``.

    Raises:
        DataError: not a TensorRT version this encoding can hold.
    """
    if isinstance(version, int) and not isinstance(version, bool):
        if version < 1000:
            raise DataError("TensorRT version code {} is too small.".format(version),
                            "Give the version as text, e.g. '8.2.1', or its code, e.g. 8201.")
        return version
    parts = str(version).strip().split(".")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) < 2 or any(n < 0 for n in numbers):
        raise DataError("{!r} is not a TensorRT version.".format(version),
                        "Expected major.minor[.patch], e.g. '8.2.1' or '10.3.0'.")
    major, minor = numbers[0], numbers[1]
    patch = numbers[2] if len(numbers) > 2 else 0
    # Up to TensorRT 9 the minor version has one decimal digit in the code, after it two.
    minor_limit = 10 if major < 10 else 100
    if major < 1 or minor >= minor_limit or patch >= 100:
        raise DataError("TensorRT version {!r} does not fit TensorRT's version code.".format(
            version), "Expected e.g. '8.2.1' or '10.3.0'.")
    return major * (1000 if major < 10 else 10000) + minor * 100 + patch


def header(version, algorithm):
    """The header line for a TensorRT version and calibrator, e.g. ``TRT-8201-EntropyCalibration2``.

    Raises:
        DataError: unknown version form or calibrator name.
    """
    if algorithm not in ALGORITHMS:
        raise DataError("Unknown TensorRT calibrator {!r}.".format(algorithm),
                        "Use one of: {}.".format(", ".join(ALGORITHMS)))
    return "TRT-{}-{}".format(version_code(version), algorithm)


def scale_hex(scale):
    """The 8 hex digits TensorRT writes for a float32 scale (big-endian bits)."""
    return struct.pack(">f", scale).hex()


def scale_for_range(low, high):
    """The symmetric INT8 scale of a calibrated range: ``max(|low|, |high|) / 127``.

    A range of zeros (a tensor that was always 0) gets the smallest scale that
    still quantizes 0 exactly, so the cache never holds a zero scale.
    """
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise DataError("A calibrated range is not finite ({}, {}).".format(low, high),
                        "Check the calibration data for NaN or infinite inputs.")
    return max(max(abs(low), abs(high)) / INT8_MAX, 1e-8)


def format_cache(scales, version, algorithm):
    """The cache's text for ``scales`` (dict tensor name -> scale), header first.

    Raises:
        DataError: a name with a line break, a scale not positive and finite, or a
            bad version or calibrator.
    """
    lines = [header(version, algorithm)]
    for name, scale in scales.items():
        if not name or "\n" in name or "\r" in name:
            raise DataError("Tensor name {!r} cannot be written to a calibration cache.".format(
                name), "Names must be non-empty single lines.")
        value = float(scale)
        if not (math.isfinite(value) and value > 0):
            raise DataError("Tensor {!r} has scale {!r}; TensorRT needs a positive finite "
                            "scale.".format(name, scale), "Check its calibrated range.")
        lines.append("{}: {}".format(name, scale_hex(value)))
    return "\n".join(lines) + "\n"


def write_cache(path, scales, version, algorithm):
    """Write the cache atomically (a temporary name, then renamed).

    Args:
        path: the file to write.
        scales: dict tensor name -> float scale (the order is kept).
        version: the TensorRT version that will read it, e.g. ``"8.2.1"``.
        algorithm: one of :data:`ALGORITHMS`.

    Returns:
        ``path``.

    Raises:
        DataError: as :func:`format_cache`.
    """
    text = format_cache(scales, version, algorithm)
    partial = "{}.partial-{}".format(path, os.getpid())
    try:
        with open(partial, "w") as handle:
            handle.write(text)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def parse_cache(text, where="calibration cache"):
    """Parse a cache's text.

    Args:
        text: the file's content (str or bytes).
        where: what to call it in errors (default ``"calibration cache"``).

    Returns:
        :class:`CalibrationCache`.

    Raises:
        DataError: no valid header, a line that is not ``name: 8 hex digits``, a
            tensor listed twice, or a scale that is not positive and finite.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError("{} is not text.".format(where),
                            "A TensorRT calibration cache is a text file.")
    lines = text.splitlines()
    match = _HEADER.match(lines[0].strip()) if lines else None
    if match is None or match.group(2) not in ALGORITHMS:
        raise DataError("{} has no TensorRT header: {!r}.".format(
            where, lines[0][:60] if lines else ""),
            "Expected e.g. 'TRT-8502-MinMaxCalibration' on the first line.")
    scales = {}
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        name, sep, value = line.rstrip().rpartition(": ")
        if not sep or not name or not _HEX.match(value):
            raise DataError("{} line {} is not 'tensor: <8 hex digits>': {!r}.".format(
                where, number, line[:80]), "The file is damaged; write it again.")
        if name in scales:
            raise DataError("{} lists tensor {!r} twice (line {}).".format(where, name, number),
                            "The file is damaged; write it again.")
        scale = struct.unpack(">f", bytes.fromhex(value))[0]
        if not (math.isfinite(scale) and scale > 0):
            raise DataError("{} line {} has scale {!r} for {!r}; TensorRT needs a positive "
                            "finite scale.".format(where, number, scale, name),
                            "The file is damaged; write it again.")
        scales[name] = scale
    return CalibrationCache(int(match.group(1)), match.group(2), scales)


def read_cache(path):
    """Read and parse a cache file; see :func:`parse_cache`.

    Raises:
        DataError: the file cannot be read or is malformed.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise DataError("Cannot read calibration cache {}: {}.".format(path, exc.strerror),
                        "Check the path.")
    return parse_cache(data, where="Calibration cache {}".format(path))


def version_text(code):
    """The version string of a TensorRT version integer, e.g. ``8201`` -> ``"8.2.1"``.

    The inverse of :func:`version_code`: codes of TensorRT 10 and later have six
    digits (``100300`` -> ``"10.3.0"``).  TensorRT's C function
    ``getInferLibVersion()`` returns such a code.

    Raises:
        DataError: not a code TensorRT writes.
    """
    if isinstance(code, bool) or not isinstance(code, int) or code < 1000:
        raise DataError("{!r} is not a TensorRT version code.".format(code),
                        "Expected e.g. 8201 (8.2.1) or 100300 (10.3.0).")
    if code >= 100000:
        return "{}.{}.{}".format(code // 10000, code // 100 % 100, code % 100)
    return "{}.{}.{}".format(code // 1000, code // 100 % 10, code % 100)
