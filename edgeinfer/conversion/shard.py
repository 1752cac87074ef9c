"""Sharding (issue 7), workstation side: plan partitions that fit a memory budget, write
them, and convert them into one sharded bundle.

The planner walks the ONNX graph in topological order and cuts it into
consecutive partitions whose weights each fit the budget.  A cut between two nodes
is valid when every tensor alive across it is a typed numeric tensor: that tensor
becomes an output of the partition making it and an input of each later partition
reading it.  Initializers (and Constant nodes) go with every partition that reads
them: a weight read on both sides of a cut is duplicated and counted in each.
Among valid plans it takes the fewest partitions, then the fewest activation bytes
crossing the cuts (a dynamic programme over cut positions, O(nodes)).  If/Loop/Scan
nodes are single nodes here, so their subgraphs stay whole; the outer tensors their
bodies read count as their inputs.

Models over 2 GB keep their weights in external data files.  The model is read
with ``load_external_data=False`` and each partition is written as one
self-contained ONNX file by streaming its weights from the data files in chunks:
no more than a chunk of weights is in memory at a time (:func:`write_partition`).

:func:`convert_sharded` is what ``edgeinfer convert`` runs when a target profile's
memory budget is exceeded, and what ``edgeinfer shard`` runs: each partition goes
through the target's recipe as a model of its own, INT8 calibration data flowing
through the FP32 partitions before it, and the sharded result is checked against
the FP32 partitions chained (so the whole model is never loaded at once).
"""

import datetime
import heapq
import logging
import os
import shutil
import tempfile
from collections import deque
from typing import List, NamedTuple

import numpy as np

from ..errors import ConversionError, ModelError, UsageError
from ..lazy import require
from ..partitions import SHARDED_FORMAT_VERSION
from ..tensors import ONNX_TO_NUMPY, TensorSpec, fixed_batch
from .graph import _subgraphs

log = logging.getLogger("edgeinfer.conversion")

MB = 1024 * 1024
# One partition is one ONNX file with its weights inside, so it must stay under
# protobuf's 2 GiB message limit; the margin leaves room for the graph itself.
MAX_PARTITION_BYTES = 2 ** 31 - 64 * MB
# Weights are copied from external data files this many bytes at a time.
CHUNK_BYTES = 4 * MB

# Bytes per element of every ONNX tensor type (strings are sized by their data).
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8,
             14: 8, 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
OBJECTIVE = "fewest partitions, then fewest activation bytes crossing the cuts"


# -- sizes -----------------------------------------------------------------------------------

def _external_info(tensor):
    return dict((e.key, e.value) for e in tensor.external_data)


def tensor_bytes(tensor):
    """Bytes of a TensorProto's data, without reading external data.

    External tensors are sized by their ``length`` entry (else by their dims);
    inline ones by their raw data, else by dims x element size.
    """
    if tensor.data_location == _EXTERNAL:
        info = _external_info(tensor)
        if "length" in info:
            return int(info["length"])
    elif tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    if tensor.data_type == 8:  # strings: their bytes
        return sum(len(s) for s in tensor.string_data)
    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return count * _ITEMSIZE.get(tensor.data_type, 4)


def _attribute_tensors(node):
    """Every TensorProto a node carries in its attributes, subgraphs included."""
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        for tensor in attr.tensors:
            yield tensor
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
    for graph in _subgraphs(node):
        for tensor in graph.initializer:
            yield tensor
        for inner in graph.node:
            for tensor in _attribute_tensors(inner):
                yield tensor


def _outer_names(graph):
    """Names a subgraph reads from the scopes around it (implicit inputs of its node)."""
    defined = set(v.name for v in graph.input) | set(t.name for t in graph.initializer)
    read = []
    for node in graph.node:
        for name in list(node.input) + [n for g in _subgraphs(node) for n in _outer_names(g)]:
            if name and name not in defined and name not in read:
                read.append(name)
        defined.update(node.output)
    return read


def _describe(node, index):
    return "{!r} ({})".format(node.name or "#{}".format(index), node.op_type)


def mib_text(num):
    """Bytes as MiB for messages: one decimal from 1 MiB, three significant digits below."""
    value = num / float(MB)
    return "{:.1f} MiB".format(value) if value >= 1 else "{:.3g} MiB".format(value)


def _mib_up(num):
    """Bytes as a --budget-mb value that holds them (rounded up, three digits)."""
    value = num / float(MB)
    digits = max(0, 2 - int(np.floor(np.log10(value)))) if value > 0 else 0
    scale = 10 ** digits
    text = "{:.{}f}".format(np.ceil(value * scale) / scale, digits)
    return text.rstrip("0").rstrip(".") if "." in text else text


# -- the graph, analysed ---------------------------------------------------------------------

