"""Leaf-to-root backup: one advantage per edge from the advantages of the leaves.

Levels are processed deepest first; within a level every parent is reduced at once by scatters
over that level's ``[E]`` edges, so the work is ``O(N)`` with a Python loop only over depths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from treeadv.errors import EstimatorError, NonFiniteError, TreeError
from treeadv.errors import format_indices as _listed
from treeadv.estimators import BackupEstimator, make_estimator
from treeadv.leaf import leaf_advantages
from treeadv.siblings import Siblings
from treeadv.tree import Tree


class BackupResult(NamedTuple):
    """Output of :func:`backup_with_weights`.

    Attributes:
        advantage: ``[N]`` advantage of the edge into each node; at roots (no edge) the
            backed-up value of the whole tree, useful as a diagnostic.
        weight: ``[N]`` weight of each node's edge in its parent's combination; 1 at roots.
    """

    advantage: Tensor
    weight: Tensor


def backup(
    tree: Tree,
    leaf_adv: Tensor,
    estimator: str | BackupEstimator = "logprob_softmax",
    **options: object,
) -> Tensor:
    """``[N]`` advantage of the edge into every node, backed up from the leaves.

    ``leaf_adv`` holds one value per node (``[N]``); only the leaves' values are read. For each
    internal node ``n`` with children ``C(n)``: ``A_n = sum_{e in C(n)} w_e A_e`` where the weights
    come from ``estimator`` (a registered name with its ``options``, or an instance). The default
    is the paper's ``logprob_softmax`` with ``temperature=1``.

    Examples:
        >>> import torch
        >>> from treeadv import Tree, backup
        >>> tree = Tree.regular(1, 2, 2)  # one tree: root, 2 children, 4 leaves (level-major)
        >>> leaf = torch.tensor([0.0, 0, 0, 1.0, 3.0, -1.0, -3.0])  # only the 4 leaves are read
        >>> backup(tree, leaf, "mean")
        tensor([ 0.,  2., -2.,  1.,  3., -1., -3.])
        >>> tree = Tree.regular(1, 2, 1, log_prob=torch.tensor([0.0, 0.0, -2.0]))
        >>> backup(tree, torch.tensor([0.0, 1.0, -1.0]))  # softmax(log-probs) weights the children
        tensor([ 0.7616,  1.0000, -1.0000])
    """
    return _backup(tree, leaf_adv, make_estimator(estimator, **options), keep_weights=False).advantage


def backup_with_weights(
    tree: Tree,
    leaf_adv: Tensor,
    estimator: str | BackupEstimator = "logprob_softmax",
    **options: object,
) -> BackupResult:
    """:func:`backup` that also returns the per-edge weights (for diagnostics and tests)."""
    return _backup(tree, leaf_adv, make_estimator(estimator, **options), keep_weights=True)


def _backup(tree: Tree, leaf_adv: Tensor, chosen: BackupEstimator, *, keep_weights: bool) -> BackupResult:
    """The level loop. Internal nodes start at zero and each level scatters its children's weighted
    advantages (and leaf counts) straight into its parents' entries, so a parent without children
    (a leaf one level up) keeps its own value with no mask, copy or ``where`` per level."""
    _check_leaf_advantages(tree, leaf_adv)
    is_leaf, parent = tree.is_leaf, tree.parent
    dtype = leaf_adv.dtype
    advantage = torch.where(is_leaf, leaf_adv, torch.zeros((), dtype=dtype, device=leaf_adv.device))
    _check_finite_leaves(tree, leaf_adv, advantage)
    leaf_count = is_leaf.to(dtype)
    log_prob = tree.log_prob.to(dtype)
    weight = torch.ones(tree.num_nodes, dtype=dtype, device=leaf_adv.device) if keep_weights else None

    levels = tree.level_selectors()
    slot = _slot_within_level(tree, levels)
    for depth in range(len(levels) - 1, 0, -1):
        child, parents = levels[depth], levels[depth - 1]
        child_parent = parent[child]  # [E] node index of each edge's parent (a view when levels are slices)
        siblings = Siblings(
            index=child_parent - parents.start if slot is None else slot.index_select(0, child_parent),
            num_parents=_level_size(parents),
            advantage=advantage[child],
            log_prob=log_prob[child],
            leaf_count=leaf_count[child],
        )
        edge_weight = chosen.weights(siblings)
        _check_weights(chosen, edge_weight, siblings)
        # Parents' entries are disjoint from their children's: with slices, the parents' level is a
        # view to add into (so index_add_ sees no overlap with the children's view it reads).
        target, into = (parents, siblings.index) if slot is None else (slice(None), child_parent)
        advantage[target].index_add_(0, into, _as_dtype(edge_weight * siblings.advantage, dtype))
        leaf_count[target].index_add_(0, into, siblings.leaf_count)
        if weight is not None:
            weight[child] = edge_weight
    return BackupResult(advantage, weight)


def tree_advantages(
    tree: Tree,
    rewards: Tensor,
    *,
    reward_weights: Tensor | Sequence[float] | None = None,
    estimator: str | BackupEstimator = "logprob_softmax",
    eps: float = 1e-6,
    **options: object,
) -> Tensor:
    """Rewards at the leaves to ``[N]`` edge advantages: :func:`leaf_advantages` then :func:`backup`.

    ``rewards`` is ``[L]`` or ``[L, m]`` in :meth:`Tree.leaves` order; leaves are normalised within
    ``tree.group`` (all trees of a prompt together).
    """
    leaves = tree.leaves()
    per_leaf = leaf_advantages(rewards, tree.group[leaves], reward_weights, eps)
    return backup(tree, tree.scatter_leaves(per_leaf), estimator, **options)


def _slot_within_level(tree: Tree, levels: list[slice | Tensor]) -> Tensor | None:
    """``[N]`` position of each node within its level, or None when levels are slices (then the
    position is the index minus the level's start)."""
    if all(isinstance(level, slice) for level in levels):
        return None
    slot = torch.empty(tree.num_nodes, dtype=torch.long, device=tree.parent.device)
    for level in levels:
        slot[level] = torch.arange(_level_size(level), device=slot.device)
    return slot


def _as_dtype(values: Tensor, dtype: torch.dtype) -> Tensor:
    return values if values.dtype == dtype else values.to(dtype)


def _level_size(level: slice | Tensor) -> int:
    return level.stop - level.start if isinstance(level, slice) else level.numel()


def _check_leaf_advantages(tree: Tree, leaf_adv: Tensor) -> None:
    if not isinstance(leaf_adv, Tensor) or not leaf_adv.dtype.is_floating_point:
        raise TypeError(f"leaf_adv: expected a floating-point tensor [N], got {type(leaf_adv).__name__}")
    if leaf_adv.shape != (tree.num_nodes,):
        raise TreeError(
            f"leaf_adv: expected one value per node, shape ({tree.num_nodes},), got {tuple(leaf_adv.shape)}; "
            "spread per-leaf values with tree.scatter_leaves(values)"
        )
    if leaf_adv.device != tree.parent.device:
        raise TreeError(f"leaf_adv: on {leaf_adv.device}, but the tree is on {tree.parent.device}")


def _check_finite_leaves(tree: Tree, leaf_adv: Tensor, advantage: Tensor) -> None:
    """Raise unless every leaf's value is finite. ``advantage`` is ``leaf_adv`` at the leaves and 0
    elsewhere: one sum over it is finite when they all are (a NaN or inf anywhere makes it NaN or
    inf), so the per-node scan runs only when the sum is not (a bad leaf, or an overflow)."""
    if bool(torch.isfinite(advantage.sum())):
        return
    bad = tree.is_leaf & ~torch.isfinite(leaf_adv)
    if bool(bad.any()):
        bad = bad.nonzero().squeeze(1)
        raise NonFiniteError(f"leaf_adv: {bad.numel()} leaves have NaN or inf advantages (nodes {_listed(bad)})")


def _check_weights(estimator: BackupEstimator, weights: Tensor, siblings: Siblings) -> None:
    if not isinstance(weights, Tensor) or weights.shape != siblings.advantage.shape:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise EstimatorError(
            f"estimator {type(estimator).__name__}: weights() must return one weight per edge "
            f"({siblings.advantage.numel()}), got {shape}"
        )
