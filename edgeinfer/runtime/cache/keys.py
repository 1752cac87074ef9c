"""Cache keys: which model, which outputs, which inputs, down to the last byte.

A key is a short string::

    v1:<model hash, 32 hex>:<hash name>:<digest, 32 hex>

The digest is a 128-bit hash of a header (the model hash, the requested output
names, and each input's name, dtype and shape, inputs sorted by name) followed by
each input's bytes in C order.  Everything that changes the answer is in it:
another bundle (even under the same file name), another output selection,
another dtype or shape with the same bytes, one changed input byte.

Collision stance.  The default hash is xxHash's XXH3-128 (about 45 GB/s here,
50x faster than hashlib's blake2b on a 1x3x224x224 float32 input; measured by
``scripts/bench_cache.py``).  For inputs that arrive by chance (cameras,
sensors, users) the chance that two of n distinct inputs share a digest is
about n^2 / 2^129: one in 10^15 after a trillion inputs, far below the rate of
undetected memory errors on the device.  XXH3 is not cryptographic: someone who
chooses inputs on purpose could build two that collide and so plant one input's
result for another.  Where requests come from untrusted parties and share a
tier (Redis behind a public server), use ``key_hash="blake2b"`` (hashlib's
BLAKE2b cut to 128 bits, collision-resistant to about 2^64 work).  The hash name
is part of the key, so caches written with different hashes never mix.

Bytes are compared as bytes: ``-0.0`` and ``0.0`` are two keys, and NaN inputs
are cached like any other bytes (two NaNs with the same bit pattern hit; NaNs
with different payloads miss).  A miss is never a wrong answer.
"""

import hashlib
import json
import time

import numpy as np

from ...errors import InputError, MissingDependency, UsageError
from ...lazy import require

KEY_VERSION = "v1"

# Names accepted for ``key_hash``; "auto" picks xxh3 when xxhash is installed.
HASHES = ("auto", "xxh3", "blake2b")

# numpy kinds whose bytes are the value: bool, ints, floats, complex.  Object
# arrays hold pointers, and strings may hide padding: neither is a key.
_KINDS = frozenset("biufc")


def _blake2b(data=b""):
    return hashlib.blake2b(data, digest_size=16)


def hasher_factory(name="auto"):
    """Return ``(name, factory)`` for a 128-bit hash; ``factory()`` gives a hash object.

    Args:
        name: "auto" (default: xxh3 when the ``xxhash`` package is installed, else
            blake2b), "xxh3" or "blake2b".

    Raises:
        UsageError: an unknown name.
        MissingDependency: "xxh3" asked for and ``xxhash`` not installed.
    """
    if name not in HASHES:
        raise UsageError("Unknown cache key hash {!r}.".format(name),
                         "Use one of: {}.".format(", ".join(HASHES)))
    if name == "blake2b":
        return "blake2b", _blake2b
    try:
        xxhash = require("xxhash", "fast cache keys")
    except MissingDependency:
        if name == "xxh3":
            raise
        # Device installs without the [cache] extra still get correct keys, only
        # slower ones (blake2b: ~0.8 GB/s instead of ~45 GB/s).
        return "blake2b", _blake2b
    return "xxh3", xxhash.xxh3_128


def model_hash(manifest):
    """The content hash of a bundle: sha256 of its manifest, as 32 hex digits.

    The manifest lists the sha256 of every file in the bundle, its precision,
    target and input/output specs, so this changes whenever the model does:
    a bundle rebuilt under the same file name gets a new hash.

    Args:
        manifest: the bundle's manifest (dict).
    """
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# Headers remembered by one cache: a few per model (one per input shape seen).
HEADERS_KEPT = 256


def make_key(factory, hash_name, model, feeds, outputs, headers=None, record=None):
    """The key for ``feeds`` run through ``model`` asking for ``outputs``.

    Args:
        factory: a hash-object factory from :func:`hasher_factory`.
        hash_name: its name, written into the key.
        model: the model's content hash (:func:`model_hash`).
        feeds: dict input name -> numpy array.
        outputs: the output names asked for, in order.
        headers: a dict in which to remember each header (and key prefix) made,
            by model, outputs and input names, dtypes and shapes (default None:
            make it every time).  On a miss the key is the cache's main cost,
            and the JSON header is half of it on a 600 KB input: the model run
            before it has pushed the encoder out of the CPU caches.
        record: called with the seconds the key took (default None: not timed).

    Returns:
        str key.

    Raises:
        InputError: an input that is not a numeric numpy array.
    """
    start = time.perf_counter()
    arrays, specs = [], []
    for name in sorted(feeds) if len(feeds) > 1 else feeds:
        value = feeds[name]
        if type(value) is not np.ndarray or value.dtype.kind not in _KINDS:
            raise InputError("Input tensor: {} | Cannot be a cache key: {}.".format(
                name, getattr(value, "dtype", type(value).__name__)),
                "Cache keys are built from numeric numpy arrays (bool, int, float).")
        if not value.flags.c_contiguous:
            value = np.ascontiguousarray(value)
        arrays.append(value)
        specs.append((name, value.dtype, value.shape))
    signature = (model, tuple(outputs), tuple(specs))
    made = headers.get(signature) if headers is not None else None
    if made is None:
        header = [KEY_VERSION, model, list(outputs)]
        header.extend([name, dtype.str, list(shape)] for name, dtype, shape in specs)
        made = (json.dumps(header, separators=(",", ":")).encode("utf-8"),
                "{}:{}:{}:".format(KEY_VERSION, model, hash_name))
        if headers is not None:
            if len(headers) >= HEADERS_KEPT:
                headers.clear()
            headers[signature] = made
    digest = factory(made[0])
    for value in arrays:
        # The array itself is a buffer: hashing it reads its memory, no copy.
        digest.update(value.reshape(-1).view(np.uint8) if value.ndim == 0 else value)
    key = made[1] + digest.hexdigest()
    if record is not None:
        record(time.perf_counter() - start)
    return key


def key_model(key):
    """The model hash inside a key (None when the key is not one of ours)."""
    parts = key.split(":")
    return parts[1] if len(parts) == 4 and parts[0] == KEY_VERSION else None