class Graph(object):
    """The facts the planner needs about a model's main graph.

    Attributes:
        model: the ``onnx.ModelProto`` (external data not loaded).
        nodes: the nodes in topological order (Constant nodes without inputs excluded:
            they are weights, see ``constants``).
        reads: per node, the names it reads (its inputs and its subgraphs' outer names).
        weights: per node, the names of the initializers and constants it reads.
        own_bytes: per node, the bytes of tensors inside its attributes and subgraphs.
        sizes: dict weight name -> bytes.
        initializers: dict name -> TensorProto.
        constants: dict output name -> Constant NodeProto.
        inputs / outputs: the model's input names (initializers excluded) and output names.
        types: dict tensor name -> TypeProto (inferred where the model does not say).
    """

    def __init__(self, model):
        onnx = require("onnx", "sharding")
        graph = model.graph
        self.model = model
        self.initializers = dict((t.name, t) for t in graph.initializer)
        self.sizes = dict((name, tensor_bytes(t)) for name, t in self.initializers.items())
        self.constants = {}
        nodes = []
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and not node.input:
                for out in node.output:
                    self.constants[out] = node
                    self.sizes[out] = sum(tensor_bytes(t) for t in _attribute_tensors(node))
            else:
                nodes.append(node)
        self.inputs = [v.name for v in graph.input if v.name not in self.initializers]
        self.outputs = [v.name for v in graph.output]
        self._check_names(graph, nodes)
        reads = [self._reads(node) for node in nodes]
        order = self._topological(nodes, reads)
        self.nodes = [nodes[i] for i in order]
        self.reads = [reads[i] for i in order]
        self.weights = [[n for n in r if n in self.sizes] for r in self.reads]
        self.own_bytes = [sum(tensor_bytes(t) for t in _attribute_tensors(n)) for n in self.nodes]
        self.producer = {}
        for index, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = index
        for name in self.outputs:
            if name not in self.producer:
                raise ModelError("Model output {!r} is not made by any node (it is a model input "
                                 "or a weight passed through).".format(name),
                                 "edgeinfer shards graphs whose outputs are computed; remove the "
                                 "pass-through output.")
        self.types = self._types(onnx)

    def _check_names(self, graph, nodes):
        made = set(self.inputs) | set(self.initializers) | set(self.constants)
        for index, node in enumerate(nodes):
            for out in node.output:
                if out and out in made:
                    raise ModelError("Tensor {!r} is made twice (again by node {}).".format(
                        out, _describe(node, index)),
                        "An ONNX graph names each tensor once; fix the export.")
                made.add(out)
        for index, node in enumerate(nodes):
            for name in self._reads(node):
                if name not in made:
                    raise ModelError(
                        "Node {} reads {!r}, which no node, model input or initializer "
                        "provides (a dangling input).".format(_describe(node, index), name),
                        "Fix the export, or add {!r} as a model input.".format(name))
        for name in self.outputs:
            if name not in made:
                raise ModelError("Model output {!r} is made by no node (dangling).".format(name),
                                 "Fix the export.")

    @staticmethod
    def _reads(node):
        names = []
        for name in list(node.input) + [n for g in _subgraphs(node) for n in _outer_names(g)]:
            if name and name not in names:
                names.append(name)
        return names

    @staticmethod
    def _topological(nodes, reads):
        """Kahn's order, ties broken by file order (so a sorted graph keeps its order)."""
        producer = {}
        for index, node in enumerate(nodes):
            for out in node.output:
                if out:
                    producer[out] = index
        waiting = [0] * len(nodes)
        users = [[] for _ in nodes]
        for index, names in enumerate(reads):
            for source in set(producer[n] for n in names if n in producer):
                waiting[index] += 1
                users[source].append(index)
        ready = [i for i, count in enumerate(waiting) if count == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            index = heapq.heappop(ready)
            order.append(index)
            for user in users[index]:
                waiting[user] -= 1
                if waiting[user] == 0:
                    heapq.heappush(ready, user)
        if len(order) != len(nodes):
            stuck = [i for i in range(len(nodes)) if waiting[i] > 0]
            shown = ", ".join(_describe(nodes[i], i) for i in stuck[:6])
            raise ModelError("The graph has a cycle: nodes {}{} wait on each other's "
                             "outputs.".format(shown, " and {} more".format(len(stuck) - 6)
                                               if len(stuck) > 6 else ""),
                             "An ONNX graph must be acyclic; fix the export.")
        return order

    def _types(self, onnx):
        """Tensor types, from the model and ONNX shape inference on a weightless copy."""
        skeleton = onnx.ModelProto()
        for field in ("ir_version", "producer_name", "domain", "model_version"):
            setattr(skeleton, field, getattr(self.model, field))
        skeleton.opset_import.extend(self.model.opset_import)
        skeleton.functions.extend(self.model.functions)
        graph = skeleton.graph
        source = self.model.graph
        graph.name = source.name
        graph.node.extend(source.node)
        graph.input.extend(source.input)
        graph.output.extend(source.output)
        graph.value_info.extend(source.value_info)
        for tensor in source.initializer:
            if tensor.data_location == _EXTERNAL or tensor_bytes(tensor) > 64 * 1024:
                # Shape inference needs a big weight's type and dims, never its values.
                light = graph.initializer.add()
                light.name, light.data_type = tensor.name, tensor.data_type
                light.dims.extend(tensor.dims)
            else:
                graph.initializer.add().CopyFrom(tensor)
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
        except Exception as exc:  # partial types are still usable: cuts need only some
            log.info("shape inference failed (%s); using the model's own types",
                     str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            inferred = skeleton
        types = {}
        for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(
                inferred.graph.output):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                types.setdefault(info.name, info.type)
        return types

    def spec(self, name):
        """TensorSpec of a tensor, or None when its type is unknown or not numeric."""
        kind = self.types.get(name)
        if kind is None:
            return None
        tensor = kind.tensor_type
        dtype = ONNX_TO_NUMPY.get(tensor.elem_type)
        if dtype is None:
            return None
        if not tensor.HasField("shape"):
            return TensorSpec(name, dtype, ())  # rank unknown: see activation_bytes
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None)
                     for d in tensor.shape.dim)
        return TensorSpec(name, dtype, dims)

    def activation_bytes(self, name):
        """Bytes of an activation at batch 1 (symbolic dims as 1); None when unknown."""
        kind = self.types.get(name)
        if kind is None or not kind.tensor_type.HasField("shape"):
            return None
        count = 1
        for dim in kind.tensor_type.shape.dim:
            count *= int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else 1
        return count * _ITEMSIZE.get(kind.tensor_type.elem_type, 4)

    @property
    def weight_bytes(self):
        """Bytes of every weight the model holds (each counted once)."""
        return sum(self.sizes.values()) + sum(self.own_bytes)

    def largest_activation_set(self):
        """Most activation bytes alive at once at batch 1, walking the nodes in order.

        A node's inputs and outputs are alive together while it runs; a tensor dies
        after its last reader (model outputs live to the end).  Tensors of unknown
        size count 0.  What a runtime allocates for activations is at least this.
        """
        last = {}
        for index, names in enumerate(self.reads):
            for name in names:
                last[name] = index
        for name in self.outputs:
            last[name] = len(self.nodes)
        alive = dict((name, self.activation_bytes(name) or 0) for name in self.inputs
                     if name in last)
        total = sum(alive.values())
        peak = total
        for index, node in enumerate(self.nodes):
            for name in node.output:
                if name and name not in alive:
                    alive[name] = self.activation_bytes(name) or 0
                    total += alive[name]
            peak = max(peak, total)
            for name in [n for n in alive if last.get(n, -1) <= index]:
                total -= alive.pop(name)
        return peak


# -- the plan --------------------------------------------------------------------------------

class PlannedPartition(NamedTuple):
    """One partition of a plan.

    Attributes:
        name: ``p0``, ``p1`` ...
        start, stop: its nodes are ``graph.nodes[start:stop]``.
        weights: names of the initializers and constants it holds.
        weight_bytes: their bytes plus its nodes' attribute tensors.
        inputs: list of (tensor name, ``"input"`` or index of the partition making it).
        outputs: list of (tensor name, indices of later partitions reading it, model output?).
        shared: names of its weights that other partitions hold too.
    """

    name: str
    start: int
    stop: int
    weights: List[str]
    weight_bytes: int
    inputs: list
    outputs: list
    shared: List[str]


class Cut(NamedTuple):
    """The activations alive between partition ``after`` and the next, at batch 1."""

    after: int
    tensors: List[str]
    bytes: int


class ShardPlan(NamedTuple):
    """Where a graph is cut.

    Attributes:
        graph: the analysed :class:`Graph`.
        budget_bytes: weights each partition may hold.
        partitions: list of :class:`PlannedPartition`, in run order.
        cuts: list of :class:`Cut`, one per boundary.
        shared_bytes: weight bytes held by more than one partition, counted once per
            extra copy.
    """

    graph: object
    budget_bytes: int
    partitions: list
    cuts: list
    shared_bytes: int

    @property
    def crossing_bytes(self):
        return sum(c.bytes for c in self.cuts)

    def record(self, items):
        """The manifest's ``partitions`` dict, given the written ``items`` (see partitions.py)."""
        return {"budget_bytes": int(self.budget_bytes), "weight_bytes": int(
            self.graph.weight_bytes), "shared_bytes": int(self.shared_bytes),
            "activation_bytes": int(self.graph.largest_activation_set()),
            "planner": {"order": "topological", "objective": OBJECTIVE},
            "items": items,
            "cuts": [{"after": c.after, "tensors": list(c.tensors), "bytes": int(c.bytes)}
                     for c in self.cuts]}


