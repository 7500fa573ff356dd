"""A float64 reference backup, written node by node for clarity, to compare an estimator with.

:func:`treeadv.backup` reduces a whole level at once with scatters; the reference below visits one
parent at a time, deepest first, and combines its children with a weight function written for that
one family. Agreement between the two checks the estimator's vectorised ``weights`` against its
closed form, which the invariants alone cannot: ``softmax(-log_prob)`` is convex and shift-invariant
too. The loop over nodes is deliberate here (a reference is read, not run at scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from treeadv.backup import BackupResult, backup_with_weights
from treeadv.estimators import BackupEstimator
from treeadv.testing.invariants import _expect_close, _scale
from treeadv.tree import Tree


class Family(NamedTuple):
    """One parent's children, in ascending node order, as float64 ``[k]`` tensors.

    Attributes:
        advantage: ``[k]`` each child's advantage, already backed up from below.
        log_prob: ``[k]`` each child's stored behaviour log-prob.
        leaf_count: ``[k]`` number of leaves under each child (1 for a leaf).
    """

    advantage: Tensor
    log_prob: Tensor
    leaf_count: Tensor


class WeightFn(Protocol):
    """A closed-form weight function: one family's ``[k]`` weights, non-negative and summing to one."""

    def __call__(self, family: Family, /) -> Tensor | Sequence[float]: ...


def reference_backup(tree: Tree, leaf_adv: Tensor, weight_fn: WeightFn) -> BackupResult:
    """The backup node by node in float64: ``A_n = sum_{e in C(n)} w_e A_e`` with ``w = weight_fn(family)``.

    Returns ``advantage`` ``[N]`` and ``weight`` ``[N]`` as :func:`treeadv.backup_with_weights`
    does (1 at roots), both float64 on the CPU.
    """
    parent = tree.parent.tolist()
    children: list[list[int]] = [[] for _ in parent]
    for node, p in enumerate(parent):
        if p >= 0:
            children[p].append(node)
    advantage = leaf_adv.detach().double().cpu().clone()
    log_prob = tree.log_prob.detach().double().cpu()
    leaf_count = torch.ones(len(parent), dtype=torch.float64)
    weight = torch.ones(len(parent), dtype=torch.float64)
    deepest_first = sorted(range(len(parent)), key=lambda node: -int(tree.depth[node]))
    for node in deepest_first:
        kids = children[node]
        if not kids:  # a leaf keeps its own advantage
            continue
        family = Family(advantage[kids], log_prob[kids], leaf_count[kids])
        w = torch.as_tensor(weight_fn(family), dtype=torch.float64)
        if w.shape != (len(kids),):
            raise ValueError(f"weight_fn: expected {len(kids)} weights for node {node}'s children, got {tuple(w.shape)}")
        advantage[node] = (w * family.advantage).sum()
        leaf_count[node] = family.leaf_count.sum()
        weight[kids] = w
    return BackupResult(advantage, weight)


def check_against_reference(
    estimator: BackupEstimator,
    weight_fn: WeightFn,
    tree: Tree,
    leaf_adv: Tensor,
    *,
    rtol: float = 1e-9,
) -> None:
    """Raise :class:`~treeadv.testing.InvariantViolation` (``reference: ...``, naming a node) unless
    ``estimator``'s float64 backup matches :func:`reference_backup` with ``weight_fn``.

    Weights are compared to ``rtol`` and advantages to ``rtol`` times ``1 + max |leaf advantage|``.
    """
    tree64 = tree.clone()
    tree64.log_prob = tree.log_prob.double()
    got = backup_with_weights(tree64, leaf_adv.double(), estimator)
    want = reference_backup(tree64, leaf_adv, weight_fn)
    _expect_close("reference", got.weight.cpu(), want.weight, rtol, "the weight of the edge into a node")
    atol = rtol * _scale(tree, leaf_adv.double())
    _expect_close("reference", got.advantage.cpu(), want.advantage, atol, "the advantage")
