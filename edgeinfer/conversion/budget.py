"""Budget search: keep the fewest, most sensitive ops in higher precision (issue 4, req. 3).

Given a :class:`~edgeinfer.conversion.metrics.Budget`, groups of quantized ops
ranked most sensitive first (a :mod:`~edgeinfer.conversion.sensitivity` pass),
a ``build(excluded_nodes) -> model path`` and an ``evaluate(model path) ->
Results``, :func:`search` finds the shortest head of the ranking that, kept in
FP32 (or FP16: whatever ``build`` does with excluded nodes), meets the budget.

Every step builds and re-validates a real model on the evaluation set.  The
head grows by doubling (1, 2, 4, ... groups) until the budget holds, then a
binary search between the last failing and the first passing size finds the
shortest head, so a model with N groups needs about 2 log2(N) builds instead
of N.  That assumes that keeping more of the ranking in FP32 does not make the
model worse, which holds in practice; whatever the search returns was measured
to meet the budget, never inferred.  When even the whole ranking in FP32 does
not meet the budget, the loss is not from quantization and the search stops
with a :class:`~edgeinfer.errors.ConversionError` that says so.

Backend-neutral: ORT builds exclude nodes with ``nodes_to_exclude``, OpenVINO
(NNCF ``ignored_scope``) and TensorRT (per-layer precision, see
:func:`fp32_layers`) take the same list of names.
"""

import time
from typing import NamedTuple

from ..errors import ConversionError, UsageError

class Step(NamedTuple):
    """One configuration the search built and measured.

    Attributes:
        groups: how many groups of the ranking were kept in FP32.
        ops: how many ops (nodes) that is.
        achieved: the budget's quantity measured.
        ok: whether it met the budget.
        seconds: build and evaluation time.
    """

    groups: int
    ops: int
    achieved: float
    ok: bool
    seconds: float

    def to_dict(self):
        return {"groups": self.groups, "ops": self.ops, "achieved": self.achieved,
                "ok": self.ok, "seconds": round(self.seconds, 3)}


class KeptOp(NamedTuple):
    """An op kept in higher precision: its node name, op type and group."""

    name: str
    op_type: str
    group: str


class SearchResult(NamedTuple):
    """What the search chose.

    Attributes:
        budget: the :class:`~edgeinfer.conversion.metrics.Budget` asked.
        achieved: its quantity measured on the chosen model.
        kept: :class:`KeptOp` s kept in higher precision, most sensitive group first.
        groups: names of the kept groups, in the same order.
        candidates: how many groups the ranking offered.
        steps: every :class:`Step`, in the order tried.
        model: the chosen model's path (what ``build`` returned).
        results: its :class:`~edgeinfer.conversion.metrics.Results`.
        seconds: wall time of the search.
    """

    budget: object
    achieved: float
    kept: tuple
    groups: tuple
    candidates: int
    steps: tuple
    model: str
    results: object
    seconds: float

    @property
    def excluded(self):
        """Node names to keep in FP32, as ``build`` received them."""
        return [op.name for op in self.kept]

    def to_dict(self):
        """JSON-ready form (the manifest's ``accuracy_control``, see the module doc)."""
        return {"budget": self.budget.to_dict(), "what": self.budget.what,
                "achieved": self.achieved, "met": self.budget.met_by(self.achieved),
                "kept": [{"name": op.name, "op_type": op.op_type, "group": op.group}
                         for op in self.kept],
                "groups": list(self.groups), "fp32_layers": fp32_layers(self),
                "candidates": self.candidates, "steps": [s.to_dict() for s in self.steps],
                "seconds": round(self.seconds, 3)}


def _members(item):
    """(group name, node names, op types) of a ranking entry."""
    nodes = tuple(getattr(item, "nodes", ()) or ())
    if not nodes:
        raise UsageError("Ranking entry {!r} names no nodes.".format(item),
                         "Pass sensitivity layers or groups (with .nodes and .op_types).")
    types = tuple(getattr(item, "op_types", ()) or ())
    if len(types) != len(nodes):
        types = (getattr(item, "op_type", "?"),) * len(nodes)
    return getattr(item, "name", nodes[0]), nodes, types


