"""The manifest's ``partitions`` record: how a sharded bundle splits its model (issue 7).

A sharded bundle (format version 2) holds its model as several model files, one
per partition, run one after another.  Its manifest says how under
``"partitions"`` (``None`` in an unsharded bundle)::

    "partitions": {
      "budget_bytes": 26214400,   # weights one partition may hold (the plan's budget)
      "weight_bytes": 102228128,  # weights of the whole source model
      "shared_bytes": 0,          # weights duplicated into several partitions (counted in each)
      "activation_bytes": 9633792,  # the largest set of activations alive at once, batch 1
      "planner": {"order": "topological", "objective": "..."},   # how it was cut (free text)
      "items": [                  # in run order
        {"name": "p0",
         "model": "partitions/p0/model.onnx",      # the backend's entry file
         "files": ["partitions/p0/model.onnx"],    # every member of this partition
         "nodes": 61, "first_node": "conv1", "last_node": "layer2.0.relu",
         "weight_bytes": 22347776,                 # its source (FP32) weights, <= budget
         "shared": [],                             # names of its weights other partitions hold too
         "inputs":  [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 224, 224],
                      "from": "input"}],           # "input": a model input; k: partition k's output
         "outputs": [{"name": "layer2.0.relu", "dtype": "float32", "shape": [...],
                      "to": [1], "output": false}]}],   # partitions reading it; a model output?
      "cuts": [{"after": 0, "tensors": ["layer2.0.relu"], "bytes": 1605632}]
    }

``cuts[k]`` lists the activations alive between partition k and k+1 and their size
at batch 1 (symbolic dims counted as 1).  Every tensor crossing a cut is an output
of the partition that makes it and an input of each later partition that reads it;
the runner keeps it only until its last reader has run.

The manifest's ``model`` names the first partition's entry, so a reader that does
not know partitions cannot mistake the bundle for a whole model: format version 2
already makes it refuse the bundle.

Only the standard library is used here: bundles are validated on the device.
"""

from .errors import BundleError
from .tensors import TensorSpec

# The bundle format version that introduced partitions.
SHARDED_FORMAT_VERSION = 2

_KEYS = {"budget_bytes", "weight_bytes", "shared_bytes", "activation_bytes", "planner", "items",
         "cuts"}
_ITEM_KEYS = {"name", "model", "files", "nodes", "first_node", "last_node", "weight_bytes",
              "shared", "inputs", "outputs"}


class Partition(object):
    """One partition as the runner needs it.

    Attributes:
        index: its position in run order.
        name: ``p0``, ``p1`` ...
        model: the member name of its entry file.
        files: every member it needs.
        weight_bytes: its source weights (what the plan checked against the budget).
        inputs / outputs: lists of TensorSpec.
        sources: dict input name -> ``"input"`` or the index of the partition making it.
        readers: dict output name -> list of indices of later partitions reading it.
        model_outputs: names of its outputs that are outputs of the whole model.
    """

    def __init__(self, index, item):
        self.index = index
        self.name = item["name"]
        self.model = item["model"]
        self.files = list(item["files"])
        self.weight_bytes = item["weight_bytes"]
        self.nodes = item["nodes"]
        self.inputs = [TensorSpec.from_dict(d) for d in item["inputs"]]
        self.outputs = [TensorSpec.from_dict(d) for d in item["outputs"]]
        self.sources = dict((d["name"], d["from"]) for d in item["inputs"])
        self.readers = dict((d["name"], list(d["to"])) for d in item["outputs"])
        self.model_outputs = [d["name"] for d in item["outputs"] if d["output"]]

    def __repr__(self):
        return "<Partition {} {} ({} weight bytes)>".format(self.index, self.model,
                                                            self.weight_bytes)


