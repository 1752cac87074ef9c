"""Image -> tensor, as a bundle's manifest records it.

A :class:`Preprocess` is a small, immutable recipe.  Applied to one image it runs,
in this order:

1. convert to the color mode (``RGB``, ``BGR`` or ``L``);
2. ``resize``: an int resizes the shorter side to it, keeping the aspect ratio
   (the longer side is truncated, as torchvision's ``Resize(int)`` does);
   ``[h, w]`` resizes to exactly that;
3. ``center_crop`` ``[h, w]``: as torchvision's ``CenterCrop``, an image smaller
   than the crop is padded with black first;
4. in float32: ``(pixel * scale - mean) / std``, per channel (BGR reverses the
   channels before this, so ``mean``/``std`` are given in the model's order);
5. ``layout``: ``NCHW`` gives ``(C, H, W)``, ``NHWC`` gives ``(H, W, C)``;
6. cast to ``dtype`` (``uint8`` is rounded and clipped to 0..255).

The result is one sample, without the batch dim.  This module runs on devices:
Python 3.6 syntax, numpy and Pillow only.
"""

import math
import numbers
import os

import numpy as np
from PIL import Image

from .errors import DataError, UsageError

COLORS = ("RGB", "BGR", "L")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "uint8")

# The manifest keys, in the order to_dict() writes them.
KEYS = ("color", "resize", "interpolation", "center_crop", "scale", "mean", "std",
        "layout", "dtype")

# Pillow >= 9.1 has the Resampling enum; older Pillow (JetPack) has the constants.
_RESAMPLING = getattr(Image, "Resampling", Image)
_RESAMPLE = {
    "nearest": _RESAMPLING.NEAREST,
    "bilinear": _RESAMPLING.BILINEAR,
    "bicubic": _RESAMPLING.BICUBIC,
    "lanczos": _RESAMPLING.LANCZOS,
}
_UNIDENTIFIED = getattr(Image, "UnidentifiedImageError", None)
_BOMB = getattr(Image, "DecompressionBombError", None)

IMAGE_HINT = "give a PNG, JPEG or BMP image, or a .npy/.npz tensor."


