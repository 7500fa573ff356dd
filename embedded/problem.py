"""The embedded default as a training :class:`~treegrpo.algos.problem.Problem`.

The shipped base (a tiny SD3 transformer over 16x16 digits) is the policy; its frozen text
encoder turns each prompt into SD3-shaped conditioning once, up front. Rewards score decoded
images against the prompted digit; evaluation samples the held-out prompt templates and reports
every offline reward, so training on one reward shows what it does to the others.

    problem = digits_problem(rewards=("classifier", "aesthetic"))
    Trainer(problem, config).fit()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from treegrpo.algos.config import check_reward_names
from treegrpo.algos.problem import Problem
from treegrpo.embedded._files import WEIGHTS_DIR
from treegrpo.embedded.data import digits_prompts
from treegrpo.embedded.model import DEFAULT_NUM_STEPS, DEFAULT_SHIFT, load_base, to_image
from treegrpo.embedded.rewards import REWARDS, ClassifierReward, Scorer
from treegrpo.envs import FlowTimesteps, GuidedDenoiser, Transition
from treegrpo.envs.sampler import gather_cond
from treegrpo.envs.transitions import flow_transition as make_flow_transition


def flow_transition(name: str, num_steps: int, shift: float, noise_level: float) -> Transition:
    """The stochastic flow step named ``name`` on ``num_steps`` shifted linear timesteps."""
    return make_flow_transition(name, FlowTimesteps.linear(num_steps, shift=shift), noise_level)


def reward_scorers(names: Sequence[str], weights: Path, field: str = "model.rewards") -> list[Scorer]:
    """Scorers for ``names``; the classifier reads ``weights/classifier``. ``field`` names the option in errors."""
    check_reward_names(names, REWARDS, field, "the digits model")
    return [ClassifierReward(path=weights / "classifier") if name == "classifier" else REWARDS[name] for name in names]


def digits_problem(
    *,
    num_steps: int = DEFAULT_NUM_STEPS,
    noise_level: float = 0.7,
    shift: float = DEFAULT_SHIFT,
    transition: str = "flow_sde",
    prompts_per_iteration: int = 8,
    rewards: Sequence[str] = ("classifier",),
    guidance_scale: float = 1.0,
    weights: Path | str | None = None,
    device: torch.device | str = "cpu",
    eval_rewards: Sequence[str] = (),
    eval_num_steps: int = 0,
) -> Problem:
    """TreeGRPO's embedded default: align the shipped digits base to offline rewards.

    Args:
        num_steps: denoising steps (NFE of one ODE sample).
        noise_level: SDE noise of the stochastic steps (``a`` of Flow-GRPO's SDE, eta for DanceSDE).
        shift: flow schedule shift.
        transition: ``flow_sde``, ``dance_sde`` or ``cps``.
        prompts_per_iteration: training prompts drawn (without replacement) each iteration out of
            the 80 training prompts (8 templates x 10 digits).
        rewards: reward names from :data:`~treegrpo.embedded.rewards.REWARDS`, one column each.
        guidance_scale: classifier-free guidance against the empty prompt; 1.0 = off.
        weights: root holding ``base/`` and ``classifier/`` (default: the shipped weights).
        device: where the model, conditioning and rewards live.
        eval_rewards: rewards reported on held-out prompts (default: every offline reward).
        eval_num_steps: denoising steps of evaluation samples (0: ``num_steps``).
    """
    root = Path(weights) if weights is not None else WEIGHTS_DIR
    rewards = tuple(rewards)
    if not rewards:
        raise ValueError("rewards: expected at least one reward name")
    scorers = reward_scorers(rewards, root)
    every_name = tuple(eval_rewards) or tuple(REWARDS)
    every_scorer = reward_scorers(every_name, root, "eval.rewards")
    step = flow_transition(transition, num_steps, shift, noise_level)
    eval_step = flow_transition(transition, eval_num_steps, shift, noise_level) if eval_num_steps else None

    base = load_base(root / "base", device)
    base.text_encoder.requires_grad_(False)
    base.transformer.requires_grad_(True)
    model = base.denoiser
    if guidance_scale != 1.0:
        model = GuidedDenoiser(model, guidance_scale, base.encode([""]))

    train, heldout = digits_prompts("train"), digits_prompts("heldout")
    if not 1 <= prompts_per_iteration <= len(train.texts):
        raise ValueError(f"prompts_per_iteration: expected 1..{len(train.texts)}, got {prompts_per_iteration}")
    train_cond, heldout_cond = base.encode(train.texts), base.encode(heldout.texts)
    train_labels, heldout_labels = train.labels.to(device), heldout.labels.to(device)

    def score(columns: Sequence[Scorer], final: Tensor, labels: Tensor) -> Tensor:
        images = to_image(final)
        return torch.stack([scorer(images, labels) for scorer in columns], dim=-1)

    def prompts(iteration: int, generator: torch.Generator) -> tuple[object, Tensor]:
        ids = torch.randperm(len(train.texts), generator=generator)[:prompts_per_iteration].to(device)
        return gather_cond(train_cond, ids), ids

    def reward(final: Tensor, prompt_ids: Tensor) -> Tensor:
        return score(scorers, final, train_labels[prompt_ids])

    def eval_prompts() -> tuple[object, Tensor]:
        return heldout_cond, torch.arange(len(heldout.texts), device=device)

    def eval_reward(final: Tensor, prompt_ids: Tensor) -> Tensor:
        return score(every_scorer, final, heldout_labels[prompt_ids])

    return Problem(model=model, transition=step, latent_shape=base.latent_shape, prompts=prompts, reward=reward,
                   reward_names=rewards, decode=to_image, eval_prompts=eval_prompts, eval_reward=eval_reward,
                   eval_reward_names=every_name, eval_transition=eval_step, device=device)
