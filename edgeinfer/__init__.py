"""edgeinfer: take a trained model from a workstation to an edge device and make it fast there.

Public API::

    bundle = edgeinfer.convert("model.onnx", target="cpu", precision="int8",
                               calibration="calibration/x")
    session = edgeinfer.load("model.eib")
    outputs = session.run({"input": x})

    cache = edgeinfer.Cache(memory_mb=64, disk_dir="/var/cache/edgeinfer")
    session = edgeinfer.load("model.eib", cache=cache)   # repeats answered from the cache
"""

__version__ = "0.1.0"

from .bundle import Bundle  # noqa: E402
from .errors import EdgeInferError  # noqa: E402
from .runtime.cache import Cache  # noqa: E402
from .runtime.session import Session, load  # noqa: E402


def convert(model, **kwargs):
    """Convert an ONNX model to a bundle; see :func:`edgeinfer.conversion.convert`.

    Imported lazily: the conversion side needs onnx and onnxruntime's quantization
    tools, which a device does not install.
    """
    from .conversion import convert as _convert
    return _convert(model, **kwargs)


__all__ = ["Bundle", "Cache", "EdgeInferError", "Session", "convert", "load", "__version__"]
