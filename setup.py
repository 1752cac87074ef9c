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

EXTRAS = {
    # device side: one backend each
    "ort": ["onnxruntime>=1.16"],
    "openvino": ["openvino>=2024.0"],
    # workstation side
    "convert": CONVERT,
    # PNG plots (compare --per-layer --plot; bench plots)
    "report": ["matplotlib>=3.3"],
    # development: tests, version checks, and the demo model's training script.
    # torch is pinned exactly: any other requirement pulls a multi-GB CUDA build here.
    "dev": CONVERT + ["openvino>=2024.0", "pytest>=7", "vermin>=1.6", "scikit-learn>=1.0",
                      "matplotlib>=3.3", "torch==2.13.0"],
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