def budget_bytes_of(budget_mb, what="--budget-mb"):
    """A budget in MiB as a whole number of bytes.

    Raises:
        UsageError: not a number > 0.
    """
    if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)) or not (
            budget_mb > 0) or budget_mb != budget_mb:
        raise UsageError("{} must be a number of MiB > 0, not {!r}.".format(what, budget_mb),
                         "Give the memory the model's weights may use on the device, "
                         "e.g. {} 256.".format(what))
    return max(1, int(budget_mb * MB))


def plan_shards(graph, budget_bytes):
    """Cut ``graph`` into the fewest partitions whose weights each fit ``budget_bytes``.

    Args:
        graph: a :class:`Graph` (or an ``onnx.ModelProto``, analysed here).
        budget_bytes: weights one partition may hold (int > 0).

    Returns:
        :class:`ShardPlan`.

    Raises:
        UsageError: a budget <= 0.
        ConversionError: one node's weights alone exceed the budget (named), or no
            valid cut fits the budget.
    """
    if not isinstance(graph, Graph):
        graph = Graph(graph)
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise UsageError("The shard budget must be a whole number of bytes > 0, not {!r}.".format(
            budget_bytes), "Give the memory the model's weights may use on the device.")
    limit = min(budget_bytes, MAX_PARTITION_BYTES)
    n = len(graph.nodes)
    if n == 0:
        raise ModelError("The model has no nodes to shard.")
    lo = _windows(graph, limit, budget_bytes)
    cross, unknown, untyped = _cut_costs(graph)
    # dp[j]: the best (partitions, crossing bytes, unsized crossings) covering nodes[:j].
    inf = (float("inf"),)
    dp, prev = [inf] * (n + 1), [0] * (n + 1)
    dp[0] = (0, 0, 0)
    window = deque()  # candidate starts i, their keys increasing
    keys = [None] * (n + 1)
    added = 0
    for j in range(1, n + 1):
        while added < j:
            i = added
            added += 1
            if dp[i] == inf or (i > 0 and untyped[i] is not None):
                continue
            keys[i] = (dp[i][0] + 1, dp[i][1] + cross[i], dp[i][2] + unknown[i])
            while window and keys[window[-1]] >= keys[i]:
                window.pop()
            window.append(i)
        while window and window[0] < lo[j]:
            window.popleft()
        if window:
            dp[j], prev[j] = keys[window[0]], window[0]
    if dp[n] == inf:
        blocked = [untyped[i] for i in range(1, n) if untyped[i] is not None]
        raise ConversionError(
            "No valid cut fits the {} budget: the cuts it needs would pass tensors "
            "of unknown or non-numeric type{}.".format(
                mib_text(budget_bytes), " (e.g. {!r})".format(blocked[0]) if blocked else ""),
            "Give the model's tensors types (run onnx shape inference on it), or raise the "
            "budget.")
    bounds, j = [], n
    while j > 0:
        bounds.append((prev[j], j))
        j = prev[j]
    return _assemble(graph, budget_bytes, bounds[::-1], cross)


def _windows(graph, limit, budget_bytes):
    """lo[j]: the first node a partition ending before node j may start at (two pointers)."""
    n = len(graph.nodes)
    lo = [0] * (n + 1)
    held, total, start = {}, 0, 0
    for j in range(1, n + 1):
        node = j - 1
        total += graph.own_bytes[node]
        for name in graph.weights[node]:
            held[name] = held.get(name, 0) + 1
            if held[name] == 1:
                total += graph.sizes[name]
        while total > limit and start < node:
            total -= graph.own_bytes[start]
            for name in graph.weights[start]:
                held[name] -= 1
                if held[name] == 0:
                    total -= graph.sizes[name]
            start += 1
        if total > limit:
            _too_big(graph, node, total, budget_bytes, limit)
        lo[j] = start
    return lo


def _too_big(graph, index, weight, budget_bytes, limit):
    node = graph.nodes[index]
    if limit < budget_bytes:
        raise ConversionError(
            "Node {} holds {} of weights, more than one ONNX file can carry ({}).".format(
                _describe(node, index), mib_text(weight), mib_text(limit)),
            "edgeinfer cannot shard a single op this large.")
    raise ConversionError(
        "No plan fits the {} budget: node {} alone holds {} of weights.".format(
            mib_text(budget_bytes), _describe(node, index), mib_text(weight)),
        "Raise the budget to at least that (--budget-mb {}).".format(_mib_up(weight)))


def _lifetimes(graph):
    """dict activation name -> (index of its producer, index of its last reader)."""
    last = {}
    for index, names in enumerate(graph.reads):
        for name in names:
            if name in graph.producer:
                last[name] = index
    return dict((name, (graph.producer[name], end)) for name, end in last.items())


def _cut_costs(graph):
    """Per cut position i (between nodes i-1 and i): crossing bytes, crossings of unknown
    size, and the name of one crossing tensor that cannot cross (None if all can)."""
    n = len(graph.nodes)
    delta = [0] * (n + 2)
    delta_unknown = [0] * (n + 2)
    bad_from = [[] for _ in range(n + 2)]
    for name, (made, end) in _lifetimes(graph).items():
        if end <= made:
            continue
        size = graph.activation_bytes(name)
        if graph.spec(name) is None:
            bad_from[made + 1].append((end + 1, name))
        if size is None:
            delta_unknown[made + 1] += 1
            delta_unknown[end + 1] -= 1
        else:
            delta[made + 1] += size
            delta[end + 1] -= size
    cross, unknown, untyped = [0] * (n + 1), [0] * (n + 1), [None] * (n + 1)
    running = running_unknown = 0
    open_bad = []  # heap of (position where it stops crossing, name)
    for i in range(n + 1):
        running += delta[i]
        running_unknown += delta_unknown[i]
        for item in bad_from[i]:
            heapq.heappush(open_bad, item)
        while open_bad and open_bad[0][0] <= i:
            heapq.heappop(open_bad)
        cross[i], unknown[i] = running, running_unknown
        untyped[i] = open_bad[0][1] if open_bad else None
    return cross, unknown, untyped