def search(budget, ranking, build, evaluate, baseline=None):
    """Keep the fewest most-sensitive groups in FP32 so that ``budget`` holds.

    Args:
        budget: a :class:`~edgeinfer.conversion.metrics.Budget`.
        ranking: groups, most sensitive first: items with ``name``, ``nodes`` and
            ``op_types`` (:class:`~edgeinfer.conversion.sensitivity.LayerSensitivity`
            or :class:`~edgeinfer.conversion.sensitivity.Group`).
        build: callable list of node names to keep in FP32 -> model path.
        evaluate: callable model path -> :class:`~edgeinfer.conversion.metrics.Results`.
        baseline: Results of the model with nothing excluded, when already
            measured (default None: measured here).

    Returns:
        :class:`SearchResult`.

    Raises:
        ConversionError: the budget is not met even with every group in FP32.
        UsageError: the budget cannot be measured on these results (see
            :meth:`~edgeinfer.conversion.metrics.Budget.achieved`).
    """
    start = time.perf_counter()
    entries = [_members(item) for item in ranking]
    steps, tried = [], {}

    def heads(k):
        return [node for _, nodes, _ in entries[:k] for node in nodes]

    def trial(k, known=None):
        if k in tried:
            return tried[k]
        began = time.perf_counter()
        excluded = heads(k)
        path = build(excluded)
        results = known if known is not None else evaluate(path)
        ok, value = budget.check(results)
        steps.append(Step(k, len(excluded), value, ok, time.perf_counter() - began))
        tried[k] = (ok, value, path, results)
        return tried[k]

    total = len(entries)
    if trial(0, baseline)[0]:
        best = 0
    else:
        failing, size, best = 0, 1, None
        while size < total:
            if trial(size)[0]:
                best = size
                break
            failing, size = size, size * 2
        if best is None:
            ok, value, _, _ = trial(total)
            if not ok:
                raise ConversionError(_unreachable(budget, value, total, sum(
                    len(nodes) for _, nodes, _ in entries)),
                    "Check the evaluation data and preprocessing, compare the FP32 model "
                    "with the original framework, or loosen the budget.")
            best = total
        while best - failing > 1:
            middle = (failing + best) // 2
            if trial(middle)[0]:
                best = middle
            else:
                failing = middle
    ok, value, path, results = tried[best]
    kept = tuple(KeptOp(node, op, name) for name, nodes, types in entries[:best]
                 for node, op in zip(nodes, types))
    return SearchResult(budget, value, kept, tuple(name for name, _, _ in entries[:best]),
                        total, tuple(steps), path, results, time.perf_counter() - start)


def _unreachable(budget, value, groups, ops):
    comparison = "<" if budget.higher_is_better else ">"
    measured = "{} is {:.6g} {} {:.6g}".format(budget.what, value, comparison, budget.limit)
    if not groups:
        return ("The budget ({}) is not met and nothing was quantized to take back: the "
                "{}.".format(budget.describe(), measured))
    return ("Even with all {} quantized ops ({} groups) in FP32 the {}: the loss is not from "
            "quantization, so no mixed precision meets the budget ({}).".format(
                ops, groups, measured, budget.describe()))


def fp32_layers(kept):
    """The kept ops as the FP32-layer list a TensorRT build will read.

    Args:
        kept: a :class:`SearchResult` or its ``kept`` ops.

    Returns:
        list of ``{"name": node name, "op_type": op type}``, most sensitive first.
        TensorRT's ONNX parser names layers after ONNX nodes, so the TensorRT
        recipe pins the layers of these names to FP32.
    """
    ops = kept.kept if isinstance(kept, SearchResult) else kept
    return [{"name": op.name, "op_type": op.op_type} for op in ops]


def describe(result):
    """Lines for ``inspect`` and the CLI: budget, achieved, kept ops, steps.

    Args:
        result: a :class:`SearchResult` or its :meth:`~SearchResult.to_dict` form
            (what the manifest holds).
    """
    from ..report import describe_search
    return describe_search(result.to_dict() if isinstance(result, SearchResult) else result)
