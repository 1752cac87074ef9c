"""Cached values: a model's outputs framed as plain bytes, never pickled.

Layout (little-endian)::

    0   4 bytes  magic b"EIC1"
    4   uint32   CRC-32 of everything after these 12 bytes
    8   uint32   header length H
    12  H bytes  header, JSON (utf-8), space-padded so the payload starts 16-aligned:
                 {"key": the cache key, "expires": unix time or null,
                  "outputs": [[name, dtype.str, shape, offset, nbytes], ...]}
    12+H         payload: each output's C-order bytes at its offset (16-aligned)

Why not ``np.save``: one frame holds every output of a call, the key it was
stored under and its expiry, and one checksum covers all of it, so a truncated,
bit-flipped or misplaced entry (another key's bytes) is refused as a whole.
Decoding reads only numeric dtypes (``np.frombuffer``, no object arrays), so no
entry can run code however it was made.  Why the key inside: a value copied
under another key (a bug, a hand-edited disk cache) must not answer for it.
"""

import json
import struct
import zlib

import numpy as np

MAGIC = b"EIC1"
_PREFIX = struct.Struct("<4sII")
_ALIGN = 16
# A header is a few hundred bytes per output; more is not ours.
MAX_HEADER_BYTES = 1 << 20
_KINDS = frozenset("biufc")


class CorruptEntry(Exception):
    """A stored value that is not a whole, intact frame for the key asked for."""


class Unstorable(Exception):
    """Outputs that cannot be framed (strings, objects): they are not cached."""


def _pad(size):
    return -size % _ALIGN


def freeze(outputs):
    """Read-only C-order copies of ``outputs``: what the memory tier keeps.

    Copying is all a miss must do before it returns (the caller may change the
    arrays it gets); framing waits for the disk and Redis writer.

    Returns:
        (frozen, nbytes): dict name -> read-only array, and their total bytes.

    Raises:
        Unstorable: an output that is not a numeric numpy array.
    """
    frozen, total = {}, 0
    for name, value in outputs.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in _KINDS:
            raise Unstorable("output {!r} is {}".format(
                name, getattr(value, "dtype", type(value).__name__)))
        copy = value.copy()     # C order, whatever the layout of value
        copy.flags.writeable = False
        frozen[name] = copy
        total += copy.nbytes
    return frozen, total


def encode(key, outputs, expires=None):
    """Frame ``outputs`` (dict name -> array) as bytes.

    Args:
        key: the cache key the frame is stored under.
        outputs: dict output name -> numpy array (any layout; read, not kept).
        expires: unix time after which the entry is stale (default None: never).

    Returns:
        bytes

    Raises:
        Unstorable: an output that is not a numeric numpy array.
    """
    arrays, specs = [], []
    for name, value in outputs.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in _KINDS:
            raise Unstorable("output {!r} is {}".format(
                name, getattr(value, "dtype", type(value).__name__)))
        if not value.flags.c_contiguous:
            value = np.ascontiguousarray(value)
        arrays.append(value)
        specs.append((name, value.dtype, value.shape))
    outputs_json, starts = _layout(tuple(specs))
    # The header json.dumps({"key", "expires", "outputs"}) would write, the outputs
    # part made once per layout: framing is the background writer's main cost.
    header = '{{"key":{},"expires":{},"outputs":{}}}'.format(
        json.dumps(key), json.dumps(expires), outputs_json).encode("utf-8")
    header += b" " * _pad(_PREFIX.size + len(header))
    arrays = list(zip(starts, arrays))
    parts, crc, at = [header], zlib.crc32(header), 0
    for start, value in arrays:
        if start > at:
            gap = b"\0" * (start - at)
            parts.append(gap)
            crc = zlib.crc32(gap, crc)
        # The array's own buffer: joined below with one copy, never via tobytes().
        view = value.reshape(-1).view(np.uint8)
        parts.append(view)
        crc = zlib.crc32(view, crc)
        at = start + value.nbytes
    parts.insert(0, _PREFIX.pack(MAGIC, crc & 0xFFFFFFFF, len(header)))
    return b"".join(parts)


# The "outputs" part of the headers made so far, by output names, dtypes and shapes.
_LAYOUTS = {}
_LAYOUTS_KEPT = 256


def _layout(specs):
    """``(JSON list of [name, dtype, shape, offset, nbytes], offsets)`` for output specs."""
    made = _LAYOUTS.get(specs)
    if made is None:
        entries, starts, offset = [], [], 0
        for name, dtype, shape in specs:
            offset += _pad(offset)
            nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
            entries.append([name, dtype.str, list(shape), offset, nbytes])
            starts.append(offset)
            offset += nbytes
        made = json.dumps(entries, separators=(",", ":")), starts
        if len(_LAYOUTS) >= _LAYOUTS_KEPT:
            _LAYOUTS.clear()
        _LAYOUTS[specs] = made
    return made


def decode(key, data):
    """Read a frame back.

    Args:
        key: the key it was looked up under; a frame made for another key is refused.
        data: the bytes (or any bytes-like object) as stored.

    Returns:
        (outputs, expires): dict name -> read-only array viewing ``data``, and the
        expiry (unix time or None).

    Raises:
        CorruptEntry: not a frame, truncated, damaged, or stored for another key.
    """
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise CorruptEntry("{} bytes, shorter than a frame header".format(len(view)))
    magic, crc, size = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise CorruptEntry("not an edgeinfer cache value (magic {!r})".format(bytes(magic)))
    if size > MAX_HEADER_BYTES or _PREFIX.size + size > len(view):
        raise CorruptEntry("header of {} bytes in a {} byte value".format(size, len(view)))
    if zlib.crc32(view[_PREFIX.size:]) & 0xFFFFFFFF != crc:
        raise CorruptEntry("checksum mismatch (truncated or damaged)")
    try:
        header = json.loads(bytes(view[_PREFIX.size:_PREFIX.size + size]).decode("utf-8"))
        stored_key, expires, entries = header["key"], header["expires"], header["outputs"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CorruptEntry("unreadable header ({})".format(exc))
    if stored_key != key:
        raise CorruptEntry("stored for another key")
    if expires is not None and not isinstance(expires, (int, float)):
        raise CorruptEntry("bad expiry {!r}".format(expires))
    base = _PREFIX.size + size
    payload = len(view) - base
    outputs, end = {}, 0
    try:
        for name, dtype, shape, offset, nbytes in entries:
            if not isinstance(name, str) or name in outputs or not isinstance(dtype, str):
                raise CorruptEntry("bad output name or dtype {!r}".format(name))
            dtype = np.dtype(dtype)
            if dtype.kind not in _KINDS:
                raise CorruptEntry("output {!r} has dtype {}".format(name, dtype))
            if not isinstance(shape, list) or any(
                    type(d) is not int or d < 0 for d in shape):
                raise CorruptEntry("output {!r} has shape {!r}".format(name, shape))
            count = 1
            for dim in shape:
                count *= dim
            if (type(offset) is not int or type(nbytes) is not int or offset < end
                    or count * dtype.itemsize != nbytes
                    or offset + nbytes > payload):
                raise CorruptEntry("output {!r} does not fit the value".format(name))
            array = np.frombuffer(data, dtype, count, base + offset).reshape(shape)
            # Hits hand out copies; the stored arrays themselves never change.
            array.flags.writeable = False
            outputs[name] = array
            end = offset + nbytes
    except (ValueError, TypeError) as exc:
        raise CorruptEntry("bad output entry ({})".format(exc))
    if end != payload:
        raise CorruptEntry("{} bytes after the last output".format(payload - end))
    return outputs, expires