def _assemble(graph, budget_bytes, bounds, cross):
    lifetimes = _lifetimes(graph)
    part_of = [0] * len(graph.nodes)
    for k, (start, stop) in enumerate(bounds):
        for i in range(start, stop):
            part_of[i] = k
    holders = {}
    partitions = []
    for k, (start, stop) in enumerate(bounds):
        weights = []
        for i in range(start, stop):
            for name in graph.weights[i]:
                if name not in weights:
                    weights.append(name)
        for name in weights:
            holders.setdefault(name, []).append(k)
        inputs, outputs = [], []
        for i in range(start, stop):
            for name in graph.reads[i]:
                if name in graph.sizes or any(name == n for n, _ in inputs):
                    continue
                made = graph.producer.get(name)
                if made is None:
                    inputs.append((name, "input"))
                elif made < start:
                    inputs.append((name, part_of[made]))
            for name in graph.nodes[i].output:
                if not name:
                    continue
                readers = sorted(set(part_of[r] for r in range(stop, len(graph.nodes))
                                     if name in graph.reads[r])) if (
                    name in lifetimes and lifetimes[name][1] >= stop) else []
                if readers or name in graph.outputs:
                    outputs.append((name, readers, name in graph.outputs))
        weight_bytes = sum(graph.sizes[n] for n in weights) + sum(graph.own_bytes[start:stop])
        partitions.append(PlannedPartition("p{}".format(k), start, stop, weights, weight_bytes,
                                           inputs, outputs, []))
    shared_bytes = 0
    for name, owners in holders.items():
        if len(owners) > 1:
            shared_bytes += graph.sizes[name] * (len(owners) - 1)
            for k in owners:
                partitions[k].shared.append(name)
    cuts = []
    for k, (start, stop) in enumerate(bounds[:-1]):
        alive = [name for name, (made, end) in sorted(lifetimes.items(), key=lambda x: x[1])
                 if made < stop <= end]
        cuts.append(Cut(k, alive, cross[stop]))
    return ShardPlan(graph, budget_bytes, partitions, cuts, shared_bytes)


# -- writing partitions ----------------------------------------------------------------------

def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, length):
    """A length-delimited protobuf field's key and length prefix."""
    return _varint((number << 3) | 2) + _varint(length)


def external_path(tensor, base_dir):
    """The data file of an external tensor, refused when it points outside ``base_dir``.

    Raises:
        ModelError: a missing, absolute or escaping location, or a missing file.
    """
    location = _external_info(tensor).get("location", "")
    if not location or os.path.isabs(location) or ".." in location.replace("\\", "/").split("/"):
        raise ModelError("Weight {!r} points to external data {!r} outside the model's "
                         "folder.".format(tensor.name, location),
                         "External data files must sit beside the .onnx file (relative paths).")
    path = os.path.join(base_dir, location)
    if not os.path.isfile(path):
        raise ModelError("Weight {!r}: external data file {!r} does not exist.".format(
            tensor.name, path), "Copy the model's data files beside the .onnx file.")
    return path


def _external_span(tensor, base_dir):
    path = external_path(tensor, base_dir)
    info = _external_info(tensor)
    offset = int(info.get("offset", 0))
    length = tensor_bytes(tensor)
    if offset + length > os.path.getsize(path):
        raise ModelError("Weight {!r}: its external data ({} bytes at offset {}) runs past the "
                         "end of {!r}.".format(tensor.name, length, offset, path),
                         "The data file is truncated; export the model again.")
    return path, offset, length


def _copy_span(path, offset, length, out):
    """Copy bytes from a data file in chunks; runs of zeros become holes (sparse files)."""
    zeros = bytes(CHUNK_BYTES)
    with open(path, "rb") as src:
        src.seek(offset)
        left = length
        while left:
            chunk = src.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise ModelError("{!r} ended while reading weights from it.".format(path))
            left -= len(chunk)
            if chunk == zeros[:len(chunk)]:
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)


def _inline_node(onnx, node, base_dir):
    """A copy of a node whose attribute tensors hold their data (loaded from external files)."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for tensor in _attribute_tensors(copy):
        if tensor.data_location == _EXTERNAL:
            path, offset, length = _external_span(tensor, base_dir)
            with open(path, "rb") as handle:
                handle.seek(offset)
                tensor.raw_data = handle.read(length)
            del tensor.external_data[:]
            tensor.data_location = 0
    return copy


def _partition_graph(onnx, plan, index, base_dir):
    """A partition's ModelProto head (no graph) and its GraphProto without initializers."""
    graph, part = plan.graph, plan.partitions[index]
    model = graph.model
    head = onnx.ModelProto()
    head.ir_version = model.ir_version
    head.opset_import.extend(model.opset_import)
    head.functions.extend(model.functions)
    head.producer_name = "edgeinfer.shard"
    head.doc_string = "partition {} of {} of {}".format(index + 1, len(plan.partitions),
                                                       model.graph.name or "a model")
    body = onnx.GraphProto()
    body.name = "{}-{}".format(model.graph.name or "model", part.name)
    for name in part.weights:
        if name in graph.constants:
            body.node.add().CopyFrom(_inline_node(onnx, graph.constants[name], base_dir))
    for node in graph.nodes[part.start:part.stop]:
        body.node.add().CopyFrom(_inline_node(onnx, node, base_dir))
    for name, _ in part.inputs:
        _value_info(body.input.add(), graph, name)
    outputs = set()
    for name, _, _ in part.outputs:
        _value_info(body.output.add(), graph, name)
        outputs.add(name)
    for node in graph.nodes[part.start:part.stop]:
        for name in node.output:
            if name and name not in outputs and name in graph.types:
                _value_info(body.value_info.add(), graph, name)
    initializers = [graph.initializers[n] for n in part.weights if n in graph.initializers]
    return head, body, initializers


def _light(onnx, tensor):
    """A TensorProto with the name, type and dims of ``tensor`` and no data."""
    light = onnx.TensorProto()
    light.name, light.data_type = tensor.name, tensor.data_type
    light.dims.extend(tensor.dims)
    light.doc_string = tensor.doc_string
    return light


def _atomic(path, write):
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_partition(plan, index, path, base_dir):
    """Write partition ``index`` of ``plan`` as one self-contained ONNX file (inline weights).

    The file is a ModelProto serialised by hand around its weights: the graph
    without initializers first, then each initializer as a protobuf field whose
    raw data is copied from the external data file in chunks, so memory holds at
    most one chunk of an external weight.  This is the form conversion recipes
    read.  Written under a temporary name and renamed.

    Args:
        plan: the :class:`ShardPlan`.
        index: which partition.
        path: the ``.onnx`` file to write.
        base_dir: the source model's folder (where its external data files are).

    Returns:
        path
    """
    onnx = require("onnx", "sharding")
    head, body, initializers = _partition_graph(onnx, plan, index, base_dir)
    fields = []  # (content length, header bytes, external span or None)
    for tensor in initializers:
        if tensor.data_location == _EXTERNAL:
            span = _external_span(tensor, base_dir)
            header = _light(onnx, tensor).SerializeToString() + _field(9, span[2])  # raw_data
            fields.append((len(header) + span[2], header, span))
        else:
            data = tensor.SerializeToString()
            fields.append((len(data), data, None))
    body_bytes = body.SerializeToString()
    body_length = len(body_bytes) + sum(len(_field(5, size)) + size for size, _, _ in fields)

    def write(out):
        out.write(head.SerializeToString())
        out.write(_field(7, body_length))  # 7: ModelProto.graph
        out.write(body_bytes)
        for size, header, span in fields:
            out.write(_field(5, size))  # 5: GraphProto.initializer
            out.write(header)
            if span is not None:
                _copy_span(span[0], span[1], span[2], out)
        out.truncate()  # a file ending in a hole gets its full length
    return _atomic(path, write)


