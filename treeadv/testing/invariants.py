"""Invariants of a backup estimator (docs/concepts.md, "Backing advantages up the tree"), each a function that raises on violation.

Every check takes ``(estimator, tree, leaf_adv, generator)`` and runs the backup itself, so the
same checks apply to any :class:`~treeadv.BackupEstimator`. Arithmetic is float64 unless the
check is about dtypes or devices. Tolerances scale with the largest leaf advantage.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from treeadv.backup import BackupResult, backup_with_weights
from treeadv.estimators import BackupEstimator
from treeadv.tree import Tree


class InvariantViolation(AssertionError):
    """An estimator broke an invariant it claims; the message names the invariant and a node."""


Check = Callable[[BackupEstimator, Tree, Tensor, torch.Generator], None]
INVARIANTS: dict[str, Check] = {}
"""Every invariant the kit knows, by name: ``check(estimator, tree, leaf_adv, generator)`` raising
:class:`InvariantViolation`; :func:`check_estimator` runs the ones an estimator claims."""
#: float64 tolerance, relative to 1 + max |leaf advantage|.
_RTOL64 = 1e-9
#: float32-vs-float64 tolerance, same scale.
_RTOL32 = 2e-4


def _invariant(name: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        INVARIANTS[name] = check
        return check

    return register


def _scale(tree: Tree, leaf_adv: Tensor) -> float:
    leaves = leaf_adv[tree.is_leaf]
    return 1.0 + (float(leaves.abs().max()) if leaves.numel() else 0.0)


def _expect_close(name: str, got: Tensor, want: Tensor, atol: float, what: str) -> None:
    error = (got - want).abs()
    if error.numel() and not bool((error <= atol).all()):
        node = int(error.argmax())
        raise InvariantViolation(
            f"{name}: {what} differs at node {node}: got {float(got[node])!r}, want {float(want[node])!r} "
            f"(|error| {float(error[node]):.3g} > {atol:.3g})"
        )


def _children_extremes(tree: Tree, values: Tensor) -> tuple[Tensor, Tensor]:
    """``[N]`` min and max of each node's children's values (+inf / -inf for leaves)."""
    child = (tree.parent >= 0).nonzero().squeeze(1)
    low = values.new_full((tree.num_nodes,), float("inf")).scatter_reduce_(
        0, tree.parent[child], values[child], reduce="amin"
    )
    high = values.new_full((tree.num_nodes,), float("-inf")).scatter_reduce_(
        0, tree.parent[child], values[child], reduce="amax"
    )
    return low, high


def _per_parent_sum(tree: Tree, values: Tensor) -> Tensor:
    child = (tree.parent >= 0).nonzero().squeeze(1)
    return values.new_zeros(tree.num_nodes).index_add_(0, tree.parent[child], values[child])


def _run(estimator: BackupEstimator, tree: Tree, leaf_adv: Tensor) -> BackupResult:
    return backup_with_weights(tree, leaf_adv, estimator)


@_invariant("leaf_identity")
def check_leaf_identity(estimator, tree, leaf_adv, generator) -> None:
    """Leaves keep their advantage, and values stored at internal nodes are ignored."""
    result = _run(estimator, tree, leaf_adv)
    leaves = tree.is_leaf
    _expect_close("leaf_identity", result.advantage[leaves], leaf_adv[leaves], 0.0, "a leaf's advantage")
    junk = torch.randn(tree.num_nodes, generator=generator, dtype=leaf_adv.dtype) * 1e3
    other = _run(estimator, tree, torch.where(leaves, leaf_adv, junk))
    _expect_close("leaf_identity", other.advantage, result.advantage, 0.0, "the result with other internal values")


@_invariant("convex")
def check_convex(estimator, tree, leaf_adv, generator) -> None:
    """Weights are non-negative, sum to one per parent, and a parent lies within its children's range."""
    result = _run(estimator, tree, leaf_adv)
    atol = _RTOL64 * _scale(tree, leaf_adv)
    non_root = tree.parent >= 0
    if bool((result.weight[non_root] < -_RTOL64).any()):
        node = int((result.weight * non_root).argmin())
        raise InvariantViolation(f"convex: negative weight {float(result.weight[node])!r} on the edge into node {node}")
    internal = ~tree.is_leaf
    weight_sum = _per_parent_sum(tree, result.weight)
    _expect_close("convex", weight_sum[internal], torch.ones_like(weight_sum[internal]), 1e-9, "a weight sum")
    low, high = _children_extremes(tree, result.advantage)
    value = result.advantage
    outside = internal & ((value < low - atol) | (value > high + atol))
    if bool(outside.any()):
        node = int(outside.nonzero()[0])
        raise InvariantViolation(
            f"convex: node {node} has advantage {float(value[node])!r} outside its children's range "
            f"[{float(low[node])!r}, {float(high[node])!r}]"
        )


