"""What an iteration reports: its metrics, tensorboard scalars and sample grids (rank 0 writes).

:func:`iteration_metrics` assembles the flat ``name -> float`` dict a step returns (rewards, one
column per reward model, loss terms, counters, advantages by tree depth, timings);
:class:`Scalars` writes them to ``out_dir/tensorboard``; :func:`save_grid` samples a grid of
held-out ODE samples on fixed noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import Tensor, nn

import treeadv
from treegrpo.algos.evaluation import held_out_prompts
from treegrpo.envs import gather_cond, sample_forest
from treegrpo.problems import Problem

GRID_MIN_SIDE = 64  # sample grids show each image at least this many pixels wide


class Scalars:
    """Tensorboard scalars under ``run_dir/tensorboard``, opened at the first write (only on the main rank)."""

    def __init__(self, run_dir: Path, main: bool = True) -> None:
        self.run_dir, self.main = run_dir, main
        self._writer = None

    def write(self, values: Mapping[str, float], step: int) -> None:
        if not self.main:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()


def reward_columns(rewards: Tensor, names: Sequence[str]) -> dict[str, float]:
    """``reward/<name>``: the mean of each reward column (nothing for a single reward)."""
    if rewards.dim() == 1:
        return {}
    names = list(names) + [f"reward_{j}" for j in range(len(names), rewards.shape[1])]
    return {f"reward/{names[j]}": float(rewards[:, j].mean()) for j in range(rewards.shape[1])}


def advantage_by_depth(tree: treeadv.Tree, result: treeadv.BackupResult) -> dict[str, float]:
    """Mean and std of the advantages at each depth, and the backup's effective sample size per parent depth."""
    table = treeadv.depth_diagnostics(tree, result)
    out = {}
    for depth in range(1, table.batch_size[0]):
        out[f"advantage_mean/depth_{depth}"] = float(table["advantage_mean"][depth])
        out[f"advantage_std/depth_{depth}"] = float(table["advantage_std"][depth])
        out[f"ess_mean/depth_{depth - 1}"] = float(table["ess_mean"][depth - 1])
    return out


def iteration_metrics(iteration: int, rewards: Tensor, reward_names: Sequence[str], forest: treeadv.Tree,
                      result: treeadv.BackupResult, parts: Sequence[Mapping[str, float]], window_start: int,
                      times: Sequence[float], lr: float) -> dict[str, float]:
    """One iteration's metrics; ``times`` are the clock at its start, after sampling and scoring,
    after the advantages (and the on-policy check), and at its end."""
    start, sampled, advantaged, end = times
    metrics = {"iteration": float(iteration), "reward_mean": float(rewards.mean()),
               "reward_std": float(rewards.std(unbiased=False)), **reward_columns(rewards, reward_names)}
    for part in parts:
        metrics.update(part)
    metrics.update(advantage_by_depth(forest, result))
    metrics.update({
        "window_start": float(window_start),
        "seconds": end - start,
        "seconds_sample": sampled - start,  # prompts, sampling, decoding and rewards
        "seconds_advantage": advantaged - sampled,  # advantages, the batch (and the on-policy check)
        "seconds_update": end - advantaged,  # losses, backward passes, optimiser steps
        "images_per_second": metrics.get("images", 0.0) / (end - start),
        "lr": lr,
    })
    return metrics


@torch.no_grad()
def save_grid(problem: Problem, model: nn.Module, path: Path | None, *, seed: int, max_batch: int | None,
              precision: Callable[[], AbstractContextManager], num_prompts: int = 10) -> Path | None:
    """Save a PNG grid of ODE samples (one row per prompt, the first held-out prompts when the
    problem has them, 8 per row; a video as 4 evenly spaced frames side by side) from noise seeded by ``seed``, if the problem can decode images.
    Every rank samples (an FSDP forward needs them all); only a rank given a ``path`` writes."""
    if problem.decode is None:
        return None
    from torchvision.utils import save_image

    device = torch.device(problem.device)
    generator = torch.Generator(device).manual_seed(seed)
    cond, _ = held_out_prompts(problem, seed)
    prompts = min(num_prompts, int(cond.shape[0]))
    with precision():
        rollout = sample_forest(model, problem.transition, gather_cond(cond, torch.arange(prompts)), sde_steps=(),
                                branching=(), trees_per_prompt=8, latent_shape=problem.latent_shape,
                                num_prompts=prompts, generator=generator, device=device, max_batch=max_batch)
    images = problem.decode(rollout.final).clamp(0, 1)
    if images.dim() == 5:  # videos [B, F, 3, H, W]: each one's frames side by side, one strip per sample
        from treegrpo.rewards.video import frame_strip

        images = frame_strip(images, frames=4)
    if images.shape[-1] < GRID_MIN_SIDE:  # tiny images (16 px digits): enlarge pixels so the grid is legible
        images = torch.nn.functional.interpolate(images, scale_factor=-(-GRID_MIN_SIDE // images.shape[-1]))
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=8)
    return path
