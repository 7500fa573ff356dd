"""Selections over a parent batch (:func:`treegrpo.envs.parent_batch`): the steps trained, the edge count."""

from __future__ import annotations

import torch
from tensordict import TensorDict


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
