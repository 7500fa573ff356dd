"""Depth-wise normalisation: node values compared with the other nodes of their tree at the same depth.

BranchGRPO (arXiv 2509.06040; ``fastvideo/train_branchgrpo_flux.py``,
``compute_hierarchical_advantages_by_depth``) fuses leaf rewards up each tree, then turns the fused
value ``v_n`` of node ``n`` into the advantage of the edge into ``n`` by standardising it among the
nodes ``S(n)`` of the same tree at the same depth::

    A_n = (v_n - mean_{S(n)} v) / (std_{S(n)} v + eps)    (std with Bessel's n - 1)

and ``A_n = 0`` when ``S(n)`` holds one node or its std is below ``min_std``. Each tree (prompt) is
normalised on its own, so no information crosses prompts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from treeadv.errors import NonFiniteError, TreeError
from treeadv.errors import format_indices as _listed
from treeadv.tree import Tree


def depth_normalize(tree: Tree, values: Tensor, *, eps: float = 1e-8, min_std: float = 1e-6) -> Tensor:
    """``[N]`` advantages: ``values`` standardised within each (tree root, depth) group.

    Args:
        tree: the forest; groups are keyed by ``tree.root`` and ``tree.depth``.
        values: ``[N]`` float value per node, e.g. :func:`treeadv.backup` of the leaf rewards
            (``"leaf"`` is BranchGRPO's default fusion, ``"logprob_softmax"`` its ``tree_prob_weighted``).
        eps: added to the Bessel std before dividing (BranchGRPO's ``1e-8``).
        min_std: a group whose Bessel std is below this gets zeros (BranchGRPO's ``1e-6``), as
            does a group of one node (the roots, and every level above the first split).

    The statistics are taken in float64 and the result has the dtype and device of ``values``.
    Because ``(a v + b)`` normalises like ``v`` for ``a > 0`` (up to ``eps`` and ``min_std``),
    normalising leaf rewards within their prompt first changes nothing.
    """
    if not isinstance(values, Tensor) or not values.dtype.is_floating_point:
        raise TypeError(f"values: expected a floating-point tensor [N], got {type(values).__name__}")
    if values.shape != (tree.num_nodes,):
        raise TreeError(f"values: expected one value per node, shape ({tree.num_nodes},), got {tuple(values.shape)}")
    if not (eps >= 0 and min_std >= 0):
        raise ValueError(f"eps, min_std: expected numbers >= 0, got eps={eps!r}, min_std={min_std!r}")
    bad = (~torch.isfinite(values)).nonzero().squeeze(1)
    if bad.numel():
        raise NonFiniteError(f"values: {bad.numel()} nodes have NaN or inf values (nodes {_listed(bad)})")
    wide = values.to(torch.float64)
    key = tree.root * (tree.max_depth + 1) + tree.depth  # [N], one id per (root, depth)
    _, slot = torch.unique(key, return_inverse=True)  # [N] in 0..G-1
    num_groups = int(slot.max()) + 1 if slot.numel() else 0
    count = torch.zeros(num_groups, dtype=torch.float64, device=wide.device).index_add_(0, slot, torch.ones_like(wide))
    mean = torch.zeros_like(count).index_add_(0, slot, wide) / count  # [G]
    centred = wide - mean[slot]  # [N]
    squares = torch.zeros_like(count).index_add_(0, slot, centred.square())  # [G]
    std = (squares / (count - 1).clamp(min=1)).sqrt()  # [G], Bessel
    spread = (count > 1) & (std >= min_std)  # [G]
    advantage = torch.where(spread[slot], centred / (std[slot] + eps), 0.0)
    return advantage.to(values.dtype)