@_invariant("ess_bounds")
def check_ess_bounds(estimator, tree, leaf_adv, generator) -> None:
    """The effective sample size ``1 / sum w^2`` of each parent lies in ``[1, number of children]``."""
    result = _run(estimator, tree, leaf_adv)
    internal = ~tree.is_leaf
    ess = 1.0 / _per_parent_sum(tree, result.weight.square())
    k = tree.num_children().to(ess.dtype)
    bad = internal & ((ess < 1 - 1e-9) | (ess > k + 1e-9))
    if bool(bad.any()):
        node = int(bad.nonzero()[0])
        raise InvariantViolation(f"ess_bounds: node {node} has ESS {float(ess[node])!r} outside [1, {int(k[node])}]")


@_invariant("single_child")
def check_single_child(estimator, tree, leaf_adv, generator) -> None:
    """A parent with one child copies that child's advantage."""
    result = _run(estimator, tree, leaf_adv)
    only_child = (tree.parent >= 0) & (tree.num_children()[tree.parent.clamp(min=0)] == 1)
    child = only_child.nonzero().squeeze(1)
    atol = _RTOL64 * _scale(tree, leaf_adv)
    _expect_close(
        "single_child", result.advantage[tree.parent[child]], result.advantage[child], atol, "an only child's parent"
    )


@_invariant("permutation")
def check_permutation(estimator, tree, leaf_adv, generator) -> None:
    """Renumbering nodes (and so reordering siblings) renumbers the result and changes nothing else."""
    result = _run(estimator, tree, leaf_adv)
    order = torch.randperm(tree.num_nodes, generator=generator)
    moved = _run(estimator, tree.relabel(order), leaf_adv[order])
    atol = _RTOL64 * _scale(tree, leaf_adv)
    _expect_close("permutation", moved.advantage, result.advantage[order], atol, "the advantage after renumbering")


@_invariant("tree_locality")
def check_tree_locality(estimator, tree, leaf_adv, generator) -> None:
    """Changing one tree's leaves leaves every other tree's advantages untouched."""
    result = _run(estimator, tree, leaf_adv)
    first_tree = tree.root == tree.roots()[0]
    noise = torch.randn(tree.num_nodes, generator=generator, dtype=leaf_adv.dtype)
    changed = _run(estimator, tree, torch.where(first_tree, leaf_adv + noise, leaf_adv))
    others = ~first_tree
    atol = _RTOL64 * _scale(tree, leaf_adv)
    _expect_close("tree_locality", changed.advantage[others], result.advantage[others], atol, "another tree's advantage")


@_invariant("affine")
def check_affine(estimator, tree, leaf_adv, generator) -> None:
    """``backup(a x + b) = a backup(x) + b`` for any real ``a`` (here 2.5 and -1.5) and ``b``."""
    _check_affine_maps(estimator, tree, leaf_adv, "affine", (2.5, -1.5))


@_invariant("positive_affine")
def check_positive_affine(estimator, tree, leaf_adv, generator) -> None:
    """``backup(a x + b) = a backup(x) + b`` for ``a > 0`` (order-based estimators such as max)."""
    _check_affine_maps(estimator, tree, leaf_adv, "positive_affine", (2.5, 0.25))


