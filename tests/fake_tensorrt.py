"""A stand-in for the TensorRT and CUDA Python APIs, so the backend's code runs without a GPU.

This is NOT TensorRT.  It implements the small surface edgeinfer's TensorRT
backend calls, as TensorRT's Python API documents it, in two shapes:

* TensorRT 8.x before 8.5: bindings (``num_bindings``, ``execute_async_v2``),
  ``max_workspace_size`` before 8.4, ``STRICT_TYPES`` before 8.2;
* TensorRT 8.5+ and 10.x: named tensors (``num_io_tensors``, ``set_tensor_address``,
  ``execute_async_v3``); 10.x drops bindings, ``max_workspace_size``,
  ``STRICT_TYPES`` and needs no EXPLICIT_BATCH flag.

Calling an API the chosen version lacks raises AttributeError, as the real
module would.  A "serialized engine" is a JSON header (the version that built
it, the flags, pins, profile, workspace, calibration header) and the ONNX
model; "running" it is ONNX Runtime on the CPU, reading and writing the
"device" buffers, which are real host memory at real addresses, so pointer and
size mistakes in the runner show up as wrong numbers.

The CUDA stand-ins (cuda-python's ``cudart`` and pycuda's ``driver``) allocate
with ctypes, copy with ``ctypes.memmove`` and count what is live, so tests can
check that a runner frees what it allocates and balances context pushes.
"""

import ctypes
import enum
import json
import types

import numpy as np
import onnx
import onnxruntime as ort

MAGIC = b"FAKETRT\0"

ONNX_TO_NUMPY = {1: np.float32, 10: np.float16, 6: np.int32, 7: np.int64, 3: np.int8,
                 9: np.bool_, 2: np.uint8}


def _version(text):
    return tuple(int(p) for p in text.split(".")[:2])


class DataType(object):
    def __init__(self, name, numpy_type):
        self.name, self.numpy_type = name, numpy_type

    def __repr__(self):
        return "DataType.{}".format(self.name)


class _Memory(object):
    """Live allocations, by address (both "host pinned" and "device" memory)."""

    def __init__(self):
        self.blocks = {}

    def alloc(self, nbytes):
        block = ctypes.create_string_buffer(max(1, nbytes))
        address = ctypes.addressof(block)
        self.blocks[address] = block
        return address

    def free(self, address):
        self.blocks.pop(int(address))

    def array(self, address, nbytes, dtype, shape):
        raw = (ctypes.c_uint8 * nbytes).from_address(int(address))
        return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)


MEMORY = _Memory()