# ONNX Runtime maps an external tensor into memory when its offset is aligned;
# like onnx's own writer, only tensors of at least 1 MiB are aligned (64 KiB).
ALIGN_BYTES = 64 * 1024
ALIGN_FROM = 1024 * 1024


def write_partition_external(plan, index, folder, base_dir, entry="model.onnx", threshold=1024):
    """Write partition ``index`` in device layout: ``entry`` (the graph) and
    ``entry + ".data"`` (weights of ``threshold`` bytes or more), streamed.

    Weights are copied to the data file in chunks (runs of zeros become holes), so
    memory holds one chunk, and large ones are 64 KiB-aligned so ONNX Runtime maps
    them instead of copying them when it loads the model from its path.

    Returns:
        dict member name -> path: ``{entry: ..., entry + ".data": ...}`` (no data
        file when every weight is small).
    """
    onnx = require("onnx", "sharding")
    numpy_helper = require("onnx.numpy_helper", "sharding")
    head, body, initializers = _partition_graph(onnx, plan, index, base_dir)
    data_name = entry + ".data"
    data_path = os.path.join(folder, data_name)
    os.makedirs(folder, exist_ok=True)
    wrote = []

    def write_data(out):
        for tensor in initializers:
            size = tensor_bytes(tensor)
            if size < threshold or tensor.data_type == 8:  # small, or strings: inline
                if tensor.data_location == _EXTERNAL:
                    path, offset, length = _external_span(tensor, base_dir)
                    inline = _light(onnx, tensor)
                    with open(path, "rb") as handle:
                        handle.seek(offset)
                        inline.raw_data = handle.read(length)
                    body.initializer.add().CopyFrom(inline)
                else:
                    body.initializer.add().CopyFrom(tensor)
                continue
            offset = out.tell()
            if size >= ALIGN_FROM and offset % ALIGN_BYTES:
                offset += ALIGN_BYTES - offset % ALIGN_BYTES
                out.seek(offset)
            if tensor.data_location == _EXTERNAL:
                _copy_span(*_external_span(tensor, base_dir), out=out)
            else:
                out.write(tensor.raw_data if tensor.HasField("raw_data") else
                          numpy_helper.to_array(tensor).tobytes())
            light = body.initializer.add()
            light.CopyFrom(_light(onnx, tensor))
            light.data_location = _EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)),
                               ("length", str(size))):
                item = light.external_data.add()
                item.key, item.value = key, value
            wrote.append(tensor.name)
        out.truncate()
    _atomic(data_path, write_data)
    head.graph.CopyFrom(body)
    path = _atomic(os.path.join(folder, entry), lambda out: out.write(head.SerializeToString()))
    if not wrote:
        os.unlink(data_path)
        return {entry: path}
    return {entry: path, data_name: data_path}


def _value_info(info, graph, name):
    info.name = name
    kind = graph.types.get(name)
    if kind is None:
        raise ConversionError("Tensor {!r} crosses a cut but its type is unknown.".format(name),
                              "Please report it with --debug output.")
    info.type.CopyFrom(kind)


def items_for(plan, files):
    """The manifest's partition items for a plan whose partitions became ``files``.

    Args:
        plan: the :class:`ShardPlan`.
        files: per partition, (entry member name, list of member names).
    """
    graph = plan.graph
    items = []
    for part, (entry, members) in zip(plan.partitions, files):
        nodes = graph.nodes[part.start:part.stop]

        def spec(name):
            return graph.spec(name).to_dict()
        items.append({
            "name": part.name, "model": entry, "files": list(members),
            "nodes": len(nodes), "first_node": nodes[0].name or nodes[0].op_type,
            "last_node": nodes[-1].name or nodes[-1].op_type,
            "weight_bytes": int(part.weight_bytes), "shared": list(part.shared),
            "inputs": [dict(spec(name), **{"from": source}) for name, source in part.inputs],
            "outputs": [dict(spec(name), to=readers, output=flag)
                        for name, readers, flag in part.outputs]})
    return items


# -- reading the source lazily ---------------------------------------------------------------

def read_model(path):
    """Load an ONNX model's graph without its external data.

    Raises:
        ModelError: missing, a folder, unreadable, not ONNX, or holding no graph.
    """
    from .source import read_onnx
    return read_onnx(path, load_external_data=False)


def model_weight_bytes(path):
    """Bytes of a model's weights, reading only its graph (external data left on disk)."""
    model = read_model(path)
    return sum(tensor_bytes(t) for t in model.graph.initializer) + sum(
        tensor_bytes(t) for n in model.graph.node for t in _attribute_tensors(n))


def shard_budget(model_path, profile, budget_mb):
    """The budget to shard with, in bytes, or None when the model is not to be sharded.

    An explicit ``budget_mb`` always shards (``edgeinfer shard``); otherwise a
    model is sharded when its weights exceed the profile's ``memory_mb``.  The
    budget counts FP32 source weights, so FP16 and INT8 partitions come out
    smaller than it.

    Raises:
        UsageError: ``budget_mb`` <= 0.
    """
    if budget_mb is not None:
        return budget_bytes_of(budget_mb)
    if not getattr(profile, "memory_mb", None):
        return None
    limit = int(profile.memory_mb) * MB
    # The file sizes bound the weights from above: a model that fits is not parsed here.
    try:
        on_disk = os.path.getsize(model_path)
    except OSError:
        return None  # the source loader names the problem
    if on_disk <= limit and not _has_external_data(model_path):
        return None
    if model_weight_bytes(model_path) <= limit:
        return None
    log.info("the model's weights exceed %s's %d MiB: sharding", profile.name, profile.memory_mb)
    return limit


def _has_external_data(path):
    # ONNX's external data files sit beside the model; a model over its own file
    # size in weights must have some.  Only a cheap hint: a parse decides.
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.basename(path)
    return any(name != stem and name.startswith(os.path.splitext(stem)[0])
               for name in os.listdir(folder))


# -- activations between partitions (workstation side) ---------------------------------------