def _check_affine_maps(estimator, tree, leaf_adv, name: str, scales: tuple[float, ...]) -> None:
    base = _run(estimator, tree, leaf_adv).advantage
    shift = 0.75
    for scale in scales:
        mapped = _run(estimator, tree, scale * leaf_adv + shift).advantage
        atol = _RTOL64 * _scale(tree, leaf_adv) * (abs(scale) + 1)
        _expect_close(name, mapped, scale * base + shift, atol, f"backup(a*x+b) with a={scale}")


@_invariant("logprob_shift")
def check_logprob_shift(estimator, tree, leaf_adv, generator) -> None:
    """Adding one constant to all children's log-probs of a parent changes nothing."""
    result = _run(estimator, tree, leaf_adv)
    per_parent = (torch.rand(tree.num_nodes, generator=generator, dtype=leaf_adv.dtype) - 0.5) * 100.0
    shifted = tree.clone()
    shifted.log_prob = tree.log_prob.to(leaf_adv.dtype) + torch.where(
        tree.parent >= 0, per_parent[tree.parent.clamp(min=0)], 0.0
    )
    moved = _run(estimator, shifted, leaf_adv)
    atol = 1e-7 * _scale(tree, leaf_adv)  # exp of shifted logits: a few ulps of |log_prob| ~ 1e2
    _expect_close("logprob_shift", moved.advantage, result.advantage, atol, "the advantage after a log-prob shift")


@_invariant("logprob_scale")
def check_logprob_scale(estimator, tree, leaf_adv, generator) -> None:
    """Multiplying every log-prob by one positive constant (a larger or smaller latent, mean- or
    sum-reduced log-probs) changes nothing."""
    result = _run(estimator, tree, leaf_adv)
    scaled = tree.clone()
    for factor in (1e-3, 1e3):
        scaled.log_prob = tree.log_prob.to(leaf_adv.dtype) * factor
        moved = _run(estimator, scaled, leaf_adv)
        atol = 1e-7 * _scale(tree, leaf_adv)
        _expect_close("logprob_scale", moved.advantage, result.advantage, atol,
                      f"the advantage after scaling log-probs by {factor:g}")


@_invariant("logprob_monotone")
def check_logprob_monotone(estimator, tree, leaf_adv, generator) -> None:
    """Among siblings, a child with a higher stored log-prob never gets a lower weight.

    This is the direction of the paper's softmax; ``softmax(-log_prob)`` is convex and
    shift-invariant too, and only this invariant tells it apart.
    """
    result = _run(estimator, tree, leaf_adv)
    first, second = _sibling_pairs(tree)  # every ordered pair of distinct siblings
    log_prob, weight = tree.log_prob.to(leaf_adv.dtype), result.weight
    bad = (log_prob[first] > log_prob[second]) & (weight[first] < weight[second] - _RTOL64)
    if bool(bad.any()):
        pair = int(bad.nonzero()[0])
        node, other = int(first[pair]), int(second[pair])
        raise InvariantViolation(
            f"logprob_monotone: node {node} has a higher log-prob than its sibling {other} "
            f"({float(log_prob[node])!r} > {float(log_prob[other])!r}) but a lower weight "
            f"({float(weight[node])!r} < {float(weight[other])!r}) under parent {int(tree.parent[node])}"
        )


def _sibling_pairs(tree: Tree) -> tuple[Tensor, Tensor]:
    """``[M]`` and ``[M]`` node indices of every ordered pair of distinct siblings (``M = sum k (k - 1)``)."""
    offsets, children = tree.child_index()  # children of node n: children[offsets[n]:offsets[n + 1]]
    parent = tree.parent[children]  # [E]
    k = tree.num_children()[parent]  # [E] size of each child's family
    first = children.repeat_interleave(k)  # [sum k^2]
    block = torch.repeat_interleave(torch.cumsum(k, 0) - k, k)  # start of each repeated run
    within = torch.arange(first.numel(), device=first.device) - block  # 0..k-1 within the run
    second = children[offsets[parent.repeat_interleave(k)] + within]
    distinct = first != second
    return first[distinct], second[distinct]