def make_tensorrt(version="8.2.1.8", events=None):
    """A ``tensorrt`` module stand-in for ``version``.

    Args:
        version: the TensorRT version to behave as.
        events: a list the fake appends (what, detail) tuples to (builds, deserializations).
    """
    v = _version(version)
    events = events if events is not None else []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.events = events
    trt.float32 = DataType("FLOAT", np.float32)
    trt.float16 = DataType("HALF", np.float16)
    trt.int32 = DataType("INT32", np.int32)
    trt.int64 = DataType("INT64", np.int64)
    trt.int8 = DataType("INT8", np.int8)
    trt.bool = DataType("BOOL", np.bool_)
    by_numpy = dict((np.dtype(t.numpy_type), t) for t in
                    (trt.float32, trt.float16, trt.int32, trt.int64, trt.int8, trt.bool))
    trt.nptype = lambda dtype: dtype.numpy_type

    class Logger(object):
        WARNING = 2

        def __init__(self, severity=2):
            self.severity = severity
    trt.Logger = Logger
    trt.init_libnvinfer_plugins = lambda logger, namespace: True

    flags = ["FP16", "INT8", "GPU_FALLBACK"]
    if v >= (8, 2):
        flags.append("OBEY_PRECISION_CONSTRAINTS")
    if v < (10, 0):
        flags.append("STRICT_TYPES")
    trt.BuilderFlag = enum.Enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                     [("EXPLICIT_BATCH", 0)])
    if v >= (8, 4):
        trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
    trt.DeviceType = enum.Enum("DeviceType", ["GPU", "DLA"])
    if v >= (8, 5):
        trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])

    class Calibrator(object):
        def __init__(self):
            pass
    for name in ("IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "IInt8EntropyCalibrator"):
        setattr(trt, name, type(name, (Calibrator,), {}))
    if v >= (10, 0):
        class IProgressMonitor(object):
            def __init__(self):
                pass
        trt.IProgressMonitor = IProgressMonitor

    def engine_dtype(onnx_type):
        dtype = np.dtype(ONNX_TO_NUMPY[onnx_type])
        # TensorRT before 10 runs INT64 network inputs and outputs as INT32.
        if dtype == np.int64 and v < (10, 0):
            dtype = np.dtype(np.int32)
        return by_numpy[dtype]

    class Tensor(object):
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, shape, dtype

    class Layer(object):
        def __init__(self, name, outputs):
            self.name, self.precision = name, None
            self._outputs = outputs
            self.output_types = {}

        @property
        def num_outputs(self):
            return len(self._outputs)

        def get_output(self, index):
            return self._outputs[index]

        def set_output_type(self, index, dtype):
            self.output_types[index] = dtype

    class Network(object):
        def __init__(self, flags):
            self.flags = flags
            self.layers, self.inputs, self.model = [], [], None

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, index):
            return self.layers[index]

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, index):
            return self.inputs[index]

    class OnnxParser(object):
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse(self, data):
            if v < (10, 0) and not self.network.flags & 1:
                self.errors.append("Network must have the explicit batch flag.")
                return False
            try:
                model = onnx.load_from_string(bytes(data))
            except Exception as exc:
                self.errors.append("ModelImporter: {}".format(exc))
                return False
            unsupported = [n.op_type for n in model.graph.node if n.op_type == "Unsupported"]
            if unsupported:
                self.errors.append("No importer registered for op: Unsupported")
                return False
            self.network.model = bytes(data)
            values = dict((vi.name, vi) for vi in list(model.graph.value_info)
                          + list(model.graph.output) + list(model.graph.input))
            for index, node in enumerate(model.graph.node):
                outputs = []
                for name in node.output:
                    info = values.get(name)
                    kind = info.type.tensor_type.elem_type if info is not None else 1
                    outputs.append(Tensor(name, None, engine_dtype(kind)))
                name = node.name or "(Unnamed Layer* {}) [{}]".format(index, node.op_type)
                self.network.layers.append(Layer(name, outputs))
            initializers = set(t.name for t in model.graph.initializer)
            for vi in model.graph.input:
                if vi.name in initializers:
                    continue
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                             for d in vi.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(vi.name, dims,
                                                  engine_dtype(vi.type.tensor_type.elem_type)))
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]
    trt.OnnxParser = OnnxParser

    class Profile(object):
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = [list(low), list(opt), list(high)]

    class TimingCache(object):
        def __init__(self, data):
            self.data = bytes(data) or b"timing:" + version.encode()

        def serialize(self):
            return self.data

    class Config(object):
        def __init__(self):
            self.flags, self.profiles, self.pool = set(), [], None
            self.int8_calibrator = None
            self.timing = None
            self.calibration_profile = None
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1
            self._workspace = None
            self.progress_monitor = None

        def set_flag(self, flag):
            self.flags.add(flag.name)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile):
            self.calibration_profile = profile

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing = cache
            return True

        def get_timing_cache(self):
            return self.timing

    if v >= (8, 4):
        def set_memory_pool_limit(self, pool, size):
            assert pool is trt.MemoryPoolType.WORKSPACE
            self.pool = size
        Config.set_memory_pool_limit = set_memory_pool_limit
    if v < (10, 0):
        def _get(self):
            return self._workspace

        def _set(self, size):
            self._workspace = size
        Config.max_workspace_size = property(_get, _set)

    class Builder(object):
        def __init__(self, logger):
            self.logger = logger
            self.platform_has_fast_fp16 = True

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            dynamic = [t.name for t in network.inputs if any(d < 0 for d in t.shape)]
            shapes = config.profiles[0].shapes if config.profiles else {}
            if any(name not in shapes for name in dynamic):
                return None  # TensorRT: "Network has dynamic inputs, but no profile"
            calibration = None
            if config.int8_calibrator is not None:
                cache = config.int8_calibrator.read_calibration_cache()
                calibration = bytes(cache).decode("utf-8").splitlines()[0]
            pinned = dict((layer.name, [str(t) for t in layer.output_types.values()])
                          for layer in network.layers if layer.precision is trt.float32)
            header = {"version": version, "flags": sorted(config.flags),
                      "workspace": config.pool if v >= (8, 4) else config._workspace,
                      "profile": shapes, "pinned": pinned, "calibration": calibration,
                      "dla": config.DLA_core if config.default_device_type is
                      trt.DeviceType.DLA else None,
                      "monitor": config.progress_monitor is not None,
                      "inputs": [[t.name, list(t.shape), t.dtype.name] for t in network.inputs]}
            events.append(("build", header))
            return MAGIC + json.dumps(header).encode() + b"\0" + network.model
    trt.Builder = Builder

    class Context(object):
        def __init__(self, engine):
            self.engine = engine
            self.shapes = dict((t[0], tuple(t[1])) for t in engine.inputs)
            self.addresses = {}

        def _set_shape(self, name, shape):
            low, _, high = self.engine.profile.get(name, (None, None, None))
            if low is not None and not all(a <= s <= b for a, s, b in zip(low, shape, high)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def _output_shapes(self):
            feeds = dict((name, np.zeros(self.shapes[name], dtype=self.engine.onnx_dtype(name)))
                         for name, _, _ in self.engine.inputs)
            values = self.engine.session.run(None, feeds)
            return dict((o.name, tuple(val.shape)) for o, val in
                        zip(self.engine.session.get_outputs(), values))

        def _execute(self, addresses):
            feeds = {}
            for name, _, kind in self.engine.inputs:
                shape = self.shapes[name]
                dtype = np.dtype(self.engine.dtype_of(name).numpy_type)
                nbytes = int(np.prod(shape)) * dtype.itemsize
                value = MEMORY.array(addresses[name], nbytes, dtype, shape).copy()
                feeds[name] = value.astype(self.engine.onnx_dtype(name))
            outputs = self.engine.session.run(None, feeds)
            for meta, value in zip(self.engine.session.get_outputs(), outputs):
                dtype = np.dtype(self.engine.dtype_of(meta.name).numpy_type)
                value = value.astype(dtype)
                MEMORY.array(addresses[meta.name], value.nbytes, dtype, value.shape)[...] = value
            events.append(("execute", dict((n, self.shapes[n]) for n, _, _ in self.engine.inputs)))
            return True

    if v < (10, 0):
        def set_binding_shape(self, index, shape):
            return self._set_shape(self.engine.names[index], shape)

        def get_binding_shape(self, index):
            name = self.engine.names[index]
            if name in self.shapes:
                return self.shapes[name]
            return self._output_shapes()[name]

        def execute_async_v2(self, bindings, stream_handle):
            assert isinstance(stream_handle, int)
            return self._execute(dict((n, bindings[i]) for i, n in enumerate(self.engine.names)))
        Context.set_binding_shape = set_binding_shape
        Context.get_binding_shape = get_binding_shape
        Context.execute_async_v2 = execute_async_v2
    if v >= (8, 5):
        def set_input_shape(self, name, shape):
            return self._set_shape(name, shape)

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            return self._output_shapes()[name]

        def set_tensor_address(self, name, address):
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int)
            return self._execute(self.addresses)
        Context.set_input_shape = set_input_shape
        Context.get_tensor_shape = get_tensor_shape
        Context.set_tensor_address = set_tensor_address
        Context.execute_async_v3 = execute_async_v3

    class Engine(object):
        def __init__(self, header, model):
            self.header = header
            self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            self.inputs = [(n, tuple(s), k) for n, s, k in header["inputs"]]
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.names = [n for n, _, _ in self.inputs] + self.outputs
            self.profile = dict((name, shapes) for name, shapes in header["profile"].items())
            proto = onnx.load_from_string(model)
            self._onnx = dict((vi.name, ONNX_TO_NUMPY[vi.type.tensor_type.elem_type])
                              for vi in list(proto.graph.input) + list(proto.graph.output))

        def onnx_dtype(self, name):
            return self._onnx[name]

        def dtype_of(self, name):
            return engine_dtype(_onnx_type(self._onnx[name]))

        def _shape(self, name):
            for n, shape, _ in self.inputs:
                if n == name:
                    return shape
            out = [o for o in self.session.get_outputs() if o.name == name][0]
            return tuple(d if isinstance(d, int) else -1 for d in out.shape)

        def create_execution_context(self):
            return Context(self)

    if v < (10, 0):
        Engine.num_bindings = property(lambda self: len(self.names))
        Engine.get_binding_name = lambda self, i: self.names[i]
        Engine.binding_is_input = lambda self, i: i < len(self.inputs)
        Engine.get_binding_dtype = lambda self, i: self.dtype_of(self.names[i])
        Engine.get_binding_shape = lambda self, i: self._shape(self.names[i])
    if v >= (8, 5):
        Engine.num_io_tensors = property(lambda self: len(self.names))
        Engine.get_tensor_name = lambda self, i: self.names[i]
        Engine.get_tensor_mode = lambda self, name: (
            trt.TensorIOMode.INPUT if name in [n for n, _, _ in self.inputs]
            else trt.TensorIOMode.OUTPUT)
        Engine.get_tensor_dtype = lambda self, name: self.dtype_of(name)
        Engine.get_tensor_shape = lambda self, name: self._shape(name)

    class Runtime(object):
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            # TensorRT refuses a plan from another version, or a damaged one, with None.
            if not data.startswith(MAGIC) or b"\0" not in data[len(MAGIC):]:
                events.append(("refused", "not an engine"))
                return None
            head, _, model = data[len(MAGIC):].partition(b"\0")
            try:
                header = json.loads(head.decode())
            except ValueError:
                events.append(("refused", "damaged"))
                return None
            if header["version"] != version:
                events.append(("refused", "built by TensorRT {}".format(header["version"])))
                return None
            events.append(("deserialize", header["version"]))
            return Engine(header, model)
    trt.Runtime = Runtime
    return trt