def _whole(value, minimum=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _bad(where, what, hint="Rebuild it with `edgeinfer shard` or `edgeinfer convert`."):
    raise BundleError("Bundle {}: {}.".format(where, what), hint)


def validate_partitions(manifest, where="(in memory)"):
    """Check a manifest's ``partitions`` record against the schema and the file list.

    Checks the keys and types, that every partition's files are in the bundle,
    that each input comes from a model input or an earlier partition's output, that
    every model output is made by some partition, and that ``model`` names the
    first partition.

    Args:
        manifest: the whole manifest (its ``files``, ``inputs``, ``outputs`` and
            ``format_version`` are read too).
        where: how to name the bundle in messages (default ``"(in memory)"``).

    Returns:
        list of :class:`Partition`, in run order (empty when not sharded).

    Raises:
        BundleError: a malformed record, a partition file missing from the bundle,
            or an input nothing provides.
    """
    record = manifest.get("partitions")
    if record is None:
        return []
    if not isinstance(record, dict):
        _bad(where, "manifest 'partitions' is not an object")
    if manifest.get("format_version", 0) < SHARDED_FORMAT_VERSION:
        _bad(where, "manifest has partitions but format version {} (partitions need {})".format(
            manifest.get("format_version"), SHARDED_FORMAT_VERSION))
    unknown = sorted(set(record) - _KEYS)
    missing = sorted(k for k in ("budget_bytes", "items") if k not in record)
    if unknown or missing:
        _bad(where, "manifest 'partitions' has {}".format("; ".join(
            p for p in ("unknown keys: " + ", ".join(unknown) if unknown else "",
                        "no " + ", ".join(missing) if missing else "") if p)))
    if not _whole(record["budget_bytes"], 1):
        _bad(where, "partition budget {!r} is not a whole number of bytes > 0".format(
            record["budget_bytes"]))
    items = record["items"]
    if not isinstance(items, list) or not items:
        _bad(where, "manifest 'partitions' lists no partitions")
    listed = set(e["name"] for e in manifest["files"])
    model_inputs = set(d["name"] for d in manifest["inputs"])
    made = {}  # tensor name -> partition index that outputs it
    parts = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            _bad(where, "partition {} is not an object".format(index))
        unknown = sorted(set(item) - _ITEM_KEYS)
        missing = sorted(k for k in ("name", "model", "files", "weight_bytes", "inputs",
                                     "outputs", "nodes") if k not in item)
        if unknown or missing:
            _bad(where, "partition {} has {}".format(index, "; ".join(
                p for p in ("unknown keys: " + ", ".join(unknown) if unknown else "",
                            "no " + ", ".join(missing) if missing else "") if p)))
        name = item["name"]
        files = item["files"]
        if not isinstance(files, list) or item["model"] not in files:
            _bad(where, "partition {!r} does not list its model file among its files".format(name))
        for member in files:
            if member not in listed:
                _bad(where, "partition {!r} names file {!r}, which the bundle does not "
                     "hold".format(name, member), "The bundle is incomplete; copy it again "
                     "or rebuild it with `edgeinfer shard`.")
        if not _whole(item["weight_bytes"]) or not _whole(item["nodes"], 1):
            _bad(where, "partition {!r} has a malformed weight_bytes or nodes".format(name))
        try:
            part = Partition(index, item)
        except (KeyError, TypeError) as exc:
            _bad(where, "partition {!r} has a malformed input or output ({})".format(name, exc))
        for spec in part.inputs:
            source = part.sources[spec.name]
            if source == "input":
                ok = spec.name in model_inputs
            else:
                ok = _whole(source) and made.get(spec.name) == source
            if not ok:
                _bad(where, "partition {!r} reads {!r} from {!r}, which does not make it".format(
                    name, spec.name, source))
        for spec in part.outputs:
            made.setdefault(spec.name, index)
        parts.append(part)
    for spec in manifest["outputs"]:
        if not any(spec["name"] in p.model_outputs for p in parts):
            _bad(where, "no partition makes the model output {!r}".format(spec["name"]))
    if manifest.get("model") != parts[0].model:
        _bad(where, "manifest 'model' {!r} is not the first partition's {!r}".format(
            manifest.get("model"), parts[0].model))
    return parts
