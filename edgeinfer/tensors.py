"""Tensor specs: the name, dtype and shape of a model input or output.

A shape is a tuple whose entries are ints (fixed sizes) or strings (symbolic
dims such as ``"batch"``); ``None`` stands for a dim with no name.
"""

from typing import NamedTuple, Tuple, Union

import numpy as np

from .errors import BundleError

Dim = Union[int, str, None]

# ONNX TensorProto element types and the numpy dtype names edgeinfer uses.
ONNX_TO_NUMPY = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
    7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
}

# ONNX Runtime's and OpenVINO's type strings, mapped to numpy dtype names.
ORT_TO_NUMPY = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(uint16)": "uint16", "tensor(int32)": "int32", "tensor(uint32)": "uint32",
    "tensor(int64)": "int64", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


class TensorSpec(NamedTuple):
    """One model input or output.

    Attributes:
        name: the tensor's name in the model.
        dtype: numpy dtype name, e.g. ``"float32"``.
        shape: tuple of ints (fixed) and strings or None (symbolic).
    """

    name: str
    dtype: str
    shape: Tuple[Dim, ...]

    @property
    def rank(self):
        return len(self.shape)

    def to_dict(self):
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data):
        """Build a spec from its manifest form; raise BundleError when malformed."""
        try:
            name, dtype, shape = data["name"], data["dtype"], data["shape"]
            np.dtype(dtype)
            dims = tuple(d if (d is None or isinstance(d, (int, str))) else _bad_dim(d)
                         for d in shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError("Malformed tensor spec in manifest: {!r} ({}).".format(data, exc),
                              "Rebuild the bundle with `edgeinfer convert`.")
        return cls(str(name), str(dtype), dims)

    def describe(self):
        """Short text like ``input: float32[batch, 1, 8, 8]``."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return "{}: {}[{}]".format(self.name, self.dtype, dims)

    def concrete_shape(self, batch=1, fill=1):
        """The shape with symbolic dims replaced: the first by ``batch``, others by ``fill``."""
        out = []
        for i, d in enumerate(self.shape):
            if isinstance(d, int) and d > 0:
                out.append(d)
            else:
                out.append(batch if i == 0 else fill)
        return tuple(out)


def _bad_dim(dim):
    raise ValueError("dim {!r} is neither an int, a string nor null".format(dim))


def specs_from_dicts(items):
    """Parse a list of manifest tensor specs."""
    return [TensorSpec.from_dict(d) for d in items]


def find_spec(specs, name):
    """The spec called ``name`` in ``specs``, or None."""
    for spec in specs:
        if spec.name == name:
            return spec
    return None


def fixed_batch(specs):
    """The fixed first (batch) dim shared by the inputs, or None when it is symbolic.

    A model exported with a fixed batch takes exactly that many samples per run.
    """
    for spec in specs:
        if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0:
            return spec.shape[0]
    return None
