"""edgeinfer: convert trained models for edge devices, then run, cache, shard, serve and
measure them there.

The core install is the device side (numpy, click, diskcache, pillow); each
framework is an extra, so a device installs only the backend it has.
"""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def version():
    with open(os.path.join(HERE, "edgeinfer", "__init__.py")) as handle:
        return re.search(r'^__version__ = "([^"]+)"', handle.read(), re.M).group(1)


# nncf: the OpenVINO INT8 recipes (quantize, compress_weights with INT8_ASYM: 2.9+); the
# OpenVINO IR itself needs the [openvino] extra as well.
CONVERT = ["onnx>=1.14", "onnxruntime>=1.17", "onnxconverter-common>=1.14", "nncf>=2.9"]
SERVE = ["starlette>=0.29", "uvicorn>=0.22", "httptools>=0.5", "uvloop>=0.17",
         "python-multipart>=0.0.6"]
LOADTEST = ["aiohttp>=3.8"]

EXTRAS = {
    # device side: one backend each
    "ort": ["onnxruntime>=1.16"],
    "openvino": ["openvino>=2024.0"],
    # workstation side
    "convert": CONVERT,
    # quantization-aware training (edgeinfer.qat): torch, pinned exactly like [dev]'s (any
    # other requirement pulls a multi-GB CUDA build here), with what export needs.
    "qat": ["torch==2.13.0", "onnx>=1.14"],
    # TensorRT comes with JetPack (python3-libnvinfer), never from pip on a Jetson: this
    # brings the CUDA binding its runner needs, pycuda on JetPack 4.6's Python 3.6 and
    # cuda-python (NVIDIA's own) on the Pythons of JetPack 5 and 6.
    "tensorrt": ["pycuda>=2020.1; python_version < '3.8'",
                 "cuda-python>=11.4; python_version >= '3.8'"],
    # PNG plots (compare --per-layer --plot; bench plots)
    "report": ["matplotlib>=3.3"],
    # the result cache: Redis tier (L3), and fast XXH3 keys (else hashlib's blake2b)
    "redis": ["redis>=4.1"],
    "cache": ["xxhash>=2.0"],
    # the HTTP server: Starlette on uvicorn; httptools and uvloop are uvicorn's fast
    # HTTP parser and event loop; python-multipart reads /classify's image uploads.
    "serve": SERVE,
    # edgeinfer loadtest: the load generator's HTTP client (uvloop, from [serve], speeds it
    # up when present).
    "loadtest": LOADTEST,
    # development: tests, version checks, and the demo model's training script.
    # torch is pinned exactly: any other requirement pulls a multi-GB CUDA build here.
    "dev": CONVERT + ["openvino>=2024.0", "pytest>=7", "vermin>=1.6", "scikit-learn>=1.0",
                      "matplotlib>=3.3", "torch==2.13.0", "redis>=4.1", "xxhash>=2.0"]
    + SERVE + LOADTEST + ["tritonclient[http]>=2.30", "hypothesis>=6"],
}

setup(
    name="edgeinfer",
    version=version(),
    description="Take a trained model from a workstation to an edge device and make it fast there.",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["edgeinfer", "edgeinfer.*"]),
    python_requires=">=3.6",
    install_requires=["numpy>=1.19", "click>=7.0", "diskcache>=5.0", "pillow>=8.0"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["edgeinfer=edgeinfer.cli:entry"]},
    classifiers=["Programming Language :: Python :: 3", "Operating System :: POSIX :: Linux"],
)