class Activations(object):
    """Per batch, the tensors alive between partitions, kept in ``.npy`` files.

    Calibration and validation run every batch through one partition at a time;
    keeping the batches' activations on disk (memory-mapped when read) bounds
    memory by one batch, whatever the number of samples.
    """

    def __init__(self, folder):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self._ids = {}
        self.batches = []  # per batch: dict name -> file
        self.sizes = []    # per batch: its number of samples

    def add_batch(self, feeds):
        first = next(iter(feeds.values()))
        self.sizes.append(int(np.shape(first)[0]) if np.ndim(first) else 1)
        self.batches.append({})
        self.put(len(self.batches) - 1, feeds)

    def put(self, batch, arrays):
        for name, value in arrays.items():
            ident = self._ids.setdefault(name, len(self._ids))
            path = os.path.join(self.folder, "b{}-t{}.npy".format(batch, ident))
            np.save(path, np.asarray(value), allow_pickle=False)
            self.batches[batch][name] = path

    def get(self, batch, names):
        return dict((n, np.load(self.batches[batch][n], allow_pickle=False)) for n in names)

    def drop(self, names):
        for files in self.batches:
            for name in names:
                path = files.pop(name, None)
                if path is not None:
                    os.unlink(path)

    def __len__(self):
        return len(self.batches)


def advance(store, plan, index, run, keep=()):
    """Run partition ``index`` over every stored batch; drop tensors no later one reads.

    Args:
        store: the :class:`Activations`.
        plan: the :class:`ShardPlan`.
        index: which partition.
        run: callable feeds -> dict outputs (the partition's runner).
        keep: names never dropped (the model outputs).
    """
    part = plan.partitions[index]
    last_reader = last_readers(plan)
    names = [name for name, _ in part.inputs]
    wanted = [name for name, _, _ in part.outputs]
    for batch in range(len(store)):
        out = run(store.get(batch, names))
        store.put(batch, dict((n, out[n]) for n in wanted))
    store.drop([n for n in names if last_reader.get(n, -1) <= index and n not in keep])


def last_readers(plan):
    last = {}
    for k, part in enumerate(plan.partitions):
        for name, _ in part.inputs:
            last[name] = k
    return last


class StoredBatches(object):
    """Calibration data for one partition: the stored activations at its inputs.

    Reads like :class:`edgeinfer.datasets.Dataset` (``len``, ``batches``,
    ``describe``, ``labels``), sample ``i`` being row ``i`` of the stored batches
    in order, so a recipe that reads single samples (NNCF) gets them too.
    """

    labels = None

    def __init__(self, store, names, description):
        self._store, self._names = store, list(names)
        self._description = description
        self._starts = np.cumsum([0] + store.sizes)

    def __len__(self):
        return int(self._starts[-1])

    def batches(self, batch_size=1, drop_last=False, indices=None):
        """Yield (feeds, None) of up to ``batch_size`` samples, in ``indices`` order."""
        indices = list(range(len(self))) if indices is None else list(indices)
        held, arrays = None, None
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            if drop_last and len(chunk) < batch_size:
                return
            rows = dict((n, []) for n in self._names)
            for index in chunk:
                batch = int(np.searchsorted(self._starts, index, side="right")) - 1
                if batch != held:
                    held, arrays = batch, self._store.get(batch, self._names)
                for n in self._names:
                    rows[n].append(arrays[n][index - self._starts[batch]])
            yield dict((n, np.stack(v)) for n, v in rows.items()), None

    def describe(self):
        return self._description


# -- the sharded conversion ------------------------------------------------------------------

def _source(path, model):
    """A SourceModel of the whole model, read without its external data."""
    from ..bundle import sha256_of
    from .source import CLASSES_KEY, PREPROCESS_KEY, SourceModel, _metadata_json, default_opset
    from .source import graph_specs
    inputs, outputs = graph_specs(model)
    if not inputs:
        raise ModelError("Model {!r} has no inputs.".format(path))
    return SourceModel(path, model, sha256_of(path), default_opset(model), inputs, outputs,
                       _metadata_json(model, PREPROCESS_KEY, path),
                       _metadata_json(model, CLASSES_KEY, path))


def _check_source(path, model, onnx):
    from .source import MIN_OPSET, default_opset
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET or opset > newest:
        raise ModelError("Model {!r} uses opset {}, which edgeinfer cannot convert here.".format(
            path, opset), "Supported opsets: {} to {}; re-export the model with one.".format(
                MIN_OPSET, newest))
    try:
        # The path, not the proto: the checker then reads a >2 GB model's graph only.
        onnx.checker.check_model(path)
    except Exception as exc:
        raise ModelError("Model {!r} is not a valid ONNX model: {}".format(
            path, str(exc).strip().splitlines()[0]), "Fix the export, then convert again.")


def _ort_local(path):
    from ..runtime.backends import LocalFiles, get_backend
    return get_backend("onnxruntime").load(LocalFiles({"model.onnx": path}, "model.onnx"))


def convert_sharded(model_path, recipe, profile, settings, budget_bytes, calibration=None,
                    eval=None, output=None, preprocess=None, name=None, overwrite=False,
                    workdir=None):
    """Plan, write, convert and validate partitions, and write one sharded bundle.

    Called by :func:`edgeinfer.conversion.convert` (which checked ``settings``).

    Args:
        model_path: the source ONNX file (external data beside it).
        recipe: the target's recipe.
        profile: the target Profile.
        settings: the conversion Settings.
        budget_bytes: weights each partition may hold.
        calibration, eval, output, preprocess, name, overwrite: as for ``convert``.
        workdir: folder for intermediate files (default None: a temporary one).

    Returns:
        the written :class:`~edgeinfer.bundle.Bundle`.

    Raises:
        UsageError, ModelError, DataError, ConversionError.
    """
    if settings.budget() is not None:
        raise UsageError("An accuracy budget cannot be combined with sharding yet.",
                         "Drop the accuracy budget, or raise the memory budget so the model "
                         "fits in one piece.")
    if recipe.backend not in SHARDED_RECIPES:
        raise ConversionError(
            "The model must be sharded for {} (its weights exceed the budget), but sharded "
            "bundles are built for {} only so far.".format(profile.name, " and ".join(
                sorted(SHARDED_RECIPES))),
            "Use --target cpu (ONNX Runtime) with `edgeinfer shard`.")
    onnx = require("onnx", "sharding")
    model = read_model(model_path)
    graph = Graph(model)  # names cycles and dangling inputs before the checker's own words
    _check_source(model_path, model, onnx)
    source = _source(model_path, model)
    from . import _check_output, default_output
    output = output or default_output(source.name, profile, settings.precision)
    _check_output(output, overwrite)
    plan = plan_shards(graph, budget_bytes)
    log.info("%d partitions (%s budget): %s", len(plan.partitions), mib_text(budget_bytes),
             ", ".join("{} {}".format(p.name, mib_text(p.weight_bytes)) for p in plan.partitions))
    own = workdir is None
    workdir = tempfile.mkdtemp(prefix="edgeinfer-shard-") if own else workdir
    os.makedirs(workdir, exist_ok=True)
    try:
        return _convert_plan(plan, model_path, recipe, profile, settings, source, calibration,
                             eval, output, preprocess, name or source.name, overwrite, workdir)
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


