"""The 2-D toy problem: a flow model whose base samples ``N(0, I)`` exactly, tuned to move each
prompt's samples to its target. The reward's optimum is known, so it is the smallest real test of
a loss: a working one raises the reward within a few iterations, a flipped sign lowers it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from treegrpo.envs import Denoiser, FlowTimesteps, GaussianData, flow_transition
from treegrpo.envs.models import Cond
from treegrpo.errors import renamed_fields
from treegrpo.problems.base import SAMPLING_ARGUMENTS, Problem
from treegrpo.rewards.diversity import pixel_diversity

PRESET: tuple[str, ...] = (
    "sampling.shift=1.0", "sampling.num_steps=8", "sampling.prompts_per_iteration=4", "sampling.group_size=8",
    "optim.lr=3e-3", "loss.clip_range=0.2", "train.inner_epochs=2", "train.minibatch_parents=8",
    "train.iterations=30", "train.out_dir=runs/toy2d",
)
"""The toy2d preset (``model.kind=toy2d``) over ``Config()``: a problem that trains in seconds, with a
learning rate and clip range to match and its run length."""


class ResidualVelocity(Denoiser):
    """An exact base velocity plus a small MLP residual whose output layer starts at zero."""

    def __init__(self, base: GaussianData, num_prompts: int, hidden: int = 64) -> None:
        super().__init__()
        self.base = base
        dim = base.mean.numel()
        self.embed = nn.Embedding(num_prompts, hidden)
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.gradient_checkpointing = False

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the hidden layers in the backward pass instead of storing their activations."""
        self.gradient_checkpointing = True

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        inputs = torch.cat([x, (t / 1000.0).unsqueeze(-1).to(x.dtype)], dim=-1)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            hidden = checkpoint(self.net, inputs, use_reentrant=False)
        else:
            hidden = self.net(inputs)
        return self.base.velocity(x, t, None) + self.out(hidden + self.embed(cond))


def render_points(points: Tensor, targets: Tensor, size: int = 32, extent: float = 4.0) -> Tensor:
    """Draw 2-D points as ``[L, 3, size, size]`` images in ``[0, 1]``: the sample white, the targets red.

    The canvas spans ``[-extent, extent]^2`` (y up); each point is a Gaussian blob about one pixel
    wide. ``targets [G, 2]`` are drawn on every image, so a grid shows where samples land.
    """
    axis = torch.linspace(-extent, extent, size, dtype=torch.float32, device=points.device)
    width = 2 * extent / size

    def blob(centre: Tensor) -> Tensor:
        dx = (axis.view(1, 1, size) - centre[:, 0, None, None]) / width
        dy = (axis.flip(0).view(1, size, 1) - centre[:, 1, None, None]) / width
        return torch.exp(-0.5 * (dx.square() + dy.square()))

    sample = blob(points.float())
    goal = blob(targets.float().to(points.device)).amax(0, keepdim=True)
    return torch.stack([torch.maximum(sample, 0.6 * goal), sample, sample], dim=1).clamp(0, 1)


def toy2d_problem(num_steps: int = 10, noise_level: float = 0.7, targets: Sequence[Sequence[float]] = ((2.0, 0.0), (-2.0, 0.0)),
                  prompts_per_iteration: int = 2, seed: int = 0, eval_num_steps: int = 0, shift: float = 1.0,
                  transition: str = "flow_sde", schedule: str = "scheduler") -> Problem:
    """Two prompts, each rewarded by ``-|x - target|^2 / 4``; the base samples ``N(0, I)``.

    The reward's optimum is known (all mass on the target), so a working loss must raise the mean
    reward within a few iterations and a flipped gradient sign must lower it; it is also where the
    policy collapses, which the held-out ``latent_std`` (the per-prompt std of the samples) shows.
    Evaluation samples take ``eval_num_steps`` steps (0: ``num_steps``); ``transition`` is a flow
    transition's name (``flow_sde``, ``dance_sde``, ``cps``) on the ``schedule`` with ``shift``.
    """
    torch.manual_seed(seed)
    goals = torch.tensor(targets, dtype=torch.float32)
    model = ResidualVelocity(GaussianData(torch.zeros(2), torch.eye(2)), num_prompts=goals.shape[0])
    with renamed_fields(SAMPLING_ARGUMENTS):
        step = flow_transition(transition, FlowTimesteps.named(schedule, num_steps, shift=shift), noise_level)

    def prompts(iteration: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        ids = torch.randint(goals.shape[0], (prompts_per_iteration,), generator=generator)
        return ids, ids

    def reward(final: Tensor, prompt_ids: Tensor) -> Tensor:
        return -(final - goals[prompt_ids]).square().sum(-1) / 4

    def decode(final: Tensor) -> Tensor:
        return render_points(final, goals)

    def every_prompt() -> tuple[Tensor, Tensor]:
        ids = torch.arange(goals.shape[0])
        return ids, ids

    def spread(final: Tensor, prompt_ids: Tensor) -> dict[str, Tensor]:
        return {"latent_std": pixel_diversity(final, prompt_ids)}

    eval_transition = None
    if eval_num_steps:
        with renamed_fields({**SAMPLING_ARGUMENTS, "sampling.num_steps": "eval_num_steps",
                                     "num_steps": "eval_num_steps"}):
            eval_transition = flow_transition(transition, FlowTimesteps.named(schedule, eval_num_steps, shift=shift),
                                              noise_level)
    return Problem(model=model, transition=step, latent_shape=(2,), prompts=prompts, reward=reward,
                   reward_names=("target",), decode=decode, eval_prompts=every_prompt, eval_transition=eval_transition,
                   eval_diversity=spread)
