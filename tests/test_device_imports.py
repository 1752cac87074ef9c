"""The device side imports with numpy, click, diskcache and pillow alone.

Polygraphy-style: every device module is imported in a fresh interpreter and no
heavy framework may appear in ``sys.modules``; the set of lazily imported
dependencies is pinned; the device code keeps old-Python syntax (vermin); and the
CLI's help works without importing onnx.
"""

import ast
import json
import os
import shutil
import subprocess
import sys

import pytest

import edgeinfer
from edgeinfer import lazy

PACKAGE_DIR = os.path.dirname(os.path.abspath(edgeinfer.__file__))

DEVICE_MODULES = [
    "edgeinfer", "edgeinfer.bundle", "edgeinfer.runtime.session", "edgeinfer.runtime.backends",
    "edgeinfer.runtime.backends.ort", "edgeinfer.runtime.backends.openvino",
    "edgeinfer.runtime.inputs", "edgeinfer.preprocess",
    "edgeinfer.datasets", "edgeinfer.profiles", "edgeinfer.report", "edgeinfer.doctor",
    "edgeinfer.cli", "edgeinfer.errors", "edgeinfer.tensors", "edgeinfer.memory",
    "edgeinfer.lazy", "edgeinfer.calibration_cache",
    "edgeinfer.jetson", "edgeinfer.push", "edgeinfer.runtime.engine_cache",
    "edgeinfer.runtime.backends.tensorrt",
    "edgeinfer.runtime.cache", "edgeinfer.runtime.cache.core", "edgeinfer.runtime.cache.keys",
    "edgeinfer.runtime.cache.values", "edgeinfer.runtime.cache.memory",
    "edgeinfer.runtime.cache.disk", "edgeinfer.runtime.cache.remote",
    "edgeinfer.runtime.cache.counters", "edgeinfer.runtime.cache.admin",
    "edgeinfer.runtime.cache.writer",
    "edgeinfer.partitions", "edgeinfer.runtime.shard",
    "edgeinfer.bench", "edgeinfer.bench.core", "edgeinfer.bench.sensors",
    "edgeinfer.bench.reports",
]

# Frameworks the device side may only import lazily, inside the code that needs them.
HEAVY = ["onnx", "onnxruntime", "openvino", "tensorrt", "torch", "nncf", "onnxconverter_common"]

# Every module imported through edgeinfer.lazy.require, with the extra that brings it.
# Adding a lazy dependency is a decision: update this set and setup.py's extras together.
EXPECTED_LAZY_DEPS = {
    "onnx": "convert", "onnxruntime": "ort", "onnxconverter_common": "convert",
    "openvino": "openvino", "nncf": "convert", "tensorrt": "tensorrt", "torch": "qat",
    "cuda": "tensorrt", "pycuda": "tensorrt",
    "redis": "redis", "xxhash": "cache", "matplotlib": "report", "psutil": "bench",
    "starlette": "serve", "uvicorn": "serve",
}


def _module_file(name):
    parts = name.split(".")
    path = os.path.join(os.path.dirname(PACKAGE_DIR), *parts)
    return os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"


def _fresh_python(code):
    done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _heavy_loaded_after(statements, heavy=HEAVY):
    """The modules of ``heavy`` loaded once ``statements`` ran in a fresh Python (a name
    blocked as ``sys.modules[name] = None`` does not count)."""
    code = "\n".join([
        "import json, sys",
        statements,
        "heavy = {!r}".format(list(heavy)),
        "print(json.dumps(sorted(m for m, v in sys.modules.items() "
        "if v is not None and m.split('.')[0] in heavy)))",
    ])
    return json.loads(_fresh_python(code).strip().splitlines()[-1])


def test_device_modules_exist():
    for name in DEVICE_MODULES:
        assert os.path.isfile(_module_file(name)), name


def test_device_modules_import_no_framework():
    statements = "\n".join("import {}".format(name) for name in DEVICE_MODULES)
    assert _heavy_loaded_after(statements) == []


@pytest.mark.parametrize("name", DEVICE_MODULES)
def test_each_device_module_alone_imports_no_framework(name):
    assert _heavy_loaded_after("import {}".format(name)) == []


