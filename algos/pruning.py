"""BranchGRPO's pruning: which sampled edges of a branching tree are left out of the update.

BranchGRPO (arXiv 2509.06040; ``fastvideo/train_branchgrpo_flux.py``, ``train_one_step_tree``)
samples and scores every edge, then trains only some of them:

1. *Depth pruning*: edges into nodes at the listed depths are dropped. A node made by step ``s``
   has depth ``s + 1`` (the root is the state before step 0), so an edge's child depth is its
   parent's ``step + 1``. With ``depth_pruning_slide`` the listed depths move ``shift`` levels
   shallower, ``shift = current_step // interval``, until the shallowest reaches ``stop_depth``
   (by default the last split step).
2. *Width pruning*, on the "last layer" (edges whose parent step comes after the last split step),
   after depth pruning: mode 1 keeps, within each branch made by the last split, the
   ``max(1, int(n * ratio))`` edges of highest advantage; mode 2 keeps the ``keep // 2`` best and
   ``keep - keep // 2`` worst last-layer edges of the whole batch, ``keep = max(2, int(n * ratio))``.
   Ties go to the edge met first in BranchGRPO's depth-first walk (roots in order, a parent's
   children in creation order, each subtree before the next sibling), as Python's stable ``sorted``
   over that walk gives.
3. Both apply while ``current_step <= int(max_steps * pruning_step_ratio)``.

``current_step`` counts from 1 in BranchGRPO (``for step in range(init_steps + 1, max_train_steps
+ 1)``); this module takes the toolkit's 0-based ``iteration`` and uses ``current_step = iteration + 1``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from treeadv import Tree

WIDTH_MODES = (0, 1, 2)
"""``width_mode`` values: 0 off, 1 best per last-split branch, 2 best and worst of the batch."""


def pruning_active(iteration: int, iterations: int, step_ratio: float) -> bool:
    """Whether pruning applies at 0-based ``iteration`` of ``iterations``: BranchGRPO's
    ``current_step <= int(max_steps * pruning_step_ratio)`` with ``current_step = iteration + 1``."""
    _check_count("iteration", iteration, minimum=0)
    _check_count("iterations", iterations, minimum=0)
    if not 0 <= step_ratio <= 1:
        raise ValueError(f"step_ratio: expected a number in [0, 1] (the fraction of iterations that prune), got {step_ratio!r}")
    return iteration + 1 <= int(iterations * step_ratio)


def pruned_depths(
    depths: Sequence[int],
    iteration: int,
    *,
    slide: bool,
    interval: int,
    stop_depth: int | None,
    split_steps: Sequence[int],
) -> frozenset[int]:
    """The child depths whose edges are not trained at 0-based ``iteration``.

    Without ``slide`` these are ``depths``. With it every depth moves up by
    ``shift = min((iteration + 1) // interval, max(0, min(depths) - stop_depth))``, where
    ``stop_depth`` defaults to ``max(split_steps)`` (0 without splits), BranchGRPO's
    ``depth_pruning_stop_depth``: the window stops once its shallowest depth reaches it. A depth
    that slides to 0 (``stop_depth`` 0) is left out: no edge leads into a root.
    """
    base = sorted(_check_depths(depths))
    _check_count("iteration", iteration, minimum=0)
    _check_count("interval", interval, minimum=1)
    if stop_depth is not None:
        _check_count("stop_depth", stop_depth, minimum=0)
    if not base or not slide:
        return frozenset(base)
    stop = stop_depth if stop_depth is not None else max(split_steps, default=0)
    shift = min((iteration + 1) // interval, max(0, base[0] - stop))
    return frozenset(depth - shift for depth in base if depth > shift)


def prune_edges(
    batch: TensorDictBase,
    tree: Tree,
    *,
    depths: Collection[int] = (),
    width_mode: int = 0,
    width_ratio: float = 0.5,
    split_steps: Sequence[int] = (),
) -> TensorDict:
    """A parent batch whose ``mask`` leaves out the pruned edges, without the rows left empty.

    Args:
        batch: a parent batch of ``tree`` (:func:`treegrpo.envs.parent_batch`), ``[M]`` rows with
            ``step``, ``node``, ``child`` ``[M, K]``, ``mask`` ``[M, K]`` and ``advantage`` ``[M, K]``.
        tree: the tree the batch was made from; the branch of an edge is read off its paths and
            the nodes' ``payload["step"]`` (their depth when the payload has no ``step``).
        depths: child depths (``step + 1``) whose edges are dropped, e.g. :func:`pruned_depths`.
        width_mode: 0 off, 1 best ``width_ratio`` per last-split branch, 2 best and worst of the batch.
        width_ratio: fraction of the last-layer edges that width pruning keeps, in ``(0, 1]``.
        split_steps: the sampler's split steps; width pruning needs them (the last one).

    Only ``mask`` changes (pruned slots keep their data). The scope is the batch given: BranchGRPO
    ranks the edges of all trees on one GPU together, so mode 2 over a rank's shard matches it when
    the shard holds that GPU's trees. Mode 2 with a single last-layer edge keeps it once, where
    BranchGRPO lists it twice (as best and as worst).
    """
    _check_depths(depths)
    if width_mode not in WIDTH_MODES:
        raise ValueError(f"width_mode: expected 0 (off), 1 (best per branch) or 2 (best and worst), got {width_mode!r}")
    if not 0 < width_ratio <= 1:
        raise ValueError(f"width_ratio: expected a fraction in (0, 1], got {width_ratio!r}")
    if width_mode and not split_steps:
        raise ValueError(f"split_steps: width_mode {width_mode} prunes the edges after the last split, "
                         "but no split steps were given; pass the sampler's split steps or width_mode=0")
    mask = batch["mask"]  # [M, K]
    edge_step = batch["step"].unsqueeze(-1).expand_as(mask)  # [M, K], the parent's step
    if depths:
        dropped = torch.as_tensor(sorted(depths), dtype=edge_step.dtype, device=mask.device)
        mask = mask & ~torch.isin(edge_step + 1, dropped)
    if width_mode:
        last_split = max(split_steps)
        row, slot = (mask & (edge_step > last_split)).nonzero(as_tuple=True)  # [E] last-layer edges
        branch = _last_split_branch(tree, batch["node"][row], last_split + 1) if width_mode == 1 else None
        kept = _width_keep(batch["advantage"][row, slot], _walk_rank(tree, batch["child"][row, slot]),
                           branch, width_ratio)
        mask = mask.clone()
        mask[row, slot] = kept
    pruned = batch.clone(recurse=False)
    pruned.set("mask", mask)
    return pruned[mask.any(-1)]


def _width_keep(advantage: Tensor, walk_rank: Tensor, branch: Tensor | None, ratio: float) -> Tensor:
    """``[E]`` which last-layer edges width pruning keeps.

    Edges are sorted by advantage, highest first, ties in walk order (BranchGRPO's stable
    ``sorted(..., reverse=True)`` over its depth-first list); with ``branch`` (mode 1) each
    branch keeps its first ``max(1, int(n * ratio))``, without (mode 2) the batch keeps its first
    ``keep // 2`` and last ``keep - keep // 2``, ``keep = max(2, int(n * ratio))``.
    """
    order = torch.argsort(walk_rank)  # [E] walk order (ranks are distinct)
    order = order[torch.sort(advantage[order], descending=True, stable=True).indices]
    position = torch.arange(order.numel(), device=order.device)  # [E] place in the sorted list
    if branch is None:
        keep = max(2, int(order.numel() * ratio))
        best = keep // 2
        chosen = (position < best) | (position >= order.numel() - (keep - best))
    else:
        order = order[torch.sort(branch[order], stable=True).indices]
        _, size = torch.unique_consecutive(branch[order], return_counts=True)  # [B] edges per branch
        first = torch.cumsum(size, 0) - size  # [B]
        # int(n * ratio) in float64, as Python computes it, so the counts match BranchGRPO's
        quota = (size.to(torch.float64) * ratio).floor().long().clamp(min=1)  # [B]
        chosen = position - first.repeat_interleave(size) < quota.repeat_interleave(size)
    kept = torch.zeros_like(chosen)
    kept[order] = chosen
    return kept


def _walk_rank(tree: Tree, nodes: Tensor) -> Tensor:
    """``[E]`` rank of each node in BranchGRPO's depth-first walk, among ``nodes``.

    The walk visits roots by index and a parent's children in creation order, each subtree before
    the next sibling. Children are numbered in creation order (level by level, as the sampler makes
    them), so the walk is the lexicographic order of the root-to-node paths of node indices, an
    ancestor (a shorter path, padded with -1) before its descendants.
    """
    paths = tree.paths(nodes)  # [E, D + 1], -1 past the node
    order = torch.arange(nodes.numel(), device=nodes.device)
    for column in range(paths.shape[1] - 1, -1, -1):  # least significant column first: a lexsort
        order = order[torch.sort(paths[order, column], stable=True).indices]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def _last_split_branch(tree: Tree, parents: Tensor, branch_step: int) -> Tensor:
    """``[E]`` the node at ``branch_step`` (made by the last split) on each parent's root path.

    Where a path has none (a tree whose root comes after the last split), the root stands in, as
    BranchGRPO's ``find_last_split_branch`` falls back to one group per root.
    """
    step = tree.payload.get("step", tree.depth)  # [N]
    paths = tree.paths(parents)  # [E, D + 1]
    on_path = (paths >= 0) & (step[paths.clamp(min=0)] == branch_step)  # [E, D + 1]
    column = on_path.long().argmax(1)  # [E] first match (a step occurs once on a path)
    found = paths.gather(1, column.unsqueeze(1)).squeeze(1)
    return torch.where(on_path.any(1), found, paths[:, 0])


def _check_depths(depths: Collection[int]) -> Collection[int]:
    bad = [d for d in depths if isinstance(d, bool) or not isinstance(d, int) or d < 1]
    if bad:
        raise ValueError(f"depths: expected child depths >= 1 (a node made by step s has depth s + 1), got {list(depths)}")
    return depths


def _check_count(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
