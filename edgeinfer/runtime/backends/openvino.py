"""OpenVINO backend: runs OpenVINO IR (``model.xml`` + ``model.bin``) on CPU, GPU, NPU or AUTO.

A bundle's IR is extracted once into a content-addressed folder under the cache
directory and compiled from that path with OpenVINO's model cache on, so a second
load of the same bundle imports the compiled blob instead of reading and
compiling the model again (issue 3: second load <= 0.5x the first).  Reading the
IR from memory would pay the read every time.

Layout of the cache directory (default ``~/.cache/edgeinfer/openvino``)::

    ir/<key>/model.xml, model.bin   the bundle's IR; <key> = sha256 of the files' hashes
    blobs/                          OpenVINO's compiled-model cache (its CACHE_DIR)

The extracted IR is not trusted: a folder is used only when every file's size and
sha256 match the bundle's manifest (checked by hash, or by the stat stamp taken
when the files were last hashed), and is rewritten otherwise.  Blobs are
OpenVINO's: it keys them on the model path (which names the content) and the
compile options, recompiles over a blob it cannot read, and otherwise trusts them
as it does anywhere, so the folders are created private (0700).  Nothing is ever
pruned; delete the folder to reclaim the space.  A cache that cannot be written
degrades to an uncached load with a warning.

The runner keeps one InferRequest per slot (one slot under the LATENCY hint, as
many as OpenVINO finds optimal under THROUGHPUT), each guarded by a lock, so
``run`` may be called from several threads.  Inputs of up to 64 KiB are copied
into a buffer the request already shares; larger ones are shared with OpenVINO
as they are, and one passed again (the same array object, same shape) is not
even re-bound, so OpenVINO reads its current contents in place: the hand-tuned
loop's path.  The runner keeps a reference to the arrays it shares until the next
call or ``close()``.  Outputs are copied (by OpenVINO's binding, the cheapest
way), so the caller owns them and the next call cannot overwrite them.

``run_many`` is the throughput mode (issue 3, requirement 5): an
``openvino.AsyncInferQueue`` keeps several requests in flight, so every stream of
a THROUGHPUT-compiled model works at once.  Each call takes an idle queue of the
size it asks for (or builds one) and gives it back when done, so calls from
several threads never share one; a queue in which a request failed is dropped,
since OpenVINO re-raises that failure on every later wait.
"""

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
import zipfile

import numpy as np

from ...errors import BackendError, BundleError, EdgeInferError, UsageError
from ...lazy import require
from ...tensors import TensorSpec

log = logging.getLogger("edgeinfer.runtime.openvino")

_DEFAULT_CACHE = object()  # stands for "the per-user cache directory"

# Options this backend accepts, with their defaults.
DEFAULT_OPTIONS = {
    "device": "CPU",                # CPU | GPU | NPU | AUTO | HETERO:GPU,CPU | MULTI:GPU,CPU ...
    "performance_hint": "LATENCY",  # LATENCY | THROUGHPUT | CUMULATIVE_THROUGHPUT
    "num_streams": None,            # None: what the hint chooses; an int >= 1; or "AUTO"
    "inference_threads": 0,         # 0: OpenVINO's default (all cores the hint allows)
    "cache_dir": _DEFAULT_CACHE,    # bundles: default_cache_dir(); LocalFiles: none; None: off
}

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")

# Where the ONNX tensor specs (with symbolic dim names, which IR does not keep) are
# recorded in an IR's rt_info by record_specs().
SPECS_KEY = ["edgeinfer", "specs"]

_CHUNK = 1024 * 1024
STAMP_NAME = ".verified.json"  # in an extracted IR folder: see _unchanged_since_hashed

# Inputs up to this size are copied into a buffer the request already shares; larger
# ones are shared with OpenVINO as they are.  Binding a new array costs ~12 µs a call
# on this CPU (the plugin re-checks the tensor), about what copying 64 KiB costs.
COPY_LIMIT = 64 * 1024
_core = None
_core_lock = threading.Lock()