@pytest.mark.parametrize("statements, kept_out", [
    # The server's modules (and the CLI naming `serve`) load Starlette/uvicorn only to serve.
    ("import edgeinfer.cli, edgeinfer.serve, edgeinfer.serve.app, edgeinfer.serve.batching, "
     "edgeinfer.serve.protocol, edgeinfer.serve.metrics, edgeinfer.serve.repository, "
     "edgeinfer.serve.transport", ["starlette", "uvicorn", "onnx", "onnxruntime"]),
    # loadtest imports aiohttp when a test starts; its parsing and reports work without it.
    ("import sys\nsys.modules['aiohttp'] = None\n"
     "import edgeinfer.loadtest, edgeinfer.loadtest.runner",
     ["aiohttp", "starlette", "uvicorn", "onnx", "onnxruntime", "matplotlib"]),
])
def test_server_side_packages_import_their_frameworks_lazily(statements, kept_out):
    assert _heavy_loaded_after(statements, kept_out) == []


def test_the_framework_does_load_when_a_session_runs(tiny_bundle):
    # The check above means something only if these modules are what running imports.
    loaded = _heavy_loaded_after("import edgeinfer\nedgeinfer.load({!r})".format(str(tiny_bundle)))
    assert "onnxruntime" in loaded
    assert "onnx" not in loaded, "running a bundle must not need the onnx package"


def test_lazy_dependencies_are_exactly_the_known_set():
    assert lazy.EXTRAS == EXPECTED_LAZY_DEPS


def _required_modules():
    """Top-level names of every literal ``require("...")`` call in the package."""
    found = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path) as handle:
                tree = ast.parse(handle.read(), path)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id == "require" and node.args
                        and isinstance(node.args[0], ast.Constant)
                        and isinstance(node.args[0].value, str)):
                    found.setdefault(node.args[0].value.split(".")[0], set()).add(
                        os.path.relpath(path, PACKAGE_DIR))
    return found


def test_every_lazy_import_names_a_known_extra():
    required = _required_modules()
    assert required, "the package imports its frameworks through require()"
    unknown = dict((k, sorted(v)) for k, v in required.items() if k not in EXPECTED_LAZY_DEPS)
    assert unknown == {}


def test_device_code_has_no_top_level_framework_imports():
    # A plain `import onnx` at module level anywhere in a device module would defeat lazy
    # loading even if this interpreter happens to import it only later.
    offenders = []
    for name in DEVICE_MODULES:
        path = _module_file(name)
        with open(path) as handle:
            tree = ast.parse(handle.read(), path)
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders.extend((name, n) for n in names if n.split(".")[0] in HEAVY)
    assert offenders == []


def _vermin(minimum, files):
    """Fail with vermin's report when ``files`` need a Python newer than ``minimum``."""
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.exists(vermin):
        pytest.skip("vermin is not installed (pip install edgeinfer[dev]): cannot check the "
                    "minimum Python version")
    done = subprocess.run([vermin, "--no-tips", "--violations", "-t={}-".format(minimum)]
                          + files, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=120)
    assert done.returncode == 0, done.stdout


def test_device_code_runs_on_old_pythons():
    files = [_module_file(name) for name in DEVICE_MODULES]
    files.append(os.path.join(PACKAGE_DIR, "runtime", "__init__.py"))
    _vermin("3.6", files)


@pytest.mark.parametrize("package", ["serve", "loadtest"])
def test_server_side_code_keeps_python_3_8_syntax(package):
    # The server and the load generator may need 3.8 (DESIGN.md), no more.
    _vermin("3.8", [os.path.join(PACKAGE_DIR, package)])


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["inspect", "--help"],
                                  ["convert", "--help"], ["doctor", "--help"],
                                  ["cache", "stats", "--help"], ["cache", "clear", "--help"],
                                  ["push", "--help"], ["warm", "--help"], ["bench", "--help"]])
def test_cli_help_imports_no_framework(args):
    statements = "\n".join([
        "from edgeinfer.cli import main",
        "try:",
        "    main(args={!r}, prog_name='edgeinfer')".format(args),
        "except SystemExit as exc:",
        "    assert exc.code in (0, None), exc.code",
        "else:",
        "    raise AssertionError('--help did not exit')",
    ])
    assert _heavy_loaded_after(statements) == []


def test_console_script_help_imports_no_onnx():
    script = os.path.join(os.path.dirname(sys.executable), "edgeinfer")
    if not os.path.exists(script):
        pytest.skip("the edgeinfer console script is not installed")
    for args in (["--help"], ["run", "--help"]):
        done = subprocess.run([sys.executable, "-X", "importtime", script] + args,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "Usage: edgeinfer" in done.stdout
        imported = set(line.split("|")[-1].strip() for line in done.stderr.splitlines()
                       if line.startswith("import time:"))
        assert "edgeinfer.cli" in imported, "importtime output was not what this test reads"
        assert sorted(m for m in imported if m.split(".")[0] in HEAVY) == []