# Recipes whose per-partition output this module has been checked with (TensorRT's
# engine record is per bundle, not yet per partition).
SHARDED_RECIPES = ("onnxruntime", "openvino")


def _convert_plan(plan, model_path, recipe, profile, settings, source, calibration_path,
                  eval_path, output, preprocess, name, overwrite, workdir):
    from . import (_batch_size, _evaluation, _open_data, _preprocess_for, _split, _versions)
    from ..bundle import Bundle
    from ..profiles import cpu_features, machine_arch
    base_dir = os.path.dirname(os.path.abspath(model_path))
    preprocess_obj = _preprocess_for(source, preprocess)
    calibration = (_open_data(calibration_path, source.inputs, preprocess_obj, "calibration")
                   if calibration_path is not None else None)
    eval_data = (_open_data(eval_path, source.inputs, preprocess_obj, "evaluation")
                 if eval_path is not None else None)
    calib_idx, eval_idx = _split(calibration, eval_data, settings)
    notes = ["Sharded into {} partitions of at most {} of weights each ({} in all); run with "
             "shard_mode='stream' (edgeinfer run --stream) to keep at most that "
             "resident.".format(len(plan.partitions), mib_text(plan.budget_bytes),
                                mib_text(plan.graph.weight_bytes))]
    fp32_paths = []
    if settings.precision == "fp32" and recipe.backend == "onnxruntime":
        # FP32 for ONNX Runtime ships the source's own nodes and weights, streamed
        # straight into device layout: nothing is loaded, and ONNX Runtime optimizes
        # each partition when it loads it, as it would the recipe's output.
        results = [_fp32_partition(plan, k, os.path.join(workdir, p.name, "device"), base_dir)
                   for k, p in enumerate(plan.partitions)]
        needs_calibration = False
    else:
        for k, part in enumerate(plan.partitions):
            folder = os.path.join(workdir, part.name)
            os.makedirs(folder, exist_ok=True)
            fp32_paths.append(write_partition(plan, k, os.path.join(folder, "source.onnx"),
                                              base_dir))
        features = cpu_features() if profile.arch == machine_arch() else None
        batch = _batch_size(source.inputs, settings.batch_size)
        results, needs_calibration = _build_partitions(
            plan, fp32_paths, recipe, profile, settings, source, calibration, calib_idx,
            features, batch, workdir, notes)
    evaluation = _evaluation(source, settings, calibration, eval_data, eval_idx)
    validation = _validate(plan, model_path, fp32_paths, results, recipe, evaluation, source,
                           os.path.join(workdir, "validation"))
    files, entries = {}, []
    for part, result in zip(plan.partitions, results):
        members = dict(("partitions/{}/{}".format(part.name, member), path)
                       for member, path in result.files.items())
        files.update(members)
        entries.append(("partitions/{}/{}".format(part.name, result.entry), sorted(members)))
    items = items_for(plan, entries)
    first = results[0]
    quantization = dict(first.quantization or {})
    quantization["per_partition"] = [r.quantization for r in results]
    calibration_summary = None
    if needs_calibration:
        calibration_summary = dict(results[0].calibration or {})
        calibration_summary["per_partition"] = [r.calibration for r in results]
    manifest = {
        "format": "edgeinfer-bundle", "format_version": SHARDED_FORMAT_VERSION, "name": name,
        "created": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
        "source": {"file": os.path.basename(model_path), "sha256": source.sha256,
                   "size": os.path.getsize(model_path) + _external_size(plan, base_dir),
                   "opset": source.opset,
                   "producer": "{} {}".format(source.model.producer_name,
                                              source.model.producer_version).strip()},
        "target": {"backend": recipe.backend, "profile": profile.name,
                   "backend_version": first.backend_version,
                   "min_backend_version": max((r.min_backend_version for r in results
                                               if r.min_backend_version), default=None,
                                              key=_version_key)},
        "precision": settings.precision,
        "method": next((r.method for r in results if r.method != "none"), first.method),
        "quantization": quantization, "model": items[0]["model"],
        "inputs": [s.to_dict() for s in source.inputs],
        "outputs": [s.to_dict() for s in source.outputs],
        "preprocess": preprocess_obj.to_dict() if preprocess_obj is not None else None,
        "classes": source.classes, "partitions": plan.record(items),
        "calibration": calibration_summary, "validation": validation, "versions": _versions(),
        "notes": notes + [n for r in results for n in r.notes if n not in notes],
    }
    if not settings.deterministic:
        manifest["deterministic"] = False
    bundle = Bundle.write(output, manifest, files, overwrite=overwrite)
    log.info("wrote %s (%d bytes, %d partitions)", output, os.path.getsize(output),
             len(plan.partitions))
    return bundle


def _fp32_partition(plan, index, folder, base_dir):
    """An FP32 partition for ONNX Runtime: the source's nodes and weights in device layout."""
    from .ort import min_ort_version
    from .recipe import Result
    from .source import default_opset
    files = write_partition_external(plan, index, folder, base_dir)
    return Result(files, "model.onnx", "none",
                  {"graph_optimization": "none offline: ONNX Runtime optimizes each partition "
                                         "when it loads it"}, None,
                  require("onnxruntime").__version__,
                  min_ort_version(default_opset(plan.graph.model), "fp32"), [])


def _whole_model_method(recipe, settings, source, calibration, features):
    """``--method auto`` decided once, on the whole graph (returns method and settings).

    Each partition must get the method the whole model would: a partition of
    only MatMuls in a conv net must not go dynamic (or weight-only) on its own,
    and static INT8 needs the calibration data to flow before the first partition
    is built.
    """
    if settings.precision != "int8" or settings.method != "auto":
        return settings.method, settings
    if recipe.backend == "onnxruntime":
        from .ort import auto_method
        method, _ = auto_method(source.model, calibration is not None)
        return method, settings
    if recipe.backend == "openvino":
        from .openvino import STATIC_KNOBS, auto_method, is_set
        method, _, model_type = auto_method(source.model, calibration is not None, features,
                                            [k for k in STATIC_KNOBS if is_set(settings, k)])
        return method, settings._replace(model_type=settings.model_type or model_type)
    return settings.method, settings


