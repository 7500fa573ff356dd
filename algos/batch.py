"""Selections over a parent batch (:class:`~treegrpo.envs.ParentBatch`): the steps trained, the edge count."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import Tensor

from treegrpo.envs import ParentBatch

STEP_SELECTIONS = ("random", "first", "per_sample")
"""How :func:`select_steps` picks the steps ``fraction`` keeps (``loss.timestep_selection``)."""


def select_steps(batch: ParentBatch, fraction: float, generator: torch.Generator | None = None,
                 selection: str = "random") -> ParentBatch:
    """Keep the parents of a ``fraction`` of the batch's ``S`` distinct SDE steps.

    ``selection`` says which, after each peer's ``timestep_fraction``:

    - ``"random"``: ``max(1, round(fraction * S))`` steps drawn at random, one draw for the whole batch
      (this project's default);
    - ``"first"``: the first ``int(S * fraction)`` steps, in sampling order (Flow-GRPO,
      ``scripts/train_sd3.py:345,864``: ``range(int(num_steps * timestep_fraction))``);
    - ``"per_sample"``: ``int(S * fraction)`` steps drawn for each trajectory on its own, one
      ``randperm(S)`` per trajectory in the order of their last node (DanceGRPO,
      ``fastvideo/train_grpo_flux.py:551-570``, whose ``S`` is ``T - 1``: it never trains its last step).

    ``first`` and ``per_sample`` keep at least one step where ``int`` would give none. A
    ``per_sample`` trajectory is a chain of rows, each row's first child the next row's parent
    (:func:`trajectories`): with one child per row (the trajectory samplers) that is one sample.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    if selection not in STEP_SELECTIONS:
        raise ValueError(f"selection: expected one of {', '.join(STEP_SELECTIONS)}, got {selection!r}")
    if fraction == 1:
        return batch
    steps = torch.unique(batch.step)  # [S], ascending: sampling order
    if selection == "random":
        keep = max(1, round(fraction * steps.numel()))
        chosen = steps[torch.randperm(steps.numel(), generator=generator)[:keep].to(steps.device)]
        return batch[torch.isin(batch.step, chosen)]
    keep = max(1, int(steps.numel() * fraction))
    if selection == "first":
        return batch[torch.isin(batch.step, steps[:keep])]
    sample = trajectories(batch)  # [M] in 0..U-1
    num_samples = int(sample.max()) + 1 if sample.numel() else 0
    perms = torch.stack([torch.randperm(steps.numel(), generator=generator) for _ in range(num_samples)]) if (
        num_samples) else torch.zeros(0, steps.numel(), dtype=torch.long)  # [U, S]
    rank = perms.argsort(dim=1).to(steps.device)  # [U, S]: where each step falls in its sample's permutation
    position = torch.searchsorted(steps, batch.step)  # [M]
    return batch[rank[sample, position] < keep]


def trajectories(batch: ParentBatch) -> Tensor:
    """``[M]`` trajectory id of each parent row, numbered in the order of the trajectories' last node.

    A row's first child is the parent of at most one row below it (a wider parent's rows each hold
    other children), so following first children splits the rows into disjoint chains; a chain is
    a trajectory when every row has one child. The chains are found by pointer jumping (one gather
    per doubling of the chain length), never by a loop over rows.
    """
    node, first_child = batch.node, batch.child[:, 0]  # [M], [M]
    rows = torch.arange(node.numel(), device=node.device)
    size = int(torch.maximum(node.max(), first_child.max())) + 1 if node.numel() else 0
    row_of_node = torch.full((size,), -1, dtype=torch.long, device=node.device)
    row_of_node[node] = rows  # a node with several rows: any of them, as no first child leads to the others
    below = row_of_node[first_child]  # [M]: the row continuing the chain, -1 at its end
    last = torch.where(below >= 0, below, rows)
    while True:  # last[r]: the final row of r's chain, in log2(chain length) jumps
        jumped = last[last]
        if torch.equal(jumped, last):
            break
        last = jumped
    _, sample = torch.unique(first_child[last], return_inverse=True)
    return sample


def count_edges(batch: ParentBatch | TensorDictBase) -> int:
    """Number of real (unpadded) edges in a parent batch (or a TensorDict with its ``mask``)."""
    return int(batch["mask"].sum())
