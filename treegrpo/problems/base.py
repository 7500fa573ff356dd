"""What a task supplies to the trainer: the policy, its transition, prompts, rewards and evaluation.

The trainer is generic over :class:`Problem`; :func:`treegrpo.problems.build_problem` makes the one
a config names. A reward here is trainer-shaped, ``(final latents, prompt ids) -> [L] or [L, m]``:
a problem decodes the latents and hands images and prompt texts to its reward models
(:mod:`treegrpo.rewards`, one call shape ``(images, prompts) -> [B]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from treegrpo.envs.models import Cond, Denoiser
from treegrpo.envs.transitions import Transition

SAMPLING_ARGUMENTS: dict[str, str] = {f"sampling.{name}": name for name in (
    "transition", "schedule", "num_steps", "noise_level", "shift", "cps_scoring")}
"""Options the transitions' own errors name, to the problem builders' arguments they come from (the
builders re-raise those errors naming their arguments: :func:`treegrpo.errors.renamed_fields`)."""

PromptFn = Callable[[int, torch.Generator], tuple[Cond, Tensor]]
"""``(iteration, generator) -> (cond [P, ...], prompt_ids [P])``: one iteration's prompts."""
RewardFn = Callable[[Tensor, Tensor], Tensor]
"""``(final latents [L, ...], prompt_ids [L]) -> [L]`` or ``[L, m]`` rewards (one column per reward model)."""


@dataclass
class Problem:
    """What a task supplies to the trainer.

    Attributes:
        model: the trainable denoiser (its ``requires_grad`` parameters are optimised).
        transition: the SDE/ODE step the sampler and the loss share.
        latent_shape: shape of one latent.
        prompts: ``(iteration, generator) -> (cond [P, ...], prompt_ids [P])`` for one iteration.
        reward: ``(final latents [L, ...], prompt_ids [L]) -> [L]`` or ``[L, m]`` rewards.
        reward_names: one name per reward column, for logs.
        decode: optional ``latents -> images [L, C, H, W]`` in ``[0, 1]`` for sample grids.
        eval_prompts: optional ``() -> (cond [Q, ...], prompt_ids [Q])``, the held-out prompts that
            :meth:`Trainer.evaluate` samples (defaults to one iteration of training prompts).
        eval_reward: optional scorer with the same signature as ``reward`` reporting every reward
            of interest (``[L, m]``, one column per ``eval_reward_names``); defaults to ``reward``.
        eval_transition: optional transition of evaluation samples (e.g. more steps than training's);
            defaults to ``transition``.
        eval_diversity: optional ``(final latents [L, ...], prompt_ids [L]) -> {name: [Q]}``, per-prompt
            diversity measures of the held-out samples (prompts in ascending id), reported beside
            the rewards (see :mod:`treegrpo.rewards.diversity`).
        apply_lora: optional ``path -> None`` fusing a diffusers LoRA into ``model`` (``treegrpo eval``
            scores the weights before and after).
        device: where the model lives and latents are sampled.
        export: optional ``folder -> files`` writing the trained weights in the model's own format
            (a diffusers LoRA, or the network's ``save_pretrained``); called at the end of a run.
    """

    model: Denoiser
    transition: Transition
    latent_shape: tuple[int, ...]
    prompts: PromptFn
    reward: RewardFn
    reward_names: Sequence[str] = ("reward",)
    decode: Callable[[Tensor], Tensor] | None = None
    eval_prompts: Callable[[], tuple[Cond, Tensor]] | None = None
    eval_reward: RewardFn | None = None
    eval_reward_names: Sequence[str] = ()
    eval_transition: Transition | None = None
    eval_diversity: Callable[[Tensor, Tensor], dict[str, Tensor]] | None = None
    apply_lora: Callable[[str], None] | None = None
    device: torch.device | str = "cpu"
    export: Callable[[Path], list[Path]] | None = None
