"""Infer request bodies for a load test, built before the clock starts.

The inputs come from a folder (images with a preprocessing recipe, or .npy/.npz
samples, read by :mod:`edgeinfer.datasets`) or are generated from the model's
v2 metadata (``GET /v2/models/{m}``).  A small pool of distinct samples is
encoded once, as JSON or as Triton's binary tensors (see
:mod:`edgeinfer.serve.protocol`), so the generator spends its CPU on sending,
not on encoding.

Three ways to vary them (``--inputs``):

* ``unique`` (default): no two requests carry the same bytes, so a result cache
  on the server never answers (it would make the server look faster than it
  is).  Each request takes the next pool sample and writes a random run
  number and its own sequence number into the first elements of the first
  input (:func:`stamp_values`):
  a float element becomes ``1 + digit / 2**mantissa_bits``, an integer one 0
  or 1 (uint8: 0..255), so the values stay plain numbers any model accepts.
* ``cycle``: the pool's samples in turn, unchanged (a cache may answer repeats).
* ``repeat``: one sample for every request (measures the cache-hit path).
"""

import json
import math
import os
import struct

import numpy as np

from ..errors import EdgeInferError, UsageError
from ..serve.protocol import DATATYPES, datatype_of
from ..tensors import TensorSpec

MODES = ("unique", "cycle", "repeat")

# What each request carries: a random run number (NONCE_BITS) above its sequence number
# (the rest), so two runs differ too and a cache filled by the last run never answers.
STAMP_BITS = 64
NONCE_BITS = 24

# Per dtype: (values per stamped element, struct code for the binary form).
_FLOAT_SPAN = {"float16": 2 ** 10, "float32": 2 ** 23, "float64": 2 ** 52}
_STRUCT = {"float16": "e", "float32": "f", "float64": "d", "int8": "b", "uint8": "B",
           "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
           "uint64": "Q", "bool": "?"}


def input_specs(metadata, model):
    """The model's inputs as TensorSpecs, from its v2 metadata (``-1`` dims are symbolic).

    Raises:
        EdgeInferError: the metadata lists no inputs, or an input whose datatype
            cannot be generated (BYTES, BF16).
    """
    items = metadata.get("inputs") if isinstance(metadata, dict) else None
    if not items:
        raise EdgeInferError("The metadata of model {!r} lists no inputs.".format(model),
                             "Is the URL an edgeinfer, Triton or KServe v2 server?")
    specs = []
    for item in items:
        dtype = DATATYPES.get(item.get("datatype"))
        if dtype is None:
            raise EdgeInferError("Input {!r} of model {!r} has datatype {}, which the load test "
                                 "cannot send.".format(item.get("name"), model,
                                                       item.get("datatype")),
                                 "Supported: {}.".format(", ".join(sorted(DATATYPES))))
        shape = tuple(d if isinstance(d, int) and d > 0 else ("batch" if i == 0 else None)
                      for i, d in enumerate(item.get("shape") or ()))
        specs.append(TensorSpec(str(item["name"]), dtype, shape))
    return specs


def _random_sample(spec, batch, rng):
    dims = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            dims.append(dim)
        elif axis == 0:
            dims.append(batch)
        else:
            raise UsageError("Input {} has a symbolic dim {} ({}): the load test cannot "
                             "invent its size.".format(spec.name, axis, spec.describe()),
                             "Give --data with samples of the size to send.")
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(dims).astype(dtype)
    if dtype == np.uint8:
        return rng.randint(0, 256, size=dims).astype(dtype)
    if dtype.kind == "b":
        return rng.randint(0, 2, size=dims).astype(bool)
    return rng.randint(0, 2, size=dims).astype(dtype)


def sample_pool(specs, count, batch=1, data=None, preprocess=None, seed=0):
    """Up to ``count`` distinct feeds (dict name -> array, ``batch`` rows where the batch dim is
    free); fewer when ``data`` has fewer samples.

    Args:
        specs: the model's inputs (:func:`input_specs`).
        count: samples in the pool.
        batch: rows per request for inputs with a symbolic first dim (default 1).
        data: a folder or .npy/.npz file (default None: random values, seeded).
        preprocess: a :class:`~edgeinfer.preprocess.Preprocess` for image folders.
        seed: the random generator's seed (default 0).

    Raises:
        DataError: the data cannot be read or does not fit the inputs.
        UsageError: a symbolic dim other than the batch dim without ``data``.
    """
    fixed = [s for s in specs if s.shape and isinstance(s.shape[0], int)]
    if batch != 1 and fixed:
        raise UsageError("--batch {} does not fit input {}: its first dim is fixed ({}).".format(
            batch, fixed[0].name, fixed[0].describe()), "Leave out --batch for this model.")
    if data is None:
        rng = np.random.RandomState(seed)
        return [dict((s.name, _random_sample(s, batch, rng)) for s in specs)
                for _ in range(count)]
    from ..datasets import open_dataset
    dataset = open_dataset(data, specs, preprocess)
    size = len(dataset)
    pool = []
    # No more pool entries than the data has distinct batches: repeats would only look varied.
    for index in range(min(count, int(math.ceil(size / float(batch))))):
        rows = [dataset.sample((index * batch + r) % size) for r in range(batch)]
        feeds = {}
        for spec in specs:
            if isinstance(spec.shape[0], int) and spec.shape[0] > 0:
                # A fixed first dim is part of the sample, not a batch to stack.
                feeds[spec.name] = rows[0][spec.name]
            else:
                feeds[spec.name] = np.stack([row[spec.name] for row in rows])
        pool.append(feeds)
    return pool


