"""ONNX Runtime backend: runs ONNX models on the CPU (or any ORT execution provider)."""

import re

from ...errors import BackendError, UsageError
from ...lazy import require
from ...tensors import ORT_TO_NUMPY, TensorSpec

# Options this backend accepts, with their defaults.
DEFAULT_OPTIONS = {
    "device": None,               # None | "cpu" | "cuda": a shortcut for providers
    "providers": None,            # None: CPUExecutionProvider
    "intra_op_threads": 0,        # 0: ONNX Runtime picks (one per physical core)
    "inter_op_threads": 0,
    "graph_optimization": "all",  # none | basic | extended | all
    # Pool threads stop spin-waiting when a run returns (ORT's session.force_spinning_stop):
    # sharded models run one session after another, and each one's spinning threads
    # would take the cores from the next (issue 7).
    "stop_spinning": False,
}

# Device names edgeinfer.load(device=...) takes for ONNX Runtime, and their providers.
DEVICES = {"cpu": ["CPUExecutionProvider"],
           "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}

_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def check_options(options):
    """Merge ``options`` over the defaults; refuse unknown keys and bad values."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise UsageError("Unknown onnxruntime option(s): {}.".format(", ".join(unknown)),
                         "Valid options: {}.".format(", ".join(sorted(DEFAULT_OPTIONS))))
    merged = dict(DEFAULT_OPTIONS)
    merged.update(options)
    if merged["device"] is not None and merged["providers"] is not None:
        raise UsageError("Give the onnxruntime device or its providers, not both.",
                         "device={!r} picks providers {}.".format(
                             merged["device"], DEVICES.get(str(merged["device"]).lower())))
    if merged["graph_optimization"] not in _LEVELS:
        raise UsageError("Unknown graph_optimization {!r}.".format(merged["graph_optimization"]),
                         "Use one of: {}.".format(", ".join(_LEVELS)))
    return merged


def providers_for(device):
    """Execution providers for a device name (None or "cpu": the CPU).

    Raises:
        BackendError: a device ONNX Runtime cannot use, naming its providers here.
    """
    if device is None:
        return DEVICES["cpu"]
    providers = DEVICES.get(str(device).lower())
    if providers is None:
        available = require("onnxruntime").get_available_providers()
        raise BackendError("ONNX Runtime has no device {!r}.".format(device),
                           "It takes {}; its providers here: {}.".format(
                               " or ".join(sorted(DEVICES)), ", ".join(available)))
    return providers


def session_options(options):
    """Build ``onnxruntime.SessionOptions`` from checked options."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                            _LEVELS[options["graph_optimization"]])
    opts.intra_op_num_threads = int(options["intra_op_threads"])
    opts.inter_op_num_threads = int(options["inter_op_threads"])
    opts.log_severity_level = 3
    if options["stop_spinning"]:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def spec_of(node_arg):
    """TensorSpec of an ONNX Runtime NodeArg."""
    dtype = ORT_TO_NUMPY.get(node_arg.type)
    if dtype is None:
        raise BackendError("Tensor {!r} has type {}, which edgeinfer does not handle.".format(
            node_arg.name, node_arg.type), "Use a model whose inputs/outputs are numeric tensors.")
    shape = tuple(d if isinstance(d, int) else (d or None) for d in (node_arg.shape or ()))
    return TensorSpec(node_arg.name, dtype, shape)


class OrtBackend(object):
    """Backend over ``onnxruntime.InferenceSession``."""

    name = "onnxruntime"

    def available(self):
        try:
            ort = require("onnxruntime")
        except BackendError as exc:
            return False, str(exc)
        return True, ort.__version__

    def version(self):
        return require("onnxruntime").__version__

    def load(self, files, options=None):
        """Create a runner for the model in ``files`` (a ModelFiles).

        Raises:
            BackendError: ONNX Runtime is missing or refuses the model.
        """
        options = check_options(options)
        ort = require("onnxruntime", "running ONNX bundles")
        providers = options["providers"] or providers_for(options["device"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendError("ONNX Runtime here lacks execution provider(s) {}.".format(
                ", ".join(missing)), "Available: {}.".format(
                    ", ".join(ort.get_available_providers())))
        # Files on disk load from their path: ONNX Runtime then maps external weights
        # (a sharded bundle's partitions, issue 7) instead of copying them.
        model = files.paths[files.entry] if hasattr(files, "paths") else files.read()
        try:
            session = ort.InferenceSession(model, session_options(options),
                                           providers=providers)
        except Exception as exc:  # ORT raises its own non-exported exception types
            raise BackendError("ONNX Runtime cannot load {!r}: {}".format(
                files.entry, str(exc).strip().splitlines()[0]),
                "Convert the model again with the onnxruntime version installed here "
                "({}).".format(ort.__version__))
        return OrtRunner(session)


def run_errors():
    """The exception classes ONNX Runtime raises when a run fails (its own, not exported
    at the top level: ``Fail``, ``InvalidArgument``, ``RuntimeException`` ...).

    An ONNX Runtime that keeps them elsewhere gives an empty tuple: its errors then
    pass through unchanged rather than the runner failing to load.
    """
    ort = require("onnxruntime")
    state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    return tuple(v for v in vars(state).values()
                 if isinstance(v, type) and issubclass(v, Exception)) if state else ()


class OrtRunner(object):
    """Runs one ``InferenceSession``; the session above has already checked inputs."""

    def __init__(self, session):
        self._session = session
        self.inputs = [spec_of(a) for a in session.get_inputs()]
        self.outputs = [spec_of(a) for a in session.get_outputs()]
        self._output_names = [s.name for s in self.outputs]
        self._errors = run_errors()

    def run(self, feeds, output_names=None):
        """Run on ``feeds`` (name -> numpy array of the right dtype).

        Raises:
            BackendError: ONNX Runtime fails on these inputs (e.g. inputs whose
                symbolic dims disagree with each other).
        """
        names = output_names or self._output_names
        try:
            return dict(zip(names, self._session.run(names, feeds)))
        except self._errors as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError("ONNX Runtime failed to run the model: {}".format(
                re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)),
                "Inputs: {}.".format(", ".join(s.describe() for s in self.inputs)))

    def close(self):
        self._session = None
