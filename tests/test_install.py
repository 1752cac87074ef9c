"""Device-side install on a stock Jetson Nano (issue 5, requirement 8).

JetPack 4.6 has Python 3.6 and numpy 1.19: ``pip install edgeinfer`` there must
need only numpy, click, diskcache and pillow, and the ``tensorrt`` extra must pick
the CUDA binding that installs on that Python (pycuda) and cuda-python on newer
JetPacks.  setup.py is read by running it with ``setuptools.setup`` replaced, and
the environment markers are evaluated for each Python with ``packaging``.
"""

import os
import runpy

import pytest
import setuptools

from edgeinfer import lazy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def metadata():
    seen = {}
    patch = pytest.MonkeyPatch()
    patch.setattr(setuptools, "setup", lambda **kwargs: seen.update(kwargs))
    patch.chdir(ROOT)
    try:
        runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
    finally:
        patch.undo()
    return seen


def requirements_for(requirements, python):
    """The names of ``requirements`` whose markers hold on Linux aarch64 with ``python``."""
    from packaging.requirements import Requirement
    environment = {"python_version": python, "python_full_version": python + ".9",
                   "platform_machine": "aarch64", "sys_platform": "linux",
                   "platform_system": "Linux", "implementation_name": "cpython", "extra": ""}
    names = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            names.append(requirement.name)
    return sorted(names)


def test_core_install_is_the_device_side_and_takes_python_3_6(metadata):
    assert metadata["python_requires"] == ">=3.6"
    assert requirements_for(metadata["install_requires"], "3.6") == [
        "click", "diskcache", "numpy", "pillow"]
    # numpy 1.19 is JetPack 4.6's: the floor must let it be.
    assert "numpy>=1.19" in metadata["install_requires"]


@pytest.mark.parametrize("python, binding", [("3.6", "pycuda"), ("3.8", "cuda-python"),
                                             ("3.10", "cuda-python")])
def test_tensorrt_extra_picks_the_cuda_binding_for_the_jetpack(metadata, python, binding):
    # TensorRT itself comes with JetPack (python3-libnvinfer), never from pip on a Jetson.
    assert requirements_for(metadata["extras_require"]["tensorrt"], python) == [binding]


def test_lazy_cuda_modules_name_the_tensorrt_extra():
    assert lazy.EXTRAS["tensorrt"] == lazy.EXTRAS["cuda"] == lazy.EXTRAS["pycuda"] == "tensorrt"