def stamp_values(dtype, number, slots):
    """``number`` as ``slots`` plain values of ``dtype``, distinct for distinct numbers.

    Returns:
        ``(values, distinct)``: the Python values, and how many numbers get
        distinct values (``span ** slots``).
    """
    dtype = np.dtype(dtype)
    span = _FLOAT_SPAN.get(dtype.name, 256 if dtype == np.uint8 else 2)
    digits = []
    for _ in range(slots):
        number, digit = divmod(number, span)
        digits.append(digit)
    if dtype.kind == "f":
        values = [1.0 + d / float(span) for d in digits]
    elif dtype.kind == "b":
        values = [bool(d) for d in digits]
    else:
        values = digits
    return values, span ** slots


def stamp_slots(dtype, size):
    """Elements of the first input that carry the sequence number (at most its ``size``)."""
    dtype = np.dtype(dtype)
    span = _FLOAT_SPAN.get(dtype.name, 256 if dtype == np.uint8 else 2)
    return max(1, min(size, int(math.ceil(STAMP_BITS / math.log(span, 2)))))


class Bodies(object):
    """Request bodies: :meth:`body` gives the bytes of request number ``k``.

    Args:
        pool: feeds from :func:`sample_pool` (at least one).
        binary: Triton's binary tensors instead of JSON (default False).
        mode: ``"unique"``, ``"cycle"`` or ``"repeat"`` (see the module docs).
        nonce: ``unique``: the run number stamped beside each request's (default
            None: random, so no two runs send the same bodies).

    Attributes:
        headers: the HTTP headers every request carries.
        distinct: how many requests differ from each other (None: every one,
            up to 2**40 per run); 1 for ``repeat``, the pool size for ``cycle``.
        size: the bytes of one body.
    """

    def __init__(self, pool, binary=False, mode="unique", nonce=None):
        if mode not in MODES:
            raise UsageError("--inputs must be one of {}, not {!r}.".format(", ".join(MODES), mode))
        self.binary = binary
        self.mode = mode
        if nonce is None:
            nonce = int.from_bytes(os.urandom(NONCE_BITS // 8), "big")
        self._nonce = nonce << (STAMP_BITS - NONCE_BITS)
        if mode == "repeat":
            pool = pool[:1]
        self._first = next(iter(pool[0]))
        first = pool[0][self._first]
        self._dtype = first.dtype
        self._slots = stamp_slots(first.dtype, first.size) if mode == "unique" else 0
        self._parts = [self._encode(feeds) for feeds in pool]
        self._whole = [prefix + middle + suffix for prefix, middle, suffix, _ in self._parts]
        self._stamp = struct.Struct("<{}{}".format(self._slots, _STRUCT[first.dtype.name])) \
            if self._slots else None
        self.headers = {"Content-Type": "application/octet-stream" if binary
                        else "application/json"}
        if binary:
            self.headers["Inference-Header-Content-Length"] = str(self._parts[0][3])
        self.size = len(self._whole[0])
        if mode == "unique":
            _, limit = stamp_values(first.dtype, 0, self._slots)
            self.distinct = None if limit >= 2 ** STAMP_BITS else limit * len(pool)
        else:
            self.distinct = len(pool)

    def _encode(self, feeds):
        """``(prefix, stamped part, suffix, JSON header length)`` of one sample's body."""
        if self.binary:
            described, blobs = [], []
            for name, value in feeds.items():
                blob = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"),
                                                          copy=False).tobytes()
                described.append({"name": name, "shape": list(value.shape),
                                  "datatype": datatype_of(value.dtype),
                                  "parameters": {"binary_data_size": len(blob)}})
                blobs.append(blob)
            header = json.dumps({"inputs": described, "parameters": {"binary_data_output": True}},
                                separators=(",", ":")).encode()
            cut = self._slots * feeds[self._first].dtype.itemsize
            return header, blobs[0][:cut], blobs[0][cut:] + b"".join(blobs[1:]), len(header)
        texts = []
        for name, value in feeds.items():
            head = json.dumps({"name": name, "shape": list(value.shape),
                               "datatype": datatype_of(value.dtype)}, separators=(",", ":"))
            texts.append((head[:-1] + ',"data":[', value.ravel().tolist()))
        head, values = texts[0]
        stamped = _json_values(values[:self._slots])
        rest = _json_values(values[self._slots:])
        prefix = '{"inputs":[' + head
        suffix = ("," if stamped and rest else "") + rest + "]}" + "".join(
            "," + h + _json_values(v) + "]}" for h, v in texts[1:]) + "]}"
        return prefix.encode(), stamped.encode(), suffix.encode(), None

    def body(self, k):
        """The bytes of request number ``k`` (0, 1, 2, ...)."""
        index = k % len(self._whole)
        if not self._slots:
            return self._whole[index]
        prefix, _, suffix, _ = self._parts[index]
        values, _ = stamp_values(self._dtype, self._nonce | k, self._slots)
        if self.binary:
            return prefix + self._stamp.pack(*values) + suffix
        return prefix + _json_values(values).encode() + suffix


def _json_values(values):
    return json.dumps(values, separators=(",", ":"))[1:-1]