class Preprocess(object):
    """How to turn one image into one model input sample.

    Immutable: every value is set and checked in ``__init__``.  Build it from a
    manifest with :meth:`from_dict` and record it with :meth:`to_dict`.

    Args:
        color: ``"RGB"``, ``"BGR"`` or ``"L"`` (grayscale) (default ``"RGB"``).
        resize: None (keep the size), an int (the shorter side, keeping the
            aspect ratio) or ``[height, width]`` (default None).
        interpolation: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or
            ``"lanczos"`` (default ``"bilinear"``).
        center_crop: None or ``[height, width]`` (default None).
        scale: multiplier applied to the 0..255 pixels (default 1/255).
        mean: 1 or C floats subtracted after scaling (default ``[0.0]``).
        std: 1 or C positive floats divided by after the mean (default ``[1.0]``).
        layout: ``"NCHW"`` or ``"NHWC"`` (default ``"NCHW"``).
        dtype: ``"float32"``, ``"float16"`` or ``"uint8"`` (default ``"float32"``).

    Raises:
        UsageError: a value is not one of those allowed.
    """

    __slots__ = KEYS

    def __init__(self, color="RGB", resize=None, interpolation="bilinear", center_crop=None,
                 scale=1.0 / 255.0, mean=(0.0,), std=(1.0,), layout="NCHW", dtype="float32"):
        color = _choice("color", color, COLORS)
        channels = 1 if color == "L" else 3
        values = {
            "color": color,
            "resize": _resize(resize),
            "interpolation": _choice("interpolation", interpolation, INTERPOLATIONS),
            "center_crop": None if center_crop is None else _size("center_crop", center_crop),
            "scale": _positive_float("scale", scale),
            "mean": _floats("mean", mean, channels, positive=False),
            "std": _floats("std", std, channels, positive=True),
            "layout": _choice("layout", layout, LAYOUTS),
            "dtype": _choice("dtype", dtype, DTYPES),
        }
        for key in KEYS:
            object.__setattr__(self, key, values[key])

    def __setattr__(self, name, value):
        raise AttributeError("Preprocess is immutable; build a new one with Preprocess(...)")

    def __delattr__(self, name):
        raise AttributeError("Preprocess is immutable")

    @classmethod
    def from_dict(cls, data):
        """Build a Preprocess from its manifest form.

        Args:
            data: a dict with some of the keys in :data:`KEYS`; missing keys
                take their defaults.

        Raises:
            UsageError: ``data`` is not a dict, has an unknown key, or a bad value.
        """
        if not isinstance(data, dict):
            raise UsageError("Preprocessing must be a mapping of settings, got {!r}.".format(data),
                             "Valid keys: {}.".format(", ".join(KEYS)))
        unknown = [key for key in data if key not in KEYS]
        if unknown:
            raise UsageError(
                "Unknown preprocessing key{} {}.".format(
                    "s" if len(unknown) > 1 else "", ", ".join(repr(k) for k in unknown)),
                "Valid keys: {}.".format(", ".join(KEYS)))
        return cls(**data)

    def to_dict(self):
        """The manifest form: a JSON-serialisable dict with every key."""
        return {
            "color": self.color,
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "interpolation": self.interpolation,
            "center_crop": None if self.center_crop is None else list(self.center_crop),
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "dtype": self.dtype,
        }

    def __eq__(self, other):
        if not isinstance(other, Preprocess):
            return NotImplemented
        return all(getattr(self, key) == getattr(other, key) for key in KEYS)

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self):
        return hash(tuple(getattr(self, key) for key in KEYS))

    def __reduce__(self):
        # Slots plus a blocked __setattr__ defeat the default copy/pickle protocol.
        return (_from_dict, (self.to_dict(),))

    def __repr__(self):
        return "Preprocess({})".format(", ".join(
            "{}={!r}".format(key, value) for key, value in self.to_dict().items()))

    @property
    def channels(self):
        """Number of channels a sample has: 1 for ``L``, else 3."""
        return 1 if self.color == "L" else 3

    def expected_shape(self):
        """The per-sample shape, e.g. ``(3, 224, 224)``, or None when it depends on the image.

        It is known when there is a ``center_crop`` or a ``[h, w]`` resize.
        """
        if self.center_crop is not None:
            height, width = self.center_crop
        elif isinstance(self.resize, tuple):
            height, width = self.resize
        else:
            return None
        if self.layout == "NCHW":
            return (self.channels, height, width)
        return (height, width, self.channels)

    def load(self, path):
        """Open an image file, read it fully and convert it to the color mode.

        Args:
            path: the image file (str or path-like).

        Returns:
            A PIL image in mode ``RGB`` (for RGB and BGR) or ``L``.

        Raises:
            DataError: the file is missing, unreadable or not an image, naming it.
        """
        name = os.fspath(path)
        try:
            with Image.open(name) as image:
                image.load()
                return _convert(image, self.color)
        except Exception as exc:  # Pillow raises many types; sorted out below
            reason = _image_error_reason(exc)
            if reason is None:
                raise
            raise DataError("Cannot read image '{}': {}.".format(name, reason), IMAGE_HINT) from exc

    def apply(self, image):
        """Turn one PIL image into one sample (no batch dim).

        Args:
            image: a PIL image in any mode; it is converted to the color mode.

        Returns:
            A numpy array of ``dtype``, shaped ``(C, H, W)`` for NCHW or
            ``(H, W, C)`` for NHWC.

        Raises:
            UsageError: ``image`` is not a PIL image.
        """
        if not isinstance(image, Image.Image):
            raise UsageError("Preprocess.apply() takes a PIL image, got {}.".format(
                type(image).__name__), "Open files with Preprocess.load(path), or call it: pre(path).")
        image = _convert(image, self.color)
        old_width, old_height = image.size
        height, width = self._resized_size(old_height, old_width)
        if (height, width) != (old_height, old_width):
            image = image.resize((width, height), _RESAMPLE[self.interpolation])
        pixels = np.asarray(image)
        if pixels.ndim == 2:
            pixels = pixels[:, :, np.newaxis]
        if self.center_crop is not None:
            pixels = _center_crop(pixels, self.center_crop[0], self.center_crop[1])
        if self.color == "BGR":
            pixels = pixels[:, :, ::-1]
        x = pixels.astype(np.float32)
        x *= np.float32(self.scale)
        x -= np.asarray(self.mean, dtype=np.float32)
        x /= np.asarray(self.std, dtype=np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        if self.dtype == "uint8":
            x = np.clip(np.rint(x), 0, 255)
        return np.ascontiguousarray(x.astype(self.dtype, copy=False))

    def __call__(self, path):
        """Load an image file and apply the recipe: ``apply(load(path))``."""
        return self.apply(self.load(path))

    def _resized_size(self, height, width):
        if self.resize is None:
            return height, width
        if isinstance(self.resize, tuple):
            return self.resize
        short = self.resize
        # torchvision's Resize(int): the longer side is truncated, not rounded.
        if width <= height:
            return int(short * height / width), short
        return short, int(short * width / height)


def infer_from_input(spec):
    """A default Preprocess for an image input, or None when ``spec`` is not one.

    An image input is ``[N, C, H, W]`` or ``[N, H, W, C]`` with C of 1 or 3,
    fixed H and W, and a float32, float16 or uint8 dtype.  The recipe resizes to
    ``[H, W]``, reads grayscale for C == 1 and RGB for C == 3, and scales pixels
    to 0..1 (a uint8 input gets the raw 0..255 pixels: scale 1), mean 0, std 1.
    NCHW is preferred when both places could hold the channels.

    Args:
        spec: a :class:`~edgeinfer.tensors.TensorSpec`.
    """
    shape = tuple(spec.shape)
    if len(shape) != 4 or spec.dtype not in DTYPES:
        return None
    if _fixed(shape[1]) and shape[1] in (1, 3):
        layout, channels, height, width = "NCHW", shape[1], shape[2], shape[3]
    elif _fixed(shape[3]) and shape[3] in (1, 3):
        layout, channels, height, width = "NHWC", shape[3], shape[1], shape[2]
    else:
        return None
    if not (_fixed(height) and _fixed(width)):
        return None
    return Preprocess(color="L" if channels == 1 else "RGB", resize=[height, width],
                      scale=1.0 if spec.dtype == "uint8" else 1.0 / 255.0,
                      mean=[0.0], std=[1.0], layout=layout, dtype=spec.dtype)


def _from_dict(data):
    return Preprocess.from_dict(data)


def _fixed(dim):
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def _convert(image, color):
    mode = "L" if color == "L" else "RGB"
    if image.mode == mode:
        return image.copy()
    if image.mode == "P" and "transparency" in image.info:
        # Pillow warns when a palette with transparency goes straight to RGB.
        image = image.convert("RGBA")
    return image.convert(mode)


def _image_error_reason(exc):
    """One short phrase for why Pillow could not read a file, or None for a bug."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a folder, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if _UNIDENTIFIED is not None and isinstance(exc, _UNIDENTIFIED):
        return "cannot identify image file"
    if _BOMB is not None and isinstance(exc, _BOMB):
        return "too many pixels ({})".format(str(exc).rstrip("."))
    if isinstance(exc, (OSError, ValueError, SyntaxError, EOFError, IndexError)):
        text = str(exc).rstrip(".") or type(exc).__name__
        return text
    return None


def _center_crop(pixels, crop_height, crop_width):
    """torchvision's CenterCrop on an (H, W, C) array: pad with zeros when too small."""
    height, width = pixels.shape[:2]
    if crop_height > height or crop_width > width:
        pad_h = max(crop_height - height, 0)
        pad_w = max(crop_width - width, 0)
        pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2),
                                 (pad_w // 2, (pad_w + 1) // 2), (0, 0)), mode="constant")
        height, width = pixels.shape[:2]
    top = int(round((height - crop_height) / 2.0))
    left = int(round((width - crop_width) / 2.0))
    return pixels[top:top + crop_height, left:left + crop_width]


def _bad(key, value, expected):
    return UsageError("Preprocessing {!r} is {!r}.".format(key, value),
                      "Expected {}.".format(expected))


def _choice(key, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise _bad(key, value, "one of {}".format(", ".join(repr(a) for a in allowed)))
    return value


def _positive_int(value):
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) > 0)


def _size(key, value):
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(_positive_int(v) for v in value)):
        raise _bad(key, value, "null or [height, width] with positive ints")
    return (int(value[0]), int(value[1]))


def _resize(value):
    if value is None:
        return None
    if _positive_int(value):
        return int(value)
    if isinstance(value, (list, tuple)):
        try:
            return _size("resize", value)
        except UsageError:
            pass
    raise _bad("resize", value, "null, a positive int (the shorter side) or [height, width]")


def _real(value):
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _positive_float(key, value):
    if not _real(value) or float(value) <= 0:
        raise _bad(key, value, "a positive number")
    return float(value)


def _floats(key, value, channels, positive):
    wanted = "1" if channels == 1 else "1 or {}".format(channels)
    expected = "a list of {} {}number(s) for {} channel(s)".format(
        wanted, "positive " if positive else "", channels)
    if (not isinstance(value, (list, tuple)) or len(value) not in (1, channels)
            or not all(_real(v) and (float(v) > 0 or not positive) for v in value)):
        raise _bad(key, value, expected)
    return tuple(float(v) for v in value)