def _build_partitions(plan, fp32_paths, recipe, profile, settings, source, calibration,
                      calib_idx, features, batch, workdir, notes):
    """Each partition through the target's recipe; INT8 static calibrates partition k on
    the outputs of the FP32 partitions before it.

    Returns:
        (list of recipe Results in device layout, whether calibration was used)
    """
    from .recipe import Job
    from .source import SourceModel, default_opset, graph_specs
    method, settings = _whole_model_method(recipe, settings, source, calibration, features)
    needs_calibration = settings.precision == "int8" and method == "static"
    if needs_calibration and calibration is None:
        raise UsageError("Static INT8 needs calibration data.",
                         "Pass --calibration DIR (images, .npz or .npy files).")
    part_settings = settings._replace(method=method, measure_speed=False)
    store = None
    if needs_calibration:
        store = Activations(os.path.join(workdir, "calibration"))
        drop_last = fixed_batch(source.inputs) is not None
        for feeds, _ in calibration.batches(batch, indices=calib_idx, drop_last=drop_last):
            store.add_batch(feeds)
    results = []
    for k, part in enumerate(plan.partitions):
        folder = os.path.join(workdir, part.name)
        part_model = require("onnx").load(fp32_paths[k])
        inputs, outputs = graph_specs(part_model)
        part_source = SourceModel(fp32_paths[k], part_model, "", default_opset(part_model),
                                  inputs, outputs, None, None)
        data = None
        if store is not None:
            data = StoredBatches(store, [n for n, _ in part.inputs],
                                 "{} (activations of partitions before {})".format(
                                     calibration.describe(), part.name))
        own_settings = part_settings
        if part_settings.precision == "int8" and method == "dynamic" and recipe.backend == (
                "onnxruntime"):
            from .ort import DYNAMIC_OPS, op_counts
            if not set(op_counts(part_model)) & set(DYNAMIC_OPS):
                # Dynamic INT8 quantizes MatMul-like ops only; a partition without one
                # (LayerNorm, Softmax, residual adds) stays FP32 rather than failing.
                own_settings = part_settings._replace(precision="fp32", method="auto")
                notes.append("Partition {} has no MatMul-like op: kept FP32 (dynamic INT8 "
                             "would change nothing).".format(part.name))
        job = Job(part_source, profile, own_settings, features, data,
                  list(range(len(data))) if data is not None else None, batch,
                  os.path.join(folder, "work"), None, None)
        os.makedirs(job.workdir, exist_ok=True)
        log.info("partition %s: %d nodes, %s", part.name, part.stop - part.start,
                 mib_text(part.weight_bytes))
        results.append(device_layout(recipe.build(job), os.path.join(folder, "device")))
        del part_model, part_source
        if store is not None and k + 1 < len(plan.partitions):
            runner = _ort_local(fp32_paths[k])
            try:
                advance(store, plan, k, runner.run)
            finally:
                runner.close()
    if store is not None:
        shutil.rmtree(store.folder, ignore_errors=True)
    return results, needs_calibration


def device_layout(result, folder, threshold=1024):
    """The recipe's result with an ONNX model's weights moved to an external data file.

    Loaded from a path, ONNX Runtime maps external weights into memory instead of
    copying them (twice, while it parses) from the model's bytes: a partition then
    costs its weights once, which is what lets ``stream`` keep the process near its
    budget.  Other formats (OpenVINO's IR keeps weights apart already) are left
    as they are.

    Args:
        result: the recipe's :class:`~edgeinfer.conversion.recipe.Result`.
        folder: where the re-laid files go (created).
        threshold: tensors of at least this many bytes go to the data file (default 1024).

    Returns:
        the Result with ``files`` naming ``<entry>`` and ``<entry>.data``.
    """
    if not result.entry.endswith(".onnx") or len(result.files) != 1:
        return result
    onnx = require("onnx", "sharding")
    os.makedirs(folder, exist_ok=True)
    model = onnx.load(result.files[result.entry])
    target = os.path.join(folder, result.entry)
    data = result.entry + ".data"
    if os.path.exists(os.path.join(folder, data)):
        os.unlink(os.path.join(folder, data))  # onnx appends to an existing data file
    onnx.save_model(model, target, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=threshold)
    files = {result.entry: target}
    if os.path.exists(os.path.join(folder, data)):
        files[data] = os.path.join(folder, data)
    return result._replace(files=files)


def _version_key(text):
    return tuple(int(p) for p in str(text).split(".") if p.isdigit())


def _external_size(plan, base_dir):
    """Bytes of the external data files the model reads (each file counted once)."""
    paths = set()
    for tensor in plan.graph.initializers.values():
        if tensor.data_location == _EXTERNAL:
            paths.add(external_path(tensor, base_dir))
    return sum(os.path.getsize(p) for p in paths)


# A model whose weights fit one protobuf message is checked against itself, whole;
# a larger one is never loaded whole, even on the workstation.
WHOLE_REFERENCE_BYTES = 2 ** 31


def _validate(plan, model_path, fp32_paths, results, recipe, evaluation, source, folder):
    """The shipped partitions, chained, against FP32 on the evaluation set.

    The reference is the unsharded source model run by ONNX Runtime when its
    weights are under 2 GiB, else the FP32 partitions chained; an FP32 bundle of a
    larger model is its source's own nodes and weights, so its chain is only run
    (every partition must load and run).  Chains run one partition at a time over
    the whole set, activations kept on disk; the metrics are the unsharded
    conversion's (:class:`~edgeinfer.conversion.metrics.OutputStats`).
    """
    from ..runtime.backends import LocalFiles, get_backend
    from .metrics import OutputStats
    batches, kind, where, count, _ = evaluation
    checker = getattr(recipe, "validation_backend", None) or recipe.backend
    outputs = [s.name for s in source.outputs]
    shipped = Activations(os.path.join(folder, "shipped"))
    reference = Activations(os.path.join(folder, "reference")) if fp32_paths else None
    whole = _ort_local(model_path) if plan.graph.weight_bytes < WHOLE_REFERENCE_BYTES else None
    labels, expected = [], []
    try:
        for feeds, batch_labels in batches():
            shipped.add_batch(feeds)
            labels.append(batch_labels)
            if whole is not None:
                expected.append(whole.run(feeds, outputs))
            elif reference is not None:
                reference.add_batch(feeds)
    finally:
        if whole is not None:
            whole.close()
    for k, result in enumerate(results):
        if whole is None and reference is not None:
            fp32 = _ort_local(fp32_paths[k])
            try:
                advance(reference, plan, k, fp32.run, keep=outputs)
            finally:
                fp32.close()
        converted = get_backend(checker).load(LocalFiles(result.files, result.entry))
        try:
            advance(shipped, plan, k, converted.run, keep=outputs)
        finally:
            converted.close()
    stats = dict((n, OutputStats(n)) for n in outputs)
    compared = whole is not None or reference is not None
    for batch, batch_labels in enumerate(labels):
        if not compared:
            break
        ref = expected[batch] if whole is not None else reference.get(batch, outputs)
        out = shipped.get(batch, outputs)
        for n in outputs:
            stats[n].add(np.asarray(ref[n]), np.asarray(out[n]), batch_labels)
    for store in (shipped, reference):
        if store is not None:
            shutil.rmtree(store.folder, ignore_errors=True)
    what = ("the unsharded FP32 model" if whole is not None else
            "the FP32 partitions chained" if reference is not None else
            "none: the partitions are the source's own nodes and weights (FP32, over 2 GiB: "
            "never loaded whole); each was loaded and run")
    return {"data": kind, "where": where, "samples": count, "reference": what,
            "outputs": dict((n, s.result()) for n, s in stats.items()) if compared else {}}