def shared_core():
    """The process's one ``openvino.Core`` (plugins are loaded once, not per model)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = require("openvino", "running OpenVINO bundles").Core()
        return _core


def default_cache_dir():
    """The per-user folder for extracted IR and compiled blobs.

    ``$EDGEINFER_CACHE_DIR/openvino`` when that is set, else
    ``$XDG_CACHE_HOME/edgeinfer/openvino``, else ``~/.cache/edgeinfer/openvino``.
    """
    from . import cache_dir
    return cache_dir("openvino")


def check_options(options, local=False):
    """Merge ``options`` over the defaults; refuse unknown keys and bad values.

    Args:
        options: dict of backend options (default None: all defaults).
        local: the model is a :class:`LocalFiles` (validation during conversion): its
            files are temporary, so the model cache is off unless ``cache_dir`` is given.

    Returns:
        dict with every option; ``device`` and ``performance_hint`` upper-cased,
        ``cache_dir`` a path or None.

    Raises:
        UsageError: an unknown option or a value of the wrong kind.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise UsageError("Unknown openvino option(s): {}.".format(", ".join(unknown)),
                         "Valid options: {}.".format(", ".join(sorted(DEFAULT_OPTIONS))))
    merged = dict(DEFAULT_OPTIONS)
    merged.update(options)
    device = merged["device"]
    if device is None:
        device = "CPU"
    if not isinstance(device, str) or not device.strip():
        raise UsageError("OpenVINO device must be a name such as CPU, GPU, NPU or AUTO, "
                         "not {!r}.".format(device))
    merged["device"] = device.strip().upper()
    hint = merged["performance_hint"]
    hint = "LATENCY" if hint is None else str(hint).upper()
    if hint not in HINTS:
        raise UsageError("Unknown performance_hint {!r}.".format(merged["performance_hint"]),
                         "Use one of: {}.".format(", ".join(HINTS)))
    merged["performance_hint"] = hint
    streams = merged["num_streams"]
    if isinstance(streams, str) and streams.upper() == "AUTO":
        merged["num_streams"] = "AUTO"
    elif streams is not None and (isinstance(streams, bool) or not isinstance(streams, int)
                                  or streams < 1):
        raise UsageError("num_streams must be a whole number >= 1, \"AUTO\" or None, not "
                         "{!r}.".format(streams))
    threads = merged["inference_threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise UsageError("inference_threads must be a whole number >= 0 (0: OpenVINO's "
                         "default), not {!r}.".format(threads))
    cache = merged["cache_dir"]
    if cache is _DEFAULT_CACHE:
        cache = None if local else default_cache_dir()
    elif cache is not None:
        try:
            cache = os.path.abspath(os.path.expanduser(os.fspath(cache)))
        except TypeError:
            raise UsageError("cache_dir must be a folder path or None, not {!r}.".format(cache))
    merged["cache_dir"] = cache
    return merged


def compile_config(options):
    """OpenVINO compile properties for checked options (without the cache)."""
    config = {"PERFORMANCE_HINT": options["performance_hint"]}
    if options["num_streams"] is not None:
        config["NUM_STREAMS"] = str(options["num_streams"])
    if options["inference_threads"]:
        config["INFERENCE_NUM_THREADS"] = int(options["inference_threads"])
    return config


def _listed_devices(device):
    """The physical devices a device string names: ``HETERO:GPU,CPU`` -> [GPU, CPU]."""
    kind, _, rest = device.partition(":")
    if kind not in VIRTUAL_DEVICES:
        if rest:
            raise UsageError("Unknown OpenVINO device {!r}.".format(device),
                             "Use CPU, GPU, NPU, AUTO or HETERO:/MULTI:/AUTO: followed by a "
                             "comma-separated device list.")
        return [device]
    listed = []
    for item in rest.split(","):
        item = re.sub(r"\(.*\)$", "", item.strip())  # BATCH:GPU(4)
        if item and not item.startswith("-"):          # AUTO:-CPU excludes CPU
            listed.append(item)
    return listed


def check_device(core, device):
    """Refuse a device string that names a device this machine lacks.

    Raises:
        BackendError: naming the missing device(s) and the ones that exist.
    """
    listed = _listed_devices(device)
    if not listed:
        return
    available = list(core.available_devices)
    # "GPU" stands for "GPU.0" where there are several; "GPU.1" is left to OpenVINO.
    bases = set(a.split(".")[0] for a in available)
    missing = [d for d in listed if d not in available and d.split(".")[0] not in bases]
    if missing:
        asked = "" if missing == [device] else " (asked for {!r})".format(device)
        raise BackendError(
            "OpenVINO device {} {} not present on this machine{}.".format(
                ", ".join(repr(d) for d in missing), "is" if len(missing) == 1 else "are",
                asked),
            "Available devices: {}; AUTO picks among them. `edgeinfer doctor` lists "
            "them.".format(", ".join(available) or "none"))


def describe_devices():
    """OpenVINO's devices here with a few properties each (for ``edgeinfer doctor``).

    Returns:
        list of dicts: ``name``, ``full_name``, ``capabilities`` (list of str) and,
        where the device reports them, ``type`` and ``architecture``.
    """
    core = shared_core()
    found = []
    for name in core.available_devices:
        info = {"name": name}
        for key, prop in (("full_name", "FULL_DEVICE_NAME"),
                          ("capabilities", "OPTIMIZATION_CAPABILITIES"),
                          ("type", "DEVICE_TYPE"), ("architecture", "DEVICE_ARCHITECTURE")):
            try:
                value = core.get_property(name, prop)
            except Exception:  # not every plugin has every property
                continue
            if isinstance(value, (list, tuple)):
                info[key] = [str(v) for v in value]
            else:  # enums (DEVICE_TYPE) print as "Type.INTEGRATED": keep the name
                info[key] = value if isinstance(value, str) else str(getattr(value, "name", value))
        found.append(info)
    return found


def record_specs(model, inputs, outputs):
    """Record ONNX tensor specs in an ``openvino.Model``'s rt_info before ``save_model``.

    IR keeps no names for symbolic dims (``batch`` becomes ``?``); the runner reads
    them back from here so its specs equal the ONNX Runtime backend's for the same
    model (issue 3, requirement 4).

    Args:
        model: the ``openvino.Model`` about to be saved.
        inputs, outputs: lists of :class:`~edgeinfer.tensors.TensorSpec` (or their dicts).
    """
    def as_dict(spec):
        return spec.to_dict() if isinstance(spec, TensorSpec) else dict(spec)
    text = json.dumps({"inputs": [as_dict(s) for s in inputs],
                       "outputs": [as_dict(s) for s in outputs]}, sort_keys=True)
    model.set_rt_info(text, SPECS_KEY)


def recorded_specs(model):
    """The specs :func:`record_specs` stored in ``model``, as ``{name: TensorSpec}``."""
    try:
        if not model.has_rt_info(SPECS_KEY):
            return {}
        data = json.loads(str(model.get_rt_info(SPECS_KEY).astype(str)))
        specs = [TensorSpec.from_dict(d) for d in data["inputs"] + data["outputs"]]
    except Exception as exc:  # an annotation we cannot read costs only the dim names
        log.debug("ignoring unreadable edgeinfer specs in the IR: %s", exc)
        return {}
    return dict((s.name, s) for s in specs)


def spec_of(port, named, kind, index):
    """TensorSpec of a compiled model's port, with dim names from ``named`` specs.

    The name is the ONNX name when the port carries it; dims OpenVINO knows are
    kept, and a dynamic dim takes the symbolic name the ONNX model gave it.
    """
    names = port.get_names()
    spec = next((named[n] for n in sorted(names) if n in named), None)
    if spec is not None:
        name = spec.name
    elif names:
        name = port.get_any_name()
    else:
        name = "{}{}".format(kind, index)
    element = port.get_element_type()
    try:
        dtype = np.dtype(element.to_dtype())
    except Exception:
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise BackendError("Tensor {!r} has type {}, which edgeinfer does not handle.".format(
            name, element), "Use a model whose inputs/outputs are numeric tensors.")
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return TensorSpec(name, dtype.name, ())
    dims = [d.get_length() if d.is_static else None for d in shape]
    if spec is not None and len(spec.shape) == len(dims):
        dims = [n if d is None and isinstance(n, str) else d for d, n in zip(dims, spec.shape)]
    return TensorSpec(name, dtype.name, tuple(dims))


def _first_line(exc):
    text = str(exc).strip()
    # OpenVINO prefixes messages with "Exception from src/...:NN:" lines; the cause is last.
    lines = [l.strip() for l in text.splitlines()
             if l.strip() and not l.strip().startswith("Exception from ")]
    return lines[-1] if lines else (text.splitlines()[0] if text else type(exc).__name__)


def weights_name(entry):
    """The weights file beside an IR entry: ``model.xml`` -> ``model.bin``."""
    return entry[:-4] + ".bin" if entry.endswith(".xml") else entry + ".bin"


# -- the extracted IR ------------------------------------------------------------------------

def ir_key(entries):
    """Folder name for IR files: sha256 over their names and sha256s (manifest entries)."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e["name"]):
        digest.update("{}\0{}\0{}\n".format(entry["name"], entry["sha256"],
                                            entry["size"]).encode("utf-8"))
    return digest.hexdigest()


def _file_matches(path, entry):
    try:
        if os.path.getsize(path) != entry["size"]:
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == entry["sha256"]


def _member_path(folder, name):
    # Member names were checked on open (no "..", no absolute paths); "/" separates.
    return os.path.join(folder, *name.split("/"))


def _folder_matches(folder, entries):
    return all(_file_matches(_member_path(folder, e["name"]), e) for e in entries)


def _stat_stamp(folder, entries):
    """What identifies each file as written: size, inode, mtime and ctime (ns)."""
    stamp = {}
    for entry in entries:
        st = os.stat(_member_path(folder, entry["name"]))
        stamp[entry["name"]] = [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
    return stamp


def _write_stamp(folder, entries):
    """Record the files' stat stamp beside them (atomically): they were just hashed.

    The stamp file must be written on a later clock tick than every file's ctime
    (file times are coarse, a few ms): a write to a file in the tick the stamp was
    taken would otherwise leave its ctime unchanged (git's "racy clean" case).
    """
    stamp = _stat_stamp(folder, entries)
    newest = max(v[3] for v in stamp.values())
    path = os.path.join(folder, STAMP_NAME)
    for _ in range(100):
        handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        with os.fdopen(handle, "w") as out:
            json.dump(stamp, out)
        os.replace(tmp, path)
        if os.stat(path).st_mtime_ns > newest:
            return
        time.sleep(0.002)
    os.unlink(path)  # the clock did not move: no stamp, the files are hashed each load


def _unchanged_since_hashed(folder, entries):
    """True when every file still has the stat stamp recorded when it was hashed.

    Any write to a file after the stamp moves its ctime past the one recorded (no
    user can set a ctime back), so a match means the bytes are the ones that were
    hashed; hashing again (the bundle itself is hashed on open) would double the
    time of a cached load (issue 3).
    """
    path = os.path.join(folder, STAMP_NAME)
    try:
        with open(path) as handle:
            recorded = json.load(handle)
        written = os.stat(path).st_mtime_ns
        current = _stat_stamp(folder, entries)
        return all(recorded.get(e["name"]) == current[e["name"]]
                   and current[e["name"]][0] == e["size"]
                   and current[e["name"]][3] < written for e in entries)
    except (OSError, ValueError, TypeError, AttributeError, IndexError):
        return False


def _verified_folder(folder, entries):
    """True when ``folder`` holds exactly the files ``entries`` describe."""
    if _unchanged_since_hashed(folder, entries):
        return True
    if not _folder_matches(folder, entries):
        return False
    try:
        _write_stamp(folder, entries)  # e.g. a cache copied elsewhere: new inodes
    except OSError:
        pass
    return True


def extract_ir(bundle, names, root):
    """The bundle's IR files in a verified folder under ``root``; extract them if needed.

    The folder is named by the files' hashes, so it can be shared by every bundle
    holding the same IR.  An existing folder is used only if every file matches
    the manifest's size and sha256; otherwise it is extracted again into a
    temporary folder and renamed into place (never half-written).

    Returns:
        (folder, reused): the folder path, and whether it existed and matched.

    Raises:
        BundleError: a member in the bundle does not match its manifest entry.
        OSError: the cache folder cannot be written.
    """
    listed = dict((e["name"], e) for e in bundle.manifest["files"])
    entries = [listed[name] for name in names]
    folder = os.path.join(root, "ir", ir_key(entries))
    if os.path.isdir(folder):
        if _verified_folder(folder, entries):
            return folder, True
        log.warning("cached IR in %s does not match bundle %s; extracting it again",
                    folder, bundle.path)
    parent = os.path.dirname(folder)
    os.makedirs(root, mode=0o700, exist_ok=True)  # per user: blobs are trusted as they are
    os.makedirs(parent, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        with zipfile.ZipFile(bundle.path) as archive:
            for entry in entries:
                digest = hashlib.sha256()
                target = _member_path(tmp, entry["name"])
                if not os.path.isdir(os.path.dirname(target)):
                    os.makedirs(os.path.dirname(target))
                with archive.open(entry["name"]) as src, open(target, "wb") as dst:
                    for chunk in iter(lambda: src.read(_CHUNK), b""):
                        digest.update(chunk)
                        dst.write(chunk)
                if digest.hexdigest() != entry["sha256"]:
                    raise BundleError("Bundle {!r}: {!r} does not match its sha256 in the "
                                      "manifest (tampered or corrupt).".format(
                                          bundle.path, entry["name"]),
                                      "Copy the bundle again, or rebuild it with "
                                      "`edgeinfer convert`.")
        _write_stamp(tmp, entries)
        _replace_folder(tmp, folder, entries)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, False


def _replace_folder(tmp, folder, entries):
    """Move ``tmp`` to ``folder``, setting aside a stale one; tolerate a racing process."""
    if os.path.isdir(folder):
        stale = tempfile.mkdtemp(prefix=".stale-", dir=os.path.dirname(folder))
        try:
            os.rename(folder, os.path.join(stale, "old"))
        except OSError:
            pass  # another process moved it first
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:
        # Another process put a folder there between our check and the rename.
        if not _verified_folder(folder, entries):
            raise


# -- the backend -----------------------------------------------------------------------------

class OpenVinoBackend(object):
    """Backend over ``openvino.Core.compile_model``."""

    name = "openvino"

    def available(self):
        try:
            ov = require("openvino")
        except BackendError as exc:
            return False, str(exc)
        return True, _short_version(ov)

    def version(self):
        return _short_version(require("openvino", "running OpenVINO bundles"))

    def load(self, files, options=None):
        """Compile the IR in ``files`` for a device and return a runner.

        Args:
            files: a :class:`~edgeinfer.runtime.backends.ModelFiles` (a bundle's model)
                or :class:`~edgeinfer.runtime.backends.LocalFiles` (IR files on disk,
                compiled from their paths).
            options: see :data:`DEFAULT_OPTIONS` (default None: all defaults).

        Raises:
            UsageError: an unknown option or a bad value.
            BundleError: the bundle lacks the IR's weights or they are tampered.
            BackendError: OpenVINO is missing, the device is not present, or OpenVINO
                refuses the model.
        """
        local = hasattr(files, "paths")
        options = check_options(options, local=local)
        require("openvino", "running OpenVINO bundles")
        core = shared_core()
        device = options["device"]
        if device != "CPU":
            check_device(core, device)
        config = compile_config(options)
        entry = files.entry
        started = time.perf_counter()
        try:
            if local:
                compiled, model = self._compile_local(core, files, device, config, options)
                named = recorded_specs(model)
            else:
                compiled = self._compile_bundled(core, files, device, config, options)
                bundle = files.bundle
                named = dict((s.name, s) for s in bundle.inputs + bundle.outputs)
        except EdgeInferError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError with its own text
            if device == "CPU":
                check_device(core, device)  # a build without the CPU plugin
            raise BackendError("OpenVINO cannot compile {!r} for {}: {}".format(
                entry, device, _first_line(exc)),
                "Convert the model again with the openvino version installed here ({}), "
                "or try another device.".format(self.version()))
        runner = OpenVinoRunner(compiled, named, device)
        runner.load_stats = compile_stats(compiled, time.perf_counter() - started,
                                          options["cache_dir"] is not None)
        return runner

    def _compile_local(self, core, files, device, config, options):
        xml = files.paths[files.entry]
        weights = files.paths.get(weights_name(files.entry))
        if weights is None:
            raise BackendError("IR {!r} comes without its weights file {!r}.".format(
                files.entry, weights_name(files.entry)),
                "Give both files: LocalFiles({{'model.xml': ..., 'model.bin': ...}}).")
        if options["cache_dir"] is not None:
            # OpenVINO keys a path's blob on the path, and these files are temporary:
            # hash the model instead (the in-memory route) so a reused path is safe.
            config = dict(config, CACHE_DIR=os.path.join(options["cache_dir"], "blobs"))
        model = core.read_model(xml, weights)
        return core.compile_model(model, device, config), model

    def _compile_bundled(self, core, files, device, config, options):
        bundle, entry = files.bundle, files.entry
        weights = weights_name(entry)
        if weights not in bundle.files:
            raise BundleError("Bundle {!r} holds the IR {!r} but not its weights {!r}.".format(
                bundle.path, entry, weights), "Rebuild it with `edgeinfer convert --target "
                "openvino`.")
        root = options["cache_dir"]
        if root is not None:
            try:
                folder, reused = extract_ir(bundle, [entry, weights], root)
                blobs = os.path.join(root, "blobs")
                os.makedirs(blobs, mode=0o700, exist_ok=True)
            except OSError as exc:
                # A cache that cannot be written degrades to a slower load, never a failure.
                warnings.warn("OpenVINO model cache {} is not usable ({}); loading {} without "
                              "it.".format(root, exc, bundle.path))
            else:
                log.debug("IR %s in %s", "reused" if reused else "extracted", folder)
                return core.compile_model(_member_path(folder, entry), device,
                                          dict(config, CACHE_DIR=blobs))
        model = core.read_model(bundle.read(entry), bundle.read(weights))
        return core.compile_model(model, device, config)


def compile_stats(compiled, seconds, cached):
    """What ``edgeinfer bench`` reports of a compile: its time, and what the model cache did.

    Returns:
        dict: ``step`` ("OpenVINO compile_model"), ``seconds`` (reading the IR and
        compiling it, or importing the cached blob), ``model_cache``: ``"hit"`` (the
        blob was imported), ``"miss"`` (compiled, blob written), ``"off"`` (no
        cache_dir) or None (this OpenVINO does not say).
    """
    state = "off"
    if cached:
        try:
            state = "hit" if bool(compiled.get_property("LOADED_FROM_CACHE")) else "miss"
        except Exception:  # OpenVINO before 2023.1 lacks the property
            state = None
    return {"step": "OpenVINO compile_model", "seconds": seconds, "model_cache": state}


def _short_version(ov):
    """``2026.4.1-22982-e213a147257-releases/2026/4`` -> ``2026.4.1``."""
    match = re.match(r"\d+(\.\d+)*", ov.__version__)
    return match.group() if match else ov.__version__


def _raw_infer(request):
    """The C++ binding's ``InferRequest.infer``, or None.

    The Python wrapper's ``infer()`` re-dispatches arguments and builds a result
    dict on every call (about 4 µs on the tiny model here, issue 3); the binding
    underneath takes ``(request, inputs, share_outputs, decode_strings)`` and
    returns a dict port -> array, in the compiled model's output order.
    """
    return _binding_method(request, "infer")


def _raw_start(queue):
    """The C++ binding's ``AsyncInferQueue.start_async(queue, inputs, userdata)``, or None.

    The Python wrapper looks the idle request up again and re-dispatches its
    inputs; the runner has already bound them to that request.
    """
    return _binding_method(queue, "start_async")


def _binding_method(obj, name):
    for klass in type(obj).__mro__:
        if klass.__module__.startswith("openvino._pyopenvino") and name in vars(klass):
            return vars(klass)[name]
    return None


def _public_infer(request, inputs, share_outputs, decode_strings):
    return request.infer(inputs, share_outputs=share_outputs, decode_strings=decode_strings)


def _public_start(queue, inputs, userdata):
    queue.start_async(inputs, userdata)


# Passed as the inputs of every infer/start_async call: the runner binds inputs itself
# (see _bind), so OpenVINO has nothing to set.  Never written to.
_NO_INPUTS = {}


class _Slot(object):
    """One InferRequest, the arrays bound to its inputs, and its lock.

    ``bound[i]`` is the array input ``i``'s tensor shares: the caller's own (large
    inputs) or this slot's buffer that small inputs are copied into (``owned[i]``).
    """

    __slots__ = ("request", "bound", "shapes", "owned", "lock")

    def __init__(self, request, inputs):
        self.request = request
        self.bound = [None] * inputs
        self.shapes = [None] * inputs
        self.owned = [False] * inputs
        self.lock = threading.Lock()

    def forget(self):
        for i in range(len(self.bound)):
            self.bound[i] = self.shapes[i] = None
            self.owned[i] = False


class _Jobs(object):
    """What one ``run_many`` call collects: each job's outputs, or the errors raised.

    A fresh one per call, so a callback can never write into another call's
    results; it holds no reference to the queue, so the queue (a C++ object
    holding the callback) is not part of a reference cycle.
    """

    __slots__ = ("outputs", "wanted", "errors")

    def __init__(self, count, wanted):
        self.outputs = [None] * count
        self.wanted = wanted
        self.errors = []

    def done(self, request, index):
        # Runs on an OpenVINO worker thread (holding the GIL), only for jobs that
        # succeeded; wait_all() returns after every callback has run.  Copies, so the
        # caller owns the outputs, as with run().
        try:
            get = request.get_output_tensor
            self.outputs[index] = [get(i).data.copy() for i in self.wanted]
        except Exception as exc:  # reported by run_many, never lost on the worker thread
            self.errors.append((index, exc))


class _Queue(object):
    """An ``openvino.AsyncInferQueue`` of ``jobs`` requests, one slot per request."""

    __slots__ = ("queue", "slots", "start")

    def __init__(self, ov, compiled, jobs, inputs):
        self.queue = ov.AsyncInferQueue(compiled, jobs)
        self.slots = [_Slot(self.queue[i], inputs) for i in range(jobs)]
        self.start = _raw_start(self.queue) or _public_start

    def drain(self):
        """Wait for every request, ignoring their errors (the queue is dropped after)."""
        for slot in self.slots:
            try:
                slot.request.wait()
            except RuntimeError:
                pass


class OpenVinoRunner(object):
    """Runs one compiled model; the session above has already checked inputs.

    Attributes:
        inputs, outputs: lists of TensorSpec (ONNX names, numpy dtypes, symbolic dims).
        device: the device string it was compiled for.
        compiled_model: the ``openvino.CompiledModel`` (for async/throughput use).
        optimal_requests: OpenVINO's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` for it (1
            under the LATENCY hint, about one per stream under THROUGHPUT): the
            default concurrency of :meth:`run_many`.
        load_stats: :func:`compile_stats` of the load that made it (None when made
            directly).
    """

    def __init__(self, compiled, named, device):
        self.compiled_model = compiled
        self.load_stats = None
        self.device = device
        self.inputs = [spec_of(p, named, "input", i) for i, p in enumerate(compiled.inputs)]
        self.outputs = [spec_of(p, named, "output", i) for i, p in enumerate(compiled.outputs)]
        self._input_index = [(s.name, i, np.dtype(s.dtype)) for i, s in enumerate(self.inputs)]
        self._output_names = [s.name for s in self.outputs]
        self._output_index = dict((n, i) for i, n in enumerate(self._output_names))
        try:
            count = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        except Exception:
            count = 1
        self.optimal_requests = max(1, count)
        count = max(1, min(count, os.cpu_count() or 1, 16))
        self._slots = [_Slot(compiled.create_infer_request(), len(self.inputs))
                       for _ in range(count)]
        self._turn = itertools.count()
        self._ov = require("openvino")
        self._tensor = self._ov.Tensor
        self._infer = _raw_infer(self._slots[0].request) or _public_infer
        # Idle AsyncInferQueues by size; each run_many takes one for itself (see run_many).
        self._queues = {}
        self._queues_lock = threading.Lock()

    def _acquire(self):
        slots = self._slots
        for slot in slots:
            if slot.lock.acquire(False):
                return slot
        if not slots:
            raise UsageError("This OpenVINO runner is closed.", "Load the bundle again.")
        # All busy: wait for one, taking turns so waiters spread over the slots.
        slot = slots[next(self._turn) % len(slots)]
        slot.lock.acquire()
        return slot

    def _bind(self, slot, feeds):
        """Point ``slot``'s request at ``feeds``, doing as little as each input allows.

        The caller's array bound last time is left alone (OpenVINO reads it in
        place); a small input is copied into the buffer the request already
        shares; anything else is bound anew, which costs the plugin's tensor checks.
        """
        request = slot.request
        bound, shapes, owned = slot.bound, slot.shapes, slot.owned
        for name, index, dtype in self._input_index:
            value = feeds[name]
            shape = value.shape
            if shape == shapes[index]:
                if value is bound[index]:
                    continue
                if owned[index] and value.nbytes <= COPY_LIMIT:
                    bound[index][...] = value  # cheaper than np.copyto for small arrays
                    continue
            if value.nbytes <= COPY_LIMIT:
                value = np.array(value, dtype=dtype, order="C")  # this slot's buffer
                owned[index] = True
            else:
                flags = value.flags
                if not (flags.c_contiguous and flags.writeable):
                    value = np.array(value, dtype=dtype, order="C")  # OpenVINO shares
                owned[index] = False                                # only such arrays
            request.set_input_tensor(index, self._tensor(value, shared_memory=True))
            bound[index] = value
            shapes[index] = shape

    def run(self, feeds, output_names=None):
        """Run on ``feeds`` (name -> numpy array of the right dtype).

        Returns:
            dict output name -> a numpy array the caller owns.

        Raises:
            BackendError: OpenVINO fails on these inputs.
            UsageError: the runner was closed.
        """
        slots = self._slots
        slot = slots[0] if slots else None
        if slot is None or not slot.lock.acquire(False):
            slot = self._acquire()
        try:
            self._bind(slot, feeds)
            request = slot.request
            try:
                # share_outputs=False: the binding copies the outputs into arrays the
                # caller owns, cheaper than copying views of the output tensors here.
                values = self._infer(request, _NO_INPUTS, False, True).values()
            except TypeError:
                # A binding whose signature changed: use the public wrapper from now on.
                self._infer = _public_infer
                values = _public_infer(request, _NO_INPUTS, False, True).values()
            names = self._output_names
            if len(values) != len(names):  # ports the result dict could not tell apart
                get = request.get_output_tensor
                values = [get(i).data.copy() for i in range(len(names))]
            if output_names is None:
                return dict(zip(names, values))
            values, index = list(values), self._output_index
            return dict((name, values[index[name]]) for name in output_names)
        except RuntimeError as exc:
            slot.forget()  # bind afresh next time: OpenVINO may have refused these
            raise BackendError("OpenVINO failed to run the model on {}: {}".format(
                self.device, _first_line(exc)),
                "Inputs: {}.".format(", ".join(s.describe() for s in self.inputs)))
        finally:
            slot.lock.release()

    def run_many(self, feed_dicts, output_names=None, concurrency=None):
        """Run each feed dict, up to ``concurrency`` at once, with an AsyncInferQueue.

        The jobs go through OpenVINO's own asynchronous requests, so under the
        THROUGHPUT hint each stream works on its own input (issue 3, requirement
        5): a Python loop of :meth:`run` keeps only one stream busy.  Inputs are
        bound as :meth:`run` binds them; a callback on OpenVINO's thread copies
        each job's outputs.

        Args:
            feed_dicts: a list of dicts name -> numpy array of the right dtype.
            output_names: outputs to return (default None: all, in model order).
            concurrency: requests in flight (default None: :attr:`optimal_requests`).

        Returns:
            list of dicts output name -> numpy array, in the order of ``feed_dicts``.

        Raises:
            BackendError: OpenVINO fails on one of the feeds (the first such is named).
            UsageError: the runner was closed.
        """
        if not self._slots:
            raise UsageError("This OpenVINO runner is closed.", "Load the bundle again.")
        if not feed_dicts:
            return []
        jobs = int(concurrency or self.optimal_requests)
        wanted = (range(len(self._output_names)) if output_names is None else
                  [self._output_index[n] for n in output_names])
        names = self._output_names if output_names is None else list(output_names)
        state = _Jobs(len(feed_dicts), wanted)
        queue = self._checkout(jobs)
        failed = None
        try:
            aiq, slots, start = queue.queue, queue.slots, queue.start
            aiq.set_callback(state.done)
            for index, feeds in enumerate(feed_dicts):
                idle = aiq.get_idle_request_id()  # blocks until one is free (GIL released)
                self._bind(slots[idle], feeds)
                try:
                    start(aiq, _NO_INPUTS, index)  # takes that same idle request
                except TypeError:
                    # A binding whose signature changed: the public wrapper from now on.
                    queue.start = start = _public_start
                    start(aiq, _NO_INPUTS, index)
            aiq.wait_all()
        except RuntimeError as exc:
            # A request that failed keeps raising in this queue: finish what is in
            # flight and drop the queue; the next call builds a fresh one.
            failed = exc
            queue.drain()
        except BaseException:  # e.g. KeyboardInterrupt: no job may outlive its queue
            queue.drain()
            raise
        # The queue keeps its callback, and so this state, until the next call.
        outputs, state.outputs = state.outputs, []
        if failed is None and not state.errors:
            self._checkin(jobs, queue)
            return [dict(zip(names, values)) for values in outputs]
        if state.errors:
            index, failed = state.errors[0]
        else:  # jobs start in order, so the first without outputs is the first that failed
            index = next((i for i, values in enumerate(outputs) if values is None), 0)
        raise BackendError("Feed {} of {}: OpenVINO failed to run the model on {}: {}".format(
            index, len(feed_dicts), self.device, _first_line(failed)),
            "Inputs: {}.".format(", ".join(s.describe() for s in self.inputs)))

    def _checkout(self, jobs):
        """An idle queue of ``jobs`` requests, this call's alone (built if none is idle)."""
        with self._queues_lock:
            idle = self._queues.get(jobs)
            if idle:
                return idle.pop()
        return _Queue(self._ov, self.compiled_model, jobs, len(self.inputs))

    def _checkin(self, jobs, queue):
        with self._queues_lock:
            if self._slots:  # not closed meanwhile
                self._queues.setdefault(jobs, []).append(queue)

    def close(self):
        """Release the compiled model and its requests (and the inputs they hold)."""
        self._slots = []
        with self._queues_lock:
            self._queues = {}
        self.compiled_model = None
