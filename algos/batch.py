"""The one contract between sampling and learning: edges grouped under the parent they share.

A row is a parent node (an SDE step's input): ``latent``, ``step``, ``cond_index``. Its children
are the edges leaving it, padded to ``K`` (the widest parent): ``sample`` ``[M, K, ...]``,
``log_prob`` (behaviour), ``advantage``, ``mask``. A loss evaluates the policy once per row and
scores all ``K`` samples against it, so minibatches are drawn over parents, never splitting one.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor

from treeadv import Tree


def parent_batch(tree: Tree, advantage: Tensor) -> TensorDict:
    """Group a sampled tree's edges by parent, attaching one advantage per edge.

    Args:
        tree: a sampler's tree (payload ``latent``, ``step``, ``sample``, ``cond_index``).
        advantage: ``[N]`` advantage of the edge into each node (roots ignored).

    Returns a TensorDict ``[M]`` over internal nodes with the keys described in the module doc,
    plus ``node`` (the parent's row in ``tree``) and ``depth`` (the parent's depth). ``K`` is the
    commonest number of children; a parent with more takes several rows (one forward each).
    """
    if advantage.shape != (tree.num_nodes,):
        raise ValueError(f"advantage: expected shape ({tree.num_nodes},), got {tuple(advantage.shape)}")
    offsets, children = tree.child_index()
    counts = offsets[1:] - offsets[:-1]
    parents = torch.nonzero(counts > 0).squeeze(-1)
    # K is the commonest child count (k for a tree, 1 for trajectories); a wider parent, such as the
    # shared first step of a group that starts from one noise, takes several rows of K instead of
    # padding every other row to its width.
    width = int(torch.mode(counts[parents]).values) if parents.numel() else 1
    rows_per_parent = -(-counts[parents] // width)  # [P]
    internal = parents.repeat_interleave(rows_per_parent)  # [M]
    first = torch.cumsum(rows_per_parent, 0) - rows_per_parent
    part = torch.arange(internal.numel(), device=counts.device) - first.repeat_interleave(rows_per_parent)
    slot = torch.arange(width, device=counts.device)
    start = offsets[internal] + part * width  # [M] first child of each row
    mask = (part * width).unsqueeze(-1) + slot < counts[internal].unsqueeze(-1)  # [M, K]
    child = torch.where(mask, children[(start.unsqueeze(-1) + slot).clamp(max=max(children.numel() - 1, 0))], 0)
    payload = tree.payload
    return TensorDict(
        {
            "latent": payload["latent"][internal],
            "step": payload["step"][internal],
            "cond_index": payload["cond_index"][internal],
            "sample": torch.where(_expand(mask, payload["sample"]), payload["sample"][child], 0),
            "log_prob": torch.where(mask, tree.log_prob[child], 0),
            "advantage": torch.where(mask, advantage[child].to(tree.log_prob.dtype), 0),
            "mask": mask,
            "node": internal,
            "depth": tree.depth[internal],
        },
        batch_size=[internal.numel()],
    )


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(*mask.shape, *([1] * (like.dim() - 1)))


def select_steps(batch: TensorDict, fraction: float, generator: torch.Generator | None = None) -> TensorDict:
    """Keep the parents of a random ``fraction`` of the distinct SDE steps (DanceGRPO's timestep fraction)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    if fraction == 1:
        return batch
    steps = torch.unique(batch["step"])
    keep = max(1, round(fraction * steps.numel()))
    chosen = steps[torch.randperm(steps.numel(), generator=generator)[:keep].to(steps.device)]
    return batch[torch.isin(batch["step"], chosen)]


def count_edges(batch: TensorDict) -> int:
    """Number of real (unpadded) edges in a parent batch."""
    return int(batch["mask"].sum())