@_invariant("equal_logprob_mean")
def check_equal_logprob_mean(estimator, tree, leaf_adv, generator) -> None:
    """When siblings share one log-prob, each parent gets the arithmetic mean of its children."""
    per_parent = torch.randn(tree.num_nodes, generator=generator, dtype=leaf_adv.dtype)
    equal = tree.clone()
    equal.log_prob = torch.where(tree.parent >= 0, per_parent[tree.parent.clamp(min=0)], 0.0)
    value = _run(estimator, equal, leaf_adv).advantage
    internal = ~tree.is_leaf
    mean = _per_parent_sum(tree, value) / tree.num_children().clamp(min=1).to(value.dtype)
    atol = _RTOL64 * _scale(tree, leaf_adv)
    _expect_close("equal_logprob_mean", value[internal], mean[internal], atol, "a parent's advantage")


@_invariant("dtype")
def check_dtype(estimator, tree, leaf_adv, generator) -> None:
    """float32 and float64 agree to float32 precision, and each returns its input's dtype."""
    wide = _run(estimator, tree, leaf_adv.double()).advantage
    narrow = _run(estimator, _with_log_prob_dtype(tree, torch.float32), leaf_adv.float()).advantage
    if narrow.dtype != torch.float32 or wide.dtype != torch.float64:
        raise InvariantViolation(f"dtype: float32/float64 inputs gave {narrow.dtype}/{wide.dtype} outputs")
    atol = _RTOL32 * _scale(tree, leaf_adv)
    _expect_close("dtype", narrow.double(), wide, atol, "the float32 result")


@_invariant("device")
def check_device(estimator, tree, leaf_adv, generator) -> None:
    """CPU and CUDA agree (skipped, by :func:`check_estimator`, when no GPU is present)."""
    cpu = _run(estimator, tree.to("cpu"), leaf_adv.cpu()).advantage
    gpu = _run(estimator, tree.to("cuda"), leaf_adv.cuda()).advantage
    if gpu.device.type != "cuda":
        raise InvariantViolation(f"device: CUDA inputs gave a result on {gpu.device}")
    atol = _RTOL64 * _scale(tree, leaf_adv)
    _expect_close("device", gpu.cpu(), cpu, atol, "the CUDA result")


def _with_log_prob_dtype(tree: Tree, dtype: torch.dtype) -> Tree:
    converted = tree.clone()
    converted.log_prob = tree.log_prob.to(dtype)
    return converted


def check_estimator(
    estimator: BackupEstimator,
    tree: Tree,
    leaf_adv: Tensor,
    *,
    invariants: set[str] | frozenset[str] | None = None,
    seed: int = 0,
) -> dict[str, str]:
    """Check ``estimator`` against the invariants it claims (or the given ones) on one forest.

    Returns ``{invariant: "passed" | "skipped: <why>"}``; raises :class:`InvariantViolation` on the
    first failure. Use it inside a hypothesis test over :func:`~treeadv.testing.forest_cases`.
    """
    names = estimator.invariants if invariants is None else frozenset(invariants)
    unknown = sorted(set(names) - set(INVARIANTS))
    if unknown:
        raise ValueError(f"invariants: unknown names {unknown}; known: {sorted(INVARIANTS)}")
    tree64 = _with_log_prob_dtype(tree, torch.float64)
    leaf64 = leaf_adv.double()
    report = {}
    for name in sorted(names):
        if name == "device" and not torch.cuda.is_available():
            report[name] = "skipped: no CUDA device"
            continue
        generator = torch.Generator().manual_seed(seed)
        INVARIANTS[name](estimator, tree64, leaf64, generator)
        report[name] = "passed"
    return report
