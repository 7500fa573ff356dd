"""Per-depth statistics of a backup, for logs: advantage spread and weight concentration.

The effective sample size of a parent's weights, ``ESS = 1 / sum_e w_e^2``, is ``k`` for uniform
weights over ``k`` children and 1 when one child takes all the weight: a collapsing ESS says the
log-prob softmax has become a hard max (usually a sum-reduced log-prob or a too-low temperature).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from treeadv.backup import BackupResult
from treeadv.tree import Tree


def depth_diagnostics(tree: Tree, result: BackupResult) -> TensorDict:
    """Statistics per depth ``D = 0..max_depth``, a TensorDict with batch size ``[max_depth + 1]``.

    Entries:
        num_nodes: nodes at depth ``D``.
        advantage_mean, advantage_std: mean and population std of the advantages of the edges
            into depth-``D`` nodes (at ``D = 0``, of the roots' backed-up values).
        ess_mean, ess_min: effective sample size of the weights over the children of the
            internal nodes at depth ``D`` (NaN where depth ``D`` has no internal node).
    """
    advantage, weight = result.advantage, result.weight
    dtype, device = advantage.dtype, advantage.device
    num_depths = tree.max_depth + 1
    depth = tree.depth

    def per_depth_sum(values: torch.Tensor, index: torch.Tensor = depth) -> torch.Tensor:
        return torch.zeros(num_depths, dtype=dtype, device=device).index_add_(0, index, values)

    count = per_depth_sum(torch.ones_like(advantage))
    mean = per_depth_sum(advantage) / count
    std = (per_depth_sum((advantage - mean[depth]).square()) / count).sqrt()

    has_parent = tree.parent >= 0
    square_sum = torch.zeros(tree.num_nodes, dtype=dtype, device=device)
    square_sum.index_add_(0, tree.parent[has_parent], weight[has_parent].square())
    internal = ~tree.is_leaf
    ess = 1.0 / square_sum[internal]
    internal_depth = depth[internal]
    internal_count = per_depth_sum(torch.ones_like(ess), internal_depth)
    ess_mean = per_depth_sum(ess, internal_depth) / internal_count  # NaN (0/0) where none
    ess_min = torch.full((num_depths,), float("inf"), dtype=dtype, device=device)
    ess_min.scatter_reduce_(0, internal_depth, ess, reduce="amin")
    ess_min = torch.where(internal_count > 0, ess_min, torch.nan)
    return TensorDict(
        {
            "num_nodes": count.long(),
            "advantage_mean": mean,
            "advantage_std": std,
            "ess_mean": ess_mean,
            "ess_min": ess_min,
        },
        batch_size=[num_depths],
    )
