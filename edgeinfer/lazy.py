"""Import heavy or optional modules only when they are needed.

The device side must import with numpy, click, diskcache and pillow alone, so
every framework (onnx, onnxruntime, openvino, tensorrt, torch, nncf) comes in
through :func:`require`, inside the function that needs it.
"""

import importlib

from .errors import MissingDependency

# The extra that brings each optional module, for the error message.
EXTRAS = {
    "onnx": "convert",
    "onnxruntime": "ort",
    "onnxconverter_common": "convert",
    "openvino": "openvino",
    "nncf": "convert",
    "tensorrt": "tensorrt",
    # the CUDA bindings TensorRT's runner moves data with (one of them is enough)
    "cuda": "tensorrt",
    "pycuda": "tensorrt",
    "torch": "qat",
    "redis": "redis",
    "xxhash": "cache",
    "matplotlib": "report",
    "psutil": "bench",
    # the HTTP server (edgeinfer serve)
    "starlette": "serve",
    "uvicorn": "serve",
}


def require(module, purpose=None):
    """Import ``module`` or raise :class:`MissingDependency` naming the extra.

    Args:
        module: dotted module name, e.g. ``"onnxruntime.quantization"``.
        purpose: what it is needed for, e.g. ``"INT8 conversion"`` (default None).

    Raises:
        MissingDependency: the module (or what it needs) is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        what = " for {}".format(purpose) if purpose else ""
        hint = "install it with `pip install edgeinfer[{}]`".format(extra) if extra else (
            "install the package `{}`".format(top))
        raise MissingDependency(
            "{} is not installed or cannot be imported{} ({}).".format(top, what, exc), hint)


def available(module):
    """Return True when ``module`` can be imported, without raising."""
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