def _onnx_type(numpy_type):
    for key, value in ONNX_TO_NUMPY.items():
        if value is numpy_type:
            return key
    raise KeyError(numpy_type)


def engine_header(data):
    """The JSON header of a stand-in engine's bytes."""
    head, _, _ = bytes(data)[len(MAGIC):].partition(b"\0")
    return json.loads(head.decode())


# -- CUDA --------------------------------------------------------------------------------------

class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class CudaStream(int):
    pass


def make_cuda_python(gpu=b"Fake Tegra X1", compute=(5, 3)):
    """A ``cuda`` package stand-in with cuda-python's ``cudart`` module.

    Returns:
        (cuda_module, cudart_module); ``cudart.live`` is the set of live allocations.
    """
    cudart = types.ModuleType("cuda.cudart")
    cudart.live = set()
    cudart.cudaError_t = CudaError
    cudart.cudaMemcpyKind = enum.Enum("cudaMemcpyKind",
                                      ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"])
    ok = CudaError.cudaSuccess
    streams = iter(range(1000, 100000))

    def alloc(nbytes):
        address = MEMORY.alloc(nbytes)
        cudart.live.add(address)
        return ok, address

    def free(address):
        cudart.live.discard(int(address))
        MEMORY.free(address)
        return (ok,)

    def props(index):
        return ok, types.SimpleNamespace(name=gpu + b"\0" * 8, major=compute[0],
                                         minor=compute[1])

    def memcpy(dst, src, count, kind, stream):
        assert isinstance(kind, cudart.cudaMemcpyKind)
        ctypes.memmove(int(dst), int(src), count)
        return (ok,)

    cudart.cudaSetDevice = lambda index: (ok,)
    cudart.cudaGetDeviceProperties = props
    cudart.cudaStreamCreate = lambda: (ok, CudaStream(next(streams)))
    cudart.cudaStreamDestroy = lambda stream: (ok,)
    cudart.cudaStreamSynchronize = lambda stream: (ok,)
    cudart.cudaMallocHost = alloc
    cudart.cudaMalloc = alloc
    cudart.cudaFreeHost = free
    cudart.cudaFree = free
    cudart.cudaMemcpyAsync = memcpy
    cuda = types.ModuleType("cuda")
    cuda.cudart = cudart
    return cuda, cudart


def make_pycuda(gpu="Fake Tegra X1", compute=(5, 3)):
    """A ``pycuda`` package stand-in with its ``driver`` module.

    Returns:
        (pycuda_module, driver_module); ``driver.depth`` counts pushed contexts,
        ``driver.live`` the live device allocations.
    """
    driver = types.ModuleType("pycuda.driver")
    driver.depth = [0]
    driver.live = set()

    class PrimaryContext(object):
        def push(self):
            driver.depth[0] += 1

    class Context(object):
        @staticmethod
        def pop():
            assert driver.depth[0] > 0, "pop without push"
            driver.depth[0] -= 1

    class Device(object):
        def __init__(self, index):
            self.index = index

        def name(self):
            return gpu

        def compute_capability(self):
            return compute

        def retain_primary_context(self):
            return PrimaryContext()

    class DeviceAllocation(object):
        def __init__(self, nbytes):
            self.address = MEMORY.alloc(nbytes)
            driver.live.add(self.address)

        def __int__(self):
            return self.address

        def free(self):
            driver.live.discard(self.address)
            MEMORY.free(self.address)

    class Stream(object):
        handle = 4242

        def synchronize(self):
            assert driver.depth[0] > 0, "CUDA call without a current context"

    def check_context():
        assert driver.depth[0] > 0, "CUDA call without a current context"

    def htod(dst, src, stream):
        check_context()
        ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)

    def dtoh(dst, src, stream):
        check_context()
        ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)

    driver.init = lambda: None
    driver.Device = Device
    driver.Context = Context
    driver.Stream = Stream
    driver.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)
    driver.mem_alloc = DeviceAllocation
    driver.memcpy_htod_async = htod
    driver.memcpy_dtoh_async = dtoh
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver
    return pycuda, driver
